"""Dice and lesion-wise detection figures on masks with known overlap."""

import json

import numpy as np
import pytest

from msimaging.cli import main
from msimaging.evaluate import dice, evaluate_files, lesion_agreement
from msimaging.lesions import LesionRules
from tests.conftest import oblique_affine


def _blob(shape, centre, r):
    ii, jj, kk = np.indices(shape)
    return ((ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (kk - centre[2]) ** 2) <= r * r


def test_dice_known_values():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_lesion_wise_counts_hits_misses_and_false_positives():
    shape = (40, 40, 40)
    truth = _blob(shape, (10, 10, 10), 3) | _blob(shape, (30, 30, 30), 3) | _blob(shape, (10, 30, 20), 3)
    pred = _blob(shape, (11, 10, 10), 3) | _blob(shape, (30, 10, 30), 3)  # 1 hit, 1 false positive
    r = lesion_agreement(pred, truth, np.eye(4))
    assert (r.pred_count, r.truth_count) == (2, 3)
    assert (r.true_positive_pred, r.detected_truth) == (1, 1)
    assert r.lesion_precision == pytest.approx(0.5)
    assert r.lesion_recall == pytest.approx(1 / 3)
    assert r.lesion_f1 == pytest.approx(0.4)
    n = int(_blob(shape, (10, 10, 10), 3).sum())  # 123 voxels of 1 mm^3
    assert r.truth_volume_ml == pytest.approx(3 * n / 1000)
    assert r.pred_volume_ml == pytest.approx(2 * n / 1000)
    assert r.volume_difference_ml == pytest.approx(-n / 1000)


def test_components_below_the_lesion_rules_count_voxels_but_not_lesions():
    aff = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm^3 voxels: a lesion needs >= 5 voxels (10 mm^3)
    truth = np.zeros((30, 30, 20), bool)
    truth[5:8, 5:8, 5:8] = True          # 27 voxels: a lesion
    truth[20, 20, 10:12] = True          # 2 voxels (4 mm^3): marked by the expert, not a lesion
    pred = np.zeros_like(truth)
    pred[5:8, 5:8, 5:8] = True
    pred[19:22, 19:22, 10:12] = True     # 18 voxels over the tiny mark: a TP, not a false positive
    r = lesion_agreement(pred, truth, aff)
    assert (r.truth_count, r.truth_small_components, r.pred_count) == (1, 1, 2)
    assert (r.true_positive_pred, r.detected_truth) == (2, 1)
    assert r.lesion_f1 == pytest.approx(1.0)
    assert r.dice == pytest.approx(2 * 29 / (29 + 45))           # every voxel of both masks
    assert r.dice_lesions == pytest.approx(2 * 27 / (27 + 45))    # the tiny mark left out
    assert r.truth_lesion_volume_ml == pytest.approx(27 * 2 / 1000)
    # a stricter rule drops the 18-voxel prediction too
    strict = lesion_agreement(pred, truth, aff, LesionRules(min_volume_mm3=40.0, min_voxels=3))
    assert (strict.pred_count, strict.truth_count) == (1, 1)


def test_empty_masks_agree_and_one_sided_masks_score_zero():
    empty = np.zeros((10, 10, 10), bool)
    some = empty.copy()
    some[2:5, 2:5, 2:5] = True
    both = lesion_agreement(empty, empty, np.eye(4))
    assert (both.dice, both.lesion_f1, both.lesion_precision, both.lesion_recall) == (1.0, 1.0, 1.0, 1.0)
    missed = lesion_agreement(empty, some, np.eye(4))
    assert missed.lesion_recall == 0.0 and missed.lesion_f1 == 0.0 and missed.dice == 0.0
    invented = lesion_agreement(some, empty, np.eye(4))
    assert invented.lesion_precision == 0.0 and invented.lesion_f1 == 0.0


def test_evaluate_files_resamples_prediction_onto_truth_grid(make_nifti):
    shape = (40, 40, 40)
    aff = oblique_affine(zooms=(1.0, 1.0, 1.0))
    truth = _blob(shape, (20, 20, 20), 6)
    # the same blob stored with flipped voxel axes (LPS <-> RAS storage of the same world)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [39, 39, 0]
    aff2 = aff @ flip
    pred = truth[::-1, ::-1, :]
    r = evaluate_files(str(make_nifti(pred.astype(np.uint8), aff2)), str(make_nifti(truth.astype(np.uint8), aff)))
    assert r.dice > 0.99 and r.lesion_f1 == 1.0


def test_evaluate_files_on_anisotropic_grids_keeps_volume(make_nifti):
    """A truth on an oblique 0.9x1.1x3 mm grid, the prediction on a 1 mm grid of the same world."""
    t_aff = oblique_affine(zooms=(0.9, 1.1, 3.0))
    shape = (60, 50, 20)
    ijk = np.indices(shape).reshape(3, -1).T
    world = ijk @ t_aff[:3, :3].T + t_aff[:3, 3]
    centre = t_aff[:3, :3] @ np.array([30, 25, 10]) + t_aff[:3, 3]
    truth = (np.linalg.norm(world - centre, axis=1) <= 9.0).reshape(shape)
    p_aff = np.eye(4)
    p_aff[:3, 3] = centre - 40
    pshape = (81, 81, 81)
    pw = np.indices(pshape).reshape(3, -1).T + p_aff[:3, 3]
    pred = (np.linalg.norm(pw - centre, axis=1) <= 9.0).reshape(pshape)
    r = evaluate_files(str(make_nifti(pred.astype(np.uint8), p_aff)), str(make_nifti(truth.astype(np.uint8), t_aff)))
    assert r.dice > 0.9 and r.lesion_f1 == 1.0
    assert r.truth_volume_ml == pytest.approx(4 / 3 * np.pi * 9 ** 3 / 1000, rel=0.08)
    assert r.pred_volume_ml == pytest.approx(r.truth_volume_ml, rel=0.08)


def test_cli_evaluate_json_has_every_figure(make_nifti, capsys):
    shape = (30, 30, 30)
    truth = _blob(shape, (10, 10, 10), 3) | _blob(shape, (20, 20, 20), 3)
    pred = _blob(shape, (10, 10, 10), 3)
    aff = oblique_affine(zooms=(1.0, 1.2, 2.0))
    rc = main(["evaluate", str(make_nifti(pred.astype(np.uint8), aff)), str(make_nifti(truth.astype(np.uint8), aff)),
               "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["truth_count"] == 2 and d["pred_count"] == 1
    assert d["lesion_recall"] == pytest.approx(0.5) and d["lesion_precision"] == pytest.approx(1.0)
    assert d["dice"] == pytest.approx(2 / 3)
    vox_ml = 1.0 * 1.2 * 2.0 / 1000
    assert d["truth_volume_ml"] == pytest.approx(truth.sum() * vox_ml)


def test_cli_evaluate_rejects_bad_rules(make_nifti, capsys):
    p = make_nifti(np.ones((5, 5, 5), np.uint8))
    assert main(["evaluate", str(p), str(p), "--min-voxels", "0"]) == 2
    assert "--min-voxels" in capsys.readouterr().err

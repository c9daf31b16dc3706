"""Dice and lesion-wise detection figures on masks with known overlap."""

import numpy as np
import pytest

from msimaging.evaluate import dice, evaluate_files, lesion_agreement
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
    assert r.lesion_precision == pytest.approx(0.5)
    assert r.lesion_recall == pytest.approx(1 / 3)
    assert r.lesion_f1 == pytest.approx(0.4)


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

"""Longitudinal implants (fast, synthetic): no-change copies, growth shells, pasted lesions."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from msimaging.geometry import Grid, resample_array, voxel_volume_mm3
from msimaging.implant import bundled_profile
from msimaging.implant_longitudinal import (growth_radius_mm, head_motion, implant_growth, implant_new, noise_sigma,
                                            paste, reposition, shift_header)
from tests.conftest import oblique_affine

SHAPE = (64, 64, 20)
AFFINE = oblique_affine(zooms=(0.9, 0.9, 3.0), angles_deg=(8.0, -5.0, 12.0), origin=(-30.0, 40.0, -30.0))


def _head(rng, lesions=((32, 32, 10, 3.0),)):
    """A FLAIR-like 'brain' (WM 100) with a bright lesion (160) and noise; brain mask."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    mm = ijk * np.array([0.9, 0.9, 3.0])
    c = np.array([32, 32, 10]) * np.array([0.9, 0.9, 3.0])
    r = np.linalg.norm((mm - c) / np.array([26.0, 26.0, 24.0]), axis=-1)
    brain = r < 1.0
    img = np.where(brain, 100.0, 5.0)
    les = np.zeros(SHAPE, bool)
    for i, j, k, rad in lesions:
        d = np.linalg.norm(mm - np.array([i, j, k]) * np.array([0.9, 0.9, 3.0]), axis=-1)
        les |= d <= rad
    img = img + 60.0 * les + rng.normal(0, 2.0, SHAPE)
    return img.astype(np.float32), brain, les


def test_reposition_moves_the_header_and_keeps_the_anatomy():
    rng = np.random.default_rng(0)
    img, brain, les = _head(rng)
    centre = (AFFINE @ np.array([32, 32, 10, 1.0]))[:3] * np.array([-1, -1, 1])
    motion = head_motion((2.0, -1.5, 1.0), (1.5, -1.0, 0.5), centre)
    out = reposition({"FLAIR": (img, AFFINE)}, motion, (62.0, -18.0, 10.0), gain=1.08, seed=1)
    copy, aff = out["FLAIR"]
    assert np.allclose(aff[:3, 3] - AFFINE[:3, 3], (62.0, -18.0, 10.0)) and np.allclose(aff[:3, :3], AFFINE[:3, :3])
    # the copy's content, brought back through the motion (header shift undone), is the original
    grid = Grid(SHAPE, AFFINE)
    unshifted = resample_array(copy, AFFINE, grid, motion.GetInverse())
    inner = ndi.binary_erosion(brain, iterations=3)
    smooth = [ndi.gaussian_filter(x, (1.0, 1.0, 0.3)) for x in (unshifted / 1.08, img)]
    assert np.corrcoef(smooth[0][inner], smooth[1][inner])[0, 1] > 0.9
    # the lesion is still there (two linear interpolations of 3 mm slices blur a small lesion)
    assert float(np.mean(unshifted[les] / 1.08)) > 100.0 + 0.5 * 60.0
    # fresh noise of about the original's level
    assert 0.7 < noise_sigma(copy, inner) / (1.08 * noise_sigma(img, inner)) < 1.6
    moved, maff = shift_header(brain, AFFINE, motion, (62.0, -18.0, 10.0))
    assert abs(int(moved.sum()) - int(brain.sum())) < 0.03 * brain.sum() and np.allclose(maff, aff)


def test_growth_shell_meets_the_enlarging_rule_and_only_brightens():
    rng = np.random.default_rng(2)
    img, brain, les = _head(rng)
    lab, _ = ndi.label(les)
    r, grown = growth_radius_mm(les, AFFINE, brain, 0.5)
    assert r > 0 and grown.sum() * 1.0 >= 1.5 * les.sum()
    out, truth, rows = implant_growth({"FLAIR": (img, AFFINE)}, lab, [1], brain, bundled_profile())
    after = out["FLAIR"][0]
    vox = voxel_volume_mm3(AFFINE)
    assert rows[0]["grown_mm3"] >= 1.5 * rows[0]["volume_mm3"] and abs(truth.sum() * vox - rows[0]["grown_mm3"]) < 0.1
    assert (after >= img - 1e-3).all()                      # never darker
    shell = truth & ~les
    # the shell becomes lesion-bright (at least 0.6 of the lesion's excess over the surroundings)
    assert np.median(after[shell] - 100.0) > 0.6 * 60.0 * 0.8


def test_pasted_lesions_are_implanted_where_placed():
    rng = np.random.default_rng(4)
    img, brain, _ = _head(rng, lesions=())
    comp = np.zeros((9, 9, 9), bool)
    comp[2:7, 2:7, 2:7] = True                               # a 125 mm^3 lesion at 1 mm
    centre_ras = (AFFINE @ np.array([30, 34, 10, 1.0]))[:3]
    placed = paste([(np.pad(comp, 3), {"volume_mm3_1mm": 125.0})], [centre_ras], (img, AFFINE))
    out, truth = implant_new({"FLAIR": (img, AFFINE)}, brain, placed, bundled_profile(), 1.0, seed=0)
    assert truth.any()
    ijk = np.argwhere(truth).mean(axis=0)
    assert np.linalg.norm((ijk - np.array([30, 34, 10])) * np.array([0.9, 0.9, 3.0])) < 3.0
    assert out["FLAIR"][0][truth].mean() > img[truth].mean() * 1.2


def test_observed_brightening_is_the_change_not_the_follow_up_excess():
    """A new lesion placed on tissue already 15 % above NAWM that rises by 20 % of NAWM: its excess
    at the follow-up is about 0.35, its brightening (what the calibration of the real-background
    set matches to sub-p12's real changes) about 0.20."""
    from msimaging.implant_longitudinal import observed_contrast

    rng = np.random.default_rng(0)
    before = 100.0 + rng.normal(0, 0.5, SHAPE)
    wm = np.ones(SHAPE, bool)
    blob = np.zeros(SHAPE, bool)
    blob[28:36, 28:36, 9:12] = True
    before[blob] += 15.0
    after = before + 20.0 * blob
    row, = observed_contrast(after.astype(np.float32), before.astype(np.float32), blob, AFFINE, wm & ~blob)
    assert abs(row["brightening"] - 0.20) < 0.02, row
    assert abs(row["excess"] - 0.35) < 0.03, row

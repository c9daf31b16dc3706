"""Implanting real lesion shapes into real backgrounds (msimaging.implant)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from msimaging.geometry import Grid, voxel_volume_mm3
from msimaging.implant import (
    LesionProfile,
    box_factors,
    bundled_profile,
    draw_contrasts,
    implant,
    measure_profile,
    resample_box,
    signed_distance_mm,
)


def _mni_affine() -> np.ndarray:
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (40.0, -40.0, -30.0)
    return aff


def _blobs(shape=(80, 80, 60)) -> np.ndarray:
    """Two lesions on a 1 mm grid: a 6 mm radius ball and a 3 mm one."""
    z = np.indices(shape).astype(float)
    big = ((z[0] - 25) ** 2 + (z[1] - 40) ** 2 + (z[2] - 30) ** 2) <= 36
    small = ((z[0] - 55) ** 2 + (z[1] - 40) ** 2 + (z[2] - 30) ** 2) <= 9
    return big | small


def _session(affine: np.ndarray, shape: tuple[int, int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    images = {c: (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32) for c in ("FLAIR", "T2w", "T1w")}
    brain = np.ones(shape, bool)
    return images, brain


def _lps_thick() -> np.ndarray:
    """0.8 x 0.8 x 3 mm, LPS-oriented and 10 degrees oblique, covering the MNI box above."""
    a = np.deg2rad(10.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    m = rot @ np.diag([-0.8, -0.8, 3.0])
    aff = np.eye(4)
    aff[:3, :3] = m
    centre = np.array([0.0, 0.0, 0.0])
    aff[:3, 3] = centre - m @ (np.array([110, 110, 24]) / 2.0)
    return aff


def test_signed_distance_is_depth_inside_and_minus_distance_outside() -> None:
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    m = np.zeros((20, 20, 10), bool)
    m[5:15, 5:15, 3:7] = True
    sd = signed_distance_mm(m, aff)
    assert sd[10, 10, 3] == pytest.approx(2.0)    # boundary slice: 2 mm to the outside along z
    assert sd[5, 10, 5] == pytest.approx(1.0)
    assert sd[3, 10, 5] == pytest.approx(-2.0)
    assert sd[10, 10, 1] == pytest.approx(-4.0)
    assert (sd[m] > 0).all() and (sd[~m] < 0).all()


def test_box_resampling_keeps_the_volume_on_thick_oblique_slices() -> None:
    mask = _blobs()
    grid = Grid((110, 110, 24), _lps_thick())
    assert box_factors(grid.zooms) == (1, 1, 3)
    frac = resample_box(mask.astype(np.float32), _mni_affine(), grid, None)
    vol = float(frac.sum()) * voxel_volume_mm3(grid.affine)
    assert vol == pytest.approx(float(mask.sum()), rel=0.03)
    # partial volume: the 3 mm slices of a 6 mm ball hold fractions well below 1
    assert 0.2 < float(frac[(frac > 0) & (frac < 0.95)].size) / float((frac > 0).sum()) < 0.95


def test_implant_truth_lands_where_the_mask_is_in_world_space() -> None:
    mask = _blobs()
    grid = Grid((110, 110, 24), _lps_thick())
    images, brain = _session(grid.affine, grid.shape)
    imp = implant(images, grid.affine, brain, np.ones(grid.shape, np.float32), np.ones(grid.shape, np.float32),
                  mask, _mni_affine(), None, bundled_profile(), seed=3)
    vol = float(imp.truth.sum()) * voxel_volume_mm3(grid.affine)
    assert vol == pytest.approx(float(mask.sum()), rel=0.25)
    labels, n = ndi.label(imp.truth, np.ones((3, 3, 3)))
    assert n == 2
    # centroid of the big lesion in RAS mm matches the mask's (index (25, 40, 30) of the MNI grid)
    big = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    ijk = np.argwhere(big).mean(axis=0)
    ras = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]
    expect = _mni_affine()[:3, :3] @ np.array([25.0, 40.0, 30.0]) + _mni_affine()[:3, 3]
    assert np.linalg.norm(ras - expect) < 1.5
    # FLAIR and T2w brighter, T1w darker inside; unchanged far away
    for c, sign in (("FLAIR", 1), ("T2w", 1), ("T1w", -1)):
        d = imp.images[c] - images[c]
        assert sign * float(np.median(d[big])) > 0.1
        far = signed_distance_mm(imp.truth, grid.affine) < -6  # halo (3 mm) + half a slice
        assert float(np.abs(d[far]).max()) == 0.0


def test_implant_is_deterministic_from_its_seed() -> None:
    mask = _blobs()
    aff = _mni_affine()
    images, brain = _session(aff, mask.shape)
    ones = np.ones(mask.shape, np.float32)
    a = implant(images, aff, brain, ones, ones, mask, aff, None, bundled_profile(), seed=11)
    b = implant(images, aff, brain, ones, ones, mask, aff, None, bundled_profile(), seed=11)
    c = implant(images, aff, brain, ones, ones, mask, aff, None, bundled_profile(), seed=12)
    assert np.array_equal(a.images["FLAIR"], b.images["FLAIR"]) and np.array_equal(a.truth, b.truth)
    assert not np.array_equal(a.images["FLAIR"], c.images["FLAIR"])


def test_admissible_region_bounds_the_truth() -> None:
    mask = _blobs()
    aff = _mni_affine()
    images, brain = _session(aff, mask.shape)
    adm = np.ones(mask.shape, np.float32)
    adm[:, :, 31:] = 0.0            # "CSF" above z = 30 (the lesions' centre slice)
    imp = implant(images, aff, brain, adm, adm, mask, aff, None, bundled_profile(), seed=1)
    assert not imp.truth[:, :, 31:].any() and imp.truth[:, :, :31].any()
    assert np.array_equal(imp.images["FLAIR"][:, :, 31:], images["FLAIR"][:, :, 31:])


def test_measured_profile_recovers_the_implanted_contrasts() -> None:
    """Implant with a known one-lesion profile into a flat background, measure it back."""
    rng = np.random.default_rng(5)
    shape = (90, 90, 70)
    aff = _mni_affine()
    mask = np.zeros(shape, bool)
    centres = [(20, 20, 20), (20, 60, 20), (60, 20, 50), (60, 60, 50), (45, 45, 35)]
    z = np.indices(shape).astype(float)
    for cx, cy, cz in centres:
        mask |= ((z[0] - cx) ** 2 + (z[1] - cy) ** 2 + (z[2] - cz) ** 2) <= 16
    prof = LesionProfile(contrasts=("FLAIR", "T2w", "T1w"), core=[[0.5, 0.8, -0.3]], volumes_mm3=[200.0],
                         edge_mm=list(bundled_profile().edge_mm), edge=bundled_profile().edge,
                         texture_sd=[0.0, 0.0, 0.0])
    images = {c: (1.0 + 0.01 * rng.standard_normal(shape)).astype(np.float32) for c in prof.contrasts}
    ones = np.ones(shape, np.float32)
    imp = implant(images, aff, np.ones(shape, bool), ones, ones, mask, aff, None, prof, seed=2)
    measured = measure_profile(imp.images, aff, mask, ones)
    core = np.median(np.asarray(measured.core), axis=0)
    # the drawn contrasts are the one measured lesion with a log-normal jitter (SD 0.15)
    assert core == pytest.approx([0.5 * 0.92, 0.8 * 0.83, -0.3 * 0.84], rel=0.25)


def test_drawn_contrasts_are_real_lesions_jittered() -> None:
    prof = bundled_profile()
    core = np.asarray(prof.core)
    drawn = draw_contrasts(prof, 4000, np.random.default_rng(0))
    for j in range(core.shape[1]):
        assert np.median(drawn[:, j]) == pytest.approx(np.median(core[:, j]), rel=0.2)
    # the FLAIR and T2w contrasts of one lesion stay correlated (drawn together)
    assert np.corrcoef(drawn[:, 0], drawn[:, 1])[0, 1] > 0.3


def test_bundled_profile_is_as_faint_as_real_lesions() -> None:
    """sub-p07's expert lesions: FLAIR core +37..+70 % over NAWM (10th-90th percentile), T1w darker."""
    core = np.asarray(bundled_profile().core)
    assert len(core) >= 15
    lo, med, hi = np.percentile(core[:, 0], [10, 50, 90])
    assert 0.25 < lo < med < hi < 1.0 and 0.4 < med < 0.6
    assert np.median(core[:, 2]) < -0.15


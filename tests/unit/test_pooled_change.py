"""Pooled-evidence change detection (fast): a faint new lesion of many weak voxels is found where
the per-voxel hysteresis misses it, and an unchanged pair stays clean."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from msimaging.longitudinal import ChangeRules, PairMaps, Visit, compare_visits, count_status, noise_correlation, \
    pair_maps, pooled_evidence, status_mask
from tests.unit.test_longitudinal import AFFINE, CENTRE, SHAPE, STABLE, _phantom, _world_grid

FAINT = (np.array([0.0, 14.0, -6.0]), 4.0)   # centre (mm from the anatomy's centre), radius (mm)
GAIN = ChangeRules(intensity_matching="gain")


def _with_faint_lesion(v: Visit, contrast: float) -> Visit:
    pts = _world_grid(v.affine, SHAPE) - CENTRE
    d = np.linalg.norm(pts - FAINT[0], axis=-1)
    blob = np.clip((FAINT[1] + 0.75 - d) / 1.5, 0, 1) * v.brain
    return Visit((v.flair + contrast * blob).astype(np.float32), v.affine, v.brain, v.labels)


def test_noise_correlation_is_one_for_white_noise_and_grows_with_smoothing():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    d = rng.standard_normal((60, 60, 30)).astype(np.float32)
    mask = np.ones(d.shape, bool)
    white = dict(noise_correlation(d, mask))
    assert abs(white[9.0] - 1.0) < 0.15 and abs(white[75.0] - 1.0) < 0.3
    smooth = dict(noise_correlation(ndi.gaussian_filter(d, 1.0), mask))
    assert smooth[9.0] > 4.0 and smooth[243.0] > smooth[9.0]


def test_pooled_evidence_divides_by_the_effective_number_of_voxels():
    maps = PairMaps(*(np.zeros((2, 2, 2), np.float32),) * 6, ref_labels=np.zeros((2, 2, 2), np.int32), sigma_d=1.0,
                    correlation=((1.0, 1.0), (9.0, 4.0), (75.0, 9.0)))
    assert pooled_evidence(np.full(9, 2.0, np.float32), maps) == 2.0 * 9 / np.sqrt(9 * 4.0)
    assert maps.inflation(1000.0) == 9.0      # beyond the largest box: no further growth
    assert maps.inflation(2.0) <= 2.0


def test_a_faint_new_lesion_is_found_by_pooled_evidence_and_missed_voxel_by_voxel():
    rng = np.random.default_rng(3)
    base = _phantom(STABLE, AFFINE, SHAPE, rng)
    follow = _phantom(STABLE, AFFINE, SHAPE, rng, gain=0.9)
    follow = _with_faint_lesion(follow, 0.05)     # 2.5 noise SDs per voxel before smoothing
    ident = sitk.Euler3DTransform()
    pooled, labels = compare_visits(follow, base, ident, GAIN)
    # the former method: per-voxel hysteresis, no blur matching (which smooths this same-grid pair
    # a little more and lets the voxel-wise test find the lesion too)
    voxelwise, labels_v = compare_visits(follow, base, ident, replace(GAIN, pooled_z=0.0, match_blur_max_vox=0.0))
    point = CENTRE + FAINT[0]
    ijk = np.round(np.linalg.solve(AFFINE[:3, :3], point - AFFINE[:3, 3])).astype(int)
    assert status_mask(labels, pooled, "new")[tuple(ijk)], [c.status for c in pooled]
    assert count_status(pooled, "new") == 1
    assert not status_mask(labels_v, voxelwise, "new")[tuple(ijk)]


def test_an_unchanged_pair_stays_clean_with_pooled_evidence():
    rng = np.random.default_rng(5)
    base = _phantom(STABLE, AFFINE, SHAPE, rng)
    again = _phantom(STABLE, AFFINE, SHAPE, rng, gain=1.1, bias=0.05)
    changes, _ = compare_visits(again, base, sitk.Euler3DTransform(), GAIN)
    assert count_status(changes, "new") == 0 and count_status(changes, "enlarging") == 0
    maps = pair_maps(again, base, sitk.Euler3DTransform(), GAIN)
    assert maps.correlation[-1][1] >= 1.0


def test_registration_noise_is_shift_times_gradient():
    from msimaging.longitudinal import registration_noise

    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None] * 0.3, (20, 8, 6)).copy()
    reg = registration_noise(ramp, affine, 0.4)
    assert np.allclose(reg[2:-2], 0.4 * 0.3 / 0.5, atol=1e-5)     # 0.3 z per 0.5 mm voxel
    assert np.allclose(registration_noise(np.ones((5, 5, 5), np.float32), affine, 0.4), 0.0)


def test_significance_is_unbiased_in_flat_tissue_and_damped_at_a_shifted_edge():
    from scipy import ndimage as ndi

    from msimaging.longitudinal import new_lesion_significance

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    rng = np.random.default_rng(1)
    shape = (40, 40, 20)
    zr = ndi.gaussian_filter(rng.standard_normal(shape), 0.6).astype(np.float32)
    zf = ndi.gaussian_filter(rng.standard_normal(shape), 0.6).astype(np.float32)
    noise = float(np.std(zf - zr))
    blob = np.zeros(shape, np.float32)
    blob[15:25, 15:25, 8:12] = 1.5 * noise
    reg_rules = ChangeRules(registration_shift_mm=0.5)
    sig = new_lesion_significance(zf + blob, zr, noise, affine, reg_rules)
    jitter = new_lesion_significance(zf + blob, zr, noise, affine, ChangeRules(registration_shift_mm=0.0))
    inside = blob > 0
    assert abs(float(sig[inside].mean()) - 1.5) < 0.3        # the increase, in noise units
    assert float(jitter[inside].mean()) < 1.0                 # R's local maximum eats most of it
    # a strong edge moved by half a voxel: the misregistration term keeps it from looking new
    x = np.arange(shape[0], dtype=np.float32)[:, None, None]
    edge_r = np.broadcast_to(20.0 / (1 + np.exp(-(x - 20.0) / 0.8)), shape).astype(np.float32)
    edge_f = np.broadcast_to(20.0 / (1 + np.exp(-(x - 19.5) / 0.8)), shape).astype(np.float32)
    plain = (edge_f - edge_r) / noise
    damped = new_lesion_significance(edge_f, edge_r, noise, affine, reg_rules)
    assert plain.max() > 3.0 and damped.max() < 1.5


def _with_t2(v: Visit, t2: Visit) -> Visit:
    return Visit(v.flair, v.affine, v.brain, v.labels, t2=t2.flair)


def test_a_faint_new_lesion_needs_the_t2w_to_confirm_it():
    rng = np.random.default_rng(3)
    base = _phantom(STABLE, AFFINE, SHAPE, rng)
    follow = _with_faint_lesion(_phantom(STABLE, AFFINE, SHAPE, rng, gain=0.9), 0.05)
    base_t2 = _phantom(STABLE, AFFINE, SHAPE, rng)          # independent noise: another acquisition
    plain_t2 = _phantom(STABLE, AFFINE, SHAPE, rng, gain=1.05)
    ident = sitk.Euler3DTransform()
    point = CENTRE + FAINT[0]
    ijk = tuple(np.round(np.linalg.solve(AFFINE[:3, :3], point - AFFINE[:3, 3])).astype(int))
    confirmed, labels = compare_visits(_with_t2(follow, _with_faint_lesion(plain_t2, 0.05)), _with_t2(base, base_t2),
                                       ident, GAIN)
    assert status_mask(labels, confirmed, "new")[ijk] and count_status(confirmed, "new") == 1
    assert max(c.t2_change_z for c in confirmed if c.status == "new") >= GAIN.t2_confirm_z
    # the same FLAIR change without a T2w increase is no new lesion
    unconfirmed, labels_u = compare_visits(_with_t2(follow, plain_t2), _with_t2(base, base_t2), ident, GAIN)
    assert count_status(unconfirmed, "new") == 0
    # and an unchanged pair with both contrasts stays clean
    again = _phantom(STABLE, AFFINE, SHAPE, rng, gain=1.1, bias=0.05)
    clean, _ = compare_visits(_with_t2(again, plain_t2), _with_t2(base, base_t2), ident, GAIN)
    assert count_status(clean, "new") == 0 and count_status(clean, "enlarging") == 0


def test_oracle_evidence_pools_each_change_and_the_null_is_centred_on_zero():
    from msimaging.bench.activity_real import null_evidence, oracle_evidence

    rng = np.random.default_rng(0)
    shape = (30, 30, 12)
    dz = rng.standard_normal(shape).astype(np.float32)
    truth = np.zeros(shape, bool)
    truth[5:8, 5:8, 5] = True                      # 9 voxels, +2 each: pooled 2 x 9 / 3 = 6 above the noise
    truth[20:22, 20:22, 8] = True                  # 4 voxels, no change
    dz[5:8, 5:8, 5] = 2.0
    maps = PairMaps(*(np.zeros(shape, np.float32),) * 2, dz, dz, *(np.ones(shape, bool),) * 2,
                    ref_labels=np.zeros(shape, np.int32), sigma_d=1.0)
    rows = oracle_evidence(maps, None, truth)
    assert [r["voxels"] for r in rows] == [9, 4]
    assert rows[0]["flair_z"] == 6.0 and abs(rows[1]["flair_z"]) < 3.0 and np.isnan(rows[0]["t2_z"])
    normal = np.ones(shape, bool)
    normal[5:8, 5:8, 5] = False
    null = null_evidence(maps, maps, normal, [np.argwhere(truth[5:8, 5:8, 5:6])], 400, seed=1)
    assert len(null) > 300 and abs(float(np.mean(null[:, 0]))) < 0.2 and 0.7 < float(np.std(null[:, 0])) < 1.3

"""Change detection between visits on small synthetic pairs with known truth (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from msimaging.geometry import Grid, affine_matrix_lps, affine_transform_from_matrix, resample_array
from msimaging.lesions import LesionRules, label_lesions
from msimaging.longitudinal import (
    ChangeRules,
    Visit,
    compare_visits,
    count_status,
    follow_up_to_reference,
    is_enlarged,
    quantile_match,
    status_mask,
)
from tests.conftest import oblique_affine

SHAPE = (60, 60, 40)
CENTRE = np.array([4.0, -12.0, 10.0])     # the anatomy's centre, world RAS mm


def centred_affine(zooms, angles_deg) -> np.ndarray:
    """An oblique, anisotropic LPS-stored affine whose grid centre is CENTRE."""
    a = oblique_affine(zooms=zooms, angles_deg=angles_deg, origin=(0.0, 0.0, 0.0))
    a[:3, 3] = CENTRE - a[:3, :3] @ ((np.asarray(SHAPE) - 1) / 2)
    return a


AFFINE = centred_affine((1.5, 1.5, 2.5), (12.0, -7.0, 20.0))


def _world_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def _phantom(lesions: list[tuple[tuple[float, float, float], float]], affine: np.ndarray, shape, rng,
             gain: float = 1.0, bias: float = 0.0, moved: sitk.Transform | None = None) -> Visit:
    """A 'brain' ellipsoid (FLAIR 1.0) with spherical lesions (FLAIR 1.6), smooth bias, noise.

    Lesion centres are in world (RAS) mm relative to the grid centre; ``moved`` maps this
    grid's points to the anatomy's (the head moved between visits).
    """
    world = _world_grid(affine, shape)
    centre = CENTRE
    pts = world - centre
    if moved is not None:
        m = affine_matrix_lps(moved)
        flip = np.diag([-1.0, -1.0, 1.0])
        lin = flip @ m[:3, :3] @ flip
        off = flip @ m[:3, 3]
        pts = (world @ lin.T + off) - centre
    r = np.sqrt((pts[..., 0] / 36) ** 2 + (pts[..., 1] / 36) ** 2 + (pts[..., 2] / 30) ** 2)
    brain_frac = np.clip((1.0 - r) * 20, 0, 1)
    flair = 0.3 + 0.7 * brain_frac
    for c, radius in lesions:
        d = np.linalg.norm(pts - np.asarray(c), axis=-1)
        flair = flair + 0.6 * np.clip((radius + 1.5 - d) / 3.0, 0, 1) * brain_frac   # 3 mm partial-volume rim
    field = 1.0 + bias * (pts[..., 0] / 40.0)
    flair = gain * flair * field + rng.normal(0, 0.02, shape)
    brain = brain_frac > 0.5
    from msimaging.lesions import flair_zscore

    # a plain cross-sectional segmentation: FLAIR z-score above 4 inside the brain
    labels = label_lesions((flair_zscore(flair, brain) > 4.0) & brain, affine, LesionRules())
    return Visit(flair=flair.astype(np.float32), affine=affine, brain=brain, labels=labels)


#: The synthetic visits follow a purely multiplicative model (gain x linear bias), which the
#: ``gain`` intensity matching models exactly; the default (quantile) is tested on the phantoms.
GAIN = ChangeRules(intensity_matching="gain")

STABLE = [((-12.0, 8.0, 4.0), 3.5), ((10.0, -10.0, -4.0), 4.0)]
GROWING = ((12.0, 12.0, 6.0), 3.0)
SHRINKING = ((-8.0, -12.0, -6.0), 4.5)
NEW = ((0.0, 16.0, -8.0), 3.5)


def test_enlarging_rule_follows_design():
    r = ChangeRules()
    assert is_enlarged(30.0, 20.0, r)            # small lesion: +50%, +10 mm^3
    assert not is_enlarged(28.0, 20.0, r)        # +40%
    assert is_enlarged(120.0, 100.0, r)          # large: +20%
    assert not is_enlarged(115.0, 100.0, r)
    assert not is_enlarged(14.0, 8.0, r)         # +75% but only 6 mm^3
    assert not is_enlarged(50.0, 0.0, r)         # nothing to enlarge


def test_follow_up_to_reference_composes_baseline_transforms():
    a = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.05, -0.02, 0.1, (2.0, -1.0, 4.0))
    b = sitk.Euler3DTransform((0.0, 0.0, 0.0), -0.03, 0.04, 0.0, (-3.0, 0.5, 1.0))
    t = follow_up_to_reference(a, b)             # F -> R = T_R o T_F^-1
    p = np.array([10.0, -20.0, 30.0])
    expected = b.TransformPoint(a.GetInverse().TransformPoint(tuple(p)))
    assert np.allclose(t.TransformPoint(tuple(p)), expected, atol=1e-6)
    ident = follow_up_to_reference(a, None)      # vs baseline: F -> baseline
    assert np.allclose(ident.TransformPoint(tuple(p)), a.GetInverse().TransformPoint(tuple(p)), atol=1e-6)


def test_quantile_match_recovers_a_monotone_intensity_change():
    rng = np.random.default_rng(0)
    x = rng.gamma(4.0, 0.25, (40, 40, 10)).astype(np.float32)
    y = 3.0 * x ** 1.2 + 0.5
    mask = np.ones(x.shape, dtype=bool)
    matched = quantile_match(y, x, mask)
    inner = (x > np.percentile(x, 2)) & (x < np.percentile(x, 98))
    assert np.abs(matched - x)[inner].max() < 0.05 * float(np.ptp(x))


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(5)
    baseline = _phantom(STABLE + [GROWING, SHRINKING], AFFINE, SHAPE, rng)
    motion = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.04, -0.03, 0.06, (2.2, -1.3, 1.7))
    fu_affine = centred_affine((1.4, 1.6, 2.2), (5.0, 3.0, -10.0))
    grown = (GROWING[0], GROWING[1] + 2.0)
    shrunk = (SHRINKING[0], SHRINKING[1] - 2.0)
    follow = _phantom(STABLE + [grown, shrunk, NEW], fu_affine, SHAPE, rng, gain=1.3, bias=0.1, moved=motion)
    # the follow-up grid maps to the baseline's through the known head motion
    return follow, baseline, motion


def _status_at(changes, labels, affine, point_ras, status):
    mask = status_mask(labels, changes, status)
    ijk = np.round(np.linalg.solve(affine, np.append(point_ras, 1.0))[:3]).astype(int)
    return bool(mask[tuple(ijk)])


def test_pair_detects_new_enlarging_and_shrinking_jointly(pair):
    follow, baseline, motion = pair
    changes, labels = compare_visits(follow, baseline, motion, GAIN)
    assert count_status(changes, "new") == 1
    assert count_status(changes, "enlarging") == 1
    assert count_status(changes, "shrinking") == 1
    assert count_status(changes, "stable") == 2
    # the new lesion is where it was put (anatomy coordinates -> follow-up world through the motion)
    m = affine_matrix_lps(motion.GetInverse())
    flip = np.diag([-1.0, -1.0, 1.0])
    new_world = flip @ (m[:3, :3] @ (flip @ (CENTRE + np.asarray(NEW[0]))) + m[:3, 3])
    assert _status_at(changes, labels, follow.affine, new_world, "new")


def test_missed_by_segmentation_still_found_by_subtraction(pair):
    follow, baseline, motion = pair
    new_id = [c for c in compare_visits(follow, baseline, motion, GAIN)[0] if c.status == "new"][0].lesion_id
    _, labels = compare_visits(follow, baseline, motion, GAIN)
    hidden = np.where(labels == new_id, 0, follow.labels)     # the segmentation missed the new lesion
    blind = Visit(follow.flair, follow.affine, follow.brain, label_lesions(hidden, follow.affine))
    changes, _ = compare_visits(blind, baseline, motion, GAIN)
    found = [c for c in changes if c.status == "new"]
    assert len(found) == 1 and not found[0].segmented


def test_unsegmented_visits_still_give_new_and_enlarging(pair):
    # a cross-sectional segmentation that finds nothing at either visit (e.g. a degenerate
    # tissue model): the joint maps alone must still show the growth and the new lesion
    follow, baseline, motion = pair
    empty = np.zeros(follow.labels.shape, dtype=np.int32)
    blind_f = Visit(follow.flair, follow.affine, follow.brain, empty)
    blind_r = Visit(baseline.flair, baseline.affine, baseline.brain, np.zeros(baseline.labels.shape, np.int32))
    changes, labels = compare_visits(blind_f, blind_r, motion, GAIN)
    assert count_status(changes, "new") == 1
    assert count_status(changes, "enlarging") == 1
    assert all(not c.segmented for c in changes)
    m = affine_matrix_lps(motion.GetInverse())
    flip = np.diag([-1.0, -1.0, 1.0])
    grown_world = flip @ (m[:3, :3] @ (flip @ (CENTRE + np.asarray(GROWING[0]))) + m[:3, 3])
    assert _status_at(changes, labels, follow.affine, grown_world, "enlarging")


def test_rescan_with_motion_and_drift_has_no_change():
    rng = np.random.default_rng(9)
    lesions = STABLE + [GROWING, SHRINKING, NEW]
    a = _phantom(lesions, AFFINE, SHAPE, rng)
    motion = sitk.Euler3DTransform((0.0, 0.0, 0.0), -0.05, 0.02, 0.04, (-1.7, 2.4, -0.9))
    b_affine = centred_affine((1.4, 1.4, 2.2), (9.0, -2.0, 14.0))
    b = _phantom(lesions, b_affine, SHAPE, rng, gain=0.8, bias=-0.1, moved=motion)
    changes, _ = compare_visits(b, a, motion, GAIN)
    assert count_status(changes, "new") == 0
    assert count_status(changes, "enlarging") == 0
    assert count_status(changes, "shrinking") == 0
    # nor without any segmented lesion (every lesion is then judged on the joint maps alone)
    blind_a = Visit(a.flair, a.affine, a.brain, np.zeros(a.labels.shape, np.int32))
    blind_b = Visit(b.flair, b.affine, b.brain, np.zeros(b.labels.shape, np.int32))
    changes, _ = compare_visits(blind_b, blind_a, motion, GAIN)
    assert count_status(changes, "new") == 0
    assert count_status(changes, "enlarging") == 0


def test_identity_resampling_sanity():
    # resample_array with the composed transform puts the reference onto the follow-up grid
    rng = np.random.default_rng(1)
    data = rng.random((10, 12, 8)).astype(np.float32)
    t = affine_transform_from_matrix(np.eye(4))
    out = resample_array(data, AFFINE, Grid(data.shape, AFFINE), t)
    assert np.allclose(out, data, atol=1e-5)

"""Gd+ detection on a small synthetic head with known enhancing lesion, vessel and choroid plexus."""

from __future__ import annotations

import numpy as np

from msimaging.enhancing import EnhancingRules, detect, elongation
from msimaging.lesions import LesionRules
from tests.conftest import oblique_affine

AFFINE = oblique_affine(zooms=(1.2, 1.2, 2.0))
SHAPE = (64, 64, 40)


def _head(rng):
    """T1w, ce-T1w, FLAIR and brain of an ellipsoid brain (WM 1.0 / GM 0.65 shell / CSF ventricle)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    p = (ijk - (np.asarray(SHAPE) - 1) / 2) * np.array([1.2, 1.2, 2.0])
    r = np.sqrt((p[..., 0] / 34) ** 2 + (p[..., 1] / 34) ** 2 + (p[..., 2] / 34) ** 2)
    brain = r < 1.0
    t1 = np.where(brain, np.where(r > 0.85, 0.65, 1.0), 0.1)
    flair = np.where(brain, np.where(r > 0.85, 0.7, 0.55), 0.05)
    ventricle = np.sqrt(((p[..., 0] - 8) / 5) ** 2 + (p[..., 1] / 12) ** 2 + (p[..., 2] / 6) ** 2) < 1
    t1[ventricle], flair[ventricle] = 0.25, 0.12
    ce = t1.copy()
    truth = np.zeros(SHAPE, dtype=bool)
    # enhancing lesion in white matter: T1w 0.62 (a T2 lesion), ce-T1w 1.35, FLAIR bright
    les = np.linalg.norm(p - np.array([-12.0, 6.0, 4.0]), axis=-1) < 3.5
    t1[les], ce[les], flair[les] = 0.62, 1.35, 1.0
    truth |= les
    # a non-enhancing T2 lesion
    t2les = np.linalg.norm(p - np.array([10.0, -14.0, -6.0]), axis=-1) < 3.0
    t1[t2les], ce[t2les], flair[t2les] = 0.62, 0.62, 1.0
    # choroid plexus in the ventricle: enhances strongly, not a lesion
    chor = np.linalg.norm(p - np.array([8.0, 0.0, 0.0]), axis=-1) < 3.0
    t1[chor], ce[chor], flair[chor] = 0.45, 1.5, 0.35
    # a deep vessel: thin tube, enhances, FLAIR dark
    tube = (np.hypot(p[..., 0] + 2.0, p[..., 2] + 10.0) < 1.2) & (np.abs(p[..., 1]) < 16)
    t1[tube], ce[tube], flair[tube] = 0.4, 1.45, 0.15
    # dura / sinus at the brain surface
    rim = (r > 0.94) & (r < 1.0) & (p[..., 1] > 20)
    ce[rim] = 1.4
    gain = 1.15                                   # different scaling of the post-contrast scan
    noise = lambda a: (a + rng.normal(0, 0.02, SHAPE)).astype(np.float32)  # noqa: E731
    return noise(t1), noise(ce * gain), noise(flair), brain, truth, t2les


def test_detects_enhancing_lesion_and_rejects_mimics():
    rng = np.random.default_rng(3)
    t1, ce, flair, brain, truth, t2les = _head(rng)
    labels = detect(ce, t1, AFFINE, brain, EnhancingRules(), LesionRules(), flair=flair,
                    t2_lesions=truth | t2les).labels
    assert labels.max() == 1
    found = labels > 0
    assert found[truth].mean() > 0.7                          # the lesion, most of it
    assert (found & ~truth).sum() * np.prod([1.2, 1.2, 2.0]) < 30.0   # little outside it


def test_without_flair_the_shape_and_csf_rules_reject_mimics():
    rng = np.random.default_rng(4)
    t1, ce, _, brain, truth, _ = _head(rng)
    labels = detect(ce, t1, AFFINE, brain, EnhancingRules(), LesionRules()).labels
    assert labels.max() == 1 and (labels > 0)[truth].any()


def test_elongation_of_a_tube_and_a_ball():
    line = np.stack([np.arange(20.0), np.zeros(20), np.zeros(20)], 1)
    tube = np.concatenate([line + [0, dy, dz] for dy in (-1, 0, 1) for dz in (-1, 0, 1)])
    ball = np.argwhere(np.ones((5, 5, 5))).astype(float)
    assert elongation(tube) > 4.0 > 1.5 > elongation(ball)


def _lesion_on_a_vein():
    """The head of :func:`_head` with an enhancing lesion on its deep vein: T1w, ce-T1w, brain, the
    head's own enhancing lesion, and the lesion on the vein."""
    rng = np.random.default_rng(5)
    t1, ce, _, brain, other, _ = _head(rng)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    p = (ijk - (np.asarray(SHAPE) - 1) / 2) * np.array([1.2, 1.2, 2.0])
    # the deep vessel at tissue level before contrast (partial volume: it is parenchyma to the detector)
    tube = (np.hypot(p[..., 0] + 2.0, p[..., 2] + 10.0) < 1.2) & (np.abs(p[..., 1]) < 16)
    t1[tube] = 0.85 + rng.normal(0, 0.02, int(tube.sum()))
    les = np.linalg.norm(p - np.array([-2.0, 10.0, -10.0]), axis=-1) < 3.5     # on the vessel
    t1[les] = 0.62 + rng.normal(0, 0.02, int(les.sum()))
    ce[les] = 1.35 * 1.15 + rng.normal(0, 0.02, int(les.sum()))
    return t1, ce, brain, other, les


def test_a_lesion_joined_to_a_vessel_is_found_on_a_second_look():
    """Enhancement grows along a vein into a lesion on it: the one candidate is tubular and rejected
    whole; split where it leaves the T2 lesion, the lesion's part is judged on its own."""
    from dataclasses import replace

    t1, ce, brain, other, les = _lesion_on_a_vein()
    rules = EnhancingRules()
    whole = detect(ce, t1, AFFINE, brain, replace(rules, t2_split_voxels=0.0), LesionRules(), t2_lesions=les)
    assert not (whole.labels[les] > 0).any()
    assert any(c["reason"] == "tubular (vessel)" for c in whole.candidates)
    split = detect(ce, t1, AFFINE, brain, rules, LesionRules(), t2_lesions=les)
    found = split.labels > 0
    assert found[les].mean() > 0.7                             # the lesion ...
    assert (found & ~les & ~other).sum() * np.prod([1.2, 1.2, 2.0]) < 30.0   # ... not the vein
    parts = [c for c in split.candidates if "part_of" in c]
    assert len(parts) == 2 and sum(c["accepted"] for c in parts) == 1


def test_supported_lesions_keeps_the_t2_lesions_the_model_supports() -> None:
    from msimaging.enhancing import supported_lesions

    t2 = np.zeros((20, 20, 20), bool)
    t2[2:5, 2:5, 2:5] = True          # a lesion with one voxel at 0.9
    t2[10:14, 10:14, 10:14] = True    # a lesion whose voxels all stay below the model's threshold
    prob = np.where(t2, 0.3, 0.0).astype(np.float32)
    prob[3, 3, 3] = 0.9
    kept = supported_lesions(t2, prob, 0.5)
    assert kept[2:5, 2:5, 2:5].all() and not kept[10:14, 10:14, 10:14].any()
    assert (supported_lesions(t2, prob, 0.0) == t2).all()      # 0: every lesion
    assert (supported_lesions(t2, None, 0.5) == t2).all()      # no model: every lesion
    # its core only: the fringe the segmentation keeps below the voxel floor is no evidence
    core = supported_lesions(t2, prob, 0.5, 0.35)
    assert core.sum() == 1 and core[3, 3, 3]
    prob[2:5, 2:5, 2] = 0.4               # a core of 10 voxels
    core = supported_lesions(t2, prob, 0.5, 0.35)
    assert core.sum() == 10 and not core[10:14, 10:14, 10:14].any()
    assert (supported_lesions(t2, prob, 0.0, 0.35) == (t2 & (prob >= 0.35))).all()   # no peak rule: every core


def test_a_t2_lesion_without_model_support_gives_no_second_look():
    """The vessel-joined lesion of the test above, with the T2-lesion model's voxel probability
    below its threshold on the T2 lesion: the lesion is not evidence, the candidate stays rejected;
    with the probability above it on one voxel the second look finds it."""
    t1, ce, brain, _, les = _lesion_on_a_vein()
    # the probability the rules read (90th percentile >= lesion_like_probability would exempt
    # the candidate by itself): 0.45 on the lesion, one voxel at `peak`
    rules = EnhancingRules(min_t2_probability=0.0)
    for peak, found in ((0.45, False), (0.6, True)):
        prob = np.where(les, 0.45, 0.0).astype(np.float32)
        prob[tuple(np.argwhere(les)[0])] = peak
        det = detect(ce, t1, AFFINE, brain, rules, LesionRules(), t2_lesions=les, t2_probability=prob)
        assert bool((det.labels[les] > 0).mean() > 0.7) is found, peak

"""Enhancing-lesion implants: the enhancement patterns, the draw and the implant on a known volume."""

from __future__ import annotations

import numpy as np
import pytest

from msimaging.implant import LesionProfile
from msimaging.implant_enhancing import (ENHANCEMENT, RING_MIN_MM3, draw_enhancement, enhancement_shape,
                                         implant_enhancing)

#: A flat profile: every lesion FLAIR +40 %, T2w +60 %, T1w -20 %, sharp edge, no texture.
PROFILE = LesionProfile(contrasts=("FLAIR", "T2w", "T1w"), core=[[0.4, 0.6, -0.2]], volumes_mm3=[100.0],
                        edge_mm=[-1.0, 1.0, 2.0], edge=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
                        texture_sd=[0.0, 0.0, 0.0])


def test_nodular_fills_the_lesion_and_ring_spares_its_core():
    d = np.array([-2.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5, 4.0])
    nod = enhancement_shape(d, "nodular")
    ring = enhancement_shape(d, "ring", ring_width_mm=1.5, ring_core=0.15)
    assert nod[0] == 0 and nod[-1] == 1 and nod[2] == pytest.approx(0.5)
    assert ring[4] == 1 and ring[5] == 1                        # the shell enhances fully
    assert ring[-1] == pytest.approx(0.15) and ring[-2] == pytest.approx(0.15)  # the core faintly
    with pytest.raises(ValueError, match="pattern"):
        enhancement_shape(d, "target")


def test_draw_is_deterministic_in_range_and_rings_only_large_lesions():
    vols = [12.0, 40.0, 90.0, 150.0, 400.0, 800.0] * 20
    a = draw_enhancement(vols, np.random.default_rng(5))
    b = draw_enhancement(vols, np.random.default_rng(5))
    assert a == b
    e = np.array([x for x, _ in a])
    assert e.min() >= ENHANCEMENT[0] and e.max() <= ENHANCEMENT[1]
    rings = [v for v, (_, p) in zip(vols, a) if p == "ring"]
    assert rings and min(rings) >= RING_MIN_MM3
    assert 0.3 < len(rings) / sum(v >= RING_MIN_MM3 for v in vols) < 0.7


def test_implant_raises_every_contrast_and_labels_each_lesion():
    shape = (40, 40, 30)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    images = {"FLAIR": np.ones(shape, np.float32), "T2w": np.ones(shape, np.float32),
              "T1w": np.ones(shape, np.float32), "ceT1w": np.ones(shape, np.float32)}
    brain = np.ones(shape, bool)
    mask = np.zeros(shape, bool)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    a = np.linalg.norm(ijk - [12, 20, 15], axis=-1) <= 4.0        # 257 mm^3: may be a ring
    b = np.linalg.norm(ijk - [28, 20, 15], axis=-1) <= 2.0        # 33 mm^3: nodular
    mask |= a | b
    case = implant_enhancing(images, affine, brain, np.ones(shape, np.float32), np.ones(shape, np.float32),
                             mask, affine, PROFILE, seed=2)
    assert case.truth.max() == 2 and len(case.lesions) == 2
    for les in case.lesions:
        region = case.truth == les["label"]
        assert les["volume_mm3"] == pytest.approx(region.sum(), abs=1)
        core = region & (np.asarray([np.linalg.norm(ijk - c, axis=-1) for c in ([12, 20, 15], [28, 20, 15])]).min(0) < 1)
        # the profile's contrasts, scaled together by the lesion's one log-normal jitter
        jitter = (case.images["FLAIR"][core].mean() - 1.0) / 0.4
        assert 0.6 < jitter < 1.6
        assert (1.0 - case.images["T1w"][core].mean()) / 0.2 == pytest.approx(jitter, rel=0.02)
        assert (case.images["T2w"][core].mean() - 1.0) / 0.6 == pytest.approx(jitter, rel=0.02)
        # ce-T1w: the pre-contrast hypointensity and the lesion's enhancement (nodular: the whole core)
        t1 = case.images["T1w"][core].mean()
        if les["pattern"] == "nodular":
            assert case.images["ceT1w"][core].mean() == pytest.approx(t1 + les["enhancement"], abs=0.05)
        else:
            assert case.images["ceT1w"][core].mean() < t1 + 0.5 * les["enhancement"]
        assert ENHANCEMENT[0] <= les["enhancement"] <= ENHANCEMENT[1]
    # nothing changes away from the lesions
    far = np.linalg.norm(ijk - [20, 5, 5], axis=-1) < 3
    for c in images:
        assert np.allclose(case.images[c][far], 1.0)
    with pytest.raises(ValueError, match="ceT1w"):
        implant_enhancing({k: v for k, v in images.items() if k != "ceT1w"}, affine, brain, brain.astype(np.float32),
                          brain.astype(np.float32), mask, affine, PROFILE, seed=2)

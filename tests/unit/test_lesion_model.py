"""The voxel lesion classifier (msimaging.lesion_model)."""

from __future__ import annotations

import numpy as np


def test_lesion_model_quadratic_form_equals_the_fitted_regression() -> None:
    """The fast logit (standardisation folded into c + x.b + x.U.x) equals the fitted model's."""
    from msimaging.lesion_model import fit_logistic, quadratic

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 4))
    y = (x[:, 0] * x[:, 1] + 0.5 * x[:, 2] + 0.3 * rng.standard_normal(3000) > 0.2).astype(float)
    m = fit_logistic(x, y, np.ones(len(y)), ("FLAIR",), l2=0.1)
    q = (quadratic(x) - m.mean) / m.scale
    assert np.allclose(m.logit(x), q @ m.weights, atol=1e-8)
    acc = float(((m.predict(x) >= 0.5) == (y > 0)).mean())
    assert acc > 0.9            # an interaction (x0 * x1) is learnt: linear features could not


def test_component_training_scores_what_the_segmentation_outputs() -> None:
    """A kept candidate left with no voxel at the chosen odds is no lesion: it neither counts as a
    prediction nor detects the truth lesion it overlapped only below those odds."""
    from msimaging.bench.lesion_training import case_score

    # candidate 1 covers truth lesion 1 at both odds; candidate 2 covers truth lesion 2 only at
    # odds 0.35 (at odds 1.0 it keeps no voxel)
    c = {"skip": np.zeros(2, bool), "y": np.ones(2), "truth_voxels": 20, "truth_lesions": 2,
         "odds": {0.35: (np.array([10.0, 10.0]), np.array([10.0, 10.0])),
                  1.0: (np.array([10.0, 0.0]), np.array([10.0, 0.0]))},
         "pairs": {0.35: np.array([[1, 1], [2, 2]]), 1.0: np.array([[1, 1]])}}
    keep = np.array([True, True])
    assert case_score(c, keep, 0.35) == 1.0                 # Dice 1, F1 1
    # at odds 1.0: Dice 2*10/(10+20) = 0.667; P 1/1, R 1/2 -> F1 0.667
    assert abs(case_score(c, keep, 1.0) - 2 / 3) < 1e-9

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

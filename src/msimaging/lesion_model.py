"""Voxel lesion classifier: quadratic logistic regression on multi-contrast evidence.

Real lesions are faint: on sub-p07 the median lesion voxel is +26 % over local NAWM on FLAIR
while grey matter is +20 % (SD 14 %); T2w separates them better (+67 % vs +29 %) and on T1w they
look like grey matter. No single-contrast threshold separates them, and rules written on one
patient (mirror symmetry, lesion frequency, grey-matter posterior) removed the lesions of others.
This model combines, per voxel, the evidence the segmentation computes anyway:

* each available contrast's excess over its local NAWM reference (raw and smoothed 1 mm),
* the FLAIR excess over local grey matter (in GM SDs), the tissue model's posteriors, the
  template tissue priors and the depth below the brain surface,

with all pairwise products (a lesion is bright *and* in white-matter territory), in a logistic
regression fitted by Newton's method with an L2 penalty: a convex problem, so the weights are
reproducible to rounding. One model per contrast set (FLAIR+T2w+T1w, FLAIR+T1w, FLAIR+T2w, FLAIR,
T2w); the segmentation uses the one for its contrasts.

The weights ship as ``msimaging/data/lesion_model.json``; they are built from real lesion shapes
implanted into real scans of ``shared/data`` by ``python -m msimaging.bench.lesion_training``,
which also records what they were trained on so the bench can score on what they were not.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)

MODEL_FILE = "lesion_model.json"
#: Contrast sets with a model, best first (the hyperintense contrast first).
CONTRAST_SETS: tuple[tuple[str, ...], ...] = (
    ("FLAIR", "T2w", "T1w"), ("FLAIR", "T2w"), ("FLAIR", "T1w"), ("FLAIR",), ("T2w", "T1w"), ("T2w",))
#: Clip of every base feature (robustness to outliers: bright vessels, CSF edges, air).
CLIP = 4.0


def feature_names(contrasts: tuple[str, ...]) -> list[str]:
    """Base features for a contrast set (the order of :func:`base_features`)."""
    names = []
    for c in contrasts:
        names += [f"{c}_excess", f"{c}_excess_s1"]
    names += ["z_gm", "post_csf", "post_gm", "post_wm", "prior_csf", "prior_gm", "prior_wm", "depth"]
    return names


def base_features(excess: Mapping[str, np.ndarray], z_gm: np.ndarray, post: np.ndarray,
                  priors: np.ndarray, depth_mm: np.ndarray, contrasts: tuple[str, ...],
                  smooth: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, F) base features of N voxels (each input already restricted to those voxels).

    ``excess``: contrast / local NAWM - 1; ``smooth``: the same after 1 mm smoothing; ``post`` and
    ``priors``: (N, 3) CSF, GM, WM; ``depth_mm``: distance to the brain surface.
    """
    cols = []
    for c in contrasts:
        cols += [excess[c], smooth[c]]
    cols += [np.clip(z_gm / 4.0, -CLIP, CLIP), post[:, 0], post[:, 1], post[:, 2],
             priors[:, 0], priors[:, 1], priors[:, 2], np.minimum(depth_mm, 20.0) / 10.0]
    x = np.stack([np.asarray(v, np.float64) for v in cols], axis=1)
    return np.clip(x, -CLIP, CLIP)


def quadratic(x: np.ndarray) -> np.ndarray:
    """Features, their squares and pairwise products (plus a constant)."""
    n, f = x.shape
    iu = np.triu_indices(f)
    out = np.empty((n, 1 + f + len(iu[0])), np.float64)
    out[:, 0] = 1.0
    out[:, 1:1 + f] = x
    out[:, 1 + f:] = x[:, iu[0]] * x[:, iu[1]]
    return out


@dataclass
class LogisticModel:
    """Quadratic logistic regression of one contrast set (weights on standardised features)."""

    contrasts: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    def quadratic_form(self) -> tuple[float, np.ndarray, np.ndarray]:
        """The logit as ``c + x.b + x.U.x`` on base features (standardisation folded in)."""
        w = self.weights / self.scale
        f = int(round((-3 + np.sqrt(9 + 8 * (len(w) - 1))) / 2))   # 1 + f + f(f+1)/2 terms
        c = float(self.weights[0] - np.sum(w[1:] * self.mean[1:]))
        b = w[1:1 + f]
        u = np.zeros((f, f))
        u[np.triu_indices(f)] = w[1 + f:]
        return c, b, u

    def logit(self, x: np.ndarray, chunk: int = 500_000) -> np.ndarray:
        """The model's log-odds of each row of base features ``x`` (float64)."""
        c, b, u = self.quadratic_form()
        out = np.empty(len(x), np.float64)
        for i in range(0, len(x), chunk):
            xs = np.asarray(x[i:i + chunk], np.float64)
            out[i:i + chunk] = c + xs @ b + np.einsum("ij,ij->i", xs @ u, xs)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Lesion probability of each row of base features ``x``."""
        return (1.0 / (1.0 + np.exp(-np.clip(self.logit(x), -40, 40)))).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"contrasts": list(self.contrasts), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "threshold": self.threshold, "info": self.info}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LogisticModel":
        return cls(tuple(d["contrasts"]), np.asarray(d["mean"]), np.asarray(d["scale"]),
                   np.asarray(d["weights"]), float(d["threshold"]), dict(d.get("info", {})))


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, contrasts: tuple[str, ...],
                 l2: float = 1.0, iterations: int = 30) -> LogisticModel:
    """Weighted L2-penalised logistic regression on :func:`quadratic` features (Newton / IRLS)."""
    q = quadratic(x)
    mean, scale = q.mean(axis=0), q.std(axis=0)
    mean[0], scale[0] = 0.0, 1.0
    scale[scale < 1e-9] = 1.0
    z = (q - mean) / scale
    beta = np.zeros(z.shape[1])
    w = np.asarray(w, np.float64) / np.mean(w)
    penalty = l2 * np.eye(z.shape[1])
    penalty[0, 0] = 0.0
    for it in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -40, 40)))
        g = z.T @ (w * (p - y)) + penalty @ beta
        h = (z * (w * p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(h, g)
        beta -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return LogisticModel(contrasts, mean, scale, beta, info={"iterations": it + 1, "samples": int(len(y)),
                                                             "positives": int(y.sum()), "l2": l2})


def model_for(contrasts: tuple[str, ...] | list[str], models: Mapping[tuple[str, ...], LogisticModel]
              ) -> LogisticModel | None:
    """The model of the largest contrast set that the session has (None: none fits)."""
    have = set(contrasts)
    for cs in CONTRAST_SETS:
        if set(cs) <= have and cs in models:
            return models[cs]
    return None


def load_models(text: str) -> dict[tuple[str, ...], LogisticModel]:
    d = json.loads(text)
    return {tuple(m["contrasts"]): LogisticModel.from_json(m) for m in d["models"]}


@lru_cache(maxsize=1)
def bundled_models() -> dict[tuple[str, ...], LogisticModel]:
    """The shipped models ({} when the package has none)."""
    ref = resources.files("msimaging").joinpath("data", MODEL_FILE)
    if not ref.is_file():
        return {}
    return load_models(ref.read_text())


@lru_cache(maxsize=1)
def bundled_component_model() -> LogisticModel | None:
    """The shipped component-stage model (None when the package has none)."""
    ref = resources.files("msimaging").joinpath("data", MODEL_FILE)
    if not ref.is_file():
        return None
    d = json.loads(ref.read_text()).get("components")
    return LogisticModel.from_json(d) if d else None


def bundled_training() -> dict[str, Any]:
    """What the shipped models were trained on (backgrounds, masks), for held-out scoring."""
    ref = resources.files("msimaging").joinpath("data", MODEL_FILE)
    if not ref.is_file():
        return {}
    return dict(json.loads(ref.read_text()).get("training", {}))


# --- the component stage ---------------------------------------------------------------------------

#: Candidate components are connected voxels whose voxel-model probability reaches this fraction of
#: the voxel model's threshold (in odds): lower than the voxel threshold, so that small faint
#: lesions become candidates and the component stage decides on their pooled evidence.
CANDIDATE_ODDS = 0.35


COMPONENT_FEATURES = ("log_volume", "mean_logit", "max_logit", "frac_above", "hyper_mean", "mirror_z", "post_gm",
                      "prior_csf", "depth_max")


def component_features(labels: np.ndarray, n: int, logit: np.ndarray, hyper_excess: np.ndarray,
                       mirror_z: np.ndarray, post_gm: np.ndarray, prior_csf: np.ndarray, depth_mm: np.ndarray,
                       voxel_mm3: float) -> np.ndarray:
    """(n, K) features (``COMPONENT_FEATURES``) of components 1..n of ``labels`` (maps on its voxels).

    The other contrasts enter through the voxel model's ``logit`` (shifted so its threshold is 0),
    so one component model serves every contrast set. ``hyper_excess``: FLAIR (else T2w) over
    local NAWM - 1; ``mirror_z``: that contrast above
    the brightest contralateral FLAIR near the mirror image, in NAWM SDs (symmetric normal
    hyperintensities score low; it is evidence, weighed with the rest, never a veto).
    """
    lab = labels.ravel()
    sel = lab > 0
    idx = lab[sel]

    def mean(v: np.ndarray) -> np.ndarray:
        s = np.bincount(idx, weights=np.asarray(v, np.float64).ravel()[sel], minlength=n + 1)[1:]
        return s / np.maximum(counts, 1)

    counts = np.bincount(idx, minlength=n + 1)[1:].astype(np.float64)
    lg = np.asarray(logit, np.float64).ravel()[sel]
    mx = np.full(n + 1, -np.inf)
    np.maximum.at(mx, idx, lg)
    dmax = np.zeros(n + 1)
    np.maximum.at(dmax, idx, np.asarray(depth_mm, np.float64).ravel()[sel])
    cols = [np.log(np.maximum(counts * voxel_mm3, 1.0)) / 3.0, np.clip(mean(logit), -10, 10) / 4.0,
            np.clip(mx[1:], -10, 10) / 4.0, mean(np.asarray(logit) > 0)]
    cols += [np.clip(mean(hyper_excess), -CLIP, CLIP)]
    cols += [np.clip(mean(mirror_z), -10, 10) / 4.0, mean(post_gm), mean(prior_csf), np.minimum(dmax[1:], 20.0) / 10.0]
    return np.stack(cols, axis=1)

"""Voxel lesion classifier: logistic regressions (or boosted trees) on multi-contrast evidence.

Real lesions are faint: on sub-p07 the median lesion voxel is +26 % over local NAWM on FLAIR
while grey matter is +20 % (SD 14 %); T2w separates them better (+67 % vs +29 %) and on T1w they
look like grey matter. No single-contrast threshold separates them, and rules written on one
patient (mirror symmetry, lesion frequency, grey-matter posterior) removed the lesions of others.
The model combines, per voxel, the evidence the segmentation computes anyway:

* each available contrast's excess over its local NAWM reference (raw, smoothed 1 mm and 2 mm) and
  the peak of its 1 mm-smoothed excess within ``PEAK_MM`` (context: a voxel at half a nearby
  lesion's peak is that lesion's partial-volume edge; T1w: the deepest trough),
* the FLAIR excess over local grey matter (in GM SDs), the tissue model's posteriors, the
  template tissue priors and the depth below the brain surface.

Three model kinds read the same features (each model names the ones it uses):

* :class:`LogisticModel` (what ships): all pairwise products of the features without context
  (the quadratic model). It is not monotone: a very bright lesion can score lower than a faint
  one (phantom ph3mm's +53 % FLAIR lesions). The component stage is this kind too.
* :class:`TreeModel` (``lesion_training --kind trees --context``): gradient-boosted oblivious
  decision trees (200 trees of depth 6 on the logistic loss). Trees take any shape of response and
  any interaction (bright *and* in white matter, bright *and* T1w-dark, faint *but* next to a
  brighter core) and are constant beyond their training range. Measured on the held-out bench
  against the quadratic model (README, What is short): Dice +0.03 to +0.06 and lesion F1 +0.06 to
  +0.08 in every 1 mm load band, sub-p07 Dice 0.42 -> 0.50 and F1 0.55 -> 0.62; not shipped
  because the Gd+ detector, the phantoms and sub-p12's new lesions fare worse with its mask.
* :class:`MonotoneModel` (``lesion_training --kind monotone``): the logit is an unconstrained
  quadratic of the location features (posteriors, priors, depth) plus, for each tissue gate
  ``g`` in (CSF, GM, WM posterior; non-negative, summing to 1), ``g`` times an additive
  piecewise-linear response to each contrast feature and z_gm, and ``g`` times the T1w-dark
  interaction (hyperintense 1 mm excess times ``max(0, -T1w excess)``). Every response to the
  hyperintensity evidence (FLAIR and T2w excess, raw, smoothed and peak, and z_gm) is
  non-decreasing, so a brighter voxel never scores lower, while the gates keep "bright *and* in
  white-matter territory". Responses are stored as their values at fixed breaks (knots:
  quantiles of the training samples) and evaluated by linear interpolation. With the context
  features it was measured on the whole held-out bench (issue 14) and not shipped: thick-slice
  lesion F1 < 2 mL rose (0.65 -> 0.73) but 1 mm F1 < 10 mL and sub-p07's F1 fell (0.55 -> 0.51)
  and three phantoms stayed below naive (now over-segmented: ph3mm 4.7 mL for 3.5 mL).

The two regressions are convex problems with an L2 penalty (the monotone one fitted by L-BFGS-B
with the increments of its hyperintensity responses bounded below by 0), so their weights are
reproducible to rounding; the trees are deterministic for their seed. One model per contrast set
(FLAIR+T2w+T1w, FLAIR+T1w, FLAIR+T2w, FLAIR); the segmentation uses the one for its contrasts.

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


#: Radius (mm) of the neighbourhood whose peak smoothed excess is a voxel's context feature.
PEAK_MM = 3.0
#: Per-contrast features: the excess over local NAWM raw, smoothed 1 mm and 2 mm, and the peak of
#: the 1 mm-smoothed excess within ``PEAK_MM`` (T1w: the deepest trough). The last two are context.
CONTRAST_FEATURES = ("excess", "excess_s1", "excess_s2", "peak")
PLAIN_FEATURES = ("excess", "excess_s1")
COMMON_FEATURES = ("z_gm", "post_csf", "post_gm", "post_wm", "prior_csf", "prior_gm", "prior_wm", "depth")


def feature_names(contrasts: tuple[str, ...], context: bool = True) -> list[str]:
    """Base features for a contrast set (the columns of :func:`base_features`); ``context``: with
    the 2 mm-smoothed excess and the peak (else the features of the quadratic models)."""
    names = []
    for c in contrasts:
        names += [f"{c}_{k}" for k in (CONTRAST_FEATURES if context else PLAIN_FEATURES)]
    return names + list(COMMON_FEATURES)


def base_features(per_contrast: Mapping[str, Mapping[str, np.ndarray]], z_gm: np.ndarray, post: np.ndarray,
                  priors: np.ndarray, depth_mm: np.ndarray, names: list[str] | tuple[str, ...]) -> np.ndarray:
    """(N, F) base features ``names`` of N voxels (each input already restricted to those voxels).

    ``per_contrast[kind][contrast]``, kind in ``CONTRAST_FEATURES``: ``excess`` is contrast / local
    NAWM - 1, ``excess_s1`` / ``excess_s2`` the same after 1 mm / 2 mm smoothing, ``peak`` the
    maximum (T1w: minimum) of ``excess_s1`` within ``PEAK_MM``; ``post`` and ``priors``: (N, 3) CSF,
    GM, WM; ``depth_mm``: distance to the brain surface.
    """
    common = {"z_gm": lambda: np.clip(z_gm / 4.0, -CLIP, CLIP), "post_csf": lambda: post[:, 0],
              "post_gm": lambda: post[:, 1], "post_wm": lambda: post[:, 2], "prior_csf": lambda: priors[:, 0],
              "prior_gm": lambda: priors[:, 1], "prior_wm": lambda: priors[:, 2],
              "depth": lambda: np.minimum(depth_mm, 20.0) / 10.0}
    cols = []
    for name in names:
        if name in common:
            cols.append(common[name]())
        else:
            c, kind = name.split("_", 1)
            cols.append(per_contrast[kind][c])
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


class _Probability:
    """A voxel model's lesion probability: the logistic function of its ``logit``."""

    def logit(self, x: np.ndarray, chunk: int = 500_000) -> np.ndarray:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Lesion probability of each row of base features ``x``."""
        return (1.0 / (1.0 + np.exp(-np.clip(self.logit(x), -40, 40)))).astype(np.float32)


@dataclass
class LogisticModel(_Probability):
    """Quadratic logistic regression of one contrast set (weights on standardised features)."""

    contrasts: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)
    #: the base features (columns of ``x``) it reads; empty: :func:`feature_names` without context
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.features and set(self.contrasts) <= {"FLAIR", "T2w", "T1w"}:
            self.features = tuple(feature_names(self.contrasts, context=False))

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

    def to_json(self) -> dict[str, Any]:
        return {"contrasts": list(self.contrasts), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "threshold": self.threshold, "info": self.info,
                "features": list(self.features)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LogisticModel":
        return cls(tuple(d["contrasts"]), np.asarray(d["mean"]), np.asarray(d["scale"]),
                   np.asarray(d["weights"]), float(d["threshold"]), dict(d.get("info", {})),
                   tuple(d.get("features", ())))


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


def model_for(contrasts: tuple[str, ...] | list[str], models: Mapping[tuple[str, ...], Any]) -> Any:
    """The model of the largest contrast set that the session has (None: none fits)."""
    have = set(contrasts)
    for cs in CONTRAST_SETS:
        if set(cs) <= have and cs in models:
            return models[cs]
    return None


def load_models(text: str, key: str = "models") -> dict[tuple[str, ...], LogisticModel]:
    """The voxel models of a model file: "models" (the segmentation's), or those with the
    ``key`` list's models in place of theirs for the contrast sets it has ("evidence_models":
    voxel-wise fits, :func:`bundled_evidence_models`)."""
    d = json.loads(text)
    models = {tuple(m["contrasts"]): model_from_json(m) for m in d["models"]}
    if key != "models":
        models.update({tuple(m["contrasts"]): model_from_json(m) for m in d.get(key, [])})
    return models


@lru_cache(maxsize=1)
def bundled_models() -> dict[tuple[str, ...], Any]:
    """The shipped segmentation models ({} when the package has none)."""
    ref = resources.files("msimaging").joinpath("data", MODEL_FILE)
    if not ref.is_file():
        return {}
    return load_models(ref.read_text())


@lru_cache(maxsize=1)
def bundled_evidence_models() -> dict[tuple[str, ...], Any]:
    """The shipped voxel evidence models: the segmentation's models fitted with voxel-wise weights.

    A model file built with ``lesion_training --size-weight`` holds size-balanced segmentation
    models (each lesion voxel weighted by its lesion's volume ** -A, to find small lesions: a
    higher probability for every small bright structure) and, as ``evidence_models``, the
    voxel-wise fit of the same samples (for the size-balanced contrast sets), whose probability
    keeps the training cases' voxel prevalence: other steps that read the probability as evidence
    (the Gd+ detector) use these (measured: with the size-balanced probability, 3.1 false Gd+ per
    implanted scan instead of 1.9). For the contrast sets without one (all of them in the shipped,
    voxel-wise file) these are the segmentation's models.
    """
    ref = resources.files("msimaging").joinpath("data", MODEL_FILE)
    if not ref.is_file():
        return {}
    return load_models(ref.read_text(), "evidence_models")


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


# --- the monotone voxel model ----------------------------------------------------------------------

#: Features the monotone model is non-decreasing in: the hyperintensity evidence.
HYPER_CONTRASTS = ("FLAIR", "T2w")
#: Tissue gates (non-negative, summing to 1): each gates its own response to the evidence.
GATES = ("post_csf", "post_gm", "post_wm")
#: Location features: an unconstrained quadratic (their squares and pairwise products).
LOCATION_FEATURES = ("post_csf", "post_gm", "post_wm", "prior_csf", "prior_gm", "prior_wm", "depth")
#: Interior knots of each piecewise-linear response (quantiles of the training samples).
N_KNOTS = 8


def is_monotone_feature(name: str) -> bool:
    """Hyperintensity evidence: FLAIR or T2w excess (raw, smoothed, peak) or FLAIR over grey matter."""
    return name == "z_gm" or name.split("_", 1)[0] in HYPER_CONTRASTS


def evidence_terms(features: tuple[str, ...] | list[str]) -> list[tuple[str | None, str, str | None]]:
    """(gate, feature, by) of every piecewise-linear term of a monotone model on ``features``.

    Per tissue gate: one term per contrast feature and z_gm, and the T1w-dark interaction: the
    1 mm-smoothed hyperintense excess times ``max(0, -T1w_excess_s1)`` (T1w-dark *and* bright).
    """
    ev = [f for f in features if f not in COMMON_FEATURES or f == "z_gm"]
    hyper = next((f"{c}_excess_s1" for c in HYPER_CONTRASTS if f"{c}_excess_s1" in features), None)
    terms: list[tuple[str | None, str, str | None]] = []
    for g in GATES:
        terms += [(g, f, None) for f in ev]
        if hyper is not None and "T1w_excess_s1" in features:
            terms.append((g, hyper, "T1w_excess_s1"))
    return terms


def ramps(v: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """(N, len(breaks) - 1) increments of ``v`` over each segment between consecutive breaks
    (``clip(v, b_s, b_s+1) - b_s``): non-negative weights on them make any non-decreasing
    piecewise-linear function of ``v`` with those breaks."""
    v = np.asarray(v, np.float64)[:, None]
    return np.clip(v, breaks[None, :-1], breaks[None, 1:]) - breaks[None, :-1]


@dataclass
class MonotoneModel(_Probability):
    """Voxel model monotone non-decreasing in the hyperintensity evidence.

    ``logit = constant + x_L.b + x_L.U.x_L + sum_terms gate * [max(0, -by)] * interp(feature, x, y)``
    with ``x_L`` the location features (an unconstrained quadratic) and every term a
    piecewise-linear function stored by its values ``y`` at breaks ``x``; ``y`` is non-decreasing
    for every hyperintensity feature (the gates and the T1w-dark factor are non-negative).
    """

    contrasts: tuple[str, ...]
    features: tuple[str, ...]
    constant: float
    location: np.ndarray           # b (L,)
    location_u: np.ndarray         # U (L, L), upper triangular
    terms: list[dict[str, Any]]
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    def logit(self, x: np.ndarray, chunk: int = 500_000) -> np.ndarray:
        """The model's log-odds of each row of base features ``x`` (columns: ``features``)."""
        col = {n: i for i, n in enumerate(self.features)}
        loc = [col[n] for n in LOCATION_FEATURES]
        out = np.empty(len(x), np.float64)
        for i in range(0, len(x), chunk):
            xs = np.asarray(x[i:i + chunk], np.float64)
            xl = xs[:, loc]
            o = self.constant + xl @ self.location + np.einsum("ij,ij->i", xl @ self.location_u, xl)
            for t in self.terms:
                v = np.interp(xs[:, col[t["feature"]]], t["x"], t["y"])
                if t["by"] is not None:
                    v *= np.maximum(-xs[:, col[t["by"]]], 0.0)
                if t["gate"] is not None:
                    v *= xs[:, col[t["gate"]]]
                o += v
            out[i:i + chunk] = o
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": "monotone", "contrasts": list(self.contrasts), "features": list(self.features),
                "constant": self.constant, "location_features": list(LOCATION_FEATURES),
                "location": self.location.tolist(), "location_u": self.location_u.tolist(),
                "terms": [{**t, "x": list(map(float, t["x"])), "y": list(map(float, t["y"]))} for t in self.terms],
                "threshold": self.threshold, "info": self.info}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MonotoneModel":
        assert tuple(d["location_features"]) == LOCATION_FEATURES
        terms = [{"gate": t["gate"], "feature": t["feature"], "by": t["by"], "monotone": bool(t["monotone"]),
                  "x": np.asarray(t["x"], np.float64), "y": np.asarray(t["y"], np.float64)} for t in d["terms"]]
        return cls(tuple(d["contrasts"]), tuple(d["features"]), float(d["constant"]), np.asarray(d["location"]),
                   np.asarray(d["location_u"]), terms, float(d["threshold"]), dict(d.get("info", {})))


def model_from_json(d: Mapping[str, Any]) -> "LogisticModel | MonotoneModel | TreeModel":
    """A voxel model of any kind (``kind``: "monotone", "trees"; absent: the quadratic LogisticModel)."""
    kind = d.get("kind")
    if kind == "monotone":
        return MonotoneModel.from_json(d)
    return TreeModel.from_json(d) if kind == "trees" else LogisticModel.from_json(d)


# --- boosted oblivious trees ---------------------------------------------------------------------------

@dataclass
class TreeModel(_Probability):
    """Gradient-boosted oblivious decision trees (logistic loss) of one contrast set.

    An oblivious tree asks the same question (``feature > threshold``) of every node of a level, so
    a tree of depth D is D questions and a table of 2**D leaf values, and the leaf of a voxel is the
    binary number its D answers spell (as in CatBoost: Prokhorenkova et al., NeurIPS 2018). The
    logit is ``base`` plus each tree's leaf value. Evaluating it is D column comparisons and one
    table look-up per tree, vectorised over the voxels: a whole 1 mm brain in a few seconds.

    Unlike the quadratic model, trees take any shape of evidence and any interaction between the
    contrasts and the location features, and they are constant beyond the training range (a
    brighter-than-seen lesion scores like the brightest seen, never lower).
    """

    contrasts: tuple[str, ...]
    features: tuple[str, ...]
    base: float
    split_features: np.ndarray   # (T, D) int: the column of each level's question
    split_thresholds: np.ndarray  # (T, D) float32: ... and its threshold
    values: np.ndarray           # (T, 2**D) leaf values (log-odds)
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    def logit(self, x: np.ndarray, chunk: int = 262_144) -> np.ndarray:
        """The model's log-odds of each row of base features ``x`` (columns: ``features``)."""
        depth = self.split_features.shape[1]
        bit = (1 << np.arange(depth - 1, -1, -1)).astype(np.int32)
        thr = np.asarray(self.split_thresholds, np.float32)
        out = np.empty(len(x), np.float64)
        for i in range(0, len(x), chunk):
            cols = np.ascontiguousarray(np.asarray(x[i:i + chunk], np.float32).T)
            acc = np.full(cols.shape[1], self.base, np.float64)
            leaf = np.empty(cols.shape[1], np.int32)
            for f, t, v in zip(self.split_features, thr, self.values):
                leaf[:] = 0
                for level in range(depth):
                    leaf += bit[level] * (cols[f[level]] > t[level])
                acc += v[leaf]
            out[i:i + chunk] = acc
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": "trees", "contrasts": list(self.contrasts), "features": list(self.features),
                "base": self.base, "split_features": self.split_features.tolist(),
                "split_thresholds": [[float(np.float32(t)) for t in row] for row in self.split_thresholds],
                "values": [[round(float(v), 7) for v in row] for row in self.values],
                "threshold": self.threshold, "info": self.info}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TreeModel":
        return cls(tuple(d["contrasts"]), tuple(d["features"]), float(d["base"]),
                   np.asarray(d["split_features"], np.int32), np.asarray(d["split_thresholds"], np.float32),
                   np.asarray(d["values"], np.float64), float(d["threshold"]), dict(d.get("info", {})))


def quantile_edges(x: np.ndarray, bins: int) -> list[np.ndarray]:
    """Per column of ``x``: the distinct inner quantiles splitting it into ``bins`` (the candidate
    thresholds of the trees), as float32 values."""
    q = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return [np.unique(np.quantile(np.asarray(x[:, j], np.float32), q).astype(np.float32)) for j in range(x.shape[1])]


def fit_trees(x: np.ndarray, y: np.ndarray, w: np.ndarray, contrasts: tuple[str, ...],
              features: tuple[str, ...] | list[str], trees: int = 200, depth: int = 6, learning_rate: float = 0.1,
              l2: float = 1.0, bins: int = 32, subsample: float = 0.5, seed: int = 0) -> TreeModel:
    """Newton boosting of oblivious trees on the weighted logistic loss (columns of ``x``: ``features``).

    Each level's question is the (feature, quantile threshold) of largest summed second-order gain
    over the level's nodes; each tree is grown on a random ``subsample`` of the rows (stochastic
    gradient boosting, Friedman 2002) and its leaf values, ``-learning_rate * G / (H + l2)``, are
    added to every row. Deterministic for a ``seed``.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float64)
    n, n_f = x.shape
    w = np.asarray(w, np.float64) / np.mean(w)
    edges = quantile_edges(x, bins)
    # bin b of a value: the number of edges below it, so ``bin > k`` is ``value > edges[k]``
    binned = np.stack([np.searchsorted(e, x[:, j], side="left") for j, e in enumerate(edges)], 1)
    offsets = (np.arange(n_f) * bins)[None, :]
    valid = np.zeros((n_f, bins - 1), bool)
    for j, e in enumerate(edges):
        valid[j, :len(e)] = True
    p0 = min(max(float(np.sum(w * y) / np.sum(w)), 1e-6), 1 - 1e-6)
    base = float(np.log(p0 / (1 - p0)))
    score = np.full(n, base)
    feats = np.zeros((trees, depth), np.int32)
    thr = np.zeros((trees, depth), np.float32)
    vals = np.zeros((trees, 1 << depth))
    for t in range(trees):
        rows = np.nonzero(rng.random(n) < subsample)[0]
        p = 1.0 / (1.0 + np.exp(-score[rows]))
        g = w[rows] * (p - y[rows])
        h = w[rows] * p * (1 - p)
        cells = binned[rows] + offsets
        node = np.zeros(len(rows), np.int64)
        for level in range(depth):
            size = (1 << level) * n_f * bins
            idx = (node[:, None] * (n_f * bins) + cells).ravel()
            gs = np.bincount(idx, np.repeat(g, n_f), minlength=size).reshape(-1, n_f, bins)
            hs = np.bincount(idx, np.repeat(h, n_f), minlength=size).reshape(-1, n_f, bins)
            gl, hl = np.cumsum(gs, axis=2)[:, :, :-1], np.cumsum(hs, axis=2)[:, :, :-1]
            gt, ht = gs.sum(axis=2, keepdims=True), hs.sum(axis=2, keepdims=True)
            gain = (gl ** 2 / (hl + l2) + (gt - gl) ** 2 / (ht - hl + l2) - gt ** 2 / (ht + l2)).sum(axis=0)
            j, k = np.unravel_index(int(np.argmax(np.where(valid, gain, -np.inf))), gain.shape)
            feats[t, level], thr[t, level] = j, edges[j][k]
            node = node * 2 + (binned[rows, j] > k)
        vals[t] = -learning_rate * np.bincount(node, g, minlength=1 << depth) / (
            np.bincount(node, h, minlength=1 << depth) + l2)
        leaf = np.zeros(n, np.int64)
        for level in range(depth):
            leaf = leaf * 2 + (x[:, feats[t, level]] > thr[t, level])
        score += vals[t][leaf]
    return TreeModel(contrasts, tuple(features), base, feats, thr, vals, info={
        "trees": trees, "depth": depth, "learning_rate": learning_rate, "l2": l2, "bins": bins,
        "subsample": subsample, "seed": seed, "samples": int(n), "positives": int(y.sum())})


def fit_monotone(x: np.ndarray, y: np.ndarray, w: np.ndarray, contrasts: tuple[str, ...],
                 features: tuple[str, ...] | list[str], l2: float = 3.0, max_iter: int = 400) -> MonotoneModel:
    """Weighted L2-penalised logistic regression of a :class:`MonotoneModel` (columns of ``x``:
    ``features``): convex, fitted by L-BFGS-B with the increments of every hyperintensity term
    bounded below by 0. Deterministic (the knots are quantiles of ``x``)."""
    from scipy.optimize import minimize

    features = tuple(features)
    col = {n: i for i, n in enumerate(features)}
    n = len(y)
    xl = np.asarray(x[:, [col[f] for f in LOCATION_FEATURES]], np.float64)
    iu = np.triu_indices(len(LOCATION_FEATURES))
    blocks: list[np.ndarray] = [xl, xl[:, iu[0]] * xl[:, iu[1]]]
    mono: list[np.ndarray] = [np.zeros(xl.shape[1] + len(iu[0]), bool)]
    terms, breaks_of = [], {}
    for gate, feat, by in evidence_terms(features):
        if feat not in breaks_of:
            q = np.quantile(x[:, col[feat]], np.linspace(0.04, 0.96, N_KNOTS))
            inner = np.unique(np.round(q, 4))
            inner = inner[(inner > -CLIP) & (inner < CLIP)]
            breaks_of[feat] = np.concatenate([[-CLIP], inner, [CLIP]])
        br = breaks_of[feat]
        r = ramps(x[:, col[feat]], br)
        if by is not None:
            r *= np.maximum(-np.asarray(x[:, col[by]], np.float64), 0.0)[:, None]
        r *= np.asarray(x[:, col[gate]], np.float64)[:, None]
        blocks.append(r)
        m = is_monotone_feature(feat) or by is not None
        mono.append(np.full(r.shape[1], m))
        terms.append({"gate": gate, "feature": feat, "by": by, "monotone": m, "x": br})
    z = np.concatenate(blocks, axis=1)
    del blocks
    mean, scale = z.mean(axis=0), z.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z -= mean
    z /= scale
    z = z.astype(np.float32)
    is_mono = np.concatenate(mono)
    w = np.asarray(w, np.float64) / np.mean(w)
    y = np.asarray(y, np.float64)
    k = z.shape[1]

    def fg(beta: np.ndarray) -> tuple[float, np.ndarray]:
        s = beta[0] + (z @ beta[1:].astype(np.float32)).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-np.clip(s, -40, 40)))
        loss = float(np.sum(w * (np.logaddexp(0.0, s) - y * s))) + 0.5 * l2 * float(beta[1:] @ beta[1:])
        r = (w * (p - y)).astype(np.float32)
        g = np.empty(k + 1)
        g[0] = float(np.sum(w * (p - y)))
        g[1:] = (r @ z).astype(np.float64) + l2 * beta[1:]
        return loss / n, g / n

    bounds = [(None, None)] + [(0.0, None) if m else (None, None) for m in is_mono]
    res = minimize(fg, np.zeros(k + 1), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iter, "maxcor": 20, "ftol": 1e-10, "gtol": 1e-7})
    beta = res.x
    a = beta[1:] / scale
    constant = float(beta[0] - np.sum(a * mean))
    nl = xl.shape[1]
    b = a[:nl].copy()
    u = np.zeros((nl, nl))
    u[iu] = a[nl:nl + len(iu[0])]
    pos = nl + len(iu[0])
    for t in terms:
        br = t["x"]
        m = len(br) - 1
        coef = a[pos:pos + m]
        if t["monotone"]:
            coef = np.maximum(coef, 0.0)
        t["y"] = np.concatenate([[0.0], np.cumsum(coef * np.diff(br))])   # the ramps' sums at the breaks
        pos += m
    return MonotoneModel(contrasts, features, constant, b, u, terms, info={
        "iterations": int(res.nit), "converged": bool(res.success), "samples": int(n),
        "positives": int(y.sum()), "l2": l2, "knots": N_KNOTS})

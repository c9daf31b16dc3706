"""T2/FLAIR lesion segmentation, offline on CPU (DESIGN §3 ``label-lesion`` outputs).

Two detection methods share the tissue model and local references (steps 1-2 below), chosen by
``lesions.method``:

* ``model`` (the default, whenever a template transform gives real priors and a model exists for
  the session's contrasts): the learned voxel classifier of :mod:`msimaging.lesion_model`, fitted
  on real lesion shapes implanted into real scans (:mod:`msimaging.implant`). Every voxel's lesion
  probability combines all contrasts' excess over local NAWM, the FLAIR excess over local grey
  matter, the tissue posteriors and priors and the depth below the brain surface; no rule removes
  a lesion for being bilateral, large, confluent, T1w-dark or in an unusual place.
* ``rules``: the earlier hand-written detection, steps 3-5 below. Measured on real lesions
  implanted into real scans it found a few percent of heavy, bilateral, confluent loads (its
  mirror, lesion-frequency and grey-matter rules remove them), so it is kept only as the fallback
  for sessions the model does not cover (flat priors, T2w alone).

The steps (every threshold is a ``lesions:`` config key):

1. **Tissue model.** A Gaussian mixture of CSF, grey matter (GM) and white matter (WM) over the
   available contrasts (FLAIR, plus T1w and T2w when present), fitted by EM with the MNI152
   tissue maps carried onto the session grid as spatial priors. Voxels far from every class
   (Mahalanobis distance beyond ``outlier_kappa``) are down-weighted, as in Van Leemput et al.
   (IEEE TMI 2001), so lesions do not pull the normal-tissue statistics.
2. **Local references.** Normal-appearing WM and GM FLAIR intensities are estimated locally
   (normalised Gaussian convolution over typical WM/GM voxels) so residual bias and regional
   contrast do not create false positives.
3. **Hyperintensity.** Lesions are brighter than both: ``z_wm`` (FLAIR above local NAWM in NAWM
   standard deviations) and ``z_gm`` (above local GM in GM deviations).
4. **Seeds and growth.** Confident voxels (``z_gm >= seed_z_gm``) seed lesions; each seed's
   component grows over connected voxels whose lesion fraction (partial volume between local
   NAWM and the lesion's own core intensity) is at least ``pv_fraction``; within ``rim_mm`` of a
   kept candidate, at least ``rim_fraction`` (half lesion: its rim, which expert masks include).
   The core (a percentile of the seeds) is corrected for the voxel noise it was selected on.
5. **False-positive removal.** Components mostly in cortex, on the brain surface, or in CSF
   (choroid plexus, septum, flow artefacts) are removed, and (with a template transform) those
   (a) not brighter than their contralateral homologue (mirror about the template midline:
   normal FLAIR hyperintensities such as the corticospinal tracts and frontal horn caps are
   bilaterally symmetric), (b) where the MNI lesion frequency of 27 other patients
   (:mod:`msimaging.lesion_prior`) is negligible, and (c) with T1w/T2w, those the tissue model
   calls grey matter (FLAIR-bright cortex and deep grey matter).

The probability map is the voxel lesion fraction times the component's plausibility, so the
binary mask is exactly ``label_lesions(probability >= threshold)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import Grid, resample_array, voxel_sizes
from msimaging.lesions import (
    CONNECTIVITY,
    LesionRules,
    label_lesions,
    label_means,
    label_reduce,
    rules_from_config,
    total_volume_ml,
)
from msimaging.morphology import ball, bounding_box, depth_mm

log = logging.getLogger(__name__)

#: Tissue classes of the mixture, in this order.
CLASSES = ("csf", "gm", "wm")


@dataclass(frozen=True)
class SegmentOptions:
    """Thresholds of the segmentation (config keys under ``lesions:``)."""

    threshold: float = 0.5           # probability threshold of the binary mask
    method: str = "model"            # "model": the learned voxel classifier (msimaging.lesion_model); "rules"
    model_half_max: float = 0.5      # model: a lesion voxel's excess is at least this x the lesion's local peak ...
    model_half_max_mm: float = 2.0   # ... the maximum within this radius, at least one voxel (0: no such cut)
    model_half_max_smooth: bool = True   # ... of the lesion's excess smoothed by 1 mm (noise and texture averaged)
    outlier_kappa: float = 3.0       # Mahalanobis distance beyond which a voxel is atypical
    prior_weight: float = 0.8        # weight of the template priors (rest: uniform)
    prior_smoothing_mm: float = 2.0  # Gaussian smoothing of the priors (registration slack)
    em_iterations: int = 15
    local_sigma_mm: float = 8.0      # width of the local NAWM/GM reference
    seed_z_gm: float = 3.0           # seed: FLAIR above local GM by this many GM SDs ...
    seed_z_wm: float = 5.0           # ... and above local NAWM by this many NAWM SDs
    grow_z_wm: float = 2.0           # growth: FLAIR above local NAWM by at least this ...
    grow_mm: float = 2.0             # ... within this distance of a seed ...
    pv_fraction: float = 0.55        # ... and lesion fraction >= this (partial volume border)
    rim_fraction: float = 0.5        # rim of a kept lesion: lesion fraction >= this (half lesion) ...
    rim_mm: float = 1.0              # ... within this distance of the candidate lesion (0: no rim)
    contrast_method: str = "core"    # lesion contrast: "core" (a percentile of its seeds) or "integral"
    core_noise_correction: bool = True  # remove the noise bias of that percentile from the core
    core_percentile: float = 90.0    # percentile of the seeds' FLAIR taken as the lesion core intensity
    max_cortex_fraction: float = 0.5  # components mostly in cortex are dropped
    surface_mm: float = 2.0          # voxels within this distance of the brain surface ...
    max_surface_fraction: float = 0.5  # ... may be at most this fraction of a component
    max_csf_fraction: float = 0.5    # components mostly in CSF (prior) are dropped
    min_lesion_prior: float = 0.0014  # components whose peak lesion frequency (MNI prior) is below are dropped
    max_gm_posterior: float = 0.9    # components this GM-like on T1w/T2w (mean posterior) are dropped
    mirror_mm: float = 3.0           # contralateral reference: maximum of the mirrored FLAIR within this radius
    mirror_exempt_z_gm: float = 4.0  # ... unless their median FLAIR is this many GM SDs above local GM
    min_mirror_z: float = 1.0        # components at most this many NAWM SDs above their mirror image are dropped

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SegmentOptions":
        lcfg = dict(cfg.get("lesions", {}))
        kwargs = {}
        for f in fields(cls):
            if f.name in lcfg:
                kwargs[f.name] = type(getattr(cls(), f.name))(lcfg[f.name])
        return cls(**kwargs)


# --- priors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TissuePriors:
    """Template tissue probabilities on the session grid (float32, each 0..1).

    ``lesion`` is the MNI lesion frequency map on the grid (:mod:`msimaging.lesion_prior`) and
    ``mirror`` the session-to-session transform of the left-right mirror about the template's
    midline (ITK resampling convention); both are None without a template transform.
    """

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    lesion: np.ndarray | None = None
    mirror: sitk.Transform | None = None
    from_template: bool = False   # carried from the MNI template (False: flat, uninformative)

    def stack(self) -> np.ndarray:
        return np.stack([self.csf, self.gm, self.wm], axis=-1)


def _unit(arr: np.ndarray) -> np.ndarray:
    """A probability map scaled so that its maximum is 1 (template maps come as 0..1 or 0..1/255)."""
    a = np.asarray(arr, dtype=np.float32)
    top = float(a.max()) if a.size else 0.0
    return a / top if top > 0 else a


def template_tissue_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 CSF, GM, WM probability maps (0..1) and their RAS affine (bundled with nilearn)."""
    from msimaging.template import load_template

    tpl = load_template()
    t1, gm, wm = _unit(tpl.t1), _unit(tpl.gm), _unit(tpl.wm)
    envelope = ndi.binary_fill_holes(ndi.binary_closing(t1 > 0.02, np.ones((3, 3, 3)), iterations=2))
    csf = np.clip(envelope.astype(np.float32) - gm - wm, 0.0, 1.0)
    return csf, gm, wm, np.asarray(tpl.affine, dtype=float)


def midline_mirror(template_to_session: sitk.Transform | None) -> sitk.Transform | None:
    """Session -> session map of the left-right mirror about the template midline (x = 0).

    ``template_to_session`` maps session points to template points (ITK resampling convention);
    the mirror is its inverse after the flip, so resampling an image with it gives each point the
    intensity of its contralateral homologue. None when the transform has no inverse.
    """
    if template_to_session is None:
        return None
    try:
        inverse = template_to_session.GetInverse()
    except RuntimeError:
        return None
    flip = sitk.AffineTransform(3)
    flip.SetMatrix((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # x -> -x (LPS and RAS alike)
    # ITK composite transforms apply the last added first: session -> template -> flip -> session
    return sitk.CompositeTransform([inverse, flip, template_to_session])


def tissue_priors(grid: Grid, template_to_session: sitk.Transform | None) -> TissuePriors:
    """The template tissue maps, lesion frequency map and midline mirror on ``grid``
    (``template_to_session`` in ITK resampling convention)."""
    from msimaging.lesion_prior import lesion_prior

    csf, gm, wm, affine = template_tissue_maps()
    maps = [np.clip(resample_array(m, affine, grid, template_to_session), 0.0, 1.0).astype(np.float32)
            for m in (csf, gm, wm)]
    return TissuePriors(*maps, lesion=lesion_prior(grid, template_to_session),
                        mirror=midline_mirror(template_to_session), from_template=True)


def flat_priors(shape: tuple[int, ...]) -> TissuePriors:
    """Uninformative priors (no template available)."""
    third = np.full(shape, 1.0 / 3.0, dtype=np.float32)
    return TissuePriors(third, third.copy(), third.copy())


# --- tissue model ------------------------------------------------------------------------------


@dataclass
class TissueModel:
    """Gaussian tissue classes over the channels (``channels`` names them, FLAIR first)."""

    channels: tuple[str, ...]
    means: np.ndarray   # (3, C)
    covs: np.ndarray    # (3, C, C)

    def sd(self, cls: str, channel: int = 0) -> float:
        return float(np.sqrt(self.covs[CLASSES.index(cls), channel, channel]))

    def mean(self, cls: str, channel: int = 0) -> float:
        return float(self.means[CLASSES.index(cls), channel])


def _weighted_gaussians(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = np.maximum(w.sum(axis=0), 1e-9)
    means = (w.T @ x) / total[:, None]
    c = x.shape[1]
    covs = np.empty((w.shape[1], c, c))
    for k in range(w.shape[1]):
        d = x - means[k]
        covs[k] = (d * w[:, k:k + 1]).T @ d / total[k]
    return means, covs + 1e-6 * np.eye(c)


def _class_terms(x: np.ndarray, means: np.ndarray, covs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class log-likelihood (up to a constant) and squared Mahalanobis distance."""
    n, k = x.shape[0], means.shape[0]
    loglik = np.empty((n, k))
    d2 = np.empty((n, k))
    for j in range(k):
        inv = np.linalg.inv(covs[j])
        d = x - means[j]
        d2[:, j] = np.einsum("ij,jk,ik->i", d, inv, d)
        loglik[:, j] = -0.5 * d2[:, j] - 0.5 * np.log(np.linalg.det(covs[j]))
    return loglik, d2


def _posteriors(loglik: np.ndarray, prior: np.ndarray) -> np.ndarray:
    lp = loglik + np.log(np.maximum(prior, 1e-6))
    lp -= lp.max(axis=1, keepdims=True)
    post = np.exp(lp)
    return post / post.sum(axis=1, keepdims=True)


def typicality(d2: np.ndarray, kappa: float) -> np.ndarray:
    """Van Leemput's typicality: 1 near a class mean, 0 beyond ``kappa`` Mahalanobis units."""
    return 1.0 / (1.0 + np.exp(np.clip((d2 - kappa ** 2) / 2.0, -50.0, 50.0)))


def fit_tissue_model(
    x: np.ndarray, prior: np.ndarray, channels: tuple[str, ...], kappa: float = 3.0, iterations: int = 15,
    max_samples: int = 200_000, seed: int = 0,
) -> TissueModel:
    """EM for the three tissue Gaussians on samples ``x`` (N, C) with spatial priors (N, 3)."""
    n = x.shape[0]
    if n > max_samples:
        idx = np.random.default_rng(seed).choice(n, max_samples, replace=False)
        idx.sort()
        x, prior = x[idx], prior[idx]
    x = x.astype(np.float64)
    means, covs = _weighted_gaussians(x, prior)
    for _ in range(iterations):
        loglik, d2 = _class_terms(x, means, covs)
        post = _posteriors(loglik, prior)
        means, covs = _weighted_gaussians(x, post * typicality(d2, kappa))
    return TissueModel(channels=channels, means=means, covs=covs)


def normalise_priors(p: np.ndarray, weight: float) -> np.ndarray:
    """Rows summing to one, mixed with a uniform prior (``1 - weight``) for registration slack."""
    p = np.asarray(p, dtype=np.float64)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-3)
    return weight * p + (1.0 - weight) / p.shape[1]


# --- local references --------------------------------------------------------------------------


def smooth_mm(data: np.ndarray, affine: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing with ``sigma_mm`` in physical units on an anisotropic grid."""
    if sigma_mm <= 0:
        return np.asarray(data, dtype=np.float32)
    sig = sigma_mm / voxel_sizes(affine)
    return ndi.gaussian_filter(np.asarray(data, dtype=np.float32), sig, mode="nearest", truncate=3.0)


def local_mean(data: np.ndarray, weight: np.ndarray, affine: np.ndarray, sigma_mm: float,
               fallback: float) -> np.ndarray:
    """Normalised convolution: the weighted local mean of ``data`` (``fallback`` where no weight)."""
    num = smooth_mm(data * weight, affine, sigma_mm)
    den = smooth_mm(weight, affine, sigma_mm)
    out = np.full(data.shape, fallback, dtype=np.float32)
    ok = den > 1e-3
    out[ok] = num[ok] / den[ok]
    return out


def robust_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and normalised MAD (Gaussian-consistent SD) of a sample."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    return med, max(1.4826 * float(np.median(np.abs(v - med))), 1e-6)


def noise_sd(data: np.ndarray, region: np.ndarray) -> float:
    """Voxel noise SD: robust SD of neighbour differences inside ``region`` over sqrt(2).

    The smallest over the three axes is taken (the axis with the least anatomy between
    neighbours, e.g. in-plane on thick-slice grids). Unlike the tissue SD this excludes anatomy.
    """
    a = np.asarray(data, dtype=np.float32)
    sds = []
    for ax in range(3):
        if a.shape[ax] < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        both = region[tuple(lo)] & region[tuple(hi)]
        if both.sum() >= 50:
            d = (a[tuple(hi)] - a[tuple(lo)])[both]
            sds.append(robust_stats(d)[1] / np.sqrt(2.0))
    return float(min(sds)) if sds else 0.0


# --- lesion detection --------------------------------------------------------------------------


@dataclass
class Evidence:
    """Voxel-wise maps the detection works from (all on the session grid)."""

    z_wm: np.ndarray       # FLAIR above local NAWM, in NAWM SDs
    z_gm: np.ndarray       # FLAIR above local GM, in GM SDs
    nawm: np.ndarray       # local NAWM FLAIR intensity
    post: np.ndarray       # (X, Y, Z, 3) tissue posteriors CSF, GM, WM (0 outside the brain)
    multi_contrast: bool = False  # the posteriors come from contrasts other than the hyperintense one
    figures: dict[str, float] = field(default_factory=dict)
    refs: dict[str, np.ndarray] = field(default_factory=dict)  # local NAWM of every contrast


def tissue_evidence(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray,
                    priors: TissuePriors, options: SegmentOptions = SegmentOptions(),
                    hyper: str = "FLAIR") -> Evidence:
    """Tissue posteriors and FLAIR hyperintensity maps.

    The mixture is fitted on the contrasts other than ``hyper`` when there are any (lesions are
    then not what separates the classes), else on ``hyper`` alone.
    """
    flair = np.asarray(images[hyper], dtype=np.float32)
    names = tuple(c for c in images if c != hyper) or (hyper,)
    x = np.stack([np.asarray(images[c], dtype=np.float32)[brain] for c in names], axis=-1).astype(np.float64)
    p = priors.stack()
    prior = normalise_priors(p[brain], options.prior_weight)
    model = fit_tissue_model(x, prior, names, options.outlier_kappa, options.em_iterations)
    loglik, d2 = _class_terms(x, model.means, model.covs)
    post = _posteriors(loglik, prior)
    typ = typicality(d2, options.outlier_kappa)
    f = flair[brain]
    post_img = np.zeros(brain.shape + (3,), dtype=np.float32)
    post_img[brain] = post
    stats = {}
    weights = {}
    for j, cls in enumerate(CLASSES):
        w = post[:, j] * typ[:, j]
        sel = w > 0.5
        if sel.sum() < 50:
            sel = post[:, j] > 0.5
        med, sd = robust_stats(f[sel]) if sel.any() else (float(np.median(f)), float(np.std(f)))
        stats[cls] = (med, sd)
        # normal-appearing: exclude voxels already clearly hyperintense for their class
        wimg = np.zeros(brain.shape, dtype=np.float32)
        wimg[brain] = w * (f < med + 3.0 * sd)
        weights[cls] = wimg
    (m_wm, s_wm), (m_gm, s_gm) = stats["wm"], stats["gm"]
    nawm = local_mean(flair, weights["wm"], affine, options.local_sigma_mm, m_wm)
    ngm = local_mean(flair, weights["gm"], affine, options.local_sigma_mm, m_gm)
    z_wm = np.where(brain, (flair - nawm) / s_wm, 0.0).astype(np.float32)
    z_gm = np.where(brain, (flair - ngm) / s_gm, 0.0).astype(np.float32)
    wm_img = np.zeros(brain.shape, bool)
    wm_img[brain] = post[:, CLASSES.index("wm")] > 0.9
    if wm_img.sum() < 1000:  # no confident WM (flat priors, FLAIR alone): the whole brain
        wm_img = brain
    figures = {"flair_wm_median": m_wm, "flair_wm_sd": s_wm, "flair_gm_median": m_gm, "flair_gm_sd": s_gm,
               "flair_csf_median": stats["csf"][0], "flair_noise_sd": noise_sd(flair, wm_img)}
    refs = {hyper: nawm}
    for c, img in images.items():
        if c != hyper:
            refs[c] = local_mean(np.asarray(img, np.float32), weights["wm"], affine, options.local_sigma_mm,
                                 float(np.median(np.asarray(img)[brain])))
    return Evidence(z_wm=z_wm, z_gm=z_gm, nawm=nawm, post=post_img, figures=figures,
                    multi_contrast=hyper not in names, refs=refs)


def conditional_grow(seeds: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Seeds dilated (26-connectivity) up to ``steps`` times, never leaving ``allowed``."""
    grown = seeds & allowed
    for _ in range(max(0, steps)):
        nxt = ndi.binary_dilation(grown, CONNECTIVITY) & allowed
        if (nxt == grown).all():
            break
        grown = nxt
    return grown


def distance_to_surface_mm(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Distance in mm from each brain voxel to the outside of the brain mask."""
    return depth_mm(brain, affine)


def pv_contrasts(excess: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Each region's lesion contrast (lesion minus NAWM FLAIR) consistent with partial volume.

    For a lesion of true contrast D and volume V (voxels), the FLAIR excess over NAWM summed over
    its neighbourhood is E = D * V, and about V voxels have a lesion fraction >= 1/2, i.e. an
    excess >= D/2. So the half-contrast threshold t satisfies ``count(excess >= t) * 2t = E``;
    the largest such count is taken (sorted excesses), and ``D = 2t``. Unlike the brightest
    voxels, this does not under-estimate D for lesions a few voxels across (partial volume).
    """
    out = np.zeros(n, np.float32)
    grown = ndi.grey_dilation(labels, footprint=CONNECTIVITY)
    boxes = ndi.find_objects(grown)
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        own = labels[box] == i
        hood = (grown[box] == i) & ((labels[box] == 0) | own)
        e = excess[box][hood]
        total = float(e.sum())
        vals = np.sort(excess[box][own])[::-1]
        if total <= 0 or vals.size == 0 or vals[0] <= 0:
            out[i - 1] = max(float(vals[0]) if vals.size else 0.0, 1e-3)
            continue
        k = np.arange(1, vals.size + 1)
        ok = np.nonzero(2.0 * k * vals >= total)[0]
        out[i - 1] = 2.0 * float(vals[ok[-1]]) if ok.size else float(vals[0])
    return out


def mirror_reference(flair: np.ndarray, affine: np.ndarray, mirror: sitk.Transform, radius_mm: float,
                     box: tuple[slice, ...] | None = None) -> np.ndarray:
    """The brightest contralateral FLAIR near each voxel's mirror image (registration slack ``radius_mm``).

    Normal FLAIR hyperintensities (corticospinal tracts, frontal horn caps, choroid plexus,
    insular cortex) are bilaterally symmetric; MS lesions are brighter than their homologue.
    ``box``: only this part is returned (:func:`mirror_box`: the maximum is the same there as on
    the whole grid for the voxels it was made for).
    """
    mirrored = resample_array(np.asarray(flair, np.float32), affine, Grid(flair.shape, affine), mirror, "linear")
    if box is not None:
        mirrored = mirrored[box]
    return ndi.maximum_filter(mirrored, footprint=ball(radius_mm, affine), mode="nearest")


def mirror_box(where: np.ndarray, affine: np.ndarray, radius_mm: float) -> tuple[slice, ...]:
    """The bounding box of ``where`` grown by the reach of :func:`mirror_reference`'s maximum."""
    return bounding_box(where, np.asarray(ball(radius_mm, affine).shape) // 2)


def _component_fractions(labels: np.ndarray, n: int, maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean of each map over each component 1..n."""
    return {k: label_means(m, labels, n) for k, m in maps.items()}


def detect_lesions(flair: np.ndarray, affine: np.ndarray, brain: np.ndarray, ev: Evidence,
                   priors: TissuePriors, options: SegmentOptions = SegmentOptions()
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """Lesion probability (float32 0..1) from the evidence maps, and figures of the decision.

    Seeds grow into a candidate region; inside it each voxel's lesion fraction is its FLAIR
    between local NAWM (0) and the core intensity of its seeds (1). Voxels with fraction >=
    ``pv_fraction`` form the candidate lesions, which are then kept or rejected as a whole.
    """
    zooms = voxel_sizes(affine)
    f = np.asarray(flair, dtype=np.float32)
    seeds = brain & (ev.z_gm >= options.seed_z_gm) & (ev.z_wm >= options.seed_z_wm)
    allowed = brain & (ev.z_wm >= options.grow_z_wm)
    steps = int(np.ceil(options.grow_mm / float(zooms.min()))) if options.grow_mm > 0 else 0
    region = conditional_grow(seeds, allowed, steps)
    labels, n = ndi.label(region, structure=CONNECTIVITY)
    figures: dict[str, Any] = {"seed_voxels": int(seeds.sum()), "regions": int(n)}
    if n == 0:
        return np.zeros(brain.shape, np.float32), figures
    # partial volume: lesion fraction between local NAWM and the seeds' core intensity
    seed_labels = np.where(seeds, labels, 0)
    pct = options.core_percentile
    core = label_reduce(f, seed_labels, n, lambda v: np.percentile(v, pct), 0.0).astype(np.float32)
    excess = (f - ev.nawm).astype(np.float32)
    contrast = np.zeros(n + 1, np.float32)
    if options.contrast_method == "integral":
        contrast[1:] = pv_contrasts(excess, labels, n)
    else:
        contrast[1:] = core - label_means(ev.nawm, seed_labels, n).astype(np.float32)
        if options.core_noise_correction:
            # seeds are selected for being bright: a percentile of them over-states the lesion's
            # core by that percentile of the voxel noise (winner's curse), which shrinks lesions
            # whose contrast is a few noise SDs (real lesions more than phantoms)
            from scipy.stats import norm

            bias = float(norm.ppf(min(max(pct / 100.0, 0.5), 0.999))) * float(ev.figures.get("flair_noise_sd", 0.0))
            contrast[1:] = np.maximum(contrast[1:] - bias, 1e-6)
    frac = np.where(labels > 0, excess / np.maximum(contrast[labels], 1e-6), 0.0).astype(np.float32)
    lesion = (labels > 0) & (frac >= options.pv_fraction)
    cand, m = ndi.label(lesion, structure=CONNECTIVITY)
    figures["candidates"] = int(m)
    if m == 0:
        return np.zeros(brain.shape, np.float32), figures
    # plausibility of each candidate lesion
    depth = distance_to_surface_mm(brain, affine)
    fr = _component_fractions(cand, m, {
        "surface": depth <= options.surface_mm,
        "cortex": (priors.gm > 0.5) & (priors.wm < 0.3),
        "csf": priors.csf > 0.5,
    })
    reject = {"surface": fr["surface"] > options.max_surface_fraction,
              "cortex": fr["cortex"] > options.max_cortex_fraction,
              "csf": fr["csf"] > options.max_csf_fraction}
    if ev.multi_contrast and options.max_gm_posterior < 1.0:
        # grey matter on T1w/T2w: FLAIR-bright cortex and deep GM, not a WM lesion (lesions are
        # T1w-darker and T2w-brighter than GM, so the tissue model calls them CSF or WM)
        fr["gm_posterior"] = label_means(ev.post[..., 1], cand, m)
        reject["gm_like"] = fr["gm_posterior"] > options.max_gm_posterior
    if priors.lesion is not None and options.min_lesion_prior > 0:
        # location: no patient of the lesion atlas has lesions anywhere near
        fr["lesion_prior"] = label_reduce(priors.lesion, cand, m, np.max)
        reject["prior"] = fr["lesion_prior"] < options.min_lesion_prior
    if priors.mirror is not None and options.min_mirror_z > -np.inf and options.mirror_mm >= 0:
        # symmetry: not brighter than the contralateral homologue (normal FLAIR hyperintensity)
        s_wm = float(ev.figures.get("flair_wm_sd", 1.0))
        box = mirror_box(cand > 0, affine, options.mirror_mm)
        zm = (f[box] - mirror_reference(f, affine, priors.mirror, options.mirror_mm, box)) / max(s_wm, 1e-6)
        fr["mirror_z"] = label_reduce(zm, cand[box], m, np.median)
        # ... unless far brighter than any normal grey matter: normal anatomy is never that bright,
        # bilateral lesion pairs (common around the ventricles) are
        fr["z_gm"] = label_reduce(ev.z_gm, cand, m, np.median)
        reject["mirror"] = (fr["mirror_z"] <= options.min_mirror_z) & (fr["z_gm"] < options.mirror_exempt_z_gm)
    keep = ~np.any(np.stack(list(reject.values())), axis=0)
    figures.update({f"removed_{k}": int(v.sum()) for k, v in reject.items()})
    figures["_components"] = dict(labels=cand, keep=keep, **fr)
    # each region voxel takes the decision of its nearest candidate lesion
    keep_lut = np.zeros(m + 1, np.float32)
    keep_lut[1:] = keep
    # (on the regions' bounding box, which holds every candidate: the same nearest voxels)
    box = bounding_box(labels > 0)
    dist = np.zeros(cand.shape, np.float64)
    owner = np.zeros(cand.shape, cand.dtype)
    dist[box], nearest = ndi.distance_transform_edt(cand[box] == 0, sampling=zooms, return_distances=True,
                                                    return_indices=True)
    owner[box] = cand[box][tuple(nearest)]
    # rim: next to a confirmed lesion a voxel that is at least half lesion belongs to it (the plain
    # partial-volume boundary; pv_fraction's margin guards the forming of candidates against noise).
    # Expert masks include the hyperintense rim (sub-p07: boundary near 0.4 of the contrast)
    cut = np.where((dist > 0) & (dist <= options.rim_mm + 1e-6), np.float32(min(options.rim_fraction, options.pv_fraction)),
                   np.float32(options.pv_fraction))
    soft = 1.0 / (1.0 + np.exp(-(frac - cut) / 0.1))
    prob = np.where(labels > 0, soft * keep_lut[owner], 0.0).astype(np.float32)
    return prob, figures


def voxel_features(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray, ev: Evidence,
                   priors: TissuePriors, contrasts: tuple[str, ...], depth: np.ndarray | None = None,
                   names: list[str] | tuple[str, ...] | None = None) -> np.ndarray:
    """(N, F) base features ``names`` (:func:`msimaging.lesion_model.base_features`; default: all
    of :func:`msimaging.lesion_model.feature_names`) of the brain's N voxels.

    ``depth``: :func:`distance_to_surface_mm` of ``brain`` when already computed.
    """
    from msimaging.lesion_model import PEAK_MM, base_features, feature_names

    if names is None:
        names = feature_names(contrasts)
    need = {n.split("_", 1)[1] for n in names if n.split("_", 1)[0] in contrasts}
    per: dict[str, dict[str, np.ndarray]] = {"excess": {}, "excess_s1": {}, "excess_s2": {}, "peak": {}}
    # smoothing inside the brain only (normalised, so the surface does not pull it down)
    den1 = np.maximum(smooth_mm(brain.astype(np.float32), affine, 1.0), 1e-3)
    den2 = np.maximum(smooth_mm(brain.astype(np.float32), affine, 2.0), 1e-3) if "excess_s2" in need else None
    reach = tuple(2 * int(round(PEAK_MM / v)) + 1 for v in voxel_sizes(affine))  # a box: separable, fast
    for c in contrasts:
        e = np.where(brain, np.asarray(images[c], np.float32) / np.maximum(ev.refs[c], 1e-6) - 1.0, 0.0)
        per["excess"][c] = e[brain]
        s1 = np.where(brain, smooth_mm(e.astype(np.float32), affine, 1.0) / den1, 0.0).astype(np.float32)
        per["excess_s1"][c] = s1[brain]
        if den2 is not None:
            per["excess_s2"][c] = (smooth_mm(e.astype(np.float32), affine, 2.0) / den2)[brain]
        if "peak" in need:
            # T1w lesions are dark: its context is the deepest nearby trough (the sign is kept)
            per["peak"][c] = (-ndi.maximum_filter(-s1, size=reach) if c == "T1w"
                              else ndi.maximum_filter(s1, size=reach))[brain]
    if depth is None:
        depth = distance_to_surface_mm(brain, affine)
    return base_features(per, ev.z_gm[brain], ev.post[brain], priors.stack()[brain], depth[brain], names)


def model_probability(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray, ev: Evidence,
                      priors: TissuePriors, model: Any, components: Any = None, half_max: float = 0.0,
                      half_max_mm: float = 2.0, half_max_smooth: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Lesion probability from the learned voxel model (and, when given, its component stage).

    Voxel stage: the model's log-odds, shifted so that its threshold is 0. Component stage
    (``components``): connected voxels above ``CANDIDATE_ODDS`` of the threshold are candidate
    lesions, each scored on its pooled evidence (:func:`msimaging.lesion_model.component_features`);
    an accepted candidate keeps its voxels above ``components.info["voxel_odds"]``, a rejected one
    none. The returned probability is 0.5 exactly at that decision boundary.
    """
    depth = distance_to_surface_mm(brain, affine)
    x = voxel_features(images, affine, brain, ev, priors, model.contrasts, depth, model.features)
    t = min(max(model.threshold, 1e-6), 1 - 1e-6)
    logit = np.full(brain.shape, -40.0, np.float32)
    logit[brain] = model.logit(x) - np.log(t / (1 - t))
    figures: dict[str, Any] = {"model": "+".join(model.contrasts), "model_threshold": model.threshold}
    if components is None:
        return (1.0 / (1.0 + np.exp(-np.clip(logit, -40, 40)))).astype(np.float32), figures
    labels, n, feats = candidate_components(images, affine, brain, ev, priors, logit, model.contrasts[0], depth)
    figures["candidates"] = n
    if n == 0:
        return np.zeros(brain.shape, np.float32), figures
    keep = components.predict(feats) >= components.threshold
    figures["candidates_kept"] = int(keep.sum())
    lut = np.zeros(n + 1, bool)
    lut[1:] = keep
    shift = float(np.log(components.info.get("voxel_odds", 1.0)))
    prob = 1.0 / (1.0 + np.exp(-np.clip(logit - shift, -40, 40)))
    prob = np.where(lut[labels], prob, 0.0).astype(np.float32)
    if half_max > 0 and keep.any():
        below = half_max_cut(lut[labels], np.asarray(images[model.contrasts[0]], np.float32),
                             ev.refs[model.contrasts[0]], affine, half_max, half_max_mm, half_max_smooth)
        figures["half_max_voxels_removed"] = int((below & (prob >= 0.5)).sum())
        prob[below] = np.minimum(prob[below], 0.25)
    return prob, figures


def half_max_cut(kept: np.ndarray, hyper: np.ndarray, nawm: np.ndarray, affine: np.ndarray, fraction: float = 0.5,
                 radius_mm: float = 2.0, smooth: bool = True) -> np.ndarray:
    """Voxels of the lesions ``kept`` that are less than half lesion (a partial-volume boundary).

    A voxel is lesion when its excess of ``hyper`` over ``nawm`` is at least ``fraction`` x the
    lesion's own local peak excess: the maximum within ``radius_mm`` (at least one voxel), of the
    excess smoothed by 1 mm when ``smooth`` (voxel noise and texture averaged). One intensity cut
    cannot be right for faint real lesions and bright ones alike (a bright lesion's 30 % partial-
    volume rim is as bright as a faint lesion's core).
    """
    below = np.zeros(kept.shape, bool)
    if not kept.any():
        return below
    reach = ball(max(radius_mm, 1.01 * float(voxel_sizes(affine).max())), affine)  # at least one voxel
    box = bounding_box(kept, np.asarray(reach.shape) // 2)
    k = kept[box]
    excess = hyper[box] / np.maximum(nawm[box], 1e-6) - 1.0
    inside = np.where(k, excess, 0.0)
    if smooth:
        inside = np.where(k, smooth_mm(inside, affine, 1.0) / np.maximum(smooth_mm(k.astype(np.float32), affine, 1.0),
                                                                         1e-3), 0.0)
    peak = ndi.maximum_filter(inside, footprint=reach, mode="constant")
    below[box] = k & (excess < fraction * peak)
    return below


def candidate_components(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray, ev: Evidence,
                         priors: TissuePriors, logit: np.ndarray, hyper: str, depth: np.ndarray | None = None,
                         ) -> tuple[np.ndarray, int, np.ndarray]:
    """Candidate lesions of the voxel stage's ``logit`` (0 at its threshold): labels, count, features.

    ``depth``: :func:`distance_to_surface_mm` of ``brain`` when already computed.
    """
    from msimaging.lesion_model import CANDIDATE_ODDS, COMPONENT_FEATURES, component_features

    labels = label_lesions(brain & (logit >= np.log(CANDIDATE_ODDS)), affine)
    n = int(labels.max())
    if n == 0:
        return labels, 0, np.zeros((0, len(COMPONENT_FEATURES)))
    box = mirror_box(labels > 0, affine, 3.0)
    f = np.asarray(images[hyper], np.float32)
    excess = f[box] / np.maximum(ev.refs[hyper][box], 1e-6) - 1.0
    s_wm = max(float(ev.figures.get("flair_wm_sd", 1.0)), 1e-6)
    if priors.mirror is not None:
        mirror_z = (f[box] - mirror_reference(f, affine, priors.mirror, 3.0, box)) / s_wm
    else:
        mirror_z = np.zeros(excess.shape, np.float32)
    if depth is None:
        depth = distance_to_surface_mm(brain, affine)
    feats = component_features(labels[box], n, logit[box], excess, mirror_z, ev.post[box][..., 1], priors.csf[box],
                               depth[box], float(np.prod(voxel_sizes(affine))))
    return labels, n, feats


# --- the whole segmentation --------------------------------------------------------------------

#: Contrasts that inform the tissue model besides the hyperintensity contrast (never ce-T1w:
#: enhancement would be mistaken for tissue contrast).
MODEL_CONTRASTS = ("T1w", "T2w")


@dataclass
class Segmentation:
    """Lesion probability (float32 0..1), lesion labels (int32, :func:`label_lesions`) and figures."""

    prob: np.ndarray
    labels: np.ndarray
    figures: dict[str, Any]


def hyper_contrast(images: Mapping[str, np.ndarray]) -> str:
    """The contrast lesions are hyperintense on: FLAIR, else T2w."""
    for c in ("FLAIR", "T2w"):
        if c in images:
            return c
    raise ValueError(f"lesion segmentation needs FLAIR or T2w, got {sorted(images)}")


def model_inputs(images: Mapping[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """The hyperintense contrast and the contrasts the segmentation uses (float32, hyper first)."""
    hyper = hyper_contrast(images)
    used = {hyper: np.asarray(images[hyper], dtype=np.float32)}
    used.update({c: np.asarray(images[c], dtype=np.float32) for c in MODEL_CONTRASTS
                 if c in images and c != hyper})
    return hyper, used


def smoothed_priors(priors: TissuePriors, affine: np.ndarray, options: SegmentOptions) -> TissuePriors:
    """The tissue priors smoothed by ``options.prior_smoothing_mm`` (unchanged when 0)."""
    if options.prior_smoothing_mm <= 0:
        return priors
    return replace(priors, **{k: smooth_mm(getattr(priors, k), affine, options.prior_smoothing_mm)
                              for k in CLASSES})


def voxel_lesion_probability(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray,
                             priors: TissuePriors, options: SegmentOptions = SegmentOptions()) -> np.ndarray | None:
    """The learned voxel stage's lesion probability (0.5 at its threshold), before any component
    decision; None when no model applies (flat priors, rule-based method, no model for the contrasts).

    Other steps use it as per-voxel T2-lesion evidence (:mod:`msimaging.enhancing`); it comes
    from the evidence models (:func:`msimaging.lesion_model.bundled_evidence_models`: voxel-wise
    training weights, also when the segmentation's models are size-balanced)."""
    if options.method != "model" or not priors.from_template:
        return None
    from msimaging.lesion_model import bundled_evidence_models, model_for

    brain = np.asarray(brain) > 0
    hyper, used = model_inputs(images)
    model = model_for(tuple(used), bundled_evidence_models())
    if model is None:
        return None
    priors = smoothed_priors(priors, affine, options)
    ev = tissue_evidence(used, affine, brain, priors, options, hyper=hyper)
    prob, _ = model_probability(used, affine, brain, ev, priors, model)
    return prob


def segment_lesions(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray,
                    priors: TissuePriors, options: SegmentOptions = SegmentOptions(),
                    rules: LesionRules = LesionRules()) -> Segmentation:
    """Segment T2/FLAIR lesions of one session (all arrays on one grid, ``affine`` RAS).

    ``images`` holds FLAIR (or T2w) and optionally T1w/T2w, co-registered; ``priors`` are the
    template tissue maps on the same grid. The binary mask is ``labels > 0``, which is exactly
    ``label_lesions(prob >= options.threshold)``.
    """
    brain = np.asarray(brain) > 0
    hyper, used = model_inputs(images)
    priors = smoothed_priors(priors, affine, options)
    ev = tissue_evidence(used, affine, brain, priors, options, hyper=hyper)
    model = None
    if options.method == "model" and priors.from_template:  # the model's features include the priors
        from msimaging.lesion_model import bundled_models, model_for

        model = model_for(tuple(used), bundled_models())
        if model is None:
            log.warning("no lesion model for contrasts %s: using the rule-based detection", sorted(used))
    if model is not None:
        from msimaging.lesion_model import bundled_component_model

        prob, figures = model_probability(used, affine, brain, ev, priors, model, bundled_component_model(),
                                          options.model_half_max, options.model_half_max_mm,
                                          options.model_half_max_smooth)
    else:
        prob, figures = detect_lesions(used[hyper], affine, brain, ev, priors, options)
    figures.pop("_components", None)
    labels = label_lesions(prob >= options.threshold, affine, rules)
    figures.update(ev.figures)
    figures.update({"contrasts": sorted(used), "hyper_contrast": hyper, "lesion_count": int(labels.max()),
                    "lesion_volume_ml": total_volume_ml(labels, affine)})
    return Segmentation(prob=prob, labels=labels, figures=figures)


def run_segment_lesions(inputs: Mapping[str, str], out_prob: str, out_mask: str, out_dseg: str,
                        out_json: str, subject: str, session: str, cfg: Mapping[str, Any]) -> None:
    """Segment the lesions of one session and write DESIGN §3's probseg, mask and dseg.

    ``inputs`` maps contrast names (FLAIR, T2w, T1w, ...) to preprocessed images on the session
    reference grid, plus ``brain`` (brain mask) and ``template_xfm`` (template -> session,
    ITK resampling convention; optional: without it the tissue priors are flat).
    """
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.qc import QCReport

    options = SegmentOptions.from_config(cfg)
    rules = rules_from_config(dict(cfg))
    brain, affine = io.read_mask(inputs["brain"])
    images = {}
    for c in ("FLAIR", "T2w", "T1w"):
        if c in inputs:
            data, aff = io.read_image(inputs[c])
            if data.shape != brain.shape or not np.allclose(aff, affine, atol=1e-3):
                raise ValueError(f"{c} is not on the session reference grid")
            images[c] = data
    if "template_xfm" in inputs:
        priors = tissue_priors(Grid(brain.shape, affine), read_transform(inputs["template_xfm"]))
    else:
        priors = flat_priors(brain.shape)
    seg = segment_lesions(images, affine, brain, priors, options, rules)
    io.write_image(out_prob, seg.prob, affine, dtype=np.float32)
    io.write_mask(out_mask, seg.labels > 0, affine)
    io.write_image(out_dseg, seg.labels, affine, dtype=np.int32)
    report = QCReport(subject, session)
    report.figures["t2_lesion_count"] = int(seg.labels.max())
    report.figures["t2_lesion_volume_ml"] = total_volume_ml(seg.labels, affine)
    for k, v in seg.figures.items():
        if isinstance(v, (int, float)):
            report.figures[f"segment_{k}"] = v
    report.add("segment_lesions", "lesions", "count", int(seg.labels.max()))
    report.add("segment_lesions", "lesions", "contrasts", "+".join(seg.figures["contrasts"]))
    io.write_json(out_json, report.to_dict())
    log.info("%s %s: %d lesions, %.2f mL", subject, session, seg.labels.max(), seg.figures["lesion_volume_ml"])

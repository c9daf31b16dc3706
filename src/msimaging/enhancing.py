"""Gadolinium-enhancing (Gd+) lesions from post-contrast T1w against the co-registered T1w.

Both images are on the session's reference grid (``coregister_session``), N4-corrected and
standardised (white matter = 1). What enhances on a real ce-T1w is mostly not MS lesion: vessels,
choroid plexus, dura and sinuses, cortical and deep grey matter. An enhancing MS lesion is a T2
lesion, in white matter, T1-iso- or hypointense before contrast; the method finds enhancement and
then asks each candidate for that evidence (every rule a key of the config's ``enhancing:``):

1. **Enhancement map.** The pre-contrast T1w is quantile-matched to the ce-T1w inside the
   parenchyma (:func:`msimaging.longitudinal.quantile_match`); ``z = (ce - T1w_matched)`` in robust
   z-units of the parenchyma (mode and lower half-width of its histogram).
2. **Candidates**: seeds with ``z > z_threshold`` grown through ``z > low_z`` in parenchyma (inside
   the brain, at least ``edge_mm`` from its surface: dura, sinuses, cortical vessels; not CSF-dark
   on the pre-contrast T1w, below ``parenchyma_t1`` x its brain median); with a FLAIR, voxels at or
   below ``flair_grow_z`` FLAIR z (CSF partial volume, vessels) neither seed nor join.
3. **Evidence per candidate** (:func:`candidate_evidence`), each contrast as the fractional excess
   over its local normal-appearing white matter (:func:`msimaging.implant.local_nawm`, weighted by
   the template's WM prior): FLAIR and T2w upper-quartile excess (hyperintensity), T1w median
   excess (pre-contrast signal), the template's mean WM prior (location), the fraction of voxels
   near CSF (choroid plexus, sulcal vessels), the principal-axis elongation, the tubularity
   (:func:`tubularity`, 1 - Frangi's blob ratio of the Hessian: vessels) and, with template priors,
   the T2-lesion model's voxel probability (90th percentile; :func:`msimaging.segment.
   voxel_lesion_probability`: the learned FLAIR/T2w/T1w lesion-vs-tissue evidence, which tells a
   lesion from grey matter and vessels where single-contrast excesses cannot).
4. **Decision** (:func:`accept`): a candidate is a Gd+ lesion when it is hyperintense on every FLAIR
   / T2w present (``min_flair_excess``, ``min_t2_excess``), lesion-like to the T2-lesion model
   (``min_t2_probability``), not T1-bright before contrast
   (``max_t1_excess``: fat, blood products and inflow are; MS lesions are not), not tubular
   (``max_elongation``, ``max_tubularity``), not a small candidate whose left-right mirror image
   about the template midline enhances too (``max_mirror_fraction`` of its voxels within
   ``mirror_margin_mm`` of mirrored candidates, below ``mirror_max_volume_mm3``: the paired deep
   and subependymal veins; a lesion is rarely matched by an enhancing one at its mirror position),
   not mostly mirrored at any size (``max_symmetric_fraction``: the choroid plexus), and in white
   matter (template WM prior at least ``min_wm_prior``) and not mostly near CSF
   (``max_csf_fraction`` within ``csf_margin_mm``) unless it is *lesion-like*: it overlaps the
   session's T2 lesion mask or the T2-lesion model's probability reaches
   ``lesion_like_probability``. A lesion enhances wherever it lies (juxtacortical, periventricular):
   the location rules are for candidates with no lesion evidence of their own. On implanted cases
   into sub-p07 (seeds 0-9), the location rules rejected 6 of 72 lesions the T2 segmentation had
   marked, and the 0.20 FLAIR / T2w excess floors rejected real-contrast lesions at 0.15-0.19
   whose T2-model probability was high; with the model the floors are ``min_excess_with_model``
   (0.12) and its probability does the discriminating (without it, on phantoms, 0.12 let FLAIR-faint
   mimics through: 1.8 false per scan). The tubularity is reported for every candidate
   but its rule is off by default (``max_tubularity: 1``): on sub-p07's ce-T1w, implanted real
   lesion shapes (irregular, often ovoid) scored as tube-like as its vessel candidates (medians
   0.77 and 0.71), so it removed lesions, not vessels.

Without template priors (flat priors, phantoms without a template transform) the location rule is
skipped; without FLAIR / T2w their hyperintensity rule is. Gd+ counts are NA (never 0) when ce-T1w
or T1w is missing: the DAG does not schedule this step then and the endpoints row carries the
reason (``Plan.missing_gd_reason``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi

from msimaging.geometry import voxel_sizes
from msimaging.lesions import CONNECTIVITY, LesionRules, flair_zscore, label_lesions, robust_mode_sigma

log = logging.getLogger(__name__)

#: Hessian scales (mm) of the tubularity filter: small cortical / medullary veins to sinuses' tributaries.
VESSEL_SCALES_MM = (0.7, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class EnhancingRules:
    """Gd+ detection settings (config section ``enhancing:``; see config/README.md)."""

    z_threshold: float = 4.0        # seed: enhancement above this many robust z-units
    low_z: float = 3.0              # grow through voxels above this
    edge_mm: float = 4.0            # distance from the brain surface (dura, sinuses, cortical vessels)
    parenchyma_t1: float = 0.55     # pre-contrast T1w below this x its brain median: CSF / partial volume
    csf_margin_mm: float = 2.0      # choroid plexus / sulcal vessels: components mostly this close to CSF
    max_csf_fraction: float = 0.5
    max_elongation: float = 4.0     # vessels: ratio of principal-axis lengths
    max_tubularity: float = 1.0     # vessels: Hessian tubularity (1 - Frangi R_B) above this
    flair_grow_z: float = 0.0       # with a FLAIR: voxels at or below this FLAIR z never join a Gd+ lesion
    min_flair_excess: float = 0.20  # with a FLAIR: upper-quartile excess over local NAWM at least this
    min_t2_excess: float = 0.20     # with a T2w: the same on T2w
    min_excess_with_model: float = 0.12  # both floors when the T2-lesion model's probability is evidence too
    max_t1_excess: float = 0.10     # pre-contrast T1w median excess over local NAWM at most this
    min_wm_prior: float = 0.5       # with template priors: mean WM prior at least this
    min_t2_probability: float = 0.3  # with the T2-lesion model: its voxel probability (90th pct) at least this
    lesion_like_probability: float = 0.8  # a T2 lesion, or this T2-model probability: exempt from location rules
    mirror_margin_mm: float = 2.0   # symmetric anatomy: a candidate within this of its mirrored candidates ...
    max_mirror_fraction: float = 0.4  # ... for more than this fraction of its voxels ...
    mirror_max_volume_mm3: float = 100.0  # ... and smaller than this is a paired vein, not a lesion
    max_symmetric_fraction: float = 0.6  # any size: more than this fraction mirrored is symmetric anatomy
    t2_split_voxels: float = 1.0    # rejected candidates: a second look, split where they leave the T2 lesions (0: off)
    t2_support_probability: float = 0.5  # with the T2-lesion model: T2 lesions whose peak probability is below this are no support
    t2_support_voxel_probability: float = 0.375  # ... and their voxels below this are no support (their fringe)
    min_volume_mm3: float = 10.0

    @classmethod
    def from_config(cls, cfg: dict) -> "EnhancingRules":
        c = cfg.get("enhancing", {}) or {}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in c:
                kwargs[f.name] = float(c[f.name])
        return cls(**kwargs)


def enhancement_zscore(ce: np.ndarray, t1: np.ndarray, parenchyma: np.ndarray) -> np.ndarray:
    """(ce-T1w - quantile-matched T1w) in robust z-units of the parenchyma."""
    from msimaging.longitudinal import quantile_match

    ce = np.asarray(ce, dtype=np.float32)
    t1m = quantile_match(np.asarray(t1, dtype=np.float32), ce, parenchyma)
    diff = ce - t1m
    mode, sigma = robust_mode_sigma(diff[parenchyma])
    return ((diff - mode) / sigma).astype(np.float32)


def elongation(coords_mm: np.ndarray) -> float:
    """Ratio of the largest to the second principal standard deviation of a point cloud (>= 1)."""
    if coords_mm.shape[0] < 3:
        return 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(coords_mm.T)))[::-1]
    return float(np.sqrt(max(ev[0], 1e-9) / max(ev[1], 1e-9)))


def hessian_eigenvalues(image: np.ndarray, sigma_mm: float, zooms: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending, ``(..., 3)``) of the scale-normalised Hessian of ``image`` at ``sigma_mm``."""
    sig = float(sigma_mm) / np.asarray(zooms, float)
    img = np.asarray(image, np.float32)
    h = np.empty(img.shape + (3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            d = ndi.gaussian_filter(img, sig, order=order) * (sigma_mm ** 2) / (zooms[i] * zooms[j])
            h[..., i, j] = d
            h[..., j, i] = d
    return np.linalg.eigvalsh(h)


def tubularity(z: np.ndarray, affine: np.ndarray, box: tuple[slice, ...], comp: np.ndarray,
               scales_mm: tuple[float, ...] = VESSEL_SCALES_MM) -> float:
    """How tube-like a bright candidate is (0 blob .. 1 tube), from Frangi's ratio R_B.

    At each scale the Hessian of the enhancement map has, in a bright structure, eigenvalues
    ``l1 >= l2 >= l3`` with ``l3, l2 < 0``; a tube has ``l1 ~ 0`` (along its axis), a blob
    ``l1 ~ l2 ~ l3``. ``R_B = |l1| / sqrt(|l2 l3|)`` (Frangi et al., MICCAI 1998) is taken at the
    scale of the strongest response in the candidate's brightest half (median over those voxels);
    the tubularity is ``1 - min(R_B, 1)``. A shell (ring lesion) has ``l2 ~ 0`` and ``l1 ~ 0``
    and a low score too, so only tubes score high.
    """
    pad = int(np.ceil(3 * max(scales_mm) / float(np.min(voxel_sizes(affine))))) + 1
    big = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, z.shape))
    inner = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(box, big))
    sub = np.clip(z[big], 0.0, None)
    vals = z[box][comp]
    core = comp & (z[box] >= 0.5 * (float(vals.max()) + float(np.median(vals)))) if vals.size else comp
    if not core.any():
        core = comp
    zooms = voxel_sizes(affine)
    best, best_strength = 0.0, -np.inf
    for s in scales_mm:
        ev = hessian_eigenvalues(sub, s, zooms)[inner][core]     # ascending: l3 <= l2 <= l1
        l3, l2, l1 = ev[:, 0], ev[:, 1], ev[:, 2]
        bright = (l3 < 0) & (l2 < 0)
        if not bright.any():
            continue
        strength = float(np.median(np.sqrt(l1 ** 2 + l2 ** 2 + l3 ** 2)))
        rb = np.abs(l1[bright]) / np.sqrt(np.abs(l2[bright] * l3[bright]))
        if strength > best_strength:
            best_strength, best = strength, float(1.0 - min(np.median(rb), 1.0))
    return best


def supported_lesions(t2_lesions: np.ndarray, t2_probability: np.ndarray | None, min_peak: float,
                      min_voxel: float = 0.0) -> np.ndarray:
    """The T2 lesions (connected components) whose peak T2-model voxel probability reaches ``min_peak``,
    each only where its voxel probability reaches ``min_voxel`` (its core).

    The probability is the voxel-wise evidence model's (0.5 at its threshold): a T2 lesion with no
    voxel above it was kept on weaker evidence (a size-balanced segmentation model keeps small
    faint components) and does not make an enhancing candidate lesion-like. The segmentation keeps
    a fringe of weaker voxels around its lesions (for the lesion count, :mod:`msimaging.segment`);
    enhancement reaching only that fringe is not evidence. Without a probability, or with
    ``min_peak`` and ``min_voxel`` 0, every lesion voxel supports.
    """
    t2_lesions = np.asarray(t2_lesions, dtype=bool)
    if t2_probability is None or not t2_lesions.any():
        return t2_lesions
    prob = np.asarray(t2_probability, np.float32)
    if min_voxel > 0:
        t2_lesions = t2_lesions & (prob >= min_voxel)
    if min_peak <= 0 or not t2_lesions.any():
        return t2_lesions
    lab, n = ndi.label(t2_lesions, structure=CONNECTIVITY)
    peak = ndi.maximum(prob, lab, index=np.arange(1, n + 1))
    keep = np.concatenate([[False], np.asarray(peak) >= min_peak])
    return keep[lab]


def split_at_lesions(labels: np.ndarray, t2_lesions: np.ndarray, margin_voxels: int, affine: np.ndarray,
                     min_rules: LesionRules) -> np.ndarray:
    """The parts of candidates split where they leave the T2 lesions (dilated by ``margin_voxels``).

    Enhancement grows through vessels and choroid plexus into lesions beside them: one candidate of
    thousands of mm^3 whose evidence (T2-model probability, location) is the vessels', not the
    lesion's. A candidate is split only when the part inside and the part outside both reach the
    minimum size; the parts are labelled 1..N (connected components at least the minimum size),
    candidates that are not split are left out.
    """
    near = ndi.binary_dilation(t2_lesions, CONNECTIVITY, iterations=margin_voxels) if margin_voxels > 0 else t2_lesions
    inside = np.zeros(labels.shape, bool)
    outside = np.zeros(labels.shape, bool)
    vox = float(np.prod(voxel_sizes(affine)))
    for lid, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        comp = labels[box] == lid
        part = comp & near[box]
        smaller = min(int(part.sum()), int(comp.sum() - part.sum()))
        if smaller * vox >= min_rules.min_volume_mm3 and smaller >= min_rules.min_voxels:
            inside[box] |= part
            outside[box] |= comp & ~part
    a = label_lesions(outside, affine, min_rules)
    b = label_lesions(inside, affine, min_rules)
    return np.where(b > 0, b + a.max(), a).astype(np.int32)


def candidate_evidence(labels: np.ndarray, z: np.ndarray, affine: np.ndarray,
                       images: Mapping[str, np.ndarray], nawm: Mapping[str, np.ndarray],
                       near_csf: np.ndarray, t2_lesions: np.ndarray | None, wm_prior: np.ndarray | None,
                       t2_probability: np.ndarray | None = None, mirrored: np.ndarray | None = None
                       ) -> list[dict[str, float]]:
    """Per labelled candidate (label order) the evidence :func:`accept` decides on.

    ``images`` may hold FLAIR, T2w and T1w (pre-contrast), ``nawm`` their local NAWM references;
    ``mirrored``: where the left-right mirror image of any candidate lies (within a margin).
    """
    zooms = voxel_sizes(affine)
    t2 = None if t2_lesions is None else ndi.binary_dilation(np.asarray(t2_lesions, bool), CONNECTIVITY)
    out = []
    for lid, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            out.append({})
            continue
        comp = labels[box] == lid
        f: dict[str, float] = {"volume_mm3": float(comp.sum() * np.prod(zooms)),
                               "z_max": float(z[box][comp].max())}
        for c, q in (("FLAIR", 75), ("T2w", 75), ("T1w", 50)):
            if c in images:
                rel = np.asarray(images[c], np.float32)[box][comp] / np.maximum(nawm[c][box][comp], 1e-6) - 1.0
                f[f"{c}_excess"] = float(np.percentile(rel, q))
        f["csf_fraction"] = float(near_csf[box][comp].mean())
        f["elongation"] = elongation(np.argwhere(comp) * zooms)
        f["tubularity"] = tubularity(z, affine, box, comp)
        f["t2_lesion"] = float(bool(t2 is not None and (t2[box] & comp).any()))
        if wm_prior is not None:
            f["wm_prior"] = float(np.asarray(wm_prior)[box][comp].mean())
        if t2_probability is not None:
            f["t2_probability"] = float(np.percentile(np.asarray(t2_probability)[box][comp], 90))
        if mirrored is not None:
            f["mirror_fraction"] = float(mirrored[box][comp].mean())
        out.append(f)
    return out


#: The rules :func:`accept` reads: a change of these alone leaves the candidates and their evidence as they are.
DECISION_RULES = ("min_flair_excess", "min_t2_excess", "min_excess_with_model", "min_t2_probability", "max_t1_excess",
                  "max_elongation", "max_tubularity", "max_mirror_fraction", "mirror_max_volume_mm3",
                  "max_symmetric_fraction", "lesion_like_probability", "max_csf_fraction", "min_wm_prior")


def accept(f: Mapping[str, float], rules: EnhancingRules) -> tuple[bool, str]:
    """The decision on one candidate's evidence: (is a Gd+ lesion, the reason when not)."""
    # with the T2-lesion model the excess floors only drop the clearly not hyperintense: the model's
    # probability tells a faint lesion from grey matter; without it, the floors are the evidence
    model = "t2_probability" in f
    if "FLAIR_excess" in f and f["FLAIR_excess"] < (rules.min_excess_with_model if model else rules.min_flair_excess):
        return False, "not FLAIR-hyperintense"
    if "T2w_excess" in f and f["T2w_excess"] < (rules.min_excess_with_model if model else rules.min_t2_excess):
        return False, "not T2-hyperintense"
    if "t2_probability" in f and f["t2_probability"] < rules.min_t2_probability:
        return False, "not lesion-like on FLAIR/T2w/T1w (T2-lesion model)"
    if "T1w_excess" in f and f["T1w_excess"] > rules.max_t1_excess:
        return False, "T1-bright before contrast"
    if f["elongation"] > rules.max_elongation or f["tubularity"] > rules.max_tubularity:
        return False, "tubular (vessel)"
    mirrored = f.get("mirror_fraction", 0.0)
    if mirrored > rules.max_mirror_fraction and f["volume_mm3"] < rules.mirror_max_volume_mm3:
        return False, "mirror-symmetric enhancement (paired deep veins)"
    if mirrored > rules.max_symmetric_fraction:
        return False, "mirror-symmetric enhancement (choroid plexus, paired veins)"
    # a lesion enhances wherever it lies (juxtacortical, periventricular): the location rules are
    # for candidates with no lesion evidence of their own
    lesion_like = f.get("t2_lesion", 0.0) > 0 or f.get("t2_probability", 0.0) >= rules.lesion_like_probability
    if f["csf_fraction"] > rules.max_csf_fraction and not lesion_like:
        return False, "beside CSF (choroid plexus, sulcal vessel)"
    if "wm_prior" in f and f["wm_prior"] < rules.min_wm_prior and not lesion_like:
        return False, "outside white matter (grey matter, vessels, choroid plexus)"
    return True, ""


@dataclass
class Detection:
    """Gd+ lesions of one session and the evidence of every candidate."""

    labels: np.ndarray                       # int32 Gd+ lesions (0 background)
    candidates: list[dict[str, Any]]         # evidence, decision and reason per candidate
    candidate_labels: np.ndarray             # int32 candidates (ids of ``candidates``)
    part_labels: np.ndarray | None = None    # int32 second-look parts (ids of ``candidates`` with ``part_of``)


def detect(
    ce: np.ndarray,
    t1: np.ndarray,
    affine: np.ndarray,
    brain: np.ndarray,
    rules: EnhancingRules = EnhancingRules(),
    lesion_rules: LesionRules = LesionRules(),
    t2_lesions: np.ndarray | None = None,
    flair: np.ndarray | None = None,
    t2w: np.ndarray | None = None,
    wm_prior: np.ndarray | None = None,
    t2_probability: np.ndarray | None = None,
    mirror: Any = None,
) -> Detection:
    """Gd+ lesions on the grid of ``ce`` (see the module docstring), with every candidate's
    evidence and decision.

    ``wm_prior``: the template's WM probability on the session grid (None: no location rule; it
    also weights the local NAWM references, else the brain does). ``t2_probability``: the
    T2-lesion model's voxel probability (:func:`msimaging.segment.voxel_lesion_probability`;
    None: no such rule). ``mirror``: the session -> session left-right mirror about the template
    midline (:func:`msimaging.segment.midline_mirror`; None: no symmetry rule).
    """
    from msimaging.implant import local_nawm
    from msimaging.morphology import dilate_mm, erode_mm

    brain = np.asarray(brain, dtype=bool)
    t1 = np.asarray(t1, dtype=np.float32)
    t1_floor = rules.parenchyma_t1 * float(np.median(t1[brain])) if brain.any() else 0.0
    tissue = brain & (t1 > t1_floor)
    if tissue.sum() < 100:
        raise ValueError("almost no parenchyma on the T1w: check the brain mask and the co-registration")
    inner = erode_mm(brain, rules.edge_mm, affine, border_value=False) if rules.edge_mm > 0 else brain
    z = enhancement_zscore(ce, t1, tissue)
    fz = None if flair is None else flair_zscore(np.asarray(flair, dtype=np.float32), brain)
    seeds = inner & tissue & (z > rules.z_threshold)
    grow = inner & tissue & (z > rules.low_z)
    if fz is not None:
        # enhancement in FLAIR-dark voxels (CSF partial volume, vessels) neither seeds nor joins
        # a lesion: this keeps lesions from merging with vessel / choroid clusters
        seeds &= fz > rules.flair_grow_z
        grow &= fz > rules.flair_grow_z
    none = np.zeros(brain.shape, dtype=np.int32)
    empty = Detection(none, [], none)
    region, n = ndi.label(grow | seeds, structure=CONNECTIVITY)
    if n == 0:
        return empty
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(region[seeds])] = True
    keep[0] = False
    min_rules = LesionRules(min_volume_mm3=max(rules.min_volume_mm3, 0.0), min_voxels=lesion_rules.min_voxels)
    labels = label_lesions(keep[region], affine, min_rules)
    if labels.max() == 0:
        return empty
    csf = brain & (t1 <= t1_floor)
    near_csf = dilate_mm(csf, rules.csf_margin_mm, affine) if rules.csf_margin_mm > 0 else csf
    images = {"T1w": t1}
    if flair is not None:
        images["FLAIR"] = np.asarray(flair, np.float32)
    if t2w is not None:
        images["T2w"] = np.asarray(t2w, np.float32)
    weight = (np.asarray(wm_prior, np.float32) >= 0.9) if wm_prior is not None else tissue.copy()
    weight &= brain
    if t2_lesions is not None:
        weight &= ~ndi.binary_dilation(np.asarray(t2_lesions, bool), CONNECTIVITY, iterations=2)
    nawm = {c: local_nawm(v, weight.astype(np.float32), affine) for c, v in images.items()}
    mirrored = None
    if mirror is not None:
        from msimaging.geometry import Grid, resample_array

        grid = Grid(tuple(labels.shape), affine)  # type: ignore[arg-type]
        mirrored = resample_array((labels > 0).astype(np.float32), affine, grid, mirror) >= 0.5
        if rules.mirror_margin_mm > 0:
            mirrored = dilate_mm(mirrored, rules.mirror_margin_mm, affine)
    # T2 lesions the T2-lesion model's voxel-wise probability supports: they make a candidate
    # lesion-like and give rejected candidates their second look
    support = None if t2_lesions is None else supported_lesions(t2_lesions, t2_probability,
                                                                 rules.t2_support_probability,
                                                                 rules.t2_support_voxel_probability)
    evidence = candidate_evidence(labels, z, affine, images, nawm, near_csf, support, wm_prior,
                                  t2_probability, mirrored)
    lut, candidates = _decide(evidence, rules)
    accepted = lut[labels]
    part_labels = None
    if support is not None and rules.t2_split_voxels > 0:
        # a second look at rejected candidates: split where they leave the T2 lesions, each part
        # judged on its own (a lesion that enhancement joined to a vessel or the choroid plexus)
        parts = split_at_lesions(np.where(accepted, 0, labels), support,
                                 int(rules.t2_split_voxels), affine, min_rules)
        if parts.max() > 0:
            part_evidence = candidate_evidence(parts, z, affine, images, nawm, near_csf, support, wm_prior,
                                               t2_probability, mirrored)
            part_lut, part_candidates = _decide(part_evidence, rules, first_id=int(labels.max()) + 1)
            boxes = ndi.find_objects(parts)
            for c in part_candidates:
                own = c["candidate"] - int(labels.max())
                box = boxes[own - 1]
                c["part_of"] = int(labels[box][parts[box] == own].max())
            candidates += part_candidates
            accepted |= part_lut[parts]
            part_labels = np.where(parts > 0, parts + int(labels.max()), 0).astype(np.int32)
    return Detection(label_lesions(accepted, affine, min_rules), candidates, labels, part_labels)


def _decide(evidence: list[dict[str, float]], rules: EnhancingRules, first_id: int = 1
            ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The decision on every candidate's evidence: accepted look-up (by label) and the candidate list
    (``candidate`` ids from ``first_id``)."""
    lut = np.zeros(len(evidence) + 1, dtype=bool)
    candidates: list[dict[str, Any]] = []
    for lid, f in enumerate(evidence, start=1):
        if not f:
            continue
        ok, why = accept(f, rules)
        candidates.append({"candidate": lid + first_id - 1, **{k: round(v, 4) for k, v in f.items()}, "accepted": ok,
                           "reason": why})
        lut[lid] = ok
    return lut, candidates


def detect_session(ce: np.ndarray, t1: np.ndarray, affine: np.ndarray, brain: np.ndarray, cfg: Mapping[str, Any],
                   t2_lesions: np.ndarray | None = None, flair: np.ndarray | None = None,
                   t2w: np.ndarray | None = None, template_xfm: Any = None) -> Detection:
    """The detect_enhancing rule's computation on in-memory inputs (all on the session grid).

    ``template_xfm`` (template -> session, ITK resampling convention) gives the WM prior and, with
    a FLAIR or T2w, the T2-lesion model's voxel probability; without it both rules are skipped.
    """
    from msimaging.geometry import Grid
    from msimaging.lesions import rules_from_config
    from msimaging.segment import SegmentOptions, tissue_priors, voxel_lesion_probability

    wm_prior = t2_prob = mirror = None
    if template_xfm is not None:
        priors = tissue_priors(Grid(tuple(np.shape(ce)), affine), template_xfm)  # type: ignore[arg-type]
        wm_prior, mirror = priors.wm, priors.mirror
        seg_images = {c: v for c, v in (("FLAIR", flair), ("T2w", t2w), ("T1w", t1)) if v is not None}
        if "FLAIR" in seg_images or "T2w" in seg_images:
            t2_prob = voxel_lesion_probability(seg_images, affine, brain, priors, SegmentOptions.from_config(dict(cfg)))
    return detect(ce, t1, affine, brain, EnhancingRules.from_config(dict(cfg)), rules_from_config(dict(cfg)),
                  t2_lesions=t2_lesions, flair=flair, t2w=t2w, wm_prior=wm_prior, t2_probability=t2_prob,
                  mirror=mirror)


def run_detect(inputs: Mapping[str, str], out_mask: str, out_json: str, subject: str, session: str,
               cfg: Mapping[str, Any]) -> None:
    """Detect Gd+ lesions of one session; write the mask (reference grid) and the QC JSON.

    ``inputs``: ``ce``, ``t1`` and ``brain`` (required) and, as evidence on the same grid when the
    session has them, ``lesions`` (T2 lesion mask), ``flair`` (the FLAIR reference), ``t2w`` and
    ``template_xfm`` (template -> session: WM prior and the T2-lesion model's probability). The QC
    JSON lists every candidate with its evidence and the reason it was not counted.
    """
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.lesions import total_volume_ml
    from msimaging.qc import QCReport

    ce, affine = io.read_image(inputs["ce"])
    t1, _ = io.read_image(inputs["t1"])
    brain, _ = io.read_mask(inputs["brain"])
    t2 = io.read_mask(inputs["lesions"])[0] if inputs.get("lesions") else None
    flair = io.read_image(inputs["flair"])[0] if inputs.get("flair") else None
    t2w = io.read_image(inputs["t2w"])[0] if inputs.get("t2w") else None
    for name, arr in (("T1w", t1), ("brain", brain), ("lesions", t2), ("FLAIR", flair), ("T2w", t2w)):
        if arr is not None and arr.shape != ce.shape:
            raise ValueError(f"{name} is not on the ce-T1w's session grid ({arr.shape} vs {ce.shape})")
    xfm = read_transform(inputs["template_xfm"]) if inputs.get("template_xfm") else None
    found = detect_session(ce, t1, affine, brain, cfg, t2_lesions=t2, flair=flair, t2w=t2w, template_xfm=xfm)
    labels = found.labels
    io.write_mask(out_mask, labels > 0, affine)
    report = QCReport(subject, session)
    report.figures["gd_lesion_count"] = int(labels.max())
    report.figures["gd_lesion_volume_ml"] = total_volume_ml(labels, affine)
    report.figures["gd_candidates"] = len(found.candidates)
    reasons: dict[str, int] = {}
    for c in found.candidates:
        if not c["accepted"]:
            reasons[c["reason"]] = reasons.get(c["reason"], 0) + 1
    report.add("detect_enhancing", "lesions", "count", int(labels.max()))
    report.add("detect_enhancing", "lesions", "candidates rejected", "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none")
    out = report.to_dict()
    out["gd_candidates"] = found.candidates
    io.write_json(out_json, out)

"""Gadolinium-enhancing (Gd+) lesions from post-contrast T1w against the co-registered T1w.

Both images are on the session's reference grid (``coregister_session``), N4-corrected and
standardised (white matter = 1). The method:

1. **Intensity matching.** The pre-contrast T1w is quantile-matched to the ce-T1w inside the
   parenchyma (:func:`msimaging.longitudinal.quantile_match`), so gain, offset and mild
   non-linear differences between the two acquisitions cancel in the subtraction.
2. **Enhancement map.** ``z = (ce - T1w_matched)`` in robust z-units of the parenchyma
   (mode and lower half-width of its histogram, :func:`lesions.robust_mode_sigma`).
3. **Candidates** are seeds with ``z > z_threshold`` grown through ``z > low_z``, restricted to
   parenchyma: inside the brain and at least ``edge_mm`` from its surface (dura, sinuses and
   cortical vessels lie there) and not CSF-dark on the pre-contrast T1w (below ``parenchyma_t1`` x its brain median).
4. **Rejection** of what enhances without being a lesion: a component mostly within
   ``csf_margin_mm`` of CSF (choroid plexus in the ventricles, vessels in sulci) or tubular
   (principal-axis length ratio above ``max_elongation``: vessels) is dropped, unless it
   overlaps a T2 lesion (Gd+ lesions are T2 lesions).

Gd+ counts are NA (never 0) when ce-T1w or T1w is missing: the DAG does not schedule this step
then and the endpoints row carries the reason (``Plan.missing_gd_reason``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from msimaging.geometry import voxel_sizes
from msimaging.lesions import CONNECTIVITY, LesionRules, flair_zscore, label_lesions, robust_mode_sigma

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnhancingRules:
    """Gd+ detection settings (config section ``enhancing:``; see config/README.md)."""

    z_threshold: float = 5.0        # seed: enhancement above this many robust z-units
    low_z: float = 3.0              # grow through voxels above this
    edge_mm: float = 4.0            # distance from the brain surface (dura, sinuses, cortical vessels)
    parenchyma_t1: float = 0.55     # pre-contrast T1w below this x its brain median: CSF / partial volume
    csf_margin_mm: float = 2.0      # choroid plexus / sulcal vessels: components mostly this close to CSF
    max_csf_fraction: float = 0.5
    max_elongation: float = 4.0     # vessels: ratio of principal-axis lengths
    flair_grow_z: float = 0.0       # with a FLAIR: voxels at or below this FLAIR z never join a Gd+ lesion
    flair_z: float = 1.5            # with a FLAIR: its upper-quartile z-score in a Gd+ lesion must exceed this
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


def detect_enhancing(
    ce: np.ndarray,
    t1: np.ndarray,
    affine: np.ndarray,
    brain: np.ndarray,
    rules: EnhancingRules = EnhancingRules(),
    lesion_rules: LesionRules = LesionRules(),
    t2_lesions: np.ndarray | None = None,
    flair: np.ndarray | None = None,
) -> np.ndarray:
    """Labelled Gd+ lesions (int32, 0 background) on the grid of ``ce`` (see the module docstring)."""
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
    region, n = ndi.label(grow | seeds, structure=CONNECTIVITY)
    if n == 0:
        return np.zeros(region.shape, dtype=np.int32)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(region[seeds])] = True
    keep[0] = False
    min_rules = LesionRules(min_volume_mm3=max(rules.min_volume_mm3, 0.0), min_voxels=lesion_rules.min_voxels)
    labels = label_lesions(keep[region], affine, min_rules)
    if labels.max() == 0:
        return labels
    csf = brain & (t1 <= t1_floor)
    near_csf = dilate_mm(csf, rules.csf_margin_mm, affine) if rules.csf_margin_mm > 0 else csf
    t2 = None if t2_lesions is None else ndi.binary_dilation(np.asarray(t2_lesions, bool), CONNECTIVITY)
    zooms = voxel_sizes(affine)
    out = np.zeros(labels.shape, dtype=bool)
    for lid, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        comp = labels[box] == lid
        if fz is not None and float(np.percentile(fz[box][comp], 75)) < rules.flair_z:
            continue              # not T2/FLAIR-hyperintense: vessel or choroid plexus in CSF
        if t2 is None or not (t2[box] & comp).any():
            csf_fraction = float(near_csf[box][comp].mean())
            ijk = np.argwhere(comp) * zooms
            if csf_fraction > rules.max_csf_fraction or elongation(ijk) > rules.max_elongation:
                continue
        out[box] |= comp
    return label_lesions(out, affine, min_rules)


def run_detect(ce_path: str, t1_path: str, brain_path: str, out_mask: str, out_json: str,
               subject: str, session: str, cfg: dict, lesions_path: str | None = None,
               flair_path: str | None = None) -> None:
    """Detect Gd+ lesions of one session; write the mask (reference grid) and the QC JSON.

    ``lesions_path`` (T2 lesion mask) and ``flair_path`` (the FLAIR reference) are optional
    evidence on the same grid; without FLAIR the hyperintensity check is skipped.
    """
    from msimaging import io
    from msimaging.lesions import rules_from_config, total_volume_ml
    from msimaging.qc import QCReport

    ce, affine = io.read_image(ce_path)
    t1, _ = io.read_image(t1_path)
    brain, _ = io.read_mask(brain_path)
    t2 = io.read_mask(lesions_path)[0] if lesions_path else None
    flair = io.read_image(flair_path)[0] if flair_path else None
    rules = EnhancingRules.from_config(cfg)
    labels = detect_enhancing(ce, t1, affine, brain, rules, rules_from_config(cfg), t2_lesions=t2, flair=flair)
    io.write_mask(out_mask, labels > 0, affine)
    report = QCReport(subject, session)
    report.figures["gd_lesion_count"] = int(labels.max())
    report.figures["gd_lesion_volume_ml"] = total_volume_ml(labels, affine)
    report.add("detect_enhancing", "lesions", "count", int(labels.max()))
    io.write_json(out_json, report.to_dict())

"""Gadolinium-enhancing (Gd+) lesions from post-contrast T1w against the co-registered T1w."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from msimaging.lesions import LesionRules, label_lesions, robust_mode_sigma

log = logging.getLogger(__name__)


def enhancement_zscore(ce: np.ndarray, t1: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(ce-T1w - T1w) after intensity matching, in robust z-units of brain parenchyma.

    Both images are standardised so that their white-matter peak is 1; the difference is then
    matched by its own mode and lower half-width.
    """
    diff = np.asarray(ce, dtype=np.float32) - np.asarray(t1, dtype=np.float32)
    mode, sigma = robust_mode_sigma(diff[brain])
    return ((diff - mode) / sigma).astype(np.float32)


def detect_enhancing(
    ce: np.ndarray,
    t1: np.ndarray,
    affine: np.ndarray,
    brain: np.ndarray,
    rules: LesionRules = LesionRules(),
    z_threshold: float = 3.0,
    edge_mm: float = 4.0,
) -> np.ndarray:
    """Labelled Gd+ lesions: enhancing voxels inside parenchyma, away from the brain surface.

    The surface margin removes dura and superficial vessels; voxels whose pre-contrast T1w is
    CSF-dark (ventricles, where choroid plexus enhances) are excluded.
    """
    from msimaging.preprocess import ball

    inner = ndi.binary_erosion(brain, ball(edge_mm, affine))
    z = enhancement_zscore(ce, t1, brain)
    parenchyma = t1 > 0.5  # T1w standardised: WM = 1, CSF well below 0.5
    candidate = (z > z_threshold) & inner & parenchyma & (ce > 1.05)
    return label_lesions(candidate, affine, rules)


def run_detect(ce_path: str, t1_path: str, brain_path: str, out_mask: str, out_json: str,
               subject: str, session: str, cfg: dict) -> None:
    from msimaging import io
    from msimaging.lesions import rules_from_config, total_volume_ml
    from msimaging.qc import QCReport

    ecfg = cfg.get("enhancing", {})
    ce, affine = io.read_image(ce_path)
    t1, _ = io.read_image(t1_path)
    brain, _ = io.read_mask(brain_path)
    base = rules_from_config(cfg)
    rules = LesionRules(min_volume_mm3=float(ecfg.get("min_volume_mm3", base.min_volume_mm3)),
                        min_voxels=base.min_voxels)
    labels = detect_enhancing(ce, t1, affine, brain, rules, float(ecfg.get("z_threshold", 3.0)))
    io.write_mask(out_mask, labels > 0, affine)
    report = QCReport(subject, session)
    report.figures["gd_lesion_count"] = int(labels.max())
    report.figures["gd_lesion_volume_ml"] = total_volume_ml(labels, affine)
    report.add("detect_enhancing", "lesions", "count", int(labels.max()))
    io.write_json(out_json, report.to_dict())

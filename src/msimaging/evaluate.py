"""Segmentation accuracy: voxel Dice and lesion-wise detection figures.

A predicted lesion is a true positive when it overlaps the truth mask, and a truth lesion is
detected when it overlaps the predicted mask (lesions as defined by :func:`label_lesions`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from msimaging.geometry import Grid, resample_mask, voxel_volume_mm3
from msimaging.lesions import LesionRules, label_lesions


@dataclass(frozen=True)
class Agreement:
    dice: float
    lesion_precision: float
    lesion_recall: float
    lesion_f1: float
    pred_count: int
    truth_count: int
    pred_volume_ml: float
    truth_volume_ml: float
    true_positive_pred: int
    detected_truth: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else float("nan")


def lesion_agreement(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray,
                     rules: LesionRules = LesionRules()) -> Agreement:
    """Dice and lesion-wise precision/recall/F1 of two masks on the same grid."""
    p_lab = label_lesions(pred, affine, rules)
    t_lab = label_lesions(truth, affine, rules)
    p_mask, t_mask = p_lab > 0, t_lab > 0
    tp_pred = len(np.setdiff1d(np.unique(p_lab[t_mask]), [0]))
    detected = len(np.setdiff1d(np.unique(t_lab[p_mask]), [0]))
    n_p, n_t = int(p_lab.max()), int(t_lab.max())
    precision = _ratio(tp_pred, n_p)
    recall = _ratio(detected, n_t)
    f1 = float("nan") if np.isnan(precision) or np.isnan(recall) else \
        (0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    if n_p == 0 and n_t == 0:
        precision = recall = f1 = 1.0
    vox_ml = voxel_volume_mm3(affine) / 1000.0
    return Agreement(
        dice=dice(p_mask, t_mask), lesion_precision=precision, lesion_recall=recall, lesion_f1=f1,
        pred_count=n_p, truth_count=n_t, pred_volume_ml=float(p_mask.sum() * vox_ml),
        truth_volume_ml=float(t_mask.sum() * vox_ml), true_positive_pred=tp_pred, detected_truth=detected,
    )


def evaluate_files(pred_path: str, truth_path: str, rules: LesionRules = LesionRules()) -> Agreement:
    """Compare two mask files; the prediction is resampled onto the truth grid if they differ."""
    from msimaging import io

    pred, p_aff = io.read_mask(pred_path)
    truth, t_aff = io.read_mask(truth_path)
    if pred.shape != truth.shape or not np.allclose(p_aff, t_aff, atol=1e-3):
        pred = resample_mask(pred, p_aff, Grid(truth.shape, t_aff))
    return lesion_agreement(pred, truth, t_aff, rules)

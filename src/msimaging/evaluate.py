"""Segmentation accuracy: voxel Dice, lesion-wise detection, counts and volumes.

Definitions (``msimaging evaluate PRED TRUTH``):

* **Voxel Dice** ``2|P & T| / (|P| + |T|)`` of the two masks as given (every voxel counts, also
  components too small to be lesions). ``dice_lesions`` is the same on the masks restricted to
  lesions (components that pass :func:`label_lesions`).
* **Lesions** of each mask are its 26-connected components that pass the lesion rules
  (``min_volume_mm3``, ``min_voxels``; DESIGN §4) -- :func:`label_lesions`, nothing else.
* A **truth lesion is detected** when it overlaps the predicted mask; a **predicted lesion is a
  true positive** when it overlaps the truth mask (each mask as given, so a prediction on an
  expert-marked spot too small to count as a lesion is not a false positive).
  precision = TP predicted / predicted lesions, recall = detected / truth lesions, F1 their
  harmonic mean; with no lesion on either side all three are 1.
* Counts are lesion counts; volumes are mask volumes in mL (``*_lesion_volume_ml`` over lesions
  only); ``truth_small_components`` counts truth components below the lesion rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from msimaging.geometry import Grid, resample_mask, voxel_volume_mm3
from msimaging.lesions import CONNECTIVITY, LesionRules, label_lesions


@dataclass(frozen=True)
class Agreement:
    dice: float
    dice_lesions: float
    lesion_precision: float
    lesion_recall: float
    lesion_f1: float
    pred_count: int
    truth_count: int
    true_positive_pred: int
    detected_truth: int
    pred_volume_ml: float
    truth_volume_ml: float
    pred_lesion_volume_ml: float
    truth_lesion_volume_ml: float
    volume_difference_ml: float
    truth_small_components: int
    pred_small_components: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Voxel Dice of two binary masks (1 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else float("nan")


def _f1(precision: float, recall: float) -> float:
    if np.isnan(precision) or np.isnan(recall):
        return float("nan")
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _n_components(mask: np.ndarray) -> int:
    return int(ndi.label(mask, structure=CONNECTIVITY)[1])


def lesion_agreement(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray,
                     rules: LesionRules = LesionRules()) -> Agreement:
    """Dice, lesion-wise precision/recall/F1, counts and volumes of two masks on one grid."""
    pred = np.asarray(pred) > 0
    truth = np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    p_lab = label_lesions(pred, affine, rules)
    t_lab = label_lesions(truth, affine, rules)
    tp_pred = len(np.setdiff1d(np.unique(p_lab[truth]), [0]))
    detected = len(np.setdiff1d(np.unique(t_lab[pred]), [0]))
    n_p, n_t = int(p_lab.max()), int(t_lab.max())
    precision, recall = _ratio(tp_pred, n_p), _ratio(detected, n_t)
    f1 = _f1(precision, recall)
    if n_p == 0 and n_t == 0:
        precision = recall = f1 = 1.0
    elif n_p == 0:
        precision, f1 = float("nan"), 0.0
    elif n_t == 0:
        recall, f1 = float("nan"), 0.0
    vox_ml = voxel_volume_mm3(affine) / 1000.0
    p_les, t_les = p_lab > 0, t_lab > 0
    return Agreement(
        dice=dice(pred, truth), dice_lesions=dice(p_les, t_les),
        lesion_precision=precision, lesion_recall=recall, lesion_f1=f1,
        pred_count=n_p, truth_count=n_t, true_positive_pred=tp_pred, detected_truth=detected,
        pred_volume_ml=float(pred.sum() * vox_ml), truth_volume_ml=float(truth.sum() * vox_ml),
        pred_lesion_volume_ml=float(p_les.sum() * vox_ml), truth_lesion_volume_ml=float(t_les.sum() * vox_ml),
        volume_difference_ml=float((pred.sum() - truth.sum()) * vox_ml),
        truth_small_components=_n_components(truth) - n_t, pred_small_components=_n_components(pred) - n_p,
    )


def lesion_recall_by_size(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray,
                          bands: tuple[tuple[float, float, str], ...],
                          rules: LesionRules = LesionRules()) -> dict[str, dict[str, int]]:
    """Truth lesions detected (overlapping ``pred``) per volume band ``(lo_mm3, hi_mm3, name)``."""
    t_lab = label_lesions(truth, affine, rules)
    n = int(t_lab.max())
    vols = np.bincount(t_lab.ravel(), minlength=n + 1)[1:] * voxel_volume_mm3(affine)
    hit = np.zeros(n + 1, bool)
    hit[np.unique(t_lab[np.asarray(pred) > 0])] = True
    hit = hit[1:]
    out = {}
    for lo, hi, name in bands:
        sel = (vols >= lo) & (vols < hi)
        out[name] = {"detected": int(hit[sel].sum()), "truth": int(sel.sum())}
    return out


def naive_flair_z(flair: np.ndarray, brain: np.ndarray, affine: np.ndarray, z: float = 3.0,
                  erode_mm: float = 3.0, rules: LesionRules = LesionRules()) -> np.ndarray:
    """The naive baseline every accuracy figure is quoted beside: FLAIR robust z > ``z``.

    z is (FLAIR - median) / (1.4826 MAD) over the brain; voxels within ``erode_mm`` of the brain
    surface are left out (the cortex and the rim); lesions are the components that pass ``rules``.
    """
    from msimaging.morphology import erode_mm as erode

    brain = np.asarray(brain) > 0
    vals = np.asarray(flair, np.float64)[brain]
    med = float(np.median(vals))
    mad = max(1.4826 * float(np.median(np.abs(vals - med))), 1e-6)
    inner = erode(brain, erode_mm, affine)
    return label_lesions(inner & ((np.asarray(flair) - med) / mad > z), affine, rules) > 0


def evaluate_files(pred_path: str, truth_path: str, rules: LesionRules = LesionRules()) -> Agreement:
    """Compare two mask files; the prediction is resampled onto the truth grid if they differ."""
    from msimaging import io

    pred, p_aff = io.read_mask(pred_path)
    truth, t_aff = io.read_mask(truth_path)
    if pred.shape != truth.shape or not np.allclose(p_aff, t_aff, atol=1e-3):
        pred = resample_mask(pred, p_aff, Grid(truth.shape, t_aff))
    return lesion_agreement(pred, truth, t_aff, rules)


def format_agreement(a: Agreement) -> str:
    """A readable block of the figures (what ``msimaging evaluate`` prints)."""
    d = a.to_dict()
    lines = []
    for k, v in d.items():
        lines.append(f"{k:>24}  {v:.4f}" if isinstance(v, float) else f"{k:>24}  {v}")
    return "\n".join(lines)

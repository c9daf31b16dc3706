"""New and enlarging T2 lesions between visits (DESIGN §4).

A follow-up F is compared with a reference visit R (baseline or previous) after registration:
R's labelled lesions are carried onto F's grid, every lesion of F is matched to the R lesions
it overlaps (R dilated by ``dilate_reference_voxels``), and classified new / enlarging / stable /
shrinking by the volume rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import Grid, affine_matrix_lps, affine_transform_from_matrix, resample_array
from msimaging.lesions import CONNECTIVITY, lesion_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeRules:
    dilate_reference_voxels: int = 1
    enlarge_small_lesion_mm3: float = 50.0
    enlarge_small_fraction: float = 0.5
    enlarge_large_fraction: float = 0.2
    enlarge_min_volume_mm3: float = 10.0

    @classmethod
    def from_config(cls, cfg: dict) -> "ChangeRules":
        c = cfg.get("change", {})
        return cls(**{k: type(getattr(cls(), k))(c[k]) for k in c if hasattr(cls(), k)})


@dataclass(frozen=True)
class LesionChange:
    lesion_id: int                 # lesion id in the follow-up's dseg
    status: str                    # new | enlarging | stable | shrinking
    volume_mm3: float
    reference_ids: tuple[int, ...]  # overlapped lesion ids of the reference visit
    reference_volume_mm3: float


def follow_up_to_reference(fu_to_baseline: sitk.Transform | None,
                           ref_to_baseline: sitk.Transform | None) -> sitk.Transform:
    """Transform mapping follow-up grid points to reference-visit points.

    ``from-session_to-baseline`` transforms map baseline points to session points, so
    F -> R is ``T_R o T_F^-1`` (identity for a missing transform, i.e. the baseline itself).
    """
    m_f = affine_matrix_lps(fu_to_baseline) if fu_to_baseline is not None else np.eye(4)
    m_r = affine_matrix_lps(ref_to_baseline) if ref_to_baseline is not None else np.eye(4)
    return affine_transform_from_matrix(m_r @ np.linalg.inv(m_f))


def is_enlarged(volume_mm3: float, reference_mm3: float, rules: ChangeRules) -> bool:
    growth = volume_mm3 - reference_mm3
    if growth < rules.enlarge_min_volume_mm3 or reference_mm3 <= 0:
        return False
    fraction = rules.enlarge_small_fraction if reference_mm3 < rules.enlarge_small_lesion_mm3 \
        else rules.enlarge_large_fraction
    return growth >= fraction * reference_mm3


def classify_changes(
    fu_labels: np.ndarray,
    fu_affine: np.ndarray,
    ref_labels_on_fu: np.ndarray,
    ref_volumes_mm3: dict[int, float],
    rules: ChangeRules = ChangeRules(),
) -> list[LesionChange]:
    """Status of every follow-up lesion given the reference lesions carried onto its grid."""
    stats = {s.lesion_id: s for s in lesion_stats(fu_labels, fu_affine)}
    dilated = ref_labels_on_fu
    if rules.dilate_reference_voxels > 0:
        dilated = ndi.grey_dilation(ref_labels_on_fu, footprint=CONNECTIVITY,
                                    mode="constant") if ref_labels_on_fu.any() else ref_labels_on_fu
        for _ in range(rules.dilate_reference_voxels - 1):
            dilated = ndi.grey_dilation(dilated, footprint=CONNECTIVITY, mode="constant")
        dilated = np.where(ref_labels_on_fu > 0, ref_labels_on_fu, dilated)
    changes = []
    for lid, stat in stats.items():
        overlapped = np.unique(dilated[fu_labels == lid])
        overlapped = tuple(int(v) for v in overlapped if v > 0)
        if not overlapped:
            changes.append(LesionChange(lid, "new", stat.volume_mm3, (), 0.0))
            continue
        ref_vol = float(sum(ref_volumes_mm3.get(r, 0.0) for r in overlapped))
        if is_enlarged(stat.volume_mm3, ref_vol, rules):
            status = "enlarging"
        elif is_enlarged(ref_vol, stat.volume_mm3, rules):
            status = "shrinking"
        else:
            status = "stable"
        changes.append(LesionChange(lid, status, stat.volume_mm3, overlapped, ref_vol))
    return changes


def compare_visits(
    fu_labels: np.ndarray,
    fu_affine: np.ndarray,
    ref_labels: np.ndarray,
    ref_affine: np.ndarray,
    fu_to_ref: sitk.Transform,
    rules: ChangeRules = ChangeRules(),
) -> list[LesionChange]:
    """Classify follow-up lesions against a reference visit's labelled lesions."""
    ref_on_fu = resample_array(ref_labels, ref_affine, Grid(fu_labels.shape, fu_affine), fu_to_ref,
                               "nearest").astype(np.int32)
    ref_volumes = {s.lesion_id: s.volume_mm3 for s in lesion_stats(ref_labels, ref_affine)}
    return classify_changes(fu_labels, fu_affine, ref_on_fu, ref_volumes, rules)


def status_mask(fu_labels: np.ndarray, changes: list[LesionChange], status: str) -> np.ndarray:
    ids = [c.lesion_id for c in changes if c.status == status]
    return np.isin(fu_labels, ids) if ids else np.zeros(fu_labels.shape, dtype=bool)


def run_compare(fu_dseg: str, fu_xfm: str, baseline_dseg: str, previous_dseg: str | None,
                previous_xfm: str | None, out_new: str, out_enlarging: str, out_json: str,
                subject: str, session: str, cfg: dict) -> None:
    """Compare a follow-up with baseline and with the previous visit; write masks and JSON."""
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.qc import QCReport

    rules = ChangeRules.from_config(cfg)
    fu, fu_affine = io.read_image(fu_dseg, dtype=np.int32)
    t_fu = read_transform(fu_xfm)
    result: dict[str, list[dict]] = {}
    for name, dseg, xfm in (("baseline", baseline_dseg, None), ("previous", previous_dseg, previous_xfm)):
        if dseg is None:
            dseg, xfm = baseline_dseg, None
        ref, ref_affine = io.read_image(dseg, dtype=np.int32)
        t_ref = read_transform(xfm) if xfm else None
        changes = compare_visits(fu, fu_affine, ref, ref_affine, follow_up_to_reference(t_fu, t_ref), rules)
        result[name] = [c.__dict__ | {"reference_ids": list(c.reference_ids)} for c in changes]
        if name == "baseline":
            io.write_mask(out_new, status_mask(fu, changes, "new"), fu_affine)
            io.write_mask(out_enlarging, status_mask(fu, changes, "enlarging"), fu_affine)
    report = QCReport(subject, session)
    for name in ("baseline", "previous"):
        for status in ("new", "enlarging"):
            report.figures[f"{status}_t2_vs_{name}"] = sum(1 for c in result[name] if c["status"] == status)
    report.figures["changes"] = result
    io.write_json(out_json, report.to_dict())


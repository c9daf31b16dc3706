"""The endpoints table: one row per subject x session, columns exactly as DESIGN §5."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from msimaging.lesions import LesionRules, label_lesions

#: Column order of endpoints.csv (DESIGN §5). Never reorder: analysts' code depends on it.
COLUMNS: tuple[str, ...] = (
    "subject",
    "session",
    "is_baseline",
    "days_since_baseline",
    "t2_lesion_count",
    "t2_lesion_volume_ml",
    "new_t2_vs_baseline",
    "enlarging_t2_vs_baseline",
    "new_t2_vs_previous",
    "enlarging_t2_vs_previous",
    "gd_lesion_count",
    "gd_lesion_volume_ml",
    "cua_lesion_count",
    "brain_volume_ml",
    "icv_ml",
    "bpf",
    "pbvc_vs_baseline",
    "qc_status",
    "qc_notes",
    "pipeline_version",
    "config_sha256",
    "inputs_sha256",
    "reader_adjudicated",
)

#: Columns that hold imaging measurements (merged into the outcome dataset with an mri_ prefix).
MEASURE_COLUMNS: tuple[str, ...] = COLUMNS[2:17]

QC_STATUSES = ("pass", "warn", "fail")

LESION_COLUMNS: tuple[str, ...] = (
    "lesion_id", "type", "volume_mm3", "centroid_x_ras_mm", "centroid_y_ras_mm", "centroid_z_ras_mm",
    "matched_baseline_lesions", "status", "status_vs_previous", "enhancing", "mean_flair_z",
)


def _figure(reports: list[dict], key: str) -> Any:
    for r in reports:
        if key in r.get("figures", {}):
            return r["figures"][key]
    return None


def files_sha256(paths: list[str]) -> str:
    """One SHA-256 over the contents of ``paths`` (sorted by file name)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda x: Path(x).name):
        h.update(Path(p).name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def cua_count(fu_labels: np.ndarray, changes_vs_previous: list[dict], gd_mask: np.ndarray,
              affine: np.ndarray, rules: LesionRules) -> int:
    """Gd+ lesions + new/enlarging T2 lesions (vs previous visit) that overlap no Gd+ lesion."""
    gd_count = int(label_lesions(gd_mask, affine, rules).max())
    gd = np.asarray(gd_mask, dtype=bool)
    extra = 0
    for c in changes_vs_previous:
        if c["status"] not in ("new", "enlarging"):
            continue
        # lesions found by the subtraction alone are not in the dseg: they carry their voxels
        voxels = c.get("voxels") or []
        overlaps = bool(gd.ravel()[np.asarray(voxels, dtype=np.int64)].any()) if voxels else \
            bool(gd[fu_labels == c["lesion_id"]].any())
        extra += 0 if overlaps else 1
    return gd_count + extra


def session_row(
    subject: str,
    session: str,
    is_baseline: bool,
    days_since_baseline: int | None,
    reports: list[dict],
    dseg_path: str,
    enhancing_path: str | None,
    missing_gd_reason: str | None,
    compare: dict | None,
    cfg: dict,
    config_hash: str,
    inputs_hash: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The endpoints row and lesion-table rows of one session from its step outputs."""
    from msimaging import __version__, io
    from msimaging.lesions import lesion_stats, rules_from_config
    from msimaging.qc import QCReport, worst_status

    rules = rules_from_config(cfg)
    labels, affine = io.read_image(dseg_path, dtype=np.int32)
    qc = [QCReport.from_dict(r) for r in reports]
    notes = [n for q in qc for n in q.notes()]
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(subject=subject, session=session, is_baseline=is_baseline,
               days_since_baseline=days_since_baseline)
    row["t2_lesion_count"] = int(labels.max())
    row["t2_lesion_volume_ml"] = float((labels > 0).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000)
    gd_mask = None
    if enhancing_path is not None:
        gd_mask, _ = io.read_mask(enhancing_path)
        gd_labels = label_lesions(gd_mask, affine, rules)
        row["gd_lesion_count"] = int(gd_labels.max())
        row["gd_lesion_volume_ml"] = float((gd_labels > 0).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000)
    elif missing_gd_reason:
        notes.append(f"gd: NA because {missing_gd_reason}")
    changes_bl: list[dict] = []
    changes_prev: list[dict] = []
    if compare is not None:
        changes_bl = compare["figures"]["changes"]["baseline"]
        changes_prev = compare["figures"]["changes"]["previous"]
        for name, changes in (("baseline", changes_bl), ("previous", changes_prev)):
            row[f"new_t2_vs_{name}"] = sum(1 for c in changes if c["status"] == "new")
            row[f"enlarging_t2_vs_{name}"] = sum(1 for c in changes if c["status"] == "enlarging")
    if gd_mask is not None:
        # at baseline no T2 change exists: the active lesions are the Gd+ ones
        row["cua_lesion_count"] = cua_count(labels, changes_prev, gd_mask, affine, rules)
    for key in ("brain_volume_ml", "icv_ml", "bpf"):
        row[key] = _figure(reports, key)
    row["pbvc_vs_baseline"] = 0.0 if is_baseline else _figure(reports, "pbvc_vs_baseline")
    row["qc_status"] = worst_status(q.status for q in qc)
    row["qc_notes"] = "; ".join(notes)
    row["pipeline_version"] = __version__
    row["config_sha256"] = config_hash
    row["inputs_sha256"] = inputs_hash
    row["reader_adjudicated"] = False  # the outcome step applies reader decisions

    status_bl = {c["lesion_id"]: c for c in changes_bl}
    status_prev = {c["lesion_id"]: c for c in changes_prev}
    lesion_rows = []
    for s in lesion_stats(labels, affine):
        c = status_bl.get(s.lesion_id)
        lesion_rows.append({
            "lesion_id": s.lesion_id,
            "type": "T2",
            "volume_mm3": s.volume_mm3,
            "centroid_x_ras_mm": s.centroid_ras_mm[0],
            "centroid_y_ras_mm": s.centroid_ras_mm[1],
            "centroid_z_ras_mm": s.centroid_ras_mm[2],
            "matched_baseline_lesions": " ".join(str(i) for i in c["reference_ids"]) if c else None,
            "status": c["status"] if c else ("baseline" if is_baseline else None),
            "status_vs_previous": status_prev[s.lesion_id]["status"] if s.lesion_id in status_prev else None,
            "enhancing": bool(gd_mask[labels == s.lesion_id].any()) if gd_mask is not None else None,
            "mean_flair_z": None,
        })
    return row, lesion_rows


def run_session(inputs: dict[str, Any], out_row: str, out_lesions: str, subject: str, session: str,
                info: dict[str, Any], cfg: dict) -> None:
    """Write a session's endpoints row (JSON) and its lesion table (TSV)."""
    from msimaging import io
    from msimaging.config import config_sha256

    reports = [io.read_json(p) for p in inputs["reports"]]
    compare = io.read_json(inputs["compare"]) if "compare" in inputs else None
    row, lesion_rows = session_row(
        subject, session, bool(info["is_baseline"]), info["days_since_baseline"], reports,
        inputs["dseg"], inputs.get("enhancing"), info.get("missing_gd_reason"), compare, cfg,
        config_sha256(cfg), files_sha256(list(inputs["raw"])),
    )
    io.write_table(out_lesions, LESION_COLUMNS, lesion_rows)
    io.write_json(out_row, row)


def run_subject(row_paths: list[str], out_tsv: str) -> None:
    """Collect a subject's session rows (in visit order) into its endpoints TSV."""
    from msimaging import io

    io.write_table(out_tsv, COLUMNS, [io.read_json(p) for p in row_paths])


def fail_row(subject: str, session: str | None, reason: str, is_baseline: bool | None = None) -> dict[str, Any]:
    """The row of a subject/session whose processing failed: NA measures, qc_status=fail."""
    from msimaging import __version__

    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(subject=subject, session=session, is_baseline=is_baseline, qc_status="fail",
               qc_notes=reason, pipeline_version=__version__)
    return row

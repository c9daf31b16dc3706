"""The group outputs: endpoints.csv, its data dictionary (endpoints.json) and qc.tsv."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from msimaging import __version__
from msimaging.endpoints import COLUMNS

log = logging.getLogger(__name__)

_COUNT = {"type": "integer", "unit": "lesions", "minimum": 0}
_ML = {"type": "number", "unit": "mL", "minimum": 0}

#: The data dictionary: every column of endpoints.csv, what it means and which config keys set it.
DICTIONARY: dict[str, dict[str, Any]] = {
    "subject": {"type": "string", "description": "BIDS subject label without 'sub-'", "unit": None},
    "session": {"type": "string", "description": "BIDS session (visit) label without 'ses-'", "unit": None},
    "is_baseline": {"type": "boolean", "allowed": ["true", "false"], "unit": None,
                    "description": "true for the subject's baseline session",
                    "definition": "first session by sessions.tsv acq_time, else by label order, unless set",
                    "config": ["baseline_session"]},
    "days_since_baseline": {"type": "integer", "unit": "days",
                            "description": "days between the session's and the baseline's acq_time",
                            "definition": "NA when sessions.tsv has no acq_time"},
    "t2_lesion_count": {**_COUNT, "description": "number of T2/FLAIR-hyperintense lesions",
                        "definition": "26-connected components of the lesion mask with volume >= min_volume_mm3 "
                                      "and >= min_voxels voxels",
                        "config": ["lesions.min_volume_mm3", "lesions.min_voxels", "lesions.threshold"]},
    "t2_lesion_volume_ml": {**_ML, "description": "total volume of the counted T2/FLAIR lesions",
                            "config": ["lesions.min_volume_mm3", "lesions.min_voxels", "lesions.threshold"]},
    "new_t2_vs_baseline": {**_COUNT, "description": "new T2 lesions since baseline",
                           "definition": "follow-up lesions overlapping no baseline lesion (baseline mask dilated "
                                         "by dilate_reference_voxels) after registration; NA at baseline",
                           "config": ["change.dilate_reference_voxels"]},
    "enlarging_t2_vs_baseline": {**_COUNT, "description": "enlarging T2 lesions since baseline",
                                 "definition": "follow-up lesions overlapping baseline lesion(s) whose volume grew by "
                                               ">= enlarge_small_fraction (reference < enlarge_small_lesion_mm3) "
                                               "or >= enlarge_large_fraction, and by >= enlarge_min_volume_mm3; "
                                               "NA at baseline",
                                 "config": ["change.enlarge_small_lesion_mm3", "change.enlarge_small_fraction",
                                            "change.enlarge_large_fraction", "change.enlarge_min_volume_mm3"]},
    "new_t2_vs_previous": {**_COUNT, "description": "new T2 lesions since the previous visit",
                           "definition": "as new_t2_vs_baseline with the previous visit as reference; NA at baseline",
                           "config": ["change.dilate_reference_voxels"]},
    "enlarging_t2_vs_previous": {**_COUNT, "description": "enlarging T2 lesions since the previous visit",
                                 "definition": "as enlarging_t2_vs_baseline with the previous visit as reference; "
                                               "NA at baseline",
                                 "config": ["change.enlarge_small_lesion_mm3", "change.enlarge_small_fraction",
                                            "change.enlarge_large_fraction", "change.enlarge_min_volume_mm3"]},
    "gd_lesion_count": {**_COUNT, "description": "gadolinium-enhancing (Gd+) lesions",
                        "definition": "lesions of the enhancement mask (ce-T1w vs co-registered T1w) inside "
                                      "parenchyma; NA when ce-T1w or T1w is missing",
                        "config": ["enhancing.z_threshold", "enhancing.min_volume_mm3"]},
    "gd_lesion_volume_ml": {**_ML, "description": "total volume of the Gd+ lesions; NA when not measurable",
                            "config": ["enhancing.z_threshold", "enhancing.min_volume_mm3"]},
    "cua_lesion_count": {**_COUNT, "description": "combined unique active lesions",
                         "definition": "Gd+ lesions + new/enlarging T2 lesions vs the previous visit that overlap no "
                                       "Gd+ lesion; at baseline the Gd+ lesions only; NA when Gd+ is NA"},
    "brain_volume_ml": {**_ML, "description": "brain parenchymal volume (GM + WM, lesions counted as parenchyma)",
                        "config": ["atrophy.method"]},
    "icv_ml": {**_ML, "description": "intracranial volume"},
    "bpf": {"type": "number", "unit": "fraction", "minimum": 0, "maximum": 1,
            "description": "brain parenchymal fraction = brain_volume_ml / icv_ml"},
    "pbvc_vs_baseline": {"type": "number", "unit": "%",
                         "description": "percent brain volume change from baseline",
                         "definition": "from the registered follow-up/baseline pair, not from two independent "
                                       "segmentations; 0 at baseline by definition",
                         "config": ["atrophy.method"]},
    "qc_status": {"type": "string", "allowed": ["pass", "warn", "fail"], "unit": None,
                  "description": "worst quality-control status of the session's steps"},
    "qc_notes": {"type": "string", "unit": None,
                 "description": "reasons for warn/fail and for every NA, '; '-separated"},
    "pipeline_version": {"type": "string", "unit": None, "description": "msimaging version that produced the row"},
    "config_sha256": {"type": "string", "unit": None,
                      "description": "SHA-256 of the measurement configuration (paths left out)"},
    "inputs_sha256": {"type": "string", "unit": None,
                      "description": "SHA-256 of the session's input image files"},
}


def data_dictionary() -> dict[str, Any]:
    missing = [c for c in COLUMNS if c not in DICTIONARY]
    if missing:
        raise RuntimeError(f"data dictionary lacks columns {missing}")
    return {
        "name": "msimaging endpoints",
        "pipeline_version": __version__,
        "missing_value": "NA",
        "columns": [{"name": c, **DICTIONARY[c]} for c in COLUMNS],
    }


def collect_rows(tables: list[str]) -> list[dict[str, str]]:
    from msimaging import io

    rows: list[dict[str, str]] = []
    for t in tables:
        rows += io.read_table(t)
    return rows


def qc_rows(report_paths: list[str]) -> list[dict[str, Any]]:
    from msimaging import io

    rows = []
    for p in report_paths:
        r = io.read_json(p)
        for item in r.get("items", []):
            rows.append({"subject": r["subject"], "session": r["session"], **item})
    return rows


def run_group(tables: list[str], reports: list[str], out_csv: str, out_json: str, out_qc: str,
              cfg: dict) -> None:
    from msimaging import io
    from msimaging.qc import QC_COLUMNS

    io.write_table(out_csv, COLUMNS, collect_rows(tables), sep=",")
    io.write_json(out_json, data_dictionary())
    io.write_table(out_qc, QC_COLUMNS, qc_rows(reports))
    io.write_json(Path(out_csv).parent / "dataset_description.json", dataset_description())


def dataset_description() -> dict[str, Any]:
    return {
        "Name": "msimaging derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "msimaging", "Version": __version__}],
    }


# Moved to msimaging.recovery (issue #9); the names stay importable from here.
from msimaging.recovery import failed_subjects, write_partial_outputs  # noqa: E402,F401

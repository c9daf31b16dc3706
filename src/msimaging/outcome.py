"""The group outputs: endpoints.csv, its data dictionary (endpoints.json) and qc.tsv."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from msimaging import __version__
from msimaging.endpoints import COLUMNS

log = logging.getLogger(__name__)

_COUNT = {"type": "integer", "unit": "lesions", "minimum": 0, "allowed": "integer >= 0 or NA"}
_ML = {"type": "number", "unit": "mL", "minimum": 0, "allowed": "number >= 0 (4 decimals) or NA"}
_TEXT = {"type": "string", "unit": None, "allowed": None, "config": []}
_LESION_KEYS = ["lesions.min_volume_mm3", "lesions.min_voxels", "lesions.threshold"]
_ENLARGE_KEYS = ["change.enlarge_small_lesion_mm3", "change.enlarge_small_fraction",
                 "change.enlarge_large_fraction", "change.enlarge_min_volume_mm3"]
_GD_KEYS = ["enhancing.z_threshold", "enhancing.min_volume_mm3", *_LESION_KEYS]
_ADJ = " Reader adjudication (outcome.adjudication) can change it; see reader_adjudicated."

#: The data dictionary: every column of endpoints.csv, what it means and which config keys set it.
#: Every entry has type, unit, allowed, description, definition and config (DESIGN §5).
DICTIONARY: dict[str, dict[str, Any]] = {
    "subject": {**_TEXT, "allowed": "BIDS label [A-Za-z0-9]+", "description": "BIDS subject label without 'sub-'",
                "definition": "the sub-<label> of the BIDS input; the key matched to outcome.subject_column"},
    "session": {**_TEXT, "allowed": "BIDS label [A-Za-z0-9]+",
                "description": "BIDS session (visit) label without 'ses-'",
                "definition": "the ses-<label> of the BIDS input; matched to outcome.visit_column, through "
                              "outcome.session_to_visit when given", "config": ["outcome.session_to_visit"]},
    "is_baseline": {"type": "boolean", "allowed": ["true", "false"], "unit": None,
                    "description": "true for the subject's baseline session",
                    "definition": "first session by sessions.tsv acq_time, else by label order, unless set",
                    "config": ["baseline_session"]},
    "days_since_baseline": {"type": "integer", "unit": "days", "allowed": "integer or NA",
                            "description": "days between the session's and the baseline's acq_time",
                            "definition": "calendar days between the acq_time dates in sessions.tsv; NA when "
                                          "sessions.tsv has no acq_time", "config": ["baseline_session"]},
    "t2_lesion_count": {**_COUNT, "description": "number of T2/FLAIR-hyperintense lesions",
                        "definition": "26-connected components of the lesion mask with volume >= min_volume_mm3 "
                                      "and >= min_voxels voxels." + _ADJ,
                        "config": _LESION_KEYS},
    "t2_lesion_volume_ml": {**_ML, "description": "total volume of the counted T2/FLAIR lesions",
                            "definition": "voxel count of the counted lesions x voxel volume on the session's "
                                          "reference grid / 1000." + _ADJ,
                            "config": _LESION_KEYS},
    "new_t2_vs_baseline": {**_COUNT, "description": "new T2 lesions since baseline",
                           "definition": "follow-up lesions overlapping no baseline lesion (baseline mask dilated "
                                         "by dilate_reference_voxels) after registration; NA at baseline." + _ADJ,
                           "config": ["change.dilate_reference_voxels", *_LESION_KEYS]},
    "enlarging_t2_vs_baseline": {**_COUNT, "description": "enlarging T2 lesions since baseline",
                                 "definition": "follow-up lesions overlapping baseline lesion(s) whose volume grew by "
                                               ">= enlarge_small_fraction (reference < enlarge_small_lesion_mm3) "
                                               "or >= enlarge_large_fraction, and by >= enlarge_min_volume_mm3; "
                                               "NA at baseline." + _ADJ,
                                 "config": _ENLARGE_KEYS},
    "new_t2_vs_previous": {**_COUNT, "description": "new T2 lesions since the previous visit",
                           "definition": "as new_t2_vs_baseline with the previous visit as reference; NA at "
                                         "baseline." + _ADJ,
                           "config": ["change.dilate_reference_voxels", *_LESION_KEYS]},
    "enlarging_t2_vs_previous": {**_COUNT, "description": "enlarging T2 lesions since the previous visit",
                                 "definition": "as enlarging_t2_vs_baseline with the previous visit as reference; "
                                               "NA at baseline." + _ADJ,
                                 "config": _ENLARGE_KEYS},
    "gd_lesion_count": {**_COUNT, "description": "gadolinium-enhancing (Gd+) lesions",
                        "definition": "lesions of the enhancement mask (ce-T1w vs co-registered T1w) inside "
                                      "parenchyma; NA (never 0) when ce-T1w or T1w is missing." + _ADJ,
                        "config": _GD_KEYS},
    "gd_lesion_volume_ml": {**_ML, "description": "total volume of the Gd+ lesions",
                            "definition": "voxel count of the counted Gd+ lesions x voxel volume / 1000; NA when "
                                          "Gd+ is not measurable." + _ADJ,
                            "config": _GD_KEYS},
    "cua_lesion_count": {**_COUNT, "description": "combined unique active lesions",
                         "definition": "Gd+ lesions + new/enlarging T2 lesions vs the previous visit that overlap no "
                                       "Gd+ lesion; at baseline the Gd+ lesions only; NA when Gd+ is NA." + _ADJ,
                         "config": [*_GD_KEYS, "change.dilate_reference_voxels", *_ENLARGE_KEYS]},
    "brain_volume_ml": {**_ML, "description": "brain parenchymal volume (GM + WM, lesions counted as parenchyma)",
                        "definition": "parenchyma segmented inside the brain mask on the reference grid",
                        "config": ["brain_mask.method", "brain_mask.refine", "atrophy.method"]},
    "icv_ml": {**_ML, "description": "intracranial volume",
               "definition": "volume of the intracranial (brain) mask", "config": ["brain_mask.method",
                                                                                 "brain_mask.refine"]},
    "bpf": {"type": "number", "unit": "fraction", "minimum": 0, "maximum": 1, "allowed": "number in [0, 1] or NA",
            "description": "brain parenchymal fraction", "definition": "brain_volume_ml / icv_ml",
            "config": ["brain_mask.method", "atrophy.method"]},
    "pbvc_vs_baseline": {"type": "number", "unit": "%", "allowed": "number or NA",
                         "description": "percent brain volume change from baseline",
                         "definition": "from the registered follow-up/baseline pair, not from two independent "
                                       "segmentations; 0 at baseline by definition",
                         "config": ["atrophy.method", "registration.halfway"]},
    "qc_status": {**_TEXT, "allowed": ["pass", "warn", "fail"],
                  "description": "worst quality-control status of the session's steps",
                  "definition": "the worst status of the session's qc.tsv items; fail when processing failed",
                  "config": ["registration.warn_correlation", "registration.fail_correlation"]},
    "qc_notes": {**_TEXT, "description": "reasons for warn/fail, for every NA and the reader's decisions",
                 "definition": "'; '-separated 'step/item: note' entries and 'reader adjudication: ...' entries"},
    "pipeline_version": {**_TEXT, "description": "msimaging version that produced the row",
                         "definition": "msimaging.__version__ of the run"},
    "config_sha256": {**_TEXT, "allowed": "64 hex digits", "description": "SHA-256 of the measurement configuration",
                      "definition": "canonical JSON of the configuration without location keys (bids_dir, "
                                    "participant_label, outcome)"},
    "inputs_sha256": {**_TEXT, "allowed": "64 hex digits", "description": "SHA-256 of the session's input images",
                      "definition": "one SHA-256 over the session's raw image files, sorted by name"},
    "reader_adjudicated": {"type": "boolean", "unit": None, "allowed": ["true", "false"],
                           "description": "true when a central reader's decisions were applied to the row",
                           "definition": "the session has at least one reject/confirm/add row in the adjudication "
                                         "file; the decisions are in qc_notes, each changed cell in "
                                         "adjudication.tsv (and the outcome dataset's audit trail)",
                           "config": ["outcome.adjudication"]},
}

#: Keys every data-dictionary entry must carry.
DICTIONARY_KEYS = ("type", "unit", "allowed", "description", "definition", "config")


def data_dictionary() -> dict[str, Any]:
    from msimaging.merge import MERGED_COLUMNS

    missing = [c for c in COLUMNS if c not in DICTIONARY]
    if missing:
        raise RuntimeError(f"data dictionary lacks columns {missing}")
    return {
        "name": "msimaging endpoints",
        "pipeline_version": __version__,
        "missing_value": "NA",
        "delimiter": ",",
        "columns": [{"name": c, **DICTIONARY[c]} for c in COLUMNS],
        "outcome_dataset": {
            "description": "columns merged into the trial's outcome dataset (--outcome-dataset), named with "
                           "config outcome.prefix; empty where the dataset has a row but no imaging",
            "columns": list(MERGED_COLUMNS),
            "config": ["outcome.subject_column", "outcome.visit_column", "outcome.session_to_visit",
                       "outcome.prefix"],
        },
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
              cfg: dict, inventories: list[str] | None = None, adjudication: str | None = None,
              out_adjudication: str | None = None) -> None:
    """endpoints.csv (reader decisions applied), endpoints.json, qc.tsv and adjudication.tsv."""
    from msimaging import io
    from msimaging.qc import QC_COLUMNS

    rows = collect_rows(tables)
    log_rows: list[dict[str, Any]] = []
    if adjudication:
        from msimaging.adjudication import (InventoryLesion, apply_decisions, read_decisions)

        inventory = [InventoryLesion.from_row(r) for p in inventories or [] for r in io.read_table(p)]
        applied = apply_decisions(rows, inventory, read_decisions(adjudication))
        rows, log_rows = applied.rows, applied.log
        log.info("reader adjudication %s: %d cell(s) changed", adjudication, len(log_rows))
    else:
        rows = [{**r, "reader_adjudicated": "true" if r.get("reader_adjudicated") == "true" else "false"}
                for r in rows]
    io.write_table(out_csv, COLUMNS, rows, sep=",")
    io.write_json(out_json, data_dictionary())
    io.write_table(out_qc, QC_COLUMNS, qc_rows(reports))
    if out_adjudication:
        from msimaging.adjudication import LOG_COLUMNS

        io.write_table(out_adjudication, LOG_COLUMNS, log_rows)
    io.write_json(Path(out_csv).parent / "dataset_description.json", dataset_description())


def dataset_description() -> dict[str, Any]:
    return {
        "Name": "msimaging derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "msimaging", "Version": __version__}],
    }

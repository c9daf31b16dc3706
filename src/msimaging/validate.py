"""Input validation: every problem named with its file and what to do, never a traceback.

``msimaging validate BIDS_DIR`` runs :func:`validate_study`; every run starts with the
``validate_inputs`` rule, which runs :func:`run_subject` for one subject and fails that subject
(only) when it has errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msimaging.bids import Study, Subject, discover
from msimaging.geometry import affine_problems, voxel_sizes

log = logging.getLogger(__name__)

#: Largest distance (mm) between qform and sform mappings of any corner voxel before they disagree.
QFORM_SFORM_TOL_MM = 1.0
#: A brain needs at least this much field of view (mm) along every axis... except thick slabs.
MIN_FOV_MM = 80.0


class ValidationError(ValueError):
    """Inputs that cannot be processed; ``problems`` holds one readable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class FileReport:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def check_image(path: Path) -> FileReport:
    """Open one image and check what the pipeline relies on."""
    import nibabel as nib

    rep = FileReport(str(path))
    try:
        img = nib.load(str(path))
    except Exception as exc:
        rep.errors.append(f"{path}: cannot be read as NIfTI ({exc.__class__.__name__}); re-export the series")
        return rep
    hdr = img.header
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        rep.errors.append(f"{path}: image has {len(shape)} dimensions {tuple(img.shape)}; a 3D volume is "
                          "needed (split 4D series, keep one volume)")
        return rep
    if min(shape) < 2:
        rep.errors.append(f"{path}: image shape {tuple(shape)} is a single slice; a 3D volume is needed")
        return rep
    from msimaging.io import image_affine

    affine = image_affine(img)
    for problem in affine_problems(affine):
        rep.errors.append(f"{path}: {problem}; fix the header (qform/sform) before processing")
    try:
        raw_zooms = np.asarray(hdr.get_zooms()[:3], dtype=float)
    except Exception:
        raw_zooms = np.zeros(3)
    if np.any(~np.isfinite(raw_zooms)) or np.any(raw_zooms <= 0):
        rep.errors.append(f"{path}: voxel sizes {raw_zooms.tolist()} in pixdim are zero, negative or not finite; "
                          "fix the header")
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode > 0 and scode > 0 and not rep.errors:
        q, s = img.get_qform(), img.get_sform()
        corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                            for k in (0, shape[2] - 1)], dtype=float)
        dist = float(np.linalg.norm((corners @ q.T - corners @ s.T)[:, :3], axis=1).max())
        rep.info["qform_sform_mm"] = dist
        if dist > QFORM_SFORM_TOL_MM:
            rep.errors.append(f"{path}: qform and sform disagree by up to {dist:.1f} mm; the position of the "
                              "image is ambiguous: fix the header so both describe the same geometry")
    if qcode == 0 and scode == 0:
        rep.warnings.append(f"{path}: neither qform nor sform is set; position in the scanner is unknown")
    if rep.errors:
        return rep
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        rep.errors.append(f"{path}: image data cannot be read ({exc.__class__.__name__}: truncated or corrupt "
                          "file); re-export the series")
        return rep
    data = data.reshape(shape)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        n = int((~np.isfinite(data)).sum())
        rep.errors.append(f"{path}: {n} voxels are NaN or infinite; re-export the series")
        return rep
    if float(np.max(data)) <= float(np.min(data)):
        rep.errors.append(f"{path}: the image is constant (all voxels {float(np.min(data))}); wrong series?")
        return rep
    zooms = voxel_sizes(affine)
    fov = zooms * np.asarray(shape)
    rep.info.update(shape=list(map(int, shape)), voxel_mm=[round(float(z), 4) for z in zooms],
                    fov_mm=[round(float(f), 1) for f in fov])
    if np.sort(fov)[1] < MIN_FOV_MM or fov.max() < 100:
        rep.errors.append(f"{path}: field of view {np.round(fov, 1).tolist()} mm cannot contain a brain; "
                          "wrong series or wrong voxel sizes")
    return rep


@dataclass
class SubjectValidation:
    subject: str
    errors: list[str]
    warnings: list[str]
    files: list[FileReport]

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "errors": self.errors, "warnings": self.warnings,
                "files": [f.__dict__ for f in self.files]}


def validate_subject(subject: Subject) -> SubjectValidation:
    errors = list(subject.problems)
    warnings: list[str] = []
    files = []
    for session in subject.sessions:
        for contrast in session.contrasts:
            rep = check_image(session.images[contrast])
            files.append(rep)
            errors += rep.errors
            warnings += rep.warnings
    return SubjectValidation(subject.label, errors, warnings, files)


def validate_study(bids_dir: str | Path, participant_labels: list[str] | None = None) -> tuple[Study, list[SubjectValidation]]:
    study = discover(bids_dir, participant_labels)
    return study, [validate_subject(s) for s in study.subjects.values()]


def run_subject(config: dict[str, Any], subject: str, out_json: str) -> None:
    """Validate one subject's inputs; write the report; raise :class:`ValidationError` on errors."""
    from msimaging import io

    labels = [subject]
    study = discover(config["bids_dir"], labels, (config.get("baseline_session") or "").removeprefix("ses-") or None)
    if subject not in study.subjects:
        raise ValidationError(study.problems or [f"sub-{subject} not found in {config['bids_dir']}"])
    result = validate_subject(study.subjects[subject])
    for w in result.warnings:
        log.warning("%s", w)
    if result.errors:
        for e in result.errors:
            log.error("%s", e)
        raise ValidationError(result.errors)
    io.write_json(out_json, result.to_dict())

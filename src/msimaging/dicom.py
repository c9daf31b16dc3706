"""From the scanner: one DICOM visit into BIDS (``msimaging import-dicom``).

What it does, in order:

1. read the headers of every DICOM file under DICOM_DIR (pydicom, no pixel data) and group the
   files by series;
2. classify each series into T1w, ce-gadolinium T1w (``ceT1w``), T2w or FLAIR from its
   description, its sequence parameters (TR, TE, TI, inversion) and its contrast tags
   (ContrastBolusAgent); localisers, scouts, derived series (MPR, MIP, subtractions) and other
   contrasts (DWI, SWI, PD, STIR...) are skipped; conflicting evidence and two series competing
   for one contrast are *ambiguous* and block the import (nothing is written) until a series map
   (:func:`parse_series_map`) says which to take;
3. convert each chosen series with dcm2niix (PyPI package ``dcm2niix``) with its anonymisation
   on, rewrite the image through :func:`msimaging.io.write_image` (clean header: no free text,
   qform == sform) and keep only acquisition parameters in the JSON sidecar (an allow-list);
4. record the session's acquisition date and time in ``sub-S/sub-S_sessions.tsv``, the only place
   a date is kept; with ``keep_dates=False`` the dates there are shifted so that each subject's
   day 0 falls on :data:`SHIFTED_DAY0` (BIDS: shifted dates use years before 1900), the real day 0
   being kept in a date-key file outside the BIDS dataset.

Conventions: series metadata are plain dicts keyed by DICOM keywords, in DICOM units (times in
ms, angles in degrees; ``ImageType``, ``ScanningSequence`` etc. as tuples of upper-case strings).
DICOM patient coordinates are LPS; affines returned here are RAS voxel-to-world (geometry.py),
voxel ``(i, j, k)`` = (column, row, slice). Classification functions are pure; reading DICOM,
running dcm2niix and writing BIDS are at the bottom (:func:`run_import`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from msimaging.bids import SAFE_LABEL_RE, contrast_name, natural_key
from msimaging.geometry import LPS_FLIP

log = logging.getLogger(__name__)

#: Contrasts the import can produce (msimaging's contrast keys, bids.CONTRASTS).
IMPORT_CONTRASTS = ("T1w", "ceT1w", "T2w", "FLAIR")
#: Other contrasts recognised from parameters or description; never imported.
OTHER_CONTRASTS = {"PD": "proton-density weighted", "T2star": "T2*-weighted gradient echo",
                   "STIR": "short-tau inversion recovery", "EPI": "echo-planar (diffusion/perfusion/BOLD)"}
SKIP = "skip"
#: Decision statuses. ``ambiguous`` and ``invalid`` block the import of the visit.
IMPORT, SKIPPED, AMBIGUOUS, INVALID = "import", "skip", "ambiguous", "invalid"
BLOCKING = (AMBIGUOUS, INVALID)

#: Day 0 of shifted dates (BIDS: shifted dates use the year 1900 or earlier, so they cannot be
#: mistaken for real ones; a century of follow-up stays before 1900).
SHIFTED_DAY0 = date(1800, 1, 1)

#: Fewest slices of a series that can be a brain volume; fewer is a localiser or a single slice.
MIN_SLICES = 8
#: Tolerance (mm) on slice positions: in-plane offsets and deviation from even spacing.
SLICE_POSITION_TOL_MM = 0.05
#: Largest disagreement (mm, at any corner voxel) between dcm2niix's geometry and the DICOM
#: headers before the conversion is rejected.
GEOMETRY_TOL_MM = 0.01

#: The only keys kept from dcm2niix's JSON sidecar: acquisition parameters. Anything else
#: (names, IDs, dates, times, institution, station, serial numbers, free-text descriptions and
#: comments) is dropped, whatever dcm2niix's anonymisation did.
SIDECAR_ALLOWED_KEYS = frozenset({
    "Modality", "MagneticFieldStrength", "ImagingFrequency", "Manufacturer", "ManufacturersModelName",
    "SoftwareVersions", "MRAcquisitionType", "ScanningSequence", "SequenceVariant", "ScanOptions",
    "SequenceName", "PulseSequenceName", "PulseSequenceDetails", "ImageType", "NonlinearGradientCorrection",
    "SeriesNumber", "SliceThickness", "SpacingBetweenSlices", "EchoTime", "EchoNumber", "RepetitionTime",
    "InversionTime", "FlipAngle", "EchoTrainLength", "PartialFourier", "PixelBandwidth", "PercentPhaseFOV",
    "PercentSampling", "PhaseEncodingSteps", "AcquisitionMatrixPE", "ReconMatrixPE", "PhaseResolution",
    "BaseResolution", "InPlanePhaseEncodingDirectionDICOM", "PhaseEncodingDirection",
    "ParallelReductionFactorInPlane", "ParallelAcquisitionTechnique", "ReceiveCoilName",
    "ReceiveCoilActiveElements", "CoilString", "MTState", "SpoilingState", "SAR", "DwellTime",
    "ImageOrientationPatientDICOM", "BodyPartExamined", "PatientPosition", "ConversionSoftware",
    "ConversionSoftwareVersion", "B1mapNominalFAValues", "MagneticFieldStrength",
})

#: DICOM keywords read from every file (headers only).
HEADER_KEYWORDS = (
    "SOPClassUID", "Modality", "PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID",
    "SeriesNumber", "InstanceNumber", "AcquisitionNumber", "SeriesDescription", "ProtocolName",
    "SequenceName", "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "ImageType",
    "RepetitionTime", "EchoTime", "EchoNumbers", "InversionTime", "FlipAngle", "ContrastBolusAgent",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    "NumberOfFrames", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "SeriesDate",
    "SeriesTime", "StudyDate", "StudyTime", "TemporalPositionIdentifier",
)


class DicomImportError(ValueError):
    """An import that cannot proceed; ``problems`` holds one readable line each."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# --- series maps (site or visit overrides) --------------------------------------------------------


@dataclass(frozen=True)
class SeriesMap:
    """Explicit choices that override the rules.

    ``by_number`` maps a SeriesNumber of the visit to a contrast key or ``"skip"``;
    ``by_description`` is an ordered list of (case-insensitive shell pattern on SeriesDescription,
    contrast or ``"skip"``), first match wins. A number wins over a description.
    """

    by_number: Mapping[int, str] = field(default_factory=dict)
    by_description: tuple[tuple[str, str], ...] = ()

    def lookup(self, meta: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(choice, why)`` for a series, or None when the map says nothing about it."""
        number = meta.get("SeriesNumber")
        if number is not None and int(number) in self.by_number:
            return self.by_number[int(number)], f"series map: series {int(number)}"
        text = str(meta.get("SeriesDescription") or "").lower()
        for pattern, choice in self.by_description:
            if fnmatch.fnmatchcase(text, pattern.lower()):
                return choice, f"series map: description matches {pattern!r}"
        return None


_CHOICE_ALIASES = {"t1w": "T1w", "cet1w": "ceT1w", "ce-gadolinium_t1w": "ceT1w", "t2w": "T2w",
                   "flair": "FLAIR", "skip": SKIP}


def _choice(value: Any, where: str) -> str:
    key = str(value).strip().lower()
    if key not in _CHOICE_ALIASES:
        raise DicomImportError([f"{where}: {value!r} is not one of T1w, ceT1w (or ce-gadolinium_T1w), T2w, FLAIR, skip"])
    return _CHOICE_ALIASES[key]


def parse_series_map(obj: Any, source: str = "series map") -> SeriesMap:
    """A :class:`SeriesMap` from parsed YAML/JSON::

        by_description:            # case-insensitive shell patterns on SeriesDescription
          "*dark-fluid*": FLAIR
          "*_MPR_*": skip
        by_number:                 # SeriesNumber in this visit (wins over descriptions)
          7: ceT1w
    """
    if obj is None:
        return SeriesMap()
    if not isinstance(obj, Mapping):
        raise DicomImportError([f"{source}: expected a mapping with 'by_description' and/or 'by_number'"])
    unknown = sorted(set(obj) - {"by_description", "by_number"})
    if unknown:
        raise DicomImportError([f"{source}: unknown key(s) {unknown}; use 'by_description' and/or 'by_number'"])
    problems: list[str] = []
    by_number: dict[int, str] = {}
    for key, value in (obj.get("by_number") or {}).items():
        try:
            number = int(str(key))
            by_number[number] = _choice(value, f"{source}: by_number {key}")
        except ValueError as exc:
            problems += exc.problems if isinstance(exc, DicomImportError) else \
                [f"{source}: by_number key {key!r} is not a series number"]
    by_description: list[tuple[str, str]] = []
    for pattern, value in (obj.get("by_description") or {}).items():
        try:
            by_description.append((str(pattern), _choice(value, f"{source}: by_description {pattern!r}")))
        except DicomImportError as exc:
            problems += exc.problems
    if problems:
        raise DicomImportError(problems)
    return SeriesMap(by_number=by_number, by_description=tuple(by_description))


# --- classification (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do with one series: ``status`` (import/skip/ambiguous/invalid), ``contrast`` when
    imported (or the candidate contrast when ambiguous), and a readable ``reason``."""

    status: str
    contrast: str | None
    reason: str
    from_map: bool = False


def _text(meta: Mapping[str, Any]) -> str:
    """Description and protocol, lower case, separators as spaces ("t1_mprage-post" -> "t1 mprage post")."""
    raw = " ".join(str(meta.get(k) or "") for k in ("SeriesDescription", "ProtocolName"))
    return " ".join(re.sub(r"[_\-.,;:/\\()\[\]{}|=]+", " ", raw.lower()).split())


def _codes(meta: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = meta.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.replace("/", "\\").split("\\")
    return tuple(str(v).strip().upper() for v in value if str(v).strip())


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


_LOCALISER_RE = re.compile(r"\b(locali[sz]er|loc|scout|survey|3 ?plane|tri ?pilot|aahead|pilot|calibration|"
                           r"asset cal|cal|ref ?scan|prescan|position(ing)?)\b")
_OTHER_RE = {
    "diffusion": r"\b(dwi|diff\w*|dti|adc|trace ?w?|tracew|ep2d diff|resolve)\b",
    "perfusion": r"\b(perf\w*|pwi|dsc|dce|asl|pcasl|pasl)\b",
    "susceptibility": r"\b(swi|swan|susc\w*|phase|mag images?|t2 ?\*|t2star|hemo\w*)\b|t2\*",
    "angiography": r"\b(tof|angio\w*|mra|pc3d|venogra\w*)\b",
    "functional": r"\b(bold|fmri|resting ?state|rs ?fmri)\b",
    "spectroscopy": r"\b(mrs|svs|csi|spectro\w*)\b",
    "double inversion recovery": r"\b(dir|double ir)\b",
    "STIR": r"\bstir\b",
    "proton density": r"\b(pd|pdw|proton density)\b(?! ?(\+|and)? ?t2)",
}
_FLAIR_RE = re.compile(r"flair|dark ?fluid|\btirm|fluid att")
_T2_RE = re.compile(r"\bt2(?! ?\*)(w|\b|[a-z])|\bt2$")
_T1_RE = re.compile(r"\bt1(w|\b|[a-z])|mp ?rage|\bspgr|\bfspgr|\bbravo|\btfl|\bt1$|\b3d ?tfe")
_POST_RE = re.compile(r"\+ ?c\b|\bc ?\+|\bpost\b|\bgad\w*|\bgd\b|\+ ?gd|contrast|kontrast|\bkm\b|\bce\b|"
                      r"enhanc\w*|\bmdc\b|\bgado\w*")
_PRE_RE = re.compile(r"\bpre\b|\bnativ\w*|\bnon ?contrast|\bwithout\b|\bw ?o\b|\bno ?(gd|gad|contrast)\b")


def localiser_reason(meta: Mapping[str, Any]) -> str | None:
    """Why a series is a localiser/scout/calibration scan, or None."""
    if "LOCALIZER" in _codes(meta, "ImageType"):
        return "localiser (ImageType LOCALIZER)"
    if _LOCALISER_RE.search(_text(meta)):
        return "localiser/scout/calibration (description)"
    n = meta.get("NumberOfSlices")
    if n is not None and int(n) < MIN_SLICES:
        return f"{int(n)} slice(s): a localiser or single-slice series, not a volume"
    return None


_DERIVED_CODES = {"DERIVED", "SECONDARY", "MPR", "MIP", "MINIP", "PROJECTION IMAGE", "REFORMATTED", "SUBTRACT",
                  "SUB", "CPR", "CURVED", "MPR_THICK", "MIP_SAG", "MIP_COR", "MIP_TRA", "ADC", "TRACEW", "FA"}


def derived_reason(meta: Mapping[str, Any]) -> str | None:
    """Why a series is derived (reformat, projection, subtraction, map), or None.

    ImageType decides when present (an ORIGINAL series named "...MPR..." stays a candidate, and
    competes with the original if both classify alike); the description only when it is absent.
    """
    codes = set(_codes(meta, "ImageType"))
    found = sorted(codes & _DERIVED_CODES)
    if found:
        return f"derived series (ImageType {'/'.join(found)})"
    if not codes and re.search(r"\b(mpr|mip|minip|reformat\w*|sub|subtraction)\b", _text(meta)):
        return "derived series (reformat/projection/subtraction by description; no ImageType)"
    return None


def other_sequence_reason(meta: Mapping[str, Any]) -> str | None:
    """The kind of a series that msimaging does not use (DWI, SWI, PD...), from its description."""
    text = _text(meta)
    for kind, pattern in _OTHER_RE.items():
        if re.search(pattern, text):
            return kind
    return None


def contrast_from_description(meta: Mapping[str, Any]) -> tuple[str | None, str]:
    """T1w, T2w or FLAIR named by the description (FLAIR wins over T2: "T2 FLAIR"), else None."""
    text = _text(meta)
    found = []
    if _FLAIR_RE.search(text):
        found.append("FLAIR")
    elif _T2_RE.search(text):
        found.append("T2w")
    if _T1_RE.search(text):
        found.append("T1w")
    if len(found) == 1:
        return found[0], f"description names {found[0]}"
    if len(found) > 1:
        return None, f"description names {' and '.join(found)}"
    return None, "description names no contrast"


def contrast_agent_from_description(meta: Mapping[str, Any]) -> bool | None:
    """True when the description says post-contrast, False when it says pre/without, else None."""
    text = _text(meta)
    pre, post = bool(_PRE_RE.search(text)), bool(_POST_RE.search(text))
    if pre and not post:
        return False
    if post and not pre:
        return True
    return None


def contrast_agent_given(meta: Mapping[str, Any]) -> bool:
    """Whether ContrastBolusAgent (0018,0010) names an agent."""
    agent = str(meta.get("ContrastBolusAgent") or "").strip().lower()
    return agent not in ("", "none", "no", "n/a", "na", "0", "-", "nil", "keine", "ohne")


def contrast_from_parameters(meta: Mapping[str, Any]) -> tuple[str | None, str]:
    """Contrast from sequence parameters: ``(label, why)``.

    ``label`` is T1w, T2w or FLAIR, one of :data:`OTHER_CONTRASTS`, or None when the parameters
    are missing or fit nothing. Times in ms; the rules are field-strength independent:

    * inversion recovery (ScanningSequence IR or a TI): TI < 300 STIR; TI 300-1400 with TE <= 30
      T1w (MPRAGE, BRAVO, T1-FLAIR); TI >= 1400 with TE >= 60 FLAIR (2D and 3D);
    * echo-planar: EPI; gradient echo: TE <= 10 and TR <= 1000 T1w (SPGR, FLASH, TFE), TE > 10 T2*;
    * spin echo: TE >= 60 and TR >= 1500 T2w; TE <= 30 and TR <= 1000 T1w; TE <= 30 and TR >= 1500 PD.
    """
    tr = _number(meta.get("RepetitionTime"))
    te = _number(meta.get("EchoTime"))
    ti = _number(meta.get("InversionTime"))
    seq = set(_codes(meta, "ScanningSequence"))
    if "EP" in seq:
        return "EPI", "echo-planar acquisition (ScanningSequence EP)"
    if te is None:
        return None, "EchoTime missing"
    inversion = "IR" in seq or (ti is not None and ti > 0)
    if inversion:
        if ti is None:
            return None, "inversion recovery without InversionTime"
        desc = f"TI {ti:g} ms, TE {te:g} ms"
        if ti < 300:
            return "STIR", f"short-tau inversion recovery ({desc})"
        if ti <= 1400 and te <= 30:
            return "T1w", f"T1-weighted inversion recovery ({desc})"
        if ti >= 1400 and te >= 60:
            return "FLAIR", f"fluid-attenuated inversion recovery ({desc})"
        return None, f"inversion recovery with {desc} fits no known contrast"
    if tr is None:
        return None, "RepetitionTime missing"
    desc = f"TR {tr:g} ms, TE {te:g} ms"
    if "GR" in seq and "SE" not in seq:
        if te <= 10 and tr <= 1000:
            return "T1w", f"T1-weighted spoiled gradient echo ({desc})"
        if te > 10:
            return "T2star", f"T2*-weighted gradient echo ({desc})"
        return None, f"gradient echo with {desc} fits no known contrast"
    if te >= 60 and tr >= 1500:
        return "T2w", f"T2-weighted spin echo ({desc})"
    if te <= 30 and tr <= 1000:
        return "T1w", f"T1-weighted spin echo ({desc})"
    if te <= 30 and tr >= 1500:
        return "PD", f"proton-density weighted ({desc})"
    return None, f"{desc} fits no known contrast"


def classify_series(meta: Mapping[str, Any], series_map: SeriesMap | None = None) -> Decision:
    """Decide what one series is (see the module docstring); pure function of its metadata."""
    if series_map is not None:
        hit = series_map.lookup(meta)
        if hit is not None:
            choice, why = hit
            if choice == SKIP:
                return Decision(SKIPPED, None, why, from_map=True)
            return Decision(IMPORT, choice, why, from_map=True)
    modality = str(meta.get("Modality") or "MR").upper()
    if modality != "MR":
        return Decision(SKIPPED, None, f"modality {modality}, not MR")
    for check in (localiser_reason, derived_reason):
        reason = check(meta)
        if reason:
            return Decision(SKIPPED, None, reason)
    volumes = int(meta.get("NumberOfVolumes") or 1)
    if volumes > 1:
        return Decision(SKIPPED, None, f"{volumes} volumes at the same positions (4D or repeated series)")
    other = other_sequence_reason(meta)
    by_desc, desc_why = contrast_from_description(meta)
    by_par, par_why = contrast_from_parameters(meta)
    if other is not None:  # a named sequence msimaging does not use (DIR looks like FLAIR by TI/TE)
        return Decision(SKIPPED, None, f"{other} (description; parameters: {par_why})")
    if by_par in OTHER_CONTRASTS:
        if by_desc is not None:
            return Decision(AMBIGUOUS, by_desc, f"{desc_why} but parameters say {par_why}")
        return Decision(SKIPPED, None, f"{OTHER_CONTRASTS[by_par]}: {par_why}")
    if by_desc is not None and by_par is not None and by_desc != by_par:
        return Decision(AMBIGUOUS, by_desc, f"{desc_why} but parameters say {par_why}")
    contrast = by_desc or by_par
    if contrast is None:
        return Decision(SKIPPED, None, f"no contrast recognised ({desc_why}; {par_why})")
    why = f"{desc_why}, {par_why}" if by_desc and by_par else (
        f"{desc_why} (parameters: {par_why})" if by_desc else f"{par_why} ({desc_why})")
    if contrast == "T1w":
        agent, said = contrast_agent_given(meta), contrast_agent_from_description(meta)
        if agent and said is False:
            return Decision(AMBIGUOUS, "ceT1w", f"ContrastBolusAgent is set but the description says pre-contrast; {why}")
        if agent or said:
            source = "ContrastBolusAgent" if agent else "description"
            return Decision(IMPORT, "ceT1w", f"post-contrast ({source}); {why}")
    return Decision(IMPORT, contrast, why)


def resolve_visit(decisions: Sequence[Decision], numbers: Sequence[int | None]) -> list[Decision]:
    """Visit-level rule: one series per contrast.

    When several series import as one contrast, a series chosen by the series map wins and the
    others are skipped; otherwise all of them become ambiguous (reported, never guessed).
    """
    out = list(decisions)
    by_contrast: dict[str, list[int]] = {}
    for i, d in enumerate(decisions):
        if d.status == IMPORT and d.contrast is not None:
            by_contrast.setdefault(d.contrast, []).append(i)
    for contrast, idx in by_contrast.items():
        if len(idx) < 2:
            continue
        mapped = [i for i in idx if decisions[i].from_map]
        label = ", ".join(_series_label(numbers[i]) for i in idx)
        if len(mapped) == 1:
            for i in idx:
                if i != mapped[0]:
                    out[i] = Decision(SKIPPED, None, f"{_series_label(numbers[mapped[0]])} is mapped to {contrast}")
            continue
        for i in idx:
            out[i] = Decision(AMBIGUOUS, contrast, f"{label} all look like {contrast}; keep one with a series map")
    return out


def _series_label(number: int | None) -> str:
    return f"series {number}" if number is not None else "a series without SeriesNumber"


# --- geometry (pure) ---------------------------------------------------------------------------------


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal (LPS) of slices with ImageOrientationPatient ``iop`` (row then column cosines)."""
    v = np.asarray(iop, dtype=float)
    n = np.cross(v[:3], v[3:])
    return n / np.linalg.norm(n)


def stack_problem(positions: np.ndarray, iop: Sequence[float], tol_mm: float = SLICE_POSITION_TOL_MM) -> str | None:
    """Why slice positions (N, 3; LPS ImagePositionPatient, one per slice) do not make an evenly
    spaced stack along the slice normal (missing slices, gaps, shifts), or None."""
    pos = np.asarray(positions, dtype=float)
    if len(pos) < 2:
        return None
    normal = slice_normal(iop)
    depth = pos @ normal
    order = np.argsort(depth)
    pos, depth = pos[order], depth[order]
    inplane = pos - np.outer(depth - depth[0], normal) - pos[0]
    if np.abs(inplane).max() > tol_mm:
        return f"slices are shifted in-plane by up to {np.abs(inplane).max():.2f} mm"
    steps = np.diff(depth)
    if steps.min() < tol_mm:
        return "two slices share a position"
    if steps.max() - steps.min() > tol_mm:
        n_missing = int(round((depth[-1] - depth[0]) / steps.min())) + 1 - len(depth)
        return (f"slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm"
                + (f" ({n_missing} slice(s) missing?)" if n_missing > 0 else ""))
    return None


def stack_affine(positions: np.ndarray, iop: Sequence[float], pixel_spacing: Sequence[float]) -> np.ndarray:
    """RAS voxel-to-world affine of a stack of 2D DICOM slices.

    Voxel ``(i, j, k)`` is (column, row, slice), slices ordered along the normal
    ``row_cosines x column_cosines``; ``pixel_spacing`` is DICOM's (row spacing, column spacing).
    """
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    v = np.asarray(iop, dtype=float)
    row_cos, col_cos = v[:3], v[3:]
    normal = slice_normal(iop)
    pos = pos[np.argsort(pos @ normal)]
    if len(pos) > 1:
        step = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        step = normal
    lps = np.eye(4)
    lps[:3, 0] = row_cos * float(pixel_spacing[1])
    lps[:3, 1] = col_cos * float(pixel_spacing[0])
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return LPS_FLIP @ lps


def grid_corners(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """RAS positions (8, 3) of the centres of a grid's corner voxels, in a fixed order."""
    idx = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                    for k in (0, shape[2] - 1)])
    pts = idx @ np.asarray(affine, dtype=float).T
    return pts[np.lexsort(np.round(pts[:, :3], 2).T[::-1]), :3]


def same_grid_mm(affine_a: np.ndarray, shape_a: Sequence[int], affine_b: np.ndarray,
                 shape_b: Sequence[int]) -> float:
    """Largest distance (mm) between corresponding corner voxels of two grids that may order
    their axes differently (a flip or permutation of the voxel axes is not a difference);
    infinite when the shapes do not match up to that reordering."""
    if sorted(shape_a) != sorted(shape_b):
        return float("inf")
    a, b = grid_corners(affine_a, shape_a), grid_corners(affine_b, shape_b)
    # Match each corner of a to the nearest corner of b (corners are >= one voxel apart).
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return float(d.min(axis=1).max())


# --- sidecars and sessions (pure) ----------------------------------------------------------------------


def clean_sidecar(sidecar: Mapping[str, Any], contrast: str) -> dict[str, Any]:
    """The JSON sidecar msimaging writes: only :data:`SIDECAR_ALLOWED_KEYS`, plus
    ``ContrastBolusIngredient: GADOLINIUM`` (BIDS) for ``ceT1w`` (DICOM's free-text agent name is
    not copied)."""
    out = {k: v for k, v in sidecar.items() if k in SIDECAR_ALLOWED_KEYS}
    if contrast == "ceT1w":
        out["ContrastBolusIngredient"] = "GADOLINIUM"
    return out


def parse_dicom_datetime(date_text: Any, time_text: Any = None) -> datetime | None:
    """A datetime from DICOM DA (YYYYMMDD) and TM (HHMMSS.frac) or a DT value, else None."""
    d = str(date_text or "").strip()
    t = str(time_text or "").strip()
    if len(d) > 8 and not t:  # DT: YYYYMMDDHHMMSS.ffffff&ZZXX
        d, t = d[:8], re.split(r"[+\-&]", d[8:])[0]
    if not re.fullmatch(r"\d{8}", d):
        return None
    try:
        day = datetime.strptime(d, "%Y%m%d")
    except ValueError:
        return None
    digits = re.match(r"(\d{2})(\d{2})?(\d{2})?", t.replace(":", ""))
    if digits is None:
        return day
    h, m, s = (int(g) if g else 0 for g in digits.groups())
    if h > 23 or m > 59 or s > 59:
        return day
    return day.replace(hour=h, minute=m, second=s)


def format_acq_time(t: datetime) -> str:
    """ISO 8601 to the second (what BIDS sessions.tsv expects)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def shift_datetime(t: datetime, day0: date) -> datetime:
    """``t`` moved so that ``day0`` falls on :data:`SHIFTED_DAY0` (time of day kept)."""
    shifted = SHIFTED_DAY0 + timedelta(days=(t.date() - day0).days)
    return datetime.combine(shifted, t.time())


def is_shifted(text: str) -> bool:
    """Whether a sessions.tsv acq_time is a shifted date (year before 1900, BIDS)."""
    m = re.match(r"(\d{4})-", text.strip())
    return bool(m) and int(m.group(1)) < 1900


def update_sessions(rows: Sequence[Mapping[str, str]], session: str, acq_time: str) -> list[dict[str, str]]:
    """sessions.tsv rows with ``ses-<session>``'s acq_time set (added or replaced), other rows and
    columns unchanged, rows in natural session order."""
    out = [dict(r) for r in rows if r.get("session_id") != f"ses-{session}"]
    columns = list(rows[0].keys()) if rows else ["session_id", "acq_time"]
    new = {c: "n/a" for c in columns}
    new.update({"session_id": f"ses-{session}", "acq_time": acq_time})
    out.append(new)
    return sorted(out, key=lambda r: natural_key(r["session_id"]))


# --- reading DICOM (I/O) ------------------------------------------------------------------------------


@dataclass
class Series:
    """One DICOM series of the visit: its metadata (see module conventions) and its files."""

    uid: str
    meta: dict[str, Any]
    files: list[Path]
    positions: np.ndarray
    iop: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    shape: tuple[int, int, int] | None
    acquired: datetime | None
    problem: str | None = None
    decision: Decision | None = None

    @property
    def number(self) -> int | None:
        n = self.meta.get("SeriesNumber")
        return int(n) if n is not None else None

    @property
    def description(self) -> str:
        """Printable description for the console listing (never written to a file)."""
        text = str(self.meta.get("SeriesDescription") or self.meta.get("ProtocolName") or "")
        return "".join(c if c.isprintable() else "?" for c in text)[:48]


def _plain(value: Any) -> Any:
    """pydicom values as plain Python (MultiValue -> tuple, DS/IS -> float/int, PN -> str)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import DSfloat, IS, PersonName

    if isinstance(value, MultiValue | list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, DSfloat):
        return float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value


def read_headers(path: Path) -> dict[str, Any] | None:
    """The :data:`HEADER_KEYWORDS` of one file as plain values, or None when it is not DICOM
    image data (DICOMDIR, reports, other files)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    out = {}
    for kw in HEADER_KEYWORDS:
        try:
            value = ds.get(kw)
        except Exception:  # a malformed element: treat as absent
            value = None
        if value is not None and value != "":
            out[kw] = _plain(value)
    if "SeriesInstanceUID" not in out or "Rows" not in out:
        return None
    return out


def _series_from_files(uid: str, files: list[tuple[Path, dict[str, Any]]]) -> Series:
    files = sorted(files, key=lambda f: (int(f[1].get("InstanceNumber") or 0), str(f[0])))
    first = files[0][1]
    meta: dict[str, Any] = {k: first.get(k) for k in (
        "Modality", "SeriesNumber", "SeriesDescription", "ProtocolName", "SequenceName", "ScanningSequence",
        "SequenceVariant", "ScanOptions", "MRAcquisitionType", "ImageType", "RepetitionTime", "InversionTime",
        "FlipAngle", "ContrastBolusAgent", "SOPClassUID") if first.get(k) is not None}
    echo_times = sorted({float(h["EchoTime"]) for _, h in files if _number(h.get("EchoTime")) is not None})
    if echo_times:
        meta["EchoTime"] = echo_times[-1]  # the longest echo: the T2 echo of a PD/T2 pair
        meta["EchoTimes"] = tuple(echo_times)
    agents = [h.get("ContrastBolusAgent") for _, h in files if h.get("ContrastBolusAgent")]
    if agents:
        meta["ContrastBolusAgent"] = agents[0]
    # Geometry: slices of the longest echo.
    chosen = [(p, h) for p, h in files if not echo_times or _number(h.get("EchoTime")) in (None, echo_times[-1])]
    iops = {tuple(np.round(np.asarray(h["ImageOrientationPatient"], float), 4))
            for _, h in chosen if "ImageOrientationPatient" in h}
    problem = None
    iop = pixel_spacing = shape = None
    positions = np.zeros((0, 3))
    frames = int(first.get("NumberOfFrames") or 1)
    if frames > 1:
        meta["NumberOfSlices"] = frames
        meta["NumberOfVolumes"] = 1
        meta["EnhancedMultiFrame"] = True
    elif len(iops) > 1:
        meta["NumberOfSlices"] = len({tuple(h.get("ImagePositionPatient", ())) for _, h in chosen})
        meta["NumberOfVolumes"] = 1
        meta["MixedOrientations"] = True
        problem = "slices with different orientations"
    elif iops:
        iop = tuple(float(v) for v in chosen[0][1]["ImageOrientationPatient"])
        pos_all = np.array([np.asarray(h.get("ImagePositionPatient", (np.nan,) * 3), float) for _, h in chosen])
        if not np.all(np.isfinite(pos_all)):
            problem = "ImagePositionPatient missing on some slices"
            meta["NumberOfSlices"] = len(chosen)
        else:
            # Slices at the same position (to 1 um) are repeats: 4D, averages or duplicates.
            _, first_of, counts = np.unique(np.round(pos_all, 3), axis=0, return_index=True, return_counts=True)
            positions = pos_all[np.sort(first_of)]
            meta["NumberOfSlices"] = len(positions)
            meta["NumberOfVolumes"] = int(counts.max())
            if counts.min() != counts.max():
                problem = "some slice positions occur more often than others (incomplete repeated series)"
            else:
                problem = stack_problem(positions, iop)
            ps = chosen[0][1].get("PixelSpacing")
            if ps is not None:
                pixel_spacing = (float(ps[0]), float(ps[1]))
            shape = (int(first["Columns"]), int(first["Rows"]), len(positions))
    else:
        problem = "no ImageOrientationPatient"
        meta["NumberOfSlices"] = len(files)
    acquired = None
    for dkey, tkey in (("AcquisitionDateTime", None), ("AcquisitionDate", "AcquisitionTime"),
                       ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
        times = [parse_dicom_datetime(h.get(dkey), h.get(tkey) if tkey else None) for _, h in files]
        times = [t for t in times if t is not None]
        if times:
            acquired = min(times)
            break
    return Series(uid=uid, meta=meta, files=[p for p, _ in files], positions=positions, iop=iop,
                  pixel_spacing=pixel_spacing, shape=shape, acquired=acquired, problem=problem)


def scan_dicom_dir(dicom_dir: Path) -> tuple[list[Series], list[str]]:
    """Every DICOM series under ``dicom_dir`` (ordered by SeriesNumber) and any visit-level problems
    (several patients, several days). Patient identifiers are compared, never reported."""
    headers: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    patients: set[tuple[str, str]] = set()
    n_files = 0
    for path in sorted(p for p in Path(dicom_dir).rglob("*") if p.is_file() and not p.name.startswith(".")):
        n_files += 1
        h = read_headers(path)
        if h is None:
            continue
        patients.add((str(h.get("PatientID", "")), str(h.get("PatientName", ""))))
        headers.setdefault(str(h["SeriesInstanceUID"]), []).append((path, h))
    problems: list[str] = []
    if not headers:
        problems.append(f"{dicom_dir}: no DICOM images found among {n_files} file(s)")
        return [], problems
    if len(patients) > 1:
        problems.append(f"{dicom_dir}: the images belong to {len(patients)} different patients "
                        "(PatientID/PatientName differ); import one patient's visit at a time")
    series = [_series_from_files(uid, files) for uid, files in headers.items()]
    series.sort(key=lambda s: (s.number if s.number is not None else 10**9, s.uid))
    return series, problems


def classify_visit(series: Sequence[Series], series_map: SeriesMap | None = None) -> list[Decision]:
    """Decisions for a visit's series (:func:`classify_series` then :func:`resolve_visit`), with
    geometry problems of the chosen series turned into ``invalid``."""
    decisions = [classify_series(s.meta, series_map) for s in series]
    decisions = resolve_visit(decisions, [s.number for s in series])
    out = []
    for s, d in zip(series, decisions):
        if d.status == IMPORT and s.meta.get("EnhancedMultiFrame"):
            d = Decision(INVALID, d.contrast, "enhanced multi-frame DICOM is not supported yet; "
                                              "export the series as classic single-frame images")
        elif d.status == IMPORT and s.problem:
            d = Decision(INVALID, d.contrast, f"{s.problem}; re-send the complete series from PACS "
                                              "or skip it with a series map")
        out.append(d)
    return out


# --- conversion (I/O) ------------------------------------------------------------------------------------


def dcm2niix_executable() -> str:
    """Path of the dcm2niix binary shipped by the PyPI package ``dcm2niix`` (else one on PATH)."""
    try:
        import dcm2niix  # type: ignore[import-untyped]

        if Path(dcm2niix.bin).is_file():
            return str(dcm2niix.bin)
    except ImportError:
        pass
    found = shutil.which("dcm2niix")
    if found is None:
        raise DicomImportError(["dcm2niix not found: install msimaging's dependencies (pip install -e .) "
                            "or put dcm2niix on PATH"])
    return found


def dcm2niix_version(executable: str | None = None) -> str:
    exe = executable or dcm2niix_executable()
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"v\d+\.\d+\.\d+\S*", proc.stdout + proc.stderr)
    return m.group(0) if m else "unknown"


@dataclass
class Converted:
    data: np.ndarray
    affine: np.ndarray
    sidecar: dict[str, Any]


def convert_series(series: Series, workdir: Path, executable: str | None = None) -> Converted:
    """Convert one series with dcm2niix (anonymised BIDS sidecar) in ``workdir``; check its
    geometry against the DICOM headers; return data, RAS affine and the raw sidecar.

    For a multi-echo series the longest echo is returned.
    """
    import nibabel as nib

    exe = executable or dcm2niix_executable()
    src, dst = workdir / "dicom", workdir / "nifti"
    src.mkdir(parents=True)
    dst.mkdir(parents=True)
    for i, path in enumerate(series.files):
        (src / f"{i:06d}.dcm").symlink_to(Path(path).resolve())
    cmd = [exe, "-b", "y", "-ba", "y", "-z", "n", "-f", "series", "-o", str(dst), "-i", "n", "-m", "2",
           "-l", "o", "-x", "n", "-p", "y", "-w", "1", "-v", "0", "-d", "0", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    niftis = sorted(dst.glob("*.nii"))
    where = _series_label(series.number)
    if proc.returncode != 0 or not niftis:
        tail = "; ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise DicomImportError([f"{where}: dcm2niix failed (exit {proc.returncode}): {tail}"])
    candidates = []
    for nii in niftis:
        side_path = nii.with_suffix(".json")
        sidecar = json.loads(side_path.read_text(encoding="utf-8")) if side_path.is_file() else {}
        candidates.append((float(sidecar.get("EchoTime") or 0.0), nii, sidecar))
    candidates.sort(key=lambda c: c[0])
    echo_times = series.meta.get("EchoTimes") or ()
    if len(candidates) > 1 and len(candidates) != len(echo_times):
        raise DicomImportError([f"{where}: dcm2niix wrote {len(candidates)} images for one series "
                            "(mixed acquisitions?); split the series or skip it with a series map"])
    _, nii, sidecar = candidates[-1]
    img = nib.load(str(nii))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DicomImportError([f"{where}: dcm2niix wrote a {data.ndim}D image {data.shape}; a 3D volume is needed"])
    from msimaging.io import image_affine

    affine = image_affine(img)
    if series.shape is not None and series.iop is not None and series.pixel_spacing is not None:
        expected = stack_affine(series.positions, series.iop, series.pixel_spacing)
        err = same_grid_mm(affine, data.shape, expected, series.shape)
        if err > GEOMETRY_TOL_MM:
            raise DicomImportError([f"{where}: dcm2niix's geometry differs from the DICOM headers by {err:.3g} mm; "
                                "not imported"])
    if not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32)
    return Converted(data=np.asarray(data), affine=affine, sidecar=sidecar)


# --- the import (I/O) --------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did (or would do): series with their decisions, files written, problems."""

    subject: str
    session: str
    series: list[Series]
    written: dict[str, Path] = field(default_factory=dict)
    acq_time: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> list[Series]:
        return [s for s in self.series if s.decision is not None and s.decision.status in BLOCKING]


def load_series_map(path: Path) -> SeriesMap:
    """Read a series map from a YAML or JSON file (see :func:`parse_series_map`)."""
    import yaml

    try:
        obj = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DicomImportError([f"--series-map {path}: file not found"]) from exc
    except yaml.YAMLError as exc:
        raise DicomImportError([f"--series-map {path}: not valid YAML/JSON ({exc})"]) from exc
    return parse_series_map(obj, source=f"--series-map {path}")


def _label(value: str, prefix: str, what: str) -> str:
    label = value.removeprefix(prefix)
    if not SAFE_LABEL_RE.match(label):
        raise DicomImportError([f"--{what} {value!r}: a BIDS label has letters and digits only (e.g. p01, M06)"])
    return label


def _read_date_key(path: Path) -> dict[str, date]:
    from msimaging import io

    if not path.is_file():
        return {}
    out = {}
    for row in io.read_table(path):
        try:
            out[row["participant_id"].removeprefix("sub-")] = date.fromisoformat(row["day0"])
        except (KeyError, ValueError) as exc:
            raise DicomImportError([f"--date-key {path}: unreadable row {row} ({exc})"]) from exc
    return out


def _session_time(bids_dir: Path, subject: str, session: str, acquired: datetime,
                  keep_dates: bool, date_key: Path | None) -> tuple[str, list[dict[str, str]], dict[str, date] | None]:
    """The acq_time text for sessions.tsv, the updated rows, and the updated date key (or None)."""
    from msimaging import io

    tsv = bids_dir / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    rows = io.read_table(tsv) if tsv.is_file() else []
    others = [r for r in rows if r.get("session_id") != f"ses-{session}" and
              (r.get("acq_time") or "n/a").strip().lower() not in ("", "n/a")]
    shifted_rows = [r for r in others if is_shifted(r["acq_time"])]
    key = None
    if keep_dates:
        if shifted_rows:
            raise DicomImportError([f"{tsv}: sub-{subject}'s other sessions have shifted dates; import this visit "
                                "with --no-dates and the same --date-key"])
        text = format_acq_time(acquired)
    else:
        if date_key is None:
            raise DicomImportError(["--no-dates needs --date-key FILE: a file kept outside the BIDS dataset "
                                "that holds each subject's real day 0, so later visits get the right offsets"])
        if len(others) > len(shifted_rows):
            raise DicomImportError([f"{tsv}: sub-{subject}'s other sessions have real dates; import without --no-dates "
                                "or re-import them all with --no-dates"])
        key = _read_date_key(date_key)
        if subject not in key:
            if shifted_rows:
                raise DicomImportError([f"--date-key {date_key}: no day 0 for sub-{subject}, whose other sessions "
                                    "already have shifted dates; use the date key they were imported with"])
            key[subject] = acquired.date()
        text = format_acq_time(shift_datetime(acquired, key[subject]))
    return text, update_sessions(rows, session, text), key


def _check_key_outside(date_key: Path, bids_dir: Path) -> None:
    key, root = date_key.resolve(), bids_dir.resolve()
    if key == root or root in key.parents:
        raise DicomImportError([f"--date-key {date_key}: must be kept outside the BIDS dataset {bids_dir} "
                            "(it holds real dates)"])


def _write_dataset_files(bids_dir: Path, subject: str, versions: Mapping[str, str]) -> None:
    from msimaging import __version__, io

    desc = bids_dir / "dataset_description.json"
    if not desc.is_file():
        io.write_json(desc, {
            "Name": "msimaging DICOM import", "BIDSVersion": "1.9.0", "DatasetType": "raw",
            "GeneratedBy": [{"Name": "msimaging import-dicom", "Version": __version__},
                            {"Name": "dcm2niix", "Version": versions.get("dcm2niix", "unknown")}],
        })
    participants = bids_dir / "participants.tsv"
    rows = io.read_table(participants) if participants.is_file() else []
    if not any(r.get("participant_id") == f"sub-{subject}" for r in rows):
        columns = list(rows[0].keys()) if rows else ["participant_id"]
        rows.append({c: ("n/a" if c != "participant_id" else f"sub-{subject}") for c in columns})
        rows.sort(key=lambda r: natural_key(r["participant_id"]))
        io.write_table(participants, columns, rows)


def run_import(dicom_dir: str | os.PathLike[str], bids_dir: str | os.PathLike[str], subject: str, session: str,
               series_map: SeriesMap | None = None, keep_dates: bool = True,
               date_key: str | os.PathLike[str] | None = None, overwrite: bool = False,
               dry_run: bool = False) -> ImportResult:
    """Import one visit: DICOM_DIR -> ``BIDS_DIR/sub-S/ses-V/anat`` (+ sessions.tsv).

    Nothing is written when any series is ambiguous or invalid, when the visit has no usable
    series, or when the session already exists and ``overwrite`` is False; ``result.problems``
    then says why (one line each) and the caller exits 2.
    """
    from msimaging import io

    dicom_dir, bids_dir = Path(dicom_dir), Path(bids_dir)
    sub, ses = _label(subject, "sub-", "subject"), _label(session, "ses-", "session")
    key_path = Path(date_key) if date_key is not None else None
    if key_path is not None:
        _check_key_outside(key_path, bids_dir)
    if not dicom_dir.is_dir():
        raise DicomImportError([f"{dicom_dir}: DICOM directory not found"])
    series, problems = scan_dicom_dir(dicom_dir)
    result = ImportResult(subject=sub, session=ses, series=series, problems=list(problems))
    for s, d in zip(series, classify_visit(series, series_map)):
        s.decision = d
    chosen = [s for s in series if s.decision is not None and s.decision.status == IMPORT]
    for s in result.blocked:
        assert s.decision is not None
        result.problems.append(f"{_series_label(s.number)} ({s.description!r}): {s.decision.status}: "
                               f"{s.decision.reason}")
    if result.blocked:
        result.problems.append("nothing was imported; add the series to a --series-map file "
                               "(by_number: {N: FLAIR|T2w|T1w|ceT1w|skip}) and run again")
    if not chosen and not result.blocked:
        result.problems.append(f"{dicom_dir}: no T1w, ce-gadolinium T1w, T2w or FLAIR series found")
    days = {s.acquired.date() for s in chosen if s.acquired is not None}
    if len(days) > 1:
        result.problems.append(f"{dicom_dir}: the chosen series were acquired on {len(days)} different days; "
                               "import one visit at a time")
    if chosen and not any(s.decision.contrast in ("FLAIR", "T2w") for s in chosen if s.decision):
        result.warnings.append(f"sub-{sub} ses-{ses}: neither FLAIR nor T2w found; lesion endpoints need one")
    anat = bids_dir / f"sub-{sub}" / f"ses-{ses}" / "anat"
    existing = sorted(anat.glob(f"sub-{sub}_ses-{ses}_*")) if anat.is_dir() else []
    if existing and not overwrite:
        result.problems.append(f"{anat}: sub-{sub} ses-{ses} already has {len(existing)} file(s); "
                               "use --overwrite to replace them")
    times = [s.acquired for s in chosen if s.acquired is not None]
    if result.problems or dry_run:
        return result
    if times:
        acq_text, session_rows, key = _session_time(bids_dir, sub, ses, min(times), keep_dates, key_path)
    else:
        acq_text, session_rows, key = "n/a", None, None
        result.warnings.append(f"sub-{sub} ses-{ses}: no acquisition date in the DICOM headers; "
                               "acq_time is n/a (sessions are then ordered by label)")
    exe = dcm2niix_executable()
    converted: dict[str, Converted] = {}
    with tempfile.TemporaryDirectory(prefix="msimaging-dicom-") as tmp:
        for i, s in enumerate(chosen):
            assert s.decision is not None and s.decision.contrast is not None
            converted[s.decision.contrast] = convert_series(s, Path(tmp) / f"s{i:03d}", exe)
    for contrast, conv in converted.items():
        nii = bids_dir / contrast_name(sub, ses, contrast)
        io.write_image(nii, conv.data, conv.affine, dtype=conv.data.dtype)
        io.write_json(nii.with_name(nii.name.replace(".nii.gz", ".json")), clean_sidecar(conv.sidecar, contrast))
        result.written[contrast] = nii
    keep = {p for nii in result.written.values() for p in (nii, nii.with_name(nii.name.replace(".nii.gz", ".json")))}
    for old in existing:
        if old not in keep:
            old.unlink()
    if session_rows is not None:
        tsv = bids_dir / f"sub-{sub}" / f"sub-{sub}_sessions.tsv"
        io.write_table(tsv, list(session_rows[0].keys()), session_rows)
    if key is not None and key_path is not None:
        io.write_table(key_path, ["participant_id", "day0"],
                       [{"participant_id": f"sub-{k}", "day0": v.isoformat()} for k, v in
                        sorted(key.items(), key=lambda kv: natural_key(kv[0]))])
    result.acq_time = acq_text
    _write_dataset_files(bids_dir, sub, {"dcm2niix": dcm2niix_version(exe)})
    log.info("sub-%s ses-%s: imported %s", sub, ses, ", ".join(sorted(result.written)))
    return result


def format_listing(result: ImportResult) -> str:
    """The console table of a visit's series and what happens to each (descriptions are shown
    here so staff can write a series map; they are never written to a file)."""
    lines = [f"{'series':>6}  {'description':<48}  {'decision':<9}  {'contrast':<8}  reason"]
    for s in result.series:
        d = s.decision or Decision(SKIPPED, None, "")
        lines.append(f"{s.number if s.number is not None else '-':>6}  {s.description:<48}  {d.status:<9}  "
                     f"{d.contrast or '-':<8}  {d.reason}")
    return "\n".join(lines)


__all__ = [
    "IMPORT_CONTRASTS", "SIDECAR_ALLOWED_KEYS", "SHIFTED_DAY0", "Decision", "SeriesMap", "Series", "ImportResult",
    "DicomImportError", "parse_series_map", "load_series_map", "classify_series", "resolve_visit",
    "contrast_from_parameters", "contrast_from_description", "localiser_reason", "derived_reason",
    "contrast_agent_given", "stack_affine", "stack_problem", "same_grid_mm", "clean_sidecar",
    "parse_dicom_datetime", "shift_datetime", "update_sessions", "scan_dicom_dir", "classify_visit",
    "convert_series", "run_import", "format_listing", "dcm2niix_executable",
]


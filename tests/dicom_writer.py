"""Synthetic DICOM series for tests: one classic MR Image Storage file per slice, written with
pydicom from an (x, y, z) volume and its RAS affine, with planted identifying tags.

Geometry: voxel (i, j, k) = (column, row, slice); ImageOrientationPatient holds the LPS directions
of i (row cosines) and j (column cosines); ImagePositionPatient of slice k is the LPS position of
voxel (0, 0, k); PixelSpacing is (row spacing = j step, column spacing = i step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Identifying values planted in every file; none may appear anywhere in the BIDS output.
PLANTED = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN8675309",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "PatientAge": "053Y",
    "PatientWeight": "61.5",
    "PatientAddress": "42 Wallaby Way Sydney",
    "OtherPatientIDs": "ALTID4242",
    "InstitutionName": "ACME Hospital",
    "InstitutionAddress": "1 Main Street Springfield",
    "InstitutionalDepartmentName": "ACME Neuroradiology",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "QUINN^MICHAELA",
    "OperatorsName": "OPERATOR^OLGA",
    "StationName": "ACMEMR01",
    "DeviceSerialNumber": "SN31337",
    "AccessionNumber": "ACC991122",
    "StudyID": "STUDY5566",
    "StudyDescription": "BRAIN MS FOLLOWUP DOE",
    "ImageComments": "Patient Jane Doe claustrophobic",
    "RequestingPhysician": "WATSON^JOHN",
}
#: Strings that must never appear in any output file (bytes, gzip-decompressed NIfTI included):
#: the planted values and pieces of them that a converter may truncate or reformat. At least 7
#: characters, so that they cannot turn up by chance in base64 figures of the QC page.
PLANTED_STRINGS = ("DOE^JANE", "Jane Doe", "MRN8675309", "19700101", "Wallaby", "ALTID4242", "ACME Hospital",
                   "ACME Neuroradiology", "ACMEMR01", "Main Street", "HOUSE^GREGORY", "QUINN^MICHAELA",
                   "OPERATOR^OLGA", "SN31337", "ACC991122", "STUDY5566", "FOLLOWUP DOE", "claustrophobic",
                   "WATSON^JOHN")


def find_planted(content: bytes, extra: tuple[str, ...] = ()) -> list[str]:
    """The planted strings (and ``extra``) found in ``content``: exact case, and also in any case
    for those with a space or '^' (characters base64 never produces)."""
    low = content.lower()
    found = []
    for s in (*PLANTED_STRINGS, *extra):
        if s.encode() in content or ((" " in s or "^" in s) and s.lower().encode() in low):
            found.append(s)
    return found


@dataclass
class SeriesSpec:
    """What a series is: description and the parameters a scanner writes (times in ms)."""

    number: int
    description: str
    tr: float | None
    te: float | None
    ti: float | None = None
    flip: float = 90.0
    scanning_sequence: str = "SE"
    sequence_variant: str = "SK\\SP"
    acquisition_type: str = "2D"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
    contrast_agent: str | None = None
    sequence_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _ds(value: float) -> str:
    """A DS string of at most 16 characters with as many decimals as fit."""
    for decimals in (10, 8, 6, 5, 4, 3):
        text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
        if text in ("-0", ""):
            text = "0"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def write_series(out_dir: Path, data: np.ndarray, affine: np.ndarray, spec: SeriesSpec, *,
                 study_uid: str, acquired: datetime, patient: dict[str, str] | None = None,
                 frame_of_reference_uid: str | None = None, series_uid: str | None = None,
                 echo_number: int = 1) -> list[Path]:
    """Write ``data`` (x, y, z; uint16) on ``affine`` (RAS) as one DICOM file per slice.

    Calling it again with the same ``series_uid`` and another ``echo_number`` (and TE) adds an
    echo to the series (a PD/T2 dual-echo acquisition)."""
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError("a 3D volume is needed")
    arr = np.clip(np.rint(arr), 0, 65535).astype(np.uint16)
    lps = LPS @ np.asarray(affine, dtype=float)
    zooms = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / zooms[0], lps[:3, 1] / zooms[1]
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    tags = dict(PLANTED)
    tags.update(patient or {})
    paths = []
    for k in range(arr.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"IM{spec.number:03d}_{echo_number}_{k + 1:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "Prisma"
        ds.MagneticFieldStrength = "3"
        ds.ImagingFrequency = "123.25"
        ds.SoftwareVersions = "syngo MR XA30"
        for key, value in tags.items():
            setattr(ds, key, value)
        day, tod = acquired.strftime("%Y%m%d"), acquired.strftime("%H%M%S.000000")
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = tod
        ds.SeriesNumber = spec.number
        ds.InstanceNumber = (echo_number - 1) * arr.shape[2] + k + 1
        ds.AcquisitionNumber = 1
        ds.SeriesDescription = spec.description
        ds.ProtocolName = spec.description
        ds.ImageType = list(spec.image_type)
        ds.ScanningSequence = spec.scanning_sequence.split("\\")
        ds.SequenceVariant = spec.sequence_variant.split("\\")
        ds.ScanOptions = ""
        ds.MRAcquisitionType = spec.acquisition_type
        ds.SequenceName = spec.sequence_name or ("*tfl3d1" if spec.acquisition_type == "3D" else "*tse2d1")
        if spec.tr is not None:
            ds.RepetitionTime = _ds(spec.tr)
        if spec.te is not None:
            ds.EchoTime = _ds(spec.te)
        if spec.ti is not None:
            ds.InversionTime = _ds(spec.ti)
        ds.FlipAngle = _ds(spec.flip)
        ds.EchoNumbers = echo_number
        ds.EchoTrainLength = 1
        ds.PixelBandwidth = "200"
        if spec.contrast_agent is not None:
            ds.ContrastBolusAgent = spec.contrast_agent
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "BRAIN"
        ds.SliceThickness = _ds(zooms[2])
        ds.SpacingBetweenSlices = _ds(zooms[2])
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.SliceLocation = _ds(float((lps[:3, 3] + k * lps[:3, 2]) @ np.cross(row_cos, col_cos)))
        ds.PixelSpacing = [_ds(zooms[1]), _ds(zooms[0])]
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(arr[:, :, k].T).tobytes()
        for key, value in spec.extra.items():
            setattr(ds, key, value)
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def write_localiser(out_dir: Path, number: int, *, study_uid: str, acquired: datetime, size: int = 32,
                    fov_mm: float = 240.0) -> list[Path]:
    """A 3-plane localiser (one sagittal, coronal and axial slice in one series)."""
    rng = np.random.default_rng(number)
    paths = []
    step = fov_mm / size
    half = fov_mm / 2
    planes = {
        "sag": (np.array([0, 1, 0]), np.array([0, 0, -1]), np.array([0, -half, half])),
        "cor": (np.array([1, 0, 0]), np.array([0, 0, -1]), np.array([-half, 0, half])),
        "tra": (np.array([1, 0, 0]), np.array([0, 1, 0]), np.array([-half, -half, 0])),
    }
    series_uid = generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, (name, (row, col, pos)) in enumerate(planes.items()):
        # One slice per plane: reuse write_series' tag set on a 1-slice volume, then fix geometry.
        affine_lps = np.eye(4)
        affine_lps[:3, 0], affine_lps[:3, 1] = row * step, col * step
        affine_lps[:3, 2] = np.cross(row, col) * 5.0
        affine_lps[:3, 3] = pos
        vol = rng.integers(0, 800, (size, size, 1)).astype(np.uint16)
        spec = SeriesSpec(number=number, description="AAHead_Scout_64ch-head-coil", tr=8.6, te=4.0, flip=20,
                          scanning_sequence="GR", sequence_variant="SP\\OSP",
                          image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"))
        p = write_series(out_dir / f"loc_{name}", vol, LPS @ affine_lps, spec, study_uid=study_uid, acquired=acquired)
        ds = pydicom.dcmread(str(p[0]))
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        ds.save_as(str(p[0]))
        paths += p
    return paths


#: The visit protocol written by :func:`write_visit`: contrast -> series (a Siemens-like 3T MS
#: protocol). ce-T1w has the same description as T1w: only ContrastBolusAgent tells them apart.
VISIT_PROTOCOL = {
    "T2w": SeriesSpec(3, "t2_tse_tra_p2", tr=6000, te=100, flip=150, scanning_sequence="SE"),
    "FLAIR": SeriesSpec(4, "t2_tirm_tra_dark-fluid", tr=9000, te=81, ti=2500, flip=150, scanning_sequence="SE\\IR"),
    "T1w": SeriesSpec(5, "t1_mprage_sag_p2_iso", tr=2300, te=2.98, ti=900, flip=9, scanning_sequence="GR\\IR",
                      sequence_variant="SK\\SP\\MP", acquisition_type="3D"),
    "ceT1w": SeriesSpec(9, "t1_mprage_sag_p2_iso", tr=2300, te=2.98, ti=900, flip=9, scanning_sequence="GR\\IR",
                        sequence_variant="SK\\SP\\MP", acquisition_type="3D", contrast_agent="Gadovist 7.5 ml"),
}


def write_visit(out_dir: Path, volumes: dict[str, tuple[np.ndarray, np.ndarray]], acquired: datetime,
                extras: bool = True) -> dict[str, int]:
    """Write a visit: one series per contrast in ``volumes`` ({contrast: (data, RAS affine)}) with
    :data:`VISIT_PROTOCOL`, plus (``extras``) a 3-plane localiser (series 1), a DWI (series 6) and
    an MPR reformat of the T1w (series 10, DERIVED). Returns {contrast: series number}."""
    from datetime import timedelta

    study_uid = generate_uid()
    numbers = {}
    if extras:
        write_localiser(out_dir / "s001", 1, study_uid=study_uid, acquired=acquired)
    for minutes, (contrast, (data, affine)) in enumerate(volumes.items(), start=1):
        spec = VISIT_PROTOCOL[contrast]
        write_series(out_dir / f"s{spec.number:03d}", data, affine, spec, study_uid=study_uid,
                     acquired=acquired + timedelta(minutes=4 * minutes))
        numbers[contrast] = spec.number
    if extras:
        data, affine = next(iter(volumes.values()))
        small = data[::2, ::2, ::2]
        aff = affine.copy()
        aff[:3, :3] = affine[:3, :3] * 2
        write_series(out_dir / "s006", small, aff, SeriesSpec(6, "ep2d_diff_tra_b1000", tr=5400, te=80,
                                                             scanning_sequence="SE\\EP"),
                     study_uid=study_uid, acquired=acquired + timedelta(minutes=30))
        if "T1w" in volumes:
            t1, t1_aff = volumes["T1w"]
            mpr = np.transpose(t1, (0, 2, 1))
            mpr_aff = t1_aff[:, [0, 2, 1, 3]]
            write_series(out_dir / "s010", mpr, mpr_aff,
                         SeriesSpec(10, "t1_mprage_sag_p2_iso_MPR_tra", tr=2300, te=2.98, ti=900,
                                    scanning_sequence="GR\\IR", acquisition_type="3D",
                                    image_type=("DERIVED", "SECONDARY", "MPR")),
                         study_uid=study_uid, acquired=acquired + timedelta(minutes=40))
    return numbers

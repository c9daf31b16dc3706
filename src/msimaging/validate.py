"""Input validation: every problem named with its file and what to do, never a traceback.

``msimaging validate BIDS_DIR`` runs :func:`validate_study`; every run starts with the
``validate_inputs`` rule, which runs :func:`run_subject` for one subject and fails that subject
(only) when it has errors.

Each problem is one line ``<file relative to the BIDS directory>: <what is wrong>; <what to do>``.
Errors stop the subject; warnings are reported and processing goes on. An image is checked in
three stages, each only when the previous one passed, so a corrupt file gives one clear line:

1. the raw header bytes (before nibabel silently "fixes" them): NIfTI magic and header size,
   dimensions (a 3D volume, plausible sizes), data type (real numbers), voxel sizes in ``pixdim``
   (positive, finite, plausible), ``vox_offset``, qform/sform codes, the qform quaternion,
   ``scl_slope``, and the size of the whole (decompressed) stream, read to its end so that a gzip
   file missing its last bytes is reported as truncated;
2. the geometry nibabel derives: the voxel-to-world affine (singular, sheared, absurd voxel
   sizes, NaN), qform/sform disagreement, field of view that cannot contain a brain;
3. the voxel data: readable to the end (truncated files), finite (NaN/Inf), not constant.

Per session, contrasts whose fields of view do not overlap in space are reported (a header
that places one series somewhere else; registration can often recover, so it is a warning).
Thresholds are config keys (``validation.*``, :class:`InputRules`).
"""

from __future__ import annotations

import gzip
import logging
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msimaging.bids import Session, Study, Subject, discover, display_path, one_line
from msimaging.geometry import Grid, affine_problems, voxel_sizes, world_to_voxel, voxel_to_world

log = logging.getLogger(__name__)

#: Largest plausible matrix size along one axis and in total (a corrupt dim[] would ask for terabytes).
MAX_DIM = 4096
MAX_VOXELS = 1 << 30


@dataclass(frozen=True)
class InputRules:
    """What validation accepts (config ``validation.*``; defaults are config/config.yaml's)."""

    #: Largest distance (mm) between the qform and sform positions of any corner voxel.
    qform_sform_tolerance_mm: float = 1.0
    #: A brain needs this field of view (mm) along two axes (a thick slab may be thinner along the
    #: third) and ``min_fov_max_mm`` along one.
    min_fov_mm: float = 80.0
    min_fov_max_mm: float = 100.0
    #: Voxel edges (mm) outside this range are not brain MRI (a header in metres, a corrupt pixdim).
    min_voxel_mm: float = 0.1
    max_voxel_mm: float = 20.0
    #: Below this fraction of one contrast's field of view inside another's, a session's headers disagree.
    min_overlap_fraction: float = 0.5

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "InputRules":
        known = {f: v for f, v in (cfg.get("validation") or {}).items() if f in cls.__dataclass_fields__}
        return cls(**{k: float(v) for k, v in known.items()})


DEFAULT_RULES = InputRules()
#: NIfTI data types msimaging reads (real-valued numbers); complex and RGB are refused.
REAL_DTYPES = {2: "uint8", 4: "int16", 8: "int32", 16: "float32", 64: "float64", 256: "int8", 512: "uint16",
               768: "uint32", 1024: "int64", 1280: "uint64"}
NIFTI_CODES = range(0, 6)

_REEXPORT = "re-export the series from the scanner or DICOM"
_FIX_HEADER = "fix the header (qform/sform/pixdim) or re-export the series"


class ValidationError(ValueError):
    """Inputs that cannot be processed; ``problems`` holds one readable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class FileReport:
    """What :func:`check_image` found in one image; ``grid`` is set when the geometry is usable."""

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    grid: Grid | None = field(default=None, repr=False)

    def error(self, what: str, fix: str) -> None:
        self.errors.append(one_line(f"{self.path}: {what}; {fix}"))

    def warn(self, what: str, fix: str) -> None:
        self.warnings.append(one_line(f"{self.path}: {what}; {fix}"))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "errors": self.errors, "warnings": self.warnings, "info": self.info}


# --- stage 1: the raw header -------------------------------------------------------------------------


def _open(path: Path) -> Any:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_raw_header(path: Path) -> tuple[Any, bool]:
    """The NIfTI-1/2 header exactly as stored (no fixes) and whether the file is gzip-compressed.

    Raises ``ValueError`` with a readable reason when the bytes are not a NIfTI header.
    """
    import nibabel as nib

    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    if path.stat().st_size == 0:
        raise ValueError("the file is empty")
    if path.name.endswith(".gz") and not compressed:
        raise ValueError("the file is named .nii.gz but is not gzip-compressed")
    try:
        with _open(path) as fh:
            block = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"the compressed stream is corrupt ({exc.__class__.__name__}: {exc})") from exc
    if len(block) < 348:
        raise ValueError(f"the file holds {len(block)} bytes, less than a NIfTI header (348)")
    for order in ("<", ">"):
        size = int(np.frombuffer(block[:4], dtype=f"{order}i4")[0])
        if size == 348 and block[344:347] in (b"n+1", b"ni1"):
            return nib.Nifti1Header(block[:348], endianness=order, check=False), compressed
        if size == 540 and len(block) >= 540 and block[4:7] in (b"n+2", b"ni2"):
            return nib.Nifti2Header(block[:540], endianness=order, check=False), compressed
    raise ValueError("the header is not NIfTI (wrong header size or magic string)")


def header_problems(hdr: Any, file_size: int | None, rep: FileReport,
                    rules: InputRules = DEFAULT_RULES) -> None:
    """Check the raw header fields (dims, data type, pixdim, offsets, codes, scaling) into ``rep``."""
    dim = [int(d) for d in hdr["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        rep.error(f"dim[0] = {ndim} is not a NIfTI dimension count (1-7): the header is corrupt", _REEXPORT)
        return
    shape = dim[1:ndim + 1]
    if any(d < 1 for d in shape):
        rep.error(f"the image dimensions {tuple(shape)} include zero or negative sizes: the header is corrupt",
                  _REEXPORT)
        return
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        what = "a 2D image" if len(shape) < 3 else f"a {len(shape)}D series {tuple(shape)}"
        fix = ("give the whole 3D volume" if len(shape) < 3 else "split the series and keep one 3D volume "
               "(e.g. fslroi or nibabel's image slicing)")
        rep.error(f"the image is {what}; msimaging needs one 3D volume", fix)
        return
    if min(shape) < 2:
        rep.error(f"the image shape {tuple(shape)} is a single slice; msimaging needs a 3D volume",
                  "give the whole 3D volume")
        return
    if max(shape) > MAX_DIM or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        rep.error(f"the image dimensions {tuple(shape)} are implausible for MRI: the header is corrupt",
                  _REEXPORT)
        return
    code = int(hdr["datatype"])
    if code not in REAL_DTYPES:
        name = {32: "complex64", 1792: "complex128", 2048: "complex256", 128: "RGB", 2304: "RGBA",
                1: "binary", 1536: "float128"}.get(code, f"code {code}")
        rep.error(f"the voxel data type is {name}; msimaging needs real-valued magnitude images",
                  "export magnitude images as integers or float32")
        return
    pixdim = np.asarray(hdr["pixdim"][1:4], dtype=float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        rep.error(f"the voxel sizes in pixdim {pixdim.tolist()} are zero, negative or not finite", _FIX_HEADER)
    elif np.any(pixdim < rules.min_voxel_mm) or np.any(pixdim > rules.max_voxel_mm):
        rep.error(f"the voxel sizes in pixdim {np.round(pixdim, 4).tolist()} mm are implausible for brain MRI "
                  f"(expected {rules.min_voxel_mm}-{rules.max_voxel_mm} mm)", _FIX_HEADER)
    for name in ("qform_code", "sform_code"):
        value = int(hdr[name])
        if value not in NIFTI_CODES:
            rep.error(f"{name} = {value} is not a NIfTI code (0-5): the header is corrupt", _FIX_HEADER)
    offset = float(hdr["vox_offset"])
    min_offset = 352 if hdr.sizeof_hdr == 348 else 544
    if not np.isfinite(offset) or offset < min_offset:
        rep.error(f"vox_offset = {offset} is before the end of the header: the header is corrupt", _REEXPORT)
    elif file_size is not None:
        itemsize = np.dtype(REAL_DTYPES[code]).itemsize
        needed = int(offset) + int(np.prod(shape, dtype=np.int64)) * itemsize
        if needed > file_size:
            rep.error(f"the file is truncated ({file_size} bytes of image, the header describes {needed})", _REEXPORT)
    if int(hdr["qform_code"]) > 0:
        try:
            hdr.get_qform_quaternion()
        except ValueError:
            bcd = [float(hdr[f"quatern_{c}"]) for c in "bcd"]
            rep.error(f"the qform rotation (quatern_b, c, d = {np.round(bcd, 4).tolist()}) is not a rotation "
                      "(b^2 + c^2 + d^2 > 1)", "fix the header (or set qform_code to 0 when the sform is right)")
    slope = float(hdr["scl_slope"])
    if np.isinf(slope):
        rep.error(f"scl_slope = {slope}: the intensity scaling is not finite", _FIX_HEADER)
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        rep.warn("neither qform nor sform is set, so the position and left-right orientation are unknown",
                 "convert the DICOM again with dcm2niix so the header carries the scanner geometry")


# --- stage 2 and 3: geometry and data ------------------------------------------------------------------


def _qform_sform_distance(img: Any, shape: tuple[int, ...]) -> float:
    q, s = img.get_qform(), img.get_sform()
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], dtype=float)
    return float(np.linalg.norm((corners @ q.T - corners @ s.T)[:, :3], axis=1).max())


def geometry_problems(img: Any, shape: tuple[int, int, int], rep: FileReport,
                      rules: InputRules = DEFAULT_RULES) -> np.ndarray | None:
    """Check the affine msimaging will use; returns it when usable."""
    from msimaging.io import image_affine

    hdr = img.header
    affine = image_affine(img)
    problems = affine_problems(affine)
    for problem in problems:
        rep.error(problem, _FIX_HEADER)
    if problems:
        return None
    zooms = voxel_sizes(affine)
    if np.any(zooms < rules.min_voxel_mm):
        rep.error(f"the affine gives voxel sizes {np.round(zooms, 4).tolist()} mm, implausible for brain MRI",
                  _FIX_HEADER)
        return None
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode > 0 and scode > 0:
        dist = _qform_sform_distance(img, shape)
        rep.info["qform_sform_mm"] = round(dist, 3)
        if not np.isfinite(dist) or dist > rules.qform_sform_tolerance_mm:
            rep.error(f"qform and sform disagree by up to {dist:.1f} mm, so the image position is ambiguous",
                      "fix the header so both describe the same geometry (or set qform_code to 0)")
            return None
    fov = zooms * np.asarray(shape)
    rep.info.update(shape=[int(s) for s in shape], voxel_mm=[round(float(z), 4) for z in zooms],
                    fov_mm=[round(float(f), 1) for f in fov])
    if np.sort(fov)[1] < rules.min_fov_mm or fov.max() < rules.min_fov_max_mm:
        rep.error(f"the field of view {np.round(fov, 1).tolist()} mm cannot contain a brain",
                  "check that this is the whole-brain series and that the voxel sizes are right")
        return None
    return affine


def data_problems(data: np.ndarray, rep: FileReport) -> None:
    """Check the voxel values: finite and not constant."""
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            rep.error(f"{int(bad.sum())} voxels are NaN or infinite", _REEXPORT)
            return
    lo, hi = float(np.min(data)), float(np.max(data))
    if hi <= lo:
        rep.error(f"the image is constant (every voxel is {lo:g})", "check that this is the right series")


@contextmanager
def _quiet_nibabel() -> Iterator[list[str]]:
    """Collect what nibabel logs or warns while loading a broken file, instead of printing it."""
    import nibabel as nib

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = nib.imageglobals.logger
    handler = _Collect()
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


def _check(path: Path, rep: FileReport, rules: InputRules) -> None:
    import nibabel as nib

    if path.is_symlink() and not path.exists():
        rep.error("the file is a broken symbolic link", "restore the file it points to or copy the file itself")
        return
    if not path.is_file():
        rep.error("is not a regular file", "replace it with the NIfTI image")
        return
    try:
        hdr, compressed = read_raw_header(path)
    except ValueError as exc:
        rep.error(f"cannot be read as NIfTI: {exc}", _REEXPORT)
        return
    except OSError as exc:
        rep.error(f"cannot be opened ({exc.strerror or exc.__class__.__name__})", "check the file's permissions")
        return
    try:  # the whole stream: a gzip file missing its end (CRC, length) is truncated even if the data decode
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        what = "truncated or corrupt" if compressed else "unreadable"
        rep.error(f"the {'compressed stream' if compressed else 'file'} is {what} "
                  f"({exc.__class__.__name__}: {exc})", _REEXPORT)
        return
    header_problems(hdr, len(raw), rep, rules)
    if rep.errors:
        return
    with _quiet_nibabel() as notes:
        try:
            klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
            img = klass.from_bytes(raw)
        except Exception as exc:  # nibabel raises many types for corrupt files
            rep.error(f"cannot be read as NIfTI ({exc.__class__.__name__}: {exc})", _REEXPORT)
            return
        shape = tuple(int(s) for s in img.shape[:3])
        affine = geometry_problems(img, shape, rep, rules)  # type: ignore[arg-type]
        if rep.errors or affine is None:
            return
        try:
            data = np.asanyarray(img.dataobj).reshape(shape)
        except MemoryError:
            rep.error("the image is too large to read into memory", "check the image dimensions in the header")
            return
        except Exception as exc:
            rep.error(f"the voxel data cannot be read to the end (truncated or corrupt file: "
                      f"{exc.__class__.__name__})", _REEXPORT)
            return
        data_problems(data, rep)
    for note in dict.fromkeys(notes):
        rep.warn(f"nibabel reports '{note}'", "check the header")
    if not rep.errors:
        rep.grid = Grid(shape=shape, affine=affine)  # type: ignore[arg-type]
        rep.info["dtype"] = str(hdr.get_data_dtype())


def check_image(path: str | Path, root: str | Path | None = None,
                rules: InputRules = DEFAULT_RULES) -> FileReport:
    """Open one image and check everything the pipeline relies on; never raises.

    Messages name the file relative to ``root`` (the BIDS directory) when it lies inside it.
    """
    p = Path(path)
    rep = FileReport(display_path(p, Path(root) if root is not None else None))
    try:
        with np.errstate(all="ignore"):  # NaN/Inf/signalling-NaN header values are checked explicitly
            _check(p, rep, rules)
    except Exception as exc:  # a check we did not foresee must still give one readable line
        log.debug("unexpected failure checking %s", p, exc_info=True)
        rep.grid = None
        rep.error(f"could not be checked ({exc.__class__.__name__}: {exc})", _REEXPORT)
    return rep


# --- sessions, subjects, studies ------------------------------------------------------------------------


def overlap_fraction(a: Grid, b: Grid, n: int = 6) -> float:
    """Fraction of a regular sample of ``a``'s field of view that lies inside ``b``'s (0..1)."""
    axes = [np.linspace(-0.5, s - 0.5, n) for s in a.shape]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside_b = world_to_voxel(b.affine, voxel_to_world(a.affine, ijk))
    lo, hi = -0.5 - 1e-6, np.asarray(b.shape, dtype=float) - 0.5 + 1e-6
    return float(np.all((inside_b >= lo) & (inside_b <= hi), axis=1).mean())


def session_problems(session: Session, reports: dict[str, FileReport],
                     rules: InputRules = DEFAULT_RULES) -> list[str]:
    """Warnings for contrasts of one session whose fields of view do not overlap in space."""
    out = []
    ref = session.reference
    if ref is None or ref not in reports or reports[ref].grid is None:
        return out
    ref_grid = reports[ref].grid
    for contrast, rep in reports.items():
        if contrast == ref or rep.grid is None:
            continue
        frac = max(overlap_fraction(rep.grid, ref_grid), overlap_fraction(ref_grid, rep.grid))
        if frac < rules.min_overlap_fraction:
            out.append(one_line(
                f"{rep.path}: only {100 * frac:.0f}% of its field of view overlaps the {ref} of the same session "
                "in scanner space; check both headers (registration starts from the image centres and may "
                "still recover)"))
    return out


@dataclass
class SubjectValidation:
    subject: str
    errors: list[str]
    warnings: list[str]
    files: list[FileReport]

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "errors": self.errors, "warnings": self.warnings,
                "files": [f.to_dict() for f in self.files]}


def validate_subject(subject: Subject, root: str | Path | None = None,
                     rules: InputRules = DEFAULT_RULES) -> SubjectValidation:
    """Discovery problems of ``subject`` plus the checks of every image (paths relative to ``root``)."""
    errors = list(subject.problems)
    warns = list(subject.warnings)
    files = []
    for session in subject.sessions:
        reports = {}
        for contrast in session.contrasts:
            rep = check_image(session.images[contrast], root, rules)
            reports[contrast] = rep
            files.append(rep)
            errors += rep.errors
            warns += rep.warnings
        warns += session_problems(session, reports, rules)
    return SubjectValidation(subject.label, errors, warns, files)


def validate_study(bids_dir: str | Path, participant_labels: list[str] | None = None,
                   baseline_session: str | None = None,
                   rules: InputRules = DEFAULT_RULES) -> tuple[Study, list[SubjectValidation]]:
    """Discover the dataset and check every subject (problems name files relative to ``bids_dir``)."""
    study = discover(bids_dir, participant_labels, baseline_session)
    return study, [validate_subject(s, study.bids_dir, rules) for s in study.subjects.values()]


def run_subject(config: dict[str, Any], subject: str, out_json: str) -> None:
    """Validate one subject's inputs; write the report; raise :class:`ValidationError` on errors."""
    from msimaging import io as msio

    baseline = (config.get("baseline_session") or "").removeprefix("ses-") or None
    study = discover(config["bids_dir"], [subject], baseline)
    log.info("checking sub-%s in %s (paths below are relative to it)", subject, config["bids_dir"])
    if subject not in study.subjects:
        raise ValidationError(study.problems or [f"sub-{subject}: not found in the BIDS directory"])
    result = validate_subject(study.subjects[subject], study.bids_dir, InputRules.from_config(config))
    for w in result.warnings:
        log.warning("%s", w)
    if result.errors:
        for e in result.errors:
            log.error("%s", e)
        raise ValidationError(result.errors)
    log.info("%d image(s) checked, no errors", len(result.files))
    msio.write_json(out_json, result.to_dict())

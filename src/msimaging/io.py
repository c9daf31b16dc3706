"""Reading and writing files: NIfTI images, tables, JSON. Every write is atomic.

Images are read with nibabel (sform preferred when valid, as NIfTI prescribes) and handed to the
rest of the package as ``(data, affine)`` pairs. Every image msimaging writes gets a clean header:
no free-text fields (``descrip``, ``aux_file``, ``db_name``, ``intent_name``), where scanners
and converters put names and identifiers, and qform == sform == the affine used.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from msimaging.geometry import Grid

PathLike = str | os.PathLike[str]

#: NIfTI header fields with free text, cleared in everything msimaging writes.
FREE_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


class ImageError(ValueError):
    """An input image that cannot be used, with a message naming the file and the fix."""


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffixes so libraries that dispatch on them (.nii.gz) behave.
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, '\\n' newlines) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def write_json(path: PathLike, obj: Any) -> None:
    """Write JSON atomically, keys sorted, so identical content gives identical bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def read_json(path: PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def format_value(value: Any, decimals: int = 4) -> str:
    """Table cell text: NA for missing, fixed decimals for floats, lower-case booleans."""
    if value is None:
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "NA"
        text = f"{float(value):.{decimals}f}"
        return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text
    return str(value)


def table_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], sep: str = "\t",
               decimals: int = 4) -> str:
    """Render rows as delimited text with a fixed column order (missing keys are NA)."""
    buf = _io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(c), decimals) for c in columns])
    return buf.getvalue()


def write_table(path: PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]],
                sep: str | None = None, decimals: int = 4) -> None:
    """Write a TSV (or CSV when the name ends in .csv) atomically."""
    if sep is None:
        sep = "," if str(path).endswith(".csv") else "\t"
    write_text(path, table_text(columns, rows, sep=sep, decimals=decimals))


def read_table(path: PathLike, sep: str | None = None) -> list[dict[str, str]]:
    """Read a TSV/CSV into a list of dicts of strings."""
    if sep is None:
        sep = "," if str(path).endswith(".csv") else "\t"
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=sep))


def load_image(path: PathLike) -> nib.Nifti1Image:
    """Load a NIfTI image, with a readable :class:`ImageError` when that is impossible."""
    p = Path(path)
    try:
        img = nib.load(str(p))
    except FileNotFoundError as exc:
        raise ImageError(f"{p}: file not found") from exc
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ImageError(f"{p}: not a readable NIfTI image ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{p}: expected a NIfTI image, found {type(img).__name__}")
    return img


def read_image(path: PathLike, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of a 3D NIfTI image, data cast to ``dtype`` (scaling applied)."""
    img = load_image(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ImageError(f"{path}: the image data cannot be read (truncated or corrupt file: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageError(f"{path}: expected a 3D image, found shape {data.shape}")
    out = np.asarray(data, dtype=dtype)
    return out, image_affine(img)


def read_mask(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(bool mask, affine)`` of a mask image (> 0.5 is inside)."""
    data, affine = read_image(path, dtype=np.float32)
    return data > 0.5, affine


def read_grid(path: PathLike) -> Grid:
    """The voxel grid of an image, without reading its data."""
    img = load_image(path)
    shape = tuple(int(s) for s in img.shape[:3])
    return Grid(shape=shape, affine=image_affine(img))  # type: ignore[arg-type]


def image_affine(img: nib.Nifti1Image) -> np.ndarray:
    """The voxel-to-RAS affine NIfTI prescribes: sform when set, else qform, else the zooms."""
    hdr = img.header
    if int(hdr["sform_code"]) > 0:
        return np.asarray(img.get_sform(), dtype=float)
    if int(hdr["qform_code"]) > 0:
        return np.asarray(img.get_qform(), dtype=float)
    return np.asarray(img.affine, dtype=float)


def clean_header(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Clear the free-text header fields and set qform == sform (code 1, scanner) in place."""
    hdr = img.header
    for field in FREE_TEXT_FIELDS:
        hdr[field] = b""
    affine = img.affine
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return img


def write_image(path: PathLike, data: np.ndarray, affine: np.ndarray, dtype: Any = None) -> None:
    """Write a 3D image atomically with a clean header.

    ``dtype`` defaults to uint8 for boolean data, int32 for integer data and float32 otherwise.
    """
    arr = np.asarray(data)
    if dtype is None:
        if arr.dtype == np.bool_:
            dtype = np.uint8
        elif np.issubdtype(arr.dtype, np.integer):
            dtype = np.int32
        else:
            dtype = np.float32
    arr = arr.astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    if np.issubdtype(np.dtype(dtype), np.floating):
        img.header["scl_slope"] = 1.0
        img.header["scl_inter"] = 0.0
    clean_header(img)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_transform(path: PathLike, transform: Any) -> None:
    """Write an ITK transform (text format) atomically."""
    from msimaging.geometry import write_transform as _write

    with atomic_path(path) as tmp:
        _write(transform, tmp)


def write_mask(path: PathLike, mask: np.ndarray, affine: np.ndarray) -> None:
    write_image(path, np.asarray(mask, dtype=bool), affine, dtype=np.uint8)

"""Fuzzing ``msimaging validate`` with randomly corrupted headers and files (hypothesis).

Whatever the corruption, validate must answer with exit 0 or 2 and readable lines, never a
traceback; corruptions that break what the pipeline relies on (structure, sizes, geometry,
truncation, non-finite values) must give exit 2 with a line naming the file.
"""

from __future__ import annotations

import gzip
import io as _io
import struct
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msimaging.cli import main
from tests.conftest import oblique_affine

SHAPE = (40, 44, 24)
ZOOMS = (3.5, 3.5, 5.0)  # 140 x 154 x 120 mm
FILE = "sub-p01/ses-M00/anat/sub-p01_ses-M00_FLAIR.nii"
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _valid_bytes(dtype: str) -> bytes:
    data = (np.random.default_rng(3).random(SHAPE) * 1000).astype(dtype)
    aff = oblique_affine(zooms=ZOOMS)
    img = nib.Nifti1Image(data, aff)
    img.set_sform(aff, 1)
    img.set_qform(aff, 1)
    return img.to_bytes()


VALID = {"uint16": _valid_bytes("uint16"), "float32": _valid_bytes("float32")}

# (name, offset, struct format, values that must be refused)
FATAL_FIELDS = [
    ("sizeof_hdr", 0, "<i", st.integers(-2**31, 2**31 - 1).filter(lambda v: v != 348)),
    ("dim0", 40, "<h", st.integers(-32768, 32767).filter(lambda v: not 3 <= v <= 7)),
    ("dim_xyz", 42, "<h", st.one_of(st.integers(-32768, 1), st.integers(4097, 32767))),
    ("dim_t", 48, "<h", st.integers(2, 32767)),
    ("datatype", 70, "<h", st.integers(-32768, 32767).filter(
        lambda v: v not in (2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280))),
    ("pixdim_xyz", 80, "<f", st.one_of(st.floats(max_value=0.0625, width=32), st.floats(min_value=20.5, width=32),
                                       st.just(float("nan")))),
    ("vox_offset", 108, "<f", st.one_of(st.floats(max_value=351.0, width=32), st.just(float("nan")))),
    ("sform_code", 254, "<h", st.integers(-32768, 32767).filter(lambda v: not 0 <= v <= 5)),
    ("magic", 344, "4s", st.binary(min_size=4, max_size=4).filter(lambda b: b[:3] not in (b"n+1", b"ni1"))),
]


def _validate(raw: bytes, name: str = FILE) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        path = root / name
        path.parent.mkdir(parents=True)
        path.write_bytes(raw)
        out, err = _io.StringIO(), _io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["validate", str(root)])
    return rc, out.getvalue(), err.getvalue()


def _assert_refused(rc: int, out: str, err: str, name: str = FILE) -> None:
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2, (out, err)
    assert errors and all(ln.startswith(f"error: {name}: ") for ln in errors), err
    assert all("; " in ln[len(name) + 9:] for ln in errors), err   # what is wrong; what to do
    assert "Traceback" not in out + err
    assert "could not be checked" not in err, err  # the catch-all for failures no check foresaw


def _assert_answered(rc: int, out: str, err: str) -> None:
    assert rc in (0, 2), (rc, out, err)
    assert "Traceback" not in out + err
    assert "could not be checked" not in err, err  # the catch-all for failures no check foresaw
    if rc == 2:
        assert [ln for ln in err.splitlines() if ln.startswith("error: ")], err


@SETTINGS
@given(field=st.sampled_from(range(len(FATAL_FIELDS))), data=st.data(),
       dtype=st.sampled_from(sorted(VALID)), compress=st.booleans())
def test_a_corrupt_structural_field_is_refused_with_one_readable_line(field, data, dtype, compress):
    name, offset, fmt, values = FATAL_FIELDS[field]
    value = data.draw(values, label=name)
    raw = bytearray(VALID[dtype])
    if name == "dim_xyz":
        offset += 2 * data.draw(st.integers(0, 2), label="axis")
    if name == "pixdim_xyz":
        offset += 4 * data.draw(st.integers(0, 2), label="axis")
    if name == "dim_t":  # a real 4D series: dim[0] = 4
        raw[40:42] = struct.pack("<h", 4)
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    if compress:
        _assert_refused(*_validate(gzip.compress(bytes(raw)), FILE + ".gz"), name=FILE + ".gz")
    else:
        _assert_refused(*_validate(bytes(raw)))


@SETTINGS
@given(cut=st.integers(0, len(VALID["uint16"]) - 1), compress=st.booleans())
def test_a_truncated_file_is_refused(cut, compress):
    raw = VALID["uint16"]
    if compress:
        z = gzip.compress(raw)
        _assert_refused(*_validate(z[: cut * len(z) // len(raw)], FILE + ".gz"), name=FILE + ".gz")
    else:
        _assert_refused(*_validate(raw[:cut]))


@SETTINGS
@given(idx=st.integers(0, int(np.prod(SHAPE)) - 1), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_a_non_finite_voxel_is_refused(idx, bad):
    raw = bytearray(VALID["float32"])
    offset = 352 + 4 * idx
    raw[offset:offset + 4] = struct.pack("<f", bad)
    rc, out, err = _validate(bytes(raw))
    _assert_refused(rc, out, err)
    assert "1 voxels are NaN or infinite" in err


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, 351), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6),
       dtype=st.sampled_from(sorted(VALID)), compress=st.booleans())
def test_random_header_bytes_never_crash_validate(edits, dtype, compress):
    raw = bytearray(VALID[dtype])
    for offset, chunk in edits:
        raw[offset:offset + len(chunk)] = chunk
    raw = bytes(raw[: len(VALID[dtype])])
    if compress:
        _assert_answered(*_validate(gzip.compress(raw), FILE + ".gz"))
    else:
        _assert_answered(*_validate(raw))


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=64)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_random_bytes_anywhere_in_a_compressed_file_never_crash_validate(edits, cut):
    z = bytearray(gzip.compress(VALID["uint16"]))
    for offset, chunk in edits:
        offset %= len(z)
        z[offset:offset + len(chunk)] = chunk
    z = z if cut is None else z[: cut % (len(z) + 1)]
    _assert_answered(*_validate(bytes(z), FILE + ".gz"))

"""Reading and writing images and tables: geometry kept, headers cleaned, writes atomic."""

import nibabel as nib
import numpy as np
import pytest

from msimaging import io
from tests.conftest import oblique_affine


def test_read_image_uses_sform_and_keeps_oblique_lps_geometry(make_nifti):
    aff = oblique_affine()
    data = np.random.default_rng(0).integers(0, 4000, (6, 7, 5)).astype(np.uint16)
    path = make_nifti(data, aff, dtype=np.uint16)
    got, got_aff = io.read_image(path)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, data.astype(np.float32))
    np.testing.assert_allclose(got_aff, aff, atol=1e-5)


def test_write_image_clears_free_text_and_sets_both_forms(tmp_path):
    aff = oblique_affine(zooms=(0.7, 0.7, 3.0))
    out = tmp_path / "sub-x" / "m.nii.gz"
    io.write_mask(out, np.ones((3, 4, 5), bool), aff)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    for field in io.FREE_TEXT_FIELDS:
        assert img.header[field].tobytes().strip(b"\x00") == b""
    np.testing.assert_allclose(img.get_sform(), aff, atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), aff, atol=1e-4)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1


def test_write_image_is_deterministic(tmp_path):
    aff = oblique_affine()
    data = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
    io.write_image(tmp_path / "a.nii.gz", data, aff)
    io.write_image(tmp_path / "b.nii.gz", data, aff)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "t.tsv"
    io.write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.tsv"]


def test_tables_write_na_and_fixed_decimals(tmp_path):
    path = tmp_path / "x.csv"
    io.write_table(path, ["a", "b", "c", "d"], [{"a": 1.23456789, "b": None, "c": True, "d": float("nan")}])
    assert path.read_text() == "a,b,c,d\n1.2346,NA,true,NA\n"
    assert io.read_table(path) == [{"a": "1.2346", "b": "NA", "c": "true", "d": "NA"}]


def test_unreadable_image_gives_readable_error(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(io.ImageError, match="bad.nii.gz"):
        io.read_image(bad)
    with pytest.raises(io.ImageError, match="not found"):
        io.read_image(tmp_path / "missing.nii.gz")


def test_4d_image_is_rejected_unless_single_volume(make_nifti):
    p1 = make_nifti(np.zeros((4, 4, 4, 1), np.float32), np.eye(4))
    assert io.read_image(p1)[0].shape == (4, 4, 4)
    p2 = make_nifti(np.zeros((4, 4, 4, 3), np.float32), np.eye(4))
    with pytest.raises(io.ImageError, match="3D"):
        io.read_image(p2)

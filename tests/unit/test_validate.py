"""Input validation: every bad input gives one readable line naming the file and a fix; exit 2.

Each test writes a small, valid, oblique and anisotropic study, breaks one thing, and checks the
line ``msimaging validate`` prints for it. The fuzz test at the bottom feeds random corruptions.
"""

from __future__ import annotations

import os
import pwd
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msimaging.cli import main
from msimaging.validate import ValidationError, check_image, run_subject, validate_study
from tests.conftest import oblique_affine

ZOOMS = (3.0, 3.2, 4.0)
SHAPE = (56, 60, 32)  # 168 x 192 x 128 mm: a whole head
AFFINE = oblique_affine(zooms=ZOOMS)

# NIfTI-1 header byte offsets (little endian as written by nibabel on x86)
OFF_DIM, OFF_DATATYPE, OFF_BITPIX, OFF_PIXDIM, OFF_VOX_OFFSET = 40, 70, 72, 76, 108
OFF_SCL_SLOPE, OFF_QFORM_CODE, OFF_SFORM_CODE, OFF_SROW = 112, 252, 254, 280


def brain_like(shape=SHAPE, seed=0, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape).astype(float)
    c = (np.asarray(shape, dtype=float)[:, None, None, None] - 1) / 2
    r = np.sqrt((((ijk - c) / c) ** 2).sum(axis=0))
    data = np.where(r < 0.8, 800.0, 50.0) + rng.normal(0, 20, shape)
    return np.clip(data, 0, None).astype(dtype)


def write_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray = AFFINE,
                qform: np.ndarray | None = None) -> Path:
    data = brain_like() if data is None else data
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine if qform is None else qform, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def make_study(root: Path, subjects=("p01",), sessions=("M00", "M06"), contrasts=("FLAIR", "T1w"),
               ext=".nii") -> dict[tuple[str, str, str], Path]:
    files = {}
    for sub in subjects:
        for ses in sessions:
            for c in contrasts:
                name = f"sub-{sub}_ses-{ses}_{'ce-gadolinium_T1w' if c == 'ceT1w' else c}{ext}"
                files[sub, ses, c] = write_nifti(root / f"sub-{sub}" / f"ses-{ses}" / "anat" / name)
    return files


def patch(path: Path, offset: int, fmt: str, *values) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(bytes(raw))


def validate(root: Path, capsys) -> tuple[int, list[str], str]:
    rc = main(["validate", str(root)])
    out, err = capsys.readouterr()
    lines = [ln.removeprefix("error: ") for ln in err.splitlines() if ln.startswith("error: ")]
    return rc, lines, out + err


def one_error(root: Path, capsys, relpath: str, *words: str) -> str:
    """Validate ``root``; exactly one error, naming ``relpath``, containing ``words`` and a fix."""
    rc, lines, text = validate(root, capsys)
    assert rc == 2, text
    assert len(lines) == 1, text
    line = lines[0]
    assert line.startswith(relpath + ": "), line
    for w in words:
        assert w in line, (w, line)
    assert "; " in line.split(": ", 1)[1], f"no fix given: {line}"
    assert "Traceback" not in text
    return line


FLAIR = "sub-p01/ses-M06/anat/sub-p01_ses-M06_FLAIR.nii"


@pytest.fixture
def study(tmp_path):
    files = make_study(tmp_path)
    return tmp_path, files[("p01", "M06", "FLAIR")]


def test_clean_oblique_anisotropic_study_passes(tmp_path, capsys):
    make_study(tmp_path, contrasts=("FLAIR", "T2w", "T1w", "ceT1w"), ext=".nii.gz")
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 0 and lines == [], text
    assert "1 subject(s), 8 image(s): OK" in text
    rep = check_image(tmp_path / FLAIR.replace(".nii", ".nii.gz"), tmp_path)
    assert rep.info["voxel_mm"] == pytest.approx(ZOOMS, abs=1e-3)
    assert rep.info["fov_mm"] == pytest.approx(np.multiply(ZOOMS, SHAPE), abs=0.1)


# --- unreadable and truncated files ---------------------------------------------------------------------


def test_empty_file(study, capsys):
    root, f = study
    f.write_bytes(b"")
    one_error(root, capsys, FLAIR, "empty", "re-export")


def test_not_nifti(study, capsys):
    root, f = study
    f.write_bytes(b"this is a text file, not an image\n" * 20)
    one_error(root, capsys, FLAIR, "not NIfTI")


def test_gz_name_without_compression(tmp_path, capsys):
    files = make_study(tmp_path)
    f = files[("p01", "M06", "FLAIR")]
    f.rename(f.with_name(f.name + ".gz"))
    one_error(tmp_path, capsys, FLAIR + ".gz", "not gzip-compressed")


def test_truncated_uncompressed(study, capsys):
    root, f = study
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    one_error(root, capsys, FLAIR, "truncated")


def test_truncated_compressed(tmp_path, capsys):
    files = make_study(tmp_path, ext=".nii.gz")
    f = files[("p01", "M06", "FLAIR")]
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) * 2 // 3])
    one_error(tmp_path, capsys, FLAIR + ".gz", "truncated")


def test_header_only(study, capsys):
    root, f = study
    f.write_bytes(f.read_bytes()[:200])
    one_error(root, capsys, FLAIR, "less than a NIfTI header")


@contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block as ``nobody`` when the tests run as root (CI does): root reads any file."""
    if os.geteuid() != 0:
        yield
        return
    try:
        uid, gid = pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid
    except KeyError:
        uid = gid = 65534
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_permissions(capsys):
    # a folder that nobody may enter (pytest's tmp_path is private to root)
    root = Path(tempfile.mkdtemp(prefix="msimaging-unreadable-"))
    try:
        root.chmod(0o755)
        f = make_study(root)[("p01", "M06", "FLAIR")]
        # readable, it validates (and every module the check needs is imported while the
        # interpreter's own files are still readable: they may sit under /root)
        assert validate(root, capsys)[:2] == (0, [])
        f.chmod(0)
        with unprivileged():
            assert not os.access(f, os.R_OK, effective_ids=True)
            assert os.access(f.parent, os.R_OK | os.X_OK, effective_ids=True)
            one_error(root, capsys, FLAIR, "cannot be opened", "permissions")
        assert os.geteuid() == os.getuid()
    finally:
        shutil.rmtree(root)


def test_broken_symlink(study, capsys):
    root, f = study
    f.unlink()
    f.symlink_to(root / "gone.nii")
    rc, lines, text = validate(root, capsys)
    assert rc == 2 and lines[0] == f"{FLAIR}: is a broken symbolic link; restore the image file", text
    assert len(lines) == 2 and "neither FLAIR nor T2w" in lines[1]  # the session then lacks its reference


# --- values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(study, capsys, bad):
    root, f = study
    data = brain_like().astype(np.float32)
    data[3, 4, 5] = bad
    data[10, 10, 10] = bad
    write_nifti(f, data)
    one_error(root, capsys, FLAIR, "2 voxels are NaN or infinite")


def test_constant_image(study, capsys):
    root, f = study
    write_nifti(f, np.zeros(SHAPE, np.int16))
    one_error(root, capsys, FLAIR, "constant")


def test_complex_data_refused(study, capsys):
    root, f = study
    write_nifti(f, brain_like().astype(np.complex64))
    one_error(root, capsys, FLAIR, "complex64", "magnitude")


# --- dimensions --------------------------------------------------------------------------------------------


def test_2d_image(study, capsys):
    root, f = study
    write_nifti(f, brain_like()[:, :, 0])
    one_error(root, capsys, FLAIR, "2D")


def test_single_slice(study, capsys):
    root, f = study
    write_nifti(f, brain_like()[:, :, :1])
    one_error(root, capsys, FLAIR, "single slice")


def test_4d_series(study, capsys):
    root, f = study
    write_nifti(f, np.stack([brain_like(), brain_like(seed=1)], axis=-1))
    one_error(root, capsys, FLAIR, "4D series", "split")


def test_4d_with_one_volume_is_accepted(study, capsys):
    root, f = study
    write_nifti(f, brain_like()[..., None])
    rc, lines, text = validate(root, capsys)
    assert rc == 0, text


def test_corrupt_dim_asking_for_terabytes(study, capsys):
    root, f = study
    patch(f, OFF_DIM, "<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    one_error(root, capsys, FLAIR, "implausible", "corrupt")


def test_corrupt_dim0(study, capsys):
    root, f = study
    patch(f, OFF_DIM, "<h", 9)
    one_error(root, capsys, FLAIR, "dim[0] = 9")


# --- voxel sizes and affines --------------------------------------------------------------------------------


@pytest.mark.parametrize("pixdim, words", [
    ((0.0, 3.2, 4.0), "zero, negative or not finite"),
    ((3.0, -3.2, 4.0), "zero, negative or not finite"),
    ((3.0, float("nan"), 4.0), "zero, negative or not finite"),
    ((3.0, 3.2, 400.0), "implausible"),
    ((0.003, 0.0032, 0.004), "implausible"),  # metres instead of mm
])
def test_bad_pixdim(study, capsys, pixdim, words):
    root, f = study
    patch(f, OFF_PIXDIM + 4, "<3f", *pixdim)
    one_error(root, capsys, FLAIR, words, "pixdim")


def test_singular_sform(study, capsys):
    root, f = study
    singular = AFFINE.copy()
    singular[:3, 2] = 0
    patch(f, OFF_SROW, "<12f", *singular[:3].ravel())
    patch(f, OFF_QFORM_CODE, "<h", 0)
    one_error(root, capsys, FLAIR, "singular")


def test_sheared_sform(study, capsys):
    root, f = study
    sheared = AFFINE.copy()
    sheared[:3, 1] += 0.3 * sheared[:3, 0]
    patch(f, OFF_SROW, "<12f", *sheared[:3].ravel())
    patch(f, OFF_QFORM_CODE, "<h", 0)
    one_error(root, capsys, FLAIR, "not orthogonal")


def test_nan_in_sform(study, capsys):
    root, f = study
    patch(f, OFF_SROW + 12, "<f", float("nan"))
    patch(f, OFF_QFORM_CODE, "<h", 0)
    one_error(root, capsys, FLAIR, "NaN")


def test_qform_sform_disagree(study, capsys):
    root, f = study
    shifted = AFFINE.copy()
    shifted[:3, 3] += (0.0, 12.0, 0.0)
    write_nifti(f, qform=shifted)
    line = one_error(root, capsys, FLAIR, "qform and sform disagree by up to 12.0 mm")
    assert "qform_code" in line


def test_qform_sform_within_tolerance_passes(study, capsys):
    root, f = study
    shifted = AFFINE.copy()
    shifted[:3, 3] += 0.2
    write_nifti(f, qform=shifted)
    rc, lines, text = validate(root, capsys)
    assert rc == 0, text


def test_invalid_xform_code(study, capsys):
    root, f = study
    patch(f, OFF_SFORM_CODE, "<h", 77)
    one_error(root, capsys, FLAIR, "sform_code = 77")


def test_no_orientation_is_a_warning(study, capsys):
    root, f = study
    patch(f, OFF_QFORM_CODE, "<2h", 0, 0)
    rc, lines, text = validate(root, capsys)
    assert rc == 0 and "left-right orientation are unknown" in text, text


def test_fov_cannot_contain_a_brain(study, capsys):
    root, f = study
    write_nifti(f, brain_like((20, 20, 10)))  # 60 x 64 x 40 mm
    one_error(root, capsys, FLAIR, "field of view", "cannot contain a brain")


def test_thin_slab_with_whole_brain_in_plane_passes(study, capsys):
    root, f = study
    write_nifti(f, brain_like((60, 60, 8)))  # 180 x 192 x 32 mm slab
    rc, lines, text = validate(root, capsys)
    assert rc == 0, text


def test_contrasts_in_different_places_warn(study, capsys):
    root, _ = study
    t1 = root / "sub-p01/ses-M06/anat/sub-p01_ses-M06_T1w.nii"
    far = AFFINE.copy()
    far[:3, 3] += (400.0, 0, 0)
    write_nifti(t1, affine=far)
    rc, lines, text = validate(root, capsys)
    assert rc == 0 and "overlaps the FLAIR of the same session" in text, text


# --- dataset structure ----------------------------------------------------------------------------------


def test_missing_required_contrast(tmp_path, capsys):
    make_study(tmp_path)
    (tmp_path / FLAIR).unlink()
    one_error(tmp_path, capsys, "sub-p01 ses-M06", "neither FLAIR nor T2w", "add it")


def test_unsafe_subject_label(tmp_path, capsys):
    make_study(tmp_path, subjects=("p01",))
    bad = tmp_path / "sub-p_02" / "ses-M00" / "anat" / "sub-p_02_ses-M00_FLAIR.nii"
    write_nifti(bad)
    one_error(tmp_path, capsys, "sub-p_02", "not a BIDS label", "rename")


def test_unsafe_session_label(tmp_path, capsys):
    make_study(tmp_path, sessions=("M00",))
    write_nifti(tmp_path / "sub-p01" / "ses-M 06" / "anat" / "sub-p01_ses-M 06_FLAIR.nii")
    one_error(tmp_path, capsys, "sub-p01/ses-M 06", "not a BIDS label")


def test_newline_in_a_folder_name_stays_one_line(tmp_path, capsys):
    make_study(tmp_path, sessions=("M00",))
    write_nifti(tmp_path / "sub-p01" / "ses-M\n06" / "anat" / "x_FLAIR.nii")
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 2 and len(lines) == 1 and "ses-M\\n06" in lines[0], text


def test_file_name_not_bids(tmp_path, capsys):
    make_study(tmp_path)
    write_nifti(tmp_path / "sub-p01/ses-M06/anat/sub-p01_ses-M06_flair_3d.nii")
    one_error(tmp_path, capsys, "sub-p01/ses-M06/anat/sub-p01_ses-M06_flair_3d.nii", "not a BIDS anat name")


def test_file_in_the_wrong_folder(tmp_path, capsys):
    make_study(tmp_path)
    (tmp_path / "sub-p01/ses-M06/anat/sub-p01_ses-M06_T1w.nii").rename(
        tmp_path / "sub-p01/ses-M06/anat/sub-p01_ses-M00_T1w.nii")
    one_error(tmp_path, capsys, "sub-p01/ses-M06/anat/sub-p01_ses-M00_T1w.nii", "do not match its folder")


def test_duplicate_sessions_by_label(tmp_path, capsys):
    make_study(tmp_path, sessions=("M6", "M06"))
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 2 and len(lines) == 1 and "ses-M06 and ses-M6 are the same visit" in lines[0], text


def test_sessions_sharing_an_acq_time_cannot_be_ordered(tmp_path, capsys):
    make_study(tmp_path)
    (tmp_path / "sub-p01/sub-p01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-M00\t2024-01-01T09:00:00\nses-M06\t2024-01-01T09:00:00\n")
    one_error(tmp_path, capsys, "sub-p01/sub-p01_sessions.tsv", "share an acq_time")


def test_partial_acq_times_cannot_be_ordered(tmp_path, capsys):
    make_study(tmp_path)
    (tmp_path / "sub-p01/sub-p01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-M00\t2024-01-01T09:00:00\nses-M06\tn/a\n")
    one_error(tmp_path, capsys, "sub-p01/sub-p01_sessions.tsv", "missing for ses-M06")


def test_bad_acq_time_and_bad_session_id(tmp_path, capsys):
    make_study(tmp_path)
    (tmp_path / "sub-p01/sub-p01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-M00\t01/02/2024\nM06\t2024-07-01\n")
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 2
    assert any("acq_time '01/02/2024' of ses-M00 is not ISO 8601" in ln for ln in lines), text
    assert any("session_id 'M06' does not start with 'ses-'" in ln for ln in lines), text


def test_time_order_differing_from_labels_is_a_warning(tmp_path, capsys):
    make_study(tmp_path)
    (tmp_path / "sub-p01/sub-p01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-M00\t2024-07-01T09:00:00\nses-M06\t2024-01-01T09:00:00\n")
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 0 and "differ from their label order" in text, text


def test_not_a_bids_dataset(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 2 and "no sub-* folders found" in text
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    assert "BIDS directory not found" in capsys.readouterr().err


def test_every_problem_of_a_messy_dataset_is_listed_once(tmp_path, capsys):
    files = make_study(tmp_path, subjects=("p01", "p02", "p03"))
    files[("p01", "M00", "T1w")].write_bytes(b"")
    write_nifti(files[("p02", "M06", "FLAIR")], brain_like()[:, :, 0])
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 2 and len(lines) == 2, text
    assert lines[0].startswith("sub-p01/ses-M00/anat/sub-p01_ses-M00_T1w.nii: ")
    assert lines[1].startswith("sub-p02/ses-M06/anat/sub-p02_ses-M06_FLAIR.nii: ")
    assert "2 problem(s)" in text


def test_run_subject_fails_only_that_subject(tmp_path):
    files = make_study(tmp_path, subjects=("p01", "p02"))
    files[("p02", "M00", "FLAIR")].write_bytes(b"garbage" * 100)
    cfg = {"bids_dir": str(tmp_path)}
    run_subject(cfg, "p01", str(tmp_path / "out" / "p01.json"))
    assert (tmp_path / "out" / "p01.json").is_file()
    with pytest.raises(ValidationError) as exc:
        run_subject(cfg, "p02", str(tmp_path / "out" / "p02.json"))
    assert exc.value.problems == [
        "sub-p02/ses-M00/anat/sub-p02_ses-M00_FLAIR.nii: cannot be read as NIfTI: the header is not NIfTI "
        "(wrong header size or magic string); re-export the series from the scanner or DICOM"]
    assert not (tmp_path / "out" / "p02.json").exists()


def test_validate_study_reports_per_subject(tmp_path):
    make_study(tmp_path, subjects=("p2", "p10"))
    study, results = validate_study(tmp_path)
    assert [r.subject for r in results] == ["p2", "p10"]  # natural order
    assert all(not r.errors for r in results)


def test_gzip_stream_corrupt(tmp_path, capsys):
    files = make_study(tmp_path, ext=".nii.gz")
    f = files[("p01", "M06", "FLAIR")]
    raw = bytearray(f.read_bytes())
    raw[20:60] = b"\x00" * 40
    f.write_bytes(bytes(raw))
    rc, lines, text = validate(tmp_path, capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(FLAIR + ".gz: "), text


def test_big_endian_files_are_read(study, capsys):
    root, f = study
    img = nib.load(str(f))
    hdr = img.header.as_byteswapped(">")
    nib.Nifti1Image(np.asarray(img.dataobj).astype(">u2"), img.affine, hdr).to_filename(str(f))
    rc, lines, text = validate(root, capsys)
    assert rc == 0, text


def test_qform_quaternion_that_is_not_a_rotation(study, capsys):
    root, f = study
    patch(f, 256, "<3f", 0.9, 0.5, 0.3)  # quatern_b, c, d: b^2 + c^2 + d^2 > 1
    one_error(root, capsys, FLAIR, "is not a rotation", "qform_code")


def test_thresholds_are_config_keys(study, capsys):
    root, f = study
    write_nifti(f, brain_like((24, 24, 16)))  # 72 x 77 x 64 mm
    one_error(root, capsys, FLAIR, "cannot contain a brain")
    assert main(["validate", str(root), "--config", "validation.min_fov_mm=60", "validation.min_fov_max_mm=70"]) == 0
    assert main(["validate", str(root), "--config", "validation.min_fov_mm=lots"]) == 2
    assert "validation.min_fov_mm" in capsys.readouterr().err


def test_run_subject_reads_the_rules_from_the_config(tmp_path):
    files = make_study(tmp_path)
    shifted = AFFINE.copy()
    shifted[:3, 3] += (0.0, 3.0, 0.0)
    write_nifti(files[("p01", "M00", "T1w")], qform=shifted)
    with pytest.raises(ValidationError, match="qform and sform disagree by up to 3.0 mm"):
        run_subject({"bids_dir": str(tmp_path)}, "p01", str(tmp_path / "v.json"))
    run_subject({"bids_dir": str(tmp_path), "validation": {"qform_sform_tolerance_mm": 5.0}}, "p01",
                str(tmp_path / "v.json"))
    assert (tmp_path / "v.json").is_file()


def test_signalling_nan_in_pixdim(study, capsys):
    root, f = study
    patch(f, OFF_PIXDIM + 12, "<I", 0x7FA00000)  # a signalling NaN: numpy warns when it is cast
    one_error(root, capsys, FLAIR, "zero, negative or not finite")

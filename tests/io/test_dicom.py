"""DICOM -> BIDS import on synthetic DICOM visits written with pydicom from phantom volumes.

Every series is oblique with anisotropic voxels and carries planted identifying tags; the tests
check that the imported images equal the phantom's (data and geometry within 1e-3 mm), that the
series are classified as designed, and that no planted value and no date (except sessions.tsv's
acq_time) appears in any output byte.
"""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from msimaging import dicom, io
from msimaging.bids import contrast_name, discover
from msimaging.cli import main
from msimaging.phantom import PhantomOptions, make_study
from msimaging.validate import check_image
from tests.dicom_writer import PLANTED, VISIT_PROTOCOL, SeriesSpec, find_planted, write_series, write_visit

VISIT_TIMES = {"M00": datetime(2023, 3, 14, 9, 30, 5), "M06": datetime(2023, 9, 20, 14, 5, 0)}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """1 subject, 2 visits, oblique, anisotropic voxels, one grid per contrast (like 2D/3D clinical series)."""
    root = tmp_path_factory.mktemp("phantom")
    make_study(root, PhantomOptions(subjects=1, sessions=2, resolution_mm=(3.0, 3.5, 5.0), seed=5,
                                    orientation="oblique", per_contrast_grids=True, n_baseline_lesions=4))
    return root


def _volumes(phantom: Path, ses: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for contrast in ("T2w", "FLAIR", "T1w", "ceT1w"):
        img = nib.load(str(phantom / contrast_name("p01", ses, contrast)))
        assert img.get_data_dtype() == np.uint16
        out[contrast] = (np.asarray(img.dataobj), io.image_affine(img))
    return out


@pytest.fixture(scope="module")
def visits(phantom, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    for ses, t in VISIT_TIMES.items():
        write_visit(root / ses, _volumes(phantom, ses), t)
    return root


@pytest.fixture(scope="module")
def imported(visits, tmp_path_factory) -> tuple[Path, dicom.ImportResult]:
    bids = tmp_path_factory.mktemp("bids")
    result = dicom.run_import(visits / "M00", bids, "p01", "M00")
    return bids, result


def _in_source_order(data: np.ndarray, affine: np.ndarray, src_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data``/``affine`` with voxel axes permuted/flipped to match the source grid's."""
    ornt = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.io_orientation(src_affine))
    out = nib.orientations.apply_orientation(data, ornt)
    return out, affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)


def _all_output_bytes(root: Path) -> dict[Path, bytes]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        out[path] = gzip.decompress(raw) if path.name.endswith(".gz") else raw
    return out


def test_visit_series_are_classified_as_designed(imported):
    _, result = imported
    got = {s.number: (s.decision.status, s.decision.contrast) for s in result.series}
    assert got == {1: ("skip", None), 3: ("import", "T2w"), 4: ("import", "FLAIR"), 5: ("import", "T1w"),
                   6: ("skip", None), 9: ("import", "ceT1w"), 10: ("skip", None)}
    reasons = {s.number: s.decision.reason for s in result.series}
    assert "localiser" in reasons[1] and "diffusion" in reasons[6] and "derived" in reasons[10]
    assert "ContrastBolusAgent" in reasons[9]
    assert result.problems == [] and sorted(result.written) == ["FLAIR", "T1w", "T2w", "ceT1w"]


def test_imported_images_equal_the_source_volumes_and_geometry(imported, phantom):
    bids, result = imported
    for contrast, (src, src_aff) in _volumes(phantom, "M00").items():
        img = nib.load(str(result.written[contrast]))
        data, aff = _in_source_order(np.asarray(img.dataobj), io.image_affine(img), src_aff)
        assert data.shape == src.shape, contrast
        np.testing.assert_array_equal(data, src, err_msg=contrast)
        # The affine (mm) and the corner voxels' world positions agree within 1e-3 mm.
        assert np.abs(aff - src_aff).max() < 1e-3, (contrast, np.abs(aff - src_aff).max())
        assert dicom.same_grid_mm(io.image_affine(img), img.shape, src_aff, src.shape) < 1e-3
        # The grid really is oblique and anisotropic (the test would be weak otherwise).
        zooms = np.sort(io.read_grid(result.written[contrast]).zooms)
        assert zooms[-1] / zooms[0] > 1.3
        cos = np.abs(src_aff[:3, :3] / np.linalg.norm(src_aff[:3, :3], axis=0))
        assert cos.max(axis=0).min() < 0.99


def test_headers_are_clean_and_images_pass_validation(imported):
    _, result = imported
    for contrast, path in result.written.items():
        img = nib.load(str(path))
        for field in io.FREE_TEXT_FIELDS:
            assert img.header[field].tobytes().strip(b"\x00") == b"", (contrast, field)
        assert img.header.extensions == [] or len(img.header.extensions) == 0
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        rep = check_image(path)
        assert rep.errors == [], rep.errors


def test_sidecars_hold_acquisition_parameters_only(imported):
    _, result = imported
    for contrast, path in result.written.items():
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert set(side) <= dicom.SIDECAR_ALLOWED_KEYS | {"ContrastBolusIngredient"}, set(side) - dicom.SIDECAR_ALLOWED_KEYS
        spec = VISIT_PROTOCOL[contrast]
        assert side["RepetitionTime"] == pytest.approx(spec.tr / 1000)  # BIDS: seconds
        assert side["EchoTime"] == pytest.approx(spec.te / 1000)
        assert side.get("InversionTime") == (pytest.approx(spec.ti / 1000) if spec.ti else None)
        assert side["SeriesNumber"] == spec.number
        assert (side.get("ContrastBolusIngredient") == "GADOLINIUM") == (contrast == "ceT1w")


def test_planted_identifiers_appear_nowhere_and_dates_only_in_sessions_tsv(imported, visits):
    bids, _ = imported
    files = _all_output_bytes(bids)
    names = {p.relative_to(bids).as_posix() for p in files}
    assert names == {
        "dataset_description.json", "participants.tsv", "sub-p01/sub-p01_sessions.tsv",
        *(f"sub-p01/ses-M00/anat/sub-p01_ses-M00_{c}.{e}" for c in ("T1w", "ce-gadolinium_T1w", "T2w", "FLAIR")
          for e in ("nii.gz", "json"))}
    # The planted values are really in the source files (else this test could not fail).
    source = next((visits / "M00" / "s004").iterdir()).read_bytes()
    assert all(s.encode() in source for s in ("DOE^JANE", "19700101", "ACME Hospital", "SN31337", "ACC991122"))
    import pydicom

    ds = pydicom.dcmread(str(next((visits / "M00" / "s004").iterdir())), stop_before_pixels=True)
    uids = [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID]
    for path, content in files.items():
        assert find_planted(content, tuple(v for v in PLANTED.values() if len(v) >= 7)) == [], path.name
        for uid in uids:
            assert uid.encode() not in content, (path.name, "UID")
        is_sessions = path.name == "sub-p01_sessions.tsv"
        for date_text in (b"20230314", b"2023-03-14", b"14.03.2023", b"093005"):
            assert (date_text in content) == (is_sessions and date_text == b"2023-03-14"), (path.name, date_text)
    assert io.read_table(bids / "sub-p01" / "sub-p01_sessions.tsv") == [
        {"session_id": "ses-M00", "acq_time": "2023-03-14T09:34:05"}]  # the first imported series


def test_second_visit_orders_sessions_and_bids_discovery_finds_everything(imported, visits):
    bids, _ = imported
    assert main(["import-dicom", str(visits / "M06"), str(bids), "--subject", "sub-p01", "--session", "M06"]) == 0
    sub = discover(bids).subjects["p01"]
    assert [s.label for s in sub.sessions] == ["M00", "M06"]
    assert [s.contrasts for s in sub.sessions] == [["FLAIR", "T2w", "T1w", "ceT1w"]] * 2
    assert (sub.sessions[1].acq_time - sub.sessions[0].acq_time).days == 190
    assert io.read_table(bids / "participants.tsv") == [{"participant_id": "sub-p01"}]


def test_no_dates_shifts_day0_to_1800_and_keeps_intervals(visits, tmp_path, capsys):
    bids, key = tmp_path / "bids", tmp_path / "private" / "date_key.tsv"
    args = ["--subject", "p01", "--no-dates", "--date-key", str(key)]
    assert main(["import-dicom", str(visits / "M06"), str(bids), *args, "--session", "M06"]) == 0
    assert main(["import-dicom", str(visits / "M00"), str(bids), *args, "--session", "M00"]) == 0
    rows = io.read_table(bids / "sub-p01" / "sub-p01_sessions.tsv")
    # Day 0 is the first visit imported (M06); M00, acquired 190 days earlier, lands before it.
    assert rows == [{"session_id": "ses-M00", "acq_time": "1799-06-25T09:34:05"},
                    {"session_id": "ses-M06", "acq_time": "1800-01-01T14:09:00"}]
    sub = discover(bids).subjects["p01"]
    assert sub.baseline.label == "M00" and (sub.sessions[1].acq_time - sub.sessions[0].acq_time).days == 190
    assert io.read_table(key) == [{"participant_id": "sub-p01", "day0": "2023-09-20"}]
    for path, content in _all_output_bytes(bids).items():
        for text in (b"2023", b"0314", b"0920"):
            assert text not in content, (path.name, text)
    capsys.readouterr()
    # Without the key, or with the key inside the BIDS dataset, or mixing real and shifted dates: refused.
    assert main(["import-dicom", str(visits / "M00"), str(bids), "--subject", "p01", "--session", "M00",
                 "--no-dates", "--overwrite"]) == 2
    assert "--date-key" in capsys.readouterr().err
    assert main(["import-dicom", str(visits / "M00"), str(bids), "--subject", "p01", "--session", "M00",
                 "--no-dates", "--date-key", str(bids / "key.tsv"), "--overwrite"]) == 2
    assert "outside the BIDS dataset" in capsys.readouterr().err
    assert main(["import-dicom", str(visits / "M00"), str(bids), "--subject", "p01", "--session", "M12",
                 ]) == 2
    assert "shifted dates" in capsys.readouterr().err
    assert not (bids / "sub-p01" / "ses-M12").exists()


def _two_flair_visit(phantom: Path, root: Path) -> Path:
    vols = _volumes(phantom, "M00")
    write_visit(root, {"FLAIR": vols["FLAIR"], "T1w": vols["T1w"]}, VISIT_TIMES["M00"], extras=False)
    data, aff = vols["FLAIR"]
    spec = SeriesSpec(14, "t2_tirm_tra_dark-fluid_post", tr=9000, te=81, ti=2500, scanning_sequence="SE\\IR",
                      contrast_agent="Gadovist")
    write_series(root / "s014", data, aff, spec, study_uid="1.2.3.4", acquired=VISIT_TIMES["M00"])
    return root


def test_ambiguous_series_block_the_import_until_a_series_map_decides(phantom, tmp_path, capsys):
    dcm, bids = _two_flair_visit(phantom, tmp_path / "dicom"), tmp_path / "bids"
    assert main(["import-dicom", str(dcm), str(bids), "--subject", "p01", "--session", "M00"]) == 2
    out, err = capsys.readouterr()
    assert "series 4, series 14 all look like FLAIR" in err and "nothing was imported" in err
    assert "ambiguous" in out  # the listing shows every series and its decision
    assert not bids.exists() or not any(bids.rglob("*"))
    smap = tmp_path / "site.yaml"
    smap.write_text(yaml.safe_dump({"by_description": {"*_post": "skip"}}))
    assert main(["import-dicom", str(dcm), str(bids), "--subject", "p01", "--session", "M00",
                 "--series-map", str(smap)]) == 0
    assert sorted(p.name for p in (bids / "sub-p01" / "ses-M00" / "anat").glob("*.nii.gz")) == [
        "sub-p01_ses-M00_FLAIR.nii.gz", "sub-p01_ses-M00_T1w.nii.gz"]
    # Re-importing needs --overwrite; with it, images no longer chosen are removed.
    assert main(["import-dicom", str(dcm), str(bids), "--subject", "p01", "--session", "M00",
                 "--series-map", str(smap)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    smap.write_text(yaml.safe_dump({"by_number": {4: "skip", 5: "skip", 14: "FLAIR"}}))
    assert main(["import-dicom", str(dcm), str(bids), "--subject", "p01", "--session", "M00",
                 "--series-map", str(smap), "--overwrite"]) == 0
    assert sorted(p.name for p in (bids / "sub-p01" / "ses-M00" / "anat").iterdir()) == [
        "sub-p01_ses-M00_FLAIR.json", "sub-p01_ses-M00_FLAIR.nii.gz"]


def test_incomplete_series_is_invalid_and_named(phantom, tmp_path, capsys):
    vols = _volumes(phantom, "M00")
    dcm = tmp_path / "dicom"
    write_visit(dcm, {"FLAIR": vols["FLAIR"], "T2w": vols["T2w"]}, VISIT_TIMES["M00"], extras=False)
    files = sorted((dcm / "s004").iterdir())
    files[len(files) // 2].unlink()  # one slice lost on the way from PACS
    assert main(["import-dicom", str(dcm), str(tmp_path / "bids"), "--subject", "p01", "--session", "M00"]) == 2
    err = capsys.readouterr().err
    assert "series 4" in err and "invalid" in err and "1 slice(s) missing" in err
    assert not (tmp_path / "bids").exists()


def test_dry_run_lists_and_writes_nothing(visits, tmp_path, capsys):
    assert main(["import-dicom", str(visits / "M00"), str(tmp_path / "bids"), "--subject", "p01",
                 "--session", "M00", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "t2_tirm_tra_dark-fluid" in out and "dry run" in out
    assert not (tmp_path / "bids").exists()


def test_bad_usage_is_one_line_each(visits, tmp_path, capsys):
    assert main(["import-dicom", str(tmp_path / "none"), str(tmp_path / "b"), "--subject", "p01",
                 "--session", "M00"]) == 2
    assert "DICOM directory not found" in capsys.readouterr().err
    assert main(["import-dicom", str(visits / "M00"), str(tmp_path / "b"), "--subject", "p_01",
                 "--session", "M00"]) == 2
    assert "letters and digits only" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    assert main(["import-dicom", str(tmp_path / "empty"), str(tmp_path / "b"), "--subject", "p01",
                 "--session", "M00"]) == 2
    assert "no DICOM images found among 1 file(s)" in capsys.readouterr().err
    bad_map = tmp_path / "m.yaml"
    bad_map.write_text("by_number: {3: T3w}\n")
    assert main(["import-dicom", str(visits / "M00"), str(tmp_path / "b"), "--subject", "p01",
                 "--session", "M00", "--series-map", str(bad_map)]) == 2
    assert "'T3w' is not one of" in capsys.readouterr().err


def test_two_patients_in_one_folder_are_refused_without_naming_them(visits, tmp_path, capsys):
    dcm = tmp_path / "dicom"
    shutil.copytree(visits / "M00" / "s004", dcm / "a")
    vol = np.full((12, 12, 10), 100, np.uint16)
    aff = np.diag([2.0, 2.0, 4.0, 1.0])
    write_series(dcm / "b", vol, aff, VISIT_PROTOCOL["T2w"], study_uid="1.2.3", acquired=VISIT_TIMES["M00"],
                 patient={"PatientName": "ROE^RICHARD", "PatientID": "MRN5550100"})
    assert main(["import-dicom", str(dcm), str(tmp_path / "bids"), "--subject", "p01", "--session", "M00"]) == 2
    out, err = capsys.readouterr()
    assert "2 different patients" in err
    for s in ("ROE", "MRN5550100", "DOE", "MRN8675309"):
        assert s not in out + err


def test_dual_echo_pd_t2_series_imports_its_t2_echo(phantom, tmp_path):
    vols = _volumes(phantom, "M00")
    (t2, aff), (flair, _) = vols["T2w"], vols["FLAIR"]
    pd = (t2 // 2 + 300).astype(np.uint16)  # another image on the same grid: the first echo
    dcm, uid = tmp_path / "dicom", "1.2.826.0.1.3680043.8.498.1"
    for echo, (data, te) in enumerate(((pd, 12.0), (t2, 96.0)), start=1):
        spec = SeriesSpec(2, "pd+t2_tse_tra", tr=3000, te=te, flip=150, scanning_sequence="SE")
        write_series(dcm / "s002", data, aff, spec, study_uid="1.2.3", acquired=VISIT_TIMES["M00"],
                     series_uid=uid, echo_number=echo)
    result = dicom.run_import(dcm, tmp_path / "bids", "p01", "M00")
    assert result.problems == [] and list(result.written) == ["T2w"]
    assert result.series[0].meta["EchoTimes"] == (12.0, 96.0)
    img = nib.load(str(result.written["T2w"]))
    data, aff_out = _in_source_order(np.asarray(img.dataobj), io.image_affine(img), aff)
    np.testing.assert_array_equal(data, t2)
    assert np.abs(aff_out - aff).max() < 1e-3
    side = json.loads(result.written["T2w"].with_name("sub-p01_ses-M00_T2w.json").read_text())
    assert side["EchoTime"] == pytest.approx(0.096)

"""msimaging.phantom: the ground truth must be right, geometric, deterministic and realistic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from msimaging.bids import contrast_name
from msimaging.endpoints import COLUMNS
from msimaging.geometry import read_transform, resample_array, transform_points_ras
from msimaging.io import read_image, read_json, read_mask, read_table
from msimaging.lesions import label_lesions, lesion_stats
from msimaging.phantom import PhantomOptions, StudyTruth, make_study

REAL_MASKS = Path(__file__).resolve().parents[3] / "shared" / "data" / "ms-lesion-masks"

#: The main study: coarse (fast) but oblique, with per-visit poses, atrophy and every contrast.
OPTIONS = PhantomOptions(resolution_mm=4.0, seed=3, orientation="oblique", atrophy_per_year=0.02)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    return make_study(tmp_path_factory.mktemp("phantom"), OPTIONS)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    """LPS, anisotropic thick slices, float32, two contrasts, a rescan of the baseline."""
    opts = PhantomOptions(resolution_mm=(2.5, 2.5, 5.0), seed=11, orientation="LPS", dtype="float32",
                          contrasts=("FLAIR", "T1w"), rescan_of="M00", n_baseline_lesions=6)
    return make_study(tmp_path_factory.mktemp("small"), opts)


def _session(study: StudyTruth, label: str):
    return study.subjects[0].session(label)


def test_layout(study: StudyTruth) -> None:
    root = study.bids_dir
    assert (root / "dataset_description.json").is_file()
    assert read_table(root / "participants.tsv") == [{"participant_id": "sub-p01"}]
    sessions = read_table(root / "sub-p01" / "sub-p01_sessions.tsv")
    assert [s["session_id"] for s in sessions] == ["ses-M00", "ses-M06"]
    assert [s["acq_time"] for s in sessions] == ["2025-01-15T09:00:00", "2025-07-15T09:00:00"]
    for contrast in ("FLAIR", "T2w", "T1w", "ceT1w"):
        assert (root / contrast_name("p01", "M06", contrast)).is_file()
    assert (root / "sub-p01/ses-M00/anat/sub-p01_ses-M00_ce-gadolinium_T1w.nii.gz").is_file()
    truth = study.truth_dir / "sub-p01" / "ses-M06" / "anat"
    for name in ("desc-brain_mask", "label-lesion_mask", "label-lesion_dseg", "label-new_mask",
                 "label-enlarging_mask", "label-enhancing_mask", "label-WM_probseg", "label-GM_probseg",
                 "label-CSF_probseg"):
        assert (truth / f"sub-p01_ses-M06_{name}.nii.gz").is_file(), name
    for name in ("from-T2w_to-FLAIR", "from-T1w_to-FLAIR", "from-ceT1w_to-FLAIR", "from-session_to-baseline"):
        assert (truth / f"sub-p01_ses-M06_{name}_mode-image_xfm.txt").is_file(), name
    assert not (study.truth_dir / "sub-p01/ses-M00/anat/sub-p01_ses-M00_label-new_mask.nii.gz").exists()
    rows = read_table(study.endpoints_csv)
    assert list(rows[0]) == list(COLUMNS)
    assert [r["session"] for r in rows] == ["M00", "M06"]
    assert rows[0]["new_t2_vs_baseline"] == "NA" and rows[0]["pbvc_vs_baseline"] == "0.0000"
    assert rows[1]["days_since_baseline"] == "181" and rows[1]["qc_status"] == "pass"
    assert rows[1]["pipeline_version"] == "truth" and rows[1]["inputs_sha256"] == "NA"
    info = read_json(study.subjects[0].truth_json)
    assert {les["sessions"]["M06"]["status"] for les in info["lesions"]} >= {"new", "enlarging", "shrinking", "stable"}


def test_images_are_raw_clinical_like(study: StudyTruth) -> None:
    img = nib.load(str(_session(study, "M00").images["FLAIR"]))
    assert img.get_data_dtype() == np.uint16
    data = np.asanyarray(img.dataobj)
    assert 1000 < np.percentile(data, 99.9) < 4000
    assert np.allclose(img.header.get_zooms(), 4.0, atol=1e-4)


def test_determinism(tmp_path: Path) -> None:
    opts = PhantomOptions(resolution_mm=4.0, seed=4, sessions=2, contrasts=("FLAIR",), orientation="oblique",
                          n_baseline_lesions=4)
    a = make_study(tmp_path / "a", opts)
    b = make_study(tmp_path / "b", opts)
    c = make_study(tmp_path / "c", dataclasses.replace(opts, seed=5, sessions=1))
    rel = contrast_name("p01", "M06", "FLAIR")
    first = contrast_name("p01", "M00", "FLAIR")
    assert (a.bids_dir / rel).read_bytes() == (b.bids_dir / rel).read_bytes()
    assert a.endpoints_csv.read_bytes() == b.endpoints_csv.read_bytes()
    assert a.subjects[0].truth_json.read_bytes() == b.subjects[0].truth_json.read_bytes()
    assert (a.bids_dir / first).read_bytes() != (c.bids_dir / first).read_bytes()


def test_relative_contrasts(study: StudyTruth) -> None:
    ses = _session(study, "M00")
    flair, affine = read_image(ses.images["FLAIR"])
    lesion = read_mask(ses.truth["lesion_mask"])[0]
    fractions = {t: read_image(ses.truth[f"{t}_probseg"])[0] for t in ("GM", "WM", "CSF")}
    med = {t: float(np.median(flair[(f > 0.6) & ~lesion])) for t, f in fractions.items()}
    med["lesion"] = float(np.median(flair[lesion]))
    assert med["lesion"] > med["GM"] > med["WM"] > med["CSF"], med
    # T2w (resampled with the truth transform): CSF > lesion > GM > WM.
    t2, t2_affine = read_image(ses.images["T2w"])
    tx = read_transform(ses.truth["xfm_T2w"])
    t2_on_ref = resample_array(t2, t2_affine, ses.grid, tx)
    med2 = {t: float(np.median(t2_on_ref[(f > 0.6) & ~lesion])) for t, f in fractions.items()}
    med2["lesion"] = float(np.median(t2_on_ref[lesion]))
    assert med2["CSF"] > med2["lesion"] > med2["GM"] > med2["WM"], med2


def _expected_t1(ses) -> tuple[np.ndarray, np.ndarray]:
    fr = {t: read_image(ses.truth[f"{t}_probseg"])[0] for t in ("GM", "WM", "CSF", "lesion")}
    expected = fr["WM"] + 0.65 * fr["GM"] + 0.25 * fr["CSF"] + 0.62 * fr["lesion"]
    return expected, read_mask(ses.truth["brain_mask"])[0]


def test_truth_transforms_put_images_on_the_reference(study: StudyTruth) -> None:
    for label in ("M00", "M06"):
        ses = _session(study, label)
        t1, t1_affine = read_image(ses.images["T1w"])
        expected, brain = _expected_t1(ses)
        truth = resample_array(t1, t1_affine, ses.grid, read_transform(ses.truth["xfm_T1w"]))
        r_truth = np.corrcoef(truth[brain], expected[brain])[0, 1]
        assert r_truth > 0.85, (label, r_truth)
    # Session -> baseline: the follow-up T1w, through its T1w -> FLAIR and session transforms.
    base, follow = _session(study, "M00"), _session(study, "M06")
    t1, t1_affine = read_image(follow.images["T1w"])
    to_ref = read_transform(follow.truth["xfm_T1w"])
    to_base = read_transform(follow.truth["xfm_baseline"])
    chain = sitk.CompositeTransform([to_base, to_ref])  # baseline point -> follow-up ref -> follow-up T1w
    expected, brain = _expected_t1(base)
    on_base = resample_array(t1, t1_affine, base.grid, chain)
    r_truth = np.corrcoef(on_base[brain], expected[brain])[0, 1]
    r_none = np.corrcoef(resample_array(t1, t1_affine, base.grid)[brain], expected[brain])[0, 1]
    assert r_truth > 0.85 and r_truth > r_none + 0.1, (r_truth, r_none)


def test_session_transform_maps_lesion_centroids(study: StudyTruth) -> None:
    base, follow = _session(study, "M00"), _session(study, "M06")
    tx = read_transform(follow.truth["xfm_baseline"])
    cb = {les.lesion_id: les.centroid_ras_mm for les in
          lesion_stats(read_image(base.truth["lesion_dseg"], np.int32)[0], base.grid.affine)}
    cf = {les.lesion_id: les.centroid_ras_mm for les in
          lesion_stats(read_image(follow.truth["lesion_dseg"], np.int32)[0], follow.grid.affine)}
    info = read_json(study.subjects[0].truth_json)
    stable = [les["id"] for les in info["lesions"] if les["sessions"]["M06"]["status"] == "stable"
              and les["sessions"]["M00"]["status"] != "absent"]
    assert stable
    moved = transform_points_ras(tx, np.array([cb[i] for i in stable]))
    err = np.linalg.norm(moved - np.array([cf[i] for i in stable]), axis=1)
    assert err.max() < 4.0, err          # one 4 mm voxel of discretisation
    # and the analytic centroids of the truth JSON agree with the same map
    analytic_b = np.array([info["lesions"][i - 1]["sessions"]["M00"]["centroid_ras_mm"] for i in stable])
    analytic_f = np.array([info["lesions"][i - 1]["sessions"]["M06"]["centroid_ras_mm"] for i in stable])
    assert np.abs(transform_points_ras(tx, analytic_b) - analytic_f).max() < 0.5


def test_orientation_headers(study: StudyTruth, small: StudyTruth) -> None:
    oblique = nib.load(str(_session(study, "M00").images["T1w"]))
    assert nib.aff2axcodes(oblique.affine) == ("L", "P", "S")
    cosines = oblique.affine[:3, :3] / np.linalg.norm(oblique.affine[:3, :3], axis=0)
    angle = np.degrees(np.arccos(np.clip((np.trace(np.diag([-1, -1, 1]) @ cosines) - 1) / 2, -1, 1)))
    assert 9.9 < angle < 20.1
    lps = nib.load(str(_session(small, "M00").images["FLAIR"]))
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    assert np.allclose(lps.header.get_zooms(), (2.5, 2.5, 5.0), atol=1e-4)
    assert lps.get_data_dtype() == np.float32
    assert np.allclose(lps.affine, read_image(_session(small, "M00").truth["lesion_mask"])[1])


def test_ras_default(tmp_path: Path) -> None:
    st = make_study(tmp_path, PhantomOptions(resolution_mm=4.0, sessions=1, contrasts=("T2w",), seed=5,
                                             n_baseline_lesions=3))
    img = nib.load(str(st.subjects[0].sessions[0].images["T2w"]))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert st.subjects[0].sessions[0].reference == "T2w"
    row = st.rows[0]
    assert row["gd_lesion_count"] is None and row["cua_lesion_count"] is None
    assert 1 <= row["t2_lesion_count"] <= 3


def _count(path: Path) -> int:
    mask, affine = read_mask(path)
    return int(label_lesions(mask, affine).max())


@pytest.mark.parametrize("which", ["study", "small"])
def test_truth_counts_are_component_counts(which: str, request: pytest.FixtureRequest) -> None:
    st: StudyTruth = request.getfixturevalue(which)
    for ses in st.subjects[0].sessions:
        row = ses.endpoints
        assert _count(ses.truth["lesion_mask"]) == row["t2_lesion_count"] == len(ses.lesion_ids) > 0
        dseg = read_image(ses.truth["lesion_dseg"], np.int32)[0]
        assert sorted(set(np.unique(dseg)) - {0}) == list(ses.lesion_ids)
        vox = ses.grid.voxel_volume_mm3
        assert row["t2_lesion_volume_ml"] == pytest.approx((dseg > 0).sum() * vox / 1000)
        if "new_mask" in ses.truth:
            assert _count(ses.truth["new_mask"]) == row["new_t2_vs_baseline"]
            assert _count(ses.truth["enlarging_mask"]) == row["enlarging_t2_vs_baseline"]
        if "enhancing_mask" in ses.truth:
            assert _count(ses.truth["enhancing_mask"]) == row["gd_lesion_count"]


def test_designed_activity(study: StudyTruth) -> None:
    follow = _session(study, "M06").endpoints
    assert follow["new_t2_vs_baseline"] == 2 and follow["enlarging_t2_vs_baseline"] == 1
    assert follow["new_t2_vs_previous"] == 2 and follow["gd_lesion_count"] == 1
    assert follow["cua_lesion_count"] == 3       # 1 Gd+ (a new lesion) + the other new + the enlarging one
    base = _session(study, "M00").endpoints
    assert base["gd_lesion_count"] == 1 and base["cua_lesion_count"] == 1
    assert follow["t2_lesion_count"] == base["t2_lesion_count"] + 2


def test_atrophy_from_truth_fractions(study: StudyTruth) -> None:
    volumes = []
    for ses in study.subjects[0].sessions:
        total = sum(read_image(ses.truth[f"{t}_probseg"])[0].sum(dtype=np.float64) for t in ("GM", "WM", "lesion"))
        volumes.append(total * ses.grid.voxel_volume_mm3 / 1000)
        assert volumes[-1] == pytest.approx(ses.endpoints["brain_volume_ml"], rel=0.01)
    years = 181 / 365.25
    assert volumes[1] / volumes[0] == pytest.approx(1 - 0.02 * years, abs=0.003)
    rows = study.rows
    # the truth's PBVC is the change of the tissue its images hold (to 0.02 pp; the bench's error is 0.14 pp)
    assert rows[1]["pbvc_vs_baseline"] == pytest.approx(100 * (volumes[1] / volumes[0] - 1), abs=0.02)
    for ses, row, brain in zip(study.subjects[0].sessions, rows, volumes):
        # the truth's ICV is the intracranial tissue (parenchyma, lesions, CSF) its images hold
        csf = read_image(ses.truth["CSF_probseg"])[0].sum(dtype=np.float64) * ses.grid.voxel_volume_mm3 / 1000
        assert row["icv_ml"] == pytest.approx(brain + csf, rel=1e-3)
        assert row["bpf"] == pytest.approx(brain / (brain + csf), rel=2e-3)
    assert rows[1]["icv_ml"] == rows[0]["icv_ml"] and 0.6 < rows[0]["bpf"] < 0.9


def test_new_lesions_absent_from_baseline(study: StudyTruth) -> None:
    base, follow = _session(study, "M00"), _session(study, "M06")
    new, affine = read_mask(follow.truth["new_mask"])
    tx = read_transform(follow.truth["xfm_baseline"])
    on_base = resample_array(new.astype(np.float32), affine, base.grid, tx) > 0.5
    assert on_base.sum() > 0
    baseline_lesions = read_mask(base.truth["lesion_mask"])[0]
    assert not (on_base & baseline_lesions).any()


def test_enhancing_lesions_are_bright_on_ce_t1w(study: StudyTruth) -> None:
    ses = _session(study, "M06")
    ce, ce_affine = read_image(ses.images["ceT1w"])
    ce_ref = resample_array(ce, ce_affine, ses.grid, read_transform(ses.truth["xfm_ceT1w"]))
    enhancing = read_mask(ses.truth["enhancing_mask"])[0]
    wm = read_image(ses.truth["WM_probseg"])[0] > 0.6
    assert np.median(ce_ref[enhancing]) > 1.1 * np.median(ce_ref[wm])


def test_rescan_is_the_same_anatomy(small: StudyTruth) -> None:
    labels = [s.session for s in small.subjects[0].sessions]
    assert labels == ["M00", "M00R", "M06"]
    rows = {r["session"]: r for r in small.rows}
    rescan = rows["M00R"]
    assert rescan["new_t2_vs_previous"] == 0 and rescan["enlarging_t2_vs_previous"] == 0
    assert rescan["new_t2_vs_baseline"] == 0 and rescan["pbvc_vs_baseline"] == 0
    assert rescan["t2_lesion_count"] == rows["M00"]["t2_lesion_count"]
    assert rows["M06"]["new_t2_vs_previous"] == rows["M06"]["new_t2_vs_baseline"]
    a = small.subjects[0].session("M00").images["FLAIR"]
    b = small.subjects[0].session("M00R").images["FLAIR"]
    assert not np.allclose(nib.load(str(a)).affine, nib.load(str(b)).affine) or \
        a.read_bytes() != b.read_bytes()
    tsv = read_table(small.bids_dir / "sub-p01" / "sub-p01_sessions.tsv")
    assert tsv[1] == {"session_id": "ses-M00R", "acq_time": "2025-01-15T11:00:00"}


def test_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FLAIR or T2w"):
        make_study(tmp_path, PhantomOptions(contrasts=("T1w",)))
    with pytest.raises(ValueError, match="orientation"):
        make_study(tmp_path, PhantomOptions(orientation="RAI"))
    with pytest.raises(ValueError, match="rescan_of"):
        make_study(tmp_path, PhantomOptions(rescan_of="M12"))


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not REAL_MASKS.is_dir(), reason="../shared/data/ms-lesion-masks is absent")
def test_real_lesion_shapes(tmp_path: Path) -> None:
    st = make_study(tmp_path, PhantomOptions(resolution_mm=3.0, seed=2, lesion_masks_dir=REAL_MASKS,
                                             contrasts=("FLAIR", "T1w", "ceT1w")))
    info = read_json(st.subjects[0].truth_json)
    assert info["lesions"] and all(les["source"].startswith("p") for les in info["lesions"])
    for ses in st.subjects[0].sessions:
        assert _count(ses.truth["lesion_mask"]) == ses.endpoints["t2_lesion_count"]

"""DICOM series classification, series maps, slice geometry, sidecars and dates (pure functions)."""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pytest

from msimaging.dicom import (
    AMBIGUOUS, IMPORT, SIDECAR_ALLOWED_KEYS, SKIPPED, Decision, DicomImportError, classify_series, clean_sidecar,
    is_shifted, parse_dicom_datetime, parse_series_map, resolve_visit, same_grid_mm, shift_datetime, stack_affine,
    stack_problem, update_sessions,
)
from msimaging.geometry import LPS_FLIP
from tests.conftest import oblique_affine

ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")


def _meta(desc: str, seq: str, tr: float | None, te: float | None, ti: float | None = None, *,
          image_type=ORIGINAL, agent: str | None = None, slices: int = 40, **extra) -> dict:
    m = {"Modality": "MR", "SeriesDescription": desc, "ScanningSequence": tuple(seq.split("\\")),
         "RepetitionTime": tr, "EchoTime": te, "InversionTime": ti, "ImageType": image_type,
         "NumberOfSlices": slices, "NumberOfVolumes": 1}
    if agent is not None:
        m["ContrastBolusAgent"] = agent
    m.update(extra)
    return {k: v for k, v in m.items() if v is not None}


# Realistic protocols of the three big vendors (times in ms) and what each must become.
PROTOCOLS = [
    ("Siemens MPRAGE", _meta("t1_mprage_sag_p2_iso", "GR\\IR", 2300, 2.98, 900), IMPORT, "T1w"),
    ("GE BRAVO", _meta("Sag 3D BRAVO", "GR", 8.2, 3.2, 450), IMPORT, "T1w"),
    ("Philips 3D TFE, no TI", _meta("T1W_3D_TFE", "GR", 8.1, 3.7), IMPORT, "T1w"),
    ("SE T1 post by description", _meta("t1_se_tra_post_gd", "SE", 550, 10), IMPORT, "ceT1w"),
    ("MPRAGE + ContrastBolusAgent", _meta("t1_mprage_sag_p2_iso", "GR\\IR", 2300, 2.98, 900,
                                          agent="Gadovist 7.5 ml"), IMPORT, "ceT1w"),
    ("T1 +C (GE)", _meta("Ax T1 +C", "SE", 600, 9), IMPORT, "ceT1w"),
    ("agent 'none' is no agent", _meta("t1_mprage_sag", "GR\\IR", 2300, 3.0, 900, agent="NONE"), IMPORT, "T1w"),
    ("Siemens T2 TSE", _meta("t2_tse_tra_p2", "SE", 5000, 100), IMPORT, "T2w"),
    ("GE T2 FSE", _meta("Ax T2 FSE", "SE", 4000, 102), IMPORT, "T2w"),
    ("Siemens 2D FLAIR (TIRM)", _meta("t2_tirm_tra_dark-fluid", "SE\\IR", 9000, 81, 2500), IMPORT, "FLAIR"),
    ("Siemens 3D FLAIR SPACE", _meta("t2_space_dark-fluid_sag_p2_iso", "SE\\IR", 5000, 386, 1800), IMPORT, "FLAIR"),
    ("Philips 3D FLAIR, TI without IR flag", _meta("3D_Brain_VIEW_FLAIR", "SE", 4800, 320, 1650), IMPORT, "FLAIR"),
    ("GE post-contrast FLAIR stays FLAIR", _meta("Ax T2 FLAIR +C", "SE\\IR", 9000, 120, 2500, agent="Gd"),
     IMPORT, "FLAIR"),
    ("no description: parameters decide", _meta("Series 7", "SE\\IR", 9000, 90, 2400), IMPORT, "FLAIR"),
    ("GE T1 FLAIR is T1-weighted", _meta("Ax T1 FLAIR", "SE\\IR", 2000, 12, 860), IMPORT, "T1w"),
    ("PD/T2 dual echo: the T2 echo", _meta("pd+t2_tse_tra", "SE", 3000, 96, EchoTimes=(12.0, 96.0)), IMPORT, "T2w"),
    ("PD", _meta("pd_tse_tra", "SE", 3000, 12), SKIPPED, None),
    ("PD by parameters only", _meta("Series 4", "SE", 3000, 12), SKIPPED, None),
    ("SWI", _meta("swi_tra", "GR", 27, 20), SKIPPED, None),
    ("T2* GRE", _meta("t2*_fl2d_tra_hemo", "GR", 650, 20), SKIPPED, None),
    ("DWI", _meta("ep2d_diff_tra_b1000", "SE\\EP", 5400, 80), SKIPPED, None),
    ("STIR", _meta("t2_stir_cor", "IR", 4000, 40, 150), SKIPPED, None),
    ("DIR", _meta("3D DIR", "SE\\IR", 7500, 300, 3000), SKIPPED, None),
    ("localiser by ImageType", _meta("3pl loc", "GR", 8, 2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
     SKIPPED, None),
    ("Siemens scout", _meta("AAHead_Scout_64ch-head-coil", "GR", 8.6, 4.0), SKIPPED, None),
    ("three slices only", _meta("t2_tse_tra", "SE", 5000, 100, slices=3), SKIPPED, None),
    ("MPR reformat", _meta("t1_mprage_sag_p2_iso_MPR_tra", "GR\\IR", 2300, 2.98, 900,
                           image_type=("DERIVED", "SECONDARY", "MPR")), SKIPPED, None),
    ("MPR by description when ImageType is missing", _meta("T1 MPR tra", "GR\\IR", 2300, 2.98, 900, image_type=None),
     SKIPPED, None),
    ("subtraction", _meta("t1_post-pre_SUB", "GR\\IR", 2300, 2.98, 900, image_type=("DERIVED", "PRIMARY", "SUB")),
     SKIPPED, None),
    ("nothing recognisable", _meta("research_seq_07", "RM", None, None), SKIPPED, None),
    ("not MR", dict(_meta("t2_tse_tra", "SE", 5000, 100), Modality="CT"), SKIPPED, None),
    ("4D", dict(_meta("t2_tse_tra", "SE", 5000, 100), NumberOfVolumes=3), SKIPPED, None),
    # Conflicting evidence is reported, not guessed.
    ("says FLAIR, no inversion, T2 parameters", _meta("T2 FLAIR", "SE", 5000, 100), AMBIGUOUS, "FLAIR"),
    ("says T1, parameters T2", _meta("t1_tse_tra", "SE", 5000, 100), AMBIGUOUS, "T1w"),
    ("says pre-contrast, agent set", _meta("T1 MPRAGE pre", "GR\\IR", 2300, 3.0, 900, agent="Dotarem"),
     AMBIGUOUS, "ceT1w"),
    ("says T2, parameters PD", _meta("t2_tse_tra", "SE", 3000, 12), AMBIGUOUS, "T2w"),
]


@pytest.mark.parametrize("name,meta,status,contrast", PROTOCOLS, ids=[p[0] for p in PROTOCOLS])
def test_classify_series_on_vendor_protocols(name, meta, status, contrast):
    d = classify_series(meta)
    assert (d.status, d.contrast) == (status, contrast), d.reason
    assert d.reason


def test_series_map_overrides_rules_number_before_description():
    smap = parse_series_map({"by_description": {"*dark-fluid*": "FLAIR", "*MPR*": "skip", "Series 7": "T2w"},
                             "by_number": {"12": "ce-gadolinium_T1w", 5: "skip"}})
    scout = _meta("AAHead_Scout", "GR", 8.6, 4.0, SeriesNumber=12)
    assert classify_series(scout, smap) == Decision(IMPORT, "ceT1w", "series map: series 12", from_map=True)
    flair_as_t2 = _meta("t2_tirm_tra_dark-fluid", "SE\\IR", 9000, 81, 2500, SeriesNumber=5)
    assert classify_series(flair_as_t2, smap).status == SKIPPED
    d = classify_series(_meta("T2 FLAIR", "SE", 5000, 100, SeriesNumber=3), smap)
    assert d.status == AMBIGUOUS  # no pattern matches: the rules apply
    d = classify_series(_meta("t2_space_DARK-FLUID_sag", "SE", 5000, 100, SeriesNumber=3), smap)
    assert (d.status, d.contrast, d.from_map) == (IMPORT, "FLAIR", True)  # patterns ignore case


def test_series_map_errors_are_readable():
    with pytest.raises(DicomImportError) as exc:
        parse_series_map({"by_number": {"x": "T1w", 3: "T3w"}, "by_description": {"*": "PD"}})
    text = "\n".join(exc.value.problems)
    assert "'x' is not a series number" in text and "'T3w' is not one of" in text and "'PD'" in text
    with pytest.raises(DicomImportError, match="unknown key"):
        parse_series_map({"numbers": {}})
    assert parse_series_map(None).lookup({"SeriesNumber": 1}) is None


def test_two_series_for_one_contrast_are_ambiguous_unless_one_is_mapped():
    flair = Decision(IMPORT, "FLAIR", "rules")
    t1 = Decision(IMPORT, "T1w", "rules")
    out = resolve_visit([flair, t1, flair], [3, 4, 9])
    assert [d.status for d in out] == [AMBIGUOUS, IMPORT, AMBIGUOUS]
    assert "series 3, series 9" in out[0].reason
    mapped = Decision(IMPORT, "FLAIR", "series map", from_map=True)
    out = resolve_visit([flair, t1, mapped], [3, 4, 9])
    assert [d.status for d in out] == [SKIPPED, IMPORT, IMPORT]
    assert "series 9 is mapped to FLAIR" in out[0].reason


def _dicom_stack(affine: np.ndarray, n: int) -> tuple[np.ndarray, list[float], list[float]]:
    lps = LPS_FLIP @ affine
    zooms = np.linalg.norm(lps[:3, :3], axis=0)
    iop = [*(lps[:3, 0] / zooms[0]), *(lps[:3, 1] / zooms[1])]
    positions = np.array([lps[:3, 3] + k * lps[:3, 2] for k in range(n)])
    return positions, iop, [zooms[1], zooms[0]]


@pytest.mark.parametrize("lps", [True, False])
def test_stack_affine_inverts_dicom_geometry_of_oblique_anisotropic_grids(lps):
    aff = oblique_affine(zooms=(0.9, 1.1, 3.0), lps=lps)
    positions, iop, spacing = _dicom_stack(aff, 12)
    rng = np.random.default_rng(0)
    shuffled = positions[rng.permutation(12)]
    got = stack_affine(shuffled, iop, spacing)
    # Slices are ordered along row x column; the grid is the same, possibly with k reversed.
    assert same_grid_mm(got, (10, 11, 12), aff, (10, 11, 12)) < 1e-9
    np.testing.assert_allclose(got[:3, :2], aff[:3, :2], atol=1e-12)
    assert stack_problem(shuffled, iop) is None


def test_stack_problem_names_missing_and_shifted_slices():
    aff = oblique_affine()
    positions, iop, _ = _dicom_stack(aff, 12)
    assert "1 slice(s) missing" in stack_problem(np.delete(positions, 5, axis=0), iop)
    shifted = positions.copy()
    shifted[4] += np.asarray(iop[:3]) * 2.0
    assert "in-plane" in stack_problem(shifted, iop)
    assert "share a position" in stack_problem(np.vstack([positions, positions[:1]]), iop)


def test_same_grid_ignores_axis_order_but_not_displacement():
    aff = oblique_affine()
    shape = (5, 6, 7)
    flip_j = aff.copy()
    flip_j[:3, 1] *= -1
    flip_j[:3, 3] = aff[:3, :3] @ [0, shape[1] - 1, 0] + aff[:3, 3]
    assert same_grid_mm(flip_j, shape, aff, shape) < 1e-9
    moved = aff.copy()
    moved[:3, 3] += [0.3, 0, 0.4]
    assert abs(same_grid_mm(moved, shape, aff, shape) - 0.5) < 1e-9
    assert same_grid_mm(aff, (5, 6, 8), aff, shape) == float("inf")


def test_sidecar_keeps_acquisition_parameters_only():
    raw = {"RepetitionTime": 9.0, "EchoTime": 0.081, "InversionTime": 2.5, "FlipAngle": 150,
           "InstitutionName": "ACME Hospital", "StationName": "MR1", "DeviceSerialNumber": "123",
           "SeriesDescription": "t2 DOE", "ProtocolName": "x", "ImageComments": "Jane", "AcquisitionTime": "09:30:00",
           "AcquisitionDateTime": "2023-03-14T09:30:00", "PatientName": "DOE^JANE", "StudyDescription": "DOE",
           "InstitutionAddress": "Main St", "ReferringPhysicianName": "HOUSE", "SeriesInstanceUID": "1.2.3"}
    out = clean_sidecar(raw, "FLAIR")
    assert out == {"RepetitionTime": 9.0, "EchoTime": 0.081, "InversionTime": 2.5, "FlipAngle": 150}
    assert clean_sidecar(raw, "ceT1w")["ContrastBolusIngredient"] == "GADOLINIUM"
    identifying = {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "InstitutionAddress",
                   "ReferringPhysicianName", "AccessionNumber", "StudyID", "DeviceSerialNumber", "StationName",
                   "AcquisitionDateTime", "AcquisitionTime", "SeriesDescription", "ImageComments"}
    assert not identifying & SIDECAR_ALLOWED_KEYS


def test_dicom_dates_and_shifted_dates():
    assert parse_dicom_datetime("20230314", "093005.123") == datetime(2023, 3, 14, 9, 30, 5)
    assert parse_dicom_datetime("20230314", "0930") == datetime(2023, 3, 14, 9, 30)
    assert parse_dicom_datetime("20230314093005.5+0100") == datetime(2023, 3, 14, 9, 30, 5)
    assert parse_dicom_datetime("2023", "0930") is None and parse_dicom_datetime("20231340") is None
    day0 = date(2023, 3, 14)
    assert shift_datetime(datetime(2023, 3, 14, 9, 30, 5), day0) == datetime(1800, 1, 1, 9, 30, 5)
    later = shift_datetime(datetime(2023, 9, 20, 14, 0), day0)
    assert (later.date() - date(1800, 1, 1)).days == (date(2023, 9, 20) - day0).days == 190
    assert is_shifted("1800-07-10T14:00:00") and not is_shifted("2023-09-20T14:00:00")


def test_update_sessions_adds_or_replaces_and_keeps_other_columns():
    rows = [{"session_id": "ses-M12", "acq_time": "2024-03-01T10:00:00", "site": "A"},
            {"session_id": "ses-M0", "acq_time": "2023-03-01T10:00:00", "site": "A"}]
    out = update_sessions(rows, "M6", "2023-09-01T10:00:00")
    assert [r["session_id"] for r in out] == ["ses-M0", "ses-M6", "ses-M12"]
    assert out[1] == {"session_id": "ses-M6", "acq_time": "2023-09-01T10:00:00", "site": "n/a"}
    out = update_sessions(out, "M12", "2024-03-02T10:00:00")
    assert len(out) == 3 and out[2]["acq_time"] == "2024-03-02T10:00:00" and out[2]["site"] == "n/a"
    assert update_sessions([], "M0", "n/a") == [{"session_id": "ses-M0", "acq_time": "n/a"}]

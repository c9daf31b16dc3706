"""BIDS discovery and derivative naming."""

from pathlib import Path

import numpy as np

from msimaging.bids import bids_name, contrast_name, discover, natural_key


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_names_follow_bids_entity_order():
    assert bids_name("p01", "M06", "mask", label="lesion") == \
        "sub-p01/ses-M06/anat/sub-p01_ses-M06_label-lesion_mask.nii.gz"
    assert contrast_name("p01", "M00", "ceT1w", desc="preproc") == \
        "sub-p01/ses-M00/anat/sub-p01_ses-M00_ce-gadolinium_desc-preproc_T1w.nii.gz"
    assert bids_name("{subject}", "{session}", "xfm", ".txt", **{"from": "T1w", "to": "FLAIR", "mode": "image"}) == \
        "sub-{subject}/ses-{session}/anat/sub-{subject}_ses-{session}_from-T1w_to-FLAIR_mode-image_xfm.txt"


def test_natural_order_of_visit_labels():
    assert sorted(["M12", "M6", "M0", "M18"], key=natural_key) == ["M0", "M6", "M12", "M18"]


def test_discover_orders_sessions_by_acq_time_and_finds_contrasts(tmp_path):
    for ses in ("M00", "M06", "M12"):
        for c in ("FLAIR", "T1w", "ce-gadolinium_T1w"):
            _touch(tmp_path / f"sub-p01/ses-{ses}/anat/sub-p01_ses-{ses}_{c}.nii.gz")
    (tmp_path / "sub-p01/sub-p01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-M00\t2025-01-01T10:00:00\nses-M06\t2025-07-01T10:00:00\n"
        "ses-M12\t2024-12-01T10:00:00\n")
    study = discover(tmp_path)
    sub = study.subjects["p01"]
    assert [s.label for s in sub.sessions] == ["M12", "M00", "M06"]  # by time, not by label
    assert sub.baseline.label == "M12"
    assert sub.sessions[0].contrasts == ["FLAIR", "T1w", "ceT1w"]
    assert sub.sessions[0].reference == "FLAIR"
    assert sub.problems == ()


def test_discover_reports_problems_without_opening_files(tmp_path):
    _touch(tmp_path / "sub-p02/ses-01/anat/sub-p02_ses-01_T1w.nii.gz")              # no FLAIR/T2w
    _touch(tmp_path / "sub-p03/anat/sub-p03_T2w.nii.gz")                               # no sessions
    _touch(tmp_path / "sub-p04/ses-01/anat/sub-p04_ses-01_run-1_FLAIR.nii.gz")
    _touch(tmp_path / "sub-p04/ses-01/anat/sub-p04_ses-01_run-2_FLAIR.nii.gz")         # duplicate
    _touch(tmp_path / "sub-p_5/ses-01/anat/sub-p_5_ses-01_FLAIR.nii.gz")                # unsafe label
    study = discover(tmp_path)
    assert any("neither FLAIR nor T2w" in p for p in study.subjects["p02"].problems)
    assert [s.label for s in study.subjects["p03"].sessions] == ["01"]
    assert any("2 candidate FLAIR" in p for p in study.subjects["p04"].problems)
    assert any("p_5" in p for p in study.problems)


def test_participant_filter_and_missing_participant(tmp_path):
    _touch(tmp_path / "sub-a1/ses-1/anat/sub-a1_ses-1_FLAIR.nii.gz")
    _touch(tmp_path / "sub-b2/ses-1/anat/sub-b2_ses-1_FLAIR.nii.gz")
    study = discover(tmp_path, ["sub-b2", "c3"])
    assert list(study.subjects) == ["b2"]
    assert any("sub-c3" in p for p in study.problems)


def test_baseline_session_overrides_the_time_order(tmp_path):
    """``--config baseline_session=M06``: M06 is the baseline whatever acq_time and labels say."""
    from types import SimpleNamespace

    from msimaging.config import load_config
    from msimaging.dag import Plan

    for ses in ("M00", "M06", "M12"):
        for c in ("FLAIR", "T1w"):
            _touch(tmp_path / f"sub-p01/ses-{ses}/anat/sub-p01_ses-{ses}_{c}.nii.gz")
    (tmp_path / "sub-p01/sub-p01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-M00\t2025-01-01T10:00:00\nses-M06\t2025-07-01T10:00:00\n"
        "ses-M12\t2026-01-01T10:00:00\n")
    default = Plan.from_config(load_config({"bids_dir": str(tmp_path)}))
    assert default.baseline("p01") == "M00"
    for value in ("M06", "ses-M06"):
        plan = Plan.from_config(load_config({"bids_dir": str(tmp_path), "baseline_session": value}))
        assert plan.baseline("p01") == "M06"
        info = {ses: plan.session_info(SimpleNamespace(subject="p01", session=ses)) for ses in ("M00", "M06", "M12")}
        assert [info[s]["is_baseline"] for s in ("M00", "M06", "M12")] == [False, True, False]
        assert [info[s]["days_since_baseline"] for s in ("M00", "M06", "M12")] == [-181, 0, 184]
        # follow-ups are compared with M06 (and no transform is asked for the baseline itself)
        compare = plan.compare_inputs(SimpleNamespace(subject="p01", session="M12"))
        assert "ses-M06" in compare["bl"] and "bl_xfm" not in compare and "ses-M12" in compare["fu_xfm"]
    wrong = Plan.from_config(load_config({"bids_dir": str(tmp_path), "baseline_session": "M03"}))
    assert any("baseline_session ses-M03 does not exist" in p for p in wrong.subject("p01").problems)


def test_compare_inputs_carry_the_t2w_of_visits_that_have_one(tmp_path):
    """New lesions are confirmed on the T2w pair: compare_visits gets each visit's T2w on its FLAIR grid."""
    from types import SimpleNamespace

    from msimaging.config import load_config
    from msimaging.dag import Plan

    for ses, contrasts in (("M00", ("FLAIR", "T2w")), ("M06", ("FLAIR", "T2w")), ("M12", ("FLAIR",))):
        for c in contrasts:
            _touch(tmp_path / f"sub-p01/ses-{ses}/anat/sub-p01_ses-{ses}_{c}.nii.gz")
    plan = Plan.from_config(load_config({"bids_dir": str(tmp_path)}))
    with_t2 = plan.compare_inputs(SimpleNamespace(subject="p01", session="M06"))
    assert "space-FLAIR_desc-preproc_T2w" in with_t2["fu_t2"] and "ses-M00" in with_t2["bl_t2"]
    without = plan.compare_inputs(SimpleNamespace(subject="p01", session="M12"))
    assert "fu_t2" not in without and "bl_t2" in without and "prev_t2" in without

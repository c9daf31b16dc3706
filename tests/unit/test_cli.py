"""Command-line behaviour that needs no pipeline run: usage errors exit 2 with readable lines."""

from pathlib import Path

import numpy as np
import pytest

from msimaging import cli, io
from msimaging import layout as L
from msimaging.cli import main
from msimaging.config import config_sha256
from msimaging.endpoints import COLUMNS


def test_unknown_bids_dir_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "BIDS directory not found" in capsys.readouterr().err


def test_bad_config_override_exits_2(tmp_path, capsys):
    (tmp_path / "bids" / "sub-a" / "anat").mkdir(parents=True)
    assert main(["run", str(tmp_path / "bids"), str(tmp_path / "out"), "--config", "lesions.min_voxels=0"]) == 2
    assert "lesions.min_voxels" in capsys.readouterr().err


def test_evaluate_prints_figures(make_nifti, capsys):
    m = np.zeros((20, 20, 20), np.uint8)
    m[5:9, 5:9, 5:9] = 1
    p = make_nifti(m)
    assert main(["evaluate", str(p), str(p)]) == 0
    out = capsys.readouterr().out
    assert "dice" in out and "1.0000" in out


def test_evaluate_missing_file_exits_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]) == 2


def test_arguments_after_double_dash_only_for_run(capsys):
    assert main(["validate", "x", "--", "--forceall"]) == 2


# --- msimaging run around a stand-in for Snakemake: what the CLI decides before and after it ----------


def _touch_study(root: Path, subjects=("p01", "p02"), sessions=("M00", "M06")) -> Path:
    for sub in subjects:
        for ses in sessions:
            f = root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_FLAIR.nii.gz"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"")
    return root


def _fake_snakemake(finished: tuple[str, ...], rc: int):
    """Stands in for the Snakemake run: the ``finished`` subjects leave their tables (and endpoints.csv)."""
    calls = []

    def call(cmd, **_):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--directory") + 1])
        rows = []
        for sub in finished:
            for i, ses in enumerate(("M00", "M06")):
                row = {c: "NA" for c in COLUMNS}
                row.update(subject=sub, session=ses, is_baseline="true" if i == 0 else "false",
                           t2_lesion_count=str(3 + i), qc_status="pass", qc_notes="")
                rows.append(row)
            io.write_table(out / L.subject_endpoints(sub), COLUMNS, [r for r in rows if r["subject"] == sub])
        io.write_table(out / L.ENDPOINTS_CSV, COLUMNS, rows, sep=",")
        return rc

    return call, calls


TRIAL = b"subject,visit,edss\np01,M00,3.5\np01,M06,4.0\np02,M00,2.0\np02,M06,2.5\n"


@pytest.mark.parametrize("finished, rc", [(("p01",), 1), (("p01", "p02"), 1)])
def test_outcome_dataset_is_merged_only_when_every_subject_finished(tmp_path, capsys, monkeypatch, finished, rc):
    bids, trial = _touch_study(tmp_path / "bids"), tmp_path / "trial.csv"
    trial.write_bytes(TRIAL)
    call, calls = _fake_snakemake(finished, rc)
    monkeypatch.setattr(cli.subprocess, "call", call)
    assert main(["run", str(bids), str(tmp_path / "out"), "--outcome-dataset", str(trial)]) == 1
    assert len(calls) == 1
    assert trial.read_bytes() == TRIAL and sorted(p.name for p in tmp_path.iterdir()) == ["bids", "out", "trial.csv"]
    assert "not updated (the run did not complete)" in capsys.readouterr().err
    assert not (tmp_path / "out" / L.OUTCOME_MERGE_JSON).exists()


def test_outcome_dataset_is_merged_when_the_run_completes(tmp_path, capsys, monkeypatch):
    """The counterpart of the test above: the same stand-in, every subject finished, exit 0: merged."""
    bids, trial = _touch_study(tmp_path / "bids"), tmp_path / "trial.csv"
    trial.write_bytes(TRIAL)
    call, _ = _fake_snakemake(("p01", "p02"), 0)
    monkeypatch.setattr(cli.subprocess, "call", call)
    assert main(["run", str(bids), str(tmp_path / "out"), "--outcome-dataset", str(trial)]) == 0
    merged = io.read_table(trial)
    assert [r["mri_t2_lesion_count"] for r in merged] == ["3", "4", "3", "4"]
    assert (tmp_path / "out" / L.OUTCOME_MERGE_JSON).is_file()


@pytest.mark.parametrize("dataset", [b"subject,visit,edss\np01,M00,3.5\np01,M06,4\np01,M06,4.5\n",
                                     b"subject,visit\nsub-p01,M00\np01,M00\n",
                                     b"subject,visit\np01,M00\np09,M12\np09,M12\n"])  # even a subject not imaged
def test_two_rows_for_one_subject_and_visit_stop_the_run_with_exit_2(tmp_path, capsys, monkeypatch, dataset):
    bids, trial = _touch_study(tmp_path / "bids"), tmp_path / "trial.csv"
    trial.write_bytes(dataset)
    call, calls = _fake_snakemake(("p01", "p02"), 0)
    monkeypatch.setattr(cli.subprocess, "call", call)
    assert main(["run", str(bids), str(tmp_path / "out"), "--outcome-dataset", str(trial)]) == 2
    err = capsys.readouterr().err
    assert calls == [] and not (tmp_path / "out").exists()   # refused before Snakemake starts
    lines = [ln for ln in err.splitlines() if ln.startswith("msimaging: error: ")]
    assert len(lines) == 1 and "not unique" in lines[0] and str(trial) in lines[0], err
    assert trial.read_bytes() == dataset


def test_participant_label_does_not_change_config_sha256(tmp_path):
    bids = _touch_study(tmp_path / "bids")
    everyone = cli._effective_config(bids, [], [], None)
    some = cli._effective_config(bids, ["sub-p01"], [], None)
    moved = cli._effective_config(bids, ["p02"], [], tmp_path / "trial.csv")
    assert some["participant_label"] == ["p01"] and moved["outcome"]["dataset"]
    assert config_sha256(everyone) == config_sha256(some) == config_sha256(moved)
    assert config_sha256(cli._effective_config(bids, ["p01"], ["lesions.min_volume_mm3=15"], None)) != \
        config_sha256(some)


def test_a_run_on_some_participants_leaves_the_others_merged_values_alone(tmp_path, capsys, monkeypatch):
    bids, trial, out = _touch_study(tmp_path / "bids"), tmp_path / "trial.csv", tmp_path / "out"
    trial.write_bytes(TRIAL)
    call, _ = _fake_snakemake(("p01", "p02"), 0)
    monkeypatch.setattr(cli.subprocess, "call", call)
    assert main(["run", str(bids), str(out), "--outcome-dataset", str(trial)]) == 0
    first = io.read_table(trial)

    def only_p01(cmd, **kw):  # the p01-only run: its endpoints.csv holds p01, with new values
        rc = _fake_snakemake(("p01",), 0)[0](cmd, **kw)
        rows = io.read_table(out / L.ENDPOINTS_CSV)
        io.write_table(out / L.ENDPOINTS_CSV, COLUMNS, [dict(r, t2_lesion_count="9") for r in rows], sep=",")
        return rc

    monkeypatch.setattr(cli.subprocess, "call", only_p01)
    assert main(["run", str(bids), str(out), "--participant-label", "p01", "--outcome-dataset", str(trial)]) == 0
    second = io.read_table(trial)
    assert [r["mri_t2_lesion_count"] for r in second] == ["9", "9", "3", "4"]
    assert second[2:] == first[2:]   # p02's rows, every merged cell kept

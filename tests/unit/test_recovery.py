"""Recovery after failures and kills: failure reasons from logs, partial tables, the run lock."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from msimaging import io
from msimaging import layout as L
from msimaging.bids import discover
from msimaging.endpoints import COLUMNS
from msimaging.recovery import (PARTIAL_MARKER, RunLocked, clear_partial_outputs, failed_subjects, failure_reason,
                                run_lock, stale_snakemake_locks, stale_temporary_files,
                                write_partial_outputs)
from msimaging.runtime import failure_text, step
from msimaging.validate import ValidationError


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """runtime.step takes over the root logger and sets thread variables (as a Snakemake job does);
    give both back after each test (a leaked OMP_NUM_THREADS=1 would reach later subprocesses)."""
    from msimaging.runtime import THREAD_VARIABLES

    for var in THREAD_VARIABLES:  # recorded now, put back (or removed) by monkeypatch at teardown
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def fake_smk(log: Path, **wildcards) -> SimpleNamespace:
    return SimpleNamespace(log=[str(log)], threads=1, wildcards=wildcards)


def test_failure_text_is_one_line():
    assert failure_text(ValidationError(["a.nii: bad; fix it", "b.nii: worse; fix that"])) == \
        "a.nii: bad; fix it | b.nii: worse; fix that"
    assert failure_text(RuntimeError("line one\nline two\x07")) == "line one line two\\x07"
    assert failure_text(KeyError("FLAIR")) == "KeyError: 'FLAIR'"
    assert failure_text(MemoryError()) == "MemoryError: MemoryError"


def test_step_logs_the_reason_that_failure_reason_reads_back(tmp_path):
    log = tmp_path / "logs" / "validate_inputs" / "sub-p01.log"
    with pytest.raises(ValidationError):
        with step(fake_smk(log, subject="p01"), "validate_inputs"):
            raise ValidationError(["sub-p01/x_FLAIR.nii: empty; re-export", "sub-p01: no T2w; add it"])
    assert failure_reason(log) == \
        "validate_inputs failed: sub-p01/x_FLAIR.nii: empty; re-export | sub-p01: no T2w; add it"
    assert "Traceback" in log.read_text()  # the details stay in the log


def test_failure_reason_of_logs_without_the_failed_line(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("2026-01-01 10:00:00,000 INFO msimaging.x: start\n"
                   "2026-01-01 10:00:01,000 ERROR msimaging.x: the registration diverged\n"
                   "2026-01-01 10:00:01,000 ERROR msimaging.x: details:\n")
    assert failure_reason(log) == "the registration diverged"
    log.write_text("2026-01-01 10:00:00,000 INFO msimaging.x: start\n")
    assert failure_reason(log) is None
    assert failure_reason(tmp_path / "missing.log") is None


def _study(tmp_path: Path):
    for sub in ("p01", "p02", "p03", "p010"):
        for ses in ("M00", "M06"):
            p = tmp_path / "bids" / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_FLAIR.nii.gz"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
    return discover(tmp_path / "bids")


def test_failed_subjects_name_the_reason_and_the_log(tmp_path):
    study = _study(tmp_path)
    out = tmp_path / "out"
    io.write_table(out / L.subject_endpoints("p01"), COLUMNS, [{"subject": "p01", "session": "M00"}])
    with pytest.raises(ValueError):
        with step(fake_smk(out / L.log("coregister", "p02", "M06", "T1w_to-FLAIR"), subject="p02"), "coregister"):
            raise ValueError("moving image is empty")
    with pytest.raises(ValueError):  # p010's failure must not be read as p01's or p02's... or p03's
        with step(fake_smk(out / L.log("preprocess", "p010", "M00", "FLAIR"), subject="p010"), "preprocess"):
            raise ValueError("p010 broke")
    failed = failed_subjects(out, list(study.subjects))
    assert list(failed) == ["p02", "p03", "p010"]
    assert failed["p02"] == ("coregister failed: moving image is empty",
                             str(out / "logs/coregister/sub-p02_ses-M06_T1w_to-FLAIR.log"))
    assert failed["p03"][0].startswith("processing did not finish")
    assert failed["p010"][0] == "preprocess failed: p010 broke"


def test_partial_outputs_hold_every_row_and_the_next_run_rebuilds_them(tmp_path):
    study = _study(tmp_path)
    out = tmp_path / "out"
    rows = [{"subject": "p01", "session": s, "qc_status": "pass", "t2_lesion_count": 3} for s in ("M00", "M06")]
    io.write_table(out / L.subject_endpoints("p01"), COLUMNS, rows)
    for sub in ("p02", "p03", "p010"):
        io.write_table(out / L.subject_endpoints(sub), COLUMNS, [])
    (out / L.subject_endpoints("p02")).unlink()
    write_partial_outputs(out, SimpleNamespace(subjects={k: study.subjects[k] for k in ("p01", "p02")}),
                          {"p02": ("validate_inputs failed: x.nii: empty; re-export", "log")})
    got = io.read_table(out / L.ENDPOINTS_CSV)
    assert [(r["subject"], r["session"], r["qc_status"]) for r in got] == [
        ("p01", "M00", "pass"), ("p01", "M06", "pass"), ("p02", "M00", "fail"), ("p02", "M06", "fail")]
    assert got[2]["qc_notes"] == "validate_inputs failed: x.nii: empty; re-export"
    assert got[2]["is_baseline"] == "true" and got[3]["is_baseline"] == "false"
    assert got[2]["t2_lesion_count"] == "NA"
    qc = io.read_table(out / L.QC_TSV)
    assert [(r["subject"], r["status"]) for r in qc] == [("p02", "fail"), ("p02", "fail")]
    assert (out / PARTIAL_MARKER).is_file()
    removed = clear_partial_outputs(out)
    assert sorted(p.name for p in removed) == ["endpoints.csv", "endpoints.json", "qc.tsv"]
    assert not (out / L.ENDPOINTS_CSV).exists() and not (out / PARTIAL_MARKER).exists()
    assert clear_partial_outputs(out) == []  # tables Snakemake wrote are never removed


def test_run_lock_is_exclusive_and_dies_with_its_holders(tmp_path):
    out = tmp_path / "out"
    with run_lock(out):
        with pytest.raises(RunLocked, match="another msimaging run is using this output directory"):
            with run_lock(out):
                pass
    with run_lock(out) as fd:  # released on exit; a child that inherits it keeps holding it
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(fd,))
    try:
        with pytest.raises(RunLocked):
            with run_lock(out):
                pass
    finally:
        child.kill()  # SIGKILL: the kernel drops the lock with the last holder
        child.wait()
    with run_lock(out):
        pass


def test_stale_snakemake_locks_are_found(tmp_path):
    assert stale_snakemake_locks(tmp_path) == []
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").write_text("x")
    assert [p.name for p in stale_snakemake_locks(tmp_path)] == ["0.input.lock"]


def test_temporary_files_of_interrupted_atomic_writes_are_found(tmp_path):
    from msimaging.io import atomic_path

    out = tmp_path / "out"
    target = out / "sub-p01" / "ses-M00" / "anat" / "sub-p01_ses-M00_label-lesion_mask.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            (out / "work").mkdir(parents=True)
            kept = out / "work" / tmp.name  # what a SIGKILL here would have left behind
            kept.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not tmp.exists() and not target.exists()  # a failure inside the process cleans up itself
    (out / ".snakemake" / "incomplete").mkdir(parents=True)
    (out / ".snakemake" / "incomplete" / ".abc").write_text("")
    (out / ".msimaging.lock").write_text("")
    (out / "sub-p01" / ".hidden_notes.txt").write_text("user file")
    (out / "endpoints.csv").write_text("a,b\n")
    assert stale_temporary_files(out) == [kept]


def test_run_refuses_an_output_directory_in_use(tmp_path, capsys):
    from msimaging.cli import main

    _study(tmp_path)
    out = tmp_path / "out"
    with run_lock(out):
        assert main(["run", str(tmp_path / "bids"), str(out), "--cores", "1"]) == 2
    err = capsys.readouterr().err
    assert "another msimaging run is using this output directory" in err
    assert not (out / ".snakemake").exists()  # nothing was started

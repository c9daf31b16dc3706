"""Faults, resumption, determinism and de-identification on one small study (DESIGN §9, issue #9).

The study: sub-p01, a 4 mm oblique phantom with two visits (FLAIR, T1w, ce-T1w); sub-p02, a copy
whose follow-up FLAIR is truncated; sub-p03, a copy without FLAIR or T2w (its steps cannot even be
planned). A name is planted in every free-text field and in a header extension of every input.

Three runs, each of the whole pipeline:
  A  clean run: p01 finishes, p02 and p03 fail alone (exit 1, fail rows with reasons, logs named);
  B  killed with SIGKILL (the whole process group, as a scheduler does) in the middle, then run
     again: it completes, every table byte-identical to A;
  C  a second clean run in a fresh directory: byte-identical to A.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msimaging import io
from msimaging.endpoints import COLUMNS
from msimaging.phantom import PhantomOptions, make_study
from msimaging.recovery import stale_temporary_files
from tests.workflow.conftest import MSIMAGING, run_cli

pytestmark = pytest.mark.slow

NAME = "DOE^JANE"
#: Every free-text field of a NIfTI-1 header, with its size in bytes.
TEXT_FIELDS = {"descrip": 80, "aux_file": 24, "db_name": 18, "intent_name": 16, "data_type": 10}
CORES = "2"


def plant_name(path: Path) -> None:
    """Write ``NAME`` into every text field and a comment extension of ``path``; data and geometry kept."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    hdr = img.header.copy()
    for field_name, size in TEXT_FIELDS.items():
        hdr[field_name] = (NAME + " " * size)[:size].encode() if size < 20 else f"{NAME} 1961-02-03".encode()
    hdr.extensions.append(nib.nifti1.Nifti1Extension(6, f"PatientName={NAME}; MRN 5550100".encode()))
    out = nib.Nifti1Image(data, None, hdr)
    out.set_sform(img.get_sform(), int(img.header["sform_code"]))
    out.set_qform(img.get_qform(), int(img.header["qform_code"]))
    out.to_filename(str(path))


def copy_subject(bids: Path, src: str, dst: str, keep=lambda name: True) -> None:
    for path in sorted((bids / f"sub-{src}").rglob("*")):
        if path.is_file() and keep(path.name):
            target = bids / str(path.relative_to(bids)).replace(f"sub-{src}", f"sub-{dst}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    bids = tmp_path_factory.mktemp("faults") / "bids"
    make_study(bids, PhantomOptions(subjects=1, sessions=2, resolution_mm=4.0, seed=5, orientation="oblique",
                                    contrasts=("FLAIR", "T1w", "ceT1w")))
    for path in sorted(bids.glob("sub-*/ses-*/anat/*.nii*")):
        plant_name(path)
    copy_subject(bids, "p01", "p02")
    broken = bids / "sub-p02/ses-M06/anat/sub-p02_ses-M06_FLAIR.nii.gz"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    copy_subject(bids, "p01", "p03", keep=lambda name: "FLAIR" not in name)
    return bids


def tables(out: Path) -> dict[str, bytes]:
    """Every table and JSON report a run leaves (not logs, benchmarks or Snakemake's bookkeeping)."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if rel.parts[0] in ("logs", "benchmarks", ".snakemake") or not path.is_file():
            continue
        if path.suffix in (".csv", ".tsv", ".json", ".txt"):
            found[str(rel)] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def run_a(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a") / "derivatives"
    return out, run_cli("run", str(study), str(out), "--cores", CORES)


def test_a_broken_subject_never_stops_the_others(run_a):
    out, proc = run_a
    assert proc.returncode == 1, proc.stderr[-4000:]
    rows = {(r["subject"], r["session"]): r for r in io.read_table(out / "endpoints.csv")}
    assert (out / "endpoints.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert sorted(rows) == [("p01", "M00"), ("p01", "M06"), ("p02", "M00"), ("p02", "M06"),
                            ("p03", "M00"), ("p03", "M06")]
    for ses in ("M00", "M06"):
        good = rows[("p01", ses)]
        assert good["qc_status"] in ("pass", "warn"), good["qc_notes"]
        assert int(good["t2_lesion_count"]) > 0 and float(good["brain_volume_ml"]) > 500
        assert good["gd_lesion_count"] != "NA"
        for sub, why in (("p02", "sub-p02/ses-M06/anat/sub-p02_ses-M06_FLAIR.nii.gz: the compressed stream "),
                         ("p03", "neither FLAIR nor T2w is present")):
            bad = rows[(sub, ses)]
            assert bad["qc_status"] == "fail" and why in bad["qc_notes"], bad
            assert bad["t2_lesion_count"] == "NA" and bad["brain_volume_ml"] == "NA"
    # the summary names each failed subject, why, and a log that says so
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("  sub-")]
    assert [ln.split(":")[0].strip() for ln in lines] == ["sub-p02", "sub-p03"], proc.stderr[-3000:]
    for line in lines:
        log_path = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
        assert log_path.is_file() and "validate_inputs failed" in log_path.read_text()
    assert "2 of 3 subject(s) failed" in proc.stderr
    assert "Traceback" not in proc.stderr.split("msimaging: 2 of 3")[1]


def test_no_planted_name_in_any_output(run_a, study):
    out, proc = run_a
    planted = [NAME.encode(), NAME.lower().encode(), b"MRN 5550100", b"1961-02-03"]
    assert NAME.encode() in gzip.decompress((study / "sub-p01/ses-M00/anat/sub-p01_ses-M00_T1w.nii.gz")
                                            .read_bytes())  # the name is really there in the inputs
    checked = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        content = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        assert not [s for s in planted if s in content.lower() or s in content], str(path.relative_to(out))
        if path.name.endswith(".nii.gz"):
            hdr = nib.load(str(path)).header
            assert all(bytes(hdr[f].item()).strip(b"\x00 ") == b"" for f in TEXT_FIELDS), path
            assert len(hdr.extensions) == 0, path
        checked += 1
    assert checked > 50
    assert not [s for s in planted if s in (proc.stdout + proc.stderr).encode()]


def test_sigkill_mid_run_then_resume_gives_byte_identical_tables(run_a, study, tmp_path):
    out_a, _ = run_a
    out = tmp_path / "derivatives"
    proc = subprocess.Popen([*MSIMAGING, "run", str(study), str(out), "--cores", CORES],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:  # kill once the first follow-up registration is written: the run is half done
        while not list(out.glob("work/sub-p01/ses-M06/*space-FLAIR_desc-preproc_*.nii.gz")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "sub-p01" / "sub-p01_endpoints.tsv").exists()
    assert list((out / ".snakemake" / "locks").glob("*")), "the killed run should have left its lock"
    resumed = run_cli("run", str(study), str(out), "--cores", CORES)
    assert resumed.returncode == 1, resumed.stderr[-4000:]  # p02 and p03 still fail, p01 completes
    assert "removing the lock a stopped run left behind" in resumed.stderr
    assert stale_temporary_files(out) == []
    a, b = tables(out_a), tables(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


def test_two_clean_runs_are_byte_identical(run_a, study, tmp_path):
    out_a, _ = run_a
    proc = run_cli("run", str(study), str(tmp_path / "c"), "--cores", CORES)
    assert proc.returncode == 1, proc.stderr[-4000:]
    a, c = tables(out_a), tables(tmp_path / "c")
    assert sorted(a) == sorted(c) and len(a) > 20
    assert [k for k in a if a[k] != c[k]] == []
    for name in sorted(p.relative_to(out_a) for p in out_a.rglob("*.nii.gz") if "logs" not in p.parts):
        assert gzip.decompress((out_a / name).read_bytes()) == gzip.decompress((tmp_path / "c" / name).read_bytes()), name

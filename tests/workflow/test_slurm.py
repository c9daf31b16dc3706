"""``msimaging run --profile slurm`` on a real single-node SLURM cluster gives a local run's endpoints.

The cluster is Debian's slurm-wlm and munge on this machine, installed and started by
``.ci/slurm-up.sh`` and stopped by ``.ci/slurm-down.sh`` at the end (needs root; it installs
packages). It runs when ``MSIMAGING_TEST_SLURM=1`` (``.ci/run`` sets it); without it the test is
skipped, since it would change the machine.

The SLURM run uses a copy of ``profiles/slurm`` adapted as README tells staff to adapt it (site
partition filled in, squeue polling for a cluster without accounting database), so the shipped
profile's placeholders are checked too. Every step is single-threaded (``threads: 1``) in both runs
(the local run ``--cores 2``, the SLURM profile's ``cores: 2``), so endpoints.csv and qc.tsv must be
byte-identical.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from msimaging import io
from msimaging.endpoints import COLUMNS
from msimaging.phantom import PhantomOptions, make_study
from tests.conftest import REPO, SHARED_DATA
from tests.workflow.conftest import run_cli

pytestmark = pytest.mark.slow

PARTITION = "msimaging"  # the partition .ci/slurm-up.sh creates
# Poll SLURM every few seconds instead of the plugin's 40 s start and Snakemake's 10 s interval:
# only to keep the test short.
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "3", "--seconds-between-status-checks", "3"]


@pytest.fixture(scope="module")
def slurm_partition(tmp_path_factory):
    if os.environ.get("MSIMAGING_TEST_SLURM") != "1":
        pytest.skip("set MSIMAGING_TEST_SLURM=1 to install and start a one-node SLURM cluster here "
                    "(root on Debian 12; .ci/run does)")
    state = tmp_path_factory.mktemp("slurm-state")
    try:
        up = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh"), str(state)], capture_output=True,
                            text=True, timeout=900)
        assert up.returncode == 0, f"slurm-up.sh failed:\n{up.stdout}\n{up.stderr}"
        assert f"partition={PARTITION}" in up.stdout
        yield PARTITION
    finally:
        subprocess.run(["bash", str(REPO / ".ci" / "slurm-down.sh"), str(state)], capture_output=True,
                       text=True, timeout=120)
        for name in ("slurmctld", "slurmd"):
            pid_file = state / f"{name}.pid"
            assert not pid_file.exists(), f"{name} still running"


def site_profile(dest: Path, partition: str) -> Path:
    """profiles/slurm with the site placeholders filled in, as README says staff do."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    text = text.replace('# slurm_partition: "<partition>"', f'slurm_partition: "{partition}"')
    text = text.replace("# slurm-status-command: squeue", "slurm-status-command: squeue")
    assert f'slurm_partition: "{partition}"' in text and "\nslurm-status-command: squeue" in text
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(text)
    return dest


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """One 4 mm phantom subject, two visits, four contrasts, LPS headers (small: CI time)."""
    root = tmp_path_factory.mktemp("slurm-study")
    masks = SHARED_DATA / "ms-lesion-masks"
    make_study(root, PhantomOptions(subjects=1, sessions=2, resolution_mm=4.0, seed=3, orientation="LPS",
                                    lesion_masks_dir=masks if masks.is_dir() else None))
    return root


def _slurm_jobs(text: str) -> list[str]:
    return sorted(set(re.findall(r"submitted with SLURM jobid (\d+)", text)))


def _job_field(job_id: str, key: str) -> str:
    show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    m = re.search(rf"\b{key}=(\S+)", show.stdout)
    return m.group(1) if m else ""


def test_slurm_run_gives_the_local_endpoints(slurm_partition, small_study, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    proc_local = run_cli("run", str(small_study), str(local), "--cores", "2")
    assert proc_local.returncode == 0, proc_local.stderr[-4000:]

    profile = site_profile(tmp_path / "site-profile", slurm_partition)
    proc = run_cli("run", str(small_study), str(cluster), "--profile", str(profile), "--", *FAST_POLLING)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "--executor" not in proc.stderr.split("running", 1)[-1].split("\n", 1)[0]  # set by the profile only

    # It really ran through SLURM: one job for the one subject (its steps grouped), 2 CPUs, done.
    jobs = _slurm_jobs(proc.stdout + proc.stderr)
    assert len(jobs) == 1, (jobs, proc.stderr[-4000:])
    assert _job_field(jobs[0], "JobState") == "COMPLETED"
    assert _job_field(jobs[0], "NumCPUs") == "2"
    assert _job_field(jobs[0], "Partition") == slurm_partition

    # Same endpoints and QC figures, byte for byte (same inputs and config; every step runs
    # single-threaded, so no ITK figure depends on the thread count or on scheduling).
    for table in ("endpoints.csv", "qc.tsv"):
        got, want = (cluster / table).read_bytes(), (local / table).read_bytes()
        assert got == want, f"{table} SLURM:\n{got.decode()}\nlocal:\n{want.decode()}"
    assert len(io.read_table(cluster / "qc.tsv")) > 10
    rows = io.read_table(cluster / "endpoints.csv")
    assert [r["session"] for r in rows] == ["M00", "M06"]
    assert list(rows[0]) == list(COLUMNS)
    assert int(rows[1]["t2_lesion_count"]) > 0 and rows[1]["new_t2_vs_baseline"] != "NA"
    # Every step left its log and benchmark file in OUTPUT_DIR, as in a local run.
    for folder in ("logs", "benchmarks"):
        local_files = sorted(p.relative_to(local) for p in (local / folder).rglob("*.*"))
        assert sorted(p.relative_to(cluster) for p in (cluster / folder).rglob("*.*")) == local_files


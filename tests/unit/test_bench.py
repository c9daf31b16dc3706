"""The benchmark sections' arithmetic and the cluster-facing declarations (no timing asserted)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import yaml

from msimaging.bench import SECTIONS, rules
from msimaging.bench.measure import run_measured
from msimaging.bench.scale import fit_line
from msimaging.cli import snakemake_command
from tests.conftest import REPO

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def _bench(run: Path, rule: str, name: str, s: float, rss: str, cpu: float) -> None:
    path = run / "benchmarks" / rule / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{HEADER}\n{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def _log(run: Path, rule: str, name: str, startup: str) -> None:
    path = run / "logs" / rule / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"2026-01-01 00:00:00,000 INFO msimaging.{rule}: start {rule} {{'subject': 'p01'}} "
                    f"threads=2 startup={startup} s\n2026-01-01 00:00:09,000 INFO msimaging.{rule}: done\n")


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    runs = []
    for i, scale in enumerate((1.0, 2.0)):
        run = tmp_path / f"run-{i}"
        _bench(run, "preprocess", "sub-p01_ses-M00_T1w", 10.0 * scale, "500", 8.0 * scale)
        _bench(run, "preprocess", "sub-p01_ses-M00_FLAIR", 20.0 * scale, "700", 16.0 * scale)
        _bench(run, "measure_brain", "sub-p01_ses-M00", 2.0 * scale, "NA", 1.0 * scale)
        _log(run, "preprocess", "sub-p01_ses-M00_T1w", "1.50")
        _log(run, "preprocess", "sub-p01_ses-M00_FLAIR", "2.50")
        _log(run, "measure_brain", "sub-p01_ses-M00", "NA")
        runs.append(run)
    return runs


def test_one_run_per_rule_figures(two_runs):
    table = rules.summarise_run(two_runs[0])
    pre = table["preprocess"]
    assert pre["jobs"] == 2 and pre["median_s"] == 15.0 and pre["total_s"] == 30.0
    assert pre["cpu_s"] == 24.0 and pre["cpu_per_s"] == pytest.approx(0.8)
    assert pre["max_rss_mb"] == 700.0 and pre["startup_s"] == 2.0
    brain = table["measure_brain"]
    assert brain["max_rss_mb"] is None and brain["startup_s"] is None  # "NA" read as missing, not as 0


def test_medians_over_runs_and_shares(two_runs):
    table = rules.summarise([rules.summarise_run(r) for r in two_runs])
    assert table["preprocess"]["runs"] == 2
    assert table["preprocess"]["total_s"] == pytest.approx(45.0)  # median of 30 and 60
    assert table["measure_brain"]["total_s"] == pytest.approx(3.0)
    assert sum(t["share"] for t in table.values()) == pytest.approx(1.0)
    assert table["preprocess"]["share"] == pytest.approx(45.0 / 48.0)
    over = rules.overheads(table)
    assert over["jobs"] == 3 and over["floor_rule"] == "measure_brain" and over["floor_s"] == pytest.approx(3.0)
    assert over["startup_total_s"] == pytest.approx(2 * 2.0)
    text = rules.format_table(table)
    assert text.splitlines()[1].startswith("preprocess") and "NA" in text


def test_fit_line_recovers_fixed_and_per_subject_cost():
    fixed, slope = fit_line([1, 4, 8], [12.0 + 30.0 * n for n in (1, 4, 8)])
    assert fixed == pytest.approx(12.0) and slope == pytest.approx(30.0)
    assert fit_line([4], [100.0]) == (0.0, 25.0)


def test_run_measured_sees_a_child_process_memory(tmp_path):
    # A child that holds 200 MB (touched, so resident) for a second and exits with status 3.
    code = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0); raise SystemExit(3)"
    parent = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {code!r}]))"
    m = run_measured([sys.executable, "-c", parent], tmp_path / "run.log", interval_s=0.05)
    assert m.returncode == 3
    assert m.wall_s >= 1.0
    assert m.peak_tree_rss_mb >= 200.0 and m.peak_processes >= 2  # the tree, not only the parent
    assert m.max_process_rss_mb >= 200.0 and m.peak_tree_rss_mb < 2000.0


def test_bench_sections_are_importable_modules():
    import importlib

    for name in SECTIONS:
        module = importlib.import_module(f"msimaging.bench.{name}")
        assert module.NAME == name and module.HELP and callable(module.run) and callable(module.add_arguments)
    assert {"budget", "scale", "rules"} <= set(SECTIONS)


def test_snakemake_command_uses_one_profile_and_its_cores(tmp_path):
    cfg = tmp_path / "config.yaml"
    slurm = REPO / "profiles" / "slurm"
    cmd = snakemake_command(tmp_path, cfg, None, slurm, False, ["--unlock"])
    assert "--cores" not in cmd  # the SLURM profile's `cores` sizes each subject job
    assert cmd[cmd.index("--profile") + 1] == str(slurm)
    assert cmd[cmd.index("--workflow-profile") + 1] == "none" and cmd[-1] == "--unlock"
    cmd = snakemake_command(tmp_path, cfg, 3, slurm, False, [])
    assert cmd[cmd.index("--cores") + 1] == "3"
    default = REPO / "profiles" / "default"
    cmd = snakemake_command(tmp_path, cfg, None, default, True, [])
    assert int(cmd[cmd.index("--cores") + 1]) >= 1 and "--dry-run" in cmd


def _rule_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), flags=re.M | re.S):
            blocks[m.group(1)] = m.group(2)
    return blocks


def test_every_rule_declares_cluster_resources_and_subject_rules_are_grouped():
    blocks = _rule_blocks()
    assert len(blocks) >= 10
    for rule, body in blocks.items():
        assert re.search(r"^\s+threads: \d+$", body, re.M), f"{rule}: no threads"
        assert re.search(r"^\s+mem_mb=\d+,$", body, re.M), f"{rule}: no mem_mb"
        assert re.search(r"^\s+runtime=\d+,$", body, re.M), f"{rule}: no runtime (minutes)"
        assert not re.search(r"^\s+(time|gpus|mem)=", body, re.M), f"{rule}: a resource SLURM ignores"
        grouped = re.search(r"^\s+group:\n\s+\"subject\"$", body, re.M) is not None
        per_subject = "{subject}" in body
        assert grouped == per_subject, f"{rule}: per-subject rules (only they) go into the group 'subject'"


def test_slurm_profile_leaves_site_settings_to_the_site_and_pins_the_plugin():
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    profile = yaml.safe_load(text)
    assert profile["executor"] == "slurm" and profile["cores"] == 2
    assert profile["group-components"] == ["subject=1"]
    assert "slurm_partition" not in profile["default-resources"] and "slurm_account" not in profile["default-resources"]
    assert '# slurm_partition: "<partition>"' in text and '# slurm_account: "<account>"' in text
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"snakemake-executor-plugin-slurm>=2\.6\.1,<2\.7"', pyproject)
    assert not math.isnan(float(profile["latency-wait"]))


def test_budget_summary_takes_medians_of_successful_runs_and_judges_the_budget(two_runs):
    from msimaging.bench.budget import Budget, format_summary, summarise_case
    from msimaging.bench.measure import RunMeasure

    def measure(rc: int, wall: float, rss: float) -> RunMeasure:
        return RunMeasure(returncode=rc, wall_s=wall, peak_tree_rss_mb=rss, max_process_rss_mb=rss / 2,
                          cpu_s=wall, peak_processes=5, samples=10)

    results = [(two_runs[0], measure(0, 100.0, 2000.0)), (two_runs[1], measure(0, 200.0, 4000.0)),
               (two_runs[1], measure(1, 5.0, 10.0))]  # the failed run counts in neither median
    s = summarise_case(results, cores=2, budget=Budget(wall_s=180.0, rss_mb=3000.0))
    assert s["runs"] == 3 and s["ok_runs"] == 2
    assert s["wall_s_median"] == 150.0 and s["peak_tree_rss_mb_median"] == 3000.0
    assert s["wall_met"] and s["rss_met"] and s["core_use"] == pytest.approx(0.5)
    assert s["cpu_floor_wall_s"] == pytest.approx(75.0)  # median CPU 150 s over 2 cores
    s = summarise_case(results[1:], cores=2, budget=Budget(wall_s=180.0, rss_mb=None))
    assert not s["wall_met"] and s["rss_met"] is None
    text = format_summary("case", s)
    assert "NOT MET" in text and "no budget" in text

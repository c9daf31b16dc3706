"""Whole-pipeline budgets (DESIGN §8): wall time and peak memory of ``msimaging run`` on one subject.

Cases (each run ``--repeats`` times into a fresh output folder, ``--cores`` cores; medians):

* ``p12``: the real clinical subject sub-p12 of ``../shared/data/ms-longitudinal`` (two visits,
  raw FLAIR, T1w and T2w as scanned). Budget: <= 180 s wall, <= 3 GB peak RSS on 2 cores.
* ``phantom1mm``: one phantom subject, two visits, four contrasts at 1 mm (generated once under
  ``OUT/budget/``; generation is not timed). Budget: <= 300 s wall (no memory budget is set;
  peak RSS is reported).

Wall time is the whole ``msimaging run`` command (start-up, DAG, every job, the group tables).
Peak RSS is the largest sum over the whole process tree (see :mod:`msimaging.bench.measure`).
The per-rule breakdown comes from the runs' Snakemake benchmark files and job logs
(:mod:`msimaging.bench.rules`). No test asserts a timing: the figures are printed and saved.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msimaging.bench import rules
from msimaging.bench.measure import RunMeasure, run_measured

NAME = "budget"
HELP = "whole-pipeline wall time and peak RSS per subject (sub-p12 real data; 1 mm phantom), medians"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    wall_s: float
    rss_mb: float | None  # None: no memory budget, the figure is only reported


BUDGETS = {"p12": Budget(wall_s=180.0, rss_mb=3000.0), "phantom1mm": Budget(wall_s=300.0, rss_mb=None)}
PHANTOM_SEED = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="[budget] runs per case (medians; default 3)")
    parser.add_argument("--budget-cases", nargs="+", default=list(BUDGETS), choices=list(BUDGETS),
                        help="[budget] which cases to run (default: all)")
    parser.add_argument("--shared-data", type=Path, default=None,
                        help="[budget] the shared data folder (default: ../shared/data beside the checkout)")


def default_shared_data() -> Path:
    from msimaging.resources import ROOT

    return ROOT.parent / "shared" / "data"


def ensure_phantom(bids_dir: Path, options: Any) -> Path:
    """Write the phantom study once; rewrite it only when the options change."""
    from msimaging.phantom import make_study

    stamp = bids_dir / ".msimaging-bench-options"
    text = repr(options)
    if stamp.is_file() and stamp.read_text() == text:
        return bids_dir
    if bids_dir.exists():
        shutil.rmtree(bids_dir)
    print(f"  generating the phantom study {bids_dir} ...", flush=True)
    make_study(bids_dir, options)
    stamp.write_text(text)
    return bids_dir


def prepare(case: str, args: argparse.Namespace, root: Path) -> tuple[Path, list[str]] | None:
    """(BIDS folder, participant labels) of a case, or None when its data is absent."""
    shared = args.shared_data or default_shared_data()
    if case == "p12":
        bids = shared / "ms-longitudinal"
        if not (bids / "sub-p12").is_dir():
            print(f"  {bids / 'sub-p12'} not found: case skipped")
            return None
        return bids, ["p12"]
    from msimaging.phantom import PhantomOptions

    masks = shared / "ms-lesion-masks"
    options = PhantomOptions(subjects=1, sessions=2, resolution_mm=1.0, seed=PHANTOM_SEED, orientation="LPS",
                             lesion_masks_dir=masks if masks.is_dir() else None)
    return ensure_phantom(root / "phantom1mm-bids", options), []


def run_command(bids: Path, out: Path, cores: int, labels: list[str], extra: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "msimaging.cli", "run", str(bids), str(out), "--cores", str(cores)]
    if labels:
        cmd += ["--participant-label", *labels]
    return cmd + (["--", *extra] if extra else [])


def run_case(bids: Path, labels: list[str], root: Path, cores: int, repeats: int) -> list[tuple[Path, RunMeasure]]:
    """``repeats`` fresh runs; each output folder is kept for the per-rule breakdown."""
    results = []
    for i in range(1, repeats + 1):
        out = root / f"run-{i}"
        if out.exists():
            shutil.rmtree(out)
        m = run_measured(run_command(bids, out, cores, labels), root / f"run-{i}.log")
        status = "ok" if m.returncode == 0 else f"FAILED (exit {m.returncode}, see {root / f'run-{i}.log'})"
        print(f"  run {i}/{repeats}: {m.wall_s:7.1f} s wall, peak RSS {m.peak_tree_rss_mb:6.0f} MB (tree), "
              f"{m.max_process_rss_mb:5.0f} MB (largest process), CPU {m.cpu_s:6.1f} s  {status}", flush=True)
        results.append((out, m))
    return results


def summarise_case(results: list[tuple[Path, RunMeasure]], cores: int, budget: Budget) -> dict[str, Any]:
    ok = [m for _, m in results if m.returncode == 0]
    if not ok:
        return {"runs": len(results), "ok_runs": 0}
    wall = statistics.median(m.wall_s for m in ok)
    rss = statistics.median(m.peak_tree_rss_mb for m in ok)
    cpu = statistics.median(m.cpu_s for m in ok)
    table = rules.summarise([rules.summarise_run(out) for out, m in results if m.returncode == 0])
    over = rules.overheads(table)
    return {
        "runs": len(results), "ok_runs": len(ok), "cores": cores,
        "wall_s_median": wall, "wall_s_runs": [m.wall_s for m in ok],
        "peak_tree_rss_mb_median": rss, "peak_tree_rss_mb_max": max(m.peak_tree_rss_mb for m in ok),
        "max_process_rss_mb_median": statistics.median(m.max_process_rss_mb for m in ok),
        "cpu_s_median": cpu, "core_use": cpu / (wall * cores) if wall > 0 else None,
        "cpu_floor_wall_s": cpu / cores,
        "job_s": over.get("job_s"), "ideal_wall_s": (over.get("job_s") or 0.0) / cores,
        "budget_wall_s": budget.wall_s, "budget_rss_mb": budget.rss_mb,
        "wall_met": wall <= budget.wall_s, "rss_met": None if budget.rss_mb is None else rss <= budget.rss_mb,
        "rules": table, "overheads": over,
    }


def format_summary(name: str, s: dict[str, Any]) -> str:
    if not s.get("ok_runs"):
        return f"{name}: no successful run"
    runs = " ".join(f"{w:.1f}" for w in s["wall_s_runs"])
    met = lambda ok: "met" if ok else "NOT MET"  # noqa: E731
    rss_budget = ("no budget" if s["budget_rss_mb"] is None
                  else f"budget {s['budget_rss_mb']:.0f} MB: {met(s['rss_met'])}")
    return "\n".join([
        f"{name}: median of {s['ok_runs']} run(s) on {s['cores']} cores",
        f"  wall      {s['wall_s_median']:8.1f} s    (runs: {runs})   budget {s['budget_wall_s']:.0f} s: "
        f"{met(s['wall_met'])}",
        f"  peak RSS  {s['peak_tree_rss_mb_median']:8.0f} MB   (whole process tree; largest single process "
        f"{s['max_process_rss_mb_median']:.0f} MB)   {rss_budget}",
        f"  CPU       {s['cpu_s_median']:8.1f} s    ({100 * (s['core_use'] or 0):.0f}% of {s['cores']} cores over "
        f"the wall time); jobs' wall seconds {s['job_s']:.1f} s = {s['ideal_wall_s']:.1f} s if packed "
        f"perfectly on {s['cores']} cores",
        f"  CPU floor {s['cpu_floor_wall_s']:8.1f} s    (CPU / {s['cores']} cores: the wall time if both cores were "
        f"ours and always busy; a shared machine's wall time is inflated, its CPU much less)",
        rules.format_table(s["rules"]),
    ])


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for case in args.budget_cases:
        root = args.out / NAME / case
        root.mkdir(parents=True, exist_ok=True)
        print(f"\n--- {case} ---", flush=True)
        prepared = prepare(case, args, args.out / NAME)
        if prepared is None:
            figures[case] = {"skipped": "data not found"}
            continue
        bids, labels = prepared
        results = run_case(bids, labels, root, args.cores, args.repeats)
        summary = summarise_case(results, args.cores, BUDGETS[case])
        summary.update(bids_dir=str(bids), participant_label=labels)
        print(format_summary(case, summary), flush=True)
        (root / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        figures[case] = summary
    return figures

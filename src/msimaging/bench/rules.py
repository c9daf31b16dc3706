"""Per-rule profile of finished runs, from Snakemake's benchmark files and the jobs' logs.

For every rule: number of jobs, median wall seconds per job, total seconds (the sum over its
jobs), CPU seconds and CPU use per second of wall (``cpu/s``: ~1 for single-threaded work, ~2 for
work that keeps two threads busy), peak RSS, and the median *start-up* of its jobs: seconds from
the job's Python process start to the start of its step (interpreter, Snakemake's script
preamble and the script's imports; logged by :func:`msimaging.runtime.step`). The start-up is the
fixed cost every job pays; the fastest rule's median is the floor of one job.

Given several runs of the same study (repeats), every figure is the median over the runs.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

NAME = "rules"
HELP = "per-rule wall time, CPU, peak RSS and job start-up medians from Snakemake benchmark files"

_STARTUP = re.compile(r"\bstart \S+ .*threads=(\d+) startup=([0-9.]+) s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, action="append", default=[],
                        help="[rules] OUTPUT_DIR of a finished run (repeatable; several dirs of the same "
                             "study are treated as repeats); default: demo/derivatives")


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "NA", "-") else math.nan
    except ValueError:
        return math.nan


def read_benchmarks(run_dir: Path) -> dict[str, list[dict[str, float]]]:
    """{rule: [{s, max_rss_mb, cpu_s}, ...]} from ``run_dir/benchmarks/<rule>/*.tsv`` (one per job)."""
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for tsv in sorted((run_dir / "benchmarks").glob("*/*.tsv")):
        lines = tsv.read_text().strip().splitlines()
        if len(lines) < 2:
            continue
        header = lines[0].split("\t")
        for line in lines[1:]:
            rec = dict(zip(header, line.split("\t")))
            out[tsv.parent.name].append({"s": _number(rec.get("s")), "max_rss_mb": _number(rec.get("max_rss")),
                                         "cpu_s": _number(rec.get("cpu_time"))})
    return dict(out)


def read_startups(run_dir: Path) -> dict[str, list[float]]:
    """{rule: [start-up seconds of each job]} from the ``start ... startup=X s`` line of ``logs/<rule>/*.log``."""
    out: dict[str, list[float]] = defaultdict(list)
    for log in sorted((run_dir / "logs").glob("*/*.log")):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        m = _STARTUP.search(text)
        if m:
            out[log.parent.name].append(float(m.group(2)))
    return dict(out)


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else None


def summarise_run(run_dir: Path) -> dict[str, dict[str, Any]]:
    """One run's per-rule figures (totals are sums over the rule's jobs)."""
    bench = read_benchmarks(run_dir)
    startups = read_startups(run_dir)
    table: dict[str, dict[str, Any]] = {}
    for rule, recs in sorted(bench.items()):
        secs = [r["s"] for r in recs]
        cpu = [r["cpu_s"] for r in recs if not math.isnan(r["cpu_s"])]
        rss = [r["max_rss_mb"] for r in recs if not math.isnan(r["max_rss_mb"])]
        total = sum(secs)
        table[rule] = {
            "jobs": len(recs),
            "median_s": statistics.median(secs),
            "total_s": total,
            "cpu_s": sum(cpu) if cpu else None,
            "cpu_per_s": (sum(cpu) / total) if cpu and total > 0 else None,
            "max_rss_mb": max(rss) if rss else None,
            "startup_s": _median(startups.get(rule, [])),
        }
    return table


def summarise(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median over runs of each rule's figures (peak RSS: the maximum over runs)."""
    rules = sorted({rule for run in runs for rule in run})
    table: dict[str, dict[str, Any]] = {}
    for rule in rules:
        rows = [run[rule] for run in runs if rule in run]
        entry: dict[str, Any] = {"runs": len(rows), "jobs": int(statistics.median(r["jobs"] for r in rows))}
        for key in ("median_s", "total_s", "cpu_s", "cpu_per_s", "startup_s"):
            entry[key] = _median([r[key] for r in rows if r[key] is not None])
        rss = [r["max_rss_mb"] for r in rows if r["max_rss_mb"] is not None]
        entry["max_rss_mb"] = max(rss) if rss else None
        table[rule] = entry
    grand = sum(t["total_s"] for t in table.values() if t["total_s"] is not None)
    for t in table.values():
        t["share"] = (t["total_s"] / grand) if grand > 0 and t["total_s"] is not None else None
    return table


def overheads(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Job-level overhead: the job floor (fastest rule) and the start-up paid by all jobs together."""
    if not table:
        return {}
    floor_rule = min(table, key=lambda r: table[r]["median_s"] if table[r]["median_s"] is not None else math.inf)
    jobs = sum(t["jobs"] for t in table.values())
    job_s = sum(t["total_s"] or 0.0 for t in table.values())
    startup_s = sum((t["startup_s"] or 0.0) * t["jobs"] for t in table.values())
    with_startup = [t["startup_s"] for t in table.values() if t["startup_s"] is not None]
    return {"jobs": jobs, "job_s": job_s, "floor_rule": floor_rule, "floor_s": table[floor_rule]["median_s"],
            "startup_median_s": statistics.median(with_startup) if with_startup else None,
            "startup_total_s": startup_s, "startup_share": startup_s / job_s if job_s > 0 else None}


def _fmt(value: Any, spec: str, width: int) -> str:
    return f"{value:{spec}}".rjust(width) if value is not None else "NA".rjust(width)


def format_table(table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'rule':<22}{'jobs':>5}{'median s':>10}{'total s':>9}{'share':>7}{'cpu/s':>7}"
             f"{'start-up s':>11}{'peak RSS MB':>12}"]
    order = sorted(table, key=lambda r: -(table[r]["total_s"] or 0.0))
    for rule in order:
        t = table[rule]
        share = f"{100 * t['share']:.0f}%" if t.get("share") is not None else "NA"
        lines.append(f"{rule:<22}{t['jobs']:>5}{_fmt(t['median_s'], '.2f', 10)}{_fmt(t['total_s'], '.1f', 9)}"
                     f"{share:>7}{_fmt(t['cpu_per_s'], '.2f', 7)}{_fmt(t['startup_s'], '.2f', 11)}"
                     f"{_fmt(t['max_rss_mb'], '.0f', 12)}")
    o = overheads(table)
    if o:
        startup = (f"; start-up median {o['startup_median_s']:.2f} s per job, {o['startup_total_s']:.1f} s in all "
                   f"({100 * o['startup_share']:.0f}% of job time)") if o["startup_median_s"] is not None else ""
        lines.append(f"{o['jobs']} jobs, {o['job_s']:.1f} job-seconds; job floor {o['floor_s']:.2f} s "
                     f"({o['floor_rule']}){startup}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    dirs = [d for d in (args.run_dir or [Path("demo/derivatives")])]
    found = [d for d in dirs if (d / "benchmarks").is_dir()]
    for d in dirs:
        if d not in found:
            print(f"{d}: no benchmarks/ folder (run `make demo` or `msimaging run` first)")
    if not found:
        return {}
    table = summarise([summarise_run(d) for d in found])
    print(f"{', '.join(str(d) for d in found)} ({len(found)} run(s); medians over runs):\n{format_table(table)}")
    return {"runs": [str(d) for d in found], "rules": table, "overheads": overheads(table)}

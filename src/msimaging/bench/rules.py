"""Per-rule medians from the Snakemake benchmark files of a finished run."""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

NAME = "rules"
HELP = "per-rule wall time and peak RSS medians from Snakemake benchmark files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, action="append", default=[],
                        help="[rules] OUTPUT_DIR of a finished run (repeatable); default: demo/derivatives")


def read_benchmarks(run_dir: Path) -> dict[str, list[dict[str, float]]]:
    """{rule: [{s, max_rss_mb}, ...]} from ``run_dir/benchmarks/<rule>/*.tsv``."""
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for tsv in sorted((run_dir / "benchmarks").glob("*/*.tsv")):
        lines = tsv.read_text().strip().splitlines()
        if len(lines) < 2:
            continue
        header = lines[0].split("\t")
        for line in lines[1:]:
            rec = dict(zip(header, line.split("\t")))
            rss = rec.get("max_rss", "NA")
            out[tsv.parent.name].append({"s": float(rec["s"]),
                                         "max_rss_mb": float(rss) if rss not in ("NA", "-") else float("nan")})
    return dict(out)


def summarise(records: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    table = {}
    for rule, recs in sorted(records.items()):
        secs = [r["s"] for r in recs]
        rss = [r["max_rss_mb"] for r in recs if r["max_rss_mb"] == r["max_rss_mb"]]
        table[rule] = {"jobs": len(recs), "median_s": statistics.median(secs), "total_s": sum(secs),
                       "max_rss_mb": max(rss) if rss else None}
    return table


def format_table(table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'rule':<24}{'jobs':>6}{'median s':>10}{'total s':>10}{'peak RSS MB':>13}"]
    for rule, t in table.items():
        rss = f"{t['max_rss_mb']:.0f}" if t["max_rss_mb"] is not None else "NA"
        lines.append(f"{rule:<24}{t['jobs']:>6}{t['median_s']:>10.2f}{t['total_s']:>10.1f}{rss:>13}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    dirs = args.run_dir or [Path("demo/derivatives")]
    figures: dict[str, Any] = {}
    for d in dirs:
        if not (d / "benchmarks").is_dir():
            print(f"{d}: no benchmarks/ folder (run `make demo` or `msimaging run` first)")
            continue
        table = summarise(read_benchmarks(d))
        print(f"{d}:\n{format_table(table)}")
        figures[str(d)] = table
    return figures

"""Outcome-dataset merge on a synthetic trial dataset: time, idempotence, untouched bytes."""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "outcome"
HELP = "merge of endpoints into a synthetic outcome dataset: medians of first and repeat merges"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outcome-rows", type=int, default=5000,
                        help="[outcome] rows of the synthetic outcome dataset (subjects x 4 visits)")
    parser.add_argument("--outcome-repeats", type=int, default=3, help="[outcome] repeats for the medians")


def synthetic(n_rows: int) -> tuple[bytes, list[dict[str, str]]]:
    """A CRLF, quoted, non-ASCII outcome dataset and imaging rows for 3 of its 4 visits per subject."""
    from msimaging.merge import MERGED_COLUMNS

    visits = ("SCR", "M00", "M06", "M12")
    lines = ["subject,visit,arm,edss,visit_date,comment"]
    imaging = []
    for i in range(n_rows):
        sub, vis = f"s{i // 4:05d}", visits[i % 4]
        lines.append(f'{sub},{vis},{"AB"[i % 2]},"{i % 10},5",2026-0{1 + i % 9}-1{i % 10},"Zürich, ""ok"""')
        if vis != "SCR":
            row = {c: "NA" for c in MERGED_COLUMNS}
            row.update(subject=sub, session=vis, t2_lesion_count=str(i % 17), qc_status="pass",
                       reader_adjudicated="false")
            imaging.append(row)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8"), imaging


def run(args: argparse.Namespace) -> dict[str, Any]:
    from msimaging.merge import MergeOptions, merge_dataset, parse_csv

    data, imaging = synthetic(args.outcome_rows)
    first, second, ok = [], [], True
    for k in range(args.outcome_repeats):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trial.csv"
            path.write_bytes(data)
            t0 = time.perf_counter()
            res = merge_dataset(path, imaging, MergeOptions(), "bench",
                                now=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
            first.append(time.perf_counter() - t0)
            merged = path.read_bytes()
            t0 = time.perf_counter()
            again = merge_dataset(path, imaging, MergeOptions(), "bench")
            second.append(time.perf_counter() - t0)
            before, after = parse_csv(data).records, parse_csv(merged).records
            ok &= again.changed_cells == 0 and path.read_bytes() == merged and all(
                a.raw[: len(b.raw)] == b.raw for b, a in zip(before, after)) and len(before) == len(after)
    figures = {"rows": args.outcome_rows, "changed_cells": res.changed_cells,
               "first_merge_s_median": round(statistics.median(first), 3),
               "repeat_merge_s_median": round(statistics.median(second), 3),
               "other_bytes_untouched_and_idempotent": bool(ok)}
    for key, value in figures.items():
        print(f"{key:>38}  {value}")
    return figures

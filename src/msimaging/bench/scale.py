"""Cost per subject as a study grows: 1, 4 and 8 small phantom subjects through ``msimaging run``.

One phantom study (two visits, four contrasts, ``--scale-resolution`` mm, generated once under
``OUT/scale/``) is run on its first N subjects (``--participant-label``) into a fresh output
folder for each N. Printed: wall seconds, seconds per subject, peak RSS of the process tree, and
the least-squares line ``wall = fixed + per_subject * N``: cost that grows linearly has a small
fixed part, a per-subject slope close to the 1-subject time and a peak RSS that does not grow.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from msimaging.bench.budget import ensure_phantom, run_command
from msimaging.bench.measure import run_measured

NAME = "scale"
HELP = "cost per subject for 1, 4 and 8 small phantom subjects (linear growth)"
PHANTOM_SEED = 21


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale-subjects", type=int, nargs="+", default=[1, 4, 8],
                        help="[scale] study sizes to run (default: 1 4 8)")
    parser.add_argument("--scale-repeats", type=int, default=1, help="[scale] runs per size (medians; default 1)")
    parser.add_argument("--scale-resolution", type=float, default=3.0,
                        help="[scale] phantom voxel size in mm (default 3: small subjects)")


def fit_line(ns: list[int], walls: list[float]) -> tuple[float, float]:
    """Least-squares (fixed_s, per_subject_s) of wall = fixed + per_subject * n."""
    if len(set(ns)) < 2:
        return 0.0, walls[0] / ns[0]
    mn, mw = statistics.fmean(ns), statistics.fmean(walls)
    slope = sum((n - mn) * (w - mw) for n, w in zip(ns, walls)) / sum((n - mn) ** 2 for n in ns)
    return mw - slope * mn, slope


def run(args: argparse.Namespace) -> dict[str, Any]:
    from msimaging.bids import discover
    from msimaging.bench.budget import default_shared_data
    from msimaging.phantom import PhantomOptions

    root = args.out / NAME
    root.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(args.scale_subjects))
    shared = getattr(args, "shared_data", None) or default_shared_data()
    masks = shared / "ms-lesion-masks"
    options = PhantomOptions(subjects=max(sizes), sessions=2, resolution_mm=args.scale_resolution,
                             seed=PHANTOM_SEED, orientation="oblique",
                             lesion_masks_dir=masks if masks.is_dir() else None)
    bids = ensure_phantom(root / "bids", options)
    subjects = sorted(discover(bids).subjects)
    rows = []
    for n in sizes:
        walls, rss, cpu = [], [], []
        for i in range(1, args.scale_repeats + 1):
            out = root / f"n{n}-run-{i}"
            if out.exists():
                shutil.rmtree(out)
            m = run_measured(run_command(bids, out, args.cores, subjects[:n]), root / f"n{n}-run-{i}.log")
            if m.returncode != 0:
                print(f"  {n} subject(s), run {i}: FAILED (exit {m.returncode}, see {root / f'n{n}-run-{i}.log'})")
                continue
            walls.append(m.wall_s)
            rss.append(m.peak_tree_rss_mb)
            cpu.append(m.cpu_s)
            print(f"  {n} subject(s), run {i}: {m.wall_s:7.1f} s wall ({m.wall_s / n:6.1f} s per subject), "
                  f"peak RSS {m.peak_tree_rss_mb:5.0f} MB", flush=True)
        if walls:
            rows.append({"subjects": n, "runs": len(walls), "wall_s": statistics.median(walls),
                         "s_per_subject": statistics.median(walls) / n, "peak_tree_rss_mb": statistics.median(rss),
                         "cpu_s": statistics.median(cpu)})
    figures: dict[str, Any] = {"resolution_mm": args.scale_resolution, "cores": args.cores, "rows": rows}
    if rows:
        fixed, slope = fit_line([r["subjects"] for r in rows], [r["wall_s"] for r in rows])
        figures.update(fixed_s=fixed, per_subject_s=slope)
        one = rows[0]["s_per_subject"]
        print(f"{'subjects':>9}{'wall s':>9}{'s/subject':>11}{'vs first':>10}{'peak RSS MB':>13}{'CPU s':>9}")
        for r in rows:
            print(f"{r['subjects']:>9}{r['wall_s']:>9.1f}{r['s_per_subject']:>11.1f}"
                  f"{r['s_per_subject'] / one:>10.2f}{r['peak_tree_rss_mb']:>13.0f}{r['cpu_s']:>9.1f}")
        print(f"least squares: wall = {fixed:.1f} s + {slope:.1f} s x subjects "
              f"({args.scale_resolution:g} mm phantom subjects, 2 visits, 4 contrasts, {args.cores} cores)")
    (root / "summary.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return figures

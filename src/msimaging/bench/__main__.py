"""Run benchmark sections and print their figures; results also go to bench-results/*.json."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from msimaging.bench import SECTIONS


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m msimaging.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", default=[],
                        help=f"sections to run (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    modules = {name: importlib.import_module(f"msimaging.bench.{name}") for name in SECTIONS}
    for module in modules.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in args.sections or SECTIONS:
        print(f"\n=== {name}: {modules[name].HELP} ===", flush=True)
        figures = modules[name].run(args)
        # a section that found a failed check (e.g. below its naive baseline) says so in its figures
        status = max(status, int(figures.pop("_exit_status", 0)) if isinstance(figures, dict) else 0)
        (args.out / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())

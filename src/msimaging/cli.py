"""The ``msimaging`` command (DESIGN §6). Exit codes: 0 success, 1 pipeline failure, 2 bad input.

``msimaging run`` wraps Snakemake so users need not know its flags, and never hides them:
everything after ``--`` goes to Snakemake unchanged, and the command it runs is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from msimaging import __version__

log = logging.getLogger("msimaging")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or invalid input: exit 2 with one readable line per problem."""

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msimaging", description="MRI imaging endpoints for MS clinical trials.")
    p.add_argument("--version", action="version", version=f"msimaging {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline on a BIDS dataset")
    run.add_argument("bids_dir", type=Path)
    run.add_argument("output_dir", type=Path)
    run.add_argument("--participant-label", nargs="+", default=[], metavar="S")
    run.add_argument("--cores", type=int, default=None,
                     help="CPU cores to use (default: the profile's 'cores', else all of this machine's); "
                          "with --profile slurm: the CPUs of each SLURM job (one subject per job)")
    run.add_argument("--profile", default=None, help="'default' (local, the default), 'slurm' or a profile directory")
    run.add_argument("--outcome-dataset", type=Path, default=None, metavar="CSV",
                     help="the trial's outcome CSV: mri_ columns merged in after the run (backup + audit trail)")
    run.add_argument("--adjudication", type=Path, default=None, metavar="TSV",
                     help="a central reader's lesion decisions (reject/confirm/add), applied to the endpoints")
    run.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides")
    run.add_argument("--dry-run", action="store_true")
    run.epilog = "Arguments after '--' are passed to snakemake unchanged."

    demo = sub.add_parser("demo", help="make a phantom study, run everything, print the endpoints")
    demo.add_argument("output_dir", type=Path, nargs="?", default=Path("demo"))
    demo.add_argument("--cores", type=int, default=max(1, os.cpu_count() or 1))
    demo.add_argument("--resolution", type=float, default=2.0)
    demo.add_argument("--seed", type=int, default=1)

    ph = sub.add_parser("phantom", help="write a phantom BIDS study with known truth")
    ph.add_argument("out_dir", type=Path)
    ph.add_argument("--subjects", type=int, default=1)
    ph.add_argument("--sessions", type=int, default=2)
    ph.add_argument("--resolution", type=float, nargs="+", default=[2.0], metavar="MM",
                    help="voxel size in mm: one value (isotropic) or three (e.g. 0.7 0.7 3)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--orientation", choices=["RAS", "LPS", "oblique"], default="RAS")
    ph.add_argument("--no-skull", action="store_true")
    ph.add_argument("--lesion-masks", type=Path, default=None,
                    help="folder of real MNI lesion masks (default: ../shared/data/ms-lesion-masks when present)")

    ev = sub.add_parser("evaluate", help="compare a lesion mask with a reference mask",
                        description="Voxel Dice, lesion-wise precision/recall/F1 (a lesion is detected when "
                                    "it overlaps the other mask), lesion counts and volumes (mL). The "
                                    "prediction is resampled onto the reference grid when they differ.")
    ev.add_argument("pred_mask", type=Path)
    ev.add_argument("truth_mask", type=Path)
    ev.add_argument("--min-volume-mm3", type=float, default=10.0)
    ev.add_argument("--min-voxels", type=int, default=3)
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")

    va = sub.add_parser("validate", help="check a BIDS dataset's inputs")
    va.add_argument("bids_dir", type=Path)
    va.add_argument("--participant-label", nargs="+", default=[], metavar="S")
    va.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="e.g. validation.min_fov_mm=60 baseline_session=M00 (see config/README.md)")

    sc = sub.add_parser("screenshots", help="screenshots of a run's cohort.html and subject viewer (README)",
                        description="Opens OUTPUT_DIR/cohort.html and a subject page in headless Chromium "
                                    "(make browser) and writes cohort.png, cohort-trajectories.png and viewer.png.")
    sc.add_argument("output_dir", type=Path, help="a finished run's output folder")
    sc.add_argument("--docs", type=Path, default=Path("docs"), help="where the PNGs go (default: docs)")
    sc.add_argument("--subject", default=None, help="the subject whose viewer is shown (default: the first)")

    im = sub.add_parser("import-dicom", help="convert one visit's DICOM series into BIDS (no identifying data)")
    im.add_argument("dicom_dir", type=Path)
    im.add_argument("bids_dir", type=Path)
    im.add_argument("--subject", required=True, metavar="S", help="BIDS subject label (the trial's, never the MRN)")
    im.add_argument("--session", required=True, metavar="V", help="BIDS session label, e.g. M06")
    im.add_argument("--series-map", type=Path, default=None, metavar="FILE",
                    help="YAML/JSON overrides: by_number {N: contrast|skip}, by_description {pattern: ...}")
    im.add_argument("--no-dates", action="store_true",
                    help="keep no real dates: sessions.tsv gets dates shifted so day 0 is 1800-01-01")
    im.add_argument("--date-key", type=Path, default=None, metavar="FILE",
                    help="with --no-dates: private TSV, outside BIDS_DIR, with each subject's real day 0")
    im.add_argument("--overwrite", action="store_true", help="replace the session's images if it exists")
    im.add_argument("--dry-run", action="store_true", help="list the series and decisions, write nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = _parser().parse_args(argv)
    args.snakemake_args = extra
    if extra and args.command != "run":
        print("msimaging: error: arguments after '--' are only accepted by 'run'", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(COMMANDS[args.command](args))
    except UsageError as exc:
        for line in exc.problems:
            print(f"msimaging: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("msimaging: interrupted", file=sys.stderr)
        return 130


# --- run ------------------------------------------------------------------------------------------


def _effective_config(bids_dir: Path, labels: list[str], overrides: list[str],
                      outcome: Path | None, adjudication: Path | None = None) -> dict[str, Any]:
    from msimaging.config import ConfigError, deep_merge, load_config, parse_override

    update: dict[str, Any] = {"bids_dir": str(bids_dir.resolve()),
                              "participant_label": [lab.removeprefix("sub-") for lab in labels]}
    try:
        for text in overrides:
            update = deep_merge(update, parse_override(text))
        if outcome is not None:
            update = deep_merge(update, {"outcome": {"dataset": str(outcome.resolve())}})
        if adjudication is not None:
            update = deep_merge(update, {"outcome": {"adjudication": str(adjudication.resolve())}})
        return load_config(update)
    except ConfigError as exc:
        raise UsageError(*str(exc).splitlines()) from exc


def _profile_dir(profile: str | None) -> Path:
    from msimaging.resources import PROFILES_DIR

    if profile is None:
        return PROFILES_DIR / "default"
    candidate = PROFILES_DIR / profile
    if candidate.is_dir():
        return candidate
    if Path(profile).is_dir():
        return Path(profile).resolve()
    raise UsageError(f"--profile {profile!r}: no such profile (choose from "
                     f"{sorted(p.name for p in PROFILES_DIR.iterdir() if p.is_dir())} or give a directory)")


def _profile_sets(profile: Path | None, key: str) -> bool:
    """Whether the profile's config.yaml sets ``key`` (e.g. ``cores``)."""
    if profile is None or not (profile / "config.yaml").is_file():
        return False
    data = yaml.safe_load((profile / "config.yaml").read_text(encoding="utf-8")) or {}
    return isinstance(data, dict) and key in data


def snakemake_command(output_dir: Path, config_file: Path, cores: int | None, profile: Path | None,
                      dry_run: bool, extra: list[str]) -> list[str]:
    """The Snakemake command line of ``msimaging run``.

    Exactly one profile is used, passed by path (``profiles/default`` unless another is chosen),
    and Snakemake's implicit workflow profile is switched off: a run behaves the same from any
    working directory, and the default profile never overrides keys of the chosen one. ``--cores``
    is passed when given, else left to the profile when it sets ``cores`` (the SLURM profile sizes
    its jobs that way), else all of this machine's cores.
    """
    from msimaging.resources import SNAKEFILE

    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe) if exe.exists() else "snakemake", "--snakefile", str(SNAKEFILE),
           "--directory", str(output_dir), "--configfile", str(config_file)]
    if cores is None and not _profile_sets(profile, "cores"):
        cores = max(1, os.cpu_count() or 1)
    if cores is not None:
        cmd += ["--cores", str(cores)]
    cmd += ["--keep-going", "--rerun-incomplete"]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    cmd += ["--workflow-profile", "none"]
    if dry_run:
        cmd += ["--dry-run"]
    return cmd + list(extra)


def write_run_config(output_dir: Path, config: dict[str, Any]) -> Path:
    """Record the effective configuration in OUTPUT_DIR (rewritten only when it changes)."""
    from msimaging import io

    path = output_dir / "msimaging_config.yaml"
    text = yaml.safe_dump(config, sort_keys=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        io.write_text(path, text)
    return path


def cmd_run(args: argparse.Namespace) -> int:
    from msimaging.bids import discover
    from msimaging.resources import check_installation

    problems = check_installation()
    if problems:
        raise UsageError(*problems)
    if not args.bids_dir.is_dir():
        raise UsageError(f"{args.bids_dir}: BIDS directory not found")
    if args.outcome_dataset is not None and not args.outcome_dataset.is_file():
        raise UsageError(f"--outcome-dataset {args.outcome_dataset}: file not found")
    config = _effective_config(args.bids_dir, args.participant_label, args.overrides, args.outcome_dataset,
                               getattr(args, "adjudication", None))
    _check_outcome_inputs(config)
    study = discover(args.bids_dir, config["participant_label"] or None)
    if not study.subjects:
        raise UsageError(*(study.problems or [f"{args.bids_dir}: no subjects to process"]))
    for line in study.problems:
        print(f"msimaging: warning: {line}", file=sys.stderr)
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    profile = _profile_dir(args.profile)
    cmd = snakemake_command(out, out / "msimaging_config.yaml", args.cores, profile, args.dry_run,
                            list(args.snakemake_args))
    if args.dry_run:
        write_run_config(out, config)
        print("msimaging: running " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
        return EXIT_OK if subprocess.call(cmd) == 0 else EXIT_FAILED
    from msimaging.recovery import (RunLocked, clear_partial_outputs, run_lock, stale_snakemake_locks,
                                    stale_temporary_files)

    try:
        with run_lock(out) as lock_fd:
            config_file = write_run_config(out, config)
            if stale_snakemake_locks(out):  # left by a run that was killed: no live run holds OUTPUT_DIR
                print(f"msimaging: resuming in {out}: removing the lock a stopped run left behind", file=sys.stderr)
                unlock = snakemake_command(out, config_file, 1, profile, False, []) + ["--unlock", "--quiet"]
                subprocess.call(unlock, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for tmp in stale_temporary_files(out):  # half-written files of a killed run: never outputs
                tmp.unlink()
            clear_partial_outputs(out)
            print("msimaging: running " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
            # snakemake inherits the lock, so it stays held while any part of this run is alive
            rc = subprocess.call(cmd, pass_fds=(lock_fd,))
            rc = finish_run(out, study, config, rc)
    except RunLocked as exc:
        raise UsageError(str(exc)) from exc
    if rc == EXIT_OK and config["outcome"]["dataset"]:
        return merge_outcome(out, config)
    if config["outcome"]["dataset"]:
        print(f"msimaging: outcome dataset {config['outcome']['dataset']} not updated (the run did not complete)",
              file=sys.stderr)
    return rc


def _check_outcome_inputs(config: dict[str, Any]) -> None:
    """Before hours of computing: the outcome dataset has its key columns, the reader's file parses."""
    from msimaging.adjudication import AdjudicationError, read_decisions
    from msimaging.merge import MergeError, MergeOptions, parse_csv, plan_merge

    o = config["outcome"]
    if o.get("adjudication"):
        try:
            read_decisions(o["adjudication"])
        except AdjudicationError as exc:
            raise UsageError(*exc.problems) from exc
    if o.get("dataset"):
        path = Path(o["dataset"])
        if not path.is_file():
            raise UsageError(f"--outcome-dataset {path}: file not found")
        try:
            plan_merge(parse_csv(path.read_bytes()), [], MergeOptions.from_config(config))
        except MergeError as exc:
            raise UsageError(f"--outcome-dataset {path}: {exc}") from exc


def merge_outcome(out: Path, config: dict[str, Any]) -> int:
    """Merge endpoints.csv into the trial's outcome dataset and say what changed."""
    from msimaging import io
    from msimaging import layout as L
    from msimaging.merge import MergeError, run_merge

    try:
        result = run_merge(out / L.ENDPOINTS_CSV, config["outcome"]["dataset"], config, out / L.ADJUDICATION_TSV)
    except MergeError as exc:
        raise UsageError(f"--outcome-dataset {config['outcome']['dataset']}: {exc} (nothing written)") from exc
    io.write_json(out / L.OUTCOME_MERGE_JSON, result.to_dict())
    for line in result.summary():
        print(f"msimaging: {line}")
    return EXIT_OK


def finish_run(out: Path, study: Any, config: dict[str, Any], rc: int) -> int:
    """After Snakemake: fill fail rows for subjects that did not finish, print the summary."""
    from msimaging import layout as L
    from msimaging.recovery import failed_subjects, write_partial_outputs

    failed = failed_subjects(out, list(study.subjects))
    if rc != 0 or failed:
        write_partial_outputs(out, study, failed)
        _partial_cohort_page(out, config)
        print(f"msimaging: {len(failed)} of {len(study.subjects)} subject(s) failed (their rows in endpoints.csv "
              "have qc_status=fail):", file=sys.stderr)
        for sub, (reason, log_path) in failed.items():
            print(f"  sub-{sub}: {reason} (log: {log_path})", file=sys.stderr)
        if not failed:
            print("  snakemake failed before or after the subjects' steps; see its messages above", file=sys.stderr)
        print(f"msimaging: endpoints: {out / L.ENDPOINTS_CSV}; fix the inputs named above and run the same "
              "command again (finished steps are not recomputed)", file=sys.stderr)
        return EXIT_FAILED
    print(f"msimaging: endpoints: {out / L.ENDPOINTS_CSV}")
    print(f"msimaging: cohort page: {out / L.COHORT_HTML}")
    for sub in study.subjects:
        print(f"msimaging: QC page: {out / L.qc_page(sub)}")
    return EXIT_OK


def _partial_cohort_page(out: Path, config: dict[str, Any]) -> None:
    """cohort.html over the partial tables, so the failed rows head its list (the next run rebuilds it)."""
    from msimaging import layout as L
    from msimaging.cohort import run_cohort

    try:
        run_cohort(out / L.ENDPOINTS_CSV, out / L.QC_TSV, out / L.COHORT_HTML, config,
                   (config.get("outcome") or {}).get("dataset") or None)
    except Exception as exc:  # the run's failure is what matters; the page is a convenience
        print(f"msimaging: cohort page not written ({exc})", file=sys.stderr)


# --- demo, phantom, evaluate, validate -------------------------------------------------------------


def _default_lesion_masks() -> Path | None:
    from msimaging.resources import ROOT

    candidate = ROOT.parent / "shared" / "data" / "ms-lesion-masks"
    return candidate if candidate.is_dir() else None


def cmd_phantom(args: argparse.Namespace) -> int:
    from msimaging.phantom import PhantomOptions, make_study

    res = args.resolution
    if len(res) not in (1, 3) or any(r <= 0 or r > 10 for r in res):
        raise UsageError("--resolution: give one or three voxel sizes in mm, each in (0, 10]")
    masks = args.lesion_masks if args.lesion_masks is not None else _default_lesion_masks()
    options = PhantomOptions(
        subjects=args.subjects, sessions=args.sessions,
        resolution_mm=res[0] if len(res) == 1 else (res[0], res[1], res[2]),
        seed=args.seed, orientation=args.orientation, skull=not args.no_skull, lesion_masks_dir=masks,
    )
    make_study(args.out_dir, options)
    print(f"msimaging: phantom study written to {args.out_dir} (truth in {args.out_dir / 'derivatives' / 'truth'})")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from msimaging import io
    from msimaging import layout as L
    from msimaging.phantom import PhantomOptions, make_study

    out = args.output_dir.resolve()
    bids = out / "bids"
    derivatives = out / "derivatives"
    print(f"msimaging demo: writing a phantom study to {bids}")
    make_study(bids, PhantomOptions(subjects=1, sessions=2, resolution_mm=args.resolution, seed=args.seed,
                                    lesion_masks_dir=_default_lesion_masks()))
    rc = cmd_run(argparse.Namespace(
        bids_dir=bids, output_dir=derivatives, participant_label=[], cores=args.cores, profile=None,
        outcome_dataset=None, overrides=[], dry_run=False, snakemake_args=[]))
    csv_path = derivatives / L.ENDPOINTS_CSV
    if csv_path.is_file():
        print("\nEndpoints (pipeline):")
        print(_format_table(io.read_table(csv_path)))
        truth = bids / "derivatives" / "truth" / "endpoints.csv"
        if truth.is_file():
            print("\nEndpoints (phantom truth):")
            print(_format_table(io.read_table(truth)))
        for sub in sorted({r["subject"] for r in io.read_table(csv_path)}):
            print(f"\nQC page: {derivatives / L.qc_page(sub)}")
    return rc


def _format_table(rows: list[dict[str, str]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = list(columns or [c for c in rows[0] if c not in ("pipeline_version", "config_sha256", "inputs_sha256",
                                                             "qc_notes")])
    widths = {c: max(len(c), *(len(r.get(c) or "") for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(widths[c]) for c in cols)]
    lines += ["  ".join((r.get(c) or "").rjust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from msimaging.evaluate import evaluate_files, format_agreement
    from msimaging.io import ImageError
    from msimaging.lesions import LesionRules

    for p in (args.pred_mask, args.truth_mask):
        if not p.is_file():
            raise UsageError(f"{p}: file not found")
    if args.min_volume_mm3 < 0 or args.min_voxels < 1:
        raise UsageError("--min-volume-mm3 must be >= 0 and --min-voxels >= 1")
    try:
        result = evaluate_files(str(args.pred_mask), str(args.truth_mask),
                                LesionRules(args.min_volume_mm3, args.min_voxels))
    except (ImageError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_agreement(result))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every input; one line per problem (files relative to BIDS_DIR); exit 2 on any error."""
    from msimaging.validate import InputRules, validate_study

    if not args.bids_dir.is_dir():
        raise UsageError(f"{args.bids_dir}: BIDS directory not found")
    config = _effective_config(args.bids_dir, args.participant_label, args.overrides, None)
    baseline = (config.get("baseline_session") or "").removeprefix("ses-") or None
    try:
        study, results = validate_study(args.bids_dir, config["participant_label"] or None, baseline,
                                        InputRules.from_config(config))
    except OSError as exc:
        raise UsageError(f"{args.bids_dir}: cannot be read ({exc.strerror or exc}); check permissions") from exc
    errors = list(study.problems)
    n_files = 0
    for r in results:
        errors += r.errors
        n_files += len(r.files)
        for w in r.warnings:
            print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors or not study.subjects:
        print(f"msimaging validate: {len(errors)} problem(s) in {args.bids_dir} (file names are relative to it); "
              "fix them and run validate again", file=sys.stderr)
        return EXIT_USAGE
    print(f"msimaging validate: {len(study.subjects)} subject(s), {n_files} image(s): OK")
    return EXIT_OK


def cmd_import_dicom(args: argparse.Namespace) -> int:
    from msimaging.dicom import DicomImportError, format_listing, load_series_map, run_import

    if args.date_key is not None and not args.no_dates:
        raise UsageError("--date-key is only used with --no-dates")
    try:
        series_map = load_series_map(args.series_map) if args.series_map is not None else None
        result = run_import(args.dicom_dir, args.bids_dir, args.subject, args.session, series_map=series_map,
                            keep_dates=not args.no_dates, date_key=args.date_key, overwrite=args.overwrite,
                            dry_run=args.dry_run)
    except DicomImportError as exc:
        raise UsageError(*exc.problems) from exc
    if result.series:
        print(format_listing(result))
    for line in result.warnings:
        print(f"msimaging: warning: {line}", file=sys.stderr)
    if result.problems:
        raise UsageError(*result.problems)
    if args.dry_run:
        print("msimaging import-dicom: dry run, nothing written")
        return EXIT_OK
    for contrast, path in sorted(result.written.items()):
        print(f"msimaging: {contrast}: {path}")
    print(f"msimaging: sub-{result.subject} ses-{result.session} imported (acq_time {result.acq_time}); "
          f"next: msimaging validate {args.bids_dir}")
    return EXIT_OK


def cmd_screenshots(args: argparse.Namespace) -> int:
    from msimaging import layout as L
    from msimaging.browser import BrowserError, page_screenshots

    for name in (L.COHORT_HTML, L.ENDPOINTS_CSV):
        if not (args.output_dir / name).is_file():
            raise UsageError(f"{args.output_dir / name}: not found (run the pipeline first)")
    try:
        shots = page_screenshots(args.output_dir, args.docs, args.subject)
    except BrowserError as exc:
        raise UsageError(str(exc)) from exc
    for path in shots:
        print(f"msimaging: screenshot {path}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "phantom": cmd_phantom, "evaluate": cmd_evaluate,
            "validate": cmd_validate, "import-dicom": cmd_import_dicom, "screenshots": cmd_screenshots}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""After failures and kills: who failed and why, partial group tables, and the output-directory lock.

DESIGN §9: one bad subject never stops the others, and a run killed at any moment (SIGKILL, a
SLURM time limit, a node going down) resumes when it is started again. Snakemake does most of
this (``--keep-going``, ``--rerun-incomplete``, atomic outputs); this module does the rest:

- :func:`run_lock` holds an exclusive ``flock`` on ``OUTPUT_DIR/.msimaging.lock`` for the whole
  run. The kernel drops it when the last process holding it dies, however it dies, so a lock
  that can be taken proves no msimaging run is alive there; Snakemake's own lock left behind
  by a killed run is then stale and :func:`stale_snakemake_locks` finds it for removal, as
  :func:`stale_temporary_files` finds the temporary files of atomic writes it interrupted.
- :func:`failed_subjects` names every subject without its endpoints table, with the first
  line of the failing rule's log that says why (the ``<rule> failed: <reason>`` line that
  :func:`msimaging.runtime.step` writes).
- :func:`write_partial_outputs` writes endpoints.csv (and qc.tsv) with the finished subjects' rows and a
  ``qc_status=fail`` row per session of the others, and records that the table is partial so
  that the next run (:func:`clear_partial_outputs`) rebuilds it from scratch.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The lock file that a live ``msimaging run`` holds in its output directory.
LOCK_NAME = ".msimaging.lock"
#: Written next to endpoints.csv when it holds fail rows written outside Snakemake.
PARTIAL_MARKER = Path("logs") / "partial_outputs.txt"

_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<name>\S+): (?P<message>.*)$")
_FAILED = re.compile(r"^(?P<rule>\w+) failed: (?P<reason>.*)$")


class RunLocked(RuntimeError):
    """Another msimaging run is using the output directory."""


@contextmanager
def run_lock(out: Path) -> Iterator[int]:
    """Hold the output directory's lock; yields its file descriptor (pass it to child processes).

    Raises :class:`RunLocked` when another live process holds it.
    """
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"{out}: another msimaging run is using this output directory; wait for it "
                                "to finish or choose another OUTPUT_DIR") from exc
            raise
        os.set_inheritable(fd, True)
        yield fd
    finally:
        os.close(fd)


def stale_snakemake_locks(out: Path) -> list[Path]:
    """Snakemake lock files in ``out`` (stale when :func:`run_lock` could be taken)."""
    locks = out / ".snakemake" / "locks"
    return sorted(locks.glob("*.lock")) if locks.is_dir() else []


#: The names io.atomic_path gives its temporary files: ``.<stem>.<8 random chars><suffixes>``.
_TEMP_NAME = re.compile(r"^\.[^./]+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)*$")


def stale_temporary_files(out: Path) -> list[Path]:
    """Temporary files that atomic writes of a killed run left behind (never complete outputs).

    Only meaningful while :func:`run_lock` is held (no live run is writing). Snakemake's own
    bookkeeping (``.snakemake``) is left alone.
    """
    if not out.is_dir():
        return []
    found = []
    for path in sorted(out.rglob(".*")):
        rel = path.relative_to(out)
        if rel.parts[0] == ".snakemake" or not path.is_file() or path.name == LOCK_NAME:
            continue
        if _TEMP_NAME.match(path.name):
            found.append(path)
    return found


def failure_reason(log_path: Path) -> str | None:
    """Why the rule that wrote ``log_path`` failed (one line), or None when it did not fail."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    first_error = None
    for line in lines:
        m = _LOG_LINE.match(line)
        if m is None or m["level"] not in ("ERROR", "CRITICAL"):
            continue
        failed = _FAILED.match(m["message"])
        if failed:
            return f"{failed['rule']} failed: {failed['reason']}"
        if first_error is None and m["message"] != "details:":
            first_error = m["message"]
    return first_error


def failed_subjects(out: Path, subjects: list[str]) -> dict[str, tuple[str, str]]:
    """Subjects without their endpoints table: {subject: (reason, log path)}, in ``subjects`` order.

    The reason is taken from the most recently written log of the subject that records a
    failure; without one, the subject is reported as not finished (e.g. the run was stopped).
    """
    from msimaging import layout as L

    failed: dict[str, tuple[str, str]] = {}
    for sub in subjects:
        if (out / L.subject_endpoints(sub)).is_file():
            continue
        logs = sorted((out / "logs").glob(f"*/sub-{sub}[_.]*log"), key=lambda p: (p.stat().st_mtime, str(p)))
        reason, where = "processing did not finish; run again to resume", str(out / "logs")
        for log_path in reversed(logs):
            err = failure_reason(log_path)
            if err:
                reason, where = err, str(log_path)
                break
        failed[sub] = (reason, where)
    return failed


def write_partial_outputs(out: Path, study: Any, failed: dict[str, tuple[str, str]]) -> None:
    """endpoints.csv/json with the finished subjects' rows and qc_status=fail rows for the others."""
    from msimaging import io
    from msimaging import layout as L
    from msimaging.dag import Plan
    from msimaging.endpoints import COLUMNS, fail_row
    from msimaging.outcome import data_dictionary, qc_rows
    from msimaging.qc import QC_COLUMNS

    plan = Plan(study)
    rows: list[dict[str, Any]] = []
    qc: list[dict[str, Any]] = []
    for sub, subject in study.subjects.items():
        table = out / L.subject_endpoints(sub)
        if sub not in failed and table.is_file():
            rows += io.read_table(table)
            reports = [out / r for ses in plan.sessions(sub) for r in plan.step_reports(sub, ses)]
            qc += qc_rows([str(r) for r in reports if r.is_file()])
            continue
        reason = failed.get(sub, ("processing did not finish; run again to resume", ""))[0]
        sessions = [s.label for s in subject.sessions] or [None]
        for i, ses in enumerate(sessions):
            rows.append(fail_row(sub, ses, reason, is_baseline=(i == 0) if ses else None))
            qc.append({"subject": sub, "session": ses, "step": "pipeline", "item": "subject", "metric": "",
                       "value": None, "status": "fail", "note": reason})
    io.write_text(out / PARTIAL_MARKER, "endpoints.csv and qc.tsv hold qc_status=fail rows written after a "
                                        "failed run; the next run rebuilds them\n")
    io.write_table(out / L.ENDPOINTS_CSV, COLUMNS, rows, sep=",")
    io.write_json(out / L.ENDPOINTS_JSON, data_dictionary())
    io.write_table(out / L.QC_TSV, QC_COLUMNS, qc)


def clear_partial_outputs(out: Path) -> list[Path]:
    """Remove group tables written by :func:`write_partial_outputs` so Snakemake rebuilds them."""
    from msimaging import layout as L

    marker = out / PARTIAL_MARKER
    if not marker.is_file():
        return []
    removed = []
    for name in (L.ENDPOINTS_CSV, L.ENDPOINTS_JSON, L.QC_TSV):
        path = out / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    marker.unlink()
    return removed

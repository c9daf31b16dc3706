"""Merging the imaging endpoints into the trial's outcome dataset (DESIGN §5).

The outcome dataset is the analysts' CSV (clinical columns: EDSS, visit dates, arm codes...).
msimaging adds or updates its own ``mri_``-prefixed columns and nothing else:

- rows are matched on the configured subject and visit columns (visit = session label, or the
  configured ``session_to_visit`` mapping); rows are never added, removed or reordered;
- every other cell keeps its exact bytes: the file is parsed into raw fields (quotes included),
  unchanged fields are written back verbatim, so quoting, embedded commas and newlines, line
  endings (LF, CRLF, CR), the delimiter and the encoding (UTF-8 with or without BOM,
  Windows-1252, Latin-1) are preserved;
- a new ``mri_`` column is appended at the end of the header, empty for unmatched rows;
- a cell is written only when its value changes; when nothing changes nothing is written
  (a second identical run leaves the file, its backup set and the audit trail untouched);
- otherwise the original is first copied to ``<name>.<UTC time>.bak<suffix>``, every changed cell
  is appended to ``<name>.audit.csv``, then the file is replaced atomically;
- imaged subjects (or visits) that the dataset lacks are reported, never invented.

Pure functions work on :class:`CsvDocument` (bytes in, bytes out); :func:`run_merge` does the I/O.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io as _io
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from msimaging.endpoints import MEASURE_COLUMNS

log = logging.getLogger(__name__)

#: endpoints.csv columns merged into the outcome dataset (with the configured prefix, ``mri_``).
MERGED_COLUMNS: tuple[str, ...] = (*MEASURE_COLUMNS, "qc_status", "qc_notes", "reader_adjudicated")

#: Columns of ``<name>.audit.csv`` (DESIGN §5, plus where the change came from and why).
AUDIT_COLUMNS: tuple[str, ...] = ("time", "subject", "visit", "column", "old", "new", "pipeline_version",
                                  "source", "reason")

_BOM = b"\xef\xbb\xbf"
_DELIMITERS = (",", ";", "\t")


class MergeError(ValueError):
    """The outcome dataset cannot be merged into safely (nothing was written)."""


# --- a CSV reader that keeps every field's raw text ---------------------------------------------


@dataclass
class Record:
    """One CSV record: its fields as written in the file (quotes kept) and its line ending."""

    raw: list[str]
    eol: str

    @property
    def values(self) -> list[str]:
        return [unquote(f) for f in self.raw]

    def is_blank(self) -> bool:
        return len(self.raw) == 1 and self.raw[0].strip() == ""


@dataclass
class CsvDocument:
    """A delimited text file as records of raw fields, with its encoding, BOM and delimiter."""

    records: list[Record]
    delimiter: str = ","
    encoding: str = "utf-8"
    bom: bool = False

    @property
    def header(self) -> list[str]:
        return self.records[0].values if self.records else []

    def to_bytes(self) -> bytes:
        text = "".join(self.delimiter.join(r.raw) + r.eol for r in self.records)
        return (_BOM if self.bom else b"") + text.encode(self.encoding)


def unquote(raw: str) -> str:
    """The value of a raw CSV field: outer quotes removed and doubled quotes undone."""
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return raw[1:-1].replace('""', '"')
    return raw


def quote(value: str, delimiter: str) -> str:
    """Raw text of a new field: quoted only when it must be (RFC 4180)."""
    if any(ch in value for ch in (delimiter, '"', "\r", "\n")) or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def split_records(text: str, delimiter: str) -> list[Record]:
    """Split CSV text into records of raw fields (RFC 4180 quoting; LF, CRLF or CR endings)."""
    records: list[Record] = []
    fields: list[str] = []
    start = 0
    i = 0
    n = len(text)
    in_quotes = False
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == '"':
                if i + 1 < n and text[i + 1] == '"':
                    i += 2
                    continue
                in_quotes = False
            i += 1
            continue
        if ch == '"' and i == start:
            in_quotes = True
        elif ch == delimiter:
            fields.append(text[start:i])
            start = i + 1
        elif ch in "\r\n":
            eol = "\r\n" if text.startswith("\r\n", i) else ch
            fields.append(text[start:i])
            records.append(Record(fields, eol))
            fields = []
            i += len(eol)
            start = i
            continue
        i += 1
    if in_quotes:
        raise MergeError("the outcome dataset ends inside a quoted field (unbalanced quotes)")
    if start < n or fields:
        fields.append(text[start:n])
        records.append(Record(fields, ""))
    return records


def decode(data: bytes) -> tuple[str, str, bool]:
    """``(text, encoding, bom)``: UTF-8 (BOM kept aside) when valid, else Windows-1252, else Latin-1."""
    bom = data.startswith(_BOM)
    body = data[len(_BOM):] if bom else data
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = body.decode(encoding)
        except UnicodeDecodeError:
            continue
        if text.encode(encoding) == body:
            return text, encoding, bom
    raise MergeError("the outcome dataset's encoding cannot be determined")  # pragma: no cover (latin-1)


def sniff_delimiter(text: str) -> str:
    """The delimiter of the header line: the most frequent of ',', ';', TAB outside quotes."""
    first = split_records(text.split("\n", 1)[0].split("\r", 1)[0], ",")
    header = ",".join(first[0].raw) if first else ""
    counts = {d: 0 for d in _DELIMITERS}
    in_quotes = False
    for ch in header:
        if ch == '"':
            in_quotes = not in_quotes
        elif not in_quotes and ch in counts:
            counts[ch] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def parse_csv(data: bytes, delimiter: str | None = None) -> CsvDocument:
    """Parse a delimited file, keeping everything needed to write it back byte for byte."""
    text, encoding, bom = decode(data)
    delim = delimiter or sniff_delimiter(text)
    return CsvDocument(split_records(text, delim), delim, encoding, bom)


# --- the merge ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeOptions:
    """Config keys ``outcome.*``: which columns identify a row and how columns are named."""

    subject_column: str = "subject"
    visit_column: str = "visit"
    session_to_visit: Mapping[str, str] = field(default_factory=dict)
    prefix: str = "mri_"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "MergeOptions":
        o = cfg.get("outcome", {}) or {}
        return cls(o.get("subject_column", "subject"), o.get("visit_column", "visit"),
                   dict(o.get("session_to_visit") or {}), o.get("prefix", "mri_"))

    def visit_of(self, session: str) -> str:
        s = session.removeprefix("ses-")
        return self.session_to_visit.get(s, self.session_to_visit.get(f"ses-{s}", s))


@dataclass(frozen=True)
class CellChange:
    row: int            # index of the record in the document (0 is the header)
    subject: str
    visit: str
    column: str
    old: str
    new: str


@dataclass
class MergePlan:
    """What a merge would do: cells to change, columns to add, imaging rows without a home."""

    changes: list[CellChange] = field(default_factory=list)
    new_columns: list[str] = field(default_factory=list)
    missing_subjects: list[str] = field(default_factory=list)
    missing_visits: list[tuple[str, str]] = field(default_factory=list)
    matched_rows: int = 0


def _norm_subject(value: str) -> str:
    return value.strip().removeprefix("sub-")


def _norm_visit(value: str) -> str:
    return value.strip()


def plan_merge(doc: CsvDocument, imaging: Sequence[Mapping[str, str]], options: MergeOptions,
               columns: Sequence[str] = MERGED_COLUMNS) -> MergePlan:
    """Match imaging rows (endpoints.csv dicts) to dataset rows and list the cells that change."""
    if not doc.records:
        raise MergeError("the outcome dataset is empty (no header)")
    header = doc.header
    problems = [f"column {c!r} not found in the outcome dataset header (config outcome.{k})"
                for k, c in (("subject_column", options.subject_column), ("visit_column", options.visit_column))
                if c not in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        problems.append(f"the outcome dataset header repeats column(s) {dupes}")
    if problems:
        raise MergeError("; ".join(problems))
    i_sub, i_vis = header.index(options.subject_column), header.index(options.visit_column)
    index: dict[tuple[str, str], list[int]] = {}
    subjects: set[str] = set()
    for r, rec in enumerate(doc.records[1:], start=1):
        if rec.is_blank():
            continue
        vals = rec.values
        sub = _norm_subject(vals[i_sub]) if i_sub < len(vals) else ""
        vis = _norm_visit(vals[i_vis]) if i_vis < len(vals) else ""
        subjects.add(sub)
        index.setdefault((sub, vis), []).append(r)
    # two rows for one subject x visit: refused whatever is imaged (before the pipeline runs, too)
    repeated = [f"sub {sub!r} visit {vis!r} is in rows {rows}" for (sub, vis), rows in index.items()
                if len(rows) > 1 and sub and vis]
    if repeated:
        raise MergeError("rows of the outcome dataset are not unique for: " + "; ".join(repeated))
    out_cols = [options.prefix + c for c in columns]
    plan = MergePlan(new_columns=[c for c in out_cols if c not in header])
    full_header = header + plan.new_columns
    position = {c: j for j, c in enumerate(full_header)}
    ambiguous = []
    missing_subjects: set[str] = set()
    for row in imaging:
        sub = _norm_subject(row["subject"])
        visit = options.visit_of(row["session"])
        hits = index.get((sub, visit)) or index.get((sub, f"ses-{visit}"))
        if not hits:
            if sub in subjects:
                plan.missing_visits.append((sub, visit))
            else:
                missing_subjects.add(sub)
            continue
        if len(hits) > 1:
            ambiguous.append(f"sub {sub!r} visit {visit!r} matches rows {hits}")
            continue
        r = hits[0]
        plan.matched_rows += 1
        vals = doc.records[r].values
        for src, dst in zip(columns, out_cols):
            j = position[dst]
            old = vals[j] if j < len(vals) else ""
            new = row.get(src)
            new = "" if new is None else str(new)
            if old != new:
                plan.changes.append(CellChange(r, sub, visit, dst, old, new))
    if ambiguous:
        raise MergeError("rows of the outcome dataset are not unique for: " + "; ".join(ambiguous))
    plan.missing_subjects = sorted(missing_subjects)
    return plan


def apply_plan(doc: CsvDocument, plan: MergePlan) -> CsvDocument:
    """A new document with the plan's columns appended and changed cells rewritten."""
    records = [Record(list(r.raw), r.eol) for r in doc.records]
    header = records[0]
    width = len(header.raw)
    header.raw += [quote(c, doc.delimiter) for c in plan.new_columns]
    position = {unquote(f): j for j, f in reversed(list(enumerate(header.raw)))}
    if plan.new_columns:  # keep the table rectangular: new columns are empty where nothing matched
        for rec in records[1:]:
            if not rec.is_blank() and len(rec.raw) >= width:
                rec.raw += [""] * len(plan.new_columns)
    for ch in plan.changes:
        rec = records[ch.row]
        j = position[ch.column]
        if len(rec.raw) <= j:
            rec.raw += [""] * (j + 1 - len(rec.raw))
        rec.raw[j] = quote(ch.new, doc.delimiter)
    return CsvDocument(records, doc.delimiter, doc.encoding, doc.bom)


# --- files --------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    dataset: str
    changed_cells: int
    matched_rows: int
    new_columns: list[str]
    missing_subjects: list[str]
    missing_visits: list[tuple[str, str]]
    backup: str | None
    audit: str

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "changed_cells": self.changed_cells, "matched_rows": self.matched_rows,
                "new_columns": self.new_columns, "missing_subjects": self.missing_subjects,
                "missing_visits": [list(v) for v in self.missing_visits], "backup": self.backup,
                "audit": self.audit}

    def summary(self) -> list[str]:
        lines = [f"outcome dataset {self.dataset}: {self.matched_rows} row(s) matched, "
                 f"{self.changed_cells} cell(s) changed"
                 + (f" (backup {self.backup}, audit {self.audit})" if self.changed_cells else "")]
        if self.missing_subjects:
            lines.append("imaged subjects not in the outcome dataset (no rows added): "
                         + ", ".join(self.missing_subjects))
        if self.missing_visits:
            lines.append("imaged visits not in the outcome dataset (no rows added): "
                         + ", ".join(f"{s}/{v}" for s, v in self.missing_visits))
        return lines


def audit_path(dataset: Path) -> Path:
    """``trial.csv`` -> ``trial.audit.csv`` beside it."""
    return dataset.with_name(f"{dataset.stem}.audit.csv")


def backup_path(dataset: Path, now: _dt.datetime) -> Path:
    stamp = now.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return dataset.with_name(f"{dataset.stem}.{stamp}.bak{dataset.suffix}")


def audit_rows(plan: MergePlan, now: _dt.datetime, pipeline_version: str,
               reasons: Mapping[tuple[str, str, str], str] | None = None) -> list[dict[str, str]]:
    """One audit row per changed cell; cells changed by reader adjudication say so and why."""
    reasons = reasons or {}
    time = now.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for ch in plan.changes:
        reason = reasons.get((ch.subject, ch.visit, ch.column))
        rows.append({"time": time, "subject": ch.subject, "visit": ch.visit, "column": ch.column, "old": ch.old,
                     "new": ch.new, "pipeline_version": pipeline_version,
                     "source": "reader adjudication" if reason else "pipeline", "reason": reason or ""})
    return rows


def append_audit(path: Path, rows: list[dict[str, str]]) -> None:
    """Append rows to the audit CSV (header written once), replacing the file atomically."""
    from msimaging import io

    existing = path.read_bytes() if path.is_file() else b""
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, lineterminator="\n")
    if not existing:
        writer.writeheader()
    elif not existing.endswith(b"\n"):
        buf.write("\n")
    writer.writerows(rows)
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(existing + buf.getvalue().encode("utf-8"))


def merge_dataset(dataset: str | Path, imaging: Sequence[Mapping[str, str]], options: MergeOptions,
                  pipeline_version: str, reasons: Mapping[tuple[str, str, str], str] | None = None,
                  now: _dt.datetime | None = None) -> MergeResult:
    """Merge imaging rows into the dataset file (backup, audit, atomic replace); see the module doc."""
    from msimaging import io

    path = Path(dataset)
    original = path.read_bytes()
    doc = parse_csv(original)
    plan = plan_merge(doc, imaging, options)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    audit = audit_path(path)
    backup: Path | None = None
    if plan.changes or plan.new_columns:
        merged = apply_plan(doc, plan).to_bytes()
        backup = backup_path(path, now)
        shutil.copy2(path, backup)
        append_audit(audit, audit_rows(plan, now, pipeline_version, reasons))
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(merged)
        log.debug("merged %d cell(s) into %s (backup %s)", len(plan.changes), path, backup)
    return MergeResult(str(path), len(plan.changes), plan.matched_rows, plan.new_columns, plan.missing_subjects,
                       plan.missing_visits, str(backup) if backup else None, str(audit))


def run_merge(endpoints_csv: str | Path, dataset: str | Path, cfg: Mapping[str, Any],
              adjudication_log: str | Path | None = None) -> MergeResult:
    """Merge endpoints.csv into the outcome dataset named by ``--outcome-dataset``.

    ``adjudication_log`` (``adjudication.tsv`` written by the outcome step) gives the reason of
    every cell that reader adjudication changed, for the audit trail.
    """
    from msimaging import __version__, io

    options = MergeOptions.from_config(cfg)
    imaging = io.read_table(endpoints_csv)
    reasons: dict[tuple[str, str, str], str] = {}
    if adjudication_log is not None and Path(adjudication_log).is_file():
        for r in io.read_table(adjudication_log):
            key = (_norm_subject(r["subject"]), options.visit_of(r["session"]), options.prefix + r["column"])
            reasons[key] = r["reason"]
    return merge_dataset(dataset, imaging, options, __version__, reasons)

"""Reader adjudication: a central reader rejects, confirms or adds counted lesions.

Every counted lesion of a subject is listed in its *lesion inventory*
(``sub-S/sub-S_desc-counted_lesions.tsv``, written with the QC page, whose thumbnails carry the
same ids):

- T2 lesions: ``lesion_id`` is the label of the session's ``label-lesion_dseg`` (as in the
  session's ``lesions.tsv``), with its status vs baseline and vs the previous visit;
- Gd+ lesions: ``lesion_id`` is ``Gd<k>``, ``k`` the label :func:`lesions.label_lesions` gives the
  session's enhancing mask, with the T2 lesions it overlaps.

The reader's TSV (``--adjudication FILE``, config ``outcome.adjudication``) has the columns

``subject  session  lesion_id  decision  reader  reason  [lesion_type  x_ras_mm  y_ras_mm  z_ras_mm]``

``decision`` is ``reject`` (not a lesion, or not new/enhancing), ``confirm`` (checked, kept) or
``add`` (a lesion the pipeline missed, given by its RAS coordinate in mm on the session's
reference grid and its ``lesion_type``: ``T2`` counts in the T2 count, ``new`` in the T2 count
and as new vs baseline and vs the previous visit, ``Gd`` as a Gd+ lesion). ``reject`` and ``add``
need a ``reason``.

Adjudication is applied to endpoints.csv by the outcome step without recomputing any image:
each session's counts are recomputed from its inventory with and without the decisions
(:func:`session_counts`) and the difference is applied to the pipeline's values; NA stays NA.
Rejected lesions take their volume out of the volume columns; added lesions have no outline, so
volumes do not include them (said in ``qc_notes``). Every session with a decision gets
``reader_adjudicated=true`` and its decisions in ``qc_notes``; every changed cell is listed in
``adjudication.tsv`` (and, when merged, in the outcome dataset's audit trail).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

DECISIONS = ("reject", "confirm", "add")
ADDED_TYPES = ("T2", "new", "Gd")
REQUIRED_COLUMNS = ("subject", "session", "lesion_id", "decision", "reader", "reason")
COORD_COLUMNS = ("x_ras_mm", "y_ras_mm", "z_ras_mm")

INVENTORY_COLUMNS: tuple[str, ...] = (
    "subject", "session", "lesion_id", "kind", "volume_mm3", "x_ras_mm", "y_ras_mm", "z_ras_mm",
    "status_vs_baseline", "status_vs_previous", "overlaps", "counted_in",
)

#: Columns of adjudication.tsv: one row per endpoints cell changed by adjudication.
LOG_COLUMNS: tuple[str, ...] = ("subject", "session", "column", "pipeline_value", "adjudicated_value", "reason")

#: Two added lesions (new T2 and Gd) closer than this are one lesion for the CUA count.
SAME_LESION_MM = 5.0

ACTIVE = ("new", "enlarging")


class AdjudicationError(ValueError):
    """The reader's file cannot be applied; one readable line per problem."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# --- the lesion inventory ----------------------------------------------------------------------


@dataclass(frozen=True)
class InventoryLesion:
    subject: str
    session: str
    lesion_id: str
    kind: str                          # "T2" or "Gd"
    volume_mm3: float
    centroid_ras_mm: tuple[float, float, float]
    status_vs_baseline: str | None = None
    status_vs_previous: str | None = None
    overlaps: tuple[str, ...] = ()     # T2: Gd ids it overlaps ("Gd0" = enhancement below lesion size); Gd: T2 ids

    def counted_in(self) -> list[str]:
        """The endpoints columns this lesion adds one to."""
        if self.kind == "Gd":
            return ["gd_lesion_count", "cua_lesion_count"]
        cols = ["t2_lesion_count"]
        for ref, status in (("baseline", self.status_vs_baseline), ("previous", self.status_vs_previous)):
            if status in ACTIVE:
                cols.append(f"{status}_t2_vs_{ref}")
        if self.status_vs_previous in ACTIVE and not self.overlaps:
            cols.append("cua_lesion_count")
        return cols

    def to_row(self) -> dict[str, Any]:
        x, y, z = self.centroid_ras_mm
        return {"subject": self.subject, "session": self.session, "lesion_id": self.lesion_id, "kind": self.kind, "volume_mm3": self.volume_mm3,
                "x_ras_mm": x, "y_ras_mm": y, "z_ras_mm": z, "status_vs_baseline": self.status_vs_baseline,
                "status_vs_previous": self.status_vs_previous, "overlaps": " ".join(self.overlaps),
                "counted_in": " ".join(self.counted_in())}

    @classmethod
    def from_row(cls, r: Mapping[str, str]) -> "InventoryLesion":
        def na(v: str | None) -> str | None:
            return None if v in (None, "", "NA") else v

        return cls(r["subject"], r["session"], r["lesion_id"], r["kind"], float(r["volume_mm3"]),
                   (float(r["x_ras_mm"]), float(r["y_ras_mm"]), float(r["z_ras_mm"])),
                   na(r["status_vs_baseline"]), na(r["status_vs_previous"]),
                   tuple((r.get("overlaps") or "").split()))


def gd_id(k: int) -> str:
    return f"Gd{k}"


def session_inventory(subject: str, session: str, t2_labels: np.ndarray, lesion_rows: Sequence[Mapping[str, str]],
                      gd_mask: np.ndarray | None, affine: np.ndarray, rules: Any) -> list[InventoryLesion]:
    """Every counted lesion of one session.

    ``t2_labels`` is the session's lesion dseg, ``lesion_rows`` its lesions.tsv (status columns),
    ``gd_mask`` its enhancing mask (None when Gd+ is not measured). Gd+ lesions are labelled with
    :func:`lesions.label_lesions`, as the endpoints count them.
    """
    from scipy import ndimage as ndi

    from msimaging.lesions import label_lesions, lesion_stats

    rows = {str(r["lesion_id"]): r for r in lesion_rows}
    gd_labels = label_lesions(gd_mask, affine, rules) if gd_mask is not None else None
    t2_boxes = ndi.find_objects(np.asarray(t2_labels, dtype=np.int32))  # each lesion is looked at in its box
    out: list[InventoryLesion] = []
    for s in lesion_stats(t2_labels, affine):
        r = rows.get(str(s.lesion_id), {})
        overlaps: tuple[str, ...] = ()
        if gd_mask is not None and gd_labels is not None:
            box = t2_boxes[s.lesion_id - 1]
            inside = t2_labels[box] == s.lesion_id
            gd_box = gd_labels[box]
            ks = sorted(set(np.unique(gd_box[inside]).tolist()) - {0})
            overlaps = tuple(gd_id(k) for k in ks)
            if np.asarray(gd_mask)[box][inside & (gd_box == 0)].any():
                overlaps += (gd_id(0),)
        out.append(InventoryLesion(subject, session, str(s.lesion_id), "T2", s.volume_mm3, s.centroid_ras_mm,
                                   _na(r.get("status")), _na(r.get("status_vs_previous")), overlaps))
    if gd_labels is not None:
        gd_boxes = ndi.find_objects(gd_labels)
        for s in lesion_stats(gd_labels, affine):
            box = gd_boxes[s.lesion_id - 1]
            ts = sorted(set(np.unique(t2_labels[box][gd_labels[box] == s.lesion_id]).tolist()) - {0})
            out.append(InventoryLesion(subject, session, gd_id(s.lesion_id), "Gd", s.volume_mm3, s.centroid_ras_mm,
                                       overlaps=tuple(str(t) for t in ts)))
    return out


def _na(v: Any) -> str | None:
    return None if v in (None, "", "NA", "baseline") else str(v)


# --- the reader's decisions --------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    subject: str
    session: str
    lesion_id: str
    decision: str
    reader: str
    reason: str
    lesion_type: str | None = None
    coord_ras_mm: tuple[float, float, float] | None = None
    line: int = 0

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        if self.decision == "add":
            x, y, z = self.coord_ras_mm or (0.0, 0.0, 0.0)
            return (f"{self.lesion_type} lesion added at RAS ({x:.1f}, {y:.1f}, {z:.1f}) mm by "
                    f"{self.reader}{why}")
        verb = {"reject": "rejected", "confirm": "confirmed"}[self.decision]
        return f"lesion {self.lesion_id} {verb} by {self.reader}{why}"


def parse_decisions(rows: Sequence[Mapping[str, str | None]], source: str = "adjudication") -> list[Decision]:
    """Validate the reader's rows; raises :class:`AdjudicationError` with every problem."""
    problems: list[str] = []
    if rows:
        missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
        if missing:
            raise AdjudicationError([f"{source}: missing column(s) {missing}; needed: {list(REQUIRED_COLUMNS)}"])
    out: list[Decision] = []
    for i, r in enumerate(rows, start=2):
        def get(k: str) -> str:
            return (r.get(k) or "").strip()

        where = f"{source} line {i}"
        sub, ses = get("subject").removeprefix("sub-"), get("session").removeprefix("ses-")
        dec, reader, reason, lid = get("decision").lower(), get("reader"), get("reason"), get("lesion_id")
        if not sub or not ses:
            problems.append(f"{where}: subject and session are required")
        if dec not in DECISIONS:
            problems.append(f"{where}: decision {dec!r} is not one of {list(DECISIONS)}")
        if not reader:
            problems.append(f"{where}: reader is required")
        if dec in ("reject", "add") and not reason:
            problems.append(f"{where}: a {dec} needs a reason")
        coord = None
        ltype = None
        if dec == "add":
            ltype = next((t for t in ADDED_TYPES if t.lower() == get("lesion_type").lower()), None)
            if ltype is None:
                problems.append(f"{where}: an added lesion needs lesion_type, one of {list(ADDED_TYPES)}")
            try:
                coord = tuple(float(get(c)) for c in COORD_COLUMNS)
            except ValueError:
                problems.append(f"{where}: an added lesion needs numeric {', '.join(COORD_COLUMNS)} (RAS mm)")
        elif dec in ("reject", "confirm") and not lid:
            problems.append(f"{where}: {dec} needs the lesion_id shown on the QC page")
        out.append(Decision(sub, ses, lid, dec, reader, reason, ltype, coord, i))  # type: ignore[arg-type]
    seen: dict[tuple[str, str, str], Decision] = {}
    for d in out:
        if d.decision == "add":
            continue
        key = (d.subject, d.session, d.lesion_id.lower())
        if key in seen and seen[key].decision != d.decision:
            problems.append(f"{source} lines {seen[key].line} and {d.line}: lesion {d.lesion_id} of sub-{d.subject} "
                            f"ses-{d.session} is both {seen[key].decision}ed and {d.decision}ed; keep one")
        seen.setdefault(key, d)
    if problems:
        raise AdjudicationError(problems)
    return out


def read_decisions(path: str | Path) -> list[Decision]:
    from msimaging import io

    p = Path(path)
    if not p.is_file():
        raise AdjudicationError([f"{p}: adjudication file not found"])
    return parse_decisions(io.read_table(p, sep="\t"), source=p.name)


# --- counts ------------------------------------------------------------------------------------


def session_counts(lesions: Iterable[InventoryLesion], rejected: set[str] = frozenset(),  # type: ignore[assignment]
                   added: Sequence[Decision] = ()) -> dict[str, float]:
    """The lesion endpoints of one session from its inventory, rejected ids left out, added ones in.

    CUA = kept Gd+ lesions + kept new/enlarging (vs previous) T2 lesions overlapping no kept Gd+
    lesion (``Gd0``, enhancement too small to be a lesion, cannot be rejected) + added lesions,
    a new T2 lesion added within :data:`SAME_LESION_MM` of an added Gd+ lesion counted once.
    """
    rej = {r.lower() for r in rejected}
    kept = [les for les in lesions if les.lesion_id.lower() not in rej]
    t2 = [les for les in kept if les.kind == "T2"]
    gd = [les for les in kept if les.kind == "Gd"]
    kept_gd = {les.lesion_id for les in gd} | {gd_id(0)}
    c: dict[str, float] = {
        "t2_lesion_count": len(t2),
        "t2_lesion_volume_ml": sum(les.volume_mm3 for les in t2) / 1000.0,
        "gd_lesion_count": len(gd),
        "gd_lesion_volume_ml": sum(les.volume_mm3 for les in gd) / 1000.0,
    }
    for ref, attr in (("baseline", "status_vs_baseline"), ("previous", "status_vs_previous")):
        for status in ACTIVE:
            c[f"{status}_t2_vs_{ref}"] = sum(1 for les in t2 if getattr(les, attr) == status)
    c["cua_lesion_count"] = len(gd) + sum(
        1 for les in t2 if les.status_vs_previous in ACTIVE and not (set(les.overlaps) & kept_gd))
    added_gd = [d for d in added if d.lesion_type == "Gd"]
    for d in added:
        if d.lesion_type in ("T2", "new"):
            c["t2_lesion_count"] += 1
        if d.lesion_type == "new":
            for ref in ("baseline", "previous"):
                c[f"new_t2_vs_{ref}"] += 1
            near_gd = any(np.linalg.norm(np.subtract(d.coord_ras_mm, g.coord_ras_mm)) < SAME_LESION_MM  # type: ignore
                          for g in added_gd)
            c["cua_lesion_count"] += 0 if near_gd else 1
        if d.lesion_type == "Gd":
            c["gd_lesion_count"] += 1
            c["cua_lesion_count"] += 1
    return c


# --- applying decisions to endpoints rows ------------------------------------------------------


@dataclass
class Applied:
    rows: list[dict[str, Any]]
    log: list[dict[str, Any]] = field(default_factory=list)


def _fmt(value: float, is_count: bool) -> str:
    from msimaging.io import format_value

    return str(int(round(value))) if is_count else format_value(float(value))


def apply_decisions(rows: Sequence[Mapping[str, str]], inventory: Sequence[InventoryLesion],
                    decisions: Sequence[Decision]) -> Applied:
    """endpoints.csv rows (strings) with the reader's decisions applied; see the module doc."""
    problems: list[str] = []
    by_session: dict[tuple[str, str], list[Decision]] = {}
    for d in decisions:
        by_session.setdefault((d.subject, d.session), []).append(d)
    keys = {(r["subject"], r["session"]) for r in rows}
    for (sub, ses), ds in by_session.items():
        if (sub, ses) not in keys:
            problems.append(f"adjudication line {ds[0].line}: sub-{sub} ses-{ses} is not in endpoints.csv")
    out: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    inventory_by = _by_session(inventory)
    for row in rows:
        new = dict(row)
        new["reader_adjudicated"] = "true" if row.get("reader_adjudicated") == "true" else "false"
        ds = by_session.get((row["subject"], row["session"]), [])
        if not ds:
            out.append(new)
            continue
        lesions = inventory_by.get((row["subject"], row["session"]), [])
        ids = {les.lesion_id.lower(): les for les in lesions}
        for d in ds:
            if d.decision != "add" and d.lesion_id.lower() not in ids:
                problems.append(f"adjudication line {d.line}: sub-{d.subject} ses-{d.session} has no counted "
                                f"lesion {d.lesion_id!r} (ids: {', '.join(les.lesion_id for les in lesions) or 'none'})")
            if d.decision == "add" and d.lesion_type == "new" and row.get("is_baseline") == "true":
                problems.append(f"adjudication line {d.line}: a new lesion cannot be added at the baseline visit")
            if d.decision == "add" and d.lesion_type == "Gd" and row.get("gd_lesion_count") in ("NA", "", None):
                problems.append(f"adjudication line {d.line}: Gd+ is not measured in sub-{d.subject} "
                                f"ses-{d.session} (NA); a Gd+ lesion cannot be added")
        rejected = {d.lesion_id for d in ds if d.decision == "reject"}
        added = [d for d in ds if d.decision == "add"]
        before = session_counts(lesions)
        after = session_counts(lesions, rejected, added)
        reason = "; ".join(d.describe() for d in ds)
        for col, value in after.items():
            old = row.get(col)
            delta = value - before[col]
            if old in (None, "", "NA") or abs(delta) < 1e-12:
                continue
            is_count = not col.endswith("_ml")
            adjusted = max(0.0, float(old) + delta)
            text = _fmt(adjusted, is_count)
            if text != old:
                new[col] = text
                log_rows.append({"subject": row["subject"], "session": row["session"], "column": col,
                                 "pipeline_value": old, "adjudicated_value": text, "reason": reason})
        if new["reader_adjudicated"] != "true":
            log_rows.append({"subject": row["subject"], "session": row["session"], "column": "reader_adjudicated",
                             "pipeline_value": new["reader_adjudicated"], "adjudicated_value": "true",
                             "reason": reason})
        new["reader_adjudicated"] = "true"
        notes = [n for n in (row.get("qc_notes") or "").split("; ") if n]
        notes.append(f"reader adjudication: {reason}")
        if added:
            notes.append("reader adjudication: volumes exclude added lesions (no outline)")
        new["qc_notes"] = "; ".join(notes)
        log_rows.append({"subject": row["subject"], "session": row["session"], "column": "qc_notes",
                         "pipeline_value": row.get("qc_notes") or "", "adjudicated_value": new["qc_notes"],
                         "reason": reason})
        out.append(new)
    if problems:
        raise AdjudicationError(problems)
    return Applied(out, log_rows)


def _by_session(inventory: Sequence[InventoryLesion]) -> dict[tuple[str, str], list[InventoryLesion]]:
    out: dict[tuple[str, str], list[InventoryLesion]] = {}
    for les in inventory:
        out.setdefault((les.subject, les.session), []).append(les)
    return out

"""The trial at a glance: ``cohort.html``, one self-contained page for the whole study.

Built from the group tables only (``endpoints.csv`` and ``qc.tsv`` rows as dicts of strings):

- one row per subject x visit with its qc_status, the endpoints and a link to the subject's QC page;
- each subject's trajectory over visits (T2 lesion volume and count, new/enlarging and Gd+ counts,
  BPF, PBVC) against days since baseline;
- the cohort distribution of every QC figure of ``qc.tsv`` and of the lesion and brain volumes, with
  the subject x visits outside the expected range marked. The range is robust: median +- k x MAD
  (MAD scaled by 1.4826 to a normal SD, ``cohort.outlier_k``, floored at 1 % of the median so
  identical values do not make every small difference an outlier), from at least 3 values;
- what to look at first: failed and warned rows, PBVC beyond ``cohort.max_abs_pbvc_per_year`` per year,
  new T2 and Gd+ counts far above the cohort's, and the marked QC figures.

Blinded by default. The plots are grouped by treatment arm only when the config names the arm
column (``cohort.arm_column``), says the trial is unblinded (``cohort.unblinded``) and the outcome
dataset has that column; otherwise the outcome dataset is not even read and no arm appears.

Plotting functions are pure (rows in, PNG bytes out); :func:`cohort_html` assembles the page and
:func:`run_cohort` reads the files.
"""

from __future__ import annotations

import base64
import html
import io as _io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Row = Mapping[str, str]

#: Scale of the median absolute deviation to a normal standard deviation.
MAD_TO_SD = 1.4826
#: The robust scale is at least this fraction of |median| (identical values are not outliers of each other).
MIN_RELATIVE_SCALE = 0.01
#: Fewest values from which a range is estimated.
MIN_VALUES = 3
#: Counts are flagged above median + k x max(scaled MAD, this) (counts of 0-2 have MAD 0).
MIN_COUNT_SCALE = 1.0
DAYS_PER_YEAR = 365.25

#: Trajectory panels: endpoints.csv column and title.
TRAJECTORIES = (
    ("t2_lesion_volume_ml", "T2 lesion volume (mL)"),
    ("t2_lesion_count", "T2 lesion count"),
    ("new_t2_vs_baseline", "new T2 vs baseline"),
    ("enlarging_t2_vs_baseline", "enlarging T2 vs baseline"),
    ("new_t2_vs_previous", "new T2 vs previous visit"),
    ("gd_lesion_count", "Gd+ lesion count"),
    ("bpf", "brain parenchymal fraction"),
    ("pbvc_vs_baseline", "PBVC vs baseline (%)"),
)

#: Endpoints whose cohort distribution is shown next to the QC figures (lesion load, brain size).
ENDPOINT_DISTRIBUTIONS = (
    ("t2_lesion_volume_ml", "lesion load: T2 lesion volume (mL)"),
    ("t2_lesion_count", "T2 lesion count"),
    ("brain_volume_ml", "brain parenchymal volume (mL)"),
    ("icv_ml", "intracranial volume (mL)"),
    ("bpf", "brain parenchymal fraction"),
)

#: Counts flagged when far above the cohort's.
FLAGGED_COUNTS = (
    ("gd_lesion_count", "Gd+ lesions"),
    ("new_t2_vs_baseline", "new T2 lesions vs baseline"),
    ("new_t2_vs_previous", "new T2 lesions vs previous visit"),
)

#: Columns of the cohort table (endpoints.csv names), after subject and session.
TABLE_COLUMNS = ("days_since_baseline", "qc_status", "t2_lesion_count", "t2_lesion_volume_ml",
                 "new_t2_vs_baseline", "enlarging_t2_vs_baseline", "new_t2_vs_previous",
                 "enlarging_t2_vs_previous", "gd_lesion_count", "cua_lesion_count", "brain_volume_ml", "bpf",
                 "pbvc_vs_baseline", "qc_notes")

NO_ARM = "(no arm)"
STATUS_COLOURS = {"pass": "#2a7", "warn": "#e90", "fail": "#d22"}
OUTLIER_COLOUR = "#d22"


@dataclass(frozen=True)
class CohortOptions:
    """Config keys ``cohort.*``."""

    arm_column: str = ""
    unblinded: bool = False
    outlier_k: float = 3.5
    max_abs_pbvc_per_year: float = 3.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "CohortOptions":
        c = cfg.get("cohort") or {}
        return cls(str(c.get("arm_column") or ""), bool(c.get("unblinded", False)),
                   float(c.get("outlier_k", 3.5)), float(c.get("max_abs_pbvc_per_year", 3.0)))

    @property
    def wants_arms(self) -> bool:
        """Whether the arm may be read at all (an arm column named and the trial unblinded)."""
        return self.unblinded and bool(self.arm_column)


# --- numbers ------------------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """A table cell as a float; None for NA, empty or non-numeric cells."""
    if value is None:
        return None
    try:
        x = float(str(value).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class RobustRange:
    """The expected range of a figure in the cohort: median +- k x robust scale."""

    median: float
    scale: float
    k: float
    n: int

    @property
    def low(self) -> float:
        return self.median - self.k * self.scale

    @property
    def high(self) -> float:
        return self.median + self.k * self.scale

    def outside(self, value: float) -> bool:
        return value < self.low or value > self.high

    def describe(self) -> str:
        return f"median {_fmt(self.median)}, expected {_fmt(self.low)} to {_fmt(self.high)} (n={self.n})"


def robust_range(values: Sequence[float], k: float, min_scale: float = 0.0) -> RobustRange | None:
    """median +- k x max(1.4826 MAD, 1 % of |median|, ``min_scale``); None from fewer than 3 values."""
    vals = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    if len(vals) < MIN_VALUES:
        return None
    med = _median(vals)
    mad = _median(sorted(abs(v - med) for v in vals))
    scale = max(MAD_TO_SD * mad, MIN_RELATIVE_SCALE * abs(med), min_scale)
    if scale == 0:
        scale = 1e-12
    return RobustRange(med, scale, k, len(vals))


def _median(sorted_vals: Sequence[float]) -> float:
    n = len(sorted_vals)
    mid = n // 2
    return sorted_vals[mid] if n % 2 else 0.5 * (sorted_vals[mid - 1] + sorted_vals[mid])


def _fmt(x: float | None) -> str:
    if x is None:
        return "NA"
    if x == 0:
        return "0"
    mag = abs(x)
    if mag >= 100:
        return f"{x:.0f}"
    if mag >= 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def annual_pbvc(row: Row) -> float | None:
    """PBVC per year (%/year) of a follow-up row; None at baseline or without PBVC or days."""
    pbvc, days = number(row.get("pbvc_vs_baseline")), number(row.get("days_since_baseline"))
    if pbvc is None or days is None or days <= 0 or row.get("is_baseline") == "true":
        return None
    return pbvc / (days / DAYS_PER_YEAR)


# --- the QC figures -----------------------------------------------------------------------------


#: QC metrics for which only a high value is a problem (motion), or only a low one (similarity).
HIGH_IS_BAD = ("rotation_deg", "brain_shift_mm", "translation_mm")
LOW_IS_BAD = ("nmi", "ncc", "correlation", "gradient_correlation", "dice_vs_morphological")


def direction(metric: str) -> str:
    """Which side of the expected range is marked: ``high``, ``low`` or ``both``."""
    return "high" if metric in HIGH_IS_BAD else "low" if metric in LOW_IS_BAD else "both"


@dataclass(frozen=True)
class Figure:
    """One figure measured per subject x visit: its values and their expected range."""

    key: str
    title: str
    values: tuple[tuple[str, str, float], ...]  # (subject, session, value)
    range: RobustRange | None
    side: str = "both"  # the side of the range that is marked (see direction)

    def outliers(self) -> list[tuple[str, str, float]]:
        if self.range is None:
            return []
        rng = self.range
        return [v for v in self.values
                if (self.side != "low" and v[2] > rng.high) or (self.side != "high" and v[2] < rng.low)]


def _is_count(values: Sequence[float]) -> bool:
    return all(float(v).is_integer() for v in values)


def qc_figures(qc_rows: Sequence[Row], k: float) -> list[Figure]:
    """Every numeric QC figure of qc.tsv (one per step/item/metric), with its expected range."""
    groups: dict[tuple[str, str, str], list[tuple[str, str, float]]] = {}
    for r in qc_rows:
        x = number(r.get("value"))
        if x is None:
            continue
        key = (r.get("step", ""), r.get("item", ""), r.get("metric", ""))
        groups.setdefault(key, []).append((r.get("subject", ""), r.get("session", ""), x))
    out = []
    for (step, item, metric), vals in sorted(groups.items()):
        title = f"{step} / {item}: {metric}" if item and item != metric else f"{step}: {metric}"
        xs = [v[2] for v in vals]
        rng = robust_range(xs, k, MIN_COUNT_SCALE if _is_count(xs) else 0.0)
        out.append(Figure(f"{step}.{item}.{metric}", title, tuple(vals), rng, direction(metric)))
    return out


def endpoint_figures(rows: Sequence[Row], k: float) -> list[Figure]:
    out = []
    for col, title in ENDPOINT_DISTRIBUTIONS:
        vals = tuple((r["subject"], r["session"], x) for r in rows if (x := number(r.get(col))) is not None)
        xs = [v[2] for v in vals]
        out.append(Figure(f"endpoint.{col}", title, vals,
                          robust_range(xs, k, MIN_COUNT_SCALE if col.endswith("_count") else 0.0)))
    return out


# --- what to look at first ----------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    subject: str
    session: str
    what: str
    why: str
    severity: int  # 0 fail, 1 warn, 2 implausible value, 3 count far above the cohort, 4 QC figure outlier


def look_first(rows: Sequence[Row], figures: Sequence[Figure], opts: CohortOptions) -> list[Finding]:
    """Rows an analyst should open first, most serious first."""
    found: list[Finding] = []
    for r in rows:
        status = r.get("qc_status", "")
        if status in ("fail", "warn"):
            found.append(Finding(r["subject"], r["session"], f"qc_status {status}",
                                 r.get("qc_notes") or "(no notes)", 0 if status == "fail" else 1))
        per_year = annual_pbvc(r)
        if per_year is not None and abs(per_year) > opts.max_abs_pbvc_per_year:
            found.append(Finding(r["subject"], r["session"], "implausible PBVC",
                                 f"PBVC {_fmt(number(r.get('pbvc_vs_baseline')))} % over "
                                 f"{r.get('days_since_baseline')} days = {per_year:+.1f} %/year, beyond "
                                 f"+-{_fmt(opts.max_abs_pbvc_per_year)} %/year", 2))
    for col, name in FLAGGED_COUNTS:
        vals = [(r, x) for r in rows if (x := number(r.get(col))) is not None]
        rng = robust_range([x for _, x in vals], opts.outlier_k, MIN_COUNT_SCALE)
        if rng is None:
            continue
        for r, x in vals:
            if x > rng.high:
                found.append(Finding(r["subject"], r["session"], f"many {name}",
                                     f"{x:.0f} {name}, cohort {rng.describe()}", 3))
    for fig in figures:
        for sub, ses, x in fig.outliers():
            found.append(Finding(sub, ses, f"outside the expected range: {fig.title}",
                                 f"{_fmt(x)}; cohort {fig.range.describe()}", 4))  # type: ignore[union-attr]
    return sorted(found, key=lambda f: (f.severity, f.subject, f.session, f.what))


# --- treatment arms (unblinded trials only) -----------------------------------------------------


def arms_from_dataset(data: bytes, subject_column: str, arm_column: str) -> dict[str, str] | None:
    """Subject -> arm from the outcome dataset's bytes; None when it has no such column."""
    from msimaging.merge import parse_csv

    doc = parse_csv(data)
    header = doc.header
    if arm_column not in header or subject_column not in header:
        return None
    si, ai = header.index(subject_column), header.index(arm_column)
    arms: dict[str, str] = {}
    for rec in doc.records[1:]:
        if rec.is_blank():
            continue
        vals = rec.values
        if max(si, ai) < len(vals) and vals[ai].strip():
            arms.setdefault(vals[si].strip().removeprefix("sub-"), vals[ai].strip())
    return arms


@dataclass(frozen=True)
class Grouping:
    """How the plots are grouped: by subject (blinded) or by treatment arm (unblinded)."""

    arms: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def by_arm(self) -> bool:
        return bool(self.arms)

    def arm(self, subject: str) -> str:
        return self.arms.get(subject, NO_ARM)

    def groups(self, subjects: Sequence[str]) -> list[str]:
        """The arms of these subjects, sorted, then "(no arm)" when one of them has none."""
        arms = {self.arm(s) for s in subjects}
        return sorted(arms - {NO_ARM}) + ([NO_ARM] if NO_ARM in arms else [])


def grouping(opts: CohortOptions, dataset: bytes | None, subject_column: str) -> Grouping:
    """Blinded unless the config asks for arms, the trial is unblinded and the dataset has the column."""
    if not opts.wants_arms:
        return Grouping(note="Blinded: no treatment arm is shown (cohort.unblinded is false or cohort.arm_column "
                             "is empty).")
    if dataset is None:
        return Grouping(note="Not grouped by arm: no outcome dataset (outcome.dataset) to read the arm from.")
    arms = arms_from_dataset(dataset, subject_column, opts.arm_column)
    if not arms:
        return Grouping(note=f"Not grouped by arm: the outcome dataset has no column {opts.arm_column!r} "
                             "(cohort.arm_column) with values.")
    return Grouping(arms=arms, note=f"Unblinded: plots grouped by treatment arm (column {opts.arm_column!r}).")


# --- figures ------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, dpi: int = 80) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _plt().close(fig)
    return buf.getvalue()


def _colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _visit_x(rows: Sequence[Row]) -> dict[tuple[str, str], float]:
    """x of each row: days since baseline, else the visit's index within the subject (when days are NA)."""
    out: dict[tuple[str, str], float] = {}
    index: dict[str, int] = {}
    for r in rows:
        sub = r["subject"]
        days = number(r.get("days_since_baseline"))
        out[(sub, r["session"])] = days if days is not None else float(index.get(sub, 0))
        index[sub] = index.get(sub, 0) + 1
    return out


def plot_trajectories(rows: Sequence[Row], group: Grouping) -> bytes:
    """Each subject's endpoints over visits, one panel per endpoint; coloured by subject or arm."""
    plt = _plt()
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    keys = group.groups(subjects) if group.by_arm else subjects
    colours = _colours(keys)
    xs = _visit_x(rows)
    ncol = 4
    nrow = math.ceil(len(TRAJECTORIES) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 2.4 * nrow + 0.5), squeeze=False)
    for ax, (col, title) in zip(axes.ravel(), TRAJECTORIES):
        for sub in subjects:
            pts = sorted((xs[(r["subject"], r["session"])], y) for r in rows
                         if r["subject"] == sub and (y := number(r.get(col))) is not None)
            if not pts:
                continue
            colour = colours[group.arm(sub) if group.by_arm else sub]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=colour, lw=1.2, ms=3.5, alpha=0.85)
            ax.annotate(sub, pts[-1], xytext=(2, 0), textcoords="offset points", fontsize=5, color=colour,
                        va="center")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(TRAJECTORIES):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("days since baseline", fontsize=7)
    if len(keys) <= 20:
        handles = [plt.Line2D([], [], color=colours[k], marker="o", lw=1.2, label=k if group.by_arm else f"sub-{k}")
                   for k in keys]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(keys), 10), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if len(keys) <= 20 else 0, 1, 1))
    return _png(fig)


def plot_distribution(fig_data: Figure, group: Grouping) -> bytes:
    """The cohort's values of one figure as a strip plot: expected range shaded, values outside it marked."""
    plt = _plt()
    lanes = group.groups([v[0] for v in fig_data.values]) if group.by_arm else ["cohort"]
    fig, ax = plt.subplots(figsize=(6.2, 0.55 + 0.42 * len(lanes)))
    rng = fig_data.range
    if rng is not None:
        ax.axvspan(rng.low, rng.high, color="#9c9", alpha=0.25, lw=0)
        ax.axvline(rng.median, color="#575", lw=0.8)
    outliers = set((s, v) for s, v, _ in fig_data.outliers())
    for lane, name in enumerate(lanes):
        pts = [v for v in fig_data.values if not group.by_arm or group.arm(v[0]) == name]
        for i, (sub, ses, x) in enumerate(pts):
            y = lane + 0.25 * (((i * 0.618034) % 1.0) - 0.5)  # deterministic jitter
            out = (sub, ses) in outliers
            ax.plot([x], [y], "o", ms=5 if out else 3.5, color=OUTLIER_COLOUR if out else "#357",
                    alpha=0.95 if out else 0.7)
            if out:
                ax.annotate(f"{sub} {ses}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6,
                            color=OUTLIER_COLOUR)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes if group.by_arm else [""], fontsize=7)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(fig_data.title, fontsize=8, loc="left")
    fig.tight_layout()
    return _png(fig)


# --- the page -----------------------------------------------------------------------------------


def _img(png: bytes, alt: str, css: str = "figure") -> str:
    return (f'<img class="{css}" alt="{html.escape(alt)}" title="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def _link(subject: str, session: str | None = None) -> str:
    from msimaging import layout as L

    target = L.qc_page(subject) + (f"#ses-{session}" if session else "")
    return f"<a href='{html.escape(target)}'>sub-{html.escape(subject)}</a>"


def table_html(rows: Sequence[Row], group: Grouping) -> str:
    cols = ["subject", "session", *(["arm"] if group.by_arm else []), *TABLE_COLUMNS]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        sub, ses, status = r["subject"], r["session"], r.get("qc_status", "")
        cells = [f"<td>{_link(sub, ses)}</td>", f"<td>{html.escape(ses)}</td>"]
        if group.by_arm:
            cells.append(f"<td>{html.escape(group.arm(sub))}</td>")
        for c in TABLE_COLUMNS:
            val = r.get(c, "")
            css = f" class='status-{html.escape(status)}'" if c == "qc_status" else " class='notes'" \
                if c == "qc_notes" else ""
            cells.append(f"<td{css}>{html.escape(val if val is not None else '')}</td>")
        body.append(f"<tr data-subject='{html.escape(sub)}' data-session='{html.escape(ses)}'>{''.join(cells)}</tr>")
    return (f"<div class='wide'><table id='cohort-table'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table></div>")


def findings_html(findings: Sequence[Finding]) -> str:
    if not findings:
        return "<p id='look-first' data-count='0'>Nothing stands out: every row passed QC and every figure is " \
               "within the cohort's expected range.</p>"
    items = "".join(f"<li class='severity-{f.severity}'>{_link(f.subject, f.session)} ses-{html.escape(f.session)}: "
                    f"<b>{html.escape(f.what)}</b>: {html.escape(f.why)}</li>" for f in findings)
    return f"<ol id='look-first' data-count='{len(findings)}'>{items}</ol>"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1em 2em;background:#fafafa;color:#111}"
    "table{border-collapse:collapse;font-size:11px;margin:.4em 0}td,th{border:1px solid #bbb;padding:2px 5px}"
    "th{background:#eee;position:sticky;top:0}img.figure{max-width:100%;display:block;margin:.3em 0}"
    "img.dist{max-width:48%;margin:2px}.dists{display:flex;flex-wrap:wrap}"
    ".note{color:#555;font-size:12px}td.status-pass{background:#dfd}td.status-warn{background:#fe9}"
    "td.status-fail{background:#f99}#look-first li{margin:2px 0;font-size:13px}"
    ".severity-0 b{color:#b00}.severity-1 b{color:#a60}td.notes{min-width:32em}.wide{overflow-x:auto}"
)


def cohort_html(rows: Sequence[Row], qc_rows: Sequence[Row], opts: CohortOptions,
                group: Grouping | None = None) -> str:
    """The whole page (self-contained: figures are data: URIs, no script or style is fetched)."""
    from msimaging import __version__

    group = group or Grouping(note="Blinded: no treatment arm is shown.")
    figures = qc_figures(qc_rows, opts.outlier_k)
    endpoint_figs = endpoint_figures(rows, opts.outlier_k)
    findings = look_first(rows, [*endpoint_figs, *figures], opts)
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    counts = {s: sum(1 for r in rows if r.get("qc_status") == s) for s in ("pass", "warn", "fail")}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>msimaging cohort</title>"
        f"<style>{_STYLE}</style></head><body>",
        "<h1>msimaging cohort</h1>",
        f"<p id='cohort-status' data-subjects='{len(subjects)}' data-rows='{len(rows)}' "
        f"data-blinded='{'false' if group.by_arm else 'true'}'>{len(subjects)} subjects, {len(rows)} subject x "
        f"visits: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail. msimaging {__version__}.</p>",
        f"<p class='note' id='blinding'>{html.escape(group.note)}</p>",
        "<h2>Look at these first</h2>",
        "<p class='note'>Failed and warned rows; PBVC beyond "
        f"+-{_fmt(opts.max_abs_pbvc_per_year)} %/year (cohort.max_abs_pbvc_per_year); new T2 or Gd+ counts above "
        f"the cohort median + {_fmt(opts.outlier_k)} x max(1.4826 MAD, 1); figures outside the expected range "
        "below.</p>",
        findings_html(findings),
        "<h2>Every subject x visit</h2><p class='note'>The subject link opens its QC page at the visit "
        "(interactive viewer, lesion thumbnails, registration checks). Values as in endpoints.csv.</p>",
        table_html(rows, group),
        "<h2>Trajectories</h2><p class='note'>One line per subject"
        + (", coloured by treatment arm" if group.by_arm else "")
        + "; x: days since baseline (visit number where the date is unknown).</p>",
        _img(plot_trajectories(rows, group), "trajectories"),
        "<h2>Cohort distributions</h2><p class='note'>Every subject x visit as a dot. Expected range (shaded): "
        f"median +- {_fmt(opts.outlier_k)} x robust SD, the robust SD being 1.4826 x the median absolute deviation "
        "(at least 1 % of the median, and at least 1 for counts), from at least 3 values (cohort.outlier_k). Red "
        "dots, labelled, are outside it; motion figures (" + ", ".join(HIGH_IS_BAD) + ") only above it, "
        "similarity figures (" + ", ".join(LOW_IS_BAD) + ") only below. Lesion and brain volumes from "
        "endpoints.csv, then every QC figure of qc.tsv.</p>",
    ]
    dists = []
    for fig in [*endpoint_figs, *figures]:
        if not fig.values:
            continue
        dists.append(_img(plot_distribution(fig, group), f"distribution {fig.title}", "dist"))
    parts.append(f"<div class='dists'>{''.join(dists)}</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def run_cohort(endpoints_csv: str | Path, qc_tsv: str | Path, out_html: str | Path, cfg: Mapping[str, Any],
               dataset: str | Path | None = None) -> None:
    """Read the group tables (and, for an unblinded trial, the outcome dataset's arm column); write the page."""
    from msimaging import io

    opts = CohortOptions.from_config(cfg)
    rows = io.read_table(endpoints_csv)
    qc_rows = io.read_table(qc_tsv) if Path(qc_tsv).is_file() else []
    data = Path(dataset).read_bytes() if opts.wants_arms and dataset else None  # blinded: never read
    group = grouping(opts, data, str((cfg.get("outcome") or {}).get("subject_column") or "subject"))
    io.write_text(out_html, cohort_html(rows, qc_rows, opts, group))
    log.info("cohort page %s: %d rows, %s", out_html, len(rows), "by arm" if group.by_arm else "blinded")

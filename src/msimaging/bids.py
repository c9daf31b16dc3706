"""BIDS input discovery and the one function that names every derivative file.

Discovery only looks at file names (never opens images), so it cannot fail on a corrupt file;
:mod:`msimaging.validate` is where files are opened and checked.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

#: Contrast keys used throughout msimaging, in processing order of preference.
CONTRASTS = ("FLAIR", "T2w", "T1w", "ceT1w")
#: Contrasts that can serve as a session's reference grid, in order of preference.
REFERENCE_CONTRASTS = ("FLAIR", "T2w")

#: BIDS entity order for derivative names (subset msimaging uses).
ENTITY_ORDER = ("sub", "ses", "ce", "space", "label", "desc", "from", "to", "mode")

_LABEL = r"[A-Za-z0-9]+"
_INPUT_RE = re.compile(
    rf"^sub-(?P<sub>{_LABEL})(?:_ses-(?P<ses>{_LABEL}))?(?:_acq-(?P<acq>{_LABEL}))?"
    rf"(?:_ce-(?P<ce>{_LABEL}))?(?:_rec-(?P<rec>{_LABEL}))?(?:_run-(?P<run>\d+))?"
    r"_(?P<suffix>T1w|T2w|FLAIR)\.nii(?:\.gz)?\Z"
)
SAFE_LABEL_RE = re.compile(rf"^{_LABEL}\Z")  # .match and .fullmatch agree; no trailing newline
#: A file name that looks like one of msimaging's inputs (checked against the BIDS pattern).
_CONTRAST_HINT_RE = re.compile(r"(T1w|T2w|FLAIR)", re.IGNORECASE)


def is_safe_label(label: str) -> bool:
    """True for a BIDS label msimaging accepts: ASCII letters and digits only (no '_', '-', '/', spaces)."""
    return SAFE_LABEL_RE.fullmatch(label) is not None


def one_line(text: str) -> str:
    """``text`` on one printable line: newlines and other control characters are escaped."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def display_path(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when inside it (how problems name files), else as given."""
    if root is not None:
        try:
            return one_line(str(Path(path).relative_to(root)))
        except ValueError:
            pass
    return one_line(str(path))


#: Session label used when a subject has no ses- folders (a subject without sessions is one session).
DEFAULT_SESSION = "01"


def contrast_entities(contrast: str) -> tuple[dict[str, str], str]:
    """BIDS entities and suffix of a contrast key (``ceT1w`` -> ``ce-gadolinium`` + ``T1w``)."""
    if contrast == "ceT1w":
        return {"ce": "gadolinium"}, "T1w"
    if contrast in ("T1w", "T2w", "FLAIR"):
        return {}, contrast
    raise ValueError(f"unknown contrast {contrast!r}; expected one of {CONTRASTS}")


def bids_name(subject: str, session: str | None, suffix: str, ext: str = ".nii.gz",
              datatype: str | None = "anat", **entities: str) -> str:
    """Relative path of a derivative file, entities in BIDS order.

    ``bids_name("p01", "M06", "mask", label="lesion")`` ->
    ``sub-p01/ses-M06/anat/sub-p01_ses-M06_label-lesion_mask.nii.gz``. Wildcards such as
    ``"{subject}"`` may be passed as values to build Snakemake patterns.
    """
    ents = {"sub": subject, "ses": session, **{k.replace("_", ""): v for k, v in entities.items()}}
    unknown = set(ents) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{k}-{ents[k]}" for k in ENTITY_ORDER if ents.get(k) is not None]
    name = "_".join(parts + [suffix]) + ext
    folders = [f"sub-{subject}"]
    if session is not None:
        folders.append(f"ses-{session}")
    if datatype:
        folders.append(datatype)
    return "/".join(folders + [name])


def contrast_name(subject: str, session: str | None, contrast: str, ext: str = ".nii.gz",
                  **entities: str) -> str:
    """Derivative name of an image of ``contrast`` (for example ``desc="preproc"``)."""
    ents, suffix = contrast_entities(contrast)
    return bids_name(subject, session, suffix, ext, **ents, **entities)


@dataclass(frozen=True)
class Session:
    subject: str
    label: str
    images: dict[str, Path]
    acq_time: datetime | None = None

    @property
    def reference(self) -> str | None:
        """The session's reference contrast (FLAIR, else T2w), or None if it has neither."""
        for contrast in REFERENCE_CONTRASTS:
            if contrast in self.images:
                return contrast
        return None

    @property
    def contrasts(self) -> list[str]:
        return [c for c in CONTRASTS if c in self.images]


@dataclass(frozen=True)
class Subject:
    label: str
    sessions: tuple[Session, ...]
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def baseline(self) -> Session:
        return self.sessions[0]

    def session(self, label: str) -> Session:
        for s in self.sessions:
            if s.label == label:
                return s
        raise KeyError(f"sub-{self.label} has no session {label!r}")

    def previous(self, label: str) -> Session | None:
        labels = [s.label for s in self.sessions]
        i = labels.index(label)
        return self.sessions[i - 1] if i > 0 else None


@dataclass
class Study:
    bids_dir: Path
    subjects: dict[str, Subject] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def sessions(self) -> list[Session]:
        return [s for sub in self.subjects.values() for s in sub.sessions]


def natural_key(label: str) -> tuple:
    """Sort key that orders M6 before M12 and 2 before 10."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", label))


def _parse_time(text: str) -> datetime | None:
    text = text.strip()
    if not text or text.lower() == "n/a":
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def read_sessions_tsv(path: Path, root: Path | None = None) -> tuple[dict[str, datetime | None], list[str]]:
    """acq_time per session label from a BIDS ``sub-S_sessions.tsv`` (and any problems)."""
    times: dict[str, datetime | None] = {}
    problems: list[str] = []
    if not path.is_file():
        return times, problems
    shown = display_path(path, root)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return times, [one_line(f"{shown}: unreadable sessions table ({exc}); save it as UTF-8 "
                                "tab-separated text or remove it")]
    if "session_id" not in columns:
        return times, [one_line(f"{shown}: no 'session_id' column (columns: {', '.join(columns)}); "
                                "add it (values ses-<label>) or remove the file")]
    for row in rows:
        sid = (row.get("session_id") or "").strip()
        if not sid.startswith("ses-"):
            problems.append(one_line(f"{shown}: session_id {sid!r} does not start with 'ses-'; "
                                     "write ses-<label>"))
            continue
        if sid[4:] in times:
            problems.append(one_line(f"{shown}: {sid} appears in more than one row; keep one row per session"))
            continue
        raw = row.get("acq_time") or ""
        parsed = _parse_time(raw)
        if raw.strip() and raw.strip().lower() != "n/a" and parsed is None:
            problems.append(one_line(f"{shown}: acq_time {raw!r} of {sid} is not ISO 8601; "
                                     "write YYYY-MM-DDThh:mm:ss"))
        times[sid[4:]] = parsed
    return times, problems


def _order_sessions(sessions: list[Session], baseline: str | None,
                    tsv: str) -> tuple[list[Session], list[str], list[str]]:
    """Sessions in time order, with (problems, warnings); see DESIGN §2 for the rule."""
    problems: list[str] = []
    warns: list[str] = []
    by_label = sorted(sessions, key=lambda s: natural_key(s.label))
    keys: dict[tuple, str] = {}
    for s in by_label:
        key = natural_key(s.label)
        if key in keys:
            problems.append(f"sub-{s.subject}: ses-{keys[key]} and ses-{s.label} are the same visit by label "
                            "(case and leading zeros are ignored when ordering); merge or rename one")
        keys.setdefault(key, s.label)
    timed = [s for s in sessions if s.acq_time is not None]
    if timed and len(timed) != len(sessions):
        missing = ", ".join(f"ses-{s.label}" for s in by_label if s.acq_time is None)
        problems.append(f"{tsv}: acq_time is missing for {missing} while other sessions have one, so the visits "
                        "cannot be ordered in time; give every session an acq_time (or none)")
    if timed and len(timed) == len(sessions):
        ordered = sorted(sessions, key=lambda s: (s.acq_time, natural_key(s.label)))
        times = [s.acq_time for s in ordered]
        if len(set(times)) != len(times):
            problems.append(f"{tsv}: two sessions share an acq_time, so the visits cannot be ordered in time; "
                            "correct the acq_time values")
        elif [s.label for s in ordered] != [s.label for s in by_label]:
            warns.append(f"{tsv}: sessions ordered by acq_time ({', '.join(s.label for s in ordered)}) differ "
                         "from their label order; check the acq_time values (they decide the baseline)")
    else:
        ordered = by_label
    if baseline:
        names = [s.label for s in ordered]
        if baseline in names:
            i = names.index(baseline)
            ordered = [ordered[i]] + ordered[:i] + ordered[i + 1:]
        elif sessions:
            problems.append(f"sub-{sessions[0].subject}: the configured baseline_session ses-{baseline} does not "
                            f"exist (sessions: {', '.join(names)}); correct baseline_session")
    return ordered, [one_line(p) for p in problems], [one_line(w) for w in warns]


def discover(bids_dir: str | Path, participant_labels: list[str] | None = None,
             baseline_session: str | None = None) -> Study:
    """Find subjects, sessions and contrasts in a BIDS dataset (file names only).

    Problems name files relative to ``bids_dir``. A subject with problems is still listed (so a
    run can report it); a folder whose label is unsafe is not, and goes to ``Study.problems``.
    """
    root = Path(bids_dir)
    study = Study(bids_dir=root)
    if not root.is_dir():
        study.problems.append(one_line(f"{root}: BIDS directory not found"))
        return study
    wanted = {p.removeprefix("sub-") for p in participant_labels} if participant_labels else None
    sub_dirs = sorted((p for p in root.glob("sub-*") if p.is_dir()), key=lambda p: p.name)
    seen: dict[str, str] = {}
    for sub_dir in sub_dirs:
        label = sub_dir.name[4:]
        if wanted is not None and label not in wanted:
            continue
        if not is_safe_label(label):
            study.problems.append(one_line(
                f"{display_path(sub_dir, root)}: subject label {label!r} is not a BIDS label (ASCII letters and "
                "digits only); rename the folder and its files"))
            continue
        if label.lower() in seen:
            study.problems.append(
                f"sub-{seen[label.lower()]} and sub-{label} differ only in letter case (one subject on "
                "case-insensitive file systems); rename or merge them")
        seen.setdefault(label.lower(), label)
        study.subjects[label] = _discover_subject(root, sub_dir, label, baseline_session)
    study.subjects = dict(sorted(study.subjects.items(), key=lambda kv: natural_key(kv[0])))
    if wanted is not None:
        for missing in sorted(wanted - set(study.subjects) - {d.name[4:] for d in sub_dirs}):
            study.problems.append(one_line(f"{root}: participant sub-{missing} requested but not found"))
    if not study.subjects and not study.problems:
        study.problems.append(one_line(f"{root}: no sub-* folders found; is this a BIDS dataset?"))
    return study


def _discover_subject(root: Path, sub_dir: Path, label: str, baseline_session: str | None) -> Subject:
    problems: list[str] = []
    tsv = sub_dir / f"sub-{label}_sessions.tsv"
    times, tsv_problems = read_sessions_tsv(tsv, root)
    problems += tsv_problems
    ses_dirs = sorted((p for p in sub_dir.glob("ses-*") if p.is_dir()), key=lambda p: p.name)
    layouts: list[tuple[str, Path]] = []
    if ses_dirs:
        for ses_dir in ses_dirs:
            ses = ses_dir.name[4:]
            if not is_safe_label(ses):
                problems.append(one_line(
                    f"{display_path(ses_dir, root)}: session label {ses!r} is not a BIDS label (ASCII letters and "
                    "digits only); rename the folder and its files"))
                continue
            layouts.append((ses, ses_dir / "anat"))
        if (sub_dir / "anat").is_dir() and any((sub_dir / "anat").iterdir()):
            problems.append(f"{display_path(sub_dir / 'anat', root)}: images outside ses- folders while the subject "
                            "has sessions; move them into their ses- folder")
    else:
        layouts.append((DEFAULT_SESSION, sub_dir / "anat"))
    sessions: list[Session] = []
    for ses, anat in layouts:
        images, img_problems = _discover_images(root, anat, label, None if not ses_dirs else ses)
        problems += img_problems
        if not images:
            problems.append(f"{display_path(anat, root)}: no T1w, ce-gadolinium T1w, T2w or FLAIR images found; "
                            "add them or remove the folder")
            continue
        sessions.append(Session(subject=label, label=ses, images=images, acq_time=times.get(ses)))
    for sid in sorted(set(times) - {ses for ses, _ in layouts}):
        problems.append(one_line(f"{display_path(tsv, root)}: lists ses-{sid}, which has no folder; "
                                 "remove the row or add the session"))
    ordered, order_problems, warns = _order_sessions(sessions, baseline_session, display_path(tsv, root))
    problems += order_problems
    for s in ordered:
        if s.reference is None:
            problems.append(f"sub-{label} ses-{s.label}: neither FLAIR nor T2w is present; lesion endpoints need "
                            "one of them: add it or leave the session out")
    return Subject(label=label, sessions=tuple(ordered), problems=tuple(problems), warnings=tuple(warns))


def _discover_images(root: Path, anat: Path, subject: str,
                     session: str | None) -> tuple[dict[str, Path], list[str]]:
    images: dict[str, Path] = {}
    problems: list[str] = []
    if not anat.is_dir():
        return images, problems
    found: dict[str, list[Path]] = {}
    for path in sorted(anat.iterdir()):
        shown = display_path(path, root)
        if path.name.startswith("."):  # hidden files (macOS ._ copies, editors) are not data
            continue
        if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
            continue
        m = _INPUT_RE.fullmatch(path.name)
        if m is None:
            if _CONTRAST_HINT_RE.search(path.name):
                problems.append(f"{shown}: name is not a BIDS anat name (sub-<S>[_ses-<V>]_<contrast>.nii.gz, "
                                "labels of letters and digits); rename it")
            continue
        if m["sub"] != subject or (m["ses"] or None) != session:
            problems.append(f"{shown}: subject/session in the file name do not match its folder; rename it")
            continue
        if not path.is_file():
            what = "a broken symbolic link" if path.is_symlink() else "not a regular file"
            problems.append(f"{shown}: is {what}; restore the image file")
            continue
        suffix = m["suffix"]
        contrast = "ceT1w" if suffix == "T1w" and m["ce"] else suffix
        found.setdefault(contrast, []).append(path)
    for contrast, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(f"{display_path(anat, root)}: {len(paths)} candidate {contrast} images ({names}); "
                            "keep one")
        images[contrast] = paths[0]
    return images, [one_line(p) for p in problems]

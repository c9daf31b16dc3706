"""Merging endpoints into the trial's outcome dataset: properties over generated CSV files."""

from __future__ import annotations

import csv
import datetime as dt
import io as _io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msimaging.merge import (AUDIT_COLUMNS, MERGED_COLUMNS, MergeError, MergeOptions, audit_path, merge_dataset,
                             parse_csv, plan_merge)

# Cell text an analyst's CSV can hold: commas, quotes, semicolons, tabs, newlines, accents, spaces.
_ALPHABET = st.sampled_from(list("abcXYZ019 ,;\"'\t\n.-éüß€") + ["EDSS 3,5", "  ", "\r\n"])
CELL = st.lists(_ALPHABET, max_size=6).map("".join)
DIALECTS = st.fixed_dictionaries({
    "delimiter": st.sampled_from([",", ";", "\t"]),
    "lineterminator": st.sampled_from(["\n", "\r\n"]),
    "quoting": st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
})
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1"])
NOW = dt.datetime(2026, 11, 25, 10, 0, 0, tzinfo=dt.timezone.utc)


def _encodable(text: str, encoding: str) -> str:
    return text.encode(encoding, errors="replace").decode(encoding)


def _write_csv(rows: list[list[str]], dialect: dict, encoding: str, final_newline: bool) -> bytes:
    buf = _io.StringIO()
    csv.writer(buf, **dialect).writerows(rows)
    text = buf.getvalue()
    if not final_newline:
        text = text[: -len(dialect["lineterminator"])]
    return text.encode(encoding)


@st.composite
def datasets(draw):
    """(bytes, encoding, dialect, header, rows, imaging rows, expected missing subjects)."""
    encoding = draw(ENCODINGS)
    dialect = draw(DIALECTS)
    n_extra = draw(st.integers(0, 3))
    header = ["subject", "visit"] + [f"clin{i}" for i in range(n_extra)]
    subjects = draw(st.lists(st.sampled_from(["p01", "p02", "p03", "sub-p04", "x9"]), min_size=1, max_size=4,
                             unique=True))
    visits = draw(st.lists(st.sampled_from(["M00", "M06", "M12", "SCR"]), min_size=1, max_size=3, unique=True))
    keys = [(s, v) for s in subjects for v in visits]
    rows = [[s, v] + [_encodable(draw(CELL), encoding) for _ in range(n_extra)] for s, v in keys]
    rows = draw(st.permutations(rows))
    data = _write_csv([header, *rows], dialect, encoding, draw(st.booleans()))
    imaged = draw(st.lists(st.sampled_from(keys), unique=True))
    ghosts = draw(st.lists(st.sampled_from(["q07", "q08"]), unique=True))
    imaging = [_imaging_row(s.removeprefix("sub-"), v, draw(st.integers(0, 20))) for s, v in imaged]
    imaging += [_imaging_row(g, "M00", 1) for g in ghosts]
    return data, encoding, dialect, header, rows, imaging, sorted(ghosts)


def _imaging_row(subject: str, session: str, count: int) -> dict[str, str]:
    row = {c: "NA" for c in MERGED_COLUMNS}
    row.update(subject=subject, session=session, t2_lesion_count=str(count), t2_lesion_volume_ml=f"{count * 0.1:.4f}",
               qc_status="pass", qc_notes="gd: NA because ce-gadolinium T1w missing, sadly", reader_adjudicated="false")
    return row


def _audit(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(_io.StringIO(audit_path(path).read_text(encoding="utf-8"), newline="")))


def _read(path: Path, encoding: str, delimiter: str) -> list[list[str]]:
    return list(csv.reader(_io.StringIO(path.read_bytes().decode(encoding), newline=""), delimiter=delimiter))


@given(st.lists(st.lists(CELL, min_size=1, max_size=4), min_size=1, max_size=6), DIALECTS, ENCODINGS, st.booleans())
def test_parse_then_write_gives_the_same_bytes(rows, dialect, encoding, final_newline):
    rows = [[_encodable(c, encoding) for c in r] for r in rows]
    data = _write_csv(rows, dialect, encoding, final_newline)
    doc = parse_csv(data, delimiter=dialect["delimiter"])
    assert doc.to_bytes() == data
    expected = list(csv.reader(_io.StringIO(data.decode(encoding), newline=""), delimiter=dialect["delimiter"]))
    assert [r.values for r in doc.records] == [r or [""] for r in expected]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_merge_properties(case):
    data, encoding, dialect, header, rows, imaging, ghosts = case
    delim = dialect["delimiter"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.csv"
        path.write_bytes(data)
        res = merge_dataset(path, imaging, MergeOptions(), "9.9.9", now=NOW)
        merged = path.read_bytes()

        # never a row added, removed or reordered; other columns' values unchanged
        got = _read(path, encoding, delim)
        assert got[0][: len(header)] == header
        assert got[0][len(header):] == [f"mri_{c}" for c in MERGED_COLUMNS]
        assert [r[: len(header)] for r in got[1:]] == rows
        # other fields keep their exact raw text (quoting included), record by record
        before, after = parse_csv(data, delim), parse_csv(merged, delim)
        assert len(before.records) == len(after.records)
        for b, a in zip(before.records, after.records):
            assert a.raw[: len(b.raw)] == b.raw and a.eol == b.eol
        assert merged.startswith(b"\xef\xbb\xbf") == data.startswith(b"\xef\xbb\xbf")
        # imaging values where the key matched, empty cells elsewhere
        by_key = {(r["subject"], r["session"]): r for r in imaging}
        for r in got[1:]:
            img = by_key.get((r[0].removeprefix("sub-"), r[1]))
            for j, c in enumerate(MERGED_COLUMNS):
                assert r[len(header) + j] == (img[c] if img else "")
        assert res.missing_subjects == ghosts
        assert res.matched_rows == len(imaging) - len(ghosts)
        # every changed cell audited (and the backup is the original file)
        audit = _audit(path)
        assert len(audit) == res.changed_cells
        assert all(a["old"] == "" and a["pipeline_version"] == "9.9.9" for a in audit)
        assert Path(res.backup).read_bytes() == data
        assert res.changed_cells == sum(1 for r in imaging if r["subject"] not in ghosts for _ in MERGED_COLUMNS
                                        ) - sum(1 for r in imaging if r["subject"] not in ghosts
                                                for c in MERGED_COLUMNS if r[c] == "")

        # a second identical run changes nothing: same bytes, no new audit rows, no new backup
        audit_bytes = audit_path(path).read_bytes()
        n_files = len(list(Path(tmp).iterdir()))
        again = merge_dataset(path, imaging, MergeOptions(), "9.9.9", now=NOW + dt.timedelta(seconds=5))
        assert again.changed_cells == 0 and again.backup is None
        assert path.read_bytes() == merged and audit_path(path).read_bytes() == audit_bytes
        assert len(list(Path(tmp).iterdir())) == n_files


def test_changed_values_are_audited_with_old_and_new(tmp_path):
    path = tmp_path / "trial.csv"
    path.write_bytes(b'subject,visit,edss,note\r\np01,M00,"3,5","said ""ok"""\r\np01,M06,4,\r\n')
    first = [_imaging_row("p01", "M00", 3), _imaging_row("p01", "M06", 5)]
    merge_dataset(path, first, MergeOptions(), "1.0", now=NOW)
    second = [dict(first[0]), dict(first[1], t2_lesion_count="4", qc_status="warn")]
    res = merge_dataset(path, second, MergeOptions(), "1.1", now=NOW + dt.timedelta(days=1))
    assert res.changed_cells == 2
    audit = _audit(path)
    assert list(audit[0]) == list(AUDIT_COLUMNS)
    last = audit[-2:]
    assert [(a["subject"], a["visit"], a["column"], a["old"], a["new"], a["pipeline_version"]) for a in last] == [
        ("p01", "M06", "mri_t2_lesion_count", "5", "4", "1.1"), ("p01", "M06", "mri_qc_status", "pass", "warn", "1.1")]
    text = path.read_bytes().decode()
    assert text.startswith('subject,visit,edss,note,mri_is_baseline')
    assert '\r\np01,M00,"3,5","said ""ok""",' in text and text.endswith("\r\n")
    assert len(list(tmp_path.glob("trial.*.bak.csv"))) == 2


def test_session_to_visit_mapping_and_missing_visits(tmp_path):
    path = tmp_path / "trial.csv"
    path.write_text("pid;visit_name;arm\nsub-p01;Baseline;A\np01;Month 6;A\n", encoding="utf-8")
    opts = MergeOptions(subject_column="pid", visit_column="visit_name",
                        session_to_visit={"M00": "Baseline", "M06": "Month 6"})
    res = merge_dataset(path, [_imaging_row("p01", "M00", 1), _imaging_row("p01", "M06", 2),
                               _imaging_row("p01", "M12", 3)], opts, "1.0", now=NOW)
    assert res.matched_rows == 2 and res.missing_visits == [("p01", "M12")] and res.missing_subjects == []
    rows = list(csv.DictReader(_io.StringIO(path.read_text(encoding="utf-8")), delimiter=";"))
    assert [r["mri_t2_lesion_count"] for r in rows] == ["1", "2"] and [r["arm"] for r in rows] == ["A", "A"]


def test_refuses_ambiguous_rows_and_missing_key_columns(tmp_path):
    doc = parse_csv(b"subject,visit\np01,M00\np01,M00\n")
    with pytest.raises(MergeError, match="not unique"):
        plan_merge(doc, [_imaging_row("p01", "M00", 1)], MergeOptions())
    with pytest.raises(MergeError, match="'visit_name' not found"):
        plan_merge(doc, [], MergeOptions(visit_column="visit_name"))
    path = tmp_path / "trial.csv"
    path.write_bytes(b"subject,visit\np01,M00\np01,M00\n")
    with pytest.raises(MergeError):
        merge_dataset(path, [_imaging_row("p01", "M00", 1)], MergeOptions(), "1.0", now=NOW)
    assert path.read_bytes() == b"subject,visit\np01,M00\np01,M00\n"
    assert not audit_path(path).exists() and len(list(tmp_path.iterdir())) == 1


def test_a_run_on_some_participants_leaves_the_others_merged_values_alone(tmp_path):
    """endpoints.csv of a ``--participant-label p01`` run holds p01 only: p02's merged cells keep their bytes."""
    from msimaging import io
    from msimaging.endpoints import COLUMNS
    from msimaging.merge import run_merge

    path = tmp_path / "trial.csv"
    path.write_bytes(b"subject,visit,arm\np01,M00,A\np02,M00,B\np02,M06,B\n")
    everyone = tmp_path / "everyone.csv"
    rows = [{c: "NA" for c in COLUMNS} | _imaging_row(s, v, n) for s, v, n in
            (("p01", "M00", 1), ("p02", "M00", 7), ("p02", "M06", 8))]
    io.write_table(everyone, COLUMNS, rows, sep=",")
    run_merge(everyone, path, {})
    before = {r["subject"] + r["visit"]: r for r in io.read_table(path)}
    assert before["p02M06"]["mri_t2_lesion_count"] == "8"
    n_audit = len(_audit(path))

    some = tmp_path / "p01.csv"
    io.write_table(some, COLUMNS, [dict(rows[0], t2_lesion_count="2", qc_status="warn")], sep=",")
    res = run_merge(some, path, {})
    after = {r["subject"] + r["visit"]: r for r in io.read_table(path)}
    assert after["p01M00"]["mri_t2_lesion_count"] == "2" and res.changed_cells == 2
    assert after["p02M00"] == before["p02M00"] and after["p02M06"] == before["p02M06"]
    assert path.read_bytes().splitlines()[2:] == Path(res.backup).read_bytes().splitlines()[2:]
    assert [a["subject"] for a in _audit(path)[n_audit:]] == ["p01", "p01"]

"""QC page (in a real browser), snakemake --report, reader adjudication and the outcome merge, end to end.

Uses the session's phantom run (tests/workflow/conftest.py). Tests that change outputs work on a
copy of the run's output folder (timestamps kept, so Snakemake sees the same state).
"""

from __future__ import annotations

import csv
import io as _io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msimaging import io
from tests.workflow.conftest import require_chromium, run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["subject"], r["session"]): r for r in io.read_table(path)}


def _browser(exe: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=15000", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _active_lesions(inventory: Path, session: str) -> dict[str, dict[str, str]]:
    return {r["lesion_id"]: r for r in io.read_table(inventory) if r["session"] == session
            and (r["kind"] == "Gd" or r["status_vs_baseline"] in ("new", "enlarging")
                 or r["status_vs_previous"] in ("new", "enlarging"))}


def test_qc_page_has_every_figure_and_a_thumbnail_per_counted_active_lesion(pipeline_run):
    out, proc = pipeline_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (out / "sub-p01.html").read_text(encoding="utf-8")
    assert "src=\"http" not in page and "<link" not in page  # self-contained, offline
    rows = _rows(out / "endpoints.csv")
    inventory = out / "sub-p01" / "sub-p01_desc-counted_lesions.tsv"
    for ses in ("M00", "M06"):
        assert f"alt=\"ses-{ses} lesion overlay\"" in page and f"alt=\"ses-{ses} enhancing overlay\"" in page
        assert f"ses-{ses} T1w to FLAIR registration check" in page
        active = _active_lesions(inventory, ses)
        row = rows[("p01", ses)]
        # every counted Gd+ lesion and every new lesion has its thumbnail, with its id
        assert sum(1 for r in active.values() if r["kind"] == "Gd") == int(row["gd_lesion_count"])
        if ses == "M06":
            n_new = sum(1 for r in active.values() if r["status_vs_baseline"] == "new")
            assert n_new == int(row["new_t2_vs_baseline"])
        for lid in active:
            assert (out / "sub-p01" / "figures" / f"sub-p01_ses-{ses}_lesion-{lid}_thumb.png").is_file()
            assert f"id='sub-p01_ses-{ses}-lesion-{lid}'" in page
    assert "ses-M06 to baseline registration check" in page
    n_imgs = page.count("<img ")
    assert n_imgs == len(list((out / "sub-p01" / "figures").glob("*.png")))
    assert f"data-expected='{n_imgs}'" in page
    # sub-p02 has no ce-T1w: no Gd+ figure, said so
    page2 = (out / "sub-p02.html").read_text(encoding="utf-8")
    assert 'enhancing overlay"' not in page2 and "Gd+ not measured" in page2


def test_qc_page_loads_in_headless_chromium_without_errors(pipeline_run, tmp_path):
    out, _ = pipeline_run
    exe = require_chromium()
    page = out / "sub-p01.html"
    expected = int(re.search(r"data-expected='(\d+)'", page.read_text(encoding="utf-8")).group(1))
    dom = _browser(exe, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console
    status = re.search(r'id="figure-status"[^>]*data-loaded="(\d+)"[^>]*data-total="(\d+)"', dom.stdout)
    assert status, dom.stdout[:2000]
    assert int(status.group(1)) == int(status.group(2)) == expected > 10

    shot = tmp_path / "page.png"
    proc = _browser(exe, page, "--window-size=1400,2400", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    import matplotlib.image as mpimg

    rgb = mpimg.imread(str(shot))[..., :3]
    assert rgb.shape[:2] == (2400, 1400)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    grey = (np.abs(r - g) < 0.02) & (np.abs(g - b) < 0.02) & (r > 0.15) & (r < 0.85)
    lesion_red = (r > 0.85) & (g < 0.35) & (b < 0.35)
    gd_magenta = (r > 0.85) & (g < 0.35) & (b > 0.85)
    assert grey.mean() > 0.02            # the MRI slices are drawn (not broken-image icons)
    assert lesion_red.sum() > 20 and gd_magenta.sum() > 20   # and the mask contours over them


def test_snakemake_report_has_the_figures_as_items(pipeline_run, tmp_path):
    out, _ = pipeline_run
    report = tmp_path / "report.zip"
    proc = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--snakefile",
                           str(REPO / "workflow" / "Snakefile"), "--directory", str(out), "--configfile",
                           str(out / "msimaging_config.yaml"), "--report", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(report).namelist()
    figures = {Path(n).name for n in names if n.endswith(".png")}
    expected = {p.name for s in ("p01", "p02") for p in (out / f"sub-{s}" / "figures").glob("*.png")}
    assert expected and expected <= figures
    assert any(n.endswith("sub-p01.html") for n in names)


@pytest.fixture(scope="module")
def copied_run(pipeline_run, tmp_path_factory) -> Path:
    out, _ = pipeline_run
    dest = tmp_path_factory.mktemp("adjudicated") / "derivatives"
    shutil.copytree(out, dest, symlinks=True)
    return dest


def test_adjudication_and_outcome_merge_rerun_only_the_group_step(copied_run, phantom_study, tmp_path):
    out = copied_run
    before = _rows(out / "endpoints.csv")
    inv = out / "sub-p01" / "sub-p01_desc-counted_lesions.tsv"
    m06 = _active_lesions(inv, "M06")
    new_plain = [r for r in m06.values() if r["kind"] == "T2" and r["status_vs_baseline"] == "new"
                 and r["status_vs_previous"] == "new" and not r["overlaps"]]
    assert new_plain, "the phantom's follow-up has new lesions that do not enhance"
    lid = new_plain[0]["lesion_id"]
    gd = next(r["lesion_id"] for r in io.read_table(inv) if r["kind"] == "Gd" and r["session"] == "M00")
    adjudication = tmp_path / "reads.tsv"
    adjudication.write_text(
        "subject\tsession\tlesion_id\tdecision\treader\treason\tlesion_type\tx_ras_mm\ty_ras_mm\tz_ras_mm\n"
        f"p01\tM06\t{lid}\treject\tR1\tflow artefact\t\t\t\t\n"
        f"p01\tM00\t{gd}\tconfirm\tR1\t\t\t\t\t\n"
        "p02\tM06\t\tadd\tR1\tmissed periventricular lesion\tnew\t-20.5\t10\t22\n", encoding="utf-8")
    trial = tmp_path / "trial.csv"
    original = ('\ufeffsubject,visit,arm,edss,comment\r\np01,M00,A,"3,5","baseline, ""fine"""\r\n'
                'p01,M06,A,4.0,Zürich\r\np01,M12,A,4.5,\r\np03,M00,B,2.0,not imaged\r\n')
    trial.write_bytes(original.encode("utf-8"))
    images = sorted(out.glob("sub-*/ses-*/anat/*.nii.gz"))
    mtimes = [p.stat().st_mtime_ns for p in images]

    proc = run_cli("run", str(phantom_study), str(out), "--cores", "2", "--outcome-dataset", str(trial),
                   "--adjudication", str(adjudication))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [p.stat().st_mtime_ns for p in images] == mtimes      # no image recomputed
    assert "rule outcome_dataset" in proc.stdout + proc.stderr
    assert "rule segment_lesions" not in proc.stdout + proc.stderr

    after = _rows(out / "endpoints.csv")
    b, a = before[("p01", "M06")], after[("p01", "M06")]
    for col in ("t2_lesion_count", "new_t2_vs_baseline", "new_t2_vs_previous"):
        assert int(a[col]) == int(b[col]) - 1, col
    # p01 has ce-T1w: its CUA is measured, and the rejected new lesion (no Gd+ overlap) leaves it
    assert b["cua_lesion_count"] != "NA", b
    assert int(a["cua_lesion_count"]) == int(b["cua_lesion_count"]) - 1
    vol = float(new_plain[0]["volume_mm3"]) / 1000
    assert float(a["t2_lesion_volume_ml"]) == pytest.approx(float(b["t2_lesion_volume_ml"]) - vol, abs=2e-4)
    assert a["reader_adjudicated"] == "true" and f"lesion {lid} rejected by R1 (flow artefact)" in a["qc_notes"]
    m00 = after[("p01", "M00")]
    assert m00["reader_adjudicated"] == "true" and m00["gd_lesion_count"] == before[("p01", "M00")]["gd_lesion_count"]
    p2 = after[("p02", "M06")]
    assert int(p2["new_t2_vs_baseline"]) == int(before[("p02", "M06")]["new_t2_vs_baseline"]) + 1
    assert p2["cua_lesion_count"] == "NA"  # Gd+ not measured: NA stays NA
    assert after[("p02", "M00")]["reader_adjudicated"] == "false"
    log_rows = io.read_table(out / "adjudication.tsv")
    assert {("p01", "M06", "new_t2_vs_baseline"), ("p02", "M06", "t2_lesion_count")} <= \
        {(r["subject"], r["session"], r["column"]) for r in log_rows}

    # the outcome dataset: mri_ columns, other bytes untouched, audit trail, missing subject reported
    text = trial.read_bytes().decode("utf-8")
    assert text.startswith("\ufeffsubject,visit,arm,edss,comment,mri_is_baseline,")
    lines = text.split("\r\n")
    for old, new in zip(original.lstrip("\ufeff").split("\r\n")[1:], lines[1:]):
        assert new.startswith(old + ",") or new == old == ""
    merged = list(csv.DictReader(_io.StringIO(text.lstrip("\ufeff"), newline="")))
    assert [r["subject"] for r in merged] == ["p01", "p01", "p01", "p03"]
    assert merged[1]["mri_t2_lesion_count"] == a["t2_lesion_count"] and merged[1]["mri_reader_adjudicated"] == "true"
    assert merged[2]["mri_t2_lesion_count"] == "" and merged[3]["mri_t2_lesion_count"] == ""
    assert "p02" in proc.stdout and "not in the outcome dataset" in proc.stdout
    audit = list(csv.DictReader(_io.StringIO((tmp_path / "trial.audit.csv").read_text(encoding="utf-8"))))
    assert {(r["subject"], r["visit"], r["column"]) for r in audit} >= {("p01", "M06", "mri_new_t2_vs_baseline")}
    adj = [r for r in audit if (r["subject"], r["visit"], r["column"]) == ("p01", "M06", "mri_new_t2_vs_baseline")]
    assert adj[0]["source"] == "reader adjudication" and "flow artefact" in adj[0]["reason"]
    assert len(list(tmp_path.glob("trial.*.bak.csv"))) == 1

    # a second identical run changes nothing
    snapshot = trial.read_bytes(), (tmp_path / "trial.audit.csv").read_bytes(), (out / "endpoints.csv").read_bytes()
    again = run_cli("run", str(phantom_study), str(out), "--cores", "2", "--outcome-dataset", str(trial),
                    "--adjudication", str(adjudication))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (trial.read_bytes(), (tmp_path / "trial.audit.csv").read_bytes(),
            (out / "endpoints.csv").read_bytes()) == snapshot
    assert len(list(tmp_path.glob("trial.*.bak.csv"))) == 1
    assert "0 cell(s) changed" in again.stdout


def test_bad_adjudication_or_dataset_is_refused_before_running(phantom_study, tmp_path):
    bad = tmp_path / "reads.tsv"
    bad.write_text("subject\tsession\tlesion_id\tdecision\treader\treason\np01\tM06\t3\tremove\tR1\tx\n")
    proc = run_cli("run", str(phantom_study), str(tmp_path / "out"), "--adjudication", str(bad))
    assert proc.returncode == 2 and "decision 'remove' is not one of" in proc.stderr
    trial = tmp_path / "trial.csv"
    trial.write_text("patient,visit\np01,M00\n")
    proc = run_cli("run", str(phantom_study), str(tmp_path / "out"), "--outcome-dataset", str(trial))
    assert proc.returncode == 2 and "'subject' not found" in proc.stderr
    assert not (tmp_path / "out" / "endpoints.csv").exists()

"""cohort.html and the subject pages' viewer, from a 3 subject x 3 visit phantom run, in headless Chromium.

One pipeline run for the module: 4 mm phantom (the coarsest grid the workflow tests use), LPS headers;
sub-p01 has FLAIR, T1w and ce-T1w, sub-p02 and sub-p03 FLAIR only (Gd+ NA; keeps the run short). The trial's
outcome dataset has a treatment-arm column and the config names it, but the trial is not unblinded:
no arm may appear anywhere. The browser is driven over the DevTools protocol (msimaging.browser): real
mouse clicks and wheel turns, every console message and uncaught exception collected.
"""

from __future__ import annotations

import html
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from msimaging import cohort, io
from msimaging import layout as L
from msimaging.browser import Chromium
from msimaging.phantom import PhantomOptions, make_study
from tests.workflow.conftest import require_chromium, run_cli

pytestmark = pytest.mark.slow

ARM_COLUMN = "treatment_arm_code"
ARMS = ("ARM-ALPHA-DRUG-7", "ARM-BETA-PLACEBO-3")
SUBJECTS = ("p01", "p02", "p03")
SESSIONS = ("M00", "M06", "M12")


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory) -> tuple[Path, Path, float]:
    """(output folder, the merged outcome dataset, wall seconds of phantom + run)."""
    root = tmp_path_factory.mktemp("cohort3x3")
    t0 = time.monotonic()
    bids = root / "bids"
    make_study(bids, PhantomOptions(subjects=3, sessions=3, resolution_mm=4.0, seed=18, orientation="LPS",
                                    contrasts=("FLAIR", "T1w", "ceT1w")))
    for f in [*bids.glob("sub-p02/ses-*/anat/*T1w*"), *bids.glob("sub-p03/ses-*/anat/*T1w*")]:
        f.unlink()
    dataset = root / "outcomes.csv"
    lines = [f"subject,visit,{ARM_COLUMN},edss"]
    lines += [f"{s},{v},{ARMS[i % 2]},2.5" for i, s in enumerate(SUBJECTS) for v in SESSIONS]
    dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "derivatives"
    proc = run_cli("run", str(bids), str(out), "--cores", "2", "--outcome-dataset", str(dataset),
                   "--config", f"cohort.arm_column={ARM_COLUMN}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    elapsed = time.monotonic() - t0
    print(f"3x3 phantom + pipeline: {elapsed:.0f} s; cohort.html {(out / L.COHORT_HTML).stat().st_size / 1e6:.2f} MB; "
          + ", ".join(f"sub-{s}.html {(out / L.qc_page(s)).stat().st_size / 1e6:.2f} MB" for s in SUBJECTS))
    return out, dataset, elapsed


def test_cohort_page_has_every_visit_trajectories_and_every_qc_figure(cohort_run):
    out, _, _ = cohort_run
    page = (out / L.COHORT_HTML).read_text(encoding="utf-8")
    rows = io.read_table(out / L.ENDPOINTS_CSV)
    assert [(r["subject"], r["session"]) for r in rows] == [(s, v) for s in SUBJECTS for v in SESSIONS]
    for r in rows:
        tr = re.search(rf"<tr data-subject='{r['subject']}' data-session='{r['session']}'>(.*?)</tr>", page).group(1)
        cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
        assert cells[2:2 + len(cohort.TABLE_COLUMNS)] == [r[c] for c in cohort.TABLE_COLUMNS]
        link = re.search(r"href='([^']+)'", tr).group(1)
        assert link == f"sub-{r['subject']}.html#ses-{r['session']}" and (out / link.split("#")[0]).is_file()
    assert [rows[i]["gd_lesion_count"] for i in (3, 6)] == ["NA", "NA"]   # FLAIR-only subjects
    qc = io.read_table(out / L.QC_TSV)
    n_figures = sum(1 for f in [*cohort.endpoint_figures(rows, 3.5), *cohort.qc_figures(qc, 3.5)] if f.values)
    assert page.count("class=\"dist\"") == n_figures > 20
    assert page.count("alt=\"trajectories\"") == 1
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page
    assert (out / L.COHORT_HTML).stat().st_size < 5e6


def test_cohort_page_loads_in_chromium_without_errors(cohort_run, tmp_path):
    out, _, _ = cohort_run
    with Chromium(require_chromium(), width=1400, height=1000) as b:
        b.open(out / L.COHORT_HTML)
        b.wait_for("Array.prototype.every.call(document.images, function(i){return i.complete})")
        decoded = b.evaluate("Array.prototype.filter.call(document.images, function(i){return i.naturalWidth>0}).length")
        assert decoded == b.evaluate("document.images.length") > 20
        assert b.evaluate("document.getElementById('cohort-status').dataset.rows") == "9"
        shot = b.screenshot(tmp_path / "cohort.png", "img[alt='trajectories']")
        assert b.errors() == []
    import matplotlib.image as mpimg

    rgb = mpimg.imread(str(shot))[..., :3]
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 0.3   # the subjects' coloured lines
    assert coloured.sum() > 500


def _indices(b: Chromium, viewer: str) -> dict[str, int]:
    return {p: int(b.evaluate(f"document.querySelector('#{viewer} .msv-index[data-plane={p}]').dataset.index"))
            for p in ("axial", "coronal", "sagittal")}


def test_viewer_draws_scrolls_and_centres_on_a_clicked_lesion(cohort_run, tmp_path):
    out, _, _ = cohort_run
    page = out / L.qc_page("p01")
    assert page.stat().st_size < 20e6
    import matplotlib.image as mpimg

    with Chromium(require_chromium(), width=1400, height=1000) as b:
        b.open(page)
        assert b.wait_for("document.body.dataset.viewersReady") == "3"
        viewer = "sub-p01_ses-M12-viewer"
        assert b.evaluate(f"document.getElementById('{viewer}').dataset.ready") == "true"
        assert b.evaluate(f"document.querySelectorAll('#{viewer} input[type=radio]').length") == 2  # FLAIR, ce-T1w
        before = b.screenshot(tmp_path / "before.png", f"#{viewer} canvas[data-plane=axial]")
        rgb = mpimg.imread(str(before))[..., :3]
        assert (rgb.max(axis=2) > 0.15).mean() > 0.3          # not blank: the brain is drawn
        # the wheel scrolls the axial plane by one slice
        start = _indices(b, viewer)
        b.wheel(f"#{viewer} canvas[data-plane=axial]", -100)
        assert _indices(b, viewer)["axial"] == start["axial"] + 1
        # clicking a counted lesion's row centres all three planes on it
        rows = b.evaluate(f"Array.prototype.map.call(document.querySelectorAll(\"tr.msv-lesion[data-viewer='{viewer}']\"),"
                          "function(t){return [t.dataset.lesion, t.dataset.voxel, t.textContent]})")
        assert rows, "no counted lesion at sub-p01 ses-M12"
        now = _indices(b, viewer)
        target = next(r for r in rows if [int(v) for v in r[1].split()][2] != now["axial"])
        b.click(f"tr.msv-lesion[data-viewer='{viewer}'][data-lesion='{target[0]}']")
        i, j, k = (int(v) for v in target[1].split())
        assert _indices(b, viewer) == {"axial": k, "coronal": j, "sagittal": i}
        assert b.evaluate(f"document.querySelector('#{viewer} .msv-pos').dataset.voxel") == target[1]
        after = mpimg.imread(str(b.screenshot(tmp_path / "after.png", f"#{viewer} canvas[data-plane=axial]")))[..., :3]
        r, g, bl = after[..., 0], after[..., 1], after[..., 2]
        overlay = ((r - np.maximum(g, bl)) > 0.25) | ((g - np.maximum(r, bl)) > 0.25)  # T2 red / new green fill
        assert overlay.sum() > 20
        # the T2 and new overlays can be switched off
        for mask in ("lesions", "new", "enlarging", "enhancing"):
            sel = f"#{viewer} input.msv-mask[value={mask}]"
            if b.evaluate(f"!!document.querySelector('{sel}')"):
                b.click(sel)
        off = mpimg.imread(str(b.screenshot(tmp_path / "off.png", f"#{viewer} canvas[data-plane=axial]")))[..., :3]
        r, g, bl = off[..., 0], off[..., 1], off[..., 2]
        assert (((r - np.maximum(g, bl)) > 0.25) | ((g - np.maximum(r, bl)) > 0.25)).sum() < overlay.sum() / 4
        # the page's static figures still all load
        assert b.evaluate("document.getElementById('figure-status').dataset.loaded") == \
            b.evaluate("document.getElementById('figure-status').dataset.total")
        assert b.errors() == []
    # a FLAIR-only subject's viewer has no ce-T1w and no Gd+ overlay
    p02 = (out / L.qc_page("p02")).read_text(encoding="utf-8")
    assert "value='ce-T1w'" not in p02 and "value='enhancing'" not in p02 and p02.count("class='msv-viewer'") == 3


def test_arm_never_appears_while_blinded_and_only_groups_when_unblinded(cohort_run, tmp_path):
    out, dataset, _ = cohort_run
    merged = dataset.read_text(encoding="utf-8")
    assert ARM_COLUMN in merged and "mri_t2_lesion_count" in merged   # the merged dataset has the arm column
    for page in [out / L.COHORT_HTML, *(out / L.qc_page(s) for s in SUBJECTS)]:
        text = page.read_text(encoding="utf-8")
        assert not any(a in text for a in ARMS) and ARM_COLUMN not in text, page
    assert "data-blinded='true'" in (out / L.COHORT_HTML).read_text(encoding="utf-8")
    with Chromium(require_chromium()) as b:
        b.open(out / L.COHORT_HTML)
        shown = b.evaluate("document.body.innerText")
        assert "Blinded" in shown and not any(a in shown for a in ARMS) and b.errors() == []
    # unblinded (the same run, config cohort.unblinded=true): only the cohort page is rebuilt, grouped by arm
    copy = tmp_path / "derivatives"
    shutil.copytree(out, copy, symlinks=True)
    pages = {s: (copy / L.qc_page(s)).read_bytes() for s in SUBJECTS}
    proc = run_cli("run", str(out.parent / "bids"), str(copy), "--cores", "2", "--outcome-dataset", str(dataset),
                   "--config", f"cohort.arm_column={ARM_COLUMN}", "cohort.unblinded=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (copy / L.COHORT_HTML).read_text(encoding="utf-8")
    assert "data-blinded='false'" in page and all(a in page for a in ARMS)
    assert {s: (copy / L.qc_page(s)).read_bytes() for s in SUBJECTS} == pages
    assert not any(a in (copy / L.qc_page(s)).read_text(encoding="utf-8") for s in SUBJECTS for a in ARMS)


def test_cohort_page_is_a_snakemake_report_item(cohort_run, tmp_path):
    import subprocess
    import sys
    import zipfile

    out, _, _ = cohort_run
    repo = Path(__file__).resolve().parents[2]
    report = tmp_path / "report.zip"
    proc = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--snakefile",
                           str(repo / "workflow" / "Snakefile"), "--directory", str(out), "--configfile",
                           str(out / "msimaging_config.yaml"), "--report", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(n.endswith(L.COHORT_HTML) for n in zipfile.ZipFile(report).namelist())

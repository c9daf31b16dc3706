"""From the scanner to the endpoints: DICOM visits -> ``msimaging import-dicom`` -> ``msimaging run``.

A phantom study (one subject, two visits, oblique, one grid per contrast) is written as DICOM
(one file per slice, planted identifying tags, a localiser, a DWI and an MPR per visit), imported
with ``--no-dates``, and run through the whole pipeline; the endpoints are checked against the
phantom's truth and no planted value or real date may appear in the BIDS or derivative outputs.
"""

from __future__ import annotations

import gzip
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msimaging import io
from msimaging.bids import contrast_name
from msimaging.phantom import PhantomOptions, make_study
from tests.dicom_writer import find_planted, write_visit
from tests.workflow.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_e2e")
    phantom = root / "phantom"
    make_study(phantom, PhantomOptions(subjects=1, sessions=2, resolution_mm=4.0, seed=7, orientation="oblique",
                                       per_contrast_grids=True))
    times = {r["session_id"][4:]: datetime.fromisoformat(r["acq_time"])
             for r in io.read_table(phantom / "sub-p01" / "sub-p01_sessions.tsv")}
    bids, key = root / "bids", root / "private" / "date_key.tsv"
    imports = []
    for ses, t in times.items():
        volumes = {}
        for contrast in ("T2w", "FLAIR", "T1w", "ceT1w"):
            img = nib.load(str(phantom / contrast_name("p01", ses, contrast)))
            volumes[contrast] = (np.asarray(img.dataobj), io.image_affine(img))
        write_visit(root / "dicom" / ses, volumes, t)
        imports.append(run_cli("import-dicom", str(root / "dicom" / ses), str(bids), "--subject", "p01",
                               "--session", ses, "--no-dates", "--date-key", str(key)))
    out = root / "derivatives"
    proc = run_cli("run", str(bids), str(out), "--cores", "2")
    return phantom, bids, out, imports, proc, times


def test_dicom_visits_import_and_run_through_the_pipeline(dicom_run):
    phantom, bids, out, imports, proc, _ = dicom_run
    for imp in imports:
        assert imp.returncode == 0, imp.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-4000:]
    for ses in ("M00", "M06"):
        for contrast in ("FLAIR", "T2w", "T1w", "ceT1w"):
            a, b = nib.load(str(bids / contrast_name("p01", ses, contrast))), \
                nib.load(str(phantom / contrast_name("p01", ses, contrast)))
            assert sorted(a.shape) == sorted(b.shape)
            assert np.asarray(a.dataobj).sum(dtype=np.int64) == np.asarray(b.dataobj).sum(dtype=np.int64)
    got = {(r["subject"], r["session"]): r for r in io.read_table(out / "endpoints.csv")}
    truth = {(r["subject"], r["session"]): r for r in io.read_table(phantom / "derivatives/truth/endpoints.csv")}
    assert got.keys() == truth.keys() == {("p01", "M00"), ("p01", "M06")}
    for k, t in truth.items():
        g = got[k]
        # Dates came through the shifted sessions.tsv: baseline and interval are the truth's.
        assert (g["is_baseline"], g["days_since_baseline"]) == (t["is_baseline"], t["days_since_baseline"])
        assert abs(int(g["t2_lesion_count"]) - int(t["t2_lesion_count"])) <= 1, (k, g, t)
        assert g["gd_lesion_count"] != "NA"  # the ce-T1w was recognised from ContrastBolusAgent
        # Voxel sizes and orientation survived: brain volume within 5% of the model's.
        assert abs(float(g["brain_volume_ml"]) / float(t["brain_volume_ml"]) - 1) < 0.05, (k, g, t)
        assert g["qc_status"] != "fail", g["qc_notes"]
    follow = got[("p01", "M06")]
    assert abs(int(follow["new_t2_vs_baseline"]) - int(truth[("p01", "M06")]["new_t2_vs_baseline"])) <= 1


def test_no_identifier_or_real_date_reaches_bids_or_derivatives(dicom_run):
    _, bids, out, imports, _, times = dicom_run
    dates = set()
    for t in times.values():
        dates |= {t.strftime("%Y%m%d"), t.strftime("%Y-%m-%d"), t.strftime("%d.%m.%Y")}
    checked = 0
    for root in (bids, out):
        for path in (p for p in root.rglob("*") if p.is_file()):
            raw = path.read_bytes()
            content = gzip.decompress(raw) if path.name.endswith(".gz") else raw
            assert find_planted(content, tuple(dates)) == [], str(path.relative_to(root))
            checked += 1
    assert checked > 40
    for imp in imports:  # the console says what was done, without identifiers or dates
        assert find_planted((imp.stdout + imp.stderr).encode(), tuple(dates)) == []

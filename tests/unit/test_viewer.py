"""The subject page's viewer: crop, block reduction, geometry of the embedded grid, encoding, budget."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from msimaging import viewer
from msimaging.adjudication import InventoryLesion


def lps_affine(zooms=(1.0, 1.2, 3.0)) -> np.ndarray:
    """Anisotropic voxels, LPS axis order, a translation: what DICOM-derived scans look like."""
    a = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    a[:3, 3] = [90.0, 110.0, -60.0]
    return a


def test_brain_box_adds_the_margin_in_mm_and_stays_in_the_volume():
    brain = np.zeros((50, 40, 20), bool)
    brain[10:30, 5:35, 2:18] = True
    box = viewer.brain_box(brain, (1.0, 2.0, 3.0), margin_mm=6.0)
    assert box == (slice(4, 36), slice(2, 38), slice(0, 20))
    assert viewer.brain_box(np.zeros((4, 5, 6), bool), (1, 1, 1)) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_reduction_factors_meet_the_budget_and_keep_thick_slices():
    f = viewer.reduction_factors((180, 220, 60), (1.0, 1.0, 3.0), 600_000)
    assert np.prod([-(-n // k) for n, k in zip((180, 220, 60), f)]) <= 600_000
    assert f[2] == 1 and f[0] == f[1] == 2           # in-plane first: 2 mm x 2 mm x 3 mm
    assert viewer.reduction_factors((10, 10, 10), (1, 1, 1), 10**6) == (1, 1, 1)


def test_block_reduce_means_images_and_keeps_every_mask_voxel():
    vol = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    red = viewer.block_reduce(vol, (2, 2, 2))
    assert red.shape == (2, 2, 1) and red[0, 0, 0] == pytest.approx(vol[:2, :2, :2].mean())
    mask = np.zeros((5, 5, 5), bool)
    mask[4, 4, 4] = True                             # one voxel at the padded edge
    assert viewer.block_reduce(mask, (2, 2, 2), "max").sum() == 1


def test_quantise_maps_the_brain_high_percentile_to_255():
    vol = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    q = viewer.quantise(vol)
    assert q.dtype == np.uint8 and q.max() == 255 and q.min() == 0
    assert abs(int(q.ravel()[500]) - round(vol.ravel()[500] / np.percentile(vol[vol > 0], 99.5) * 255)) <= 1


def test_encode_is_x_fastest_and_round_trips():
    vol = np.random.default_rng(0).integers(0, 255, (3, 4, 5), dtype=np.uint8)
    assert np.array_equal(viewer.decode(viewer.encode(vol), vol.shape), vol)
    flat = np.frombuffer(__import__("zlib").decompress(__import__("base64").b64decode(viewer.encode(vol))), np.uint8)
    assert flat[1] == vol[1, 0, 0] and flat[3] == vol[0, 1, 0] and flat[12] == vol[0, 0, 1]


def _visit(shape=(60, 70, 24), zooms=(1.0, 1.2, 3.0)):
    rng = np.random.default_rng(1)
    affine = lps_affine(zooms)
    brain = np.zeros(shape, bool)
    brain[8:52, 10:60, 3:21] = True
    flair = np.where(brain, 100.0, 0.0) + rng.normal(0, 5, shape)
    lesion = np.zeros(shape, bool)
    lesion[20:23, 30:33, 10:12] = True
    flair[lesion] = 180.0
    gd = np.zeros(shape, bool)
    gd[40:42, 15:17, 6:8] = True
    return flair.astype(np.float32), affine, brain, lesion, gd


def test_session_view_puts_a_lesion_where_its_ras_centroid_is():
    flair, affine, brain, lesion, gd = _visit()
    view = viewer.session_view(flair, affine, brain, {"lesions": lesion, "enhancing": gd}, {"ce-T1w": flair * 1.1},
                               max_voxels=20_000)
    assert np.prod(view.grid.shape) <= 20_000 and set(view.images) == {"FLAIR", "ce-T1w"}
    assert view.masks == ("lesions", "enhancing")
    for mask, bit in ((lesion, 1), (gd, 8)):
        ijk = np.argwhere(mask).mean(axis=0)
        ras = (affine @ np.r_[ijk, 1.0])[:3]
        v = view.grid.voxel(ras)
        assert view.labels[v] & bit, (ras, v)
        # the embedded grid's affine maps that voxel back to within one (reduced) voxel of the centroid
        back = (view.grid.affine @ np.r_[v, 1.0])[:3]
        assert np.all(np.abs(back - ras) <= np.array(view.grid.zooms) / 2 + 1e-6)
    # RAS display grid: the affine's diagonal is positive (x to the right, y anterior, z superior)
    assert np.all(np.diag(view.grid.affine)[:3] > 0)
    # the brightest voxels (the lesion) are 255 after quantising, the background 0
    assert view.images["FLAIR"][view.grid.voxel((affine @ np.r_[21, 31, 10.5, 1])[:3])] > 200


def test_section_html_has_a_clickable_row_per_counted_lesion_and_safe_json():
    flair, affine, brain, lesion, gd = _visit()
    ijk = np.argwhere(lesion).mean(axis=0)
    ras = tuple(float(v) for v in (affine @ np.r_[ijk, 1.0])[:3])
    lesions = [InventoryLesion("p01", "M06", "3", "T2", 60.0, ras, "new", "new"),
               InventoryLesion("p01", "M06", "Gd1", "Gd", 20.0, ras)]
    view = viewer.session_view(flair, affine, brain, {"lesions": lesion}, {})
    page = viewer.section_html("sub-p01_ses-M06-viewer", "ses-M06 </script>", view, lesions)
    rows = re.findall(r"<tr class='msv-lesion'[^>]*data-lesion='(\w+)' data-voxel='(\d+) (\d+) (\d+)'", page)
    assert [r[0] for r in rows] == ["3", "Gd1"]
    assert tuple(int(v) for v in rows[0][1:]) == view.grid.voxel(ras)
    data = re.search(r"<script type='application/json' class='msv-data'>(.*?)</script>", page, re.S).group(1)
    payload = json.loads(data)
    assert payload["shape"] == list(view.grid.shape) and payload["masks"] == ["lesions"]
    assert np.array_equal(viewer.decode(payload["labels"], payload["shape"]), view.labels)
    assert "ses-M06 &lt;/script&gt;" in page       # titles are escaped


def test_a_1mm_three_visit_subject_fits_the_page_budget():
    # worst case for deflate: noise, 1 mm, a 150 x 180 x 150 mm brain; 3 visits x FLAIR + ce-T1w
    shape = (182, 218, 182)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    brain = np.zeros(shape, bool)
    brain[16:166, 19:199, 16:166] = True
    img = np.random.default_rng(2).uniform(0, 100, shape).astype(np.float32)
    per = viewer.per_volume_voxels(6)
    view = viewer.session_view(img, affine, brain, {"lesions": brain & (img > 99.9)}, {"ce-T1w": img}, max_voxels=per)
    size = len(viewer.section_html("v", "t", view, []))
    assert np.prod(view.grid.shape) <= per
    assert 3 * size < 15e6     # three visits' viewers; the page's PNG figures are about 2-4 MB more


def test_viewer_runs_in_chromium_and_a_row_click_centres_it(tmp_path):
    from msimaging.browser import Chromium, find_chromium

    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (make browser)")
    flair, affine, brain, lesion, gd = _visit()
    ijk = np.argwhere(gd).mean(axis=0)
    ras = tuple(float(v) for v in (affine @ np.r_[ijk, 1.0])[:3])
    view = viewer.session_view(flair, affine, brain, {"lesions": lesion, "enhancing": gd}, {"ce-T1w": flair})
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body>" + viewer.section_html(
        "v1", "test", view, [InventoryLesion("p01", "M00", "Gd1", "Gd", 20.0, ras)]) + viewer.assets_html()
        + "</body></html>", encoding="utf-8")
    with Chromium() as b:
        b.open(page)
        assert b.wait_for("document.body.dataset.viewersReady") == "1"
        centre = [n // 2 for n in view.grid.shape]
        assert b.evaluate("document.querySelector('#v1 .msv-pos').dataset.voxel") == " ".join(map(str, centre))
        b.click("tr.msv-lesion[data-lesion='Gd1']")
        assert b.evaluate("document.querySelector('#v1 .msv-pos').dataset.voxel") == \
            " ".join(map(str, view.grid.voxel(ras)))
        assert b.evaluate("document.querySelector('#v1 .msv-index[data-plane=axial]').dataset.index") == \
            str(view.grid.voxel(ras)[2])
        # clicking in the coronal plane moves x and z, keeps y
        b.click("#v1 canvas[data-plane=coronal]")
        after = [int(v) for v in b.evaluate("document.querySelector('#v1 .msv-pos').dataset.voxel").split()]
        assert after[1] == view.grid.voxel(ras)[1]
        assert b.errors() == []

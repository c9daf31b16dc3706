"""QC figures: display orientation, slice choice, registration check and lesion thumbnails."""

from __future__ import annotations

import numpy as np
import pytest

from msimaging.report import (_axial, canonical, checkerboard, choose_slices, page_html,
                              plot_lesion_thumbnail, plot_overlays, plot_registration, slice_edges)
from tests.conftest import oblique_affine


def _lps_affine(zooms=(0.9, 1.2, 3.0)):
    a = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    a[:3, 3] = (40.0, 50.0, -30.0)
    return a


def test_axial_display_is_radiological_whatever_the_storage_order():
    affine = _lps_affine()
    vol = np.zeros((40, 30, 10))
    ijk_right = np.array([2, 15, 5])  # LPS storage: a small x index is on the subject's right
    world = affine @ np.r_[ijk_right, 1]
    assert world[0] > 0  # a voxel on the subject's right (RAS x > 0)
    vol[tuple(ijk_right)] = 1
    can = canonical(vol, affine)
    z = int(np.argmax(can.data.sum(axis=(0, 1))))
    sl = _axial(can.data, z)
    rows, cols = np.nonzero(sl)
    assert cols[0] < sl.shape[1] / 4          # the subject's right is on the viewer's left
    front = np.zeros_like(vol)
    front[20, 2, 5] = 1                       # LPS: j small = anterior
    sl = _axial(canonical(front, affine).data, z)
    assert np.nonzero(sl)[0][0] > sl.shape[0] * 3 / 4   # anterior is up (origin='lower')


def test_slices_follow_the_masks():
    m = np.zeros((10, 10, 20), bool)
    m[2:5, 2:5, 3] = True
    m[2:8, 2:8, 15] = True
    assert choose_slices([m], None, 2) == [3, 15]
    assert choose_slices([np.zeros_like(m)], m, 3)[0] >= 3


def test_checkerboard_alternates_the_two_images():
    a, b = np.full((16, 16), 2.0), np.full((16, 16), 5.0)
    cb = checkerboard(a, b, tiles=4)
    assert cb[0, 0] == 1.0 and cb[0, 4] == 1.0 and set(np.unique(cb)) == {1.0}
    b[:] = 0.0
    b[0, 0] = 1.0
    cb = checkerboard(a, b, tiles=4)
    assert cb[0, 0] == 1.0 and cb[0, 5] == 0.0


def test_edges_stay_inside_the_brain():
    img = np.zeros((30, 30, 12))
    img[5:25, 5:25, 2:10] = 1.0
    img[12:18, 12:18, 4:8] = 3.0
    brain = np.zeros(img.shape, bool)
    brain[8:22, 8:22, 3:9] = True
    shown = slice_edges(img, brain, list(range(img.shape[2])))
    e = np.stack([shown[z] for z in range(img.shape[2])], axis=2)
    assert e.any() and not (e & ~brain).any()
    assert e[11:19, 11:19, 4:8].any()


def test_figures_are_written_on_an_oblique_anisotropic_grid(tmp_path):
    affine = oblique_affine(zooms=(1.0, 1.1, 2.5))
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (40, 40, 16)).clip(0)
    lesion = np.zeros(img.shape, bool)
    lesion[18:22, 18:22, 7:9] = True
    img[lesion] += 80
    brain = np.zeros(img.shape, bool)
    brain[5:35, 5:35, 2:14] = True
    shown = plot_overlays(img, affine, {"lesions": lesion}, str(tmp_path / "o.png"), n_slices=4, brain=brain)
    can = canonical(lesion.astype(np.uint8), affine).data
    assert all(can[:, :, z].any() for z in shown)
    plot_lesion_thumbnail([("A", img), ("B", img)], lesion, affine, str(tmp_path / "t.png"), "lesion 1")
    import matplotlib.image as mpimg

    thumb = mpimg.imread(str(tmp_path / "t.png"))[..., :3]
    green = (thumb[..., 1] > 0.8) & (thumb[..., 0] < 0.4)
    assert green.sum() > 10  # the lesion outline is drawn in both panels
    assert green[:, : thumb.shape[1] // 2].any() and green[:, thumb.shape[1] // 2:].any()
    with pytest.raises(ValueError, match="empty"):
        plot_lesion_thumbnail([("A", img)], np.zeros_like(lesion), affine, str(tmp_path / "x.png"), "none")


def test_registration_figure_is_a_checkerboard_over_edges(tmp_path):
    """Top row: tiles of the fixed and the moving image; bottom row: the moving image under the fixed one's edges."""
    import matplotlib.image as mpimg

    affine = oblique_affine(zooms=(1.0, 1.1, 2.5))
    fixed = np.zeros((48, 48, 16))
    fixed[12:36, 12:36, 3:13] = 100.0
    brain = np.zeros(fixed.shape, bool)
    brain[6:42, 6:42, 2:14] = True

    def figure(moving: np.ndarray, name: str) -> np.ndarray:
        plot_registration(fixed, moving, affine, brain, str(tmp_path / name), "t", "A", "B", n_slices=4)
        return mpimg.imread(str(tmp_path / name))[..., :3]

    same, blank = figure(fixed, "same.png"), figure(np.zeros_like(fixed), "blank.png")
    assert same.shape == blank.shape == (368, 672, 3)  # 2 rows x 4 slices at 80 dpi
    half = same.shape[0] // 2
    # the checkerboard with an empty moving image keeps about half of the fixed image's bright tiles
    bright = lambda rgb: int((rgb[:half].min(axis=2) > 0.6).sum())  # noqa: E731
    assert bright(same) > 2000
    assert 0.3 < bright(blank) / bright(same) < 0.7
    # the fixed image's edges are drawn in yellow on the bottom row only, over the empty moving image too
    for rgb in (same, blank):
        yellow = (rgb[..., 0] > 0.5) & (rgb[..., 1] > 0.5) & (rgb[..., 0] - rgb[..., 2] > 0.4)
        assert yellow[half:].sum() > 800 and yellow[:half].sum() == 0


def test_page_is_self_contained_and_counts_its_figures():
    html = page_html("p01", ["<img src='data:image/png;base64,AAAA'>"], 1)
    assert "data-expected='1'" in html and "figure-status" in html and "http" not in html


def test_gd_thumbnail_shows_ce_t1w_beside_pre_contrast_t1w_and_flair(tmp_path):
    from msimaging import io
    from msimaging.report import _thumb_panels

    affine = _lps_affine()
    ce, t1, flair = (np.full((8, 8, 4), v, np.float32) for v in (1.3, 1.0, 0.7))
    io.write_image(str(tmp_path / "t1.nii.gz"), t1, affine)
    info = {"reference": "FLAIR", "session": "M00", "t1_image": str(tmp_path / "t1.nii.gz")}
    panels = _thumb_panels(info, "Gd", flair, affine, {"ce": ce})
    assert [name for name, _ in panels] == ["ce-T1w", "T1w (pre)", "FLAIR ses-M00"]
    assert np.allclose(panels[1][1], 1.0) and np.allclose(panels[2][1], 0.7)
    # a T2 lesion's thumbnail shows the reference (and the baseline when registered)
    assert [n for n, _ in _thumb_panels(info, "T2", flair, affine, {"ce": ce})] == ["FLAIR ses-M00"]

"""Bias correction, morphology in mm and intensity standardisation on oblique anisotropic grids."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from msimaging import geometry as G
from msimaging import preprocess as P
from tests.conftest import oblique_affine


def _object(shape=(80, 80, 30), zooms=(2.5, 2.5, 6.0)):
    """An ellipsoidal 'head' with two tissue classes on an oblique LPS grid, and its masks."""
    affine = oblique_affine(zooms=zooms)
    ii, jj, kk = np.indices(shape, dtype=float)
    c = (np.asarray(shape) - 1) / 2.0
    r = np.sqrt(((ii - c[0]) / (0.42 * shape[0])) ** 2 + ((jj - c[1]) / (0.42 * shape[1])) ** 2
                + ((kk - c[2]) / (0.42 * shape[2])) ** 2)
    inside = r < 1.0
    wm = r < 0.85  # the majority tissue, as white matter is on T1w
    data = np.where(wm, 1000.0, np.where(inside, 700.0, 0.0))
    return data, affine, inside, wm


def test_shrink_factors_keep_thick_slices():
    a = oblique_affine(zooms=(0.72, 0.72, 3.0))
    assert P.shrink_factors_for(a, 5.0) == [7, 7, 2]
    assert P.shrink_factors_for(a, 2.0) == [3, 3, 1]


@pytest.mark.slow
def test_n4_removes_a_smooth_multiplicative_field():
    data, affine, inside, wm = _object()
    ii, jj, kk = np.indices(data.shape, dtype=float)
    field = 1.0 + 0.3 * (ii / data.shape[0] - 0.5) + 0.2 * np.cos(jj / data.shape[1] * np.pi)
    noisy = data * field + np.random.default_rng(1).normal(0, 5, data.shape) * inside
    corrected, est = P.n4_bias_correct(noisy.astype(np.float32), affine, mask=inside, spacing_mm=8.0,
                                       iterations=(30, 30))
    core = ndi.binary_erosion(wm, iterations=2)

    def cv(x):
        return float(x[core].std() / x[core].mean())

    assert cv(noisy) > 0.08
    assert cv(corrected) < 0.35 * cv(noisy), (cv(noisy), cv(corrected))
    # the estimated field follows the true one up to a global scale
    ratio = est[inside] / field[inside]
    assert ratio.std() / ratio.mean() < 0.05


def test_standardise_puts_the_main_tissue_peak_at_one():
    data, affine, inside, wm = _object()
    noisy = data + np.random.default_rng(2).normal(0, 10, data.shape) * inside
    out = P.standardise(noisy, inside)
    assert np.median(out[ndi.binary_erosion(wm, iterations=2)]) == pytest.approx(1.0, abs=0.03)


def test_head_mask_fills_the_object_and_leaves_the_air():
    data, affine, inside, _ = _object()
    noisy = data + np.abs(np.random.default_rng(3).normal(0, 20, data.shape))
    head = P.head_mask(noisy.astype(np.float32), affine)
    dice = 2 * (head & inside).sum() / (head.sum() + inside.sum())
    assert dice > 0.97
    # in physical units: the ellipsoid's semi-axes are 0.42 x (80, 80, 30) voxels of 2.5 x 2.5 x 6 mm
    semi_mm = 0.42 * np.array([80, 80, 30]) * np.array([2.5, 2.5, 6.0])
    assert head.sum() * G.voxel_volume_mm3(affine) == pytest.approx(4 / 3 * np.pi * semi_mm.prod(), rel=0.03)

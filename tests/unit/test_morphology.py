"""Distance-map morphology equals sliding-ball morphology voxel for voxel, on anisotropic grids."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from msimaging import morphology as M
from tests.conftest import oblique_affine


def _blobs(shape, seed, level=0.55):
    return ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2) > level


GRIDS = [((1.0, 1.0, 1.0), (40, 44, 36)), ((0.9, 1.1, 3.0), (50, 46, 18)), ((0.72, 0.72, 3.3), (60, 56, 16))]


@pytest.mark.parametrize("zooms,shape", GRIDS)
@pytest.mark.parametrize("radius", [0.9, 2.0, 4.0, 7.5])
def test_dilation_and_erosion_equal_scipy_with_the_ball(zooms, shape, radius):
    a = oblique_affine(zooms=zooms)
    for seed in (0, 1):
        m = _blobs(shape, seed)
        b = M.ball(radius, a)
        np.testing.assert_array_equal(M.dilate_mm(m, radius, a), ndi.binary_dilation(m, b))
        np.testing.assert_array_equal(M.erode_mm(m, radius, a), ndi.binary_erosion(m, b, border_value=1))
        np.testing.assert_array_equal(M.erode_mm(m, radius, a, border_value=False), ndi.binary_erosion(m, b))


def test_edges_empty_and_full_masks():
    a = oblique_affine(zooms=(1.0, 1.0, 2.0))
    empty, full = np.zeros((12, 12, 8), bool), np.ones((12, 12, 8), bool)
    assert not M.dilate_mm(empty, 3.0, a).any() and not M.erode_mm(empty, 3.0, a).any()
    assert M.erode_mm(full, 3.0, a).all()  # the field of view's edge is not background ...
    eroded = M.erode_mm(full, 3.0, a, border_value=False)  # ... unless asked
    np.testing.assert_array_equal(eroded, ndi.binary_erosion(full, M.ball(3.0, a)))
    assert eroded.sum() == 6 * 6 * 6  # x, y: 3 mm from the edge; z: one 2 mm slice in
    one = empty.copy()
    one[6, 6, 4] = True
    assert M.dilate_mm(one, 2.0, a).sum() == M.ball(2.0, a).sum()


def test_distance_and_depth_equal_scipy_edt():
    a = oblique_affine(zooms=(0.9, 1.1, 3.0))
    m = _blobs((40, 40, 16), 3)
    zooms = (0.9, 1.1, 3.0)
    np.testing.assert_allclose(M.distance_mm(m, a), ndi.distance_transform_edt(~m, sampling=zooms), atol=1e-4)
    np.testing.assert_allclose(M.depth_mm(m, a), ndi.distance_transform_edt(m, sampling=zooms), atol=1e-4)


def test_fill_holes_slicewise_equals_per_slice_fill():
    m = _blobs((40, 40, 12), 5, level=0.5)
    m[:, :, 3] |= np.pad(np.ones((20, 20), bool), 10) & ~np.pad(np.ones((6, 6), bool), 17)  # a ring: a hole
    ref = ndi.binary_fill_holes(m)
    for k in range(ref.shape[2]):
        ref[:, :, k] = ndi.binary_fill_holes(ref[:, :, k])
    got = M.fill_holes_slicewise(m)
    np.testing.assert_array_equal(got, ref)
    assert got[20, 20, 3] and not m[20, 20, 3]


def test_largest_component():
    m = np.zeros((10, 10, 10), bool)
    m[1:3, 1:3, 1:3] = True
    m[5:9, 5:9, 5:9] = True
    assert M.largest_component(m).sum() == 64
    assert not M.largest_component(np.zeros_like(m)).any()

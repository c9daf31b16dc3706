"""RAS/LPS, oblique and anisotropic geometry: the conventions every other module relies on."""

import numpy as np
import pytest
import SimpleITK as sitk

from msimaging import geometry as G
from tests.conftest import oblique_affine

AFFINES = {
    "ras_iso": np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, -90], [0, 0, 0, -126], [0, 0, 0, -72], [0, 0, 0, 0]]),
    "lps_aniso": np.array([[-0.72, 0, 0, 110.0], [0, -0.72, 0, 118.0], [0, 0, 3.0, -41.0], [0, 0, 0, 1]]),
    "oblique_lps": oblique_affine(),
    "oblique_ras": oblique_affine(zooms=(1.2, 0.8, 2.5), angles_deg=(-15, 25, 5), lps=False),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_sitk_round_trip_keeps_data_and_affine(name):
    affine = AFFINES[name]
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = G.to_sitk(data, affine)
    back, back_affine = G.from_sitk(img)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-6)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_physical_points_agree_between_nibabel_and_itk(name):
    affine = AFFINES[name]
    img = G.to_sitk(np.zeros((4, 5, 6), np.float32), affine)
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        ras = G.voxel_to_world(affine, ijk)[0]
        np.testing.assert_allclose(G.lps_to_ras_points(lps), ras, atol=1e-6)
        np.testing.assert_allclose(G.world_to_voxel(affine, ras)[0], ijk, atol=1e-9)


def test_voxel_sizes_and_volume_of_oblique_anisotropic_grid():
    a = oblique_affine(zooms=(0.7, 0.7, 3.0))
    np.testing.assert_allclose(G.voxel_sizes(a), [0.7, 0.7, 3.0], atol=1e-9)
    assert G.voxel_volume_mm3(a) == pytest.approx(0.7 * 0.7 * 3.0)


def test_affine_problems_flags_singular_sheared_and_absurd():
    assert G.affine_problems(oblique_affine()) == []
    singular = oblique_affine()
    singular[:3, 2] = 0
    assert "singular" in G.affine_problems(singular)[0]
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    assert any("not orthogonal" in p for p in G.affine_problems(sheared))
    huge = np.diag([30.0, 1, 1, 1])
    assert any("implausible" in p for p in G.affine_problems(huge))
    nan = np.eye(4)
    nan[0, 0] = np.nan
    assert G.affine_problems(nan)


def test_resample_with_known_rigid_transform_moves_a_blob_to_the_right_place():
    """A blob resampled with T (ITK convention) lands where T^-1 says, in RAS mm."""
    affine = oblique_affine(zooms=(2.0, 2.0, 2.0))
    grid = G.Grid((40, 40, 40), affine)
    data = np.zeros(grid.shape, np.float32)
    centre_vox = np.array([20, 18, 22])
    ii, jj, kk = np.indices(grid.shape)
    data[((ii - centre_vox[0]) ** 2 + (jj - centre_vox[1]) ** 2 + (kk - centre_vox[2]) ** 2) <= 9] = 1
    tx = sitk.Euler3DTransform()
    tx.SetRotation(0.05, -0.03, 0.1)
    tx.SetTranslation((6.0, -4.0, 2.0))
    out = G.resample_array(data, affine, grid, tx)
    # the output voxel p shows the input at T(p): the blob moves to T^-1(blob centre)
    centre_ras = G.voxel_to_world(affine, centre_vox)
    inv = tx.GetInverse()
    expected = G.transform_points_ras(inv, centre_ras)[0]
    got_vox = np.array(np.nonzero(out > 0.5)).mean(axis=1)
    got = G.voxel_to_world(affine, got_vox)[0]
    assert np.linalg.norm(got - expected) < 1.0


def test_affine_matrix_round_trip_and_tre_zero_for_identical_transforms():
    tx = sitk.Euler3DTransform((5.0, 2.0, -3.0), 0.1, 0.2, -0.1, (1.0, 2.0, 3.0))
    m = G.affine_matrix_lps(tx)
    back = G.affine_transform_from_matrix(m)
    pts = np.random.default_rng(0).normal(size=(20, 3)) * 50
    assert G.target_registration_error(back, tx, pts).max() < 1e-9
    e = G.euler_from_matrix(m)
    assert G.target_registration_error(e, tx, pts).max() < 1e-6


def test_transform_file_round_trip(tmp_path):
    tx = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, 0.0, 0.1, (3.0, -1.0, 2.0))
    G.write_transform(tx, tmp_path / "t.txt")
    back = G.read_transform(tmp_path / "t.txt")
    pts = np.array([[10.0, 20.0, 30.0], [-40.0, 5.0, 0.0]])
    assert G.target_registration_error(back, tx, pts).max() < 1e-6


def test_resample_mask_keeps_volume_between_grids():
    fine = G.Grid((60, 60, 60), np.diag([1.0, 1.0, 1.0, 1.0]))
    mask = np.zeros(fine.shape, bool)
    ii, jj, kk = np.indices(fine.shape)
    mask[((ii - 30) ** 2 + (jj - 30) ** 2 + (kk - 30) ** 2) <= 12 ** 2] = True
    coarse_affine = oblique_affine(zooms=(1.5, 1.5, 3.0), origin=(0, 0, 0), lps=False)
    coarse_affine[:3, 3] = [30, 30, 30] - coarse_affine[:3, :3] @ np.array([20, 20, 10])
    coarse = G.Grid((40, 40, 20), coarse_affine)
    out = G.resample_mask(mask, fine.affine, coarse)
    v_fine = mask.sum() * 1.0
    v_coarse = out.sum() * coarse.voxel_volume_mm3
    assert abs(v_coarse - v_fine) / v_fine < 0.05

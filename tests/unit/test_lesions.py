"""The one lesion definition: 26-connectivity and minimum volume, on anisotropic grids."""

import numpy as np

from msimaging.lesions import LesionRules, count_lesions, label_lesions, lesion_stats, total_volume_ml
from tests.conftest import oblique_affine


def test_diagonal_neighbours_are_one_lesion_with_26_connectivity():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = True  # corner-touching chain
    assert count_lesions(mask, np.eye(4), LesionRules(min_volume_mm3=0, min_voxels=1)) == 1


def test_minimum_volume_uses_voxel_size():
    aff = np.diag([1.0, 1.0, 3.0, 1.0])  # 3 mm^3 voxels
    mask = np.zeros((10, 10, 10), bool)
    mask[1, 1, 1:4] = True          # 3 voxels = 9 mm^3 < 10: dropped
    mask[5, 5, 1:5] = True          # 4 voxels = 12 mm^3: kept
    labels = label_lesions(mask, aff, LesionRules(min_volume_mm3=10, min_voxels=3))
    assert labels.max() == 1
    assert labels[5, 5, 2] == 1 and labels[1, 1, 2] == 0


def test_min_voxels_applies_on_coarse_grids():
    aff = np.diag([3.0, 3.0, 3.0, 1.0])  # 27 mm^3 voxels
    mask = np.zeros((8, 8, 8), bool)
    mask[1, 1, 1:3] = True  # 2 voxels, 54 mm^3 but < 3 voxels
    mask[5, 5, 1:4] = True  # 3 voxels
    assert count_lesions(mask, aff) == 1


def test_labels_are_deterministic_raster_order_and_consecutive():
    mask = np.zeros((10, 10, 10), bool)
    mask[7:9, 7:9, 7:9] = True
    mask[1:3, 1:3, 1:3] = True
    mask[1, 8, 8] = True  # tiny, removed
    labels = label_lesions(mask, np.eye(4), LesionRules(min_volume_mm3=5, min_voxels=3))
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert labels[1, 1, 1] == 1 and labels[8, 8, 8] == 2


def test_stats_give_ras_centroid_and_volume_on_oblique_grid():
    aff = oblique_affine(zooms=(0.7, 0.7, 3.0))
    mask = np.zeros((20, 20, 8), bool)
    mask[4:7, 5:8, 2:4] = True
    labels = label_lesions(mask, aff)
    (les,) = lesion_stats(labels, aff)
    assert les.n_voxels == 18
    assert abs(les.volume_mm3 - 18 * 0.7 * 0.7 * 3.0) < 1e-6
    expected = aff[:3, :3] @ np.array([5.0, 6.0, 2.5]) + aff[:3, 3]
    np.testing.assert_allclose(les.centroid_ras_mm, expected, atol=1e-6)
    assert abs(total_volume_ml(labels, aff) - 18 * 1.47 / 1000) < 1e-9

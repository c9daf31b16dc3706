"""Property-based tests (hypothesis) of the geometry helpers and of THE lesion definition.

Examples are drawn over random rotations (any orientation, LPS or RAS handedness), anisotropic
voxel sizes and origins, and over random masks and lesion rules; each property is one that every
other module relies on.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from msimaging import geometry as G
from msimaging.lesions import LesionRules, label_lesions, lesion_stats

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-200.0, max_value=200.0, allow_nan=False)
zoom = st.floats(min_value=0.3, max_value=6.0, allow_nan=False)


def rotation_from(q: tuple[float, float, float, float]) -> np.ndarray:
    """Rotation matrix of a (not necessarily unit, non-zero) quaternion."""
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


quaternions = st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1)


@st.composite
def affines(draw) -> np.ndarray:
    """A valid MRI voxel-to-RAS affine: any rotation, optional axis flip (LPS-like), anisotropic."""
    rot = rotation_from(draw(quaternions))
    flips = np.diag([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    zooms = np.array([draw(zoom) for _ in range(3)])
    a = np.eye(4)
    a[:3, :3] = rot @ flips * zooms
    a[:3, 3] = [draw(finite) for _ in range(3)]
    return a


points = arrays(np.float64, (5, 3), elements=st.floats(-300, 300, allow_nan=False))
shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7))


# --- geometry ---------------------------------------------------------------------------------------------


@SETTINGS
@given(affine=affines(), shape=shapes, seed=st.integers(0, 2**16))
def test_sitk_round_trip_keeps_data_and_affine(affine, shape, seed):
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    back, back_affine = G.from_sitk(G.to_sitk(data, affine))
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9 * 300)


@SETTINGS
@given(affine=affines(), shape=shapes)
def test_itk_and_nibabel_agree_on_every_voxel_position(affine, shape):
    img = G.to_sitk(np.zeros(shape, np.float32), affine)
    ijk = np.argwhere(np.ones(shape, bool))
    lps = np.array([img.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in ijk])
    np.testing.assert_allclose(G.lps_to_ras_points(lps), G.voxel_to_world(affine, ijk), atol=1e-6)


@SETTINGS
@given(affine=affines(), xyz=points)
def test_world_to_voxel_inverts_voxel_to_world(affine, xyz):
    np.testing.assert_allclose(G.voxel_to_world(affine, G.world_to_voxel(affine, xyz)), xyz, atol=1e-7)


@SETTINGS
@given(xyz=points)
def test_ras_lps_flip_is_an_involution_on_x_and_y_only(xyz):
    lps = G.ras_to_lps_points(xyz)
    np.testing.assert_array_equal(G.lps_to_ras_points(lps), xyz)
    np.testing.assert_array_equal(lps[:, 2], xyz[:, 2])
    np.testing.assert_array_equal(lps[:, :2], -xyz[:, :2])


@SETTINGS
@given(affine=affines())
def test_voxel_sizes_volume_and_no_problems_for_valid_affines(affine):
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(G.voxel_sizes(affine), zooms, rtol=1e-12)
    assert abs(G.voxel_volume_mm3(affine) - np.prod(zooms)) <= 1e-9 * np.prod(zooms)
    assert G.affine_problems(affine) == []


@SETTINGS
@given(affine=affines(), axis=st.integers(0, 2), other=st.integers(0, 2), shear=st.floats(0.05, 2.0))
def test_affine_problems_flags_every_singular_or_sheared_affine(affine, axis, other, shear):
    singular = affine.copy()
    singular[:3, axis] = 0.0
    assert any("singular" in p for p in G.affine_problems(singular))
    dependent = affine.copy()
    dependent[:3, axis] = 2.0 * affine[:3, (axis + 1) % 3]
    assert G.affine_problems(dependent)
    if other != axis:
        sheared = affine.copy()
        sheared[:3, axis] += shear * affine[:3, other]
        assert any("not orthogonal" in p for p in G.affine_problems(sheared))
    with_nan = affine.copy()
    with_nan[axis, other] = np.nan
    assert G.affine_problems(with_nan) == ["affine contains NaN or infinite values"]


@SETTINGS
@given(affine=affines(), q=quaternions, t=st.tuples(finite, finite, finite), xyz=points)
def test_matrix_and_transform_agree_and_rigid_round_trips(affine, q, t, xyz):
    m = np.eye(4)
    m[:3, :3] = rotation_from(q)
    m[:3, 3] = t
    tx = G.euler_from_matrix(m)
    np.testing.assert_allclose(G.affine_matrix_lps(tx), m, atol=1e-9)
    # transform_points_ras = RAS flip . (LPS matrix) . RAS flip
    expected = G.lps_to_ras_points(G.ras_to_lps_points(xyz) @ m[:3, :3].T + m[:3, 3])
    np.testing.assert_allclose(G.transform_points_ras(tx, xyz), expected, atol=1e-8)
    back = G.affine_matrix_lps(G.affine_transform_from_matrix(m))
    np.testing.assert_allclose(back, m, atol=1e-9)
    assert np.all(G.target_registration_error(tx, tx, xyz) == 0)


@SETTINGS
@given(affine=affines(), shape=shapes, seed=st.integers(0, 2**16))
def test_identity_resampling_onto_the_own_grid_is_exact(affine, shape, seed):
    data = np.random.default_rng(seed).integers(0, 5, size=shape).astype(np.float32)
    grid = G.Grid(shape=shape, affine=affine)
    np.testing.assert_allclose(G.resample_array(data, affine, grid), data, atol=1e-4)
    np.testing.assert_array_equal(G.resample_array(data, affine, grid, interpolation="nearest"), data)
    np.testing.assert_array_equal(G.resample_mask(data > 2, affine, grid), data > 2)


@SETTINGS
@given(affine=affines(), shape=shapes, shift=st.tuples(*[st.integers(-2, 2)] * 3), seed=st.integers(0, 2**16))
def test_resampling_by_whole_voxel_translations_moves_data_exactly(affine, shape, shift, seed):
    """A translation of whole voxels along the grid axes (ITK resampling convention) shifts the array."""
    data = np.random.default_rng(seed).integers(1, 9, size=shape).astype(np.float32)
    offset_ras = affine[:3, :3] @ np.asarray(shift, dtype=float)  # reference point -> moving point
    tx = sitk.TranslationTransform(3, [float(v) for v in G.ras_to_lps_points(offset_ras)])
    out = G.resample_array(data, affine, G.Grid(shape=shape, affine=affine), tx, interpolation="nearest",
                           default=-1)
    for ijk in np.argwhere(np.ones(shape, bool)):
        src = ijk + np.asarray(shift)
        inside = np.all((src >= 0) & (src < np.asarray(shape)))
        assert out[tuple(ijk)] == (data[tuple(src)] if inside else -1)


# --- lesions ----------------------------------------------------------------------------------------------

masks = arrays(np.bool_, st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
               elements=st.booleans())
rules = st.builds(LesionRules, min_volume_mm3=st.floats(0.0, 60.0, allow_nan=False), min_voxels=st.integers(0, 6))
FULL = np.ones((3, 3, 3), bool)


@SETTINGS
@given(mask=masks, affine=affines(), r=rules)
def test_label_lesions_is_the_26_connected_components_above_the_rules(mask, affine, r):
    labels = label_lesions(mask, affine, r)
    assert labels.dtype == np.int32 and labels.shape == mask.shape
    assert not np.any(labels[~mask])                                   # lesions lie inside the mask
    n = int(labels.max())
    assert sorted(np.unique(labels[labels > 0]).tolist()) == list(range(1, n + 1))   # ids 1..N
    vv = G.voxel_volume_mm3(affine)
    comps, n_comp = ndi.label(mask, structure=FULL)
    kept = 0
    for c in range(1, n_comp + 1):
        comp = comps == c
        ids = np.unique(labels[comp])
        size = int(comp.sum())
        big_enough = size >= r.min_voxels and size * vv >= r.min_volume_mm3 * (1 - 1e-9)
        if big_enough:
            assert len(ids) == 1 and ids[0] > 0, "a component is split or dropped"
            kept += 1
        else:
            assert ids.tolist() == [0], "a component below the rules was kept"
    assert kept == n
    first = [np.flatnonzero((labels == k).ravel())[0] for k in range(1, n + 1)]
    assert first == sorted(first)                                      # raster order of first voxels


@SETTINGS
@given(mask=masks, affine=affines(), r=rules, perm=st.permutations([0, 1, 2]),
       flips=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_lesions_do_not_depend_on_array_orientation(mask, affine, r, perm, flips):
    """Re-storing the same image with permuted/flipped axes (as LPS vs RAS files do) keeps the lesions."""
    stats = sorted(round(s.volume_mm3, 6) for s in lesion_stats(label_lesions(mask, affine, r), affine))
    m2 = np.transpose(mask, perm)
    a2 = affine.copy()
    a2[:3, :3] = affine[:3, :3][:, perm]
    for ax, flip in enumerate(flips):
        if flip:
            m2 = np.flip(m2, axis=ax)
            a2[:3, 3] += a2[:3, ax] * (m2.shape[ax] - 1)
            a2[:3, ax] *= -1
    labels2 = label_lesions(m2, a2, r)
    stats2 = sorted(round(s.volume_mm3, 6) for s in lesion_stats(labels2, a2))
    assert stats2 == stats
    assert np.array_equal(labels2 > 0, np.asarray(
        label_lesions(mask, affine, r) > 0).transpose(perm)[tuple(
            slice(None, None, -1) if f else slice(None) for f in flips)])


@SETTINGS
@given(mask=masks, affine=affines(), r=rules)
def test_labelling_is_idempotent_and_monotone_in_the_rules(mask, affine, r):
    labels = label_lesions(mask, affine, r)
    again = label_lesions(labels > 0, affine, r)
    np.testing.assert_array_equal(again, labels)
    stricter = LesionRules(min_volume_mm3=r.min_volume_mm3 * 2 + 1, min_voxels=r.min_voxels + 1)
    assert np.all(label_lesions(mask, affine, stricter)[labels == 0] == 0)   # stricter rules never add

"""Registration engine, rigid-transform algebra and registration QC, against known transforms.

Images are the MNI152 template (skull-stripped T1, offline) resampled onto oblique LPS grids
with anisotropic voxels and moved by a known rigid transform: the truth is exact.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from msimaging import geometry as G
from msimaging import register as R
from msimaging.template import load_template
from tests.conftest import oblique_affine


def _grid(zooms, angles, shape):
    a = oblique_affine(zooms=zooms, angles_deg=angles, origin=(0.0, 0.0, 0.0))
    # centre the grid on the template's brain (about RAS (0, -18, 18))
    a[:3, 3] = np.array([0.0, -18.0, 18.0]) - a[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return G.Grid(shape, a)


def _truth_rigid(rot_deg=(6.0, -5.0, 5.0), shift_mm=(9.0, -8.0, 9.0)):
    tx = sitk.Euler3DTransform()
    tx.SetCenter((0.0, 18.0, 18.0))  # LPS of the brain centre
    tx.SetRotation(*np.deg2rad(rot_deg))
    tx.SetTranslation(shift_mm)
    return tx


@pytest.fixture(scope="module")
def pair():
    """Fixed template image on a 2x2x3 mm oblique LPS grid; moving = it under a known rigid motion."""
    tpl = load_template()
    fixed_grid = _grid((2.0, 2.0, 3.0), (12.0, -7.0, 20.0), (90, 100, 56))
    moving_grid = _grid((1.8, 1.8, 3.2), (-10.0, 8.0, 5.0), (100, 110, 52))
    truth = _truth_rigid()
    fixed = G.resample_array(tpl.t1, tpl.affine, fixed_grid)
    # moving(y) = template(T^-1(y)): resampling with T^-1 maps moving-grid points to template points
    moving = G.resample_array(tpl.t1, tpl.affine, moving_grid, truth.GetInverse())
    fixed_brain = G.resample_mask(tpl.brain, tpl.affine, fixed_grid)
    moving_brain = G.resample_mask(tpl.brain, tpl.affine, moving_grid, truth.GetInverse())
    return dict(fixed=(fixed, fixed_grid.affine), moving=(moving, moving_grid.affine), truth=truth,
                fixed_brain=fixed_brain, moving_brain=moving_brain)


@pytest.mark.slow
def test_rigid_registration_recovers_a_16_mm_10_degree_motion_on_oblique_anisotropic_grids(pair):
    res = R.register_to_baseline(pair["fixed"], pair["fixed_brain"], pair["moving"], pair["moving_brain"])
    points = G.brain_points_ras(pair["fixed_brain"], pair["fixed"][1], max_points=5000)
    tre = G.target_registration_error(res.transform, pair["truth"], points)
    assert G.rotation_angle_deg(pair["truth"]) > 9.0
    # both grids point-sample a 1 mm template with 3 mm slices (aliasing): the target
    assert np.median(tre) < 0.5, np.median(tre)
    assert np.percentile(tre, 95) < 0.8


@pytest.mark.slow
def test_qc_passes_the_registration_and_flags_a_residual_misalignment_and_a_wrong_image(pair):
    fixed, affine = pair["fixed"]
    brain = pair["fixed_brain"]
    grid = G.Grid(fixed.shape, affine)
    qc = R.RegistrationQC()
    good = G.resample_array(*pair["moving"], grid, pair["truth"])
    checks = R.registration_checks(fixed, good, brain, affine, pair["truth"], True, qc)
    assert {c["status"] for c in checks} == {"pass"}, checks
    # unregistered: the moving image taken as it is (a 16 mm / 10 degree residual)
    off = G.resample_array(*pair["moving"], grid)
    checks = R.registration_checks(fixed, off, brain, affine, sitk.Euler3DTransform(), True, qc)
    assert any(c["status"] != "pass" for c in checks if c["metric"] in ("ncc", "gradient_correlation"))
    # wrong image: the template upside down, "registered" with the true transform
    wrong = G.resample_array(pair["moving"][0][:, :, ::-1].copy(), pair["moving"][1], grid, pair["truth"])
    checks = R.registration_checks(fixed, wrong, brain, affine, pair["truth"], True, qc)
    assert any(c["status"] == "fail" for c in checks), checks
    # implausible motion is flagged on its own
    big = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, np.deg2rad(70.0), (0.0, 0.0, 0.0))
    checks = R.registration_checks(fixed, good, brain, affine, big, True, qc)
    assert next(c for c in checks if c["metric"] == "rotation_deg")["status"] == "fail"


def test_similarity_transform_from_matrix_keeps_scale_and_translation():
    m = np.eye(4)
    m[:3, :3] = 1.1 * G.affine_matrix_lps(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.05))[:3, :3]
    m[:3, 3] = [1.0, 2.0, 3.0]
    for kind in ("rigid", "similarity", "affine"):
        tx = R.transform_from_matrix(kind, m, (10.0, -20.0, 30.0))
        got = G.affine_matrix_lps(tx)
        expected = m.copy()
        if kind == "rigid":
            expected[:3, :3] /= 1.1
            # rigid keeps where the centre goes
            c = np.array([10.0, -20.0, 30.0, 1.0])
            np.testing.assert_allclose(got @ c, m @ c, atol=1e-9)
        else:
            np.testing.assert_allclose(got, expected, atol=1e-9)
        np.testing.assert_allclose(got[:3, :3], expected[:3, :3], atol=1e-9)


def test_implausible_level_updates_are_named():
    a = np.eye(4)
    assert R._implausible_jump(a, a, (0, 0, 0)) == ""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    assert "determinant" in R._implausible_jump(a, flip, (0, 0, 0))
    rot = G.affine_matrix_lps(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.deg2rad(45.0)))
    assert "rotation" in R._implausible_jump(a, rot, (0, 0, 0))
    shift = np.eye(4)
    shift[:3, 3] = [40.0, 0.0, 0.0]
    assert "shift" in R._implausible_jump(a, shift, (0, 0, 0))


@pytest.mark.parametrize("alpha", [0.5, -0.5, 0.25, -1.0, 2.0])
def test_rigid_power_composes_like_a_power(alpha):
    t = _truth_rigid((8.0, -12.0, 5.0), (10.0, -4.0, 7.0))
    pts = np.random.default_rng(1).normal(size=(50, 3)) * 60
    p = G.rigid_power(t, alpha)
    # T^alpha applied 1/alpha times (or its inverse) gives T
    if alpha == 0.5:
        composed = G.transform_points_ras(p, G.transform_points_ras(p, pts))
        np.testing.assert_allclose(composed, G.transform_points_ras(t, pts), atol=1e-6)
    if alpha == -1.0:
        np.testing.assert_allclose(G.transform_points_ras(p, G.transform_points_ras(t, pts)), pts, atol=1e-6)
    if alpha == 2.0:
        np.testing.assert_allclose(G.transform_points_ras(p, pts),
                                   G.transform_points_ras(t, G.transform_points_ras(t, pts)), atol=1e-6)
    assert G.rotation_angle_deg(p) == pytest.approx(abs(alpha) * G.rotation_angle_deg(t), abs=1e-6)


def test_halfway_transforms_split_the_motion_evenly():
    t = _truth_rigid()
    to_bl, to_fu = G.halfway_transforms(t)
    pts = np.random.default_rng(2).normal(size=(50, 3)) * 60
    # to_fu o to_bl^-1 == T: a baseline point p sits at to_bl^-1(p) in the halfway space
    mid = G.transform_points_ras(to_bl.GetInverse(), pts)
    np.testing.assert_allclose(G.transform_points_ras(to_fu, mid), G.transform_points_ras(t, pts), atol=1e-6)
    # each visit moves half the way: equal rotation angles
    assert G.rotation_angle_deg(to_bl) == pytest.approx(G.rotation_angle_deg(to_fu), abs=1e-9)
    assert G.rotation_angle_deg(to_fu) == pytest.approx(G.rotation_angle_deg(t) / 2, abs=1e-6)


@pytest.mark.slow
def test_resample_halfway_interpolates_both_visits_alike(pair):
    bl, fu, grid = R.resample_halfway(pair["fixed"], pair["moving"], pair["truth"])
    brain = G.resample_mask(pair["fixed_brain"], pair["fixed"][1], grid, G.halfway_transforms(pair["truth"])[0])
    inner = brain & (bl > 0.2)
    assert R.normalised_correlation(bl, fu, inner) > 0.97
    # the two are equally smooth (both interpolated once), unlike baseline-native vs resampled
    g_bl = np.abs(np.diff(bl, axis=0))[inner[1:]].mean()
    g_fu = np.abs(np.diff(fu, axis=0))[inner[1:]].mean()
    assert abs(g_bl - g_fu) / g_bl < 0.1


def test_coarse_grid_keeps_field_of_view_and_thick_slices():
    a = oblique_affine(zooms=(0.7, 0.7, 3.0))
    grid = G.Grid((320, 320, 48), a)
    c = G.coarse_grid(grid, 2.0)
    z = G.voxel_sizes(c.affine)
    assert z[2] == pytest.approx(3.0)
    assert np.allclose(z[:2], 2.0, atol=0.05)
    # same physical box: the far corners of the two grids coincide
    far = G.voxel_to_world(a, np.asarray(grid.shape) - 0.5)[0]
    far_c = G.voxel_to_world(c.affine, np.asarray(c.shape) - 0.5)[0]
    np.testing.assert_allclose(far, far_c, atol=1e-6)
    assert G.orientation_codes(c.affine) == G.orientation_codes(a)


def test_header_conventions_of_flipped_and_oblique_affines():
    lps = np.diag([-0.72, -0.72, 3.0, 1.0])
    assert G.orientation_codes(lps) == "LPS"
    assert G.orientation_codes(np.diag([1.0, 1.0, 1.0, 1.0])) == "RAS"
    assert G.obliquity_deg(lps) == pytest.approx(0.0)
    tilted = oblique_affine(zooms=(0.7, 0.7, 3.0), angles_deg=(15.0, 0.0, 0.0))
    assert G.obliquity_deg(tilted) == pytest.approx(15.0, abs=1e-6)
    # ITK keeps an oblique header exactly, but not a sheared one
    assert G.affine_distance_mm(tilted, G.itk_affine(tilted), (320, 320, 48)) < 1e-6
    sheared = tilted.copy()
    sheared[0, 1] += 0.05
    assert G.affine_distance_mm(sheared, G.itk_affine(sheared), (320, 320, 48)) > 1.0
    # the grid ITK sees is the one nibabel describes
    img = G.to_sitk(np.zeros((5, 6, 7), np.float32), tilted)
    np.testing.assert_allclose(G.grid_of(img).affine, tilted, atol=1e-9)
    assert G.grid_of(img).shape == (5, 6, 7)


def test_bounding_box_and_crop_affine_place_the_crop_where_it_was():
    a = oblique_affine()
    mask = np.zeros((30, 30, 20), bool)
    mask[10:15, 5:9, 3:6] = True
    box = G.bounding_box(mask, 2)
    assert box == (slice(8, 17), slice(3, 11), slice(1, 8))
    cropped = G.crop_affine(a, box)
    np.testing.assert_allclose(G.voxel_to_world(cropped, [[0, 0, 0]]), G.voxel_to_world(a, [[8, 3, 1]]))


@pytest.mark.slow
def test_qc_a_far_placed_follow_up_with_a_good_fit_passes_a_poor_fit_warns(pair):
    """Real sessions are often 60 mm or more apart in scanner coordinates: a shift is no warning
    while the similarity figures pass; with a poor fit it is reported as the likely cause."""
    fixed, affine = pair["fixed"]
    brain = pair["fixed_brain"]
    grid = G.Grid(fixed.shape, affine)
    qc = R.RegistrationQC()
    good = G.resample_array(*pair["moving"], grid, pair["truth"])
    far = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, 0.0, (75.0, -40.0, 30.0))   # 90 mm
    checks = R.registration_checks(fixed, good, brain, affine, far, True, qc)
    assert {c["status"] for c in checks} == {"pass"}, checks
    assert next(c for c in checks if c["metric"] == "brain_shift_mm")["value"] > 85.0
    off = G.resample_array(*pair["moving"], grid)
    checks = R.registration_checks(fixed, off, brain, affine, far, True, qc)
    shift = next(c for c in checks if c["metric"] == "brain_shift_mm")
    assert shift["status"] == "warn" and "poor fit" in shift["note"], checks

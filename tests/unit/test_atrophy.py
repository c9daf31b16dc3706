"""Brain volumes and PBVC (boundary shift integral) against analytic truth.

The synthetic head: an ellipsoidal brain (tissue = 1) with ventricles (CSF), a CSF layer, skull
(dark) and scalp (bright), rendered with partial volume on an oblique LPS grid with anisotropic
voxels. Atrophy scales the brain and ventricles about the brain centre (skull fixed); each visit
has its own rigid head pose, so the pair is related by a known rigid transform.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from msimaging import atrophy
from msimaging.geometry import LPS_FLIP, affine_matrix_lps, voxel_volume_mm3

BRAIN_AXES = np.array([62.0, 52.0, 46.0])
VENTRICLE_AXES = np.array([18.0, 9.0, 12.0])
ICV_AXES = BRAIN_AXES + 4.0
SKULL_AXES = BRAIN_AXES + 10.0
SCALP_AXES = BRAIN_AXES + 15.0
LEVELS = {"tissue": 1.0, "csf": 0.2, "skull": 0.0, "scalp": 0.8, "air": 0.0}


def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    rx, ry, rz = np.deg2rad(deg)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def _grid_affine(zooms=(2.0, 2.0, 2.5), shape=(84, 80, 62)) -> np.ndarray:
    """Oblique LPS-ordered grid centred on the origin."""
    rot = np.diag([-1.0, -1.0, 1.0]) @ _rotation((8.0, -6.0, 12.0))
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(zooms)
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def _inside(points: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return ((points / axes) ** 2).sum(axis=-1) <= 1.0


def render(pose: np.ndarray, scale: float, shape=(84, 80, 62), sub: int = 2, noise: float = 0.0,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, affine, brain mask) of the head at linear brain ``scale``, seen with head ``pose``.

    ``pose`` (4x4, RAS) maps anatomy points to scanner points. Partial volume by ``sub``^3
    sub-samples per voxel.
    """
    aff = _grid_affine(shape=shape)
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    inv = np.linalg.inv(pose)
    image = np.zeros(shape, dtype=np.float32)
    brain_frac = np.zeros(shape, dtype=np.float32)
    for dx in offsets:
        for dy in offsets:
            for dz in offsets:
                p = (idx + np.array([dx, dy, dz], dtype=np.float32)) @ aff[:3, :3].T.astype(np.float32) + aff[:3, 3]
                a = p @ inv[:3, :3].T.astype(np.float32) + inv[:3, 3]
                brain = _inside(a, BRAIN_AXES * scale) & ~_inside(a, VENTRICLE_AXES * scale)
                val = np.full(shape, LEVELS["air"], dtype=np.float32)
                val[_inside(a, SCALP_AXES)] = LEVELS["scalp"]
                val[_inside(a, SKULL_AXES)] = LEVELS["skull"]
                val[_inside(a, ICV_AXES)] = LEVELS["csf"]
                val[brain] = LEVELS["tissue"]
                image += val
                brain_frac += _inside(a, BRAIN_AXES * scale)
    image /= sub ** 3
    if noise:
        rng = np.random.default_rng(seed)
        image = np.abs(image + rng.normal(0, noise, shape) + 1j * rng.normal(0, noise, shape)).astype(np.float32)
    mask = brain_frac / sub ** 3 >= 0.5
    from scipy import ndimage as ndi
    return image, aff, ndi.binary_dilation(mask, iterations=1)


def _pose(deg, shift) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation(deg)
    m[:3, 3] = shift
    return m


def _itk(ras: np.ndarray) -> sitk.AffineTransform:
    lps = LPS_FLIP @ ras @ LPS_FLIP
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in lps[:3, 3]])
    return tx


BL_POSE = _pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
FU_POSE = _pose((3.0, -4.0, 2.5), (4.3, -2.7, 3.1))
#: from-session_to-baseline: baseline scanner points -> follow-up scanner points.
FU_TO_BL = _itk(FU_POSE @ np.linalg.inv(BL_POSE))
TRUE_BRAIN_ML = (4 / 3 * np.pi * (np.prod(BRAIN_AXES) - np.prod(VENTRICLE_AXES))) / 1000


@pytest.fixture(scope="module")
def baseline():
    return render(BL_POSE, 1.0, noise=0.02, seed=1)


def test_halfway_transforms_compose_to_the_rigid_part():
    scaled = _itk(FU_POSE @ np.diag([1.02, 0.99, 1.01, 1.0]))  # an affine registration's scaling is dropped
    to_bl, to_fu = atrophy.halfway_transforms(scaled)
    half = affine_matrix_lps(to_fu)
    rigid = atrophy.rigid_part(scaled)
    np.testing.assert_allclose(half @ half, rigid, atol=1e-9)
    np.testing.assert_allclose(affine_matrix_lps(to_bl) @ half, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(rigid[:3, :3] @ rigid[:3, :3].T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(rigid, LPS_FLIP @ FU_POSE @ LPS_FLIP, atol=0.02)


def test_tissue_levels_find_csf_and_tissue(baseline):
    image, _, brain = baseline
    csf, tissue = atrophy.tissue_levels(image * 900 + 50, brain, csf_bright=False)
    assert abs(tissue - (900 + 50)) < 0.03 * 900
    assert abs(csf - (0.2 * 900 + 50)) < 0.08 * 900
    csf_t2, tissue_t2 = atrophy.tissue_levels(1.2 - image, brain, csf_bright=True)
    assert abs(tissue_t2 - 0.2) < 0.03 and abs(csf_t2 - 1.0) < 0.08


def test_session_volumes_match_the_analytic_head(baseline):
    image, aff, brain = baseline
    vols = atrophy.session_volumes(image * 1000.0, aff, brain, None, csf_bright=False)
    true_icv = 4 / 3 * np.pi * np.prod(ICV_AXES) / 1000
    assert vols["brain_volume_ml"] == pytest.approx(TRUE_BRAIN_ML, rel=0.03)
    assert vols["icv_ml"] == pytest.approx(true_icv, rel=0.05)
    assert vols["bpf"] == pytest.approx(TRUE_BRAIN_ML / true_icv, rel=0.06)
    # lesions count as parenchyma: a dark 'lesion' inside the brain is not lost volume
    lesion = np.zeros_like(brain)
    lesion[40:44, 38:42, 29:33] = True
    dark = np.where(lesion, 0.2, image) * 1000.0
    with_mask = atrophy.session_volumes(dark, aff, brain, lesion, csf_bright=False)
    assert with_mask["brain_volume_ml"] == pytest.approx(vols["brain_volume_ml"], rel=0.002)


@pytest.mark.slow
@pytest.mark.parametrize("loss_percent", [0.0, 1.0, 2.0])
def test_pbvc_of_a_known_atrophy_on_an_oblique_anisotropic_pair(baseline, loss_percent):
    scale = (1 - loss_percent / 100) ** (1 / 3)
    fu_img, fu_aff, fu_brain = render(FU_POSE, scale, noise=0.02, seed=2)
    bl_img, bl_aff, bl_brain = baseline
    out = atrophy.pbvc((bl_img * 700, bl_aff), bl_brain, (fu_img * 900 + 30, fu_aff), fu_brain, FU_TO_BL)
    # the ventricles shrink with the brain in this model, so the true parenchymal change is exact
    assert out["pbvc_vs_baseline"] == pytest.approx(-loss_percent, abs=0.12)
    assert out["baseline_brain_ml"] == pytest.approx(TRUE_BRAIN_ML, rel=0.04)


@pytest.mark.slow
def test_pbvc_sign_and_size_follow_growth_too(baseline):
    fu_img, fu_aff, fu_brain = render(FU_POSE, 1.01 ** (1 / 3), noise=0.02, seed=3)
    bl_img, bl_aff, bl_brain = baseline
    out = atrophy.pbvc((bl_img, bl_aff), bl_brain, (fu_img, fu_aff), fu_brain, FU_TO_BL)
    assert out["pbvc_vs_baseline"] == pytest.approx(1.0, abs=0.12)


def test_boundary_shift_integral_counts_a_moved_edge():
    # slab: a tissue/CSF edge blurred over 10 voxels moves by 0.4 voxel towards the tissue
    x = np.arange(60, dtype=float)

    def profile(edge: float) -> np.ndarray:
        return np.clip((edge - x) / 10.0 + 0.5, 0.0, 1.0)

    bl = np.broadcast_to(profile(30.0)[:, None, None], (60, 5, 5)).astype(np.float32)
    fu = np.broadcast_to(profile(29.6)[:, None, None], (60, 5, 5)).astype(np.float32)
    region = np.ones(bl.shape, dtype=bool)
    lost = atrophy.boundary_shift_integral(bl, fu, region, voxel_mm3=2.0, window=(0.2, 0.6))
    assert lost == pytest.approx(0.4 * 25 * 2.0, rel=0.02)
    assert atrophy.boundary_shift_integral(fu, bl, region, 2.0, (0.2, 0.6)) == pytest.approx(-lost)


@pytest.mark.slow
def test_run_measure_writes_volumes_and_pbvc(tmp_path, baseline):
    from msimaging import io
    from msimaging.geometry import write_transform

    bl_img, bl_aff, bl_brain = baseline
    fu_img, fu_aff, fu_brain = render(FU_POSE, (1 - 0.01) ** (1 / 3), noise=0.02, seed=4)
    paths = {k: str(tmp_path / f"{k}.nii.gz") for k in ("bl", "blm", "fu", "fum")}
    io.write_image(paths["bl"], bl_img * 1000, bl_aff)
    io.write_mask(paths["blm"], bl_brain, bl_aff)
    io.write_image(paths["fu"], fu_img * 1000, fu_aff)
    io.write_mask(paths["fum"], fu_brain, fu_aff)
    xfm = str(tmp_path / "xfm.txt")
    write_transform(FU_TO_BL, xfm)
    out = tmp_path / "qc.json"
    atrophy.run_measure(paths["fu"], paths["fum"], "FLAIR", paths["bl"], paths["blm"], xfm, str(out),
                        "s01", "M12", {"atrophy": {"bsi_window": [0.2, 0.6]}})
    import json
    report = json.loads(out.read_text())
    figs = report["figures"]
    assert figs["pbvc_vs_baseline"] == pytest.approx(-1.0, abs=0.12)
    assert figs["brain_volume_ml"] == pytest.approx(TRUE_BRAIN_ML * 0.99, rel=0.03)
    assert 0 < figs["bpf"] < 1 and figs["icv_ml"] > figs["brain_volume_ml"]
    assert voxel_volume_mm3(fu_aff) == pytest.approx(10.0)


def test_match_blur_finds_the_extra_blur_of_a_re_interpolated_visit():
    """A re-interpolated copy is blurrier; the sharper visit is blurred to match, whichever it is."""
    from scipy import ndimage as ndi

    from msimaging.atrophy import match_blur

    rng = np.random.default_rng(0)
    sharp = (ndi.gaussian_filter(rng.random((80, 80, 12)), (1.5, 1.5, 0.5)) > 0.5).astype(np.float32)
    blurred = ndi.gaussian_filter(sharp, (0.6, 0.6, 0.0)).astype(np.float32)
    region = np.ones(sharp.shape, bool)
    noisy = lambda x: (x + rng.normal(0, 0.03, x.shape)).astype(np.float32)  # noqa: E731
    _, _, info = match_blur(noisy(sharp), noisy(blurred), region, 1.0)
    assert 0.4 <= info["blur_sigma_vox"] <= 0.8
    _, _, info = match_blur(noisy(blurred), noisy(sharp), region, 1.0)
    assert -0.8 <= info["blur_sigma_vox"] <= -0.4
    _, _, info = match_blur(noisy(sharp), noisy(sharp), region, 1.0)
    assert abs(info["blur_sigma_vox"]) <= 0.15

"""Lesion segmentation: building blocks on synthetic arrays, accuracy on phantoms with known truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from msimaging import io
from msimaging.evaluate import lesion_agreement
from msimaging.geometry import Grid, read_transform, resample_array
from msimaging.lesions import label_lesions
from msimaging.segment import (
    SegmentOptions,
    conditional_grow,
    fit_tissue_model,
    flat_priors,
    hyper_contrast,
    midline_mirror,
    mirror_reference,
    noise_sd,
    robust_stats,
    segment_lesions,
    smooth_mm,
    tissue_priors,
)
from tests.conftest import SHARED_DATA, oblique_affine


def test_robust_stats_ignore_a_bright_tail():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(100, 5, 20000), rng.normal(200, 5, 1000)])  # 5 % "lesions"
    med, sd = robust_stats(v)
    assert med == pytest.approx(100, abs=1.0)
    assert sd == pytest.approx(5, rel=0.1)


def test_conditional_grow_stays_inside_allowed_and_stops_after_steps():
    allowed = np.zeros((20, 20, 20), bool)
    allowed[5:15, 10, 10] = True
    seeds = np.zeros_like(allowed)
    seeds[5, 10, 10] = True
    grown = conditional_grow(seeds, allowed, 3)
    assert grown.sum() == 4 and not (grown & ~allowed).any()
    assert conditional_grow(seeds, allowed, 100).sum() == 10


def test_smooth_mm_is_in_physical_units_on_anisotropic_grids():
    aff = np.diag([1.0, 1.0, 4.0, 1.0])
    img = np.zeros((41, 41, 11), np.float32)
    img[20, 20, 5] = 1.0
    sm = smooth_mm(img, aff, 4.0)
    # sigma 4 mm = 4 voxels in-plane, 1 voxel through-plane
    prof_x, prof_z = sm[:, 20, 5], sm[20, 20, :]
    assert prof_x[24] / prof_x[20] == pytest.approx(np.exp(-0.5), rel=0.05)
    assert prof_z[6] / prof_z[5] == pytest.approx(np.exp(-0.5), rel=0.05)


def test_tissue_mixture_recovers_three_classes_despite_outliers():
    rng = np.random.default_rng(1)
    means = np.array([[0.3, 1.8], [0.8, 1.2], [1.0, 1.0]])  # (T1w, T2w) of CSF, GM, WM
    x = np.concatenate([rng.normal(m, 0.05, (n, 2)) for m, n in zip(means, (3000, 8000, 9000))])
    x = np.concatenate([x, rng.normal([0.7, 1.9], 0.05, (600, 2))])  # lesion-like outliers
    prior = np.zeros((x.shape[0], 3))
    prior[:3000, 0] = prior[3000:11000, 1] = prior[11000:20000, 2] = 1.0
    prior[20000:] = 1 / 3
    prior = 0.6 * prior + 0.4 / 3
    model = fit_tissue_model(x, prior, ("T1w", "T2w"))
    assert np.allclose(model.means, means, atol=0.03)
    assert model.sd("wm", 0) == pytest.approx(0.05, rel=0.3)


def test_hyper_contrast_prefers_flair_then_t2w():
    a = np.zeros((2, 2, 2))
    assert hyper_contrast({"T1w": a, "FLAIR": a, "T2w": a}) == "FLAIR"
    assert hyper_contrast({"T1w": a, "T2w": a}) == "T2w"
    with pytest.raises(ValueError):
        hyper_contrast({"T1w": a})


def _synthetic_brain(aff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A WM ellipsoid in a GM shell in CSF, with two spherical lesions of known size (FLAIR-like)."""
    shape = (64, 64, 24)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
    c = (np.array(shape) - 1) / 2
    mm = (np.indices(shape).T - c).T * zooms[:, None, None, None]
    r = np.sqrt((mm[0] / 55) ** 2 + (mm[1] / 55) ** 2 + (mm[2] / 40) ** 2)
    brain = r <= 1.0
    wm = r <= 0.8
    rng = np.random.default_rng(3)
    flair = np.where(wm, 1.0, np.where(brain, 1.25, 0.0)).astype(np.float32)
    truth = np.zeros(shape, bool)
    for centre, rad in (((-15.0, 10.0, 0.0), 4.0), ((15.0, -12.0, 6.0), 6.0)):
        d = np.sqrt(sum((mm[i] - centre[i]) ** 2 for i in range(3)))
        truth |= d <= rad
    flair[truth] = 1.9
    flair = ndi.gaussian_filter(flair, 0.7 / zooms) + rng.normal(0, 0.03, shape).astype(np.float32)
    flair = np.where(brain, flair, 0.0).astype(np.float32)
    return flair, brain, truth


def test_two_lesions_in_a_synthetic_brain_without_template():
    aff = oblique_affine(zooms=(2.0, 2.0, 4.0))
    flair, brain, truth = _synthetic_brain(aff)
    seg = segment_lesions({"FLAIR": flair}, aff, brain, flat_priors(brain.shape), SegmentOptions(
        max_cortex_fraction=1.0, max_csf_fraction=1.0))
    a = lesion_agreement(seg.labels > 0, truth, aff)
    assert (a.pred_count, a.truth_count) == (2, 2)
    assert a.dice >= 0.75
    # the mask is exactly the lesions of the thresholded probability
    assert np.array_equal(seg.labels, label_lesions(seg.prob >= 0.5, aff))
    assert seg.prob.dtype == np.float32 and 0.0 <= seg.prob.min() and seg.prob.max() <= 1.0


def test_the_rim_of_a_kept_lesion_takes_its_half_lesion_voxels_only_next_to_it():
    aff = oblique_affine(zooms=(1.0, 1.0, 1.0))
    flair, brain, truth = _synthetic_brain(aff)
    opts = dict(max_cortex_fraction=1.0, max_csf_fraction=1.0)
    plain = segment_lesions({"FLAIR": flair}, aff, brain, flat_priors(brain.shape),
                            SegmentOptions(rim_mm=0.0, **opts)).labels > 0
    rim = segment_lesions({"FLAIR": flair}, aff, brain, flat_priors(brain.shape),
                          SegmentOptions(rim_mm=1.0, rim_fraction=0.4, **opts)).labels > 0
    added = rim & ~plain
    assert not (plain & ~rim).any() and added.any()
    # one voxel (1 mm) around the lesions, no new lesions
    assert not (added & ~ndi.binary_dilation(plain, ndi.generate_binary_structure(3, 1))).any()
    assert label_lesions(rim, aff).max() == label_lesions(plain, aff).max() == 2


def test_noise_sd_ignores_anatomy_between_neighbours():
    rng = np.random.default_rng(5)
    ramp = np.linspace(0, 1, 40, dtype=np.float32)[:, None, None] * np.ones((40, 40, 10), np.float32)
    img = ramp + rng.normal(0, 0.02, ramp.shape).astype(np.float32)
    img[:, :, ::2] += 0.5  # thick-slice structure along z: the in-plane axes are used
    assert noise_sd(img, np.ones(img.shape, bool)) == pytest.approx(0.02, rel=0.1)


def _centred_affine(shape, zooms):
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(zooms)
    return aff


def test_midline_mirror_gives_each_voxel_its_contralateral_homologue():
    import SimpleITK as sitk

    shape, zooms = (41, 21, 11), (2.0, 2.0, 2.0)
    aff = _centred_affine(shape, zooms)
    img = np.zeros(shape, np.float32)
    img[30, 10, 5] = 1.0                                  # x = +18 mm
    ident = sitk.AffineTransform(3)                       # session already in template space
    mirrored = resample_array(img, aff, Grid(shape, aff), midline_mirror(ident), "linear")
    assert mirrored[10, 10, 5] == pytest.approx(1.0) and mirrored[30, 10, 5] == pytest.approx(0.0)
    ref = mirror_reference(img, aff, midline_mirror(ident), 2.0)
    assert ref[10, 10, 5] == ref[11, 10, 5] == pytest.approx(1.0)  # slack of 2 mm = 1 voxel


def test_symmetric_hyperintensities_are_not_lesions_unless_far_above_grey_matter():
    import SimpleITK as sitk
    from dataclasses import replace

    aff = _centred_affine((64, 64, 24), (2.0, 2.0, 4.0))
    flair, brain, truth = _synthetic_brain(aff)
    zooms = np.array([2.0, 2.0, 4.0])
    mm = (np.indices(flair.shape).T - (np.array(flair.shape) - 1) / 2).T * zooms[:, None, None, None]
    pair = np.zeros(flair.shape, bool)
    for x in (-22.0, 22.0):                             # a bilateral hyperintensity
        pair |= np.sqrt((mm[0] - x) ** 2 + (mm[1] + 20) ** 2 + (mm[2] + 8) ** 2) <= 5.0
    flair = np.where(pair, 1.9, flair).astype(np.float32)
    flat = flat_priors(brain.shape)
    mirrored = replace(flat, mirror=midline_mirror(sitk.AffineTransform(3)))
    opts = SegmentOptions(max_cortex_fraction=1.0, max_csf_fraction=1.0)
    without = segment_lesions({"FLAIR": flair}, aff, brain, flat, opts)
    assert lesion_agreement(without.labels > 0, truth | pair, aff).pred_count == 4
    # the mirror rule alone removes the symmetric pair and keeps the asymmetric lesions
    strict = segment_lesions({"FLAIR": flair}, aff, brain, mirrored, replace(opts, mirror_exempt_z_gm=np.inf))
    a = lesion_agreement(strict.labels > 0, truth, aff)
    assert (a.pred_count, a.detected_truth) == (2, 2) and a.dice >= 0.75
    # ... but a pair this far above grey matter is no normal anatomy: bilateral lesions are kept
    kept = segment_lesions({"FLAIR": flair}, aff, brain, mirrored, opts)
    assert lesion_agreement(kept.labels > 0, truth | pair, aff).pred_count == 4
    assert strict.figures["removed_mirror"] == 2 and kept.figures["removed_mirror"] == 0


def test_bundled_lesion_prior_is_periventricular_and_symmetric():
    from msimaging.lesion_prior import frequency_map

    freq, aff = frequency_map()

    def at(p):
        return float(freq[tuple(np.round(np.linalg.solve(aff[:3, :3], np.subtract(p, aff[:3, 3]))).astype(int))])

    assert at((26, -40, 20)) > 0.05 and at((26, -40, 20)) == pytest.approx(at((-26, -40, 20)))
    assert at((0, 60, 40)) < SegmentOptions().min_lesion_prior   # frontal pole outside the brain WM


# --- phantoms with known truth ------------------------------------------------------------------


def _phantom_session(root, zooms, orientation, seed):
    from msimaging.phantom import PhantomOptions, make_study
    from msimaging.preprocess import brain_mask_morphological, standardise
    from msimaging.register import register_template

    masks = SHARED_DATA / "ms-lesion-masks"
    make_study(root, PhantomOptions(subjects=1, sessions=1, resolution_mm=zooms, seed=seed, orientation=orientation,
                                    contrasts=("FLAIR", "T2w", "T1w"),
                                    lesion_masks_dir=masks if masks.is_dir() else None))
    anat = next(root.glob("sub-*/ses-*/anat"))
    tdir = next((root / "derivatives" / "truth").glob("sub-*/ses-*/anat"))
    flair, aff = io.read_image(next(anat.glob("*_FLAIR.nii.gz")))
    brain = brain_mask_morphological(flair, aff)
    xfm, _ = register_template(flair, aff, brain)
    images = {"FLAIR": standardise(flair, brain)}
    for c in ("T1w", "T2w"):  # truth transforms: co-registration is tested elsewhere
        data, a = io.read_image(next(anat.glob(f"*_{c}.nii.gz")))
        t = read_transform(next(tdir.glob(f"*_from-{c}_to-FLAIR_mode-image_xfm.txt")))
        images[c] = standardise(resample_array(data, a, Grid(flair.shape, aff), t, "linear"), brain)
    truth, t_aff = io.read_mask(next(tdir.glob("*_label-lesion_mask.nii.gz")))
    assert np.allclose(t_aff, aff, atol=1e-3)
    return images, aff, brain, tissue_priors(Grid(flair.shape, aff), xfm), truth


@pytest.mark.slow
@pytest.mark.parametrize("zooms, orientation, seed, contrasts, min_dice, max_volume_error", [
    # measured with the learned model (README): Dice 0.845, lesion F1 1.00, volume +31 %
    ((3.0, 3.0, 3.0), "LPS", 21, ("FLAIR", "T1w", "T2w"), 0.80, 0.40),
    # thick-slice 2D FLAIR alone: Dice 0.45 (under-segmented, -38 %), lesion F1 0.97; the naive FLAIR
    # z > 3 reaches 0.85 on this phantom (its lesions are far brighter and sharper than real ones;
    # on real backgrounds the FLAIR-only model is the better one: README) - a known shortfall
    ((1.5, 1.5, 4.5), "oblique", 22, ("FLAIR",), 0.40, 0.50),
])
def test_phantom_accuracy_meets_the_targets(tmp_path, zooms, orientation, seed, contrasts, min_dice,
                                            max_volume_error):
    images, aff, brain, priors, truth = _phantom_session(tmp_path, zooms, orientation, seed)
    seg = segment_lesions({c: images[c] for c in contrasts}, aff, brain, priors)
    assert seg.figures["model"] == "+".join(c for c in ("FLAIR", "T2w", "T1w") if c in contrasts)
    a = lesion_agreement(seg.labels > 0, truth, aff)
    assert a.truth_count >= 8
    assert a.dice >= min_dice, a
    assert a.lesion_f1 >= 0.95, a
    assert a.pred_volume_ml == pytest.approx(a.truth_volume_ml, rel=max_volume_error)

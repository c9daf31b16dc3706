"""Registration (SimpleITK): rigid co-registration, follow-up to baseline, template to session.

Every transform returned here is in ITK's resampling convention: it maps points of the
*fixed* image to points of the *moving* image, so ``geometry.resample(moving, fixed, T)``
puts the moving image onto the fixed grid (DESIGN §3).

The engine (:func:`register`) is multi-resolution with its own pyramid: at each level both
images are smoothed and resampled to voxels of at least ``levels_mm`` *per axis*, so thick
slices (0.7x0.7x3 mm) are never shrunk along their thick axis as ITK's uniform shrink factors
would do; the fixed image is cropped to its mask's bounding box; the metric samples at most
``max_samples`` points of the fixed mask per level. ITK uses the global thread count that
:func:`msimaging.runtime.set_threads` sets.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from msimaging.geometry import (
    Grid,
    affine_matrix_lps,
    bounding_box,
    coarse_grid,
    crop_affine,
    displacement_mm,
    euler_from_matrix,
    halfway_transforms,
    resample_array,
    rotation_angle_deg,
    to_sitk,
    voxel_sizes,
    voxel_to_world,
)
from msimaging.preprocess import brain_mask_morphological, head_mask, standardise

log = logging.getLogger(__name__)

ImagePair = tuple[np.ndarray, np.ndarray]

TRANSFORM_KINDS = ("rigid", "similarity", "affine")


@dataclass(frozen=True)
class RegistrationOptions:
    """How :func:`register` works (config keys under ``registration``).

    ``levels_mm``: working voxel size per pyramid level (never finer than the image);
    ``iterations``: optimiser iterations per level; ``max_samples``: metric sample points per
    level (random, fixed seed); ``metric``: ``"mattes"`` (mutual information, any contrasts) or
    ``"correlation"`` (same contrast); ``crop_margin_mm``: margin kept around the fixed mask.
    """

    levels_mm: Sequence[float] = (4.0, 2.0, 1.0)
    iterations: int = 100
    max_samples: int = 20000
    histogram_bins: int = 32
    metric: str = "mattes"
    seed: int = 20240101
    crop_margin_mm: float = 12.0
    min_step_mm: float = 0.01


@dataclass
class RegistrationResult:
    """A registration's transform (fixed -> moving points) and how it went."""

    transform: sitk.Transform
    metric: float
    seconds: float
    iterations: list[int] = field(default_factory=list)

    @property
    def rotation_deg(self) -> float:
        return rotation_angle_deg(self.transform)


# --- the engine ---------------------------------------------------------------------------------


def _smooth_resample(img: sitk.Image, grid: Grid, interpolation: int = sitk.sitkLinear) -> sitk.Image:
    """``img`` anti-aliased for ``grid``'s voxel size and resampled onto it (float32)."""
    native = np.asarray(img.GetSpacing(), dtype=float)
    target = voxel_sizes(grid.affine)
    # Gaussian whose FWHM makes up the difference between the two voxel sizes, per image axis.
    sigma = 0.5 * np.sqrt(np.maximum(target.max() ** 2 - native ** 2, 0.0)) / 1.1775
    sigma = np.where(native >= target.max() * 0.999, 0.0, sigma)
    if interpolation == sitk.sitkLinear and np.any(sigma > 0.05):
        img = sitk.SmoothingRecursiveGaussian(img, [float(max(s, 1e-3)) for s in sigma])
    return sitk.Resample(img, grid.reference_image(), sitk.Transform(3, sitk.sitkIdentity), interpolation, 0.0,
                         sitk.sitkFloat32)


def _shrink(img: sitk.Image, spacing: float) -> sitk.Image:
    """``img`` block-averaged (BinShrink) to voxels of about ``spacing`` mm per axis, float32.

    Axes already coarser than ``spacing`` are left alone; a light Gaussian finishes the
    anti-aliasing when the blocks are coarse. Far cheaper than smoothing at full resolution.
    """
    native = np.asarray(img.GetSpacing(), dtype=float)
    factors = [int(max(1, math.floor(spacing / z + 0.25))) for z in native]
    out = sitk.Cast(img, sitk.sitkFloat32)
    if any(f > 1 for f in factors):
        out = sitk.BinShrink(out, factors)
        sigma = [0.25 * z * f if f > 1 else 0.0 for z, f in zip(native, factors)]
        if any(sg > 0 for sg in sigma):
            out = sitk.SmoothingRecursiveGaussian(out, [float(max(sg, 1e-3)) for sg in sigma])
    return out


def _level_images(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None,
                  spacing: float) -> tuple[sitk.Image, sitk.Image, sitk.Image | None]:
    f = _shrink(fixed, spacing)
    m = _shrink(moving, spacing)
    mask = None
    if fixed_mask is not None:
        frac = sitk.Resample(sitk.Cast(fixed_mask, sitk.sitkFloat32), f, sitk.Transform(3, sitk.sitkIdentity),
                             sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        mask = sitk.Cast(frac >= 0.5, sitk.sitkUInt8)
    return f, m, mask


def _new_transform(kind: str, centre: Sequence[float]) -> sitk.Transform:
    if kind == "rigid":
        tx: sitk.Transform = sitk.Euler3DTransform()
    elif kind == "similarity":
        tx = sitk.Similarity3DTransform()
    elif kind == "affine":
        tx = sitk.AffineTransform(3)
    else:
        raise ValueError(f"unknown transform kind {kind!r}; use one of {TRANSFORM_KINDS}")
    tx.SetCenter([float(c) for c in centre])  # type: ignore[attr-defined]
    return tx


def transform_from_matrix(kind: str, matrix_lps: np.ndarray, centre: Sequence[float]) -> sitk.Transform:
    """A ``kind`` transform with centre ``centre`` (LPS) equal to the 4x4 LPS ``matrix_lps``.

    A centre inside the brain decouples rotation from translation for the optimiser. For
    ``rigid`` the linear part is projected on the nearest rotation; for ``similarity`` on the
    nearest rotation times the mean scale; the centre still goes where ``matrix_lps`` sends it.
    """
    m = np.asarray(matrix_lps, dtype=float)
    lin = m[:3, :3]
    u, s, vt = np.linalg.svd(lin)
    if kind == "rigid":
        lin = u @ vt
    elif kind == "similarity":
        lin = (u @ vt) * float(np.cbrt(np.prod(s)))
    c = np.asarray(centre, dtype=float)
    tx = _new_transform(kind, c)
    if kind == "similarity":
        scale = float(np.cbrt(np.linalg.det(lin)))
        # ITK's Similarity3DTransform.SetMatrix resets the scale: set the rotation first
        tx.SetMatrix([float(v) for v in (lin / scale).ravel()])  # type: ignore[attr-defined]
        tx.SetScale(scale)  # type: ignore[attr-defined]
    else:
        tx.SetMatrix([float(v) for v in lin.ravel()])  # type: ignore[attr-defined]
    # T(x) = L (x - c) + c + t' with T(c) = M(c)  =>  t' = M(c) - c: equal to M when L is M's
    # linear part; for a projected L the centre (the brain) still goes where M sends it
    tx.SetTranslation([float(v) for v in m[:3, :3] @ c + m[:3, 3] - c])  # type: ignore[attr-defined]
    return tx


def centred_euler(matrix_lps: np.ndarray, centre: Sequence[float]) -> sitk.Euler3DTransform:
    """A rigid transform equal to the 4x4 LPS ``matrix_lps``, rotating about ``centre``."""
    return transform_from_matrix("rigid", matrix_lps, centre)  # type: ignore[return-value]


def mask_centroid_lps(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centroid (LPS mm) of a mask's voxels."""
    idx = np.argwhere(np.asarray(mask))
    if idx.size == 0:
        idx = (np.asarray(np.shape(mask)) - 1)[None, :] / 2.0
    ras = voxel_to_world(affine, idx.mean(axis=0))[0]
    return np.array([-ras[0], -ras[1], ras[2]])


def _run_level(f: sitk.Image, m: sitk.Image, mask: sitk.Image | None, tx: sitk.Transform, spacing: float,
               options: RegistrationOptions, step_mm: float | None = None,
               search: bool = False) -> tuple[float, int]:
    reg = sitk.ImageRegistrationMethod()
    if options.metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(options.histogram_bins))
    elif options.metric == "correlation":
        reg.SetMetricAsCorrelation()
    else:
        raise ValueError(f"unknown metric {options.metric!r}; use mattes or correlation")
    n = int(sitk.GetArrayViewFromImage(mask).sum()) if mask is not None else int(np.prod(f.GetSize()))
    fraction = min(1.0, float(options.max_samples) / max(n, 1))
    if fraction < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(fraction, int(options.seed))
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    # Gradients at the sample points only: the default gradient *images* cost seconds per level.
    reg.SetMetricUseFixedImageGradientFilter(False)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(step_mm if step_mm is not None else spacing), minStep=float(options.min_step_mm) * max(1.0, spacing / 2.0),
        numberOfIterations=int(options.iterations), relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(tx, inPlace=True)
    start = np.asarray(tx.GetParameters(), dtype=float)
    before = float(reg.MetricEvaluate(f, m))
    reg.Execute(f, m)
    after = float(reg.MetricEvaluate(f, m))
    if not after <= before:
        # the optimiser wandered off (same samples, worse metric): keep where the level started
        level = logging.WARNING if after - before > 0.01 * abs(before) and not search else logging.DEBUG
        log.log(level, "level %.1f mm made the metric worse (%.4f -> %.4f); keeping its start", spacing, before, after)
        tx.SetParameters([float(v) for v in start])
        return before, int(reg.GetOptimizerIteration())
    return after, int(reg.GetOptimizerIteration())


def _implausible_jump(before: np.ndarray, after: np.ndarray, centre: Sequence[float]) -> str:
    """Why one pyramid level's update is implausible (empty when it is not).

    A level refines the previous one: it never flips the handedness, never changes the volume
    by more than a factor 1.5, rotates by at most 20 degrees or moves the centre by 30 mm.
    """
    det = float(np.linalg.det(after[:3, :3]))
    if not 1.0 / 1.5 <= det / float(np.linalg.det(before[:3, :3])) <= 1.5:
        return f"determinant {det:.3f}"
    rel = after @ np.linalg.inv(before)
    u, _, vt = np.linalg.svd(rel[:3, :3])
    angle = float(np.degrees(np.arccos(np.clip((np.trace(u @ vt) - 1.0) / 2.0, -1.0, 1.0))))
    if angle > 20.0:
        return f"rotation by {angle:.1f} degrees"
    c = np.append(np.asarray(centre, dtype=float), 1.0)
    shift = float(np.linalg.norm((after @ c - before @ c)[:3]))
    if shift > 30.0:
        return f"shift by {shift:.1f} mm"
    return ""


def register(
    fixed: ImagePair,
    moving: ImagePair,
    fixed_mask: np.ndarray | None = None,
    kind: str = "rigid",
    options: RegistrationOptions = RegistrationOptions(),
    initial: sitk.Transform | None = None,
    moving_mask: np.ndarray | None = None,
    stages: Sequence[tuple[str, Sequence[float]]] | None = None,
    search: bool = False,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; both are ``(data, affine)`` pairs (RAS affines).

    ``fixed_mask`` (on the fixed grid) restricts the metric and crops the work. The start is
    ``initial`` when given (any linear ITK transform, fixed -> moving points), else the identity
    in world space (images of one session share scanner coordinates), shifted to align the
    centroids of ``fixed_mask`` and ``moving_mask`` when both are given. ``stages`` overrides
    the transform kind per group of levels, e.g. ``[("similarity", (6, 4)), ("affine", (4, 2))]``.
    Returns the transform (a ``kind`` transform centred on the fixed mask's centroid). A level
    that makes the metric worse, or jumps implausibly far, is undone (logged as a warning, or at
    debug level when ``search``: one of many quick starts, where that is expected).
    """
    t0 = time.perf_counter()
    fdata, faffine = fixed
    mdata, maffine = moving
    if fixed_mask is not None:
        fixed_mask = np.asarray(fixed_mask, dtype=bool)
        if fixed_mask.sum() < 27:
            raise ValueError("the fixed mask is (almost) empty; cannot register")
        margin = np.ceil(options.crop_margin_mm / voxel_sizes(faffine)).astype(int)
        box = bounding_box(fixed_mask, margin)
        fdata, fixed_mask = np.asarray(fdata)[box], fixed_mask[box]
        faffine = crop_affine(faffine, box)
    f_img = to_sitk(np.asarray(fdata, dtype=np.float32), faffine)
    m_img = to_sitk(np.asarray(mdata, dtype=np.float32), maffine)
    mask_img = to_sitk(fixed_mask.astype(np.uint8), faffine) if fixed_mask is not None else None
    centre = (mask_centroid_lps(fixed_mask, faffine) if fixed_mask is not None
              else mask_centroid_lps(np.ones(np.shape(fdata), bool), faffine))
    if initial is not None:
        start = affine_matrix_lps(initial)
    else:
        start = np.eye(4)
        if fixed_mask is not None and moving_mask is not None and np.any(moving_mask):
            start[:3, 3] = mask_centroid_lps(moving_mask, maffine) - centre
    plan = list(stages) if stages is not None else [(kind, tuple(options.levels_mm))]
    tx: sitk.Transform | None = None
    metric = float("nan")
    iterations: list[int] = []
    for stage_kind, levels in plan:
        tx = transform_from_matrix(stage_kind, start if tx is None else affine_matrix_lps(tx), centre)
        for spacing in levels:
            t1 = time.perf_counter()
            f, m, mask = _level_images(f_img, m_img, mask_img, float(spacing))
            t2 = time.perf_counter()
            before = affine_matrix_lps(tx)
            # 12 affine parameters take smaller first steps: a 4 mm step on a scale diverges
            step = float(spacing) / 4.0 if stage_kind == "affine" else float(spacing)
            metric, its = _run_level(f, m, mask, tx, float(spacing), options, step, search)
            log.debug("level %.1f mm: images %.2f s, optimisation %.2f s (%d iterations)", spacing, t2 - t1,
                      time.perf_counter() - t2, its)
            iterations.append(its)
            jump = _implausible_jump(before, affine_matrix_lps(tx), centre)
            if jump:
                log.log(logging.DEBUG if search else logging.WARNING,
                        "%s level %.1f mm diverged (%s); keeping the previous level's transform",
                        stage_kind, spacing, jump)
                tx = transform_from_matrix(stage_kind, before, centre)
    assert tx is not None
    seconds = time.perf_counter() - t0
    log.log(logging.DEBUG if search else logging.INFO, "%s registration: metric %.4f, iterations %s, %.1f s",
            plan[-1][0], metric, iterations, seconds)
    return RegistrationResult(transform=tx, metric=metric, seconds=seconds, iterations=iterations)


def rigid_register(
    fixed: ImagePair,
    moving: ImagePair,
    fixed_mask: np.ndarray | None = None,
    options: RegistrationOptions = RegistrationOptions(),
    initial: sitk.Transform | None = None,
    moving_mask: np.ndarray | None = None,
) -> tuple[sitk.Euler3DTransform, float]:
    """Rigid registration of ``moving`` to ``fixed`` (see :func:`register`): (transform, metric)."""
    res = register(fixed, moving, fixed_mask, "rigid", options, initial, moving_mask)
    return res.transform, res.metric  # type: ignore[return-value]


# --- the two rigid registrations of the workflow ------------------------------------------------

#: Margin (mm) around the fixed brain mask where the metric samples: the brain's edge is the
#: strongest feature of skull-stripped alignment, so it is kept inside the sampled region.
EDGE_MARGIN_MM = 3.0


def _edge_region(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from msimaging.morphology import dilate_mm

    return dilate_mm(brain, EDGE_MARGIN_MM, affine)


def coregister_contrast(reference: ImagePair, brain: np.ndarray, moving: ImagePair,
                        options: RegistrationOptions = RegistrationOptions()) -> RegistrationResult:
    """Rigid ``from-<contrast>_to-<ref>``: a contrast of one session onto its reference image.

    Mutual information inside the reference brain mask and a margin; the start is the scanner's
    world coordinates (one session, one scanner frame). The transform maps reference points to
    points of the moving contrast.
    """
    return register(reference, moving, _edge_region(brain, reference[1]), "rigid", options)


def register_to_baseline(baseline: ImagePair, baseline_brain: np.ndarray, followup: ImagePair,
                         followup_brain: np.ndarray,
                         options: RegistrationOptions = RegistrationOptions()) -> RegistrationResult:
    """Rigid ``from-session_to-baseline``: a follow-up reference image onto the baseline one.

    Visits are in different scanner frames, so the search starts from the brain centroids; the
    metric samples the baseline brain and a margin. The transform maps baseline points to
    follow-up points.
    """
    return register(baseline, followup, _edge_region(baseline_brain, baseline[1]), "rigid", options,
                    moving_mask=followup_brain)


# --- similarity figures -------------------------------------------------------------------------


def normalised_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two images inside ``mask`` (same-contrast similarity)."""
    x = np.asarray(a, dtype=float)[mask]
    y = np.asarray(b, dtype=float)[mask]
    if x.size < 10 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray, bins: int = 32) -> float:
    """Studholme's normalised mutual information (H(A)+H(B))/H(A,B), 1..2 (cross-contrast)."""
    x = np.asarray(a, dtype=float)[mask]
    y = np.asarray(b, dtype=float)[mask]
    if x.size < 10:
        return float("nan")
    x = np.clip(x, *np.percentile(x, [0.5, 99.5]))
    y = np.clip(y, *np.percentile(y, [0.5, 99.5]))
    joint, _, _ = np.histogram2d(x, y, bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(1), p.sum(0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hxy = entropy(p.ravel())
    return (entropy(px) + entropy(py)) / hxy if hxy > 0 else float("nan")


def gradient_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                         sigma_mm: float = 1.5) -> float:
    """Correlation of gradient magnitudes inside ``mask``: a contrast-independent edge alignment.

    Edges (tissue boundaries) sit at the same places in every contrast of one head, whatever
    their sign, so this is comparable across contrasts and falls for a wrong or misaligned image.
    """
    from scipy import ndimage as ndi

    sig = sigma_mm / voxel_sizes(affine)

    def grad(x: np.ndarray) -> np.ndarray:
        return ndi.gaussian_gradient_magnitude(np.asarray(x, dtype=np.float32), sig)

    return normalised_correlation(grad(a), grad(b), mask)


# --- template (MNI152) to session ----------------------------------------------------------------


def template_options(rcfg: dict | None = None) -> RegistrationOptions:
    """Registration options of the template -> session affine (coarse levels: a mask, not TRE)."""
    base = options_from_config(rcfg or {})
    return replace(base, metric="mattes", max_samples=min(int(base.max_samples), 20000), iterations=100)



#: Rotations (degrees, about each LPS axis) and shifts (mm, along the LPS z axis) tried as
#: starting points of the template registration: heads are tilted and necks pull centroids down.
START_ROTATIONS_DEG = (0.0, -15.0, 15.0)
START_SHIFTS_MM = (0.0, -15.0, 15.0)


def _rotation_lps(axis: int, angle_deg: float) -> np.ndarray:
    c, s_ = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s_, s_, c
    return r


def _best_start(fixed: np.ndarray, faffine: np.ndarray, moving: np.ndarray,
                maffine: np.ndarray, region: np.ndarray, scale: float, c_fixed: np.ndarray,
                c_moving: np.ndarray, options: RegistrationOptions) -> sitk.Transform:
    """Best of several similarity starts (rotations and shifts about the centroid) at 6 mm.

    Each start (fixed centroid -> moving centroid, ``scale``, then either a rotation from
    :data:`START_ROTATIONS_DEG` about one axis or a shift from :data:`START_SHIFTS_MM`) is
    optimised briefly on 6 mm copies of the images; the one with the lowest metric wins.
    """
    fgrid = coarse_grid(Grid(tuple(np.shape(fixed)), faffine), 6.0)  # type: ignore[arg-type]
    mgrid = coarse_grid(Grid(tuple(np.shape(moving)), maffine), 6.0)  # type: ignore[arg-type]
    f6 = sitk.GetArrayFromImage(_smooth_resample(to_sitk(fixed, faffine), fgrid)).transpose(2, 1, 0)
    m6 = sitk.GetArrayFromImage(_smooth_resample(to_sitk(moving, maffine), mgrid)).transpose(2, 1, 0)
    r6 = resample_array(region.astype(np.float32), faffine, fgrid) >= 0.5
    quick = replace(options, iterations=30, levels_mm=(6.0,))
    # the centroid start, each tilt alone and each shift alone: 9 short runs
    candidates = [(0, 0.0, shift) for shift in START_SHIFTS_MM]
    candidates += [(axis, angle, 0.0) for axis in range(3) for angle in START_ROTATIONS_DEG if angle != 0.0]
    best: tuple[float, sitk.Transform] | None = None
    for axis, angle, shift in candidates:
        lin = scale * _rotation_lps(axis, angle)
        m = np.eye(4)
        m[:3, :3] = lin
        m[:3, 3] = c_moving + np.array([0.0, 0.0, shift]) - lin @ c_fixed
        init = sitk.AffineTransform(m[:3, :3].ravel().tolist(), m[:3, 3].tolist())
        try:
            res = register((f6, fgrid.affine), (m6, mgrid.affine), r6, "similarity", quick, initial=init,
                           search=True)
        except RuntimeError as exc:  # ITK: too few samples inside the moving image, etc.
            log.debug("start %s failed: %s", (axis, angle, shift), exc)
            continue
        if best is None or res.metric < best[0]:
            best = (res.metric, res.transform)
    if best is None:
        raise RuntimeError("template registration: no starting point converged")
    return best[1]


def register_template(data: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                      options: RegistrationOptions | None = None) -> tuple[sitk.Transform, float]:
    """Affine transform putting the MNI152 template onto an image (template -> image grid).

    ``brain`` is a first estimate of the image's brain mask: it masks the image (the template is
    skull-stripped), restricts the metric to the brain and a margin, and starts the search by
    aligning its centroid and volume with the template's. Stages: similarity (7 parameters) at
    6 and 4 mm, then affine (12) at 4 and 2 mm. Returns the transform (image points -> template
    points) and the normalised mutual information of the image and the warped template in
    ``brain``.
    """
    from msimaging.morphology import dilate_mm
    from msimaging.template import load_template

    tpl = load_template()
    opts = options or template_options()
    brain = np.asarray(brain, dtype=bool)
    region = dilate_mm(brain, 6.0, affine)
    masked = np.where(brain, data, 0).astype(np.float32)
    tpl_masked = np.where(tpl.brain, tpl.t1, 0).astype(np.float32)
    # start: centroids aligned, isotropic scale from the volumes
    vox = float(abs(np.linalg.det(affine[:3, :3])))
    scale = float(np.cbrt(tpl.brain.sum() / max(brain.sum() * vox, 1.0)))
    c_img = mask_centroid_lps(brain, affine)
    c_tpl = mask_centroid_lps(tpl.brain, tpl.affine)
    start = _best_start(masked, affine, tpl_masked, tpl.affine, region, scale, c_img, c_tpl, opts)
    res = register((masked, affine), (tpl_masked, tpl.affine), region, "affine", opts,
                   initial=start, stages=[("similarity", (6.0, 4.0)), ("affine", (4.0, 2.0))])
    warped = resample_array(tpl.t1, tpl.affine, Grid(data.shape, affine), res.transform)
    return res.transform, normalised_mutual_information(data, warped, brain)


# --- QC: registration figures, checks and overlay ------------------------------------------------


@dataclass(frozen=True)
class RegistrationQC:
    """Thresholds for registration QC (config keys under ``registration``)."""

    warn_correlation: float = 0.80      # same contrast (follow-up vs baseline): NCC in the brain
    fail_correlation: float = 0.60
    warn_gradient_correlation: float = 0.50   # any contrasts: edge alignment in the brain
    fail_gradient_correlation: float = 0.30
    warn_nmi: float = 1.05             # cross contrast: normalised mutual information in the brain
    fail_nmi: float = 1.02
    max_rotation_deg: float = 30.0       # larger motion is flagged (warn), implausible motion fails
    max_translation_mm: float = 60.0


def qc_from_config(rcfg: dict) -> RegistrationQC:
    d = RegistrationQC()
    return RegistrationQC(**{k: float(rcfg.get(k, getattr(d, k))) for k in d.__dataclass_fields__})


def registration_checks(fixed: np.ndarray, warped: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                        transform: sitk.Transform, same_contrast: bool, qc: RegistrationQC) -> list[dict[str, Any]]:
    """QC items (dicts for :meth:`QCReport.add`) of one registration, computed on the fixed grid.

    A wrong image (another subject, a scrambled volume) and a large residual misalignment both
    lower the edge alignment and the intensity similarity; a transform moving the brain further
    than plausible is flagged on its own.
    """
    from msimaging.qc import threshold_status

    items: list[dict[str, Any]] = []
    gc = gradient_correlation(fixed, warped, brain, affine)
    items.append(dict(metric="gradient_correlation", value=round(gc, 4),
                      status=threshold_status(gc, qc.warn_gradient_correlation, qc.fail_gradient_correlation),
                      note=f"edge alignment {gc:.3f} is low: wrong image or misregistration; check the overlay"))
    if same_contrast:
        ncc = normalised_correlation(fixed, warped, brain)
        items.append(dict(metric="ncc", value=round(ncc, 4),
                          status=threshold_status(ncc, qc.warn_correlation, qc.fail_correlation),
                          note=f"correlation {ncc:.3f} in the brain is low: wrong image or misregistration"))
    else:
        nmi = normalised_mutual_information(fixed, warped, brain)
        items.append(dict(metric="nmi", value=round(nmi, 4), status=threshold_status(nmi, qc.warn_nmi, qc.fail_nmi),
                          note=f"normalised mutual information {nmi:.3f} in the brain is low"))
    idx = np.argwhere(brain)
    centre = voxel_to_world(affine, idx.mean(axis=0)) if idx.size else np.zeros((1, 3))
    shift = float(displacement_mm(transform, centre)[0])
    angle = rotation_angle_deg(transform)
    # The brain shift is where the follow-up sat in scanner coordinates: 60 mm and more between
    # real sessions is common, so it is never a warning on its own. It only explains a poor fit
    # (a similarity figure above warns). A rotation beyond what a head can turn in a coil stays
    # flagged on its own (warn; fail beyond twice the limit).
    poor_fit = any(c["status"] != "pass" for c in items)
    rotation_status = "pass"
    if angle > qc.max_rotation_deg:
        rotation_status = "fail" if angle > 2 * qc.max_rotation_deg else "warn"
    shift_status = "pass"
    if poor_fit and shift > qc.max_translation_mm:
        shift_status = "fail" if shift > 2 * qc.max_translation_mm else "warn"
    items.append(dict(metric="rotation_deg", value=round(angle, 3), status=rotation_status,
                      note=f"rotation {angle:.1f} deg is implausibly large for a head in a coil"))
    items.append(dict(metric="brain_shift_mm", value=round(shift, 3), status=shift_status,
                      note=f"brain shift {shift:.1f} mm with a poor fit: the start may have been too far off"))
    for item in items:
        if item["status"] == "pass":
            item["note"] = ""
    return items


#: Display percentiles are taken on at most this many brain voxels (evenly strided).
DISPLAY_SAMPLE = 400_000


def _unit_range(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentiles of ``x`` in ``mask`` (everywhere when empty), on a strided sample."""
    vals = x[mask] if mask.any() else x.ravel()
    vals = vals[:: max(1, vals.size // DISPLAY_SAMPLE)]
    lo, hi = np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0)
    return float(lo), float(max(hi - lo, 1e-6))


def plot_registration(fixed: np.ndarray, warped: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                      out_png: str, title: str = "", tile_mm: float = 20.0) -> None:
    """Checkerboard of the fixed and the registered moving image, with the fixed brain outline.

    Three axial slices and one coronal and sagittal slice through the brain, RAS display order;
    each image scaled to its own brain 1-99th percentiles. A misregistration shows as broken
    edges at the tile borders. Only the shown slices are scaled and tiled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)

    def canonical(x: np.ndarray) -> np.ndarray:  # axes flipped / swapped to RAS: a view, no copy
        return nib.orientations.apply_orientation(np.asarray(x), ornt)

    brain = np.asarray(brain, dtype=bool)
    (a_lo, a_span), (b_lo, b_span) = _unit_range(fixed, brain), _unit_range(warped, brain)
    a, b, m = canonical(fixed), canonical(warped), canonical(brain)
    zooms = voxel_sizes(nib.as_closest_canonical(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), affine)).affine)
    idx = np.argwhere(m) if m.any() else np.argwhere(np.ones(m.shape, bool))
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    centre = ((lo + hi) // 2).astype(int)

    def board(sl: tuple) -> np.ndarray:
        ii, jj, kk = (np.arange(n)[s] for n, s in zip(a.shape, sl))
        tiles = ((ii[:, None, None] * zooms[0] // tile_mm + jj[None, :, None] * zooms[1] // tile_mm
                  + kk[None, None, :] * zooms[2] // tile_mm) % 2).astype(bool)
        unit_a = np.clip((np.asarray(a[sl], float) - a_lo) / a_span, 0.0, 1.0)
        unit_b = np.clip((np.asarray(b[sl], float) - b_lo) / b_span, 0.0, 1.0)
        return np.squeeze(np.where(tiles, unit_a, unit_b))

    def view(name: str, axis: int, index: int, aspect: float) -> tuple[str, np.ndarray, np.ndarray, float]:
        sl = tuple(slice(index, index + 1) if k == axis else slice(None) for k in range(3))
        return name, board(sl).T, np.squeeze(m[sl]).T, aspect

    views = [view("axial", 2, int(round(lo[2] + f * (hi[2] - lo[2]))), zooms[1] / zooms[0]) for f in (0.3, 0.5, 0.7)]
    views.append(view("coronal", 1, int(centre[1]), zooms[2] / zooms[0]))
    views.append(view("sagittal", 0, int(centre[0]), zooms[2] / zooms[1]))
    fig, axes = plt.subplots(1, len(views), figsize=(2.6 * len(views), 2.9))
    for ax, (name, img, outline, aspect) in zip(axes, views):
        ax.imshow(img, origin="lower", cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        if outline.any():
            ax.contour(outline.astype(float), levels=[0.5], colors=["#30a0ff"], linewidths=0.6)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    from msimaging.io import atomic_path

    with atomic_path(out_png) as tmp:
        fig.savefig(str(tmp), dpi=80, format="png")
    plt.close(fig)


def _qc_add(report: Any, step: str, item: str, checks: list[dict[str, Any]], label: str) -> None:
    for c in checks:
        note = f"{label}: {c['note']}" if c["note"] else ""
        report.add(step, item, c["metric"], c["value"], c["status"], note)


# --- halfway space ------------------------------------------------------------------------------


def resample_halfway(baseline: ImagePair, followup: ImagePair, transform: sitk.Transform,
                     interpolation: str = "linear") -> tuple[np.ndarray, np.ndarray, Grid]:
    """Both visits on the halfway grid, interpolated alike (see :func:`geometry.halfway_transforms`).

    ``transform`` is the ``from-session_to-baseline`` transform (baseline points -> follow-up
    points). The halfway grid is the baseline reference grid; returns ``(baseline_half,
    followup_half, grid)``.
    """
    grid = Grid(tuple(np.shape(baseline[0])), baseline[1])  # type: ignore[arg-type]
    to_bl, to_fu = halfway_transforms(transform)
    bl = resample_array(baseline[0], baseline[1], grid, to_bl, interpolation)
    fu = resample_array(followup[0], followup[1], grid, to_fu, interpolation)
    return bl, fu, grid


# --- config -------------------------------------------------------------------------------------


def options_from_config(rcfg: dict) -> RegistrationOptions:
    d = RegistrationOptions()
    return RegistrationOptions(
        levels_mm=tuple(float(v) for v in rcfg.get("levels_mm", d.levels_mm)),
        iterations=int(rcfg.get("iterations", d.iterations)),
        max_samples=int(rcfg.get("max_samples", d.max_samples)),
        histogram_bins=int(rcfg.get("histogram_bins", d.histogram_bins)),
        metric=str(rcfg.get("metric", d.metric)),
    )


# --- file-level steps (called by workflow scripts) ---------------------------------------------


def run_coregister(moving_path: str, ref_path: str, brain_path: str, out_xfm: str, out_image: str,
                   out_json: str, contrast: str, ref_contrast: str, subject: str, session: str,
                   cfg: dict, out_png: str | None = None) -> None:
    """Register one contrast to the session reference; write the transform, the image on it, QC.

    The moving image is the bias-corrected contrast on its own grid; the output image is it on
    the reference grid, standardised (white-matter peak = 1, see :func:`preprocess.standardise`).
    """
    from msimaging import io
    from msimaging.qc import QCReport

    rcfg = cfg.get("registration", {})
    report = QCReport(subject, session)
    ref, ref_affine = io.read_image(ref_path)
    brain, _ = io.read_mask(brain_path)
    grid = Grid(ref.shape, ref_affine)
    if contrast == ref_contrast:
        xfm: sitk.Transform = sitk.Euler3DTransform()
        on_ref = ref
    else:
        moving = io.read_image(moving_path)
        res = coregister_contrast((ref, ref_affine), brain, moving, options_from_config(rcfg))
        xfm = res.transform
        on_ref = resample_array(moving[0], moving[1], grid, xfm, "linear")
        checks = registration_checks(ref, on_ref, brain, ref_affine, xfm, same_contrast=False,
                                     qc=qc_from_config(rcfg))
        _qc_add(report, "coregister", contrast, checks, f"{contrast} -> {ref_contrast}")
    image = standardise(on_ref, brain)
    if out_png:
        if contrast == ref_contrast:
            plot_registration(image, image, brain, ref_affine, out_png,
                              title=f"sub-{subject} ses-{session} {ref_contrast} (reference) and its brain mask")
        else:
            plot_registration(ref, on_ref, brain, ref_affine, out_png,
                              title=f"sub-{subject} ses-{session} {contrast} -> {ref_contrast} (checkerboard)")
        report.figures["registration_png"] = str(out_png)
    io.write_transform(out_xfm, xfm)
    io.write_image(out_image, image, ref_affine)
    io.write_json(out_json, report.to_dict())


def run_to_baseline(fu_path: str, fu_brain: str, bl_path: str, bl_brain: str, out_xfm: str,
                    out_json: str, subject: str, session: str, cfg: dict, out_png: str | None = None) -> None:
    """Rigidly register a follow-up reference image to the baseline one (baseline = fixed).

    The transform (baseline points -> follow-up points) starts from the brain centroids; the
    metric runs on the baseline brain and a 3 mm margin (its edge); QC compares the baseline with
    the follow-up resampled onto the baseline grid.
    """
    from msimaging import io
    from msimaging.qc import QCReport

    rcfg = cfg.get("registration", {})
    bl, bl_affine = io.read_image(bl_path)
    bl_mask, _ = io.read_mask(bl_brain)
    fu = io.read_image(fu_path)
    fu_mask, _ = io.read_mask(fu_brain)
    res = register_to_baseline((bl, bl_affine), bl_mask, fu, fu_mask, options_from_config(rcfg))
    xfm = res.transform
    warped = resample_array(fu[0], fu[1], Grid(bl.shape, bl_affine), xfm)
    report = QCReport(subject, session)
    checks = registration_checks(bl, warped, bl_mask, bl_affine, xfm, same_contrast=True, qc=qc_from_config(rcfg))
    _qc_add(report, "register_to_baseline", "session", checks, "follow-up -> baseline")
    ncc = next(c["value"] for c in checks if c["metric"] == "ncc")
    report.figures["ncc_to_baseline"] = ncc
    if out_png:
        plot_registration(bl, warped, bl_mask, bl_affine, out_png,
                          title=f"sub-{subject} ses-{session} -> baseline (checkerboard)")
        report.figures["registration_png"] = str(out_png)
    io.write_transform(out_xfm, xfm)
    io.write_json(out_json, report.to_dict())


def brain_mask_template(data: np.ndarray, affine: np.ndarray, refine: bool = True,
                        options: RegistrationOptions | None = None
                        ) -> tuple[np.ndarray, sitk.Transform, dict[str, float]]:
    """Brain mask of a raw (skull, neck) image: the MNI152 brain envelope carried by registration.

    1. a rough template-free mask (:func:`brain_mask_morphological`) starts the search;
    2. the skull-stripped MNI152 T1 is registered to the image inside that mask and a margin
       (similarity, then affine; mutual information, so any contrast works: FLAIR-only too);
    3. the template's brain envelope (parenchyma, ventricles, sulcal CSF) is resampled onto
       the image grid (partial volume kept, thresholded at 0.5);
    4. ``refine``: the mask is held to the head (no voxel in the air outside the head or beyond
       the field of view) and its holes filled.

    Returns ``(mask, transform, figures)``: the transform puts template maps onto the image grid
    (image points -> template points, ITK resampling convention); figures hold the NMI of the
    image and the warped template, and the volume (mL) of the rough and final masks.
    """
    from msimaging.morphology import dilate_mm, fill_holes_slicewise, largest_component
    from msimaging.template import load_template

    head = head_mask(data, affine)
    rough = brain_mask_morphological(data, affine, head)
    xfm, nmi = register_template(data, affine, rough, options)
    tpl = load_template()
    frac = resample_array(tpl.brain_fraction, tpl.affine, Grid(tuple(data.shape), affine), xfm)  # type: ignore[arg-type]
    mask = frac >= 0.5
    if refine:
        mask = fill_holes_slicewise(largest_component(mask & dilate_mm(head, 2.0, affine)))
    vox_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    dice = 2.0 * float((rough & mask).sum()) / max(float(rough.sum() + mask.sum()), 1.0)
    figures = {"template_nmi": float(nmi), "rough_volume_ml": float(rough.sum() * vox_ml),
               "volume_ml": float(mask.sum() * vox_ml), "dice_vs_morphological": dice}
    return mask, xfm, figures


def run_brain_mask(ref_path: str, out_mask: str, out_template_xfm: str, out_json: str,
                   subject: str, session: str, cfg: dict) -> None:
    """Brain mask of the session reference image, and the template -> session transform.

    QC: the mask volume (plausible adult range), the template similarity (NMI) and the
    agreement of the template mask with the template-free one (a failed template registration
    shows as a low Dice between the two).
    """
    from msimaging import io
    from msimaging.qc import QCReport, threshold_status

    bcfg = cfg.get("brain_mask", {})
    data, affine = io.read_image(ref_path)
    brain, xfm, figures = brain_mask_template(data, affine, refine=bool(bcfg.get("refine", True)),
                                              options=template_options(cfg.get("registration", {})))
    agreement = figures["dice_vs_morphological"]
    io.write_mask(out_mask, brain, affine)
    io.write_transform(out_template_xfm, xfm)
    report = QCReport(subject, session)
    volume_ml = figures["volume_ml"]
    lo, hi = float(bcfg.get("min_volume_ml", 800.0)), float(bcfg.get("max_volume_ml", 2200.0))
    status = "pass" if lo <= volume_ml <= hi else "warn"
    report.add("brain_mask", "brain", "volume_ml", round(volume_ml, 1), status,
               "" if status == "pass" else f"brain mask volume {volume_ml:.0f} mL is outside {lo:.0f}-{hi:.0f} mL")
    nmi = figures["template_nmi"]
    st = threshold_status(nmi, float(bcfg.get("warn_template_nmi", 1.01)), float(bcfg.get("fail_template_nmi", 1.005)))
    report.add("brain_mask", "template", "nmi", round(nmi, 4), st,
               "" if st == "pass" else f"template registration similarity {nmi:.3f} is low; check the brain mask")
    st = threshold_status(agreement, 0.80, 0.60)
    report.add("brain_mask", "template", "dice_vs_morphological", round(agreement, 4), st,
               "" if st == "pass" else f"template and morphological brain masks disagree (Dice {agreement:.2f})")
    report.figures["brain_mask_volume_ml"] = volume_ml
    report.figures.update({k: round(v, 4) for k, v in figures.items()})
    io.write_json(out_json, report.to_dict())


__all__ = [
    "RegistrationOptions", "RegistrationResult", "RegistrationQC", "register", "rigid_register",
    "coregister_contrast", "register_to_baseline",
    "register_template", "normalised_correlation", "normalised_mutual_information", "gradient_correlation",
    "registration_checks", "plot_registration", "resample_halfway", "transform_from_matrix", "centred_euler",
    "run_coregister", "run_to_baseline", "brain_mask_template", "run_brain_mask", "options_from_config",
    "euler_from_matrix",
]

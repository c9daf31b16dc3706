"""Rigid registration (SimpleITK) and registration quality figures.

Every transform returned here is in ITK's resampling convention: it maps points of the
*fixed* image to points of the *moving* image, so ``geometry.resample(moving, fixed, T)``
puts the moving image onto the fixed grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from msimaging.geometry import affine_matrix_lps, euler_from_matrix, to_sitk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigidOptions:
    shrink_factors: Sequence[int] = (4, 2, 1)
    smoothing_sigmas_mm: Sequence[float] = (2.0, 1.0, 0.0)
    iterations: int = 200
    sampling_fraction: float = 0.1
    histogram_bins: int = 32
    seed: int = 20240101


def _image(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    return to_sitk(np.asarray(data, dtype=np.float32), affine)


def rigid_register(
    fixed: tuple[np.ndarray, np.ndarray],
    moving: tuple[np.ndarray, np.ndarray],
    fixed_mask: np.ndarray | None = None,
    options: RigidOptions = RigidOptions(),
    initial: sitk.Transform | None = None,
) -> tuple[sitk.Euler3DTransform, float]:
    """Rigidly register ``moving`` to ``fixed`` by Mattes mutual information.

    ``fixed`` and ``moving`` are ``(data, affine)`` pairs; ``fixed_mask`` (on the fixed grid)
    restricts the metric. Returns the transform (fixed -> moving points) and the final metric.
    """
    f = _image(*fixed)
    m = _image(*moving)
    if initial is None:
        initial = sitk.CenteredTransformInitializer(
            f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(options.sampling_fraction, options.seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(to_sitk(np.asarray(fixed_mask, dtype=np.uint8), fixed[1]))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=int(options.iterations),
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in options.shrink_factors])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in options.smoothing_sigmas_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if isinstance(initial, sitk.Euler3DTransform):
        start = sitk.Euler3DTransform(initial)
    else:
        centre = f.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in f.GetSize()])
        start = centred_euler(affine_matrix_lps(initial), centre)
    reg.SetInitialTransform(start, inPlace=True)
    reg.Execute(f, m)
    log.info("rigid registration: metric %.4f after %d iterations (%s)",
             reg.GetMetricValue(), reg.GetOptimizerIteration(), reg.GetOptimizerStopConditionDescription())
    return start, float(reg.GetMetricValue())


def centred_euler(matrix_lps: np.ndarray, centre: Sequence[float]) -> sitk.Euler3DTransform:
    """A rigid transform equal to the 4x4 LPS ``matrix_lps``, rotating about ``centre``.

    A centre inside the image decouples rotation from translation for the optimiser.
    """
    plain = euler_from_matrix(matrix_lps)
    rot = np.asarray(plain.GetMatrix()).reshape(3, 3)
    offset = np.asarray(matrix_lps, dtype=float)[:3, 3]
    c = np.asarray(centre, dtype=float)
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(v) for v in c])
    tx.SetMatrix([float(v) for v in rot.ravel()])
    tx.SetTranslation([float(v) for v in offset - c + rot @ c])
    return tx


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

    return (entropy(px) + entropy(py)) / entropy(p.ravel())


def affine_register(
    fixed: tuple[np.ndarray, np.ndarray],
    moving: tuple[np.ndarray, np.ndarray],
    fixed_mask: np.ndarray | None = None,
    options: RigidOptions = RigidOptions(shrink_factors=(4, 2), smoothing_sigmas_mm=(3.0, 1.5)),
) -> sitk.AffineTransform:
    """12-parameter affine registration by Mattes MI, initialised by a rigid registration."""
    rigid, _ = rigid_register(fixed, moving, fixed_mask, options)
    f = _image(*fixed)
    m = _image(*moving)
    start = sitk.AffineTransform(3)
    start.SetCenter(rigid.GetCenter())
    start.SetMatrix(rigid.GetMatrix())
    start.SetTranslation(rigid.GetTranslation())
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=options.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(options.sampling_fraction, options.seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(to_sitk(np.asarray(fixed_mask, dtype=np.uint8), fixed[1]))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=int(options.iterations),
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in options.shrink_factors])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in options.smoothing_sigmas_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(start, inPlace=True)
    reg.Execute(f, m)
    return start


def register_template(data: np.ndarray, affine: np.ndarray, brain: np.ndarray) -> tuple[sitk.Transform, float]:
    """Affine transform putting the MNI152 template onto an image (template -> image grid).

    Returns the transform (image points -> template points) and the NMI of the brain after it.
    """
    from msimaging.geometry import Grid, resample_array
    from msimaging.template import load_template

    tpl = load_template()
    masked = np.where(brain, data, 0).astype(np.float32)
    xfm = affine_register((masked, affine), (tpl.t1, tpl.affine), fixed_mask=brain)
    warped = resample_array(tpl.t1, tpl.affine, Grid(data.shape, affine), xfm)
    return xfm, normalised_mutual_information(data, warped, brain)


def _standardised_on_reference(
    moving_path: str, ref_path: str, brain_path: str, xfm: sitk.Transform
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from msimaging import io
    from msimaging.geometry import Grid, resample_array
    from msimaging.preprocess import standardise

    ref, ref_affine = io.read_image(ref_path)
    brain, _ = io.read_mask(brain_path)
    data, affine = io.read_image(moving_path)
    on_ref = resample_array(data, affine, Grid(ref.shape, ref_affine), xfm, "linear")
    return standardise(on_ref, brain), ref, brain, ref_affine


def run_coregister(moving_path: str, ref_path: str, brain_path: str, out_xfm: str, out_image: str,
                   out_json: str, contrast: str, ref_contrast: str, subject: str, session: str,
                   cfg: dict) -> None:
    """Register one contrast to the session reference; write the transform and the image on it."""
    from msimaging import io
    from msimaging.geometry import write_transform
    from msimaging.qc import QCReport, threshold_status

    rcfg = cfg.get("registration", {})
    report = QCReport(subject, session)
    if contrast == ref_contrast:
        xfm: sitk.Transform = sitk.Euler3DTransform()
    else:
        ref, ref_affine = io.read_image(ref_path)
        brain, _ = io.read_mask(brain_path)
        moving = io.read_image(moving_path)
        xfm, _ = rigid_register((ref, ref_affine), moving, fixed_mask=brain, options=options_from_config(rcfg))
    image, ref, brain, ref_affine = _standardised_on_reference(moving_path, ref_path, brain_path, xfm)
    if contrast != ref_contrast:
        nmi = normalised_mutual_information(ref, image, brain)
        report.add("coregister", contrast, "nmi", round(nmi, 4),
                   threshold_status(nmi, 1.05, 1.02),
                   f"{contrast} -> {ref_contrast} similarity is low (NMI {nmi:.3f}); check the registration figure")
    write_transform(xfm, out_xfm)
    io.write_image(out_image, image, ref_affine)
    io.write_json(out_json, report.to_dict())


def options_from_config(rcfg: dict) -> RigidOptions:
    return RigidOptions(
        shrink_factors=tuple(rcfg.get("shrink_factors", (4, 2, 1))),
        smoothing_sigmas_mm=tuple(rcfg.get("smoothing_sigmas_mm", (2.0, 1.0, 0.0))),
        iterations=int(rcfg.get("iterations", 200)),
        sampling_fraction=float(rcfg.get("sampling_fraction", 0.1)),
    )


def run_to_baseline(fu_path: str, fu_brain: str, bl_path: str, bl_brain: str, out_xfm: str,
                    out_json: str, subject: str, session: str, cfg: dict) -> None:
    """Rigidly register a follow-up reference image to the baseline one (baseline = fixed)."""
    from msimaging import io
    from msimaging.geometry import Grid, resample_array, write_transform
    from msimaging.qc import QCReport, threshold_status

    rcfg = cfg.get("registration", {})
    bl, bl_affine = io.read_image(bl_path)
    bl_mask, _ = io.read_mask(bl_brain)
    fu = io.read_image(fu_path)
    xfm, _ = rigid_register((bl, bl_affine), fu, fixed_mask=bl_mask, options=options_from_config(rcfg))
    warped = resample_array(fu[0], fu[1], Grid(bl.shape, bl_affine), xfm)
    ncc = normalised_correlation(bl, warped, bl_mask)
    report = QCReport(subject, session)
    status = threshold_status(ncc, float(rcfg.get("warn_correlation", 0.8)), float(rcfg.get("fail_correlation", 0.6)))
    report.add("register_to_baseline", "session", "ncc", round(ncc, 4), status,
               "" if status == "pass" else f"follow-up to baseline correlation {ncc:.3f} is low; check the overlay")
    report.figures["ncc_to_baseline"] = ncc
    write_transform(xfm, out_xfm)
    io.write_json(out_json, report.to_dict())

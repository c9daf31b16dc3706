"""Brain volumes (ICV, parenchyma, BPF) and percent brain volume change (PBVC).

Cross-sectional (every session, DESIGN §4):

* intensities are normalised per image so that CSF is 0 and the main tissue peak is 1
  (:func:`tissue_levels`, :func:`normalise`), whatever the contrast (FLAIR: CSF dark; T2w: CSF
  bright);
* brain parenchymal volume (mL) is the partial-volume parenchymal fraction summed over the brain
  mask, with lesion voxels counted as parenchyma (:func:`parenchymal_fraction`);
* intracranial volume (mL) is the brain mask plus the CSF-filled layer between it and the inner
  skull (:func:`intracranial_mask`); BPF = parenchyma / ICV.

Longitudinal (every follow-up versus baseline): PBVC by the **boundary shift integral** (BSI;
Freeborough & Fox, IEEE TMI 1997; Leung et al., NeuroImage 2010) computed on the registered pair,
not by subtracting two segmentations. Both visits are resampled into the *halfway space* of their
rigid registration (each image is interpolated once, by half of the transform, so both carry the
same interpolation blur), intensities are matched (CSF = 0, tissue = 1, then a smooth differential
bias correction), and the change of the clipped intensity integral over the boundary region
between parenchyma and CSF (outer surface, sulci, ventricles) is the volume of parenchyma lost::

    BSI = voxel_volume * sum_E [clip(I_bl, lo, hi) - clip(I_fu, lo, hi)] / (hi - lo)
    PBVC = -100 * BSI / V_bl

Each boundary shifting by ``d`` mm over an area ``A`` changes the integral by ``(hi - lo) A d``
whatever the shape of the blurred edge profile, so the measure needs no calibration; rigid
misregistration shifts opposite sides of the brain in opposite directions and cancels to first
order. Only the rigid part of the given transform is used: a scaling would absorb the atrophy.

Conventions: arrays are nibabel (x, y, z) with RAS affines; transforms are ITK resampling
transforms (``from-session_to-baseline`` maps baseline points to follow-up points). Volumes in mL,
PBVC in percent (negative = loss).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import (
    Grid,
    affine_matrix_lps,
    affine_transform_from_matrix,
    euler_from_matrix,
    resample_array,
    resample_mask,
    voxel_sizes,
    voxel_volume_mm3,
)
from msimaging.morphology import dilate_mm, erode_mm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AtrophyOptions:
    """Parameters of the volume and BSI measures (config section ``atrophy``).

    ``window``: the clipping window of the BSI on normalised intensities (CSF 0, tissue 1).
    ``boundary_mm``: half-width of the boundary region around the parenchyma/CSF interfaces.
    ``dbc_sigma_mm``: Gaussian width of the differential bias correction (0 disables it).
    ``icv_margin_mm``: how far outside the brain mask CSF is searched for the ICV.
    ``lesion_margin_mm``: lesions (of either visit) dilated by this much are left out of the BSI.
    ``pv_window``: normalised intensities mapped linearly to parenchymal fractions 0..1 (volumes).
    ``blur_match_max_vox``: the sharper visit of the halfway pair is blurred to the other's edge
    sharpness (Gaussian sigma up to this many voxels, :func:`match_blur`); 0 disables it.
    """

    window: tuple[float, float] = (0.2, 0.6)
    boundary_mm: float = 4.0
    dbc_sigma_mm: float = 12.0
    icv_margin_mm: float = 8.0
    lesion_margin_mm: float = 1.0
    pv_window: tuple[float, float] = (0.0, 1.0)
    blur_match_max_vox: float = 1.0


def options_from_config(cfg: dict[str, Any]) -> AtrophyOptions:
    acfg = cfg.get("atrophy", {}) or {}
    d = AtrophyOptions()
    return AtrophyOptions(
        window=tuple(float(v) for v in acfg.get("bsi_window", d.window)),  # type: ignore[arg-type]
        boundary_mm=float(acfg.get("boundary_mm", d.boundary_mm)),
        dbc_sigma_mm=float(acfg.get("dbc_sigma_mm", d.dbc_sigma_mm)),
        icv_margin_mm=float(acfg.get("icv_margin_mm", d.icv_margin_mm)),
        lesion_margin_mm=float(acfg.get("lesion_margin_mm", d.lesion_margin_mm)),
        pv_window=tuple(float(v) for v in acfg.get("pv_window", d.pv_window)),  # type: ignore[arg-type]
        blur_match_max_vox=float(acfg.get("blur_match_max_vox", d.blur_match_max_vox)),
    )


# --- intensity normalisation ------------------------------------------------------------------


def _histogram_mode(values: np.ndarray, lo: float, hi: float, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = ndi.gaussian_filter1d(hist.astype(float), 2)
    centers = (edges[:-1] + edges[1:]) / 2
    return float(centers[int(np.argmax(hist))])


def tissue_levels(image: np.ndarray, brain: np.ndarray, csf_bright: bool,
                  csf_percentile: float = 1.0) -> tuple[float, float]:
    """(CSF level, parenchyma level) of an image inside the brain mask, in its own units.

    CSF: the ``csf_percentile`` percentile on the CSF side (the darkest voxels; the brightest
    when CSF is bright): partial volume fills the CSF side of the histogram, so its mode is not
    the pure CSF level, while the ventricles hold enough pure CSF for a low percentile.
    Parenchyma: the median of the voxels on the tissue side of Otsu's threshold (grey and white
    matter together: a single histogram peak flips between them from scan to scan on FLAIR).
    """
    from msimaging.preprocess import otsu_threshold

    vals = np.asarray(image, dtype=np.float32)[brain]
    if vals.size < 100:
        raise ValueError("the brain mask is (almost) empty: cannot measure tissue levels")
    lo, hi = np.percentile(vals, [0.5, 99.5])
    thr = otsu_threshold(np.clip(vals, lo, hi))
    tissue_side = vals[vals < thr] if csf_bright else vals[vals > thr]
    tissue = float(np.median(tissue_side)) if tissue_side.size else float(np.median(vals))
    csf = float(np.percentile(vals, 100.0 - csf_percentile if csf_bright else csf_percentile))
    return csf, tissue


def normalise(image: np.ndarray, csf: float, tissue: float) -> np.ndarray:
    """Linear intensity map sending ``csf`` to 0 and ``tissue`` to 1 (float32)."""
    if tissue == csf:
        raise ValueError("CSF and tissue levels are equal: no contrast to measure volumes")
    return ((np.asarray(image, dtype=np.float32) - np.float32(csf)) / np.float32(tissue - csf)).astype(np.float32)


def parenchymal_fraction(norm: np.ndarray, brain: np.ndarray, lesions: np.ndarray | None = None,
                         window: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Fraction of parenchyma (GM, WM, lesions) per voxel of a normalised image; 0 outside ``brain``.

    ``window`` = (lo, hi): normalised intensities at or below lo are CSF, at or above hi tissue,
    linear in between (partial volume). Lesion voxels count as parenchyma.
    """
    lo, hi = window
    frac = np.clip((norm - lo) / (hi - lo), 0.0, 1.0)
    if lesions is not None:
        frac = np.where(lesions, 1.0, frac)
    return np.where(brain, frac, 0.0).astype(np.float32)


def intracranial_mask(norm: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                      margin_mm: float = 8.0, csf_band: tuple[float, float] = (-0.1, 0.35)) -> np.ndarray:
    """Intracranial mask: the brain mask plus the CSF layer around it up to the inner skull.

    ``norm`` is a normalised image (CSF 0, tissue 1). Voxels within ``margin_mm`` of the brain
    mask whose intensity is CSF-like (inside ``csf_band``: cortical bone and air are darker than
    CSF on every contrast, tissue, fat and marrow brighter) and that connect to the brain through
    such voxels join the mask; holes are filled.
    """
    shell = dilate_mm(brain, margin_mm, affine) & ~brain
    csf_like = shell & (norm >= csf_band[0]) & (norm <= csf_band[1])
    grown = brain | csf_like
    labels, _ = ndi.label(grown)
    keep = np.unique(labels[brain])
    grown = np.isin(labels, keep[keep > 0])
    return ndi.binary_fill_holes(grown)


def brain_volumes(norm: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                  lesions: np.ndarray | None = None, options: AtrophyOptions = AtrophyOptions(),
                  csf_bright: bool = False) -> dict[str, float]:
    """ICV (mL), brain parenchymal volume (mL, lesions included) and BPF of one session.

    ``norm`` is the normalised image (CSF 0, tissue 1; :func:`normalise`).
    """
    vox_ml = voxel_volume_mm3(affine) / 1000.0
    icv_mask = intracranial_mask(norm, affine, brain, options.icv_margin_mm)
    icv = float(icv_mask.sum() * vox_ml)
    frac = parenchymal_fraction(norm, brain, lesions, options.pv_window)
    bpv = float(frac.sum(dtype=np.float64) * vox_ml)
    return {"icv_ml": icv, "brain_volume_ml": bpv, "bpf": bpv / icv if icv > 0 else float("nan")}


# --- halfway space -----------------------------------------------------------------------------


def rigid_part(transform: sitk.Transform) -> np.ndarray:
    """4x4 LPS matrix of the rigid part of a linear transform (polar decomposition)."""
    m = affine_matrix_lps(transform)
    e = euler_from_matrix(m)
    out = np.eye(4)
    out[:3, :3] = np.asarray(e.GetMatrix()).reshape(3, 3)
    out[:3, 3] = m[:3, 3]
    return out


def halfway_transforms(transform: sitk.Transform) -> tuple[sitk.Transform, sitk.Transform]:
    """(S^-1, S) with S∘S = the rigid part of ``transform`` (baseline points -> follow-up points).

    Resampling the baseline with S^-1 and the follow-up with S puts both in the halfway space.
    """
    m = rigid_part(transform)
    half = np.real(scipy.linalg.sqrtm(m))
    half[3] = (0.0, 0.0, 0.0, 1.0)
    return affine_transform_from_matrix(np.linalg.inv(half)), affine_transform_from_matrix(half)


# --- boundary shift integral --------------------------------------------------------------------


def differential_bias(ref: np.ndarray, other: np.ndarray, region: np.ndarray, affine: np.ndarray,
                      sigma_mm: float) -> np.ndarray:
    """Smooth multiplicative field f with ``other * f`` matching ``ref`` in tissue (Lewis & Fox 2004).

    Fitted on voxels of ``region`` where both normalised images are tissue-like (0.8-1.6) by a
    normalised Gaussian convolution of the log ratio (outliers beyond 20% dropped).
    """
    ok = region & (ref > 0.8) & (other > 0.8) & (ref < 1.6) & (other < 1.6)
    logr = np.zeros(ref.shape, dtype=np.float32)
    logr[ok] = np.log(ref[ok] / other[ok])
    ok &= np.abs(logr) < 0.2
    logr[~ok] = 0.0
    sig = sigma_mm / voxel_sizes(affine)
    num = ndi.gaussian_filter(logr, sig, mode="constant")
    den = ndi.gaussian_filter(ok.astype(np.float32), sig, mode="constant")
    field = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
    if ok.any():
        field = np.where(den > 1e-3, field, float(np.median(logr[ok])))
    return np.exp(field).astype(np.float32)


def match_intensities(ref: np.ndarray, other: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``other`` linearly mapped onto ``ref``'s scale by two anchors measured on the same voxels.

    Both are normalised images (CSF ~0, tissue ~1) of one anatomy on one grid. The anchors are the
    medians of each image over the voxels that are pure CSF (< 0.15) in both and pure tissue
    (0.85-1.3) in both, each eroded by one voxel: the same voxels and medians make the match
    insensitive to the noise level, which moves percentile-based levels differently per image.
    """
    cross = ndi.generate_binary_structure(3, 1)
    csf = ndi.binary_erosion(region & (ref < 0.15) & (other < 0.15), cross)
    tissue = ndi.binary_erosion(region & (ref > 0.85) & (other > 0.85) & (ref < 1.3) & (other < 1.3), cross)
    if csf.sum() < 50 or tissue.sum() < 50:
        log.warning("too few pure CSF (%d) or tissue (%d) voxels to match intensities", csf.sum(), tissue.sum())
        return other
    r0, r1 = float(np.median(ref[csf])), float(np.median(ref[tissue]))
    o0, o1 = float(np.median(other[csf])), float(np.median(other[tissue]))
    if o1 == o0:
        return other
    gain = (r1 - r0) / (o1 - o0)
    return ((other - np.float32(o0)) * np.float32(gain) + np.float32(r0)).astype(np.float32)


#: Gaussian sigmas (fractions of ``blur_match_max_vox``) tried by :func:`match_blur`.
BLUR_STEPS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0)
#: Common pre-smoothing (voxels) of both images before they are compared (noise out, edges kept).
BLUR_COMPARE_VOX = 1.0


def match_blur(bl: np.ndarray, fu: np.ndarray, region: np.ndarray, max_sigma_vox: float
               ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Blur the sharper of two matched images so that both have the same edge sharpness.

    The BSI integrates clipped intensities across the parenchyma/CSF boundaries; a visit blurred
    more than the other (another reconstruction, an extra interpolation) fills thin sulci with
    partial volume and reads as a volume change. In-plane Gaussians (voxels) of each sigma of
    :data:`BLUR_STEPS` are applied to either image, and the one making the two agree best over
    ``region`` (the boundary region) is kept. The two are compared after a common smoothing of
    :data:`BLUR_COMPARE_VOX` (it keeps the blur difference but removes the noise, which would
    otherwise reward blurring the noisier image). Returns both images and ``{"blur_sigma_vox": s}``
    (positive: the baseline was blurred).
    """
    if max_sigma_vox <= 0 or not region.any():
        return bl, fu, {"blur_sigma_vox": 0.0}
    box = bounding_box_of(region)
    sub_r = region[box]

    def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
        return ndi.gaussian_filter(x, (sigma, sigma, 0.0)) if sigma > 0 else x

    def compare(a: np.ndarray, b: np.ndarray) -> float:
        c = BLUR_COMPARE_VOX
        return float(np.mean((smooth(a, c)[sub_r] - smooth(b, c)[sub_r]) ** 2))

    bl_b, fu_b = bl[box], fu[box]
    noise = {"bl": _noise_sd(bl_b, sub_r), "fu": _noise_sd(fu_b, sub_r)}

    def unbiased(a: np.ndarray, b: np.ndarray, sa: float, na: str, nb: str) -> float:
        # the noise's share of the squared difference (each image's noise variance times the
        # energy of the kernel applied to it) is removed: blurring the noisier image must not win
        c = BLUR_COMPARE_VOX
        return compare(smooth(a, sa), b) - noise[na] ** 2 * _kernel_energy(np.hypot(c, sa)) \
            - noise[nb] ** 2 * _kernel_energy(c)

    best = (unbiased(bl_b, fu_b, 0.0, "bl", "fu"), 0.0)
    for step in BLUR_STEPS[1:]:
        s = step * max_sigma_vox
        for sign, (a, b, na, nb) in ((1.0, (bl_b, fu_b, "bl", "fu")), (-1.0, (fu_b, bl_b, "fu", "bl"))):
            err = unbiased(a, b, s, na, nb)
            if err < best[0]:
                best = (err, sign * s)
    s = best[1]
    if s > 0:
        bl = smooth(bl, s).astype(np.float32)
    elif s < 0:
        fu = smooth(fu, -s).astype(np.float32)
    return bl, fu, {"blur_sigma_vox": float(s)}


def _noise_sd(x: np.ndarray, region: np.ndarray) -> float:
    """Voxel noise SD: robust spread of in-plane neighbour differences over ``region`` / sqrt 2."""
    d = np.diff(x, axis=0)[region[1:] & region[:-1]]
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _kernel_energy(sigma: float) -> float:
    """Sum of squared weights of the in-plane Gaussian of ``sigma`` voxels (1 for sigma 0)."""
    if sigma <= 0:
        return 1.0
    n = int(np.ceil(4 * sigma)) * 2 + 1
    delta = np.zeros((n, n, 1), np.float64)
    delta[n // 2, n // 2, 0] = 1.0
    return float((ndi.gaussian_filter(delta, (sigma, sigma, 0.0)) ** 2).sum())


def bounding_box_of(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def boundary_region(norm_a: np.ndarray, norm_b: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                    radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of a parenchyma/CSF interface of either image, near the brain.

    Parenchyma masks are ``norm > 0.5`` inside ``brain``; the region is the dilated union minus
    the eroded intersection (the BSI's boundary region), kept inside ``brain`` dilated by the radius.
    """
    pa = (norm_a > 0.5) & brain
    pb = (norm_b > 0.5) & brain
    region = dilate_mm(pa | pb, radius_mm, affine) & ~erode_mm(pa & pb, radius_mm, affine, border_value=False)
    return region & dilate_mm(brain, radius_mm, affine)


def boundary_shift_integral(bl: np.ndarray, fu: np.ndarray, region: np.ndarray, voxel_mm3: float,
                            window: tuple[float, float]) -> float:
    """Volume (mm^3) of parenchyma lost from ``bl`` to ``fu`` (normalised, same grid) over ``region``."""
    lo, hi = window
    diff = np.clip(bl[region], lo, hi).astype(np.float64) - np.clip(fu[region], lo, hi)
    return float(diff.sum() * voxel_mm3 / (hi - lo))


@dataclass(frozen=True)
class PairImages:
    """A visit pair in halfway space: normalised images and masks on one grid."""

    bl: np.ndarray
    fu: np.ndarray
    brain: np.ndarray      # union of both brain masks
    lesions: np.ndarray    # union of both lesion masks (empty when none given)
    grid: Grid
    blur_sigma_vox: float = 0.0   # :func:`match_blur` (positive: the baseline was blurred)


def halfway_pair(bl: tuple[np.ndarray, np.ndarray], bl_brain: np.ndarray, fu: tuple[np.ndarray, np.ndarray],
                 fu_brain: np.ndarray, fu_to_bl: sitk.Transform, csf_bright: bool,
                 bl_lesions: np.ndarray | None = None, fu_lesions: np.ndarray | None = None,
                 options: AtrophyOptions = AtrophyOptions()) -> PairImages:
    """Resample both visits into their halfway space (baseline grid) and match intensities.

    ``bl``/``fu`` are ``(data, affine)``; masks are on their own visit's grid; ``fu_to_bl`` is the
    ``from-session_to-baseline`` transform (baseline points -> follow-up points).
    """
    grid = Grid(tuple(bl[0].shape), bl[1])  # type: ignore[arg-type]
    to_bl, to_fu = halfway_transforms(fu_to_bl)
    bl_h = resample_array(bl[0], bl[1], grid, to_bl, "linear")
    fu_h = resample_array(fu[0], fu[1], grid, to_fu, "linear")
    bm = resample_mask(bl_brain, bl[1], grid, to_bl)
    fm = resample_mask(fu_brain, fu[1], grid, to_fu)
    lesions = np.zeros(grid.shape, dtype=bool)
    if bl_lesions is not None:
        lesions |= resample_mask(bl_lesions, bl[1], grid, to_bl)
    if fu_lesions is not None:
        lesions |= resample_mask(fu_lesions, fu[1], grid, to_fu)
    both = bm & fm
    nb = normalise(bl_h, *tissue_levels(bl_h, both & ~lesions, csf_bright))
    nf = match_intensities(nb, normalise(fu_h, *tissue_levels(fu_h, both & ~lesions, csf_bright)),
                           both & ~lesions)
    if options.dbc_sigma_mm > 0:
        inner = erode_mm(both, 3.0, grid.affine, border_value=False) & ~lesions
        nf = nf * differential_bias(nb, nf, inner, grid.affine, options.dbc_sigma_mm)
    blur = 0.0
    if options.blur_match_max_vox > 0:
        region = boundary_region(nb, nf, bm | fm, grid.affine, options.boundary_mm) & ~lesions
        nb, nf, info = match_blur(nb, nf, region, options.blur_match_max_vox)
        blur = info["blur_sigma_vox"]
    return PairImages(nb, nf, bm | fm, lesions, grid, blur)


def pbvc_bsi(pair: PairImages, options: AtrophyOptions = AtrophyOptions()) -> dict[str, float]:
    """PBVC (%) of a halfway pair by the boundary shift integral, with its components.

    Returns ``pbvc_vs_baseline`` (%), ``bsi_ml`` (parenchyma lost, mL), ``baseline_brain_ml``
    (the baseline parenchymal volume in halfway space, the denominator) and
    ``boundary_region_ml``.
    """
    aff = pair.grid.affine
    vox = voxel_volume_mm3(aff)
    region = boundary_region(pair.bl, pair.fu, pair.brain, aff, options.boundary_mm)
    if pair.lesions.any():
        region &= ~dilate_mm(pair.lesions, max(options.lesion_margin_mm, 0.0), aff)
    bsi = boundary_shift_integral(pair.bl, pair.fu, region, vox, options.window)
    v_bl = float(parenchymal_fraction(pair.bl, pair.brain, pair.lesions, options.pv_window).sum(dtype=np.float64) * vox)
    return {"pbvc_vs_baseline": -100.0 * bsi / v_bl, "bsi_ml": bsi / 1000.0,
            "baseline_brain_ml": v_bl / 1000.0, "boundary_region_ml": float(region.sum() * vox / 1000.0),
            "blur_sigma_vox": pair.blur_sigma_vox}


def pbvc(bl: tuple[np.ndarray, np.ndarray], bl_brain: np.ndarray, fu: tuple[np.ndarray, np.ndarray],
         fu_brain: np.ndarray, fu_to_bl: sitk.Transform, csf_bright: bool = False,
         bl_lesions: np.ndarray | None = None, fu_lesions: np.ndarray | None = None,
         options: AtrophyOptions = AtrophyOptions()) -> dict[str, float]:
    """Percent brain volume change of ``fu`` from ``bl`` (BSI on the halfway pair); see :func:`pbvc_bsi`."""
    start = time.perf_counter()
    pair = halfway_pair(bl, bl_brain, fu, fu_brain, fu_to_bl, csf_bright, bl_lesions, fu_lesions, options)
    out = pbvc_bsi(pair, options)
    log.info("PBVC %.3f%% (BSI %.2f mL of %.1f mL) in %.1f s", out["pbvc_vs_baseline"], out["bsi_ml"],
             out["baseline_brain_ml"], time.perf_counter() - start)
    return out


# --- file-level step (called by the workflow script) -------------------------------------------


def session_volumes(image: np.ndarray, affine: np.ndarray, brain: np.ndarray, lesions: np.ndarray | None,
                    csf_bright: bool, options: AtrophyOptions = AtrophyOptions()) -> dict[str, float]:
    """ICV, parenchymal volume and BPF of one session's reference image (any intensity units)."""
    csf, tissue = tissue_levels(image, brain if lesions is None else brain & ~lesions, csf_bright)
    return brain_volumes(normalise(image, csf, tissue), affine, brain, lesions, options, csf_bright)


def run_measure(ref_path: str, brain_path: str, ref_contrast: str, bl_path: str | None,
                bl_brain_path: str | None, xfm_path: str | None, out_json: str,
                subject: str, session: str, cfg: dict, lesions_path: str | None = None,
                bl_lesions_path: str | None = None) -> None:
    """Brain volumes of one session and, for a follow-up, its PBVC from baseline (QC JSON)."""
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.qc import QCReport

    options = options_from_config(cfg)
    csf_bright = ref_contrast == "T2w"
    image, affine = io.read_image(ref_path)
    brain, _ = io.read_mask(brain_path)
    lesions = io.read_mask(lesions_path)[0] if lesions_path else None
    report = QCReport(subject, session)
    vols = session_volumes(image, affine, brain, lesions, csf_bright, options)
    report.figures.update(vols)
    bpf_status = "pass" if 0.6 <= vols["bpf"] <= 0.95 else "warn"
    report.add("measure_brain", "brain", "bpf", round(vols["bpf"], 4), bpf_status,
               "" if bpf_status == "pass" else f"BPF {vols['bpf']:.3f} is outside 0.60-0.95; check the brain mask")
    if bl_path is not None and xfm_path is not None and bl_brain_path is not None:
        bl = io.read_image(bl_path)
        bl_brain, _ = io.read_mask(bl_brain_path)
        bl_lesions = io.read_mask(bl_lesions_path)[0] if bl_lesions_path else None
        change = pbvc(bl, bl_brain, (image, affine), brain, read_transform(xfm_path), csf_bright,
                      bl_lesions, lesions, options)
        report.figures.update(change)
        p = change["pbvc_vs_baseline"]
        status = "pass" if abs(p) <= 5.0 else "warn"
        report.add("measure_brain", "pbvc", "pbvc_percent", round(p, 3), status,
                   "" if status == "pass" else f"PBVC {p:.2f}% is implausibly large; check registration and masks")
    else:
        report.figures["pbvc_vs_baseline"] = 0.0
    io.write_json(out_json, report.to_dict())

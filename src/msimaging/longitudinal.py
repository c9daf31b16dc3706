"""New and enlarging T2 lesions between visits (DESIGN §4), detected jointly on the registered pair.

A follow-up F is compared with a reference visit R (baseline or previous). Both FLAIRs are
analysed together on F's grid (R is resampled through the ``from-session_to-baseline``
transforms), so the decision never rests on two independent segmentations alone:

1. **Intensity matching.** R's FLAIR is mapped onto F's intensities inside the brain both
   share (``intensity_matching``: quantiles 1-95 matched, proportional above so the lesion tail
   is not bent by differing lesion loads; or one global gain), then a smooth multiplicative
   field (the differential bias left by N4 and scanner drift) is estimated from the log-ratio
   of normal tissue and removed. Both are expressed in robust z-units of F's parenchyma
   (:func:`lesions.robust_mode_sigma`) and smoothed alike: F also gets the average blur that
   linear interpolation gave R, then the sharper of the two is blurred in-plane to the other's
   edge sharpness (``match_blur_max_vox``, as for the BSI), so lesion volumes compare at the same
   sharpness.
2. **Subtraction.** ``dz = (zF - zR) / sqrt(s^2 + (shift |grad zR|)^2)``: the change in units
   of the subtraction noise ``s`` (local, over ``local_noise_mm``, never below the global robust
   value: misregistered CSF borders and thick-slice partial volume are noisier) and of the
   difference a registration error of ``registration_shift_mm`` makes at R's edges
   (:func:`new_lesion_significance`). A pair without T2w confirmation (below) keeps the former,
   stricter rule ``dz = (zF - max_N zR) / s``: F minus the *largest* R value within ``jitter_mm``
   (:func:`flair_only`). Change
   candidates are voxels with ``dz`` (a new lesion) or the plain subtraction ``d`` (a lesion's
   growth rim, within the jitter of the old lesion) above ``subtraction_z`` that are
   hyperintense on F (``zF`` above ``hyperintensity_z``), grown by hysteresis. A candidate
   outside the follow-up's segmented lesions becomes a lesion of its own: with F's connected
   voxels above ``joint_lesion_z`` it touches, and R's adjacent voxels above it as R's lesion,
   so the decision does not depend on the cross-sectional segmentation having found either.
3. **Lesion-level decision.** For every lesion of F (segmented, or candidate) both visits'
   lesion volumes are measured *with the same operator* on the same voxels: the integral of a
   lesion-fraction map ``max((z - z0) / (z1 - z0), 0)``, with ``z0`` near normal white matter
   and ``z1`` the lesion's own peak (no upper clip, so blurring keeps the integral), over the lesion dilated by one voxel plus the R lesions it
   overlaps. Linear resampling and partial volume preserve such integrals, so the comparison holds
   across grids and visits. A lesion is **new** when it overlaps no lesion of R (DESIGN §4; R's
   segmented lesions, and for a candidate outside F's segmented lesions also R's lesions of the
   joint maps, i.e. 26-connected voxels above ``joint_lesion_z`` of lesion size), R's
   joint volume there is below ``new_reference_fraction`` of F's and the subtraction shows it;
   with a T2w at both visits, a lesion found new must also show a pooled T2w increase of
   ``t2_confirm_z`` (:func:`confirmation_maps`: the T2w is an independent acquisition, which the
   FLAIR pair's own unexplained increases do not brighten), else it is stable;
   **enlarging** / **shrinking** by the DESIGN §4 volume rule applied to the joint volumes (and, for enlarging, a volume of
   significant subtraction signal - hysteresis ``subtraction_z`` / ``subtraction_low_z`` on
   ``d``, or with pooled evidence regions whose pooled ``d`` reaches ``measured_growth_z`` - of at
   least ``growth_evidence_mm3`` and at least ``growth_evidence_fraction`` of the growth), or (``growth_from_evidence``) for a lesion that existed at R when the volume of
   significant increase alone meets the volume rule and the net increase summed around the lesion
   (:func:`net_increase`, unchanged by blur and shifts) holds ``net_growth_fraction`` of it; else
   **stable**. Candidates outside the segmented lesions are kept only when new or enlarging.

The reference lesions overlapped (R's labels carried onto F, dilated by
``dilate_reference_voxels``) are reported as ``reference_ids`` for the lesion table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import (
    Grid,
    affine_matrix_lps,
    affine_transform_from_matrix,
    resample_array,
    voxel_sizes,
    voxel_volume_mm3,
)
from msimaging.lesions import CONNECTIVITY, LesionRules, label_lesions, robust_mode_sigma
from msimaging.morphology import ball, dilate_mm

log = logging.getLogger(__name__)

STATUSES = ("new", "enlarging", "stable", "shrinking")


@dataclass(frozen=True)
class ChangeRules:
    """Change detection settings (config section ``change:``; see config/README.md)."""

    # DESIGN §4 definitions
    dilate_reference_voxels: int = 1
    enlarge_small_lesion_mm3: float = 50.0
    enlarge_small_fraction: float = 0.5
    enlarge_large_fraction: float = 0.2
    enlarge_min_volume_mm3: float = 10.0
    # joint (subtraction) detection
    smoothing_mm: float = 0.6
    bias_smoothing_mm: float = 20.0
    jitter_mm: float = 1.0
    edge_mm: float = 3.0
    subtraction_z: float = 4.0
    subtraction_low_z: float = 2.5
    hyperintensity_z: float = 0.5
    fraction_floor_z: float = 1.0
    joint_lesion_z: float = 2.0
    new_reference_fraction: float = 0.35
    growth_evidence_mm3: float = 10.0
    growth_evidence_fraction: float = 0.5
    intensity_matching: str = "quantile"
    match_interpolation_blur: bool = True
    local_noise_mm: float = 6.0
    # pooled evidence (0 disables: the per-voxel hysteresis above decides alone)
    pooled_z: float = 3.5
    pooled_growth_z: float = 5.0
    evidence_low_z: float = 2.0
    evidence_peak_z: float = 2.5
    evidence_min_voxels: int = 6
    new_plain_z: float = 0.0
    growth_from_evidence: bool = True
    local_hyperintensity_z: float = 0.3
    local_level_mm: float = 4.0
    match_blur_max_vox: float = 0.5
    net_growth_mm: float = 3.0
    net_growth_fraction: float = 0.1
    measured_growth_z: float = 4.0
    # new-lesion significance: the change over the local noise of both visits and the difference a
    # misregistration of this many mm makes at R's edges (0: against R's maximum within jitter_mm)
    registration_shift_mm: float = 0.3
    # a new lesion is T2-hyperintense: with a T2w at both visits its pooled T2w increase over the
    # lesion must reach this (0: FLAIR alone decides)
    t2_confirm_z: float = 2.5

    @classmethod
    def from_config(cls, cfg: dict) -> "ChangeRules":
        c = cfg.get("change", {}) or {}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in c:
                default = getattr(cls(), f.name)
                kwargs[f.name] = c[f.name] if isinstance(default, bool) else type(default)(c[f.name])
        if kwargs.get("intensity_matching", "quantile") not in ("quantile", "gain"):
            raise ValueError("change.intensity_matching must be 'quantile' or 'gain'")
        return cls(**kwargs)


@dataclass(frozen=True)
class Visit:
    """One visit's inputs on its own reference grid: standardised FLAIR, brain mask, lesion labels,
    and the co-registered T2w on the same grid when the visit has one."""

    flair: np.ndarray
    affine: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    t2: np.ndarray | None = None

    @property
    def grid(self) -> Grid:
        return Grid(tuple(self.flair.shape), self.affine)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LesionChange:
    lesion_id: int                  # id in the follow-up's dseg; ids above its maximum are lesions
    status: str                     # found by the subtraction only (``segmented`` False)
    volume_mm3: float               # new | enlarging | stable | shrinking
    reference_ids: tuple[int, ...]  # overlapped lesion ids of the reference visit
    reference_volume_mm3: float     # their volume (reference's own segmentation)
    joint_volume_mm3: float = 0.0   # follow-up lesion volume, joint operator
    joint_reference_volume_mm3: float = 0.0   # reference volume on the same voxels, same operator
    change_mm3: float = 0.0         # volume of significant FLAIR increase (subtraction) in the lesion
    segmented: bool = True
    voxels: tuple[int, ...] = ()    # flat (C-order) indices on the follow-up grid, unsegmented lesions
    net_change_mm3: float = 0.0     # net increase around the lesion (:func:`net_increase`; growth rule)
    net_change_z: float = 0.0       # ... its pooled significance
    t2_change_z: float = 0.0        # pooled T2w increase over the lesion (new-lesion confirmation)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["reference_ids"] = list(self.reference_ids)
        d["voxels"] = list(self.voxels)
        for k in ("volume_mm3", "reference_volume_mm3", "joint_volume_mm3", "joint_reference_volume_mm3",
                  "change_mm3", "net_change_mm3", "net_change_z", "t2_change_z"):
            d[k] = round(float(d[k]), 3)
        return d


@dataclass
class PairMaps:
    """The registered pair on the follow-up grid (z-units of follow-up parenchyma)."""

    zf: np.ndarray
    zr: np.ndarray
    dz: np.ndarray                  # jitter-robust subtraction in noise units
    d: np.ndarray                   # plain subtraction in noise units
    mask: np.ndarray                # analysed voxels (both brains, R's field of view)
    inner: np.ndarray               # mask away from the brain surface
    ref_labels: np.ndarray          # R's lesion labels on the follow-up grid (nearest)
    sigma_d: float
    extras: dict[str, float] = field(default_factory=dict)
    #: (voxels, variance inflation of a sum of that many neighbouring subtraction voxels) measured
    #: on the pair's normal tissue: the spatial correlation of its noise (:func:`noise_correlation`)
    correlation: tuple[tuple[float, float], ...] = ((1.0, 1.0),)

    def inflation(self, n: float) -> float:
        """Variance inflation of the sum of ``n`` neighbouring voxels (1 <= it <= n)."""
        xs = np.log([c[0] for c in self.correlation])
        ys = np.log([c[1] for c in self.correlation])
        v = float(np.exp(np.interp(np.log(max(n, 1.0)), xs, ys))) if len(xs) > 1 else float(self.correlation[0][1])
        if n > self.correlation[-1][0]:   # beyond the largest box: the inflation grows no further
            v = float(self.correlation[-1][1])
        return min(max(v, 1.0), max(float(n), 1.0))


# --- transforms ----------------------------------------------------------------------------------


def follow_up_to_reference(fu_to_baseline: sitk.Transform | None,
                           ref_to_baseline: sitk.Transform | None) -> sitk.Transform:
    """Transform mapping follow-up grid points to reference-visit points.

    ``from-session_to-baseline`` transforms map baseline points to session points, so
    F -> R is ``T_R o T_F^-1`` (identity for a missing transform, i.e. the baseline itself).
    """
    m_f = affine_matrix_lps(fu_to_baseline) if fu_to_baseline is not None else np.eye(4)
    m_r = affine_matrix_lps(ref_to_baseline) if ref_to_baseline is not None else np.eye(4)
    return affine_transform_from_matrix(m_r @ np.linalg.inv(m_f))


# --- the DESIGN §4 volume rule -------------------------------------------------------------------


def is_enlarged(volume_mm3: float, reference_mm3: float, rules: ChangeRules) -> bool:
    """DESIGN §4: growth >= 50% (reference < 50 mm^3) or >= 20%, and >= the minimum volume."""
    growth = volume_mm3 - reference_mm3
    if growth < rules.enlarge_min_volume_mm3 or reference_mm3 <= 0:
        return False
    fraction = rules.enlarge_small_fraction if reference_mm3 < rules.enlarge_small_lesion_mm3 \
        else rules.enlarge_large_fraction
    return growth >= fraction * reference_mm3


# --- intensity matching --------------------------------------------------------------------------


def _footprint(radius_mm: float, affine: np.ndarray) -> np.ndarray:
    """Voxels within ``radius_mm`` (at least the nearest in-plane neighbours) of the centre."""
    return ball(max(float(radius_mm), float(voxel_sizes(affine).min()) * 1.01), affine)


def quantile_match(source: np.ndarray, target: np.ndarray, mask: np.ndarray,
                   percentiles: np.ndarray = np.linspace(1.0, 95.0, 95)) -> np.ndarray:
    """Map ``source`` intensities so that their quantiles inside ``mask`` equal ``target``'s.

    Piecewise linear between the matched percentiles (1st-95th by default: the upper tail holds
    the lesions, whose load differs between visits, so it is not matched); beyond the last one
    the map is proportional (slope ``t/s`` of the 95th percentiles), below the first linear with
    the slope of the lowest 10%, so lesion intensities keep their contrast.
    """
    s = np.percentile(source[mask], percentiles)
    t = np.percentile(target[mask], percentiles)
    s = np.maximum.accumulate(s + np.arange(len(s)) * 1e-9)
    out = np.interp(source, s, t)
    k = max(1, len(s) // 10)
    lo_slope = (t[k] - t[0]) / max(s[k] - s[0], 1e-9)
    hi_slope = t[-1] / s[-1] if s[-1] > 0 and t[-1] > 0 else \
        (t[-1] - t[-1 - k]) / max(s[-1] - s[-1 - k], 1e-9)
    out = np.where(source < s[0], t[0] + (source - s[0]) * lo_slope, out)
    out = np.where(source > s[-1], t[-1] + (source - s[-1]) * hi_slope, out)
    return out.astype(np.float32)


def smooth_ratio_field(numerator: np.ndarray, denominator: np.ndarray, weight: np.ndarray,
                       affine: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Smooth multiplicative field ``exp(G * (w log(n/d)) / G * w)`` (normalised convolution)."""
    zooms = voxel_sizes(affine)
    sig = [sigma_mm / z for z in zooms]
    w = weight.astype(np.float32)
    ratio = np.zeros(numerator.shape, dtype=np.float32)
    ok = weight & (numerator > 0) & (denominator > 0)
    ratio[ok] = np.log(numerator[ok] / denominator[ok])
    num = ndi.gaussian_filter(ratio * w, sig, mode="nearest")
    den = ndi.gaussian_filter(w, sig, mode="nearest")
    field_log = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
    return np.exp(field_log).astype(np.float32)


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return 1.0
    return max(float(1.4826 * np.median(np.abs(v - np.median(v)))), 1e-6)


def local_noise(diff: np.ndarray, weight: np.ndarray, affine: np.ndarray, sigma_mm: float,
                global_sigma: float) -> np.ndarray:
    """Spatially varying subtraction noise: Gaussian-weighted mean |diff| x 1.2533 (= sigma for
    Gaussian noise) over ``weight`` voxels, never below the global robust sigma.

    Misregistration at CSF borders and thick-slice partial volume raise the noise locally; a
    local scale keeps them from producing changes there while deep white matter keeps its
    sensitivity.
    """
    sig = [sigma_mm / z for z in voxel_sizes(affine)]
    w = weight.astype(np.float32)
    num = ndi.gaussian_filter(np.abs(diff) * w, sig, mode="nearest")
    den = ndi.gaussian_filter(w, sig, mode="nearest")
    local = np.where(den > 1e-3, 1.2533 * num / np.maximum(den, 1e-3), global_sigma)
    return np.maximum(local, global_sigma).astype(np.float32)


def registration_noise(z: np.ndarray, affine: np.ndarray, shift_mm: float) -> np.ndarray:
    """SD of the subtraction a registration error of ``shift_mm`` makes: ``shift x |grad z|``.

    To first order a shift ``u`` changes an image by ``u . grad z``; the gradient (z-units per
    mm, on the physical voxel spacing) is large at CSF borders, cortex and lesion edges and near
    zero inside white matter, where a new lesion then keeps its full sensitivity.
    """
    grads = np.gradient(np.asarray(z, np.float32), *[float(v) for v in voxel_sizes(affine)])
    return (float(shift_mm) * np.sqrt(sum(g * g for g in grads))).astype(np.float32)


def new_lesion_significance(zf: np.ndarray, zr: np.ndarray, noise: np.ndarray | float, affine: np.ndarray,
                            rules: ChangeRules) -> np.ndarray:
    """Per-voxel significance of a FLAIR increase that no registration error explains.

    With ``registration_shift_mm`` > 0: ``(zF - zR) / sqrt(noise^2 + (shift |grad zR|)^2)``, the
    local subtraction noise of both visits plus the misregistration term of
    :func:`registration_noise` (R's edges: a new lesion has none at R). Else the former rule:
    ``(zF - max zR within jitter_mm) / noise`` (unbiased at edges, biased low everywhere by the
    maximum of R's noise).
    """
    if rules.registration_shift_mm > 0:
        reg = registration_noise(zr, affine, rules.registration_shift_mm)
        return ((zf - zr) / np.sqrt(np.square(noise) + np.square(reg))).astype(np.float32)
    zr_max = ndi.maximum_filter(zr, footprint=_footprint(rules.jitter_mm, affine), mode="nearest")
    return ((zf - zr_max) / noise).astype(np.float32)


#: Neighbourhoods (voxels per axis) on which the noise correlation of the subtraction is measured.
CORRELATION_BOXES = ((1, 1, 1), (3, 3, 1), (5, 5, 1), (5, 5, 3), (9, 9, 3))


def noise_correlation(d: np.ndarray, normal: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Variance inflation of box sums of the subtraction ``d`` over ``normal`` tissue.

    For each box of :data:`CORRELATION_BOXES` (n voxels), ``n x var(box mean) / var(d)`` over the
    boxes lying wholly in ``normal``: 1 for white noise, larger when the residuals (interpolation,
    misregistration, anatomy) are spatially correlated. Pooled evidence over a lesion of n voxels
    is divided by the square root of n times this inflation.
    """
    w = normal.astype(np.float32)
    x = np.where(normal, d, 0.0).astype(np.float32)
    var = float(np.var(x[normal])) if normal.any() else 1.0
    out = []
    for box in CORRELATION_BOXES:
        n = int(np.prod(box))
        if n == 1:
            out.append((1.0, 1.0))
            continue
        full = ndi.uniform_filter(w, box, mode="constant") > 0.999
        if full.sum() < 100:
            break
        mean = ndi.uniform_filter(x, box, mode="constant")
        out.append((float(n), max(float(np.var(mean[full])) * n / max(var, 1e-9), 1.0)))
    return tuple(out)


def pair_maps(fu: Visit, ref: Visit, fu_to_ref: sitk.Transform, rules: ChangeRules = ChangeRules()) -> PairMaps:
    """Resample R onto F's grid, match intensities, and compute the subtraction maps."""
    from msimaging.morphology import erode_mm

    grid = fu.grid
    r_flair = resample_array(ref.flair, ref.affine, grid, fu_to_ref, "linear")
    r_fov = resample_array(np.ones(ref.flair.shape, dtype=np.float32), ref.affine, grid, fu_to_ref,
                           "linear") > 0.999
    r_brain = resample_array(ref.brain.astype(np.float32), ref.affine, grid, fu_to_ref, "linear") >= 0.5
    ref_labels = resample_array(ref.labels.astype(np.int32), ref.affine, grid, fu_to_ref, "nearest")
    f = np.asarray(fu.flair, dtype=np.float32)
    mask = fu.brain.astype(bool) & r_brain & r_fov
    if mask.sum() < 1000:
        raise ValueError("the registered visits share almost no brain; check from-session_to-baseline")
    # 1. multiplicative intensity model (N4-corrected FLAIR = gain x smooth field x tissue signal):
    #    a global gain, then the smooth differential field estimated on normal tissue of both
    #    visits (twice, refining what is normal); contrast ratios, hence lesions, are kept.
    mode, sigma = robust_mode_sigma(f[mask])
    if rules.intensity_matching == "quantile":
        r = quantile_match(r_flair, f, mask)
    else:
        r = r_flair * np.float32(np.median(f[mask]) / max(float(np.median(r_flair[mask])), 1e-6))
    no_lesion = mask & (fu.labels == 0) & (ref_labels == 0)
    for _ in range(2 if rules.bias_smoothing_mm > 0 else 0):
        normal = no_lesion & (np.abs((f - mode) / sigma) < 2.5) & (np.abs((r - mode) / sigma) < 2.5)
        if normal.sum() < 1000:
            break
        r = r * smooth_ratio_field(f, r, normal, fu.affine, rules.bias_smoothing_mm)
    zf = ((f - mode) / sigma).astype(np.float32)
    zr = ((r - mode) / sigma).astype(np.float32)
    # 2. both smoothed alike: R was blurred by linear interpolation (variance 1/6 voxel^2 per axis
    #    on average over sub-voxel offsets), so F gets that blur too, then both ``smoothing_mm``
    zooms = voxel_sizes(fu.affine)
    if rules.match_interpolation_blur:
        zf = ndi.gaussian_filter(zf, [np.sqrt(1.0 / 6.0)] * 3).astype(np.float32)
    blur = 0.0
    if rules.match_blur_max_vox > 0:
        # what is left of the blur difference (another reconstruction, or a follow-up that was
        # itself interpolated): the sharper visit is blurred in-plane to the other's edge sharpness,
        # as for the BSI (:func:`msimaging.atrophy.match_blur`), else lesions read as shrinking
        from msimaging.atrophy import match_blur

        # measured away from the lesions of either visit (their change is no blur)
        lesions_near = ndi.binary_dilation((fu.labels > 0) | (ref_labels > 0), iterations=2)
        zr, zf, info = match_blur(zr, zf, mask & ~lesions_near, rules.match_blur_max_vox)
        blur = float(info["blur_sigma_vox"])
    if rules.smoothing_mm > 0:
        sig = [rules.smoothing_mm / z for z in zooms]
        zf = ndi.gaussian_filter(zf, sig).astype(np.float32)
        zr = ndi.gaussian_filter(zr, sig).astype(np.float32)
    zf = np.where(mask, zf, 0.0).astype(np.float32)
    zr = np.where(mask, zr, 0.0).astype(np.float32)
    # 3. subtraction in noise units; the jitter-robust one against R's local maximum
    d_raw = zf - zr
    sigma_d = robust_sigma(d_raw[mask & (fu.labels == 0)])
    noise: np.ndarray | float = sigma_d
    if rules.local_noise_mm > 0:
        noise = local_noise(d_raw, mask & (fu.labels == 0) & (ref_labels == 0), fu.affine, rules.local_noise_mm,
                            sigma_d)
    dz = np.where(mask, new_lesion_significance(zf, zr, noise, fu.affine, rules), 0.0).astype(np.float32)
    d = np.where(mask, d_raw / noise, 0.0).astype(np.float32)
    inner = erode_mm(mask, rules.edge_mm, fu.affine, border_value=False) if rules.edge_mm > 0 else mask
    normal = inner & (fu.labels == 0) & (ref_labels == 0) & (np.abs(zf) < 2.5) & (np.abs(zr) < 2.5)
    correlation = noise_correlation(d, normal) if rules.pooled_z > 0 else ((1.0, 1.0),)
    log.info("pair: %d voxels analysed, subtraction noise %.3f z, blur matched %.2f voxel, correlation %s",
             int(mask.sum()), sigma_d, blur, [(int(n), round(c, 1)) for n, c in correlation])
    return PairMaps(zf=zf, zr=zr, dz=dz, d=d, mask=mask, inner=inner, ref_labels=ref_labels.astype(np.int32),
                    sigma_d=sigma_d, extras={"parenchyma_mode": float(mode), "parenchyma_sigma": float(sigma),
                                             "blur_sigma_vox": blur},
                    correlation=correlation)


# --- candidates and lesion-level decisions --------------------------------------------------------


def change_candidates(maps: PairMaps, affine: np.ndarray, rules: ChangeRules,
                      lesion_rules: LesionRules = LesionRules()) -> np.ndarray:
    """Labelled regions of significant FLAIR increase that are hyperintense on the follow-up.

    Seeds: an increase above ``subtraction_z`` (jitter-robust ``dz``: a new lesion; or plain
    ``d``: a lesion's growth, whose rim lies within the jitter of the old lesion) with ``zF >
    hyperintensity_z`` inside the brain away from its surface; grown (26-connected) through
    increases above ``subtraction_low_z`` with the same hyperintensity.
    """
    if rules.pooled_z > 0:
        return pooled_candidates(maps, affine, rules, lesion_rules)[0]
    hyper = maps.zf > rules.hyperintensity_z
    seeds = maps.inner & hyper & ((maps.dz > rules.subtraction_z) | (maps.d > rules.subtraction_z))
    grow = maps.mask & hyper & ((maps.dz > rules.subtraction_low_z) | (maps.d > rules.subtraction_low_z))
    region, n = ndi.label(grow | seeds, structure=CONNECTIVITY)
    if n == 0:
        return np.zeros(region.shape, dtype=np.int32)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(region[seeds])] = True
    keep[0] = False
    return label_lesions(keep[region], affine, lesion_rules)


def local_level(z: np.ndarray, weight: np.ndarray, affine: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Local tissue level of a z-map: Gaussian normalised convolution over ``weight`` voxels."""
    sig = [sigma_mm / v for v in voxel_sizes(affine)]
    w = weight.astype(np.float32)
    num = ndi.gaussian_filter(np.where(weight, z, 0.0).astype(np.float32), sig, mode="nearest")
    den = ndi.gaussian_filter(w, sig, mode="nearest")
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)


def pooled_evidence(values: np.ndarray, maps: PairMaps) -> float:
    """Pooled significance of a region: ``sum(values) / sqrt(n x inflation(n))`` (z-units)."""
    n = float(values.size)
    if n == 0:
        return 0.0
    return float(values.sum(dtype=np.float64) / np.sqrt(n * maps.inflation(n)))


def pooled_candidates(maps: PairMaps, affine: np.ndarray, rules: ChangeRules,
                      lesion_rules: LesionRules = LesionRules(), growth_z: float | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Change candidates decided on evidence pooled over their extent.

    Regions (26-connected) of voxels with a FLAIR increase above ``evidence_low_z`` (jitter-robust
    ``dz`` or plain ``d``) that are hyperintense on the follow-up (``zF > hyperintensity_z``) and
    reach ``evidence_peak_z`` somewhere inside the brain away from its surface. A region is kept
    when its pooled evidence (:func:`pooled_evidence`, the noise's spatial correlation taken into
    account) on ``dz`` (a new lesion: increase beyond what registration jitter explains) or on
    ``d`` (growth) reaches ``pooled_z``, and it has ``evidence_min_voxels``. With ``new_plain_z``
    > 0 a region whose pooled ``d`` reaches it is new evidence too (the reference-volume test of
    :func:`classify_lesions` still decides whether the reference had a lesion there). A faint lesion of
    many weak voxels passes; an isolated noisy voxel does not.

    Returns (candidate labels, new-evidence voxels, growth-evidence voxels); ``growth_z``, when
    given, replaces ``pooled_growth_z`` as the growth-evidence threshold.
    """
    hyper = maps.zf > rules.hyperintensity_z
    if rules.local_hyperintensity_z > 0:
        # or above the follow-up's local tissue level (a faint lesion in dark white matter)
        hyper = hyper | (maps.zf - local_level(maps.zf, maps.mask & (np.abs(maps.zf) < 2.0), affine,
                                                rules.local_level_mm) > rules.local_hyperintensity_z)
    low = maps.mask & hyper & ((maps.dz > rules.evidence_low_z) | (maps.d > rules.evidence_low_z))
    peak = maps.inner & hyper & ((maps.dz > rules.evidence_peak_z) | (maps.d > rules.evidence_peak_z))
    region, n = ndi.label(low | peak, structure=CONNECTIVITY)
    new_ev = np.zeros(region.shape, dtype=bool)
    grow_ev = np.zeros(region.shape, dtype=bool)
    if n == 0:
        return np.zeros(region.shape, dtype=np.int32), new_ev, grow_ev
    for i, box in enumerate(ndi.find_objects(region), start=1):
        if box is None:
            continue
        comp = region[box] == i
        if comp.sum() < rules.evidence_min_voxels or not peak[box][comp].any():
            continue
        z_new = pooled_evidence(maps.dz[box][comp], maps)
        z_grow = pooled_evidence(maps.d[box][comp], maps)
        if z_new >= rules.pooled_z or (rules.new_plain_z > 0 and z_grow >= rules.new_plain_z):
            new_ev[box] |= comp
        if z_grow >= (max(rules.pooled_growth_z, rules.pooled_z) if growth_z is None else growth_z):
            grow_ev[box] |= comp
    return label_lesions(new_ev | grow_ev, affine, lesion_rules), new_ev, grow_ev


def joint_lesion_labels(z: np.ndarray, mask: np.ndarray, affine: np.ndarray, rules: ChangeRules,
                        lesion_rules: LesionRules = LesionRules()) -> np.ndarray:
    """Lesions (DESIGN §4 size rules) of lesion-level hyperintensity (``z > joint_lesion_z``) of one visit.

    Computed on the pair's own maps, so a lesion the cross-sectional segmentation missed still
    has an extent at both visits (a subtraction candidate's lesion, and its reference lesion).
    """
    return label_lesions(mask & (z > rules.joint_lesion_z), affine, lesion_rules)


def significant_increase(maps: PairMaps, rules: ChangeRules) -> np.ndarray:
    """Voxels of significant FLAIR increase: hysteresis on the plain subtraction ``d`` (regions
    above ``subtraction_low_z`` holding a voxel above ``subtraction_z``), as for the candidates.

    A lesion's growth is a rim partly covered by partial volume; the rim's voxels below the seed
    threshold but connected to it are growth as much as its core.
    """
    low = maps.mask & (maps.d > rules.subtraction_low_z)
    region, n = ndi.label(low, structure=CONNECTIVITY)
    if n == 0:
        return low
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(region[maps.d > rules.subtraction_z])] = True
    keep[0] = False
    return keep[region]


def lesion_fraction(z: np.ndarray, floor_z: float, peak_z: float) -> np.ndarray:
    """Lesion fraction per voxel from a z-map: 0 at ``floor_z``, 1 at ``peak_z``, linear above.

    No upper clip: the integral of a linear function of intensity is preserved by linear
    interpolation and blurring, so a sharp and a resampled image of one lesion give one volume.
    """
    return np.maximum((z - floor_z) / max(peak_z - floor_z, 1e-3), 0.0)


def net_increase(maps: PairMaps, box: tuple[slice, ...], region: np.ndarray, floor_z: float, peak_z: float,
                 voxel_mm3: float) -> tuple[float, float]:
    """Net FLAIR increase over ``region`` (a boolean array on ``box``): (pooled significance, volume).

    The sum of the plain subtraction over a neighbourhood enclosing the lesion at both visits does
    not change when one visit is blurrier (blurring keeps integrals) or shifted within it (what
    leaves one side arrives at the other); a lesion's growth adds to it. The significance is the
    pooled evidence of ``d`` (:func:`pooled_evidence`); the volume is the increase of the unclipped
    lesion fraction (:func:`lesion_fraction` without its floor clip) in mm^3.
    """
    if not region.any():
        return 0.0, 0.0
    z = pooled_evidence(maps.d[box][region], maps)
    delta = float((maps.zf[box][region] - maps.zr[box][region]).sum(dtype=np.float64)
                  / max(peak_z - floor_z, 1e-3) * voxel_mm3)
    return z, delta


def _dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    if iterations <= 0 or not mask.any():
        return mask
    return ndi.binary_dilation(mask, structure=CONNECTIVITY, iterations=iterations)


def classify_lesions(fu_labels: np.ndarray, maps: PairMaps, affine: np.ndarray, rules: ChangeRules,
                     ref_volumes_mm3: dict[int, float], lesion_rules: LesionRules = LesionRules(),
                     confirm: PairMaps | None = None) -> tuple[list[LesionChange], np.ndarray]:
    """Status of every follow-up lesion, plus lesions found by the subtraction alone.

    ``confirm``, when given, is the T2w pair (:func:`confirmation_maps`): a lesion the FLAIR finds
    new is new only when its pooled T2w increase reaches ``t2_confirm_z``, else it is stable.
    Returns the changes and the label image they refer to (the follow-up's labels, with the
    unsegmented candidate lesions added under ids above the follow-up's maximum).
    """
    vox = voxel_volume_mm3(affine)
    labels = np.asarray(fu_labels, dtype=np.int32).copy()
    if rules.pooled_z > 0:
        candidates, new_evidence, significant = pooled_candidates(maps, affine, rules, lesion_rules)
        growth_rules = rules
        if rules.local_hyperintensity_z > 0:
            # the local gate is for faint new lesions in dark white matter; growth keeps the global one
            growth_rules = replace(rules, local_hyperintensity_z=0.0)
            significant = pooled_candidates(maps, affine, growth_rules, lesion_rules)[2]
            candidates = label_lesions(new_evidence | significant, affine, lesion_rules)
        measured = significant
        if 0 < rules.measured_growth_z < rules.pooled_growth_z:
            # growth the joint volumes measure needs less evidence than growth inferred from it
            measured = pooled_candidates(maps, affine, growth_rules, lesion_rules, rules.measured_growth_z)[2]
    else:
        candidates = change_candidates(maps, affine, rules, lesion_rules)
        significant = significant_increase(maps, rules)
        new_evidence = maps.dz > rules.subtraction_z
        measured = significant
    n_seg = int(labels.max())
    segmented_any = _dilate(labels > 0, 1)
    next_id = n_seg + 1
    # a candidate outside the segmented lesions is a lesion of its own: the candidate plus the
    # follow-up's hyperintense region(s) it touches (the segmentation may have missed the lesion)
    joint_f = joint_lesion_labels(maps.zf, maps.mask, affine, rules, lesion_rules)
    joint_r = joint_lesion_labels(maps.zr, maps.mask, affine, rules, lesion_rules)
    if candidates.any():
        for cid, cbox in enumerate(ndi.find_objects(candidates), start=1):
            if cbox is None:
                continue
            comp_box = candidates[cbox] == cid
            if (comp_box & segmented_any[cbox]).any() or (labels[cbox][comp_box] > 0).any():
                continue
            touched = np.setdiff1d(np.unique(joint_f[cbox][comp_box]), [0])
            if touched.size:
                ext = np.isin(joint_f, touched)
                ext[cbox] |= comp_box
                ext &= ~segmented_any & (labels == 0)
            else:
                ext = np.zeros(labels.shape, dtype=bool)
                ext[cbox] = comp_box
            labels[ext] = next_id
            next_id += 1
    ref = maps.ref_labels
    dilated_ref = ref
    if rules.dilate_reference_voxels > 0 and ref.any():
        dilated_ref = ref.copy()
        for _ in range(rules.dilate_reference_voxels):
            grown = ndi.grey_dilation(dilated_ref, footprint=CONNECTIVITY, mode="constant")
            dilated_ref = np.where(dilated_ref > 0, dilated_ref, grown)
    boxes = ndi.find_objects(labels)
    changes: list[LesionChange] = []
    pad = np.maximum(3, np.ceil(rules.net_growth_mm / voxel_sizes(affine)).astype(int) + 1)
    for lid, box in enumerate(boxes, start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, n, p in zip(box, labels.shape, pad))
        lab = labels[box]
        own = lab == lid
        overlapped = np.unique(dilated_ref[box][own])
        reference_ids = tuple(int(v) for v in overlapped if v > 0)
        ref_part = np.isin(ref[box], reference_ids) if reference_ids else np.zeros(own.shape, dtype=bool)
        segmented = lid <= n_seg
        joint_reference = False
        if not segmented:
            # R's hyperintense lesions it overlaps (R's mask dilated as for DESIGN §4) stand for
            # R's lesion where R's segmentation has none: overlapping one, it is not new
            near = np.setdiff1d(np.unique(joint_r[box][_dilate(own, rules.dilate_reference_voxels)]), [0])
            if near.size:
                ref_part = ref_part | np.isin(joint_r[box], near)
                joint_reference = True
        region = _dilate(own | ref_part, 1) & maps.mask[box] & ((lab == 0) | own)
        zf, zr = maps.zf[box], maps.zr[box]
        peak = float(np.percentile(np.maximum(zf, zr)[own | ref_part], 90))
        peak = max(peak, rules.fraction_floor_z + 1.0)
        v_f = float(lesion_fraction(zf[region], rules.fraction_floor_z, peak).sum() * vox)
        v_r = float(lesion_fraction(zr[region], rules.fraction_floor_z, peak).sum() * vox)
        change = float((significant[box] & region).sum() * vox)
        measured_change = float((measured[box] & region).sum() * vox)
        new_change = float((new_evidence[box] & own).sum() * vox)
        volume = float(own.sum() * vox)
        ref_vol = float(sum(ref_volumes_mm3.get(r, 0.0) for r in reference_ids))
        existed = ref_part
        if segmented and not reference_ids:
            # a lesion of R's joint map there (R's segmentation missed it) can have grown too
            near = np.setdiff1d(np.unique(joint_r[box][_dilate(own, rules.dilate_reference_voxels)]), [0])
            existed = np.isin(joint_r[box], near) if near.size else existed
        net_z = net_mm3 = 0.0
        if rules.growth_from_evidence and existed.any():
            # the net increase around the lesion at both visits (other lesions left out): growth
            # adds to it, a sharper or shifted visit's edge does not (:func:`net_increase`)
            others = ((lab > 0) & ~own) | ((ref[box] > 0) & ~existed)
            around = dilate_mm(own | existed, rules.net_growth_mm, affine) & maps.mask[box] & ~others
            net_z, net_mm3 = net_increase(maps, box, around, rules.fraction_floor_z, peak, vox)
        # DESIGN §4: a lesion overlapping a reference lesion is never new; one overlapping none is
        # new only when the joint volumes agree (else the reference segmentation missed it)
        t2_z = pooled_evidence(confirm.dz[box][own], confirm) if confirm is not None else 0.0
        if not reference_ids and not joint_reference and v_r <= rules.new_reference_fraction * v_f \
                and new_change > 0:
            # not T2-hyperintense in the same way: the FLAIR change alone is no new lesion (nor growth)
            status = "new" if confirm is None or t2_z >= rules.t2_confirm_z else "stable"
        elif is_enlarged(v_f, v_r, rules) and measured_change >= max(rules.growth_evidence_mm3,
                                                                        rules.growth_evidence_fraction * (v_f - v_r)):
            status = "enlarging"
        elif rules.pooled_z > 0 and rules.growth_from_evidence and existed.any() and v_f > v_r and \
                is_enlarged(v_r + change, v_r, rules) and change >= rules.growth_evidence_mm3 and \
                net_mm3 >= rules.net_growth_fraction * change:
            # pooled evidence: the significant increase at the lesion is itself a growth that meets
            # the DESIGN §4 rule (a faint rim the joint volumes only partly see), and the net
            # increase around the lesion holds a share of it (a sharper edge at one visit gives
            # increase on one side of the edge, decrease on the other, and no net increase)
            status = "enlarging"
        elif is_enlarged(v_r, v_f, rules):
            status = "shrinking"
        else:
            status = "stable"
        if not segmented and status not in ("new", "enlarging"):
            log.debug("candidate %d dropped (%s): %.0f mm3, joint %.1f vs %.1f mm3, increase %.0f mm3, "
                      "net %.1f mm3 (z %.1f)", lid, status, volume, v_f, v_r, change, net_mm3, net_z)
            labels[labels == lid] = 0     # a subtraction candidate that is not new is not a lesion
            continue
        voxels: tuple[int, ...] = ()
        if not segmented:
            voxels = tuple(int(i) for i in np.flatnonzero(labels == lid))
        changes.append(LesionChange(lid, status, volume, reference_ids, ref_vol, v_f, v_r, change,
                                    segmented, voxels, net_mm3, net_z, t2_z))
    return changes, labels


def compare_visits(fu: Visit, ref: Visit, fu_to_ref: sitk.Transform, rules: ChangeRules = ChangeRules(),
                   lesion_rules: LesionRules = LesionRules()) -> tuple[list[LesionChange], np.ndarray]:
    """Classify the follow-up's lesions against a reference visit (see the module docstring)."""
    from msimaging.lesions import lesion_stats

    confirm = confirmation_maps(fu, ref, fu_to_ref, rules)
    if confirm is None:
        rules = flair_only(rules)
    maps = pair_maps(fu, ref, fu_to_ref, rules)
    ref_volumes = {s.lesion_id: s.volume_mm3 for s in lesion_stats(ref.labels, ref.affine)}
    return classify_lesions(fu.labels, maps, fu.affine, rules, ref_volumes, lesion_rules, confirm)


def flair_only(rules: ChangeRules) -> ChangeRules:
    """The rules for a pair without T2w confirmation: the former, stricter new-lesion evidence.

    The unbiased significance (``registration_shift_mm``) and the local hyperintensity gate
    (``local_hyperintensity_z``) find fainter lesions, and as many chance regions of the FLAIR
    pair: only an independent contrast confirming each new lesion pays for them (on a synthetic
    unchanged FLAIR-only pair the unbiased significance alone gave a false new lesion).
    """
    return replace(rules, registration_shift_mm=0.0, local_hyperintensity_z=0.0)


def confirmation_maps(fu: Visit, ref: Visit, fu_to_ref: sitk.Transform, rules: ChangeRules) -> PairMaps | None:
    """The T2w pair's maps (the FLAIR pair's operators on the visits' T2w), or None when either
    visit lacks a T2w or ``t2_confirm_z`` is 0.

    The T2w is an independent acquisition: a new lesion brightens it too, while the FLAIR pair's
    own unexplained increases (inflow, CSF suppression, thick-slice partial volume) do not repeat
    on it.
    """
    if rules.t2_confirm_z <= 0 or fu.t2 is None or ref.t2 is None:
        return None
    return pair_maps(Visit(fu.t2, fu.affine, fu.brain, fu.labels), Visit(ref.t2, ref.affine, ref.brain, ref.labels),
                     fu_to_ref, rules)


def status_mask(labels: np.ndarray, changes: list[LesionChange], status: str) -> np.ndarray:
    """The voxels of the lesions with ``status`` (``labels`` as returned by :func:`compare_visits`)."""
    ids = [c.lesion_id for c in changes if c.status == status]
    return np.isin(labels, ids) if ids else np.zeros(labels.shape, dtype=bool)


def count_status(changes: list[LesionChange] | list[dict], status: str) -> int:
    return sum(1 for c in changes if (c["status"] if isinstance(c, dict) else c.status) == status)


# --- file level ----------------------------------------------------------------------------------


def read_visit(flair_path: str, brain_path: str, dseg_path: str, t2_path: str | None = None) -> Visit:
    from msimaging import io

    flair, affine = io.read_image(flair_path)
    brain, _ = io.read_mask(brain_path)
    labels, _ = io.read_image(dseg_path, dtype=np.int32)
    t2 = io.read_image(t2_path)[0] if t2_path else None
    return Visit(flair=flair, affine=affine, brain=brain, labels=labels, t2=t2)


def run_compare(fu: dict[str, str], baseline: dict[str, str], previous: dict[str, str] | None,
                out_new: str, out_enlarging: str, out_json: str, subject: str, session: str,
                cfg: dict) -> None:
    """Compare a follow-up with baseline and with the previous visit; write masks and JSON.

    ``fu``, ``baseline`` and ``previous`` map ``flair``, ``brain``, ``dseg``, (follow-ups)
    ``xfm`` (``from-session_to-baseline``) and, when the visit has one, ``t2`` (its T2w on the
    FLAIR grid: new-lesion confirmation) to files; ``previous`` is None when it is the
    baseline (or the same files as ``baseline``: the comparison is then made once). The masks (on
    the follow-up grid) hold the new / enlarging lesions vs baseline.
    """
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.lesions import rules_from_config
    from msimaging.qc import QCReport

    rules = ChangeRules.from_config(cfg)
    lesion_rules = rules_from_config(cfg)
    f = read_visit(fu["flair"], fu["brain"], fu["dseg"], fu.get("t2"))
    t_fu = read_transform(fu["xfm"])
    report = QCReport(subject, session)
    result: dict[str, list[dict]] = {}

    def versus(visit: dict[str, str]) -> tuple[list[LesionChange], np.ndarray]:
        r = read_visit(visit["flair"], visit["brain"], visit["dseg"], visit.get("t2"))
        t_ref = read_transform(visit["xfm"]) if visit.get("xfm") else None
        return compare_visits(f, r, follow_up_to_reference(t_fu, t_ref), rules, lesion_rules)

    comparisons = {"baseline": versus(baseline)}
    # the previous visit is the baseline: the same comparison, made once
    comparisons["previous"] = comparisons["baseline"] if previous in (None, baseline) else versus(previous)
    for name, (changes, labels) in comparisons.items():
        result[name] = [c.to_dict() for c in changes]
        if name == "baseline":
            io.write_mask(out_new, status_mask(labels, changes, "new"), f.affine)
            io.write_mask(out_enlarging, status_mask(labels, changes, "enlarging"), f.affine)
        for status in ("new", "enlarging"):
            n = count_status(changes, status)
            report.figures[f"{status}_t2_vs_{name}"] = n
            report.add("compare_visits", name, f"{status}_count", n)
        unsegmented = sum(1 for c in changes if not c.segmented)
        report.add("compare_visits", name, "new_unsegmented_count", unsegmented)
        log.info("vs %s: %s", name, {s: count_status(changes, s) for s in STATUSES})
    report.figures["changes"] = result
    io.write_json(out_json, report.to_dict())

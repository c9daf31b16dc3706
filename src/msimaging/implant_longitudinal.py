"""Real-background longitudinal cases: new and enlarging lesions implanted into raw follow-up scans.

The activity endpoint is judged on real thick-slice follow-ups, where new lesions are small and
faint. This module builds BIDS sessions on which the *whole* pipeline (bias correction, brain mask,
registration, segmentation, comparison) can be measured against known change:

* **no-change follow-ups**: a re-positioned copy of a real baseline (one rigid head motion applied
  to every contrast on its own grid, linear re-interpolation, a gain, fresh Gaussian noise at the
  image's own noise level) whose header can also be moved (a session placed ``header_shift_mm``
  away in scanner coordinates, as real sessions are): :func:`reposition`;
* **new lesions**: real lesion shapes (components of ``shared/data/ms-lesion-masks`` of chosen
  sizes) pasted at chosen white-matter points of a 1 mm grid in the session's world space and
  implanted by :func:`msimaging.implant.implant` into every raw contrast on its native grid (box
  slice profile, the measured real-lesion edge and texture); their FLAIR contrast is set per group
  (``contrast_scale``) to the contrast measured on the real new lesions of sub-p12
  (:func:`measure_change_contrast`);
* **enlarging lesions**: a shell around an existing lesion of the follow-up (:func:`implant_growth`):
  the lesion is grown by ``growth_mm`` and the shell gets the lesion's own core excess over the
  local NAWM times the measured edge profile (FLAIR; T2w and T1w with the profile's median ratios).

Truth is written on each follow-up's raw FLAIR grid. Everything is deterministic from ``seed``.
Nothing here changes :mod:`msimaging.implant`; its functions are reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import Grid, resample_array, voxel_sizes, voxel_volume_mm3
from msimaging.implant import LesionProfile, implant, local_nawm, signed_distance_mm
from msimaging.lesions import CONNECTIVITY
from msimaging.morphology import dilate_mm, erode_mm

log = logging.getLogger(__name__)

#: Implanted new-lesion size bins (mm^3 on the session grid), as the activity bench reports them.
SIZE_BINS_MM3 = ((10.0, 30.0), (30.0, 100.0), (100.0, 500.0))

ImageSet = dict[str, tuple[np.ndarray, np.ndarray]]   # contrast -> (data, affine) on its own grid


# --- small helpers ---------------------------------------------------------------------------------


def on_grid(mask_or_image: np.ndarray, affine: np.ndarray, grid: Grid, order: str = "linear",
            transform: sitk.Transform | None = None) -> np.ndarray:
    """Resample by world coordinates (identity transform unless given)."""
    return resample_array(np.asarray(mask_or_image, np.float32), affine, grid, transform, order)


def noise_sigma(image: np.ndarray, mask: np.ndarray) -> float:
    """Voxel noise SD from in-plane neighbour differences inside ``mask`` (robust, / sqrt 2)."""
    d = np.diff(np.asarray(image, np.float32), axis=0)
    m = mask[1:] & mask[:-1]
    v = d[m]
    if v.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))) / np.sqrt(2.0))


def white_matter(flair: np.ndarray, affine: np.ndarray, brain: np.ndarray, margin_mm: float = 6.0,
                 window: tuple[float, float] = (0.9, 1.12)) -> tuple[np.ndarray, np.ndarray]:
    """(white-matter candidates, not-CSF) of a raw FLAIR: brain eroded by ``margin_mm``, intensity
    within ``window`` of the local parenchymal level (CSF is dark, lesions and cortex brighter).

    A rough tissue map for placing lesions, not a segmentation.
    """
    brain = np.asarray(brain, bool)
    level = local_nawm(flair, brain & (flair > np.percentile(flair[brain], 30)), affine, 12.0)
    rel = np.asarray(flair, np.float32) / np.maximum(level, 1e-6)
    rel_s = ndi.gaussian_filter(rel, 1.0 / voxel_sizes(affine))
    inner = erode_mm(brain, margin_mm, affine, border_value=False)
    wm = inner & (rel_s > window[0]) & (rel_s < window[1])
    not_csf = brain & (rel_s > 0.75)
    return wm, not_csf


def bright_lesions(flair: np.ndarray, affine: np.ndarray, brain: np.ndarray, wm: np.ndarray,
                   excess: float = 0.35) -> np.ndarray:
    """Labels of existing FLAIR-hyperintense lesions: fractional excess over local NAWM above
    ``excess`` inside the brain away from its surface (26-connected)."""
    nawm = local_nawm(flair, wm, affine)
    rel = np.asarray(flair, np.float32) / np.maximum(nawm, 1e-6) - 1.0
    inner = erode_mm(np.asarray(brain, bool), 8.0, affine, border_value=False)
    lab, _ = ndi.label(inner & (rel > excess), structure=CONNECTIVITY)
    return lab.astype(np.int32)


def fractional_excess_p90(image: np.ndarray, nawm: np.ndarray, mask: np.ndarray) -> float:
    """The lesion-contrast operator used throughout: 90th percentile of image / local NAWM - 1."""
    v = np.asarray(image, np.float32)[mask] / np.maximum(nawm[mask], 1e-6) - 1.0
    return float(np.percentile(v, 90)) if v.size else float("nan")


def fractional_increase_p90(after: np.ndarray, before: np.ndarray, nawm: np.ndarray, mask: np.ndarray) -> float:
    """The change-contrast operator (brightening): 90th percentile of (after - before) / local NAWM."""
    v = (np.asarray(after, np.float32)[mask] - np.asarray(before, np.float32)[mask]) / np.maximum(nawm[mask], 1e-6)
    return float(np.percentile(v, 90)) if v.size else float("nan")


# --- contrast of real new lesions ------------------------------------------------------------------


def components(mask: np.ndarray, affine: np.ndarray) -> Iterator[tuple[int, tuple[slice, ...], np.ndarray, float]]:
    """The 26-connected components of ``mask``: label, bounding box, the component within it and
    its volume (mm^3, rounded to 0.1)."""
    lab, _ = ndi.label(mask, structure=CONNECTIVITY)
    vox = voxel_volume_mm3(affine)
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        comp = lab[box] == i
        yield i, box, comp, round(float(comp.sum() * vox), 1)


def measure_change_contrast(flair2: np.ndarray, flair1: np.ndarray, bright: np.ndarray, brain: np.ndarray,
                            affine: np.ndarray) -> dict[str, Any]:
    """FLAIR contrast of real new / enlarging lesions (the brightening change components, on one grid).

    Per component: its excess over the local NAWM at the follow-up (:func:`fractional_excess_p90`)
    and its brightening (follow-up minus the intensity-matched baseline, over NAWM). Returns the
    per-component figures and their quartiles.
    """
    from msimaging.longitudinal import quantile_match

    wm, _ = white_matter(flair2, affine, brain, margin_mm=3.0)
    nawm2 = local_nawm(flair2, wm & ~ndi.binary_dilation(bright, CONNECTIVITY, iterations=2), affine)
    f1 = quantile_match(flair1, flair2, brain)
    rows = []
    for _, box, comp, volume in components(bright, affine):
        rows.append({"volume_mm3": volume,
                     "excess": round(fractional_excess_p90(flair2[box], nawm2[box], comp), 4),
                     "brightening": round(fractional_increase_p90(flair2[box], f1[box], nawm2[box], comp), 4)})
    ex = np.asarray([r["excess"] for r in rows]) if rows else np.zeros(1)
    br = np.asarray([r["brightening"] for r in rows]) if rows else np.zeros(1)
    return {"components": rows, "excess_quartiles": [round(float(q), 4) for q in np.percentile(ex, [25, 50, 75])],
            "brightening_quartiles": [round(float(q), 4) for q in np.percentile(br, [25, 50, 75])]}


# --- re-positioned no-change copies ---------------------------------------------------------------


def head_motion(rotation_deg: Sequence[float], shift_mm: Sequence[float], centre_lps: Sequence[float]
                ) -> sitk.Euler3DTransform:
    """A rigid head motion about ``centre_lps`` (ITK convention: new-position points -> old points)."""
    t = sitk.Euler3DTransform()
    t.SetCenter(tuple(float(c) for c in centre_lps))
    t.SetRotation(*[float(np.deg2rad(a)) for a in rotation_deg])
    t.SetTranslation(tuple(float(s) for s in shift_mm))
    return t


def reposition(images: ImageSet, motion: sitk.Transform, header_shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
               gain: float = 1.08, noise_fraction: float = 1.0, seed: int = 0) -> ImageSet:
    """A no-change follow-up: every contrast re-sampled (linear) under one head ``motion`` on its
    own grid, scaled by ``gain``, with fresh Gaussian noise of ``noise_fraction`` x the image's own
    noise SD, and its header moved by ``header_shift_mm`` (RAS; scanner placement, no content change).
    """
    rng = np.random.default_rng(seed)
    out: ImageSet = {}
    for c, (data, affine) in sorted(images.items()):
        grid = Grid(tuple(data.shape), affine)  # type: ignore[arg-type]
        moved = resample_array(np.asarray(data, np.float32), affine, grid, motion, "linear")
        head = moved > np.percentile(moved[moved > 0], 20) if (moved > 0).any() else moved > 0
        sd = noise_sigma(np.asarray(data, np.float32), head)
        noisy = gain * moved + rng.normal(0.0, noise_fraction * sd * gain, moved.shape).astype(np.float32)
        noisy = np.where(moved > 0, noisy, 0.0)
        new_affine = np.asarray(affine, float).copy()
        new_affine[:3, 3] += np.asarray(header_shift_mm, float)
        out[c] = (np.maximum(noisy, 0.0).astype(np.float32), new_affine)
    return out


def shift_header(mask: np.ndarray, affine: np.ndarray, motion: sitk.Transform,
                 header_shift_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A mask of the original session carried as :func:`reposition` carries its images."""
    grid = Grid(tuple(mask.shape), affine)  # type: ignore[arg-type]
    moved = resample_array(np.asarray(mask, np.float32), affine, grid, motion, "linear") >= 0.5
    new_affine = np.asarray(affine, float).copy()
    new_affine[:3, 3] += np.asarray(header_shift_mm, float)
    return moved, new_affine


# --- new lesions -------------------------------------------------------------------------------


@dataclass
class Placed:
    """Lesions pasted onto a 1 mm grid in the session's world space (the implant's "mask space")."""

    mask: np.ndarray
    affine: np.ndarray
    centres_ras: list[np.ndarray] = field(default_factory=list)
    source: list[dict[str, Any]] = field(default_factory=list)


def lesion_components(mask_files: Sequence[Path], bins: Sequence[tuple[float, float]] = SIZE_BINS_MM3,
                      per_bin: int = 4, seed: int = 0, max_compactness: float = 6.0
                      ) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """``per_bin`` real lesion components (1 mm boolean boxes) of every volume bin, drawn from the
    masks. Components whose bounding box is more than ``max_compactness`` times their volume
    (thin confluent strands) are skipped."""
    from msimaging import io

    rng = np.random.default_rng(seed)
    pools: list[list[tuple[np.ndarray, dict[str, Any]]]] = [[] for _ in bins]
    files = list(mask_files)
    for k in rng.permutation(len(files)):
        m, _ = io.read_mask(files[k])
        lab, n = ndi.label(m, structure=CONNECTIVITY)
        for i, box in enumerate(ndi.find_objects(lab), start=1):
            comp = lab[box] == i
            v = float(comp.sum())   # 1 mm^3 voxels
            size = float(np.prod([s.stop - s.start for s in box]))
            for b, (lo, hi) in enumerate(bins):
                # volumes on a 3 mm grid shrink by partial volume: draw a little above the bin
                if lo * 1.2 <= v < hi and size <= max_compactness * v and len(pools[b]) < 6 * per_bin:
                    pools[b].append((np.pad(comp, 3), {"file": Path(files[k]).name, "component": i,
                                                        "volume_mm3_1mm": v}))
        if all(len(p) >= 6 * per_bin for p in pools):
            break
    out = []
    for pool in pools:
        for j in rng.permutation(len(pool))[:per_bin]:
            out.append(pool[j])
    return out


def choose_centres(wm: np.ndarray, affine: np.ndarray, n: int, rng: np.random.Generator,
                   avoid: np.ndarray | None = None, spacing_mm: float = 14.0, clearance_mm: float = 6.0
                   ) -> list[np.ndarray]:
    """``n`` RAS points of ``wm`` at least ``spacing_mm`` apart and ``clearance_mm`` from ``avoid``."""
    from msimaging.geometry import voxel_to_world

    ok = np.asarray(wm, bool)
    if avoid is not None and np.asarray(avoid).any():
        ok = ok & ~dilate_mm(np.asarray(avoid, bool), clearance_mm, affine)
    # deep white matter first: the points must hold a lesion of several mm
    ok = erode_mm(ok, 2.0, affine, border_value=False) if erode_mm(ok, 2.0, affine, border_value=False).any() else ok
    idx = np.argwhere(ok)
    pts = voxel_to_world(affine, idx.astype(float))
    chosen: list[np.ndarray] = []
    for j in rng.permutation(len(pts)):
        p = pts[j]
        if all(np.linalg.norm(p - q) >= spacing_mm for q in chosen):
            chosen.append(p)
            if len(chosen) == n:
                break
    return chosen


def paste(components: Sequence[tuple[np.ndarray, dict[str, Any]]], centres_ras: Sequence[np.ndarray],
          reference: tuple[np.ndarray, np.ndarray]) -> Placed:
    """The components pasted (centroid on the centre) onto a 1 mm RAS grid covering ``reference``."""
    from msimaging.geometry import voxel_to_world

    data, affine = reference
    corners = voxel_to_world(affine, np.array([[i, j, k] for i in (0, data.shape[0] - 1)
                                               for j in (0, data.shape[1] - 1) for k in (0, data.shape[2] - 1)],
                                              float))
    lo, hi = corners.min(axis=0) - 5, corners.max(axis=0) + 5
    shape = tuple(int(np.ceil(h - l)) + 1 for l, h in zip(lo, hi))
    grid_aff = np.eye(4)
    grid_aff[:3, 3] = lo
    mask = np.zeros(shape, bool)
    placed = Placed(mask=mask, affine=grid_aff)
    for (comp, info), c in zip(components, centres_ras):
        cen = np.round(np.argwhere(comp).mean(axis=0)).astype(int)
        at = np.round(c - lo).astype(int) - cen
        sl = tuple(slice(a, a + s) for a, s in zip(at, comp.shape))
        if any(s.start < 0 or s.stop > n for s, n in zip(sl, shape)):
            continue
        mask[sl] |= comp
        placed.centres_ras.append(np.asarray(c, float))
        placed.source.append(info)
    return placed


def implant_new(images: ImageSet, brain_flair: np.ndarray, placed: Placed, profile: LesionProfile,
                contrast_scale: float, seed: int) -> tuple[ImageSet, np.ndarray]:
    """Implant the pasted lesions into every contrast on its own grid (world coordinates).

    Returns the images and the implanted truth (fraction >= 0.5) on the FLAIR grid.
    """
    flair, f_aff = images["FLAIR"]
    out: ImageSet = {}
    truth = np.zeros(flair.shape, bool)
    for c, (data, affine) in images.items():
        grid = Grid(tuple(data.shape), affine)  # type: ignore[arg-type]
        brain = on_grid(brain_flair, f_aff, grid) >= 0.5 if c != "FLAIR" else np.asarray(brain_flair, bool)
        ref_flair = on_grid(flair, f_aff, grid) if c != "FLAIR" else flair
        wm, not_csf = white_matter(ref_flair, affine, brain, margin_mm=2.0)
        if c not in profile.contrasts:
            out[c] = (data, affine)
            continue
        res = implant({c: data}, affine, brain, wm.astype(np.float32), not_csf.astype(np.float32),
                      placed.mask, placed.affine, None, profile, seed, contrast_scale=contrast_scale)
        out[c] = (res.images[c], affine)
        if c == "FLAIR":
            truth = res.implanted
    return out, truth


# --- growth of existing lesions -------------------------------------------------------------------


def growth_radius_mm(lesion: np.ndarray, affine: np.ndarray, admissible: np.ndarray,
                     target_fraction: float, min_growth_mm3: float = 12.0,
                     radii_mm: Sequence[float] = (0.8, 1.1, 1.5, 2.0, 2.5, 3.0, 3.5)) -> tuple[float, np.ndarray]:
    """Smallest growth radius whose shell (inside ``admissible``) adds ``target_fraction`` of the
    lesion's volume and at least ``min_growth_mm3``; the grown mask."""
    vox = voxel_volume_mm3(affine)
    v0 = float(lesion.sum() * vox)
    sd = signed_distance_mm(lesion, affine)
    grown = lesion
    for r in radii_mm:
        grown = lesion | ((sd > -r) & admissible)
        if (grown.sum() - lesion.sum()) * vox >= max(min_growth_mm3, target_fraction * v0):
            return float(r), grown
    return float(radii_mm[-1]), grown


def implant_growth(images: ImageSet, lesions: np.ndarray, chosen: Sequence[int], brain_flair: np.ndarray,
                   profile: LesionProfile, small_mm3: float = 50.0, small_fraction: float = 0.8,
                   large_fraction: float = 0.4, shell_fraction: float = 0.8) -> tuple[ImageSet, np.ndarray, list[dict[str, Any]]]:
    """Grow the ``chosen`` lesions (labels on the FLAIR grid) by a shell of lesion tissue.

    The grown lesion's FLAIR excess over the local NAWM is the lesion's own core excess times the
    measured edge profile at the distance to the grown boundary (its old rim becomes interior, the
    shell its new rim; inside the grown mask at least ``shell_fraction`` of the core: the new tissue
    is lesion, not partial volume), never lowering a voxel; T2w / T1w get the
    same fraction with the profile's median contrast ratios. Returns images, the truth (each grown
    lesion, old + shell, on the FLAIR grid) and a row per lesion.
    """
    flair, f_aff = images["FLAIR"]
    vox = voxel_volume_mm3(f_aff)
    wm, not_csf = white_matter(flair, f_aff, brain_flair, margin_mm=2.0)
    nawm = local_nawm(flair, wm & ~(lesions > 0), f_aff)
    core = np.asarray(profile.core, float)
    ratio = {c: float(np.median(core[:, profile.contrasts.index(c)]) / np.median(core[:, 0]))
             for c in profile.contrasts}
    excess = np.zeros(flair.shape, np.float32)    # relative FLAIR excess to add (x local NAWM)
    truth = np.zeros(flair.shape, bool)
    rows = []
    for lid in chosen:
        les = lesions == lid
        v0 = float(les.sum() * vox)
        frac = small_fraction if v0 < small_mm3 else large_fraction
        r, grown = growth_radius_mm(les, f_aff, not_csf & ~((lesions > 0) & ~les), frac)
        c_core = fractional_excess_p90(flair, nawm, les)
        # the grown lesion gets the lesion's core contrast times the edge profile at the distance
        # to its new boundary: the old rim becomes lesion interior, the shell the new rim
        sd_new = signed_distance_mm(grown, f_aff)
        reach = (sd_new > -2.0) & not_csf & ~((lesions > 0) & ~les)
        # the new tissue is lesion: inside the grown mask at least ``shell_fraction`` of the core
        want = c_core * np.maximum(profile.edge_fraction(sd_new[reach], "FLAIR"), shell_fraction * grown[reach])
        have = flair[reach] / np.maximum(nawm[reach], 1e-6) - 1.0
        excess[reach] = np.maximum(excess[reach], np.maximum(want - have, 0.0))
        truth |= grown
        rows.append({"label": int(lid), "volume_mm3": round(v0, 1), "grown_mm3": round(float(grown.sum() * vox), 1),
                     "radius_mm": r, "core_excess": round(c_core, 4)})
    out: ImageSet = {}
    for c, (data, affine) in images.items():
        if c == "FLAIR":
            out[c] = ((flair + excess * nawm).astype(np.float32), affine)
        elif c in ratio:
            grid = Grid(tuple(data.shape), affine)  # type: ignore[arg-type]
            ex = on_grid(excess, f_aff, grid) * ratio[c]
            brain = on_grid(brain_flair, f_aff, grid) >= 0.5
            ref_flair = on_grid(flair, f_aff, grid)
            wm_c, _ = white_matter(ref_flair, affine, brain, margin_mm=2.0)
            nawm_c = local_nawm(data, wm_c, affine)
            out[c] = (np.maximum(data + ex * nawm_c, 0.0).astype(np.float32), affine)
        else:
            out[c] = (data, affine)
    return out, truth, rows


def choose_growth(lesions: np.ndarray, affine: np.ndarray, n: int, rng: np.random.Generator,
                  min_mm3: float = 15.0, max_mm3: float = 400.0, avoid: np.ndarray | None = None) -> list[int]:
    """``n`` existing lesions of a volume between ``min_mm3`` and ``max_mm3`` (none touching ``avoid``)."""
    vox = voxel_volume_mm3(affine)
    sizes = np.bincount(lesions.ravel())[1:] * vox
    ok = [i + 1 for i, v in enumerate(sizes) if min_mm3 <= v <= max_mm3]
    if avoid is not None and np.asarray(avoid).any():
        near = dilate_mm(np.asarray(avoid, bool), 4.0, affine)
        ok = [i for i in ok if not (near & (lesions == i)).any()]
    return [int(ok[j]) for j in rng.permutation(len(ok))[:n]]


def observed_contrast(after: np.ndarray, before: np.ndarray, truth: np.ndarray, affine: np.ndarray,
                      wm: np.ndarray) -> list[dict[str, Any]]:
    """Per implanted component (on the FLAIR grid): volume and observed contrast, with the operators
    of :func:`measure_change_contrast`: ``excess`` over the local NAWM of the image before implanting
    and ``brightening``, the 90th percentile of the increase (after - before) over that NAWM."""
    nawm = local_nawm(before, wm, affine)
    return [{"component": i, "volume_mm3": volume, "excess": round(fractional_excess_p90(after[box], nawm[box], comp), 4),
             "brightening": round(fractional_increase_p90(after[box], before[box], nawm[box], comp), 4)}
            for i, box, comp, volume in components(truth, affine)]


__all__ = ["SIZE_BINS_MM3", "measure_change_contrast", "reposition", "head_motion", "shift_header",
           "lesion_components", "choose_centres", "paste", "implant_new", "implant_growth", "choose_growth",
           "growth_radius_mm", "white_matter", "bright_lesions", "noise_sigma", "observed_contrast",
           "fractional_excess_p90", "fractional_increase_p90", "Placed"]

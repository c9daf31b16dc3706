"""T2/FLAIR lesions: the one lesion-labelling function and lesion tables.

A lesion is a 26-connected component of a lesion mask whose volume is at least
``min_volume_mm3`` and which has at least ``min_voxels`` voxels (DESIGN §4). Masks, counts,
matching between visits and lesion tables all go through :func:`label_lesions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from msimaging.geometry import voxel_to_world, voxel_volume_mm3

#: 26-connectivity in 3D: the only connectivity msimaging uses for lesions.
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LesionRules:
    """What counts as a lesion (config keys ``lesions.min_volume_mm3``, ``lesions.min_voxels``)."""

    min_volume_mm3: float = 10.0
    min_voxels: int = 3


def label_lesions(mask: np.ndarray, affine: np.ndarray, rules: LesionRules = LesionRules()) -> np.ndarray:
    """Label the lesions of a binary mask: int32 array, 0 background, lesions 1..N.

    Components smaller than the rules are dropped. Labels are numbered in raster order of each
    lesion's first voxel, so the same mask always gives the same lesion ids.
    """
    binary = np.asarray(mask) > 0
    labels, n = ndi.label(binary, structure=CONNECTIVITY)
    if n == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    min_voxels = max(int(rules.min_voxels), int(np.ceil(rules.min_volume_mm3 / voxel_volume_mm3(affine) - 1e-9)))
    keep = sizes >= min_voxels
    keep[0] = False
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels]


def lesion_mask(mask: np.ndarray, affine: np.ndarray, rules: LesionRules = LesionRules()) -> np.ndarray:
    """The mask restricted to components that count as lesions."""
    return label_lesions(mask, affine, rules) > 0


def count_lesions(mask: np.ndarray, affine: np.ndarray, rules: LesionRules = LesionRules()) -> int:
    return int(label_lesions(mask, affine, rules).max())


@dataclass(frozen=True)
class Lesion:
    lesion_id: int
    volume_mm3: float
    n_voxels: int
    centroid_ras_mm: tuple[float, float, float]


def lesion_stats(labels: np.ndarray, affine: np.ndarray) -> list[Lesion]:
    """Volume and RAS centroid of every label present (ids need not be consecutive)."""
    labels = np.asarray(labels)
    index = np.setdiff1d(np.unique(labels), [0])
    if index.size == 0:
        return []
    flat = labels.ravel()
    voxels = np.flatnonzero(flat)  # lesions are a small part of the volume: sums over their voxels only
    ids = flat[voxels]
    counts_all = np.bincount(ids, minlength=int(index.max()) + 1)
    counts = counts_all[index]
    coords = np.unravel_index(voxels, labels.shape)
    centroids = np.stack([np.bincount(ids, weights=c.astype(np.float64), minlength=counts_all.size)[index] / counts
                          for c in coords], axis=1)
    world = voxel_to_world(affine, centroids.reshape(-1, 3))
    vox = voxel_volume_mm3(affine)
    return [
        Lesion(int(i), float(c * vox), int(c), (float(w[0]), float(w[1]), float(w[2])))
        for i, c, w in zip(index, counts, world)
    ]


# --- per-lesion reductions ----------------------------------------------------------------------
# Lesions are a small part of a volume: these look at labelled voxels only (scipy.ndimage's
# labelled statistics visit every voxel, seconds per call on 1 mm grids) and give the same values.


def _labelled(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, values) of the labelled voxels, in raster order."""
    flat = np.asarray(labels).ravel()
    voxels = np.flatnonzero(flat)
    return flat[voxels].astype(np.int64), np.asarray(values).ravel()[voxels]


def label_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` over each label 1..n (NaN for an absent label), as ``ndi.mean``."""
    ids, vals = _labelled(values, labels)
    sums = np.bincount(ids, weights=vals.astype(np.float64), minlength=n + 1)[1:n + 1]
    counts = np.bincount(ids, minlength=n + 1)[1:n + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def label_reduce(values: np.ndarray, labels: np.ndarray, n: int, reduce: Callable[[np.ndarray], float],
                 empty: float = np.nan) -> np.ndarray:
    """``reduce`` (e.g. ``np.median``) of ``values`` over each label 1..n (``empty`` for an absent label)."""
    ids, vals = _labelled(values, labels)
    order = np.argsort(ids, kind="stable")
    ids, vals = ids[order], vals[order]
    bounds = np.searchsorted(ids, np.arange(1, n + 2))
    out = np.full(n, empty, dtype=np.float64)
    for i in range(n):
        if bounds[i + 1] > bounds[i]:
            out[i] = float(reduce(vals[bounds[i]:bounds[i + 1]]))
    return out


def total_volume_ml(labels: np.ndarray, affine: np.ndarray) -> float:
    """Total lesion volume in mL of a labelled (or binary) lesion image."""
    return float((np.asarray(labels) > 0).sum() * voxel_volume_mm3(affine) / 1000.0)


# --- robust statistics ---------------------------------------------------------------------------


def robust_mode_sigma(values: np.ndarray) -> tuple[float, float]:
    """Mode of a sample and the Gaussian width of its main peak from the peak's lower half.

    The width is the half width at half maximum below the mode (divided by 1.1774): lesions
    (upper tail) and CSF partial volume (lower tail) barely move it.
    """
    vals = np.asarray(values, dtype=float)
    lo, hi = np.percentile(vals, [0.5, 99.5])
    hist, edges = np.histogram(vals, bins=256, range=(lo, hi))
    hist = ndi.gaussian_filter1d(hist.astype(float), 2)
    centers = (edges[:-1] + edges[1:]) / 2
    peak = int(np.argmax(hist))
    mode = float(centers[peak])
    below = np.nonzero(hist[:peak] < hist[peak] / 2)[0]
    if below.size:
        i = int(below[-1])
        # linear interpolation of the half-maximum crossing
        h0, h1 = hist[i], hist[i + 1]
        x = centers[i] + (hist[peak] / 2 - h0) / max(h1 - h0, 1e-12) * (centers[i + 1] - centers[i])
        sigma = (mode - float(x)) / 1.1774
    else:
        sigma = float(np.std(vals))
    return mode, max(float(sigma), 1e-6)


def flair_zscore(flair: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """FLAIR in robust z-units of normal-appearing parenchyma (mode and lower half-width)."""
    mode, sigma = robust_mode_sigma(flair[brain])
    return ((flair - mode) / sigma).astype(np.float32)


def rules_from_config(cfg: dict) -> LesionRules:
    lcfg = cfg.get("lesions", {})
    return LesionRules(min_volume_mm3=float(lcfg.get("min_volume_mm3", 10.0)),
                       min_voxels=int(lcfg.get("min_voxels", 3)))

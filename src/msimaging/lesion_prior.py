"""Spatial prior of T2/FLAIR lesions: a smoothed lesion frequency map in MNI space.

The map is the fraction of patients with a lesion at each point, over the 27 expert consensus
masks of ``shared/data/ms-lesion-masks`` (MNI152, FSL grid), resampled by world coordinates onto
a 2 mm grid covering the nilearn MNI152 2009a template, made left-right symmetric (the lesion
distribution of MS is, the sample of 27 patients is not) and smoothed with a Gaussian of
``SMOOTH_MM`` (inter-subject anatomy and registration slack). It ships with the package as
``msimaging/data/lesion_frequency_mni_2mm.npz`` (uint16, scaled by 1/65535); rebuild it with::

    python -m msimaging.lesion_prior /path/to/shared/data/ms-lesion-masks

The lesion segmentation carries it onto the session grid with the template transform (as the
tissue priors) and drops candidate lesions whose location no patient's lesions come near
(``lesions.min_lesion_prior``). sub-p07 (the real validation case) is not among the 27 masks.
The file also records, from a leave-one-patient-out pass over the 27 masks, the distribution of
each lesion's peak prior value when its own patient is left out of the map (``loo_peak_quantiles``),
which is what the default ``min_lesion_prior`` is chosen from.
"""

from __future__ import annotations

import argparse
import logging
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import Grid, resample_array

log = logging.getLogger(__name__)

FILENAME = "lesion_frequency_mni_2mm.npz"
#: Gaussian smoothing (mm) of the frequency map.
SMOOTH_MM = 4.0
#: The 2 mm grid: RAS origin of voxel 0 and shape (covers nilearn's 197x233x189 1 mm template).
ORIGIN = (-98.0, -134.0, -72.0)
SHAPE = (99, 117, 95)
SCALE = 65535.0
QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5)


def grid_affine() -> np.ndarray:
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = ORIGIN
    return aff


def _symmetric_smooth(freq: np.ndarray, smooth_mm: float) -> np.ndarray:
    # x index i sits at -98 + 2 i: x = 0 at i = 49, so the flip about x = 0 is the array flip
    sym = 0.5 * (freq + freq[::-1])
    return ndi.gaussian_filter(sym, smooth_mm / 2.0, mode="constant", truncate=3.0).astype(np.float32)


def load_masks(masks_dir: Path) -> tuple[list[str], list[np.ndarray]]:
    """Each patient's lesion mask as a 0..1 fraction on the 2 mm grid (linear, by world coordinates)."""
    import nibabel as nib

    grid = Grid(SHAPE, grid_affine())
    names, fracs = [], []
    for path in sorted(Path(masks_dir).glob("*_label-lesion_mask.nii*")):
        img = nib.load(str(path))
        data = (np.asarray(img.dataobj) > 0).astype(np.float32)
        fracs.append(np.clip(resample_array(data, np.asarray(img.affine, float), grid, None, "linear"), 0, 1))
        names.append(path.name.split("_")[0])
    if not fracs:
        raise FileNotFoundError(f"no *_label-lesion_mask.nii.gz in {masks_dir}")
    return names, fracs


def build(masks_dir: Path, out: Path, smooth_mm: float = SMOOTH_MM) -> dict[str, float]:
    """Write the frequency map (and leave-one-out peak quantiles) to ``out``; return the quantiles."""
    names, fracs = load_masks(masks_dir)
    total = np.sum(fracs, axis=0)
    n = len(fracs)
    freq = _symmetric_smooth(total / n, smooth_mm)
    # leave-one-patient-out: each lesion's peak prior value in the map built without its patient
    peaks = []
    for i, f in enumerate(fracs):
        loo = _symmetric_smooth((total - f) / (n - 1), smooth_mm)
        labels, m = ndi.label(f >= 0.5, structure=np.ones((3, 3, 3)))
        if m:
            peaks.extend(np.asarray(ndi.maximum(loo, labels, np.arange(1, m + 1)), float).tolist())
    q = {f"q{int(100 * p):02d}": float(np.quantile(peaks, p)) for p in QUANTILES}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, frequency=np.round(np.clip(freq, 0, 1) * SCALE).astype(np.uint16),
                        affine=grid_affine(), scale=np.float64(SCALE), smooth_mm=np.float64(smooth_mm),
                        patients=np.array(names), loo_peak_quantiles=np.array(list(q.values())),
                        loo_peak_probs=np.array(QUANTILES), loo_lesions=np.int64(len(peaks)))
    log.info("lesion prior from %d patients (%d lesions): %s", n, len(peaks), q)
    return q


@lru_cache(maxsize=1)
def frequency_map() -> tuple[np.ndarray, np.ndarray]:
    """The bundled lesion frequency (float32, 0..1) and its RAS affine."""
    with resources.files("msimaging").joinpath("data", FILENAME).open("rb") as fh:
        z = np.load(fh)
        freq = z["frequency"].astype(np.float32) / np.float32(z["scale"])
        affine = np.asarray(z["affine"], float)
    return freq, affine


def lesion_prior(grid: Grid, template_to_session: sitk.Transform | None) -> np.ndarray:
    """The lesion frequency map on ``grid`` (``template_to_session`` in ITK resampling convention)."""
    freq, affine = frequency_map()
    return np.clip(resample_array(freq, affine, grid, template_to_session, "linear"), 0, 1).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("masks_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / FILENAME)
    p.add_argument("--smooth-mm", type=float, default=SMOOTH_MM)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    q = build(args.masks_dir, args.out, args.smooth_mm)
    print(args.out, {k: round(v, 5) for k, v in q.items()})


if __name__ == "__main__":
    main()

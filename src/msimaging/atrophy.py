"""Brain volumes (ICV, parenchyma, BPF) and percent brain volume change (PBVC).

First method: partial-volume parenchymal fractions from the reference image's CSF and tissue
intensity levels; PBVC from the registered pair, both visits measured in the baseline space
inside the same mask.
"""

from __future__ import annotations

import logging

import numpy as np

from msimaging.geometry import Grid, resample_array, voxel_volume_mm3

log = logging.getLogger(__name__)


def tissue_levels(image: np.ndarray, brain: np.ndarray, csf_bright: bool) -> tuple[float, float]:
    """(CSF level, parenchyma level) of a standardised image inside the brain mask."""
    vals = image[brain]
    tissue = float(np.median(vals))
    csf = float(np.percentile(vals, 98 if csf_bright else 2))
    return csf, tissue


def parenchymal_fraction(image: np.ndarray, brain: np.ndarray, csf_bright: bool = False) -> np.ndarray:
    """Fraction of parenchyma (GM, WM, lesions) per voxel, 0 outside the brain mask."""
    csf, tissue = tissue_levels(image, brain, csf_bright)
    frac = (image - csf) / (tissue - csf) if tissue != csf else np.zeros_like(image)
    return np.where(brain, np.clip(frac, 0.0, 1.0), 0.0).astype(np.float32)


def brain_volumes(image: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                  csf_bright: bool = False) -> dict[str, float]:
    """ICV (mL, the brain mask), parenchymal volume (mL) and BPF."""
    vox_ml = voxel_volume_mm3(affine) / 1000.0
    icv = float(brain.sum() * vox_ml)
    bpv = float(parenchymal_fraction(image, brain, csf_bright).sum() * vox_ml)
    return {"icv_ml": icv, "brain_volume_ml": bpv, "bpf": bpv / icv if icv > 0 else float("nan")}


def pbvc(bl: np.ndarray, bl_affine: np.ndarray, bl_brain: np.ndarray, fu: np.ndarray,
         fu_affine: np.ndarray, fu_to_bl, csf_bright: bool = False) -> float:
    """Percent brain volume change, both visits measured on the baseline grid in one mask."""
    grid = Grid(bl.shape, bl_affine)
    fu_on_bl = resample_array(fu, fu_affine, grid, fu_to_bl)
    v_bl = parenchymal_fraction(bl, bl_brain, csf_bright).sum()
    v_fu = parenchymal_fraction(fu_on_bl, bl_brain, csf_bright).sum()
    return float(100.0 * (v_fu - v_bl) / v_bl)


def run_measure(ref_path: str, brain_path: str, ref_contrast: str, bl_path: str | None,
                bl_brain_path: str | None, xfm_path: str | None, out_json: str,
                subject: str, session: str, cfg: dict) -> None:
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.qc import QCReport

    csf_bright = ref_contrast == "T2w"
    image, affine = io.read_image(ref_path)
    brain, _ = io.read_mask(brain_path)
    report = QCReport(subject, session)
    report.figures.update(brain_volumes(image, affine, brain, csf_bright))
    if bl_path is not None and xfm_path is not None and bl_brain_path is not None:
        bl, bl_affine = io.read_image(bl_path)
        bl_brain, _ = io.read_mask(bl_brain_path)
        report.figures["pbvc_vs_baseline"] = pbvc(bl, bl_affine, bl_brain, image, affine,
                                                  read_transform(xfm_path), csf_bright)
    else:
        report.figures["pbvc_vs_baseline"] = 0.0
    io.write_json(out_json, report.to_dict())

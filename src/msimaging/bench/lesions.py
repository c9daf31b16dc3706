"""Lesion segmentation accuracy and runtime: phantoms (several grids) and the real sub-p07.

Each case goes through the pipeline's own steps before segmentation (N4, morphological brain
mask, MNI template registration, rigid co-registration of T1w/T2w onto FLAIR, intensity
standardisation; cached under ``--lesions-work``), then :func:`msimaging.segment.segment_lesions`
is timed (median of ``--lesions-repeats`` runs) and scored with :func:`lesion_agreement` against
the truth mask (phantoms: the generator's truth; sub-p07: the expert consensus mask).

sub-p07 is already skull-stripped, N4-corrected and co-registered in MNI space: its preparation
is the brain mask, the template registration and standardisation only.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NAME = "lesions"
HELP = "lesion segmentation Dice / lesion-wise F1 / runtime on phantoms and the real sub-p07"

#: Phantom cases: name -> (voxel size along the voxel axes (mm), orientation, seed).
PHANTOMS: dict[str, tuple[tuple[float, float, float], str, int]] = {
    "ph3mm": ((3.0, 3.0, 3.0), "LPS", 101),
    "ph2mm": ((2.0, 2.0, 2.0), "oblique", 102),
    "ph1x1x3": ((1.0, 1.0, 3.0), "LPS", 103),
    "ph1mm": ((1.0, 1.0, 1.0), "RAS", 104),
}
REAL = "sub-p07"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lesions-cases", default=",".join([*PHANTOMS, REAL]),
                        help=f"[lesions] comma-separated cases among {', '.join([*PHANTOMS, REAL])}")
    parser.add_argument("--lesions-work", type=Path, default=Path("bench-results/lesions-work"),
                        help="[lesions] cache of phantoms and prepared inputs")
    parser.add_argument("--lesions-repeats", type=int, default=3, help="[lesions] timed runs per case")
    parser.add_argument("--lesions-data", type=Path, default=None,
                        help="[lesions] shared data folder (default: ../shared/data as in the tests)")
    parser.add_argument("--lesions-flair-only", action="store_true",
                        help="[lesions] segment from FLAIR alone (no T1w/T2w)")


@dataclass
class Prepared:
    images: dict[str, np.ndarray]
    affine: np.ndarray
    brain: np.ndarray
    template_xfm: Any
    truth: np.ndarray


def _prepare_raw(images: dict[str, tuple[np.ndarray, np.ndarray]], ref: str, n4: bool) -> tuple[
        dict[str, np.ndarray], np.ndarray, np.ndarray, Any]:
    """The pipeline's steps before segmentation, on in-memory images ``{contrast: (data, affine)}``."""
    from msimaging.geometry import Grid, resample_array
    from msimaging.preprocess import brain_mask_morphological, n4_bias_correct, standardise
    from msimaging.register import register_template, rigid_register

    if n4:
        images = {c: (n4_bias_correct(d, a)[0], a) for c, (d, a) in images.items()}
    ref_data, affine = images[ref]
    brain = brain_mask_morphological(ref_data, affine)
    xfm, _ = register_template(ref_data, affine, brain)
    out = {ref: standardise(ref_data, brain)}
    for c, (d, a) in images.items():
        if c == ref:
            continue
        same = d.shape == ref_data.shape and np.allclose(a, affine, atol=1e-3)
        if same and not n4:   # already co-registered (sub-p07)
            out[c] = standardise(d, brain)
            continue
        t, _ = rigid_register((ref_data, affine), (d, a), fixed_mask=brain)
        out[c] = standardise(resample_array(d, a, Grid(ref_data.shape, affine), t, "linear"), brain)
    return out, affine, brain, xfm


def _cache(work: Path, name: str, build) -> Prepared:  # type: ignore[no-untyped-def]
    from msimaging import io
    from msimaging.geometry import read_transform, write_transform

    d = work / name
    done = d / "prepared.ok"
    if not done.is_file():
        images, affine, brain, xfm, truth = build()
        d.mkdir(parents=True, exist_ok=True)
        for c, arr in images.items():
            io.write_image(d / f"{c}.nii.gz", arr, affine)
        io.write_mask(d / "brain.nii.gz", brain, affine)
        io.write_mask(d / "truth.nii.gz", truth, affine)
        write_transform(xfm, d / "template_xfm.txt")
        done.write_text("ok\n")
    brain, affine = io.read_mask(d / "brain.nii.gz")
    images = {p.name.split(".")[0]: io.read_image(p)[0] for p in sorted(d.glob("*.nii.gz"))
              if p.name.split(".")[0] in ("FLAIR", "T2w", "T1w")}
    truth, _ = io.read_mask(d / "truth.nii.gz")
    return Prepared(images, affine, brain, read_transform(d / "template_xfm.txt"), truth)


def _phantom(work: Path, name: str, masks: Path | None) -> Prepared:
    from msimaging import io
    from msimaging.phantom import PhantomOptions, make_study

    zooms, orientation, seed = PHANTOMS[name]

    def build():  # type: ignore[no-untyped-def]
        root = work / name / "study"
        make_study(root, PhantomOptions(subjects=1, sessions=1, resolution_mm=zooms, seed=seed,
                                        orientation=orientation, lesion_masks_dir=masks,
                                        contrasts=("FLAIR", "T2w", "T1w")))
        anat = next(root.glob("sub-*/ses-*/anat"))
        raw = {}
        for c in ("FLAIR", "T2w", "T1w"):
            raw[c] = io.read_image(next(anat.glob(f"*_{c}.nii.gz")))
        images, affine, brain, xfm = _prepare_raw(raw, "FLAIR", n4=True)
        truth_path = next((root / "derivatives" / "truth").glob("sub-*/ses-*/anat/*_label-lesion_mask.nii.gz"))
        truth, t_aff = io.read_mask(truth_path)
        assert np.allclose(t_aff, affine, atol=1e-3)
        return images, affine, brain, xfm, truth

    return _cache(work, name, build)


def _real(work: Path, data: Path) -> Prepared:
    from msimaging import io

    def build():  # type: ignore[no-untyped-def]
        anat = data / "ms-crosssectional" / "sub-p07" / "ses-01" / "anat"
        raw = {c: io.read_image(anat / f"sub-p07_ses-01_{c}.nii.gz") for c in ("FLAIR", "T2w", "T1w")}
        images, affine, brain, xfm = _prepare_raw(raw, "FLAIR", n4=False)
        truth, t_aff = io.read_mask(data / "ms-crosssectional" / "derivatives" / "reference" / "sub-p07" / "ses-01"
                                    / "sub-p07_ses-01_label-lesion_mask.nii.gz")
        assert np.allclose(t_aff, affine, atol=1e-3)
        return images, affine, brain, xfm, truth

    return _cache(work, REAL, build)


def evaluate_case(prep: Prepared, repeats: int, flair_only: bool, options: Any = None) -> dict[str, Any]:
    """Segment ``repeats`` times (median seconds) and score against the truth."""
    from msimaging.evaluate import lesion_agreement
    from msimaging.geometry import Grid
    from msimaging.segment import SegmentOptions, segment_lesions, tissue_priors

    images = {"FLAIR": prep.images["FLAIR"]} if flair_only else prep.images
    secs, cpu = [], []
    seg = None
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        priors = tissue_priors(Grid(prep.brain.shape, prep.affine), prep.template_xfm)
        seg = segment_lesions(images, prep.affine, prep.brain, priors, options or SegmentOptions())
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert seg is not None
    a = lesion_agreement(seg.labels > 0, prep.truth, prep.affine)
    out: dict[str, Any] = {k: v for k, v in a.to_dict().items()}
    out.update({"seconds_median": statistics.median(secs), "seconds_runs": secs,
                "cpu_seconds_median": statistics.median(cpu),
                "contrasts": "+".join(sorted(images)), "shape": list(prep.brain.shape),
                "voxel_mm": [float(v) for v in np.sqrt((prep.affine[:3, :3] ** 2).sum(0))]})
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = args.lesions_data or Path(__file__).resolve().parents[3].parent / "shared" / "data"
    masks = data / "ms-lesion-masks"
    work = args.lesions_work
    figures: dict[str, Any] = {}
    cols = ("dice", "lesion_precision", "lesion_recall", "lesion_f1", "pred_count", "truth_count",
            "pred_volume_ml", "truth_volume_ml", "seconds_median", "cpu_seconds_median")
    print(f"{'case':<10}{'contrasts':<16}" + "".join(f"{c[:12]:>13}" for c in cols))
    for name in [c.strip() for c in args.lesions_cases.split(",") if c.strip()]:
        if name == REAL:
            if not (data / "ms-crosssectional").is_dir():
                print(f"{name}: {data} has no ms-crosssectional/; skipped")
                continue
            prep = _real(work, data)
        elif name in PHANTOMS:
            prep = _phantom(work, name, masks if masks.is_dir() else None)
        else:
            raise SystemExit(f"unknown lesions case {name!r}")
        r = evaluate_case(prep, args.lesions_repeats, args.lesions_flair_only)
        figures[name] = r
        print(f"{name:<10}{r['contrasts']:<16}" + "".join(
            f"{r[c]:>13.3f}" if isinstance(r[c], float) else f"{r[c]:>13}" for c in cols), flush=True)
    phantoms = [r for n, r in figures.items() if n in PHANTOMS]
    if phantoms:
        figures["phantom_mean"] = {k: float(np.mean([r[k] for r in phantoms])) for k in ("dice", "lesion_f1")}
        print(f"phantom mean: Dice {figures['phantom_mean']['dice']:.3f}, lesion F1 "
              f"{figures['phantom_mean']['lesion_f1']:.3f}")
    return figures

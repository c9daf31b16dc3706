"""Preprocessing and registration accuracy and timings: phantoms with truth, and real sub-p12.

Phantom (``msimaging.phantom``, skull and neck, oblique LPS headers, 10 degrees / 15 mm poses,
anisotropic voxels): brain-mask Dice against the truth envelope, median target registration
error (TRE, mm, over brain voxels) of every contrast -> reference and follow-up -> baseline
transform against the truth transforms, and the seconds each step takes. Real patient
(``../shared/data/ms-longitudinal`` sub-p12, raw 0.72x0.72x3 mm FLAIR): the follow-up ->
baseline transform ``T`` against the expert reference transforms ``A1``, ``A2`` (common grid ->
each visit's FLAIR): TRE(p) = |T(A1(p)) - A2(p)| over the reference brain mask. Every step runs
exactly as the workflow runs it (:func:`preprocess.n4_bias_correct`,
:func:`register.brain_mask_template`, :func:`register.coregister_contrast`,
:func:`register.register_to_baseline`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "registration"
HELP = "brain-mask Dice, registration TRE (phantom and real sub-p12) and registration timings"

DEFAULT_REAL = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ms-longitudinal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reg-resolution", default="0.7,0.7,3",
                        help="[registration] phantom voxel size in mm, 'x,y,z' (default 0.7,0.7,3)")
    parser.add_argument("--reg-seeds", type=int, default=1, help="[registration] phantom subjects (seeds)")
    parser.add_argument("--reg-real", type=Path, default=DEFAULT_REAL,
                        help="[registration] the ms-longitudinal dataset (sub-p12); skipped when absent")
    parser.add_argument("--reg-timing-repeats", type=int, default=3,
                        help="[registration] repeats of the 1 mm registration timing (median reported)")
    parser.add_argument("--reg-skip", action="append", default=[], choices=["phantom", "real", "timing"],
                        help="[registration] parts to skip (repeatable)")


def _resolution(text: str) -> tuple[float, float, float] | float:
    vals = [float(v) for v in str(text).split(",")]
    return vals[0] if len(vals) == 1 else (vals[0], vals[1], vals[2])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _tre(estimate: Any, truth: Any, points: np.ndarray) -> dict[str, float]:
    from msimaging.geometry import target_registration_error

    err = target_registration_error(estimate, truth, points)
    return {"median_mm": float(np.median(err)), "p95_mm": float(np.percentile(err, 95)),
            "max_mm": float(err.max())}


def prepare(path: Path) -> dict[str, Any]:
    """Raw reference image -> N4-corrected image and brain mask, with step timings."""
    from msimaging import io
    from msimaging.preprocess import n4_bias_correct
    from msimaging.register import brain_mask_template

    data, affine = io.read_image(path)
    t0 = time.perf_counter()
    corrected, _ = n4_bias_correct(data, affine)
    t1 = time.perf_counter()
    mask, xfm, figures = brain_mask_template(corrected, affine)
    t2 = time.perf_counter()
    return {"data": corrected, "affine": affine, "mask": mask, "template_xfm": xfm, "figures": figures,
            "n4_s": t1 - t0, "brain_mask_s": t2 - t1}


def phantom_figures(root: Path, resolution: tuple[float, float, float] | float, seeds: int,
                    contrasts: tuple[str, ...] = ("FLAIR", "T2w", "T1w")) -> dict[str, Any]:
    """Make phantom studies under ``root`` and measure mask Dice, TRE and timings against truth.

    Skull and neck, oblique LPS headers, head poses up to 10 degrees and 15 mm per acquisition
    (so visits differ by up to twice that), bias field, uint16.
    """
    from msimaging import io
    from msimaging.geometry import brain_points_ras, read_transform
    from msimaging.phantom import PhantomOptions, make_study
    from msimaging.register import coregister_contrast, register_to_baseline

    from msimaging.preprocess import standardise

    dice, tre_contrast, tre_baseline = [], [], []
    wm_cv_raw, wm_cv_n4, wm_level = [], [], []
    qc_status: dict[str, int] = {"pass": 0, "warn": 0, "fail": 0}

    def count(values: dict[str, Any]) -> None:
        for v in values.values():
            qc_status[str(v).split("(")[-1].rstrip(")")] += 1
    seconds: dict[str, list[float]] = {"n4": [], "brain_mask": [], "coregister": [], "to_baseline": []}
    for seed in range(seeds):
        options = PhantomOptions(resolution_mm=resolution, orientation="oblique", skull=True, seed=seed,
                                 max_rotation_deg=10.0, max_translation_mm=15.0, contrasts=contrasts,
                                 n_baseline_lesions=4, new_per_followup=1, enlarging_per_followup=0,
                                 shrinking_per_followup=0, enhancing_per_session=0)
        study = make_study(root / f"seed{seed}", options)
        for sub in study.subjects:
            prepared = {}
            for ses in sub.sessions:
                ref = prepare(ses.images[ses.reference])
                truth_mask, _ = io.read_mask(ses.truth["brain_mask"])
                dice.append(_dice(ref["mask"], truth_mask))
                # N4 and standardisation: white-matter intensity spread before and after
                wm = io.read_image(ses.truth["WM_probseg"])[0] > 0.9
                raw = io.read_image(ses.images[ses.reference])[0]
                wm_cv_raw.append(float(raw[wm].std() / raw[wm].mean()))
                wm_cv_n4.append(float(ref["data"][wm].std() / ref["data"][wm].mean()))
                wm_level.append(float(np.median(standardise(ref["data"], ref["mask"])[wm])))
                seconds["n4"].append(ref["n4_s"])
                seconds["brain_mask"].append(ref["brain_mask_s"])
                points = brain_points_ras(truth_mask, ref["affine"])
                for contrast, path in ses.images.items():
                    if contrast == ses.reference or f"xfm_{contrast}" not in ses.truth:
                        continue
                    from msimaging.preprocess import n4_bias_correct

                    moving, maffine = io.read_image(path)
                    moving, _ = n4_bias_correct(moving, maffine)
                    res = coregister_contrast((ref["data"], ref["affine"]), ref["mask"], (moving, maffine))
                    seconds["coregister"].append(res.seconds)
                    count(_qc_values(ref, (moving, maffine), res.transform, same_contrast=False))
                    tre_contrast.append(_tre(res.transform, read_transform(ses.truth[f"xfm_{contrast}"]),
                                             points)["median_mm"])
                prepared[ses.session] = (ref, points)
            baseline = sub.sessions[0]
            bl, bl_points = prepared[baseline.session]
            for ses in sub.sessions[1:]:
                fu, _ = prepared[ses.session]
                res = register_to_baseline((bl["data"], bl["affine"]), bl["mask"], (fu["data"], fu["affine"]),
                                           fu["mask"])
                seconds["to_baseline"].append(res.seconds)
                count(_qc_values(bl, (fu["data"], fu["affine"]), res.transform, same_contrast=True))
                tre_baseline.append(_tre(res.transform, read_transform(ses.truth["xfm_baseline"]),
                                         bl_points)["median_mm"])
    return {
        "resolution_mm": resolution,
        "brain_mask_dice_min": min(dice), "brain_mask_dice_median": statistics.median(dice),
        "wm_cv_raw_median": statistics.median(wm_cv_raw), "wm_cv_n4_median": statistics.median(wm_cv_n4),
        "wm_standardised_median": statistics.median(wm_level),
        "coregister_tre_median_mm": statistics.median(tre_contrast),
        "coregister_tre_worst_median_mm": max(tre_contrast),
        "to_baseline_tre_median_mm": statistics.median(tre_baseline),
        "to_baseline_tre_worst_median_mm": max(tre_baseline),
        "seconds_median": {k: statistics.median(v) for k, v in seconds.items() if v},
        "registration_qc_items": qc_status,
        "n_sessions": len(dice), "n_coregistrations": len(tre_contrast), "n_to_baseline": len(tre_baseline),
    }


def real_figures(root: Path) -> dict[str, Any]:
    """sub-p12: follow-up -> baseline TRE against the reference transforms, mask agreement, timings."""
    from msimaging import io
    from msimaging.geometry import Grid, brain_points_ras, read_transform, resample_mask, transform_points_ras
    from msimaging.preprocess import n4_bias_correct
    from msimaging.register import coregister_contrast, register_to_baseline

    ref_dir = root / "derivatives" / "reference" / "sub-p12"
    visits = {}
    for ses in ("01", "02"):
        visits[ses] = prepare(root / "sub-p12" / f"ses-{ses}" / "anat" / f"sub-p12_ses-{ses}_FLAIR.nii.gz")
    common_mask, common_affine = io.read_mask(ref_dir / "sub-p12_space-common_desc-brain_mask.nii.gz")
    a = {ses: read_transform(ref_dir / f"sub-p12_ses-{ses}_from-FLAIR_to-common_mode-image_xfm.txt")
         for ses in visits}
    dice = {}
    for ses, v in visits.items():
        # the reference mask on the visit grid: visit points -> common points is A^-1
        on_visit = resample_mask(common_mask, common_affine, Grid(v["data"].shape, v["affine"]), a[ses].GetInverse())
        dice[ses] = _dice(v["mask"], on_visit)
    bl, fu = visits["01"], visits["02"]
    res = register_to_baseline((bl["data"], bl["affine"]), bl["mask"], (fu["data"], fu["affine"]), fu["mask"])
    qc = {"to_baseline": _qc_values(bl, (fu["data"], fu["affine"]), res.transform, same_contrast=True)}
    # cross-contrast co-registration of the baseline visit, with its QC figures (no truth here)
    coreg_s = {}
    for contrast in ("T1w", "T2w"):
        path = root / "sub-p12" / "ses-01" / "anat" / f"sub-p12_ses-01_{contrast}.nii.gz"
        if not path.is_file():
            continue
        moving, maffine = io.read_image(path)
        moving, _ = n4_bias_correct(moving, maffine)
        r = coregister_contrast((bl["data"], bl["affine"]), bl["mask"], (moving, maffine))
        coreg_s[contrast] = r.seconds
        qc[f"{contrast}_to-FLAIR"] = _qc_values(bl, (moving, maffine), r.transform, same_contrast=False)
    points = brain_points_ras(common_mask, common_affine)
    estimate = transform_points_ras(res.transform, transform_points_ras(a["01"], points))
    err = np.linalg.norm(estimate - transform_points_ras(a["02"], points), axis=1)
    return {
        "to_baseline_tre_median_mm": float(np.median(err)), "to_baseline_tre_p95_mm": float(np.percentile(err, 95)),
        "to_baseline_tre_max_mm": float(err.max()), "to_baseline_seconds": res.seconds,
        "brain_mask_dice_vs_reference": dice, "coregister_seconds": coreg_s,
        **{f"qc_{name}": values for name, values in qc.items()},
        "template_nmi": {ses: v["figures"]["template_nmi"] for ses, v in visits.items()},
        "n4_seconds": {ses: v["n4_s"] for ses, v in visits.items()},
        "brain_mask_seconds": {ses: v["brain_mask_s"] for ses, v in visits.items()},
    }


def _qc_values(fixed: dict[str, Any], moving: tuple[np.ndarray, np.ndarray], transform: Any,
               same_contrast: bool) -> dict[str, Any]:
    """The registration QC items (value and status) of one registration, on the fixed grid."""
    from msimaging.geometry import Grid, resample_array
    from msimaging.register import RegistrationQC, registration_checks

    warped = resample_array(moving[0], moving[1], Grid(fixed["data"].shape, fixed["affine"]), transform)
    checks = registration_checks(fixed["data"], warped, fixed["mask"], fixed["affine"], transform, same_contrast,
                                 RegistrationQC())
    return {c["metric"]: f"{c['value']} ({c['status']})" for c in checks}


def timing_figures(root: Path, repeats: int) -> dict[str, Any]:
    """Seconds to register two 1 mm isotropic visits (truth brain masks; median of ``repeats``)."""
    from msimaging import io
    from msimaging.phantom import PhantomOptions, make_study
    from msimaging.register import register_to_baseline

    study = make_study(root / "timing", PhantomOptions(resolution_mm=1.0, orientation="oblique", contrasts=("FLAIR",),
                                                       n_baseline_lesions=2, new_per_followup=0,
                                                       enlarging_per_followup=0, shrinking_per_followup=0,
                                                       enhancing_per_session=0))
    bl_s, fu_s = study.subjects[0].sessions[:2]
    bl = io.read_image(bl_s.images["FLAIR"])
    fu = io.read_image(fu_s.images["FLAIR"])
    bl_mask, _ = io.read_mask(bl_s.truth["brain_mask"])
    fu_mask, _ = io.read_mask(fu_s.truth["brain_mask"])
    secs = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        register_to_baseline(bl, bl_mask, fu, fu_mask)
        secs.append(time.perf_counter() - t0)
    return {"shape": list(bl[0].shape), "register_1mm_seconds_median": statistics.median(secs),
            "register_1mm_seconds": secs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from msimaging.runtime import set_threads

    set_threads(getattr(args, "cores", 2))
    skip = set(args.reg_skip)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="msimaging-bench-reg-") as tmp:
        if "phantom" not in skip:
            out["phantom"] = phantom_figures(Path(tmp), _resolution(args.reg_resolution), args.reg_seeds)
            _print("phantom", out["phantom"])
        if "timing" not in skip:
            out["timing"] = timing_figures(Path(tmp), args.reg_timing_repeats)
            _print("timing", out["timing"])
    if "real" not in skip:
        if (args.reg_real / "sub-p12").is_dir():
            out["real_sub-p12"] = real_figures(args.reg_real)
            _print("real sub-p12", out["real_sub-p12"])
        else:
            print(f"real: {args.reg_real} not found; skipped")
    return out


def _print(title: str, figures: dict[str, Any]) -> None:
    print(f"-- {title}")
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        print(f"  {key:<34}{value}")

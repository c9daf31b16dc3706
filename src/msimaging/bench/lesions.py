"""Lesion segmentation accuracy on real backgrounds: sub-p07 and real lesions implanted into real scans.

``python -m msimaging.bench lesions`` scores the pipeline's T2/FLAIR lesion segmentation
(:func:`msimaging.segment.segment_lesions` with the rule's own inputs: the pipeline's preprocessed
contrasts, brain mask and template transform, hence its tissue and lesion priors; the default
config) on

* **sub-p07** (real, 1 mm, expert consensus mask), and
* **implanted cases** (:mod:`msimaging.implant`): each of the 27 real lesion masks of
  ``ms-lesion-masks`` carried onto a real session by its template transform and implanted with
  the intensity profile of real lesions; backgrounds: sub-p07 (1 mm; its own expert lesions stay
  in the truth) and sub-p12's raw thick-slice sessions (0.72x0.72x3 mm; no expert mask: what the
  segmentation finds on the un-implanted scan is that scan's own lesions and is left out of the
  scoring, for the method and the naive baseline alike);

and, beside every figure, the naive baseline (FLAIR robust z > 3 in the brain eroded by 3 mm:
:func:`msimaging.evaluate.naive_flair_z`). Cases are grouped by lesion load (< 2, 2-10, 10-25,
> 25 mL) and truth lesions by size. The bench fails (exit status 1, after printing everything)
when on any case the method's Dice or lesion F1 is below the naive baseline's.

The backgrounds are prepared by the pipeline itself (:mod:`msimaging.bench.realdata`, cached by
a digest of the code that makes them); the implants are made afresh on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msimaging.bench.realdata import DEFAULT_SHARED, Session, load_session, prepared_run
from msimaging.geometry import voxel_volume_mm3

log = logging.getLogger(__name__)

NAME = "lesions"
HELP = "lesion Dice / lesion-wise F1 on sub-p07 and on real lesions implanted into real scans, vs naive"

#: Backgrounds: name -> (dataset folder, subject, session).
BACKGROUNDS: dict[str, tuple[str, str, str]] = {
    "sub-p07": ("ms-crosssectional", "p07", "01"),
    "sub-p12-01": ("ms-longitudinal", "p12", "01"),
    "sub-p12-02": ("ms-longitudinal", "p12", "02"),
}
#: Phantom cases: name -> (voxel size along the voxel axes (mm), orientation, seed).
PHANTOMS: dict[str, tuple[tuple[float, float, float], str, int]] = {
    "ph3mm": ((3.0, 3.0, 3.0), "LPS", 101),
    "ph2mm": ((2.0, 2.0, 2.0), "oblique", 102),
    "ph1x1x3": ((1.0, 1.0, 3.0), "LPS", 103),
    "ph1mm": ((1.0, 1.0, 1.0), "RAS", 104),
}
#: Lesion-load bands of the targets (mL of truth).
LOAD_BANDS: tuple[tuple[float, float, str], ...] = (
    (0.0, 2.0, "<2 mL"), (2.0, 10.0, "2-10 mL"), (10.0, 25.0, "10-25 mL"), (25.0, float("inf"), ">25 mL"))
#: Truth lesion sizes (mm^3) for recall by size.
SIZE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0.0, 30.0, "<30 mm3"), (30.0, 100.0, "30-100 mm3"), (100.0, 1000.0, "100-1000 mm3"),
    (1000.0, float("inf"), ">1000 mm3"))
#: The lesion masks come from this database; its session MASK_REFERENCE is in the masks' space.
MASK_DATABASE = "ms-crosssectional"
MASK_REFERENCE = "sub-p07"
METRICS = ("dice", "lesion_precision", "lesion_recall", "lesion_f1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lesions-backgrounds", default="sub-p07,sub-p12-01",
                        help=f"[lesions] implant backgrounds among {', '.join(BACKGROUNDS)} ('' for none)")
    parser.add_argument("--lesions-masks", default="all",
                        help="[lesions] lesion masks to implant: 'all' or comma-separated patient labels (p01,p02)")
    parser.add_argument("--lesions-seed", type=int, default=0, help="[lesions] implant seed")
    parser.add_argument("--lesions-work", type=Path, default=Path("bench-work/lesions"),
                        help="[lesions] cache of the pipeline-prepared backgrounds")
    parser.add_argument("--lesions-data", type=Path, default=DEFAULT_SHARED,
                        help="[lesions] the shared data folder (ms-crosssectional, ms-longitudinal, ms-lesion-masks)")
    parser.add_argument("--lesions-skip-real", action="store_true", help="[lesions] no sub-p07 expert-mask case")
    parser.add_argument("--lesions-phantoms", default=",".join(PHANTOMS),
                        help=f"[lesions] phantom cases among {', '.join(PHANTOMS)} ('' for none)")


# --- the segmentation path, the baseline and the scoring ---------------------------------------------


def pipeline_config() -> dict[str, Any]:
    from msimaging.config import default_config

    return default_config()


def segment(images: dict[str, np.ndarray], sess: Session, cfg: dict[str, Any]) -> np.ndarray:
    """The segment_lesions rule's computation on in-memory inputs: lesion labels."""
    from msimaging.geometry import Grid
    from msimaging.lesions import rules_from_config
    from msimaging.segment import SegmentOptions, segment_lesions, tissue_priors

    priors = tissue_priors(Grid(tuple(sess.brain.shape), sess.affine), sess.template_xfm)  # type: ignore[arg-type]
    used = {c: images[c] for c in ("FLAIR", "T2w", "T1w") if c in images}
    seg = segment_lesions(used, sess.affine, sess.brain, priors, SegmentOptions.from_config(cfg),
                          rules_from_config(cfg))
    return seg.labels


def score(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray, ignore: np.ndarray | None) -> dict[str, Any]:
    """Agreement of ``pred`` with ``truth``; voxels of ``ignore`` not in the truth are no prediction."""
    from msimaging.evaluate import lesion_agreement, lesion_recall_by_size

    p = np.asarray(pred) > 0
    if ignore is not None:
        p = p & ~(np.asarray(ignore) & ~np.asarray(truth))
    out: dict[str, Any] = lesion_agreement(p, truth, affine).to_dict()
    out["recall_by_size"] = lesion_recall_by_size(p, truth, affine, SIZE_BANDS)
    return out


def case_seed(*parts: object) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


@dataclass
class Background:
    session: Session
    thick: bool
    wm: np.ndarray
    admissible: np.ndarray
    nawm: dict[str, np.ndarray]
    own_truth: np.ndarray | None          # expert mask (sub-p07)
    own_pred: np.ndarray | None           # method's detections on the un-implanted scan (no expert mask)
    own_naive: np.ndarray | None
    to_masks: Any                         # session -> lesion-mask space (None: the same space)


def background(name: str, data: Path, work: Path, cores: int, cfg: dict[str, Any]) -> Background:
    """A pipeline-prepared real session with what implanting and scoring need."""
    from msimaging import io
    from msimaging.evaluate import naive_flair_z
    from msimaging.geometry import Grid, voxel_sizes
    from msimaging.implant import database_transform, local_nawm
    from msimaging.segment import SegmentOptions, tissue_evidence, tissue_priors

    folder, sub, ses = BACKGROUNDS[name]
    out = prepared_run(data / folder, work, cores)
    sess = load_session(out, sub, ses)
    grid = Grid(tuple(sess.brain.shape), sess.affine)  # type: ignore[arg-type]
    priors = tissue_priors(grid, sess.template_xfm)
    used = {c: sess.images[c] for c in ("FLAIR", "T2w", "T1w") if c in sess.images}
    ev = tissue_evidence(used, sess.affine, sess.brain, priors, SegmentOptions.from_config(cfg))
    wm = (ev.post[..., 2] * sess.brain).astype(np.float32)
    admissible = ((1.0 - ev.post[..., 0]) * sess.brain).astype(np.float32)
    own_truth = own_pred = own_naive = None
    ref = data / folder / "derivatives" / "reference" / f"sub-{sub}" / f"ses-{ses}" / \
        f"sub-{sub}_ses-{ses}_label-lesion_mask.nii.gz"
    if ref.is_file():
        t, t_aff = io.read_mask(ref)
        if t.shape != sess.brain.shape or not np.allclose(t_aff, sess.affine, atol=1e-3):
            raise ValueError(f"{ref} is not on the pipeline's session grid")
        own_truth = t
    else:
        own_pred = segment(sess.images, sess, cfg) > 0
        own_naive = naive_flair_z(sess.images["FLAIR"], sess.brain, sess.affine)
    wm_ref = np.where(own_truth if own_truth is not None else own_pred, 0.0, wm).astype(np.float32)
    nawm = {c: local_nawm(sess.images[c], wm_ref, sess.affine) for c in used}
    to_masks = None
    if folder != MASK_DATABASE:
        r_folder, r_sub, r_ses = BACKGROUNDS[MASK_REFERENCE]
        reference = load_session(prepared_run(data / r_folder, work, cores), r_sub, r_ses)
        to_masks = database_transform(sess.template_xfm, reference.template_xfm)
    return Background(sess, bool(voxel_sizes(sess.affine).max() > 1.5), wm_ref, admissible, nawm,
                      own_truth, own_pred, own_naive, to_masks)


def phantom_case(name: str, work: Path, masks: Path | None, cores: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """A phantom session through the pipeline's preparation, segmented and scored against its truth."""
    from msimaging import io
    from msimaging.evaluate import naive_flair_z
    from msimaging.phantom import PhantomOptions, make_study

    zooms, orientation, seed = PHANTOMS[name]
    root = work / "phantoms" / name
    if not (root / "dataset_description.json").is_file():
        make_study(root, PhantomOptions(subjects=1, sessions=1, resolution_mm=zooms, seed=seed,
                                        orientation=orientation, lesion_masks_dir=masks,
                                        contrasts=("FLAIR", "T2w", "T1w")))
    out = prepared_run(root, work, cores)
    anat = next(root.glob("sub-*/ses-*/anat"))
    sub, ses = anat.parts[-3][4:], anat.parts[-2][4:]
    sess = load_session(out, sub, ses)
    truth, t_aff = io.read_mask(next((root / "derivatives" / "truth").glob("sub-*/ses-*/anat/*_label-lesion_mask.nii.gz")))
    if truth.shape != sess.brain.shape or not np.allclose(t_aff, sess.affine, atol=1e-3):
        raise ValueError(f"{name}: the truth is not on the pipeline's session grid")
    t0 = time.perf_counter()
    labels = segment(sess.images, sess, cfg)
    secs = time.perf_counter() - t0
    return {"background": name, "mask": "(phantom)", "kind": "phantom",
            "truth_ml": float(truth.sum()) * voxel_volume_mm3(sess.affine) / 1000.0,
            "method": score(labels > 0, truth, sess.affine, None),
            "naive": score(naive_flair_z(sess.images["FLAIR"], sess.brain, sess.affine), truth, sess.affine, None),
            "segment_s": secs}


def implanted_case(bg: Background, mask_path: Path, seed: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """Implant one real mask into one background, segment with the pipeline's path and score."""
    from msimaging.evaluate import naive_flair_z
    from msimaging.implant import bundled_profile, implant, load_mni_mask

    sess = bg.session
    mask, m_aff = load_mni_mask(mask_path)
    t0 = time.perf_counter()
    imp = implant(sess.images, sess.affine, sess.brain, bg.wm, bg.admissible, mask, m_aff, bg.to_masks,
                  bundled_profile(), case_seed(sess.name, mask_path.name, seed), own_truth=bg.own_truth, nawm=bg.nawm)
    t1 = time.perf_counter()
    labels = segment(imp.images, sess, cfg)
    t2 = time.perf_counter()
    naive = naive_flair_z(imp.images["FLAIR"], sess.brain, sess.affine)
    method = score(labels > 0, imp.truth, sess.affine, bg.own_pred)
    base = score(naive, imp.truth, sess.affine, bg.own_naive)
    vox_ml = voxel_volume_mm3(sess.affine) / 1000.0
    return {"background": sess.name, "mask": mask_path.name.split("_")[0],
            "truth_ml": float(imp.truth.sum() * vox_ml), "implanted_ml": float(imp.implanted.sum() * vox_ml),
            "method": method, "naive": base, "implant_s": t1 - t0, "segment_s": t2 - t1}


def band_of(ml: float) -> str:
    return next(name for lo, hi, name in LOAD_BANDS if lo <= ml < hi)


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean figures per background kind (1 mm / thick) and load band, method and naive."""
    out: dict[str, Any] = {}
    for kind in sorted({c["kind"] for c in cases}):
        for _, _, band in LOAD_BANDS:
            sel = [c for c in cases if c["kind"] == kind and band_of(c["truth_ml"]) == band]
            if not sel:
                continue
            out[f"{kind} {band}"] = {
                "cases": len(sel),
                **{f"{who}_{m}": float(np.nanmean([c[who][m] for c in sel])) for who in ("method", "naive")
                   for m in METRICS}}
    return out


def _row(name: str, r: dict[str, Any]) -> str:
    m, n = r["method"], r["naive"]
    return (f"{name:<26}{r['truth_ml']:>8.2f}" + "".join(f"{m[k]:>8.3f}" for k in METRICS)
            + f"{m['pred_lesion_volume_ml']:>8.2f}" + "".join(f"{n[k]:>8.3f}" for k in ("dice", "lesion_f1")))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from msimaging.evaluate import naive_flair_z
    from msimaging.implant import mask_files

    from msimaging.lesion_model import bundled_training

    data: Path = args.lesions_data
    cfg = pipeline_config()
    figures: dict[str, Any] = {"cases": []}
    trained = bundled_training() if cfg["lesions"].get("method", "model") == "model" else {}
    figures["training"] = trained
    print(f"{'case':<26}{'truthmL':>8}{'Dice':>8}{'P':>8}{'R':>8}{'F1':>8}{'predmL':>8}{'nDice':>8}{'nF1':>8}")
    cases: list[dict[str, Any]] = []
    if not args.lesions_skip_real and (data / "ms-crosssectional").is_dir():
        bg = background("sub-p07", data, args.lesions_work, args.cores, cfg)
        t0 = time.perf_counter()
        labels = segment(bg.session.images, bg.session, cfg)
        secs = time.perf_counter() - t0
        assert bg.own_truth is not None
        r = {"background": "sub-p07", "mask": "(none: expert mask)", "kind": "real",
             "truth_ml": float(bg.own_truth.sum()) * voxel_volume_mm3(bg.session.affine) / 1000.0,
             "method": score(labels > 0, bg.own_truth, bg.session.affine, None),
             "naive": score(naive_flair_z(bg.session.images["FLAIR"], bg.session.brain, bg.session.affine),
                            bg.own_truth, bg.session.affine, None), "segment_s": secs}
        figures["sub-p07"] = r
        cases.append(r)
        print(_row("sub-p07 (expert mask)", r), flush=True)
    masks_dir = data / "ms-lesion-masks"
    for name in [p.strip() for p in args.lesions_phantoms.split(",") if p.strip()]:
        if name not in PHANTOMS:
            raise SystemExit(f"unknown lesions phantom {name!r}; choose from {', '.join(PHANTOMS)}")
        r = phantom_case(name, args.lesions_work, masks_dir if masks_dir.is_dir() else None, args.cores, cfg)
        figures[name] = r
        cases.append(r)
        print(_row(name, r), flush=True)
    files = mask_files(masks_dir) if masks_dir.is_dir() else []
    if args.lesions_masks != "all":
        want = {m.strip() for m in args.lesions_masks.split(",") if m.strip()}
        files = [f for f in files if f.name.split("_")[0] in want]
    for name in [b.strip() for b in args.lesions_backgrounds.split(",") if b.strip()]:
        if name not in BACKGROUNDS:
            raise SystemExit(f"unknown lesions background {name!r}; choose from {', '.join(BACKGROUNDS)}")
        if not (data / BACKGROUNDS[name][0]).is_dir() or not files:
            print(f"{name}: no data under {data}; skipped")
            continue
        bg = background(name, data, args.lesions_work, args.cores, cfg)
        for f in files:
            r = implanted_case(bg, f, args.lesions_seed, cfg)
            # held out: the mask's lesions were not among the voxel model's training cases (the
            # scan's normal tissue may have been: r["scan_trained_on"])
            r["held_out"] = r["mask"] not in trained.get("masks", [])
            r["scan_trained_on"] = name in trained.get("backgrounds", [])
            r["kind"] = ("thick" if bg.thick else "1mm") + ("" if r["held_out"] else " (mask trained on)")
            cases.append(r)
            figures["cases"].append(r)
            print(_row(f"{name}+{r['mask']}", r), flush=True)
    figures["bands"] = summarise([c for c in cases if c["kind"] not in ("real", "phantom")])
    if figures["bands"]:
        print(f"\n{'band':<44}{'cases':>6}{'Dice':>8}{'P':>8}{'R':>8}{'F1':>8}{'nDice':>8}{'nF1':>8}")
        for band, b in figures["bands"].items():
            print(f"{band:<44}{b['cases']:>6}" + "".join(f"{b['method_' + m]:>8.3f}" for m in METRICS)
                  + f"{b['naive_dice']:>8.3f}{b['naive_lesion_f1']:>8.3f}")
        by_size: dict[str, list[float]] = {}
        for c in cases:
            for k, v in c["method"]["recall_by_size"].items():
                by_size.setdefault(f"{c['kind']} {k}", []).extend([v["detected"], v["truth"]])
        figures["recall_by_size"] = {}
        for k, v in sorted(by_size.items()):
            det, tot = sum(v[0::2]), sum(v[1::2])
            figures["recall_by_size"][k] = {"detected": det, "truth": tot, "recall": det / tot if tot else float("nan")}
        print("truth lesion recall by size: " + "; ".join(
            f"{k} {v['detected']}/{v['truth']} ({v['recall']:.2f})" for k, v in figures["recall_by_size"].items()))
        figures["seconds_segment_median"] = statistics.median(c["segment_s"] for c in cases if "segment_s" in c)
        print(f"segmentation: median {figures['seconds_segment_median']:.1f} s per case")
    worse = [f"{c['background']}+{c['mask']}: {m} {c['method'][m]:.3f} < naive {c['naive'][m]:.3f}"
             for c in cases for m in ("dice", "lesion_f1")
             if np.isfinite(c["naive"][m]) and c["method"][m] < c["naive"][m]]
    figures["below_naive"] = worse
    if worse:
        print("FAIL: below the naive FLAIR z > 3 baseline on " + f"{len(worse)} figure(s):\n  " + "\n  ".join(worse))
        figures["_exit_status"] = 1
    return figures

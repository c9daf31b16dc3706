"""Gd+ lesions on a real post-contrast scan, on the pipeline's own path.

sub-p07 (``ms-crosssectional``: T1w, ce-T1w, T2w, FLAIR, expert T2 lesion mask) goes through the
pipeline's preparation (:func:`msimaging.bench.realdata.prepared_run`: bias correction, brain mask,
co-registration, template registration); the bench then runs the segment_lesions and
detect_enhancing rules' computations (:func:`msimaging.bench.lesions.segment`,
:func:`msimaging.enhancing.detect_session`) with the default config, on

* **the real scan**: sub-p07 has no Gd+ truth, but an enhancing MS lesion is a T2 lesion, so every
  Gd+ lesion more than 2 voxels from every lesion of the expert T2 mask is a false one (vessel,
  choroid plexus, grey matter): ``gd_real_outside_t2``;
* **implanted cases** (:mod:`msimaging.implant_enhancing`): real lesion shapes of 10-1000 mm^3
  implanted into the same real scan as nodular or ring enhancing lesions with real-lesion FLAIR /
  T2w / T1w contrast, so that they must be found among the scan's real vessels and choroid plexus.
  Recall by size (a lesion is found when a Gd+ lesion overlaps it) and false Gd+ lesions per scan
  (overlapping no implanted lesion and outside the expert T2 mask dilated by 2 voxels: inside it
  they may be sub-p07's own enhancing lesions, counted apart as ``in_expert_t2``).

Beside every figure, the naive detector: every enhancement candidate (``z`` seeds grown through
``low_z`` in parenchyma, at least ``min_volume_mm3``), before any evidence rule.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from msimaging.lesions import CONNECTIVITY

log = logging.getLogger(__name__)

#: Implanted cases (12 lesions each, 3 per size bin) measured by default (the rules were checked on seeds 10-19 too).
SEEDS = tuple(range(10))


def _found(pred: np.ndarray, truth: np.ndarray, lesions: list[dict[str, Any]]) -> list[bool]:
    return [bool((pred[truth == les["label"]] > 0).any()) for les in lesions]


def _false(pred_labels: np.ndarray, truth: np.ndarray, expert_near: np.ndarray) -> tuple[int, int]:
    """(false Gd+ lesions outside the expert T2 mask, non-implanted ones inside it)."""
    false = inside = 0
    for lid, box in enumerate(ndi.find_objects(pred_labels), start=1):
        if box is None:
            continue
        comp = pred_labels[box] == lid
        if (truth[box][comp] > 0).any():
            continue
        if (expert_near[box] & comp).any():
            inside += 1
        else:
            false += 1
    return false, inside


def real_gd_figures(shared: Path, work: Path, cfg: dict[str, Any] | None = None,
                    seeds: tuple[int, ...] = SEEDS, cores: int = 2) -> dict[str, Any]:
    """Gd+ figures on sub-p07 and on implanted cases built from it (see the module docstring)."""
    from msimaging import io
    from msimaging.bench.lesions import pipeline_config, segment
    from msimaging.bench.realdata import load_session, prepared_run
    from msimaging.enhancing import detect_session
    from msimaging.geometry import Grid
    from msimaging.implant import bundled_profile, local_nawm, mask_files
    from msimaging.implant_enhancing import SIZE_BINS_MM3, implant_enhancing, placement
    from msimaging.segment import SegmentOptions, tissue_evidence, tissue_priors

    cfg = cfg or pipeline_config()
    root = Path(shared) / "ms-crosssectional"
    expert_path = root / "derivatives" / "reference" / "sub-p07" / "ses-01" / "sub-p07_ses-01_label-lesion_mask.nii.gz"
    sess = load_session(prepared_run(root, work, cores), "p07", "01")
    if "ceT1w" not in sess.images:
        raise RuntimeError("sub-p07 has no prepared ce-T1w: check the pipeline's preparation")
    expert, e_aff = io.read_mask(expert_path)
    if expert.shape != sess.brain.shape or not np.allclose(e_aff, sess.affine, atol=1e-3):
        raise ValueError(f"{expert_path} is not on the pipeline's session grid")
    expert_near = ndi.binary_dilation(expert > 0, CONNECTIVITY, iterations=2)

    def run_case(images: dict[str, np.ndarray]):
        labels_t2 = segment(images, sess, cfg)
        t0 = time.perf_counter()
        found = detect_session(images["ceT1w"], images["T1w"], sess.affine, sess.brain, cfg,
                               t2_lesions=labels_t2 > 0, flair=images.get("FLAIR"), t2w=images.get("T2w"),
                               template_xfm=sess.template_xfm)
        return found, time.perf_counter() - t0

    figures: dict[str, Any] = {}
    real, secs = run_case(sess.images)
    naive_real = real.candidate_labels
    figures["gd_real_count"] = int(real.labels.max())
    figures["gd_real_outside_t2"] = _false(real.labels, np.zeros_like(real.labels), expert_near)[0]
    figures["gd_real_naive_count"] = int(naive_real.max())
    figures["gd_real_naive_outside_t2"] = _false(naive_real, np.zeros_like(naive_real), expert_near)[0]
    figures["gd_detect_seconds"] = round(secs, 1)
    reasons: dict[str, int] = {}
    for c in real.candidates:
        if not c["accepted"]:
            reasons[c["reason"]] = reasons.get(c["reason"], 0) + 1
    figures["gd_real_rejected"] = reasons

    grid = Grid(tuple(sess.brain.shape), sess.affine)  # type: ignore[arg-type]
    priors = tissue_priors(grid, sess.template_xfm)
    used = {c: sess.images[c] for c in ("FLAIR", "T2w", "T1w")}
    ev = tissue_evidence(used, sess.affine, sess.brain, priors, SegmentOptions.from_config(cfg))
    own = ndi.binary_dilation(expert > 0, CONNECTIVITY, iterations=2)
    wm = np.where(own, 0.0, ev.post[..., 2] * sess.brain).astype(np.float32)
    admissible = ((1.0 - ev.post[..., 0]) * sess.brain).astype(np.float32)
    nawm = {c: local_nawm(sess.images[c], wm, sess.affine) for c in ("FLAIR", "T2w", "T1w", "ceT1w")}
    files = mask_files(Path(shared) / "ms-lesion-masks")
    rows: list[dict[str, Any]] = []
    false = inside = naive_false = 0
    for seed in seeds:
        placed = placement(wm > 0.5, sess.affine, expert > 0, files, 3, seed, (sess.brain, sess.affine))
        case = implant_enhancing(sess.images, sess.affine, sess.brain, wm, admissible, placed.mask, placed.affine,
                                 bundled_profile(), seed, nawm=nawm)
        found, _ = run_case(case.images)
        naive = found.candidate_labels
        for les, hit, naive_hit in zip(case.lesions, _found(found.labels, case.truth, case.lesions),
                                       _found(naive, case.truth, case.lesions)):
            rows.append({**les, "seed": seed, "found": hit, "naive_found": naive_hit})
        f, i = _false(found.labels, case.truth, expert_near)
        false, inside = false + f, inside + i
        naive_false += _false(naive, case.truth, expert_near)[0]
        log.info("Gd+ implanted case %d: %d/%d found, %d false", seed, sum(r["found"] for r in rows if r["seed"] == seed),
                 len(case.lesions), f)
    n = max(len(seeds), 1)
    figures["gd_implant_scans"] = len(seeds)
    figures["gd_implant_lesions"] = len(rows)
    for lo, hi in SIZE_BINS_MM3:
        sel = [r for r in rows if lo <= r["volume_mm3_1mm"] < hi]
        key = f"{lo:.0f}-{hi:.0f}mm3"
        figures[f"gd_implant_recall_{key}"] = round(float(np.mean([r["found"] for r in sel])), 3) if sel else float("nan")
        figures[f"gd_implant_naive_recall_{key}"] = round(float(np.mean([r["naive_found"] for r in sel])), 3) if sel else float("nan")
        figures[f"gd_implant_n_{key}"] = len(sel)
    big = [r for r in rows if r["volume_mm3_1mm"] >= 20]
    small = [r for r in rows if 10 <= r["volume_mm3_1mm"] < 20]
    figures["gd_implant_recall_ge20mm3"] = round(float(np.mean([r["found"] for r in big])), 3) if big else float("nan")
    figures["gd_implant_recall_10-20mm3"] = round(float(np.mean([r["found"] for r in small])), 3) if small else float("nan")
    for pattern in ("nodular", "ring"):
        sel = [r for r in rows if r["pattern"] == pattern]
        figures[f"gd_implant_recall_{pattern}"] = round(float(np.mean([r["found"] for r in sel])), 3) if sel else float("nan")
    figures["gd_implant_false_per_scan"] = round(false / n, 3)
    figures["gd_implant_in_expert_t2_per_scan"] = round(inside / n, 3)
    figures["gd_implant_naive_false_per_scan"] = round(naive_false / n, 3)
    figures["gd_implant_rows"] = rows
    return figures


__all__ = ["SEEDS", "real_gd_figures"]

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

**The candidate table** (``gd_candidates`` in ``bench-results/activity.json``): every candidate of
the real scan and of every implanted case (the second look's parts too) with its evidence, the
decision, the implanted lesions it overlaps and whether it touches the expert T2 mask.
:func:`replay` recomputes the figures from it for other rules without re-running the detector
(``python -m msimaging.bench.enhancing_real bench-results/activity.json --set
min_t2_probability=0.2``): a change of the decision rules is measured in a second, on the same
candidates. It is exact for the recorded rules (the bench checks it) and an approximation for
others: parts exist only for candidates the recorded rules rejected, and the candidates themselves
(seeds, growth, evidence) are those of the recorded settings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

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


def candidate_rows(found: Any, truth: np.ndarray | None, expert_near: np.ndarray) -> list[dict[str, Any]]:
    """Every candidate of a :class:`msimaging.enhancing.Detection` (second-look parts too) with
    ``hits`` (the truth labels it overlaps) and ``in_expert`` (it touches ``expert_near``)."""
    out: list[dict[str, Any]] = []
    maps = [found.candidate_labels] + ([found.part_labels] if found.part_labels is not None else [])
    boxes = [ndi.find_objects(m) for m in maps]
    for c in found.candidates:
        which = 1 if "part_of" in c else 0
        cid = int(c["candidate"])
        box = boxes[which][cid - 1] if cid - 1 < len(boxes[which]) else None
        if box is None:
            continue
        comp = maps[which][box] == cid
        hits = [] if truth is None else sorted(int(v) for v in np.unique(truth[box][comp]) if v > 0)
        out.append({**c, "hits": hits, "in_expert": bool((expert_near[box] & comp).any())})
    return out


def recall_by_size(found: list[tuple[float, bool]]) -> dict[str, float]:
    """Recall per size bin (``"10-20mm3"``, ...) and for ``"ge20mm3"`` of (1 mm volume, found) pairs."""
    from msimaging.implant_enhancing import SIZE_BINS_MM3

    def rate(sel: list[bool]) -> float:
        return round(float(np.mean(sel)), 3) if sel else float("nan")

    out = {f"{lo:.0f}-{hi:.0f}mm3": rate([f for v, f in found if lo <= v < hi]) for lo, hi in SIZE_BINS_MM3}
    out["ge20mm3"] = rate([f for v, f in found if v >= 20])
    return out


def replay(table: Mapping[str, Any], decide: Callable[[Mapping[str, Any]], bool]) -> dict[str, float]:
    """The Gd+ figures of a candidate table (``gd_candidates``) under the decision ``decide``.

    A lesion is found when an accepted candidate overlaps it; a candidate's parts (second look) are
    considered only when ``decide`` rejects the candidate, and its accepted parts that overlap no
    implant and lie outside the expert mask count as one false lesion (they touch: one component).
    """
    def accepted(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        whole = {int(r["candidate"]): decide(r) for r in rows if "part_of" not in r}
        out = []
        for r in rows:
            if "part_of" not in r:
                ok = whole[int(r["candidate"])]
            else:
                ok = not whole.get(int(r["part_of"]), False) and decide(r)
            if ok:
                out.append(r)
        return out

    def false(kept: list[Mapping[str, Any]]) -> int:
        return len({int(r.get("part_of", r["candidate"])) for r in kept if not r["hits"] and not r["in_expert"]})

    out: dict[str, float] = {"gd_real_outside_t2": float(false(accepted(table["real"])))}
    found: list[tuple[float, bool]] = []
    n_false = 0
    for case in table["cases"]:
        kept = accepted(case["candidates"])
        hit = {h for r in kept for h in r["hits"]}
        found += [(float(les["volume_mm3_1mm"]), les["label"] in hit) for les in case["lesions"]]
        n_false += false(kept)
    out.update({f"gd_implant_recall_{k}": v for k, v in recall_by_size(found).items()})
    out["gd_implant_false_per_scan"] = round(n_false / max(len(table["cases"]), 1), 3)
    return out


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
    table: dict[str, Any] = {"real": candidate_rows(real, None, expert_near), "cases": []}
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
        table["cases"].append({"seed": seed, "lesions": case.lesions,
                               "candidates": candidate_rows(found, case.truth, expert_near)})
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
    recall = recall_by_size([(r["volume_mm3_1mm"], r["found"]) for r in rows])
    naive_recall = recall_by_size([(r["volume_mm3_1mm"], r["naive_found"]) for r in rows])
    for lo, hi in SIZE_BINS_MM3:
        key = f"{lo:.0f}-{hi:.0f}mm3"
        figures[f"gd_implant_recall_{key}"] = recall[key]
        figures[f"gd_implant_naive_recall_{key}"] = naive_recall[key]
        figures[f"gd_implant_n_{key}"] = sum(lo <= r["volume_mm3_1mm"] < hi for r in rows)
    figures["gd_implant_recall_ge20mm3"] = recall["ge20mm3"]
    for pattern in ("nodular", "ring"):
        sel = [r for r in rows if r["pattern"] == pattern]
        figures[f"gd_implant_recall_{pattern}"] = round(float(np.mean([r["found"] for r in sel])), 3) if sel else float("nan")
    figures["gd_implant_false_per_scan"] = round(false / n, 3)
    figures["gd_implant_in_expert_t2_per_scan"] = round(inside / n, 3)
    figures["gd_implant_naive_false_per_scan"] = round(naive_false / n, 3)
    figures["gd_implant_rows"] = rows
    figures["gd_candidates"] = table
    again = replay(table, lambda c: bool(c["accepted"]))
    if any(again[k] != figures[k] for k in again if k in figures and not np.isnan(again[k])):
        log.warning("the candidate table does not reproduce the Gd+ figures: %s", again)
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Replay the candidate table of an activity bench result under changed ``enhancing:`` rules."""
    import argparse
    import dataclasses
    import json

    from msimaging.enhancing import DECISION_RULES, EnhancingRules, accept

    p = argparse.ArgumentParser(prog="python -m msimaging.bench.enhancing_real", description=main.__doc__)
    p.add_argument("result", type=Path, help="bench-results/activity.json (or a file holding gd_candidates)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="enhancing rules to change")
    args = p.parse_args(argv)
    data = json.loads(args.result.read_text())
    table = data.get("gd_candidates", data)
    if "cases" not in table:
        raise SystemExit(f"{args.result}: no Gd+ candidate table (run `python -m msimaging.bench activity`)")
    change = {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in DECISION_RULES:
            raise SystemExit(f"{key!r} is not a decision rule that a replay can change (one of "
                             f"{', '.join(DECISION_RULES)}; the others change the candidates: re-run the bench)")
        change[key] = float(value)
    rules = dataclasses.replace(EnhancingRules(), **change)
    recorded = replay(table, lambda c: bool(c["accepted"]))
    figures = replay(table, lambda c: accept(c, rules)[0])
    for k, v in figures.items():
        print(f"{k:<36}{recorded[k]:>8.3f} -> {v:.3f}")
    return figures


__all__ = ["SEEDS", "candidate_rows", "recall_by_size", "replay", "real_gd_figures", "main"]


if __name__ == "__main__":
    main()

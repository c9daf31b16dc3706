"""Activity endpoints accuracy: new / enlarging T2 lesions and Gd+ lesions against known truth.

``python -m msimaging.bench activity`` measures, with the package's own steps on each visit
(N4 + standardisation, the main cross-sectional segmentation, :mod:`msimaging.longitudinal`
and :mod:`msimaging.enhancing`):

* phantoms (``msimaging.phantom``): lesion-wise recall of new and enlarging lesions vs baseline,
  false new lesions per visit pair, Gd+ recall and false Gd+ lesions per scan, and the new /
  enlarging counts of a scan-rescan pair (expected 0);
* Gd+ lesions on the real post-contrast scan of ``ms-crosssectional/sub-p07`` and on enhancing
  lesions implanted among its real vessels (:mod:`msimaging.bench.enhancing_real`, the pipeline's
  own path): Gd+ lesions outside the expert T2 mask, recall by size and false Gd+ per scan;
* the real patient ``ms-longitudinal/sub-p12`` and a real-background longitudinal set built from
  it, **on the pipeline's own path** (:mod:`msimaging.bench.activity_real`: ``msimaging run``'s
  registration, segmentation and comparison; no truth transform, no flat prior): lesion-wise F1
  of sub-p12's new + enlarging lesions against the reference change components where FLAIR
  brightens; recall of implanted new lesions by size and contrast and of implanted growth; false
  new / enlarging lesions per no-change pair (re-positioned, re-interpolated, noise-resampled
  copies of the real baseline). ``--activity-reference-path`` adds the former sub-p12 figures
  (reference brain masks and transforms, flat priors).

On phantoms, brain masks and transforms come from the truth unless ``--registration estimated``
asks for the pipeline's rigid registration. Figures are printed and returned.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import Grid, resample_array
from msimaging.bench.activity_real import brightening_components, common_to_session
from msimaging.lesions import CONNECTIVITY, LesionRules, label_lesions

log = logging.getLogger(__name__)

NAME = "activity"
HELP = "new/enlarging T2 and Gd+ lesion accuracy on phantoms and on the real patient sub-p12"

DEFAULT_SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activity-work", type=Path, default=Path("bench-work/activity"),
                        help="[activity] folder for the phantom studies (re-used when present)")
    parser.add_argument("--activity-resolution", type=float, default=2.0, help="[activity] phantom voxel size, mm")
    parser.add_argument("--activity-seeds", type=int, nargs="+", default=[1, 2], help="[activity] phantom seeds")
    parser.add_argument("--activity-registration", choices=("truth", "estimated"), default="truth",
                        help="[activity] visit-to-baseline transforms: truth, or the pipeline's rigid registration")
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED,
                        help="[activity] ../shared/data (sub-p12 is skipped when absent)")
    parser.add_argument("--skip-real", action="store_true", help="[activity] phantoms only")
    parser.add_argument("--skip-phantom", action="store_true", help="[activity] sub-p12 only")
    parser.add_argument("--activity-real-work", type=Path, default=Path("bench-work/activity"),
                        help="[activity] folder for the real-background case and its cached pipeline run")
    parser.add_argument("--skip-gd-real", action="store_true",
                        help="[activity] no Gd+ figures on sub-p07's real ce-T1w and its implanted cases")
    parser.add_argument("--gd-seeds", type=int, nargs="+", default=None,
                        help="[activity] seeds of the implanted Gd+ cases (default 0-9; 10-19 were never "
                             "looked at while choosing the rules)")
    parser.add_argument("--activity-reference-path", action="store_true",
                        help="[activity] also the former sub-p12 figures (reference brain masks and transforms, "
                             "flat priors) besides the pipeline's own path")


# --- per-visit preparation (what the pipeline's steps do before compare_visits) ------------------


def prepare_flair(flair: np.ndarray, affine: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """N4 bias correction inside the brain, then standardisation (parenchyma peak = 1)."""
    from msimaging.preprocess import n4_bias_correct, standardise

    corrected, _ = n4_bias_correct(flair, affine, brain)
    return standardise(corrected, brain)


def segment_visit(flair: np.ndarray, affine: np.ndarray, brain: np.ndarray, rules: LesionRules) -> np.ndarray:
    """Lesion labels from main's cross-sectional segmentation (FLAIR only, flat tissue priors)."""
    from msimaging.segment import flat_priors, segment_lesions

    return segment_lesions({"FLAIR": flair}, affine, brain, flat_priors(flair.shape), rules=rules).labels


def make_visit(flair_raw: np.ndarray, affine: np.ndarray, brain: np.ndarray, rules: LesionRules):
    from msimaging.longitudinal import Visit

    flair = prepare_flair(flair_raw, affine, brain)
    return Visit(flair=flair, affine=affine, brain=brain, labels=segment_visit(flair, affine, brain, rules))


# --- scoring --------------------------------------------------------------------------------------


@dataclass
class Detection:
    truth: int = 0
    detected: int = 0
    predicted: int = 0
    false: int = 0

    def add(self, other: "Detection") -> None:
        self.truth += other.truth
        self.detected += other.detected
        self.predicted += other.predicted
        self.false += other.false

    @property
    def recall(self) -> float:
        return self.detected / self.truth if self.truth else float("nan")

    @property
    def precision(self) -> float:
        return (self.predicted - self.false) / self.predicted if self.predicted else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if self.truth == 0 or self.predicted == 0:
            return 0.0 if self.truth or self.predicted else 1.0
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def score(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray, rules: LesionRules,
          allowed: np.ndarray | None = None) -> Detection:
    """Lesion-wise: truth lesions overlapped by ``pred``; predicted lesions overlapping no truth.

    ``allowed`` (default ``truth``) is what a predicted lesion may overlap without being false.
    """
    t_lab = label_lesions(truth, affine, rules)
    p_lab = label_lesions(pred, affine, rules)
    ok = truth if allowed is None else allowed
    detected = len(np.setdiff1d(np.unique(t_lab[p_lab > 0]), [0]))
    hits = len(np.setdiff1d(np.unique(p_lab[ok > 0]), [0]))
    return Detection(int(t_lab.max()), detected, int(p_lab.max()), int(p_lab.max()) - hits)


# --- phantoms -------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from msimaging import io

    return io.read_image(str(path))


def _phantom_study(work: Path, seed: int, resolution: float, rescan: bool):
    from msimaging.phantom import PhantomOptions, make_study

    masks = DEFAULT_SHARED / "ms-lesion-masks"       # real lesion shapes when present
    options = PhantomOptions(subjects=1, sessions=2 if rescan else 3, resolution_mm=resolution, seed=seed,
                             orientation="oblique", new_per_followup=3, enlarging_per_followup=2,
                             enhancing_per_session=2, rescan_of="M00" if rescan else None,
                             lesion_masks_dir=masks if masks.is_dir() else None)
    shapes = "real" if masks.is_dir() else "ellipsoid"
    out = work / f"{'rescan' if rescan else 'study'}-seed{seed}-{resolution:g}mm-{shapes}"
    return make_study(out, options)


def _session_visit(s, rules: LesionRules, cache: dict):
    from msimaging import io

    key = (s.subject, s.session)
    if key not in cache:
        flair, affine = _read(s.images[s.reference])
        brain, _ = io.read_mask(str(s.truth["brain_mask"]))
        cache[key] = make_visit(flair, affine, brain, rules)
    return cache[key]


def _estimated_xfm(fu, bl) -> sitk.Transform:
    from msimaging.register import rigid_register

    xfm, _ = rigid_register((bl.flair, bl.affine), (fu.flair, fu.affine), fixed_mask=bl.brain)
    return xfm


def _gd_case(s, rules: LesionRules, cfg: dict, visit=None) -> Detection:
    """Gd+ detection of one phantom session (ce-T1w and T1w put on the reference grid by truth).

    ``visit`` is the session's prepared :class:`Visit` when already made (its FLAIR and lesions
    are re-used rather than computed again)."""
    from msimaging import io
    from msimaging.enhancing import EnhancingRules, detect
    from msimaging.geometry import read_transform
    from msimaging.preprocess import n4_bias_correct, standardise

    flair, affine = _read(s.images[s.reference])
    grid = Grid(flair.shape, affine)
    brain, _ = io.read_mask(str(s.truth["brain_mask"]))
    on_ref = {}
    for c in ("T1w", "ceT1w"):
        data, aff = _read(s.images[c])
        head = resample_array(brain.astype(np.float32), affine, Grid(data.shape, aff),
                              read_transform(s.truth[f"xfm_{c}"]).GetInverse()) >= 0.5
        corrected, _ = n4_bias_correct(data, aff, head)
        img = resample_array(corrected, aff, grid, read_transform(s.truth[f"xfm_{c}"]))
        on_ref[c] = standardise(img, brain)
    if visit is not None:
        prepared, lesions = visit.flair, visit.labels > 0
    else:
        prepared = prepare_flair(flair, affine, brain)
        lesions = segment_visit(prepared, affine, brain, rules) > 0
    labels = detect(on_ref["ceT1w"], on_ref["T1w"], affine, brain, EnhancingRules.from_config(cfg),
                    rules, t2_lesions=lesions, flair=prepared if s.reference == "FLAIR" else None).labels
    truth, _ = io.read_mask(str(s.truth["enhancing_mask"]))
    return score(labels > 0, truth, affine, rules)


def phantom_figures(work: Path, seeds: list[int], resolution: float, registration: str,
                    cfg: dict | None = None) -> dict[str, Any]:
    """New / enlarging / Gd+ figures over phantom studies, and scan-rescan counts."""
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.longitudinal import ChangeRules, compare_visits, count_status, follow_up_to_reference, \
        status_mask

    cfg = cfg or {}
    rules = LesionRules()
    crules = ChangeRules.from_config(cfg)
    new, enl, gd = Detection(), Detection(), Detection()
    pairs = scans = 0
    rescan_counts: dict[str, int] = {"new": 0, "enlarging": 0}
    per_pair = []
    for seed in seeds:
        study = _phantom_study(work, seed, resolution, rescan=False)
        sub = study.subjects[0]
        cache: dict = {}
        bl_s = sub.sessions[0]
        bl = _session_visit(bl_s, rules, cache)
        for s in sub.sessions:
            if "enhancing_mask" in s.truth:
                gd.add(_gd_case(s, rules, cfg, _session_visit(s, rules, cache)))
                scans += 1
        for s in sub.sessions[1:]:
            fu = _session_visit(s, rules, cache)
            xfm = read_transform(s.truth["xfm_baseline"]) if registration == "truth" else _estimated_xfm(fu, bl)
            changes, labels = compare_visits(fu, bl, follow_up_to_reference(xfm, None), crules, rules)
            t_new, _ = io.read_mask(str(s.truth["new_mask"]))
            t_enl, _ = io.read_mask(str(s.truth["enlarging_mask"]))
            d_new = score(status_mask(labels, changes, "new"), t_new, fu.affine, rules)
            d_enl = score(status_mask(labels, changes, "enlarging"), t_enl, fu.affine, rules, allowed=t_enl | t_new)
            new.add(d_new)
            enl.add(d_enl)
            pairs += 1
            per_pair.append({"seed": seed, "session": s.session, "new": vars(d_new), "enlarging": vars(d_enl)})
        rescan = _phantom_study(work, seed, resolution, rescan=True)
        rsub = rescan.subjects[0]
        r_bl, r_re = rsub.session("M00"), rsub.session("M00R")
        cache_r: dict = {}
        v_bl, v_re = _session_visit(r_bl, rules, cache_r), _session_visit(r_re, rules, cache_r)
        xfm = read_transform(r_re.truth["xfm_baseline"]) if registration == "truth" else _estimated_xfm(v_re, v_bl)
        changes, _ = compare_visits(v_re, v_bl, follow_up_to_reference(xfm, None), crules, rules)
        for k in rescan_counts:
            rescan_counts[k] += count_status(changes, k)
    return {
        "phantom_pairs": pairs,
        "new_recall": new.recall, "new_truth": new.truth, "false_new_per_pair": new.false / max(pairs, 1),
        "enlarging_recall": enl.recall, "enlarging_truth": enl.truth,
        "false_enlarging_per_pair": enl.false / max(pairs, 1),
        "gd_scans": scans, "gd_recall": gd.recall, "gd_truth": gd.truth, "false_gd_per_scan": gd.false / max(scans, 1),
        "rescan_new": rescan_counts["new"], "rescan_enlarging": rescan_counts["enlarging"],
        "per_pair": per_pair,
    }


# --- the real patient sub-p12 --------------------------------------------------------------------


def p12_visits(root: Path, rules: LesionRules, sessions: tuple[str, ...] = ("01", "02")):
    """Both visits of sub-p12 (brain from the reference mask) and their transforms to the common grid."""
    from msimaging import io
    from msimaging.geometry import read_transform

    ref = root / "derivatives" / "reference" / "sub-p12"
    common_brain, common_aff = io.read_mask(str(ref / "sub-p12_space-common_desc-brain_mask.nii.gz"))
    visits, xfms = {}, {}
    for ses in sessions:
        flair, aff = _read(root / "sub-p12" / f"ses-{ses}" / "anat" / f"sub-p12_ses-{ses}_FLAIR.nii.gz")
        xfm = read_transform(ref / f"sub-p12_ses-{ses}_from-FLAIR_to-common_mode-image_xfm.txt")
        brain = resample_array(common_brain.astype(np.float32), common_aff, Grid(flair.shape, aff),
                               common_to_session(xfm)) >= 0.5
        visits[ses] = make_visit(flair, aff, brain, rules)
        xfms[ses] = xfm
    return visits, xfms, common_aff, common_brain


def p12_figures(root: Path, cfg: dict | None = None) -> dict[str, Any]:
    """Lesion-wise F1 on sub-p12 and the scan-rescan counts of its baseline."""
    from msimaging import io
    from msimaging.longitudinal import ChangeRules, compare_visits, count_status, follow_up_to_reference, \
        status_mask

    cfg = cfg or {}
    rules = LesionRules()
    crules = ChangeRules.from_config(cfg)
    visits, xfms, common_aff, common_brain = p12_visits(root, rules)
    v1, v2 = visits["01"], visits["02"]
    changes, labels = compare_visits(v2, v1, follow_up_to_reference(xfms["02"], xfms["01"]), crules, rules)
    active = status_mask(labels, changes, "new") | status_mask(labels, changes, "enlarging")
    grid = Grid(common_brain.shape, common_aff)
    active_common = resample_array(active.astype(np.float32), v2.affine, grid, xfms["02"]) >= 0.5
    change, _ = io.read_mask(str(root / "derivatives" / "reference" / "sub-p12" /
                                 "sub-p12_space-common_desc-lesionchange_mask.nii.gz"))
    f1c = resample_array(v1.flair, v1.affine, grid, xfms["01"])
    f2c = resample_array(v2.flair, v2.affine, grid, xfms["02"])
    bright = brightening_components(change, f1c, f2c, common_brain, common_aff, rules)
    # a predicted lesion is a hit when it overlaps a brightening component
    det = score(active_common, bright, common_aff, rules)
    out: dict[str, Any] = {
        "p12_reference_components": int(label_lesions(change, common_aff, rules).max()),
        "p12_brightening_components": det.truth, "p12_predicted": det.predicted,
        "p12_true_positive_predicted": det.predicted - det.false, "p12_detected": det.detected,
        "p12_precision": det.precision, "p12_recall": det.recall, "p12_f1": det.f1,
        "p12_new": count_status(changes, "new"), "p12_enlarging": count_status(changes, "enlarging"),
    }
    out.update(p12_rescan(root, v1, rules, crules))
    return out


def repositioned_copy(flair: np.ndarray, affine: np.ndarray, rotation_deg: float = 4.0,
                      shift_mm: tuple[float, float, float] = (3.3, -2.1, 1.7), noise: float = 0.01,
                      gain: float = 1.1, seed: int = 0) -> tuple[np.ndarray, sitk.Transform]:
    """A re-positioned, re-interpolated (linear) copy of an image, with a gain and fresh noise.

    The head is rotated by ``rotation_deg`` about the image centre and shifted by ``shift_mm``
    within the same grid; returns the copy and the transform mapping copy points to original
    points (ITK resampling convention, i.e. ``from-copy_to-original``).
    """
    rot = sitk.Euler3DTransform()
    shape = np.asarray(flair.shape, dtype=float)
    centre_ras = (affine @ np.append((shape - 1) / 2, 1.0))[:3]
    rot.SetCenter(tuple(float(c) for c in centre_ras * np.array([-1, -1, 1])))
    a = np.deg2rad(rotation_deg)
    rot.SetRotation(a, -0.5 * a, 0.7 * a)
    rot.SetTranslation(tuple(float(s) for s in shift_mm))
    copy = resample_array(flair, affine, Grid(flair.shape, affine), rot, "linear")
    rng = np.random.default_rng(seed)
    inside = copy > 0
    scale = float(np.median(copy[inside])) if inside.any() else 1.0
    copy = np.where(inside, gain * copy + rng.normal(0, noise * scale, copy.shape), 0.0)
    return np.maximum(copy, 0).astype(np.float32), rot


def p12_rescan(root: Path, v1, rules: LesionRules, crules) -> dict[str, Any]:
    """Counts for sub-p12's baseline against a re-positioned, re-interpolated copy of itself."""
    from msimaging.longitudinal import Visit, compare_visits, count_status

    raw, aff = _read(root / "sub-p12" / "ses-01" / "anat" / "sub-p12_ses-01_FLAIR.nii.gz")
    copy, to_orig = repositioned_copy(raw, aff)
    grid = Grid(copy.shape, aff)
    fov = resample_array(np.ones(raw.shape, dtype=np.float32), aff, grid, to_orig) > 0.999
    c_brain = (resample_array(v1.brain.astype(np.float32), v1.affine, grid, to_orig) >= 0.5) & fov
    c_visit = make_visit(copy, aff, c_brain, rules)
    changes, _ = compare_visits(c_visit, v1, to_orig, crules, rules)
    return {"p12_rescan_new": count_status(changes, "new"), "p12_rescan_enlarging": count_status(changes, "enlarging"),
            "p12_rescan_shrinking": count_status(changes, "shrinking")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if not args.skip_phantom:
        figures.update(phantom_figures(args.activity_work, list(args.activity_seeds), args.activity_resolution,
                                       args.activity_registration))
    p12 = Path(args.shared_data) / "ms-longitudinal"
    if not args.skip_real and not getattr(args, "skip_gd_real", False):
        if (Path(args.shared_data) / "ms-crosssectional").is_dir():
            from msimaging.bench.enhancing_real import SEEDS, real_gd_figures

            # Gd+ on a real post-contrast scan and implanted enhancing lesions among its real vessels
            seeds = tuple(args.gd_seeds) if getattr(args, "gd_seeds", None) else SEEDS
            figures.update(real_gd_figures(Path(args.shared_data), args.activity_real_work, seeds=seeds))
        else:
            print(f"{args.shared_data}/ms-crosssectional: not present; real Gd+ figures skipped")
    if not args.skip_real:
        if p12.is_dir():
            from msimaging.bench.activity_real import real_figures

            # the pipeline's own path: registration, segmentation and comparison of `msimaging run`
            figures.update(real_figures(p12, args.activity_real_work))
            if args.activity_reference_path:
                figures.update({f"refpath_{k}": v for k, v in p12_figures(p12).items()})
        else:
            print(f"{p12}: not present; sub-p12 figures skipped")
    shown = {k: v for k, v in figures.items() if k not in ("per_pair", "per_session", "gd_implant_rows", "gd_candidates",
                                                            "detectability")}
    # what each change holds where it is (oracle localisation) against the null of no-change pairs
    shown.update({f"detectability_{k}": v for k, v in figures.get("detectability", {}).items()
                  if not isinstance(v, list)})
    width = max([44, *(len(k) + 2 for k in shown)])
    for k, v in shown.items():
        print(f"{k:<{width}}{v:.3f}" if isinstance(v, float) else f"{k:<{width}}{v}")
    return figures


__all__ = ["NAME", "HELP", "add_arguments", "run", "score", "Detection", "phantom_figures", "p12_figures",
           "repositioned_copy", "brightening_components", "CONNECTIVITY"]

"""New / enlarging T2 lesions on the pipeline's own path: sub-p12 and a real-background set.

One small BIDS dataset is built from the raw scans of ``ms-longitudinal/sub-p12`` (cached under
``WORK/case-<seed>``), one subject whose sessions are all compared with the real baseline ses-01:

* ``ses-02``: the real follow-up (scored against the reference change components where FLAIR
  brightens: the real sub-p12 figures);
* ``ses-03``: the real follow-up with new lesions and growth of existing lesions implanted
  (:mod:`msimaging.implant_longitudinal`) into every raw contrast on its native grid;
* ``ses-04``: a no-change follow-up: the real baseline re-positioned (rotation, shift), linearly
  re-interpolated, gain 1.08, fresh noise, its header placed ``62 mm`` away in scanner coordinates;
* ``ses-05``: another no-change follow-up (another motion and noise, ``-65 mm``) with implanted
  new lesions and growth;
* ``ses-06``: a third no-change follow-up (another motion and noise, placed 78 mm away).

New lesions are real lesion shapes of 10-500 mm^3 (``ms-lesion-masks``) in two contrast groups,
the first and second quartiles of the FLAIR brightening of sub-p12's real new / enlarging lesions as
measured on its reference change mask (90th percentile of the follow-up's increase over the
intensity-matched baseline, in units of the local NAWM, on the 3 mm grid); each group's
``contrast_scale`` is calibrated once so that the implanted lesions, seen on the grid with its
partial volume, have that median brightening. (Case version 4 and earlier matched the follow-up's
*excess* over local NAWM instead: a lesion placed on tissue that was already brighter than NAWM
then needed almost no increase, and two thirds of the implants brightened less than any real
change of sub-p12: 90th-percentile increase 0.03-0.18, median 0.08, against 0.14-0.46, median 0.21.)
The pipeline (:func:`realdata.pipeline_run`) runs once on the dataset (cached by a digest of code
and inputs) up to the longitudinal rules; the bench then calls the rules' own functions on its
outputs (:func:`msimaging.longitudinal.run_compare`, :func:`msimaging.atrophy.run_measure`) with the
default config. No truth transform, brain mask or
prior is given to the pipeline: the truth is only used for scoring.

Scoring (lesion-wise, 26-connected, on each follow-up's grid): a truth lesion is found when a
predicted new (new truth) or new-or-enlarging (enlarging truth) lesion overlaps it; a predicted
lesion is false when it overlaps no implanted lesion and (ses-02/03) no real brightening change.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import (Grid, affine_matrix_lps, affine_transform_from_matrix, resample_array,
                                voxel_volume_mm3)
from msimaging.lesions import CONNECTIVITY, LesionRules, label_lesions

log = logging.getLogger(__name__)


def common_to_session(xfm: sitk.Transform) -> sitk.Transform:
    """The inverse of a session -> common-grid affine (common points -> session points)."""
    return affine_transform_from_matrix(np.linalg.inv(affine_matrix_lps(xfm)))


def brightening_components(change: np.ndarray, flair1: np.ndarray, flair2: np.ndarray, brain: np.ndarray,
                           affine: np.ndarray, rules: LesionRules) -> np.ndarray:
    """The reference change components where the (intensity-matched) FLAIR is brighter at visit 2."""
    from msimaging.longitudinal import quantile_match

    f1 = quantile_match(flair1, flair2, brain)
    lab = label_lesions(change, affine, rules)
    out = np.zeros(change.shape, dtype=bool)
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        comp = lab[box] == i
        if float(np.mean(flair2[box][comp] - f1[box][comp])) > 0:
            out[box] |= comp
    return out

SUBJECT = "p12"
CASE_VERSION = "6"
CONTRASTS = ("FLAIR", "T1w", "T2w")
#: (session, background, implants, header shift RAS mm, rotation deg, shift mm, seed)
SESSIONS = (
    ("02", "real", False, None, None, None, 0),
    ("03", "real", True, None, None, None, 3),
    ("04", "copy", False, (62.0, -18.0, 10.0), (3.0, -2.0, 2.5), (2.5, -1.5, 1.2), 4),
    ("05", "copy", True, (-65.0, 20.0, -8.0), (-2.5, 3.0, -1.5), (-1.8, 2.2, -1.0), 5),
    ("06", "copy", False, (15.0, 70.0, 25.0), (1.5, 2.5, -3.0), (1.0, 2.5, -2.0), 6),
)
NO_CHANGE = ("04", "05", "06")
#: No-change pairs without implants (brain volume unchanged; ses-05's implants can change the BSI)
NO_CHANGE_PURE = ("04", "06")
IMPLANTED = ("03", "05")


def _raw(root: Path, ses: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from msimaging import io

    anat = root / "sub-p12" / f"ses-{ses}" / "anat"
    return {c: io.read_image(anat / f"sub-p12_ses-{ses}_{c}.nii.gz") for c in CONTRASTS}


def reference_on_raw(root: Path) -> dict[str, Any]:
    """sub-p12's reference (brain, brightening changes) on the raw FLAIR grids, and the contrast of
    the real new / enlarging lesions (measured on the common grid)."""
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.implant_longitudinal import measure_change_contrast

    ref = root / "derivatives" / "reference" / "sub-p12"
    brain_c, aff_c = io.read_mask(ref / "sub-p12_space-common_desc-brain_mask.nii.gz")
    change, _ = io.read_mask(ref / "sub-p12_space-common_desc-lesionchange_mask.nii.gz")
    grid_c = Grid(tuple(brain_c.shape), aff_c)  # type: ignore[arg-type]
    out: dict[str, Any] = {"common_affine": aff_c, "common_brain": brain_c, "change": change}
    flairs = {}
    for ses in ("01", "02"):
        data, aff = io.read_image(root / "sub-p12" / f"ses-{ses}" / "anat" / f"sub-p12_ses-{ses}_FLAIR.nii.gz")
        xfm = read_transform(ref / f"sub-p12_ses-{ses}_from-FLAIR_to-common_mode-image_xfm.txt")
        out[f"xfm_{ses}"] = xfm
        out[f"brain_{ses}"] = resample_array(brain_c.astype(np.float32), aff_c, Grid(data.shape, aff),
                                             common_to_session(xfm)) >= 0.5
        flairs[ses] = resample_array(data, aff, grid_c, xfm)
    bright = brightening_components(change, flairs["01"], flairs["02"], brain_c, aff_c, LesionRules())
    out["bright_common"] = bright
    data2, aff2 = io.read_image(root / "sub-p12" / "ses-02" / "anat" / "sub-p12_ses-02_FLAIR.nii.gz")
    out["bright_02"] = resample_array(bright.astype(np.float32), aff_c, Grid(data2.shape, aff2),
                                      common_to_session(out["xfm_02"])) >= 0.25
    # the other reference changes (shrinking, resolving): no implant goes there either
    out["dark_02"] = resample_array((np.asarray(change, bool) & ~bright).astype(np.float32), aff_c,
                                    Grid(data2.shape, aff2), common_to_session(out["xfm_02"])) >= 0.25
    out["contrast"] = measure_change_contrast(flairs["02"], flairs["01"], bright, brain_c, aff_c)
    return out


def _write_session(bids: Path, ses: str, images: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    from msimaging import io

    anat = bids / f"sub-{SUBJECT}" / f"ses-{ses}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    for c, (data, aff) in images.items():
        io.write_image(anat / f"sub-{SUBJECT}_ses-{ses}_{c}.nii.gz",
                       np.clip(np.round(data), 0, 65535).astype(np.uint16), aff)


def build_case(root: Path, work: Path, seed: int = 0, per_bin: int = 4, n_growth: int = 6) -> Path:
    """The BIDS dataset described in the module docstring (cached; ``derivatives/truth`` holds the
    truth masks on each follow-up's raw FLAIR grid and ``case.json`` the design)."""
    from msimaging import io
    from msimaging.implant import bundled_profile, mask_files
    from msimaging.implant_longitudinal import (bright_lesions, choose_centres, choose_growth, head_motion,
                                                implant_growth, implant_new, lesion_components, observed_contrast,
                                                paste, reposition, shift_header, white_matter)

    bids = Path(work) / f"case-v{CASE_VERSION}-seed{seed}"
    if (bids / "case.json").is_file():
        return bids
    if bids.exists():
        shutil.rmtree(bids)
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "sub-p12 real-background activity case (msimaging bench)", "BIDSVersion": "1.9.0",
         "DatasetType": "raw", "License": "CC-BY-4.0 (derived from Lesjak et al. 2016)"}, indent=1) + "\n")
    (bids / "participants.tsv").write_text(f"participant_id\nsub-{SUBJECT}\n")
    reference = reference_on_raw(root)
    q = reference["contrast"]["brightening_quartiles"]
    profile = bundled_profile()
    core_median = float(np.median(np.asarray(profile.core)[:, 0]))
    targets = {"faint": q[0], "typical": q[1]}
    scales = {g: t / core_median for g, t in targets.items()}
    raw = {"01": _raw(root, "01"), "02": _raw(root, "02")}
    _write_session(bids, "01", raw["01"])
    truth_dir = bids / "derivatives" / "truth" / f"sub-{SUBJECT}"
    design: dict[str, Any] = {"seed": seed, "contrast_measured": reference["contrast"], "contrast_scale": scales,
                              "sessions": {}}
    masks = mask_files(root.parent / "ms-lesion-masks")
    for ses, background, implants, header, rot, shift, s_seed in SESSIONS:
        rng = np.random.default_rng(seed * 100 + s_seed)
        if background == "real":
            images = dict(raw["02"])
            brain = reference["brain_02"]
            allowed = reference["bright_02"]
            real_changes = allowed | reference["dark_02"]
        else:
            f_aff = raw["01"]["FLAIR"][1]
            centre = np.argwhere(reference["brain_01"]).mean(axis=0)
            from msimaging.geometry import voxel_to_world

            c_ras = voxel_to_world(f_aff, centre[None])[0]
            motion = head_motion(rot, shift, (-c_ras[0], -c_ras[1], c_ras[2]))
            images = reposition(raw["01"], motion, header, seed=seed * 100 + s_seed)
            brain, _ = shift_header(reference["brain_01"], f_aff, motion, header)
            allowed = np.zeros(brain.shape, bool)
            real_changes = allowed
        flair, f_aff = images["FLAIR"]
        info: dict[str, Any] = {"background": background, "header_shift_mm": header, "rotation_deg": rot}
        new_truth = np.zeros(flair.shape, bool)
        enl_truth = np.zeros(flair.shape, bool)
        if implants:
            wm, _ = white_matter(flair, f_aff, brain)
            existing = bright_lesions(flair, f_aff, brain, wm)
            # never on a lesion that really changed between the visits (a shell on a lesion that
            # shrank would be "enlarging" truth on a lesion that measures smaller)
            chosen = choose_growth(existing, f_aff, n_growth, rng, avoid=real_changes)
            before = flair.copy()
            images, enl_truth, rows = implant_growth(images, existing, chosen, brain, profile)
            info["enlarging"] = rows
            comps = lesion_components(masks, per_bin=per_bin, seed=seed * 100 + s_seed)
            avoid = (existing > 0) | enl_truth | real_changes
            centres = choose_centres(wm, f_aff, len(comps), rng, avoid=avoid)
            groups = ("faint", "typical")
            info["new"] = []
            wm_before, _ = white_matter(before, f_aff, brain)
            for g, group in enumerate(groups):
                pick = [k for k in range(len(comps)) if k % 2 == g]
                placed = paste([comps[k] for k in pick], [centres[k] for k in pick if k < len(centres)],
                               (flair, f_aff))
                # calibrated so that the lesions *as seen on the grid* (after thick-slice partial
                # volume) have the target contrast, measured with the operator used on the real ones
                scale = scales[group]
                trial, t = implant_new(images, brain, placed, profile, scale, seed * 100 + s_seed + g)
                seen = [r["brightening"] for r in observed_contrast(trial["FLAIR"][0], images["FLAIR"][0], t, f_aff,
                                                               wm_before & ~t)]
                if seen and np.median(seen) > 0:
                    scale *= float(np.clip(targets[group] / np.median(seen), 1.0, 4.0))
                    trial, t = implant_new(images, brain, placed, profile, scale, seed * 100 + s_seed + g)
                images = trial
                new_truth |= t
                for src in placed.source:
                    info["new"].append({**src, "group": group, "contrast_scale": round(scale, 4)})
            obs = observed_contrast(images["FLAIR"][0], before, new_truth, f_aff, wm_before & ~new_truth)
            info["new_observed"] = obs
        _write_session(bids, ses, images)
        tdir = truth_dir / f"ses-{ses}"
        tdir.mkdir(parents=True, exist_ok=True)
        io.write_mask(tdir / f"sub-{SUBJECT}_ses-{ses}_desc-new_mask.nii.gz", new_truth, f_aff)
        io.write_mask(tdir / f"sub-{SUBJECT}_ses-{ses}_desc-enlarging_mask.nii.gz", enl_truth, f_aff)
        io.write_mask(tdir / f"sub-{SUBJECT}_ses-{ses}_desc-realchange_mask.nii.gz", allowed, f_aff)
        design["sessions"][ses] = info
    (bids / "case.json").write_text(json.dumps(design, indent=1, default=float) + "\n")
    return bids


__all__ = ["build_case", "reference_on_raw", "SESSIONS", "NO_CHANGE", "IMPLANTED", "oracle_evidence", "null_evidence",
           "detectability"]


# --- the pipeline's own comparison on the case, and its scores -------------------------------------


def _files(out: Path, ses: str, with_xfm: bool) -> dict[str, str]:
    from msimaging import layout as L

    files = {"flair": str(out / L.preproc_image(SUBJECT, ses, "FLAIR", "FLAIR")),
             "brain": str(out / L.brain_mask(SUBJECT, ses)), "dseg": str(out / L.lesion_dseg(SUBJECT, ses))}
    if with_xfm:
        files["xfm"] = str(out / L.baseline_xfm(SUBJECT, ses))
    t2 = out / L.preproc_image(SUBJECT, ses, "T2w", "FLAIR")
    if t2.is_file():
        files["t2"] = str(t2)
    return files


def compare_sessions(out: Path, dest: Path, cfg: dict, sessions: tuple[str, ...] | None = None) -> dict[str, Path]:
    """:func:`msimaging.longitudinal.run_compare` (the compare_visits rule's function) on every
    follow-up of the case against the baseline; returns the folder of each session's outputs."""
    from msimaging.longitudinal import run_compare

    res = {}
    for ses, *_ in SESSIONS:
        if sessions is not None and ses not in sessions:
            continue
        d = dest / f"ses-{ses}"
        d.mkdir(parents=True, exist_ok=True)
        run_compare(_files(out, ses, True), _files(out, "01", False), None, str(d / "new.nii.gz"),
                    str(d / "enlarging.nii.gz"), str(d / "compare.json"), SUBJECT, ses, cfg)
        res[ses] = d
    return res


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    lab, n = ndi.label(np.asarray(mask, bool), structure=CONNECTIVITY)
    return lab, int(n)


def _to_grid(mask: np.ndarray, affine: np.ndarray, grid: Grid) -> np.ndarray:
    if tuple(mask.shape) == tuple(grid.shape) and np.allclose(affine, grid.affine, atol=1e-3):
        return np.asarray(mask, bool)
    return resample_array(np.asarray(mask, np.float32), affine, grid, None, "linear") >= 0.5


def contrast_bin(brightening: float) -> str:
    """Bin of an implant's FLAIR brightening (90th percentile of its increase over local NAWM)."""
    return "<0.15" if brightening < 0.15 else "0.15-0.25" if brightening < 0.25 else ">=0.25"


def size_bin(volume_mm3: float) -> str | None:
    from msimaging.implant_longitudinal import SIZE_BINS_MM3

    for lo, hi in SIZE_BINS_MM3:
        if lo <= volume_mm3 < hi:
            return f"{lo:g}-{hi:g}"
    return None


def score_session(case: Path, compared: Path, ses: str) -> dict[str, Any]:
    """Lesion-wise figures of one follow-up (see the module docstring)."""
    from msimaging import io

    new_p, aff = io.read_mask(compared / "new.nii.gz")
    enl_p, _ = io.read_mask(compared / "enlarging.nii.gz")
    return score_masks(case, ses, new_p, enl_p, aff)


def score_masks(case: Path, ses: str, new_p: np.ndarray, enl_p: np.ndarray, aff: np.ndarray) -> dict[str, Any]:
    """:func:`score_session` on predicted new / enlarging masks (on the follow-up's grid)."""
    from msimaging import io

    grid = Grid(tuple(new_p.shape), aff)  # type: ignore[arg-type]
    tdir = case / "derivatives" / "truth" / f"sub-{SUBJECT}" / f"ses-{ses}"
    truth = {}
    for k in ("new", "enlarging", "realchange"):
        m, t_aff = io.read_mask(tdir / f"sub-{SUBJECT}_ses-{ses}_desc-{k}_mask.nii.gz")
        truth[k] = (m, t_aff)
    design = json.loads((case / "case.json").read_text())["sessions"][ses]
    vox = voxel_volume_mm3(aff)
    out: dict[str, Any] = {"session": ses, "background": design["background"], "new_truth": [], "enlarging_truth": []}
    # new truth: per component on the truth grid (numbered as case.json's observed contrasts)
    t_new, n_new = _components(truth["new"][0])
    observed = {r["component"]: r for r in design.get("new_observed", [])}
    t_vox = voxel_volume_mm3(truth["new"][1])
    for i in range(1, n_new + 1):
        comp = _to_grid(t_new == i, truth["new"][1], grid)
        row = observed.get(i, {"volume_mm3": float((t_new == i).sum() * t_vox), "excess": float("nan")})
        out["new_truth"].append({"volume_mm3": row["volume_mm3"], "excess": row["excess"],
                                 "brightening": row.get("brightening", float("nan")),
                                 "found": bool((new_p & comp).any()),
                                 "found_any_status": bool(((new_p | enl_p) & comp).any())})
    t_enl, n_enl = _components(truth["enlarging"][0])
    for i in range(1, n_enl + 1):
        comp = _to_grid(t_enl == i, truth["enlarging"][1], grid)
        out["enlarging_truth"].append({"volume_mm3": round(float(comp.sum() * vox), 1),
                                       "found": bool((enl_p & comp).any()),
                                       "found_any_status": bool(((new_p | enl_p) & comp).any())})
    allowed = _to_grid(truth["new"][0] | truth["enlarging"][0] | truth["realchange"][0], truth["new"][1], grid)
    allowed = ndi.binary_dilation(allowed, CONNECTIVITY)
    for k, pred in (("new", new_p), ("enlarging", enl_p)):
        lab, n = _components(pred)
        hits = len(np.setdiff1d(np.unique(lab[allowed]), [0]))
        out[f"predicted_{k}"] = n
        out[f"false_{k}"] = n - hits
    return out


def _recall(rows: list[dict[str, Any]], key: str = "found") -> tuple[int, int, float]:
    n = len(rows)
    k = sum(1 for r in rows if r[key])
    return k, n, (k / n if n else float("nan"))


def summarise(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Recall by size and contrast bins over the implanted sessions, false positives per pair."""
    new_rows = [r for ses in IMPLANTED if ses in scores for r in scores[ses]["new_truth"]
                if size_bin(r["volume_mm3"]) is not None]
    enl_rows = [r for ses in IMPLANTED if ses in scores for r in scores[ses]["enlarging_truth"]]
    fig: dict[str, Any] = {}
    for lo, hi in ((10.0, 30.0), (30.0, 500.0)):
        k, n, r = _recall([x for x in new_rows if lo <= x["volume_mm3"] < hi])
        fig[f"new_recall_{lo:g}_{hi:g}mm3"] = r
        fig[f"new_found_{lo:g}_{hi:g}mm3"] = f"{k}/{n}"
    for b in ("10-30", "30-100", "100-500"):
        k, n, r = _recall([x for x in new_rows if size_bin(x["volume_mm3"]) == b])
        fig[f"new_recall_size_{b}"] = f"{k}/{n} ({r:.2f})" if n else "0/0"
    for b in ("<0.15", "0.15-0.25", ">=0.25"):
        k, n, r = _recall([x for x in new_rows if contrast_bin(x["brightening"]) == b])
        fig[f"new_recall_brightening_{b}"] = f"{k}/{n} ({r:.2f})" if n else "0/0"
    k, n, r = _recall(enl_rows)
    fig["enlarging_recall"] = r
    fig["enlarging_found"] = f"{k}/{n}"
    fig["enlarging_recall_any_status"] = _recall(enl_rows, "found_any_status")[2]
    pairs = [scores[s] for s in NO_CHANGE if s in scores]
    fig["no_change_pairs"] = len(pairs)
    fig["no_change_new_per_pair"] = [p["false_new"] for p in pairs]
    fig["no_change_enlarging_per_pair"] = [p["false_enlarging"] for p in pairs]
    fig["false_new_or_enlarging_per_no_change_pair"] = (sum(p["false_new"] + p["false_enlarging"] for p in pairs)
                                                       / max(len(pairs), 1))
    imp = [scores[s] for s in IMPLANTED if s in scores]
    fig["false_new_or_enlarging_per_implanted_pair"] = (sum(p["false_new"] + p["false_enlarging"] for p in imp)
                                                       / max(len(imp), 1))
    return fig


def p12_real_score(root: Path, compared: Path, reference: dict[str, Any]) -> dict[str, Any]:
    """sub-p12 ses-02 (the real follow-up) against the brightening reference components, scored on the
    common grid as :func:`msimaging.bench.activity.p12_figures` scores (the reference transform is
    used for scoring only)."""
    from msimaging import io

    new_p, aff = io.read_mask(compared / "new.nii.gz")
    enl_p, _ = io.read_mask(compared / "enlarging.nii.gz")
    grid = Grid(tuple(reference["common_brain"].shape), reference["common_affine"])  # type: ignore[arg-type]
    rules = LesionRules()
    # lesions are counted on the follow-up's own grid (a thin lesion resampled onto another grid can
    # split into pieces); each is carried onto the common grid to test its overlap
    pred, n_pred = _components(new_p | enl_p)
    t_lab = label_lesions(reference["bright_common"], reference["common_affine"], rules)
    hit_truth: set[int] = set()
    true_pred = 0
    for i in range(1, n_pred + 1):
        on_common = resample_array((pred == i).astype(np.float32), aff, grid, reference["xfm_02"]) >= 0.25
        touched = set(np.setdiff1d(np.unique(t_lab[on_common]), [0]).tolist())
        hit_truth |= touched
        true_pred += bool(touched)
    n_truth = int(t_lab.max())
    precision = true_pred / n_pred if n_pred else float("nan")
    recall = len(hit_truth) / n_truth if n_truth else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if n_pred and (precision + recall) > 0 else 0.0
    return {"p12_brightening_components": n_truth, "p12_predicted": n_pred, "p12_detected": len(hit_truth),
            "p12_true_positive_predicted": true_pred, "p12_precision": precision, "p12_recall": recall,
            "p12_f1": f1}


# --- detectability: how much evidence each change holds where it is (oracle localisation) --------


def oracle_evidence(maps: Any, confirm: Any, truth: np.ndarray) -> list[dict[str, Any]]:
    """Pooled FLAIR (and T2w) new-lesion significance over each truth component's own voxels.

    :func:`msimaging.longitudinal.pooled_evidence` of the pair's ``dz`` on the voxels of each
    26-connected component of ``truth`` (on the follow-up grid): the evidence a detector that knew
    where the change is could pool. A change whose oracle evidence lies within the null
    (:func:`null_evidence`) cannot be found without as many false ones.
    """
    from msimaging.longitudinal import pooled_evidence

    lab, n = _components(truth)
    rows = []
    for i, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        comp = lab[box] == i
        rows.append({"component": i, "voxels": int(comp.sum()),
                     "flair_z": round(pooled_evidence(maps.dz[box][comp], maps), 2),
                     "t2_z": round(pooled_evidence(confirm.dz[box][comp], confirm), 2) if confirm is not None
                     else float("nan")})
    return rows


def null_evidence(maps: Any, confirm: Any, normal: np.ndarray, shapes: list[np.ndarray], n: int,
                  seed: int = 0) -> np.ndarray:
    """(k, 2) pooled FLAIR / T2w significance of ``shapes`` (voxel offsets) placed at random in
    ``normal`` voxels of a pair without change: the null of :func:`oracle_evidence`."""
    from msimaging.longitudinal import pooled_evidence

    rng = np.random.default_rng(seed)
    where = np.argwhere(normal)
    out = []
    for k in range(n):
        idx = shapes[k % len(shapes)] + where[rng.integers(len(where))]
        if (idx >= np.asarray(normal.shape)).any():
            continue
        sel = tuple(idx.T)
        if not normal[sel].all():
            continue
        out.append((pooled_evidence(maps.dz[sel], maps),
                    pooled_evidence(confirm.dz[sel], confirm) if confirm is not None else np.nan))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def detectability(root: Path, case: Path, out: Path, cfg: dict, reference: dict[str, Any]) -> dict[str, Any]:
    """Oracle evidence of sub-p12's real brightening changes and of the implanted new lesions, and
    its null on the no-change pairs (the same shapes at random white-matter positions).

    The pair maps are the compare_visits rule's (:func:`msimaging.longitudinal.pair_maps`,
    :func:`~msimaging.longitudinal.confirmation_maps`) on the pipeline's outputs; ``reference`` is
    :func:`reference_on_raw` of ``root``.
    """
    from msimaging import io
    from msimaging.geometry import read_transform
    from msimaging.longitudinal import ChangeRules, confirmation_maps, follow_up_to_reference, pair_maps, read_visit

    rules = ChangeRules.from_config(cfg)
    b = _files(out, "01", False)
    ref = read_visit(b["flair"], b["brain"], b["dseg"], b.get("t2"))

    def maps_of(ses: str) -> tuple[Any, Any, Any]:
        f = _files(out, ses, True)
        fu = read_visit(f["flair"], f["brain"], f["dseg"], f.get("t2"))
        x = follow_up_to_reference(read_transform(f["xfm"]), None)
        return fu, pair_maps(fu, ref, x, rules), confirmation_maps(fu, ref, x, rules)

    fig: dict[str, Any] = {}
    fu, m, c = maps_of("02")
    raw_aff = io.read_image(root / "sub-p12" / "ses-02" / "anat" / "sub-p12_ses-02_FLAIR.nii.gz")[1]
    bright = _to_grid(reference["bright_02"], raw_aff, fu.grid)
    fig["p12_oracle"] = oracle_evidence(m, c, bright)
    implants: list[dict[str, Any]] = []
    shapes: list[np.ndarray] = []
    for ses in IMPLANTED:
        fu, m, c = maps_of(ses)
        t, t_aff = io.read_mask(case / "derivatives" / "truth" / f"sub-{SUBJECT}" / f"ses-{ses}"
                                / f"sub-{SUBJECT}_ses-{ses}_desc-new_mask.nii.gz")
        truth = _to_grid(t, t_aff, fu.grid)
        implants += [{"session": ses, **r} for r in oracle_evidence(m, c, truth)]
        lab, n = _components(truth)
        shapes += [np.argwhere(lab == i) - np.argwhere(lab == i).min(axis=0) for i in range(1, n + 1)]
    fig["implant_oracle"] = implants
    null = []
    for ses in NO_CHANGE_PURE:
        fu, m, c = maps_of(ses)
        normal = ndi.binary_erosion(m.inner & (fu.labels == 0) & (m.ref_labels == 0), iterations=2)
        null.append(null_evidence(m, c, normal, shapes, 600, seed=int(ses)))
    z = np.concatenate(null) if null else np.zeros((0, 2))
    fig["null_placements"] = int(len(z))
    for q in (99.0, 99.9):
        fig[f"null_flair_z_p{q:g}"] = round(float(np.percentile(z[:, 0], q)), 2) if len(z) else float("nan")
        fig[f"null_t2_z_p{q:g}"] = round(float(np.nanpercentile(z[:, 1], q)), 2) if len(z) else float("nan")
    for name, rows in (("p12", fig["p12_oracle"]), ("implant", implants)):
        fz = np.array([r["flair_z"] for r in rows])
        tz = np.array([r["t2_z"] for r in rows])
        fig[f"{name}_changes"] = len(rows)
        fig[f"{name}_oracle_flair_z_ge_3.5"] = int((fz >= 3.5).sum())
        fig[f"{name}_oracle_flair_and_t2_z_ge_2.5"] = int(((fz >= 2.5) & (tz >= 2.5)).sum())
        fig[f"{name}_oracle_below_null_p99.9"] = int(((fz < fig["null_flair_z_p99.9"])
                                                      & ~(tz >= fig["null_t2_z_p99.9"])).sum())
    return fig


def real_figures(root: Path, work: Path, cfg: dict | None = None, seed: int = 0) -> dict[str, Any]:
    """Build the case, run the pipeline on it (cached), compare, score: the real-data figures."""
    from msimaging.bench.realdata import pipeline_run
    from msimaging.config import default_config

    cfg = cfg or default_config()
    case = build_case(root, work, seed)
    out = pipeline_run(case, work)
    compared = compare_sessions(out, work / f"compare-{out.name}", cfg)
    scores = {ses: score_session(case, d, ses) for ses, d in compared.items()}
    fig = summarise(scores)
    reference = reference_on_raw(root)
    fig.update(p12_real_score(root, compared["02"], reference))
    measured = json.loads((case / "case.json").read_text())["contrast_measured"]
    fig["real_contrast_quartiles"] = measured["excess_quartiles"]
    fig["real_brightening_quartiles"] = measured["brightening_quartiles"]
    fig["per_session"] = scores
    fig["detectability"] = detectability(root, case, out, cfg, reference)
    return fig

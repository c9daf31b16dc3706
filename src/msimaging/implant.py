"""Real-background validation cases: real lesion shapes implanted into real scans.

Phantom lesions are brighter and cleaner than real ones, so a method tuned on phantoms can fail on
patients. This module makes cases that look like real patients: the real lesion masks of other
patients (``shared/data/ms-lesion-masks``, MNI152 1 mm) are carried onto a real session through
the pipeline's own template transform and implanted into its real (preprocessed) images with the
intensity profile of real expert-marked lesions, measured by :func:`measure_profile`:

* **contrast** per lesion and contrast, as the fractional excess over the local normal-appearing
  white matter (NAWM) of the lesion's core (its 90th percentile; 10th on T1w), drawn jointly for FLAIR, T2w and
  T1w from the measured lesions (bootstrap with a log-normal jitter ``JITTER``), so the faint and
  the T1-dark lesions of the real sample, and its FLAIR/T2w/T1w correlation, are reproduced;
* **edge**: the measured excess as a function of the signed distance (mm) to the lesion boundary,
  relative to the core (partial volume and the peri-lesional halo of real lesions);
* **heterogeneity**: a smooth random texture of the measured relative SD inside lesions (the
  background keeps its own noise: the excess is added to the real image).

The implanted excess is built on the masks' 1 mm grid and integrated over each voxel of the
session grid (box sub-sampling along thick axes), so a 3 mm slice shows the partial volume a real
acquisition would. The truth is the implanted lesion fraction >= 0.5 (as the phantom's), united
with the session's own expert mask when it has one. Everything is deterministic from ``seed``.

The profile shipped in ``msimaging/data/lesion_profile.json`` was measured on sub-p07's expert
consensus lesions; rebuild it with ``python -m msimaging.implant profile SHARED_DATA``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging.geometry import Grid, bounding_box, crop_affine, resample_array, voxel_sizes
from msimaging.lesions import CONNECTIVITY, label_means
from msimaging.morphology import depth_mm, distance_mm

log = logging.getLogger(__name__)

PROFILE_FILE = "lesion_profile.json"
#: Contrasts whose lesion intensity the profile describes (ce-T1w: see the enhancing module).
PROFILE_CONTRASTS = ("FLAIR", "T2w", "T1w")
#: Signed distances (mm; inside > 0) at which the edge profile is measured: the outside shells at
#: 2, 1.4 and 1 mm, the boundary voxel (depth 1), the next shells, and the core.
EDGE_MM = (-2.0, -1.41, -1.0, 1.0, 1.41, 1.73, 2.0, 3.0)
#: Contrasts on which lesions are darker than NAWM (their core is the 10th percentile, not the 90th).
HYPOINTENSE = ("T1w",)
#: Log-normal jitter (SD of the log) of each drawn lesion's contrasts around the measured one.
JITTER = 0.15
#: Smallest lesion (voxels of the expert mask) whose core contrast is measured (smaller ones are
#: all partial volume: their 90th percentile is not their core).
MIN_CORE_VOXELS = 15
#: Local NAWM reference: width (mm) of the normalised convolution over white matter.
NAWM_SIGMA_MM = 8.0


@dataclass(frozen=True)
class LesionProfile:
    """Intensity profile of real lesions (all contrasts as fractional excess over local NAWM)."""

    contrasts: tuple[str, ...]
    core: list[list[float]]            # per measured lesion: core excess per contrast
    volumes_mm3: list[float]           # per measured lesion
    edge_mm: list[float]               # signed distance to the boundary (inside > 0)
    edge: list[list[float]]            # per edge distance: excess / core, per contrast
    texture_sd: list[float]            # relative SD of the excess inside lesions, per contrast
    source: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LesionProfile":
        d = dict(d)
        d["contrasts"] = tuple(d["contrasts"])
        return cls(**d)

    def edge_fraction(self, signed_mm: np.ndarray, contrast: str) -> np.ndarray:
        """Excess relative to the core at each signed distance (linear in between, 0 far out)."""
        c = self.contrasts.index(contrast)
        xs = np.asarray([-3.0, *self.edge_mm])
        ys = np.asarray([0.0, *[row[c] for row in self.edge]])
        ys = np.clip(ys, 0.0, None)
        return np.interp(signed_mm, xs, ys, left=0.0, right=float(ys[-1])).astype(np.float32)


def bundled_profile() -> LesionProfile:
    """The profile that ships with the package (measured on sub-p07's expert lesions)."""
    with resources.files("msimaging").joinpath("data", PROFILE_FILE).open("r") as fh:
        return LesionProfile.from_json(json.load(fh))


# --- measuring real lesions ---------------------------------------------------------------------


def local_nawm(image: np.ndarray, wm_weight: np.ndarray, affine: np.ndarray,
               sigma_mm: float = NAWM_SIGMA_MM) -> np.ndarray:
    """Local normal-appearing WM intensity: the segmentation's normalised convolution
    (:func:`msimaging.segment.local_mean`) over ``wm_weight``; the WM median where no weight."""
    from msimaging.segment import local_mean

    w = np.asarray(wm_weight, np.float32)
    fallback = float(np.median(np.asarray(image)[w > 0.5])) if (w > 0.5).any() else 1.0
    return local_mean(np.asarray(image, np.float32), w, affine, sigma_mm, fallback)


def signed_distance_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Depth inside ``mask`` (mm to the nearest outside voxel, >= one voxel) and minus the distance
    to the mask outside it (float32)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, -np.inf, np.float32)
    return np.where(mask, depth_mm(mask, affine), -distance_mm(mask, affine)).astype(np.float32)


def measure_profile(images: Mapping[str, np.ndarray], affine: np.ndarray, lesion_mask: np.ndarray,
                    wm_weight: np.ndarray, noise_sd: Mapping[str, float] | None = None,
                    source: str = "") -> LesionProfile:
    """Measure the intensity profile of the expert-marked lesions of one co-registered session.

    ``wm_weight``: white-matter weight (e.g. the tissue model's WM posterior); lesions and a 2 mm
    margin are excluded from the NAWM reference. ``noise_sd`` (per contrast, image units): voxel
    noise, removed from the measured heterogeneity (the background keeps its own noise).
    """
    contrasts = tuple(c for c in PROFILE_CONTRASTS if c in images)
    les = np.asarray(lesion_mask, bool)
    excl = ndi.binary_dilation(les, CONNECTIVITY, iterations=2)
    w = np.where(excl, 0.0, wm_weight).astype(np.float32)
    ratio = {c: np.asarray(images[c], np.float32) / np.maximum(local_nawm(images[c], w, affine), 1e-6) - 1.0
             for c in contrasts}
    labels, n = ndi.label(les, structure=CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = [i for i in range(1, n + 1) if sizes[i] >= MIN_CORE_VOXELS]
    core = np.zeros((n + 1, len(contrasts)), np.float64)
    for j, c in enumerate(contrasts):
        for i in range(1, n + 1):
            core[i, j] = float(np.percentile(ratio[c][labels == i], 10 if c in HYPOINTENSE else 90))
    sd = signed_distance_mm(les, affine)
    # nearest lesion of every voxel (for the outside shells)
    _, idx = ndi.distance_transform_edt(labels == 0, sampling=voxel_sizes(affine), return_indices=True)
    owner = labels[tuple(idx)]
    use = np.isin(owner, big)
    edge = []
    for d in EDGE_MM:
        shell = use & (np.abs(sd - d) <= (0.15 if d < 2.5 else 10.0)) & ((sd >= 2.5) if d >= 2.5 else True)
        row = []
        for j, c in enumerate(contrasts):
            cores = core[owner[shell], j]
            ok = np.abs(cores) > 1e-3
            row.append(float(np.median(ratio[c][shell][ok] / cores[ok])) if ok.sum() >= 5 else float("nan"))
        edge.append(row)
    edge_arr = np.asarray(edge)
    for j in range(len(contrasts)):   # unmeasured shells (no voxel that deep): the deepest measured
        col = edge_arr[:, j]
        for k in range(len(col)):
            if not np.isfinite(col[k]):
                col[k] = col[k - 1] if k else 0.0
    texture = []
    inside = use & (sd >= 1.4)
    for j, c in enumerate(contrasts):
        cores = core[owner[inside], j]
        rel = ratio[c][inside] / np.where(np.abs(cores) > 1e-3, cores, np.nan) - 1.0
        rel = rel[np.isfinite(rel)]
        total = float(1.4826 * np.median(np.abs(rel - np.median(rel)))) if rel.size else 0.0
        noise = 0.0
        if noise_sd and c in noise_sd and rel.size:
            nawm = float(np.median(np.asarray(images[c])[w > 0.9]))
            noise = float(noise_sd[c]) / max(nawm, 1e-6) / max(float(np.median(np.abs(cores))), 1e-3)
        texture.append(float(np.sqrt(max(total ** 2 - noise ** 2, 0.0))))
    vol = float(np.prod(voxel_sizes(affine)))
    return LesionProfile(
        contrasts=contrasts, core=[[round(float(v), 4) for v in core[i]] for i in big],
        volumes_mm3=[round(float(sizes[i] * vol), 1) for i in big], edge_mm=list(EDGE_MM),
        edge=[[round(float(v), 4) for v in row] for row in edge_arr], texture_sd=[round(v, 4) for v in texture],
        source=source, figures={"lesions": int(n), "measured": len(big)})


# --- implanting -------------------------------------------------------------------------------


@dataclass
class Implanted:
    """An implanted case: images, truth and the per-lesion design."""

    images: dict[str, np.ndarray]
    truth: np.ndarray                  # bool: implanted fraction >= 0.5 (| the session's own truth)
    implanted: np.ndarray              # bool: the implanted lesions alone
    fraction: np.ndarray               # float32 implanted lesion fraction
    lesions: list[dict[str, Any]]      # implanted components on the session grid: volume
    drawn: list[dict[str, Any]]        # per component of the MNI mask: its drawn core contrasts


def box_factors(zooms: Sequence[float], step_mm: float = 1.0) -> tuple[int, int, int]:
    """Sub-samples per voxel axis so that each is about ``step_mm`` (1 below 1.5 mm, at most 5)."""
    return tuple(1 if z <= 1.5 else int(min(5, max(2, np.ceil(z / step_mm - 1e-6)))) for z in zooms)  # type: ignore[return-value]


def resample_box(data: np.ndarray, affine: np.ndarray, grid: Grid, transform: sitk.Transform | None,
                 factors: tuple[int, int, int] | None = None) -> np.ndarray:
    """Linear resampling onto ``grid`` integrated over each voxel's extent (box slice profile).

    Each voxel is sub-sampled ``factors`` times along its axes (default :func:`box_factors`) and
    the sub-samples averaged, as a thick-slice acquisition averages its slab.
    """
    factors = factors or box_factors(grid.zooms)
    if all(f == 1 for f in factors):
        return resample_array(data, affine, grid, transform, "linear")
    sub = np.eye(4)
    for k, n in enumerate(factors):
        sub[k, k] = 1.0 / n
        sub[k, 3] = -0.5 + 0.5 / n
    fine = Grid(tuple(int(s * n) for s, n in zip(grid.shape, factors)), np.asarray(grid.affine) @ sub)  # type: ignore[arg-type]
    out = resample_array(data, affine, fine, transform, "linear")
    nx, ny, nz = grid.shape
    fx, fy, fz = factors
    return out.reshape(nx, fx, ny, fy, nz, fz).mean(axis=(1, 3, 5)).astype(np.float32)


def _texture(shape: tuple[int, ...], rng: np.random.Generator, sigma_vox: float = 1.0) -> np.ndarray:
    """A smooth Gaussian random field of unit SD."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return (f / max(float(f.std()), 1e-6)).astype(np.float32)


def draw_contrasts(profile: LesionProfile, n: int, rng: np.random.Generator,
                   scale: float = 1.0) -> np.ndarray:
    """(n, C) core contrasts: measured lesions drawn with replacement, jittered log-normally.

    ``scale`` multiplies every contrast (1: as measured; < 1 fainter).
    """
    core = np.asarray(profile.core, np.float64)
    pick = rng.integers(0, len(core), n)
    jitter = np.exp(rng.normal(0.0, JITTER, (n, 1)))  # one factor per lesion: contrasts stay correlated
    return core[pick] * jitter * scale


def implant(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray, wm_weight: np.ndarray,
            admissible: np.ndarray, lesion_mask_mni: np.ndarray, mask_affine: np.ndarray,
            to_mask_space: sitk.Transform | None, profile: LesionProfile, seed: int,
            own_truth: np.ndarray | None = None, contrast_scale: float = 1.0,
            min_mm3: float = 0.0, nawm: Mapping[str, np.ndarray] | None = None) -> Implanted:
    """Implant the lesions of a real MNI-space mask into one session's co-registered images.

    ``to_mask_space`` maps session points to points of the mask's space (ITK resampling
    convention; :func:`database_transform`; None: the session is in that space). ``wm_weight`` gives the NAWM reference;
    ``admissible`` (0..1) is where lesion tissue may lie (brain, not CSF). Contrasts of the
    profile missing from ``images`` are left out; other images (ce-T1w) are copied unchanged.
    ``nawm``: the local NAWM reference of each contrast when already computed (:func:`local_nawm`).
    """
    rng = np.random.default_rng(seed)
    grid = Grid(tuple(brain.shape), affine)  # type: ignore[arg-type]
    m = np.asarray(lesion_mask_mni) > 0
    if m.any():  # work on the mask's bounding box (and the reach of the edge profile)
        box = bounding_box(m, 4)
        m, mask_affine = m[box], crop_affine(mask_affine, box)
    labels, n = ndi.label(m, structure=CONNECTIVITY)
    mzooms = voxel_sizes(mask_affine)
    sd = signed_distance_mm(m, mask_affine)
    _, idx = ndi.distance_transform_edt(labels == 0, sampling=mzooms, return_indices=True)
    owner = labels[tuple(idx)] if n else labels
    near = sd > -3.0
    contrasts = [c for c in profile.contrasts if c in images]
    drawn = draw_contrasts(profile, n, rng, contrast_scale) if n else np.zeros((0, len(profile.contrasts)))
    adm = np.clip(np.asarray(admissible, np.float32), 0.0, 1.0) * (np.asarray(brain) > 0)
    frac = np.clip(resample_box(m.astype(np.float32), mask_affine, grid, to_mask_space), 0.0, 1.0) * adm
    out = {c: np.asarray(v, np.float32).copy() for c, v in images.items()}
    for c in contrasts:
        j = profile.contrasts.index(c)
        tex = _texture(m.shape, rng)
        core = np.zeros(m.shape, np.float32)
        core[near] = drawn[owner[near] - 1, j] if n else 0.0
        excess = np.zeros(m.shape, np.float32)
        excess[near] = core[near] * profile.edge_fraction(sd[near], c) * (1.0 + profile.texture_sd[j] * tex[near])
        on_grid = resample_box(excess, mask_affine, grid, to_mask_space) * adm
        ref = nawm[c] if nawm is not None and c in nawm else local_nawm(images[c], wm_weight, affine)
        out[c] = (out[c] + on_grid * ref).astype(np.float32)
        if c == "T1w":  # a lesion is never darker than CSF: keep T1w above zero
            out[c] = np.maximum(out[c], 0.0)
    implanted = frac >= 0.5
    vox = grid.voxel_volume_mm3
    lab_s, ns = ndi.label(implanted, structure=CONNECTIVITY)
    vols = np.bincount(lab_s.ravel(), minlength=ns + 1)[1:] * vox
    if min_mm3 > 0 and ns:
        small = np.concatenate([[False], vols < min_mm3])
        implanted = implanted & ~small[lab_s]
    lesions = [{"component": int(i + 1), "volume_mm3": round(float(v), 1)} for i, v in enumerate(vols)]
    truth = implanted | (np.asarray(own_truth) > 0) if own_truth is not None else implanted.copy()
    info = [{"mni_component": int(k + 1), **{c: round(float(drawn[k, profile.contrasts.index(c)]), 4)
                                                 for c in contrasts}} for k in range(n)]
    return Implanted(images=out, truth=truth, implanted=implanted, fraction=frac.astype(np.float32),
                     lesions=lesions, drawn=info)


def database_transform(session_to_template: sitk.Transform, reference_to_template: sitk.Transform
                       ) -> sitk.Transform:
    """Session -> lesion-mask space, through the template (ITK resampling convention).

    The masks of ``ms-lesion-masks`` are in their database's "MNI space", where each patient's
    brain keeps its own size (sub-p07 of the same database: its template transform scales by
    1.17-1.27 per axis). Carrying them through a template transform alone would shrink every lesion
    by that factor (a 49 mL load became 27 mL). So a session point goes to the template and from
    there into the database space of a reference session of that database (sub-p07):
    ``reference^-1(session(p))``; for the reference itself this is the identity.
    """
    # ITK composite transforms apply the last added first
    return sitk.CompositeTransform([reference_to_template.GetInverse(), session_to_template])


def load_mni_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A real lesion mask (any 1 mm MNI grid; read by world coordinates)."""
    from msimaging import io

    return io.read_mask(path)


def mask_files(masks_dir: str | Path) -> list[Path]:
    """The lesion masks of a folder, sorted by name."""
    return sorted(Path(masks_dir).glob("*_label-lesion_mask.nii*"))


# --- command line: the profile ----------------------------------------------------------------


def profile_from_shared(data: Path) -> LesionProfile:
    """Measure the profile on sub-p07 of ``data/ms-crosssectional`` (1 mm, co-registered, expert mask)."""
    from msimaging import io
    from msimaging.preprocess import brain_mask_morphological, standardise
    from msimaging.register import register_template
    from msimaging.segment import SegmentOptions, tissue_evidence, tissue_priors

    anat = data / "ms-crosssectional" / "sub-p07" / "ses-01" / "anat"
    raw = {c: io.read_image(anat / f"sub-p07_ses-01_{c}.nii.gz") for c in PROFILE_CONTRASTS}
    flair, affine = raw["FLAIR"]
    brain = brain_mask_morphological(flair, affine)
    xfm, _ = register_template(flair, affine, brain)
    images = {c: standardise(d, brain) for c, (d, _) in raw.items()}
    truth, _ = io.read_mask(data / "ms-crosssectional" / "derivatives" / "reference" / "sub-p07" / "ses-01"
                            / "sub-p07_ses-01_label-lesion_mask.nii.gz")
    priors = tissue_priors(Grid(tuple(brain.shape), affine), xfm)  # type: ignore[arg-type]
    ev = tissue_evidence(images, affine, brain, priors, SegmentOptions())
    from msimaging.segment import noise_sd

    wm = ev.post[..., 2] * brain
    noise = {c: noise_sd(images[c], wm > 0.9) for c in images}
    return measure_profile(images, affine, truth, wm, noise, source="sub-p07 expert consensus mask (Lesjak et al. 2018)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m msimaging.implant", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("profile", help="measure the lesion intensity profile on sub-p07 and write it")
    pr.add_argument("data", type=Path, help="the shared data folder (holds ms-crosssectional/)")
    pr.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / PROFILE_FILE)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prof = profile_from_shared(args.data)
    args.out.write_text(json.dumps(prof.to_json(), indent=1) + "\n")
    print(f"{args.out}: {len(prof.core)} lesions measured; edge {prof.edge}; texture {prof.texture_sd}")


if __name__ == "__main__":
    main()

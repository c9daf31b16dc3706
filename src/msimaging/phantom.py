"""Synthetic MS studies with known truth: the ground truth of every test and benchmark (DESIGN §7).

:func:`make_study` writes a BIDS dataset (FLAIR, T2w, T1w, ce-T1w per session, uint16 by default,
skull, scalp and neck, bias field, Rician noise, per-visit head pose, RAS/LPS/oblique headers, any
voxel size) plus ``derivatives/truth/`` (masks, tissue fractions, transforms, ``endpoints.csv``
and one ``sub-S_truth.json`` per subject), deterministically from a seed.

Spaces (all world coordinates are RAS millimetres):

* **MNI space** ``m``: the nilearn MNI152 2009a 1 mm maps (T1 template, GM and WM probabilities).
  The head model (skull, scalp, neck, dura, sinuses, vessels) is built once around the template
  brain on a 2 mm grid aligned with it (partial-volume fractions, interpolated when sampled).
* **Brain space** ``b``: the subject's brain tissue, stored on the MNI grid: the MNI maps after a
  smooth per-subject warp of at most ``warp_mm``. Lesions live here, so they move with the brain.
* **Anatomy space** ``a``: the subject's head, ``m = c + K (a - c)`` with ``K = diag(1/scales)``
  about the MNI brain centroid ``c`` (per-axis subject scales 0.95-1.05). Brain tissue at a session
  ``t`` years after baseline is the baseline tissue at ``a' = c + (a - c) / s`` with
  ``s = (1 - atrophy_per_year * t) ** (1/3)``; skull, scalp and ICV do not move, CSF fills the gap.
* **Scanner space** ``p``: the physical space of one acquisition, ``p = G a`` with ``G`` the rigid
  head pose of that acquisition. Each image grid is placed in scanner space.

Every acquisition is sampled from the 1 mm maps by world coordinates through these maps (SimpleITK
linear resampling), averaging sub-samples over each voxel's extent when a voxel edge exceeds
1.5 mm, so any grid, orientation and pose is exact and partial volume is realistic.

Output layout (``OUT``; names from :func:`msimaging.bids.bids_name` / ``contrast_name``)::

    dataset_description.json, participants.tsv, README
    sub-pNN/sub-pNN_sessions.tsv                         session_id, acq_time (6-month steps)
    sub-pNN/ses-V/anat/sub-pNN_ses-V_{FLAIR,T2w,T1w,ce-gadolinium_T1w}.nii.gz
    derivatives/truth/dataset_description.json, endpoints.csv (msimaging.endpoints.COLUMNS)
    derivatives/truth/sub-pNN/sub-pNN_truth.json         lesions, poses, grids, atrophy, options
    derivatives/truth/sub-pNN/ses-V/anat/sub-pNN_ses-V_<entities>_<suffix>.nii.gz / _xfm.txt:
        desc-brain_mask, label-{lesion,new,enlarging,enhancing}_mask, label-lesion_dseg,
        label-{lesion,WM,GM,CSF}_probseg, from-<C>_to-<ref>_mode-image_xfm,
        from-session_to-baseline_mode-image_xfm (follow-ups)

Truth definitions (all on the session's reference grid, its FLAIR else T2w, voxel-to-voxel):

* ``label-GM_probseg``/``label-WM_probseg``: normal-appearing grey / white matter fractions;
  ``label-lesion_probseg``: lesion fraction; GM + WM + lesion = brain parenchyma fraction.
* ``label-CSF_probseg``: intracranial volume fraction minus parenchyma (ventricles, sulcal and
  subarachnoid CSF, choroid plexus, dura and intracranial vessels).
* ``desc-brain_mask``: the brain envelope (parenchyma, ventricles and sulcal CSF inside the smooth
  hull of the brain, which moves with atrophy); it excludes the subarachnoid rim at the inner skull
  surface, dura, sinuses, skull and the spinal cord below the foramen magnum.
* ``label-lesion_mask``: voxels whose lesion fraction is >= 0.5; ``label-lesion_dseg`` gives each
  lesion its design id 1..N (the same id in every session; baseline lesions first). ``label-new_mask`` / ``label-enlarging_mask``
  (follow-ups): the lesions that are new / enlarging versus baseline. ``label-enhancing_mask``: the
  whole of every Gd-enhancing lesion (filled, also for ring enhancement).
* Lesion counts equal the 26-connected component counts (:func:`msimaging.lesions.label_lesions`)
  of these masks; lesion volumes in ``endpoints.csv`` are mask volumes on the reference grid;
  brain volume and ICV are the exact continuous volumes of the model (so PBVC versus baseline is
  ``-100 * atrophy_per_year * years`` exactly, years = days / 365.25).
* Lesions are designed to survive every grid: at least max(20 mm^3, 8 voxels, a sphere of radius
  one voxel edge) on the coarsest grid, at least two voxel edges + 1.5 mm apart at their largest,
  inside white matter; each is checked to be exactly one component of the reference grid's mask
  at every session, and stable lesions not to pass the enlarging rule on the grid (else another
  shape is drawn; lesions that never fit are dropped and noted in the truth JSON).
* CUA lesions: Gd+ lesions plus new or enlarging T2 lesions versus the previous session that do
  not enhance. At baseline the new/enlarging columns are NA and PBVC is 0.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from msimaging import __version__
from msimaging.bids import CONTRASTS, REFERENCE_CONTRASTS, bids_name, contrast_name
from msimaging.endpoints import COLUMNS
from msimaging.geometry import LPS_FLIP, Grid, euler_from_matrix, to_sitk, voxel_sizes
from msimaging.io import write_image, write_json, write_mask, write_table, write_text
from msimaging.io import write_transform as _io_write_transform
from msimaging.lesions import CONNECTIVITY, LesionRules, label_lesions

log = logging.getLogger(__name__)

#: acq_time of every subject's baseline session; each further session is 6 months later.
BASELINE_ACQ_TIME = datetime(2025, 1, 15, 9, 0, 0)
MONTHS_PER_SESSION = 6
#: A rescan session is acquired this long after the session it repeats.
RESCAN_DELAY = timedelta(hours=2)
DAYS_PER_YEAR = 365.25

#: Relative signal of each tissue per contrast (3T ordering; T1w white matter = 1).
TISSUE_SIGNAL: dict[str, dict[str, float]] = {
    "T1w": {"wm": 1.0, "gm": 0.65, "csf": 0.25, "lesion": 0.62, "choroid": 0.45, "dura": 0.3,
            "sinus": 0.35, "vessel": 0.25, "bone": 0.05, "marrow": 0.8, "skin": 0.6, "fat": 1.1,
            "muscle": 0.5, "cord": 0.85},
    "ceT1w": {"wm": 1.0, "gm": 0.66, "csf": 0.25, "lesion": 0.62, "choroid": 1.5, "dura": 0.95,
              "sinus": 1.7, "vessel": 1.45, "bone": 0.05, "marrow": 0.85, "skin": 0.7, "fat": 1.1,
              "muscle": 0.62, "cord": 0.85},
    "T2w": {"wm": 0.4, "gm": 0.6, "csf": 1.0, "lesion": 0.8, "choroid": 0.7, "dura": 0.2,
            "sinus": 0.08, "vessel": 0.15, "bone": 0.03, "marrow": 0.6, "skin": 0.5, "fat": 0.75,
            "muscle": 0.3, "cord": 0.45},
    "FLAIR": {"wm": 0.55, "gm": 0.7, "csf": 0.12, "lesion": 1.0, "choroid": 0.35, "dura": 0.3,
              "sinus": 0.08, "vessel": 0.15, "bone": 0.03, "marrow": 0.5, "skin": 0.45, "fat": 0.65,
              "muscle": 0.35, "cord": 0.6},
}
#: Scanner units per relative signal unit (white matter ~ 800-1000 in the written images).
SCANNER_SCALE: dict[str, float] = {"T1w": 1000.0, "ceT1w": 1000.0, "T2w": 2000.0, "FLAIR": 1700.0}
#: Signal of enhancing lesion tissue on ce-T1w (relative to T1w white matter), drawn per lesion.
ENHANCING_SIGNAL = (1.3, 1.4)

#: Field of view (mm) along the voxel axes (i, j, k) of every acquisition.
DEFAULT_FOV_MM = (250.0, 250.0, 230.0)
#: With ``per_contrast_grids``: field of view and voxel-size factors per contrast (clinical 2D-like).
CONTRAST_FOV_MM: dict[str, tuple[float, float, float]] = {
    "FLAIR": (240.0, 250.0, 230.0), "T2w": (230.0, 250.0, 232.0),
    "T1w": (250.0, 250.0, 230.0), "ceT1w": (250.0, 250.0, 230.0),
}
CONTRAST_VOXEL_FACTOR: dict[str, tuple[float, float, float]] = {
    "FLAIR": (1.0, 1.0, 1.0), "T2w": (0.85, 0.85, 1.1), "T1w": (1.25, 1.25, 1.0), "ceT1w": (1.25, 1.25, 1.0),
}
#: Scanner-space RAS point at the centre of every field of view.
FOV_CENTER_RAS = (0.0, -17.0, 0.0)

#: 2 mm head-model grid (RAS origin of voxel 0 and shape): the MNI brain plus skull, scalp and neck.
_HEAD_ORIGIN = (-100.0, -140.0, -136.0)
_HEAD_SHAPE = (101, 121, 127)
#: Inner skull surface / scalp: distances (mm) from the brain envelope.
_ICV_MARGIN_MM = 3.0
_SCALP_MM = 6.0
#: z (MNI mm) of the foramen magnum: the spinal cord and canal run below it.
_FORAMEN_Z = -72.5
_LESION_GROWTH = (1.8, 2.5)       # volume factor of an enlarging lesion
_LESION_SHRINK = (0.45, 0.6)      # volume factor of a shrinking lesion
_MAX_LESION_MM3 = 2000.0
_DESIGN_ATTEMPTS = 8


@dataclass(frozen=True)
class PhantomOptions:
    """Everything that defines a phantom study; the same options give byte-identical files.

    ``resolution_mm`` is the voxel size (mm) of every contrast, or a 3-tuple along the voxel axes
    (i, j, k); with ``per_contrast_grids`` each contrast scales it by its own factors
    (:data:`CONTRAST_VOXEL_FACTOR`) and has its own field of view. ``orientation`` is the voxel
    axis order of the written images: ``"RAS"``, ``"LPS"`` (like DICOM-derived data) or
    ``"oblique"`` (LPS rotated 10-20 degrees). ``rescan_of`` names a session (e.g. ``"M00"``)
    to acquire twice: the extra session ``<label>R``, 2 hours later, has the same anatomy (no
    lesion change, no atrophy) with a new pose, bias and noise. ``warp_mm`` bounds the smooth
    per-subject nonlinear deformation of the brain (realism only).
    """

    subjects: int = 1
    sessions: int = 2
    resolution_mm: float | tuple[float, float, float] = 2.0
    seed: int = 0
    orientation: str = "RAS"
    skull: bool = True
    contrasts: tuple[str, ...] = ("FLAIR", "T2w", "T1w", "ceT1w")
    max_rotation_deg: float = 5.0
    max_translation_mm: float = 8.0
    intra_session_motion: bool = True
    atrophy_per_year: float = 0.01
    n_baseline_lesions: int = 12
    new_per_followup: int = 2
    enlarging_per_followup: int = 1
    shrinking_per_followup: int = 1
    enhancing_per_session: int = 1
    noise: float = 0.03
    bias: float = 0.2
    dtype: str = "uint16"
    lesion_masks_dir: Path | None = None
    per_contrast_grids: bool = False
    rescan_of: str | None = None
    warp_mm: float = 1.5

    def problems(self) -> list[str]:
        """Reasons why these options cannot make a study (empty when they can)."""
        out = []
        if self.subjects < 1 or self.sessions < 1:
            out.append("subjects and sessions must be >= 1")
        res = _as_triple(self.resolution_mm)
        if any(r <= 0.2 or r > 10 for r in res):
            out.append(f"resolution_mm {res} must be within (0.2, 10] mm")
        if self.orientation not in ("RAS", "LPS", "oblique"):
            out.append(f"orientation {self.orientation!r} must be RAS, LPS or oblique")
        unknown = [c for c in self.contrasts if c not in CONTRASTS]
        if unknown:
            out.append(f"unknown contrasts {unknown}; use {CONTRASTS}")
        if not any(c in self.contrasts for c in REFERENCE_CONTRASTS):
            out.append("contrasts must include FLAIR or T2w (the lesion reference)")
        if self.dtype not in ("uint16", "float32"):
            out.append(f"dtype {self.dtype!r} must be uint16 or float32")
        if not 0 <= self.atrophy_per_year < 0.2:
            out.append("atrophy_per_year must be within [0, 0.2)")
        if self.sessions * MONTHS_PER_SESSION / 12 * self.atrophy_per_year >= 0.9:
            out.append("atrophy too large for the number of sessions")
        counts = (self.n_baseline_lesions, self.new_per_followup, self.enlarging_per_followup,
                  self.shrinking_per_followup, self.enhancing_per_session)
        if min(counts) < 0:
            out.append("lesion counts must be >= 0")
        if self.noise < 0 or self.bias < 0 or self.warp_mm < 0:
            out.append("noise, bias and warp_mm must be >= 0")
        if self.rescan_of is not None and self.rescan_of not in session_labels(self.sessions):
            out.append(f"rescan_of {self.rescan_of!r} is not one of {session_labels(self.sessions)}")
        if self.lesion_masks_dir is not None and not Path(self.lesion_masks_dir).is_dir():
            out.append(f"lesion_masks_dir {self.lesion_masks_dir} is not a folder")
        return out


@dataclass(frozen=True)
class SessionTruth:
    """One written session: its images, truth files and expected endpoints row.

    ``images`` maps contrast keys to BIDS files; ``truth`` maps ``brain_mask``, ``lesion_mask``,
    ``lesion_dseg``, ``lesion_probseg``, ``WM_probseg``, ``GM_probseg``, ``CSF_probseg``,
    ``new_mask`` and ``enlarging_mask`` (follow-ups), ``enhancing_mask`` (with ce-T1w),
    ``xfm_<contrast>`` (to the reference) and ``xfm_baseline`` (follow-ups) to files, all on
    ``grid`` (the reference contrast's grid). ``endpoints`` is the endpoints.csv row (None = NA).
    """

    subject: str
    session: str
    reference: str
    days_since_baseline: int
    images: dict[str, Path]
    truth: dict[str, Path]
    grid: Grid
    endpoints: dict[str, Any]
    lesion_ids: tuple[int, ...]


@dataclass(frozen=True)
class SubjectTruth:
    label: str
    sessions: tuple[SessionTruth, ...]
    truth_json: Path

    def session(self, label: str) -> SessionTruth:
        for s in self.sessions:
            if s.session == label:
                return s
        raise KeyError(f"sub-{self.label} has no session {label!r}")


@dataclass(frozen=True)
class StudyTruth:
    """What :func:`make_study` wrote: paths and the per-session truth figures."""

    bids_dir: Path
    truth_dir: Path
    endpoints_csv: Path
    options: PhantomOptions
    subjects: tuple[SubjectTruth, ...]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows of ``endpoints.csv`` (values as numbers, None for NA)."""
        return [s.endpoints for sub in self.subjects for s in sub.sessions]

    def subject(self, label: str) -> SubjectTruth:
        for s in self.subjects:
            if s.label == label:
                return s
        raise KeyError(f"no subject {label!r}")


# --------------------------------------------------------------------------------------------
# small helpers


def _as_triple(value: float | tuple[float, float, float] | list[float]) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        raise ValueError(f"expected a voxel size or a 3-tuple, got {value!r}")
    return vals  # type: ignore[return-value]


def session_labels(n: int) -> list[str]:
    """Visit labels M00, M06, M12, ... (6-month steps)."""
    return [f"M{MONTHS_PER_SESSION * k:02d}" for k in range(n)]


def subject_label(index: int) -> str:
    """BIDS label of the ``index``-th subject (0-based): p01, p02, ..."""
    return f"p{index + 1:02d}"


def _add_months(t: datetime, months: int) -> datetime:
    y, m = divmod(t.month - 1 + months, 12)
    return t.replace(year=t.year + y, month=m + 1)


def _inside(d: np.ndarray) -> np.ndarray:
    """Partial-volume fraction (0..1) of a 1 mm voxel inside the level set ``d < 0`` (d in mm)."""
    return np.clip(np.float32(0.5) - d, 0.0, 1.0).astype(np.float32, copy=False)


def _random_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit standard deviation (float32)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return ((f - f.mean()) / max(float(f.std()), 1e-6)).astype(np.float32)


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """3x3 rotation about a unit ``axis`` by ``angle_deg`` (right hand rule, Rodrigues)."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(angle_deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _random_axis(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _rigid(rotation: np.ndarray, center: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 RAS map ``x -> R (x - c) + c + t``."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(center) - rotation @ np.asarray(center) + np.asarray(translation)
    return m


def _scaling(center: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """4x4 RAS map ``x -> c + diag(f) (x - c)``."""
    m = np.eye(4)
    m[:3, :3] = np.diag(factors)
    m[:3, 3] = np.asarray(center) - np.asarray(factors) * np.asarray(center)
    return m


def _itk_affine(matrix_ras: np.ndarray) -> sitk.AffineTransform:
    """ITK transform (LPS points) of a 4x4 RAS point map."""
    m = LPS_FLIP @ np.asarray(matrix_ras, dtype=float) @ LPS_FLIP
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in m[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in m[:3, 3]])
    return tx


def _lps_geometry(affine: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """ITK origin, spacing and (orthonormalised) direction of a RAS voxel-to-world affine."""
    lps = LPS_FLIP @ np.asarray(affine, dtype=float)
    zooms = voxel_sizes(lps)
    u, _, vt = np.linalg.svd(lps[:3, :3] / zooms)
    return ([float(v) for v in lps[:3, 3]], [float(z) for z in zooms], [float(v) for v in (u @ vt).ravel()])


def _from_sitk_array(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def _sample(image: sitk.Image, grid: Grid, world_map: np.ndarray, factors: tuple[int, int, int] = (1, 1, 1),
            interpolator: int = sitk.sitkLinear, default: float = 0.0) -> np.ndarray:
    """Sample ``image`` on ``grid``; ``world_map`` (4x4) maps grid RAS points to image RAS points.

    With ``factors`` > 1 the grid is sub-sampled ``factors`` times along each voxel axis and the
    sub-samples averaged (box integration over the voxel extent). Returns an (x, y, z) array:
    float32 for linear interpolation, the image's type for nearest neighbour.
    """
    sub = np.eye(4)
    for k, n in enumerate(factors):
        sub[k, k] = 1.0 / n
        sub[k, 3] = -0.5 + 0.5 / n
    origin, spacing, direction = _lps_geometry(grid.affine @ sub)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s * n) for s, n in zip(grid.shape, factors)])
    f.SetOutputOrigin(origin)
    f.SetOutputSpacing(spacing)
    f.SetOutputDirection(direction)
    f.SetTransform(_itk_affine(world_map))
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default))
    f.SetOutputPixelType(sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else image.GetPixelID())
    out = f.Execute(image)
    if any(n > 1 for n in factors):
        if interpolator == sitk.sitkNearestNeighbor:
            arr = sitk.GetArrayViewFromImage(out)
            nx, ny, nz = grid.shape
            fx, fy, fz = factors
            return arr.reshape(nz, fz, ny, fy, nx, fx).max(axis=(1, 3, 5)).transpose(2, 1, 0)
        out = sitk.BinShrink(out, [int(n) for n in factors])
    return _from_sitk_array(out)


def _subsampling(zooms: np.ndarray) -> tuple[int, int, int]:
    """Sub-samples per voxel axis for box integration: 1 up to 1.5 mm, else 2-5.

    Thick axes of anisotropic voxels (>= 1.5 x the finest edge) get sub-samples every ~1 mm,
    the other axes every ~2 mm (the 1 mm maps are interpolated linearly in between).
    """
    finest = float(np.min(zooms))
    out = []
    for z in zooms:
        if z <= 1.5:
            out.append(1)
        else:
            step = 1.0 if z >= 1.5 * finest else 2.0
            out.append(int(min(5, max(2, math.ceil(z / step - 1e-6)))))
    return tuple(out)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# the atlas (MNI maps) and the head model: subject independent, cached per process


@dataclass(frozen=True)
class _Atlas:
    affine: np.ndarray            # MNI 1 mm grid (RAS)
    gm: np.ndarray                # probabilities 0..1, (x, y, z), Fortran order
    wm: np.ndarray
    env_sdf: np.ndarray           # signed distance (mm) to the brain envelope, < 0 inside
    choroid: np.ndarray           # choroid plexus fraction (inside the lateral ventricles)
    vent_dist_2mm: np.ndarray     # distance (mm) to the lateral ventricles, every 2nd voxel
    centroid: np.ndarray          # brain (GM + WM) centroid, RAS mm
    head_affine: np.ndarray       # 2 mm head-model grid (RAS)
    head_sdf: np.ndarray          # signed distance to the brain envelope on the head grid
    canal_y: float                # y (mm) of the spinal canal axis (x = 0)
    brain_box: tuple[slice, slice, slice]   # bounding box of the envelope and tissue, plus 6 voxels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]


_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _load_mni() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """nilearn's bundled MNI152 2009a T1, GM and WM maps at 1 mm, as 0..1 float32 and the affine.

    The files are read straight from nilearn's package data (what ``load_mni152_*_template``
    loads, without importing nilearn.datasets); the nilearn functions are the fallback.
    """
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" if spec and \
        spec.submodule_search_locations else None
    images: dict[str, Any] = {}
    if folder is not None and all((folder / f).is_file() for f in _MNI_FILES.values()):
        images = {k: nib.load(str(folder / f)) for k, f in _MNI_FILES.items()}
    else:  # pragma: no cover - other nilearn layouts
        from nilearn import datasets

        images = {"t1": datasets.load_mni152_template(resolution=1),
                  "gm": datasets.load_mni152_gm_template(resolution=1),
                  "wm": datasets.load_mni152_wm_template(resolution=1)}
    out = {}
    for k, img in images.items():
        data = np.asarray(img.dataobj, dtype=np.float32, order="F")
        if float(data.max()) > 1.5:  # uint8 0..255
            data = data / np.float32(255.0)
        out[k] = np.asfortranarray(np.clip(data, 0.0, 1.0))
    return out, np.asarray(images["t1"].affine, dtype=float)


def _signed_distance(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Signed distance (mm) to the boundary of ``mask`` (half-way between voxels): < 0 inside."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))
    img.SetSpacing([float(spacing_mm)] * 3)
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return (sitk.GetArrayFromImage(dist).transpose(2, 1, 0) - 0.5 * spacing_mm).astype(np.float32)


def _closed_envelope(region: np.ndarray, spacing_mm: float, radius_mm: float) -> np.ndarray:
    """Morphological closing (by distance maps), hole filling and light smoothing."""
    dilated = _signed_distance(region, spacing_mm) <= radius_mm
    closed = (_signed_distance(dilated, spacing_mm) < -radius_mm) | region
    closed = ndi.binary_fill_holes(closed)
    return ndi.gaussian_filter(closed.astype(np.float32), 1.0) > 0.5


@functools.lru_cache(maxsize=1)
def _atlas() -> _Atlas:
    """MNI maps plus what the phantom derives from them: envelope, ventricles, choroid plexus."""
    maps, affine = _load_mni()
    t1, gm, wm = maps["t1"], maps["gm"], maps["wm"]
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError("unexpected MNI template grid; the phantom expects nilearn's 1 mm RAS grid")
    total = gm + wm
    over = total > 1.0
    if over.any():
        gm[over] /= total[over]
        wm[over] /= total[over]
    parenchyma = gm + wm

    # Brain envelope: the template region, closed (6 mm) and filled, on the 2 mm head grid.
    head_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    head_affine[:3, 3] = _HEAD_ORIGIN
    offset = (affine[:3, 3] - np.asarray(_HEAD_ORIGIN)) / 2.0        # head index of MNI voxel 0
    region_1mm = (t1 > 0.01) | (parenchyma > 0.1)
    region = np.zeros(_HEAD_SHAPE, dtype=bool)
    lo = np.ceil(offset).astype(int)                                 # MNI voxels on even head indices
    start = ((lo - offset) * 2).astype(int)
    sub = region_1mm[start[0]::2, start[1]::2, start[2]::2]
    region[lo[0]:lo[0] + sub.shape[0], lo[1]:lo[1] + sub.shape[1], lo[2]:lo[2] + sub.shape[2]] = sub
    head_sdf = _signed_distance(_closed_envelope(region, 2.0, 6.0), 2.0)
    env_sdf = _sample(to_sitk(head_sdf, head_affine), Grid(t1.shape, affine), np.eye(4), default=100.0)

    # Lateral ventricles (deep CSF, off the midline) and choroid plexus in their atria.
    csf = np.clip(_inside(env_sdf) - parenchyma, 0.0, 1.0)
    labels, n = ndi.label((csf > 0.6) & (env_sdf < -12.0), structure=CONNECTIVITY)
    ventricles = np.zeros(t1.shape, dtype=bool)
    if n:
        sizes = np.bincount(labels.ravel(order="K"), minlength=n + 1)
        keep = np.zeros(n + 1, dtype=bool)
        for i, box in enumerate(ndi.find_objects(labels), start=1):
            x_mm = affine[0, 3] + 0.5 * (box[0].start + box[0].stop - 1)
            keep[i] = sizes[i] > 2000 and abs(x_mm) > 5.0
        ventricles = keep[labels]
    vent2 = ventricles[::2, ::2, ::2]
    vent_dist_2mm = np.maximum(_signed_distance(vent2, 2.0), 0.0) if vent2.any() else \
        np.full(vent2.shape, 50.0, dtype=np.float32)
    xs, ys, zs = (affine[k, 3] + np.arange(t1.shape[k], dtype=np.float32) for k in range(3))
    choroid = np.zeros(t1.shape, dtype=np.float32, order="F")
    box = (np.abs(xs) > 8)[:, None, None] & ((ys >= -52) & (ys <= -28))[None, :, None] & \
        ((zs >= 2) & (zs <= 26))[None, None, :]
    seeds = ventricles & box
    if seeds.any():
        bb = ndi.find_objects(seeds.astype(np.uint8))[0]
        bb = tuple(slice(max(0, b.start - 3), b.stop + 3) for b in bb)
        blobs = _random_field(np.random.default_rng(20250115), seeds[bb].shape, 2.0) > 0.2
        ch = ndi.gaussian_filter((seeds[bb] & blobs).astype(np.float32), 0.8)
        choroid[bb] = np.clip(np.minimum(ch * 1.5, csf[bb]), 0.0, 1.0)

    w = float(parenchyma.sum(dtype=np.float64))
    centroid = np.array([float((parenchyma.sum(axis=tuple(a for a in range(3) if a != k), dtype=np.float64)
                                * v).sum()) / w for k, v in enumerate((xs, ys, zs))])
    bottom = parenchyma[:, :, :6] > 0.3
    canal_y = float(affine[1, 3] + np.argwhere(bottom)[:, 1].mean()) if bottom.any() else -45.0
    support = (env_sdf < 1.0) | (parenchyma > 0)
    extent = [np.flatnonzero(support.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    brain_box = tuple(slice(max(0, int(v[0]) - 6), min(n, int(v[-1]) + 7)) for v, n in zip(extent, t1.shape))
    return _Atlas(affine=affine, gm=gm, wm=wm, env_sdf=env_sdf, choroid=choroid, vent_dist_2mm=vent_dist_2mm,
                  centroid=centroid, head_affine=head_affine, head_sdf=head_sdf, canal_y=canal_y,
                  brain_box=brain_box)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Head:
    maps: dict[str, sitk.Image]   # per contrast: head signal (everything but brain tissue), 2 mm grid
    icv: sitk.Image               # intracranial fraction, 2 mm grid
    icv_mm3: float                # in MNI space


@functools.lru_cache(maxsize=2)
def _head(skull: bool) -> _Head:
    """Skull, scalp, neck, dura, sinuses, falx and surface vessels around the MNI brain (2 mm grid).

    Built from distance shells of the brain envelope: intracranial space up to 3 mm outside it
    (subarachnoid CSF, dura in its outer mm), skull 5-7 mm (diploic marrow in its middle third),
    scalp 6 mm (skin, subcutaneous fat, galea), smoothly joined to a neck with muscle, fat,
    vertebrae, spinal canal and cord. Without ``skull`` only the intracranial part is kept.
    Fractions are partial volumes of the 2 mm voxels; acquisitions interpolate them.
    """
    atlas = _atlas()
    h = 2.0
    sdf = atlas.head_sdf
    nx, ny, nz = _HEAD_SHAPE
    x = (_HEAD_ORIGIN[0] + h * np.arange(nx, dtype=np.float32))[:, None, None]
    y = (_HEAD_ORIGIN[1] + h * np.arange(ny, dtype=np.float32))[None, :, None]
    z = (_HEAD_ORIGIN[2] + h * np.arange(nz, dtype=np.float32))[None, None, :]
    rng = np.random.default_rng(7)

    def inside(d: np.ndarray) -> np.ndarray:
        return _inside(d / np.float32(h))

    head_grid = Grid(_HEAD_SHAPE, atlas.head_affine)
    parenchyma = _sample(to_sitk(atlas.gm + atlas.wm, atlas.affine), head_grid, np.eye(4))
    sulcal_csf = np.clip(inside(sdf) - parenchyma, 0.0, 1.0)
    del parenchyma

    below = inside(z - _FORAMEN_Z)
    r_canal = np.sqrt(x ** 2 + (y - atlas.canal_y) ** 2)
    canal_all = inside(r_canal - 8.0) * below if skull else np.zeros(_HEAD_SHAPE, dtype=np.float32)
    icv0 = inside(sdf - _ICV_MARGIN_MM)
    icv = icv0 * (1.0 - canal_all)

    # Intracranial structures that enhance on ce-T1w (the Gd+ detector's false positives).
    shell = np.clip(inside(sdf - _ICV_MARGIN_MM) - inside(sdf - 0.5), 0.0, 1.0)
    sss = inside(np.abs(x) - 4.0) * inside(-(z + 5.0))
    transverse = inside(np.abs(z + 8.0) - 3.5) * inside(y + 65.0) * inside(3.0 - np.abs(x))
    sinus = np.clip(sss + transverse, 0.0, 1.0) * shell * icv
    dura = np.clip(inside(sdf - _ICV_MARGIN_MM) - inside(sdf - (_ICV_MARGIN_MM - 1.0)), 0.0, 1.0) * icv * (1.0 - sinus)
    falx = (np.clip(np.float32(1.6) - np.abs(x), 0.0, 1.0) / np.float32(h) * inside(5.0 - z) * inside(sdf - 2.0)
            * sulcal_csf * (1.0 - sinus) * inside(y - 60.0))
    n1 = _random_field(rng, _HEAD_SHAPE, 4.0)
    n2 = _random_field(rng, _HEAD_SHAPE, 4.0)
    tube = np.exp(-(n1 ** 2 + n2 ** 2) / np.float32(2 * 0.2 ** 2))
    vessel = (0.8 * tube * sulcal_csf * inside(sdf - 1.5) * inside(-(sdf + 12.0))).astype(np.float32)
    del n1, n2, tube, sulcal_csf
    special = dura + sinus + falx + vessel
    scale = np.where(special > icv, icv / np.maximum(special, 1e-6), 1.0).astype(np.float32)
    dura, sinus, falx, vessel = dura * scale, sinus * scale, falx * scale, vessel * scale

    tissues: dict[str, np.ndarray] = {"csf": icv, "dura": dura + falx, "sinus": sinus, "vessel": vessel}
    if skull:
        thickness = 5.0 + 2.0 * np.clip(0.5 + 0.25 * _random_field(rng, _HEAD_SHAPE, 8.0), 0, 1)
        skull_out = inside(sdf - (_ICV_MARGIN_MM + thickness))
        skull_frac = np.clip(skull_out - icv0, 0.0, 1.0) * (1.0 - canal_all)
        marrow = np.clip(inside(sdf - (_ICV_MARGIN_MM + 2 * thickness / 3))
                         - inside(sdf - (_ICV_MARGIN_MM + thickness / 3)), 0.0, 1.0) * (1.0 - canal_all)
        bone = np.clip(skull_frac - marrow, 0.0, 1.0)
        d_head = sdf - (_ICV_MARGIN_MM + thickness + _SCALP_MM)
        ellipse = (np.sqrt((x / 55.0) ** 2 + ((y - atlas.canal_y - 25.0) / 58.0) ** 2) - 1.0) * 55.0
        d_neck = np.maximum(ellipse, z + 45.0)
        k = np.float32(20.0)
        hmix = np.clip(0.5 + 0.5 * (d_neck - d_head) / k, 0.0, 1.0)
        d_outer = (d_neck * (1 - hmix) + d_head * hmix - k * hmix * (1 - hmix)).astype(np.float32)
        head = inside(d_outer)
        cord = inside(r_canal - 5.0) * below
        canal_csf = np.clip(canal_all - cord, 0.0, 1.0)
        vertebra = np.clip((inside(r_canal - 13.0) - inside(r_canal - 8.0))
                           + inside(np.sqrt(x ** 2 + (y - atlas.canal_y - 22.0) ** 2) - 11.0), 0.0, 1.0)
        discs = np.clip(np.abs(np.sin(np.pi * (z + 80.0) / 18.0)) * 4.0 - 0.6, 0.0, 1.0)  # 18 mm levels
        vertebra = vertebra * discs * inside(z + 80.0) * (1.0 - canal_all) * (1.0 - skull_out)
        rest = np.clip(head - np.clip(icv + skull_frac + canal_all + vertebra, 0.0, 1.0), 0.0, 1.0)
        depth = -d_outer
        skin = rest * inside(depth - 1.5)
        fat = rest * np.clip(inside(depth - 5.0) - inside(depth - 1.5), 0.0, 1.0)
        muscle = np.clip(rest - skin - fat, 0.0, 1.0)
        tissues.update(bone=bone, marrow=marrow + vertebra, skin=skin, fat=fat, muscle=muscle, cord=cord)
        tissues["csf"] = icv + canal_csf

    maps = {}
    for contrast, signal in TISSUE_SIGNAL.items():
        total = np.zeros(_HEAD_SHAPE, dtype=np.float32)
        for name, frac in tissues.items():
            value = signal[name] - (signal["csf"] if name in ("dura", "sinus", "vessel") else 0.0)
            total += np.float32(value) * frac
        maps[contrast] = to_sitk(total, atlas.head_affine)
    return _Head(maps=maps, icv=to_sitk(icv.astype(np.float32), atlas.head_affine),
                 icv_mm3=float(icv.sum(dtype=np.float64)) * h ** 3)


# --------------------------------------------------------------------------------------------
# the subject: scaled, warped brain


@dataclass
class _SubjectAnatomy:
    scales: np.ndarray            # anatomy size / MNI size per axis
    warp_mm: float
    gm: np.ndarray                # brain space (MNI grid), warped
    wm: np.ndarray
    parenchyma: np.ndarray
    env: np.ndarray               # brain envelope fraction
    base: dict[str, np.ndarray]   # brain signal per contrast minus the CSF it displaces, no lesions
    brain_mm3: float              # baseline parenchyma volume in anatomy space
    icv_mm3: float

    def to_mni(self, centroid: np.ndarray) -> np.ndarray:
        """4x4 RAS map from anatomy space to MNI (and baseline brain) space."""
        return _scaling(centroid, 1.0 / self.scales)


def _warp(arrays: dict[str, np.ndarray], affine: np.ndarray, rng: np.random.Generator,
          amplitude_mm: float) -> dict[str, np.ndarray]:
    """Apply one smooth random displacement (at most ``amplitude_mm``) to maps on one grid.

    The displacement is a Gaussian-smoothed random field on a 12 mm lattice, interpolated to the
    grid; ``warped(b) = map(b + u(b))``.
    """
    shape = next(iter(arrays.values())).shape
    spacing = 12.0
    cshape = tuple(int(math.ceil(s / spacing)) + 3 for s in shape)
    disp = np.stack([ndi.gaussian_filter(rng.standard_normal(cshape), 1.0) for _ in range(3)], axis=-1)
    norm = float(np.sqrt((disp ** 2).sum(axis=-1)).max())
    if amplitude_mm <= 0 or norm == 0:
        return arrays
    disp *= amplitude_mm / norm
    disp[..., :2] *= -1.0                                   # RAS -> LPS displacement vectors
    caff = np.eye(4)
    caff[:3, :3] *= spacing
    caff[:3, 3] = affine[:3, 3] - spacing
    coarse = sitk.GetImageFromArray(np.ascontiguousarray(disp.transpose(2, 1, 0, 3)), isVector=True)
    origin, sp, direction = _lps_geometry(caff)
    coarse.SetOrigin(origin)
    coarse.SetSpacing(sp)
    coarse.SetDirection(direction)
    reference = to_sitk(np.zeros(shape, dtype=np.uint8), affine)
    dense = sitk.Resample(coarse, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    out = {}
    for name, arr in arrays.items():
        warped = sitk.Warp(to_sitk(arr, affine), dense, sitk.sitkLinear, reference.GetSize(), reference.GetOrigin(),
                           reference.GetSpacing(), reference.GetDirection())
        out[name] = _from_sitk_array(warped)
    return out


def _subject_anatomy(options: PhantomOptions, rng: np.random.Generator, head: _Head) -> _SubjectAnatomy:
    """The subject's brain: MNI maps warped (brain bounding box only) and base signal maps."""
    atlas = _atlas()
    scales = rng.uniform(0.95, 1.05, size=3)
    bb = atlas.brain_box
    box_affine = atlas.affine.copy()
    box_affine[:3, 3] = atlas.affine[:3, :3] @ [b.start for b in bb] + atlas.affine[:3, 3]
    env_full = _inside(atlas.env_sdf)
    cropped = {"gm": atlas.gm[bb], "wm": atlas.wm[bb], "env": env_full[bb], "choroid": atlas.choroid[bb]}
    cropped = _warp({k: np.asfortranarray(v) for k, v in cropped.items()}, box_affine, rng, options.warp_mm)
    maps = {}
    for name, arr in cropped.items():
        full = np.zeros(atlas.shape, dtype=np.float32, order="F")
        full[bb] = np.clip(arr, 0.0, 1.0)
        maps[name] = full
    gm, wm = maps["gm"], maps["wm"]
    parenchyma = gm + wm
    base = {}
    for c, sig in TISSUE_SIGNAL.items():
        b = np.zeros(gm.shape, dtype=np.float32, order="F")
        b[bb] = (np.float32(sig["gm"] - sig["csf"]) * cropped["gm"] + np.float32(sig["wm"] - sig["csf"]) * cropped["wm"]
                 + np.float32(sig["choroid"] - sig["csf"]) * cropped["choroid"])
        base[c] = b
    det = float(np.prod(scales))
    return _SubjectAnatomy(scales=scales, warp_mm=options.warp_mm, gm=gm, wm=wm, parenchyma=parenchyma,
                           env=maps["env"], base=base, brain_mm3=float(parenchyma.sum(dtype=np.float64)) * det,
                           icv_mm3=head.icv_mm3 * det)


# --------------------------------------------------------------------------------------------
# sessions, poses and grids


@dataclass(frozen=True)
class _Visit:
    label: str
    key: int                     # random-stream key (design index; 100 + source for a rescan)
    state: int                   # design state (anatomy) shown: the visit index, or the rescanned one
    acq_time: datetime
    days: int
    years: float
    rescan_of: str | None = None


def _visits(options: PhantomOptions) -> list[_Visit]:
    out = []
    for k, label in enumerate(session_labels(options.sessions)):
        t = _add_months(BASELINE_ACQ_TIME, MONTHS_PER_SESSION * k)
        days = (t - BASELINE_ACQ_TIME).days
        out.append(_Visit(label, k, k, t, days, days / DAYS_PER_YEAR))
    if options.rescan_of is not None:
        src = next(v for v in out if v.label == options.rescan_of)
        rescan = _Visit(f"{src.label}R", 100 + src.key, src.state, src.acq_time + RESCAN_DELAY, src.days,
                        src.years, rescan_of=src.label)
        out.insert(out.index(src) + 1, rescan)
    return out


@dataclass(frozen=True)
class _Acquisition:
    contrast: str
    grid: Grid
    pose: np.ndarray              # 4x4 RAS: anatomy -> scanner
    factors: tuple[int, int, int]


def _pose(rng: np.random.Generator, center: np.ndarray, max_rot_deg: float, max_trans_mm: float,
          ball: bool = False) -> np.ndarray:
    """A random rigid pose about ``center``: rotation about a random axis, random translation."""
    rot = _rotation(_random_axis(rng), float(rng.uniform(-max_rot_deg, max_rot_deg)))
    if ball:
        trans = _random_axis(rng) * float(rng.uniform(0.0, max_trans_mm))
    else:
        trans = rng.uniform(-max_trans_mm, max_trans_mm, size=3)
    return _rigid(rot, center, trans)


def _grid(rng: np.random.Generator, voxel_mm: tuple[float, float, float], fov_mm: tuple[float, float, float],
          orientation: str) -> Grid:
    """An acquisition grid covering the head, centred near :data:`FOV_CENTER_RAS`."""
    if orientation == "RAS":
        direction = np.eye(3)
    else:
        direction = np.diag([-1.0, -1.0, 1.0])
        if orientation == "oblique":
            angle = float(rng.uniform(10.0, 20.0)) * (1 if rng.random() < 0.5 else -1)
            direction = _rotation(_random_axis(rng), angle) @ direction
    vox = np.asarray(voxel_mm, dtype=float)
    shape = tuple(max(1, int(round(f / v))) for f, v in zip(fov_mm, vox))
    center = np.asarray(FOV_CENTER_RAS) + rng.uniform(-2.0, 2.0, size=3)
    affine = np.eye(4)
    affine[:3, :3] = direction * vox
    affine[:3, 3] = center - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    affine = affine.astype(np.float32).astype(np.float64)  # exactly what the NIfTI header stores
    return Grid(shape=shape, affine=affine)  # type: ignore[arg-type]


def _acquisitions(options: PhantomOptions, seed: int, subject: int, visit: _Visit,
                  centroid: np.ndarray) -> dict[str, _Acquisition]:
    base_res = _as_triple(options.resolution_mm)
    visit_pose = _pose(np.random.default_rng([seed, subject, 3, visit.key]), centroid,
                       options.max_rotation_deg, options.max_translation_mm)
    out = {}
    for contrast in [c for c in CONTRASTS if c in options.contrasts]:
        ci = CONTRASTS.index(contrast)
        pose = visit_pose
        if options.intra_session_motion:
            rng = np.random.default_rng([seed, subject, 3, visit.key, ci])
            posed_center = (visit_pose @ np.append(centroid, 1.0))[:3]
            pose = _pose(rng, posed_center, 2.0, 2.0, ball=True) @ visit_pose
        if options.per_contrast_grids:
            vox = tuple(r * f for r, f in zip(base_res, CONTRAST_VOXEL_FACTOR[contrast]))
            fov = CONTRAST_FOV_MM[contrast]
        else:
            vox, fov = base_res, DEFAULT_FOV_MM
        grid_rng = np.random.default_rng([seed, subject, 4, visit.key, ci])
        grid = _grid(grid_rng, vox, fov, options.orientation)  # type: ignore[arg-type]
        out[contrast] = _Acquisition(contrast, grid, pose, _subsampling(grid.zooms))
    return out


def _reference(contrasts: tuple[str, ...] | list[str]) -> str:
    for c in REFERENCE_CONTRASTS:
        if c in contrasts:
            return c
    raise ValueError("contrasts must include FLAIR or T2w")


# --------------------------------------------------------------------------------------------
# lesions: design (schedule), candidates, placement


@dataclass
class _Slot:
    """One designed lesion: its volume factor per design state (0 = absent) and enhancement."""

    id: int
    factors: list[float]
    enhancing: list[bool]
    severity: float               # 0..1: brighter on FLAIR/T2w, darker on T1w
    enhancing_signal: float
    ring_preference: bool
    change_state: int | None = None

    @property
    def first(self) -> int:
        return next(k for k, f in enumerate(self.factors) if f > 0)

    def present(self, state: int) -> bool:
        return self.factors[state] > 0

    def status(self, state: int, previous: int | None) -> str:
        """absent / new / stable / enlarging / shrinking at ``state`` versus the ``previous`` state."""
        if not self.present(state):
            return "absent"
        if previous is None:
            return "stable"
        if not self.present(previous):
            return "new"
        ratio = self.factors[state] / self.factors[previous]
        if ratio >= 1.5:
            return "enlarging"
        if ratio <= 0.8:
            return "shrinking"
        return "stable"


def _schedule(options: PhantomOptions, n_states: int, rng: np.random.Generator) -> list[_Slot]:
    """Which lesions exist, grow, shrink and enhance at each design state."""
    slots: list[_Slot] = []

    def add(first: int) -> None:
        slots.append(_Slot(id=len(slots) + 1, factors=[0.0] * first + [1.0] * (n_states - first),
                           enhancing=[False] * n_states, severity=float(rng.uniform()),
                           enhancing_signal=float(rng.uniform(*ENHANCING_SIGNAL)),
                           ring_preference=bool(rng.random() < 0.35)))

    for _ in range(options.n_baseline_lesions):
        add(0)
    for k in range(1, n_states):
        for _ in range(options.new_per_followup):
            add(k)
        pool = [s for s in slots if s.first < k and s.change_state is None]
        order = [pool[i] for i in rng.permutation(len(pool))]
        for count, low_high in ((options.enlarging_per_followup, _LESION_GROWTH),
                                (options.shrinking_per_followup, _LESION_SHRINK)):
            for s in order[:count]:
                f = float(rng.uniform(*low_high))
                s.factors = s.factors[:k] + [f * v for v in s.factors[k:]]
                s.change_state = k
            order = order[count:]
    for k in range(n_states):
        present = [s for s in slots if s.present(k)]
        new = [s for s in present if s.first == k and k > 0]
        grown = [s for s in present if s.change_state == k and s.status(k, k - 1) == "enlarging"]
        rest = [s for s in present if s not in new and s not in grown]
        ordered = ([new[i] for i in rng.permutation(len(new))] + grown
                   + [rest[i] for i in rng.permutation(len(rest))])
        for s in ordered[:options.enhancing_per_session]:
            s.enhancing[k] = True
    return slots


@dataclass(frozen=True)
class _Candidate:
    key: str
    frac: np.ndarray              # lesion fraction on a local 1 mm box of the brain grid
    lo: tuple[int, int, int]      # brain-grid index of the box's first voxel
    source: str


@dataclass(frozen=True)
class _Placed:
    slot: int
    candidate: _Candidate
    center: np.ndarray            # brain-grid index of the lesion centroid
    volume_mm3: float             # brain-space volume (lesion fraction x parenchyma)


def _ellipsoid(rng: np.random.Generator, center: np.ndarray, volume_mm3: float
               ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A soft-edged random ellipsoid of about ``volume_mm3`` centred at a brain-grid index."""
    r_eq = (3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    q = rng.uniform(0.8, 1.3, size=2)
    axes = r_eq * np.array([q[0], q[1], 1.0 / (q[0] * q[1])])
    rot = _rotation(_random_axis(rng), float(rng.uniform(0, 180)))
    half = int(math.ceil(axes.max())) + 2
    c0 = np.floor(center).astype(int)
    lo = c0 - half
    idx = np.indices((2 * half + 1,) * 3, dtype=np.float32).reshape(3, -1).T + lo - center
    local = idx @ rot / axes
    rho = np.sqrt((local ** 2).sum(axis=1))
    frac = np.clip(0.5 - (rho - 1.0) * r_eq, 0.0, 1.0).reshape((2 * half + 1,) * 3).astype(np.float32)
    return frac, tuple(int(v) for v in lo)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _mask_components(path: str) -> tuple[tuple[np.ndarray, tuple[int, int, int]], ...]:
    """26-connected components (10-2000 mm^3) of a real lesion mask, on the nilearn MNI grid.

    Each is a binary crop and the grid index of its first voxel. The FSL MNI grid is mapped onto
    the nilearn grid by world coordinates (nearest neighbour: both are 1 mm MNI RAS grids).
    """
    from msimaging.io import read_mask

    atlas = _atlas()
    mask, affine = read_mask(path)
    resampled = _sample(to_sitk(mask.astype(np.uint8), affine), Grid(atlas.shape, atlas.affine), np.eye(4),
                        interpolator=sitk.sitkNearestNeighbor) > 0
    labels, n = ndi.label(resampled, structure=CONNECTIVITY)
    out = []
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        crop = labels[box] == i
        if 10 <= crop.sum() <= _MAX_LESION_MM3:
            out.append((crop, tuple(int(b.start) for b in box)))
    return tuple(out)  # type: ignore[return-value]


class _Candidates:
    """Lesion shapes: real components from lesion masks, else random periventricular ellipsoids."""

    def __init__(self, rng: np.random.Generator, anatomy: _SubjectAnatomy, masks_dir: Path | None):
        self.rng = rng
        self.anatomy = anatomy
        self.files = sorted(Path(masks_dir).glob("*_label-lesion_mask.nii*")) if masks_dir else []
        if masks_dir and not self.files:
            log.warning("no *_label-lesion_mask.nii.gz in %s; using ellipsoid lesions", masks_dir)
        self.real: list[_Candidate] = []
        self.file_order = [self.files[i] for i in rng.permutation(len(self.files))]
        atlas = _atlas()
        ok = ((anatomy.wm >= 0.9) & (anatomy.parenchyma >= 0.97) & (atlas.env_sdf < -8.0))
        points = np.argwhere(ok)
        coarse = np.minimum(points // 2, np.asarray(atlas.vent_dist_2mm.shape) - 1)
        weights = 0.25 + np.exp(-atlas.vent_dist_2mm[tuple(coarse.T)] / 6.0)
        self.points = points
        self.weights = weights / weights.sum()
        self._batch: list[int] = []
        self.n_ellipsoids = 0

    def _center(self) -> np.ndarray:
        if not self._batch:
            self._batch = self.rng.choice(len(self.points), size=2048, p=self.weights).tolist()
        return self.points[self._batch.pop()] + self.rng.uniform(-0.5, 0.5, 3)

    def _load_next_file(self) -> bool:
        if not self.file_order:
            return False
        path = self.file_order.pop(0)
        nx = _atlas().shape[0]
        comps = _mask_components(str(path))
        for j in self.rng.permutation(len(comps)):
            crop, lo = comps[j]
            if self.rng.random() < 0.5:  # mirror left-right (the MNI grid is symmetric about x = 0)
                crop = crop[::-1]
                lo = (nx - lo[0] - crop.shape[0], lo[1], lo[2])
            padded = np.pad(crop.astype(np.float32), 2)
            frac = np.clip(ndi.gaussian_filter(padded, 0.5), 0, 1).astype(np.float32)
            self.real.append(_Candidate(f"{path.name.split('_')[0]}#{int(j)}{'m' if lo != comps[j][1] else ''}",
                                        frac, (lo[0] - 2, lo[1] - 2, lo[2] - 2), path.name.split("_")[0]))
        return True

    def draw(self, min_mm3: float, max_mm3: float, skip: set[str], max_real: int = 300) -> Iterator[_Candidate]:
        """Candidates of about the wanted volume: real shapes first (when given), then ellipsoids."""
        i = found = 0
        while self.files and found < max_real:
            while i >= len(self.real):
                if not self._load_next_file():
                    break
            if i >= len(self.real):
                break
            cand = self.real[i]
            i += 1
            if cand.key not in skip and 0.8 * min_mm3 <= float(cand.frac.sum()) <= 1.2 * max_mm3:
                found += 1
                yield cand
        lo_v = 1.15 * min_mm3
        if lo_v > max_mm3:
            return
        hi_v = min(max_mm3, max(1.5 * lo_v, 8.0 * lo_v))
        while True:
            self.n_ellipsoids += 1
            vol = float(math.exp(self.rng.uniform(math.log(lo_v), math.log(hi_v))))
            frac, lo = _ellipsoid(self.rng, self._center(), vol)
            yield _Candidate(f"ellipsoid#{self.n_ellipsoids}", frac, lo, "ellipsoid")


def _scaled(frac: np.ndarray, lo: tuple[int, int, int], center: np.ndarray, linear: float
            ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A lesion box scaled by ``linear`` about ``center`` (brain-grid index): new box and origin."""
    if abs(linear - 1.0) < 1e-9:
        return frac, lo
    lo_a = np.asarray(lo, dtype=float)
    hi_a = lo_a + np.asarray(frac.shape) - 1
    new_lo = np.floor(center + linear * (lo_a - center)).astype(int) - 1
    new_hi = np.ceil(center + linear * (hi_a - center)).astype(int) + 1
    shape = tuple(int(v) for v in new_hi - new_lo + 1)
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1) + new_lo[:, None]
    src = center[:, None] + (idx - center[:, None]) / linear - lo_a[:, None]
    out = ndi.map_coordinates(frac, src, order=1, mode="constant", cval=0.0).reshape(shape)
    return out.astype(np.float32), tuple(int(v) for v in new_lo)  # type: ignore[return-value]


def _box(lo: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    return tuple(slice(l, l + s) for l, s in zip(lo, shape))  # type: ignore[return-value]


def _in_bounds(lo: tuple[int, int, int], shape: tuple[int, ...], grid_shape: tuple[int, ...], margin: int = 2) -> bool:
    return all(l >= margin and l + s <= g - margin for l, s, g in zip(lo, shape, grid_shape))


@dataclass
class _Requirements:
    vmin_mm3: float               # smallest lesion volume on the coarsest grid
    sep_mm: float                 # smallest gap between lesions
    coarse_edge_mm: float


def _slot_limits(slot: _Slot, req: _Requirements) -> tuple[float, float, float]:
    """(min, max) base volume of a slot and its largest linear scale."""
    present = [f for f in slot.factors if f > 0]
    return req.vmin_mm3 / min(present), _MAX_LESION_MM3 / max(max(present), 1.0), max(present) ** (1 / 3)


def _place(slots: list[_Slot], kept: dict[int, _Placed], banned: set[str], pool: _Candidates,
           anatomy: _SubjectAnatomy, req: _Requirements, max_tries: int = 700) -> dict[int, _Placed]:
    """Fill the slots without a lesion with candidates that fit (size, white matter, separation).

    ``blocked`` holds every voxel within ``req.sep_mm`` of a placed lesion at its largest size,
    so a candidate (at its own largest size) only has to avoid it.
    """
    atlas = _atlas()
    shape = anatomy.gm.shape
    blocked = np.zeros(shape, dtype=bool)
    placed = dict(kept)
    r = int(math.ceil(req.sep_mm)) + 1

    def support_at_max(p: _Candidate, center: np.ndarray, linear: float) -> tuple[np.ndarray, tuple[int, int, int]]:
        arr, lo = _scaled(p.frac, p.lo, center, linear)
        return arr > 0.02, lo

    def block(sup: np.ndarray, lo: tuple[int, int, int]) -> None:
        big_lo = [max(0, v - r) for v in lo]
        big_hi = [min(g, v + n + r) for v, n, g in zip(lo, sup.shape, shape)]
        big = tuple(slice(a, b) for a, b in zip(big_lo, big_hi))
        local = np.zeros(tuple(b - a for a, b in zip(big_lo, big_hi)), dtype=bool)
        local[_box(tuple(v - b for v, b in zip(lo, big_lo)), sup.shape)] = sup  # type: ignore[arg-type]
        blocked[big] |= ndi.distance_transform_edt(~local) <= req.sep_mm

    for sid, p in kept.items():
        slot = next(s for s in slots if s.id == sid)
        block(*support_at_max(p.candidate, p.center, _slot_limits(slot, req)[2]))
    used = {p.candidate.key for p in placed.values()} | banned
    # When room is short, changing and new lesions (what activity endpoints measure) go first.
    order = sorted((s for s in slots if s.id not in placed),
                   key=lambda s: (s.change_state is None, s.first == 0, -_slot_limits(s, req)[0]))
    for slot in order:
        vmin, vmax, linear = _slot_limits(slot, req)
        if vmin > vmax:
            log.info("lesion %d cannot fit the grids (needs %.0f mm3)", slot.id, vmin)
            continue
        for tries, cand in enumerate(pool.draw(vmin, vmax, used)):
            if tries >= max_tries:
                log.info("no room for lesion %d", slot.id)
                break
            if not _in_bounds(cand.lo, cand.frac.shape, shape, 4):
                continue
            box = _box(cand.lo, cand.frac.shape)
            inside = cand.frac > 0.5
            if not inside.any() or blocked[box][inside].any():
                continue
            par = anatomy.parenchyma[box]
            vol = float((cand.frac * par).sum())
            if not vmin <= vol <= vmax:
                continue
            if par[inside].mean() < 0.9 or anatomy.wm[box][inside].mean() < 0.5:
                continue
            center = np.asarray(ndi.center_of_mass(cand.frac)) + np.asarray(cand.lo)
            ci = tuple(int(round(v)) for v in center)
            if anatomy.wm[ci] < 0.5 or atlas.env_sdf[ci] > -5.0:
                continue
            sup, lo = support_at_max(cand, center, linear)
            if not _in_bounds(lo, sup.shape, shape) or blocked[_box(lo, sup.shape)][sup].any():
                continue
            block(sup, lo)
            placed[slot.id] = _Placed(slot.id, cand, center, vol)
            used.add(cand.key)
            break
    return placed


# --------------------------------------------------------------------------------------------
# per-state brain maps


@dataclass
class _Lesion:
    slot: _Slot
    lo: tuple[int, int, int]
    frac: np.ndarray              # lesion fraction (of parenchyma) in its box
    enhancing: np.ndarray | None  # enhancing fraction (whole lesion or ring), None if not enhancing
    pattern: str | None


@dataclass
class _State:
    lesion: np.ndarray            # lesion fraction of parenchyma, brain grid
    ids: np.ndarray               # uint16 design id on each lesion's support
    lesions: list[_Lesion]


def _state(k: int, slots: list[_Slot], placed: dict[int, _Placed], anatomy: _SubjectAnatomy,
           req: _Requirements) -> _State:
    shape = anatomy.gm.shape
    lesion = np.zeros(shape, dtype=np.float32, order="F")
    ids = np.zeros(shape, dtype=np.uint16, order="F")
    items = []
    for slot in slots:
        p = placed.get(slot.id)
        if p is None or not slot.present(k):
            continue
        arr, lo = _scaled(p.candidate.frac, p.candidate.lo, p.center, slot.factors[k] ** (1 / 3))
        box = _box(lo, arr.shape)
        lesion[box] = np.maximum(lesion[box], arr)
        ids[box][arr > 0.01] = slot.id
        enh, pattern = None, None
        if slot.enhancing[k]:
            inside = arr > 0.5
            r_eq = (3 * float(arr.sum()) / (4 * math.pi)) ** (1 / 3)
            width = max(1.5, req.coarse_edge_mm)
            if slot.ring_preference and r_eq >= 2 * width + 1:
                depth = ndi.distance_transform_edt(inside).astype(np.float32)
                enh, pattern = arr * np.clip(width + 0.5 - depth, 0.0, 1.0), "ring"
            else:
                enh, pattern = arr, "nodular"
        items.append(_Lesion(slot, lo, arr, enh, pattern))
    return _State(lesion=lesion, ids=ids, lesions=items)


def _lesion_signal(contrast: str, severity: float) -> float:
    """Relative lesion signal: FLAIR 0.85-1.1, T2w 0.74-0.86, T1w 0.55-0.7 (darker when severe)."""
    if contrast == "FLAIR":
        return 0.85 + 0.25 * severity
    if contrast == "T2w":
        return 0.74 + 0.12 * severity
    return 0.70 - 0.15 * severity


def _brain_signal(contrast: str, state: _State, anatomy: _SubjectAnatomy) -> np.ndarray:
    """Brain-space signal of one contrast at one state (lesions and, on ce-T1w, enhancement)."""
    sig = TISSUE_SIGNAL[contrast]
    out = anatomy.base[contrast].copy(order="K")
    for les in state.lesions:
        box = _box(les.lo, les.frac.shape)
        par = anatomy.parenchyma[box]
        normal = np.float32(sig["gm"]) * anatomy.gm[box] + np.float32(sig["wm"]) * anatomy.wm[box]
        lesion_value = _lesion_signal(contrast, les.slot.severity)
        out[box] += les.frac * (par * np.float32(lesion_value) - normal)
        if contrast == "ceT1w" and les.enhancing is not None:
            out[box] += les.enhancing * par * np.float32(les.slot.enhancing_signal - lesion_value)
    return out


# --------------------------------------------------------------------------------------------
# truth on a grid and its checks


def _grows(v_ref: float, v_new: float, rules: LesionRules) -> bool:
    """DESIGN §4 enlarging rule: +50% below 50 mm^3, else +20%, and at least the minimum volume."""
    return v_new - v_ref >= max(rules.min_volume_mm3, (0.5 if v_ref < 50.0 else 0.2) * v_ref)


@dataclass
class _GridLesions:
    dseg: np.ndarray              # design id per lesion voxel
    voxels: dict[int, int]        # voxels per design id
    bad: set[int]                 # design ids whose lesion is split, merged or too small
    orphans: int                  # components without a design id


def _grid_lesions(fraction: np.ndarray, ids: np.ndarray, affine: np.ndarray, present: set[int],
                  rules: LesionRules) -> _GridLesions:
    """Components of ``fraction >= 0.5`` (26-connected) matched to design ids."""
    mask = fraction >= 0.5
    labels, n = ndi.label(mask, structure=CONNECTIVITY)
    vox = float(abs(np.linalg.det(affine[:3, :3])))
    min_voxels = max(int(rules.min_voxels), int(np.ceil(rules.min_volume_mm3 / vox - 1e-9)))
    dseg = np.zeros(mask.shape, dtype=np.uint16)
    voxels: dict[int, int] = {}
    bad: set[int] = set()
    orphans = 0
    if n:
        lab = labels[mask]
        idv = ids[mask].astype(np.int64)
        sizes = np.bincount(lab, minlength=n + 1)
        pairs = np.unique(lab * 65536 + idv)
        comp_ids: dict[int, list[int]] = {}
        for p in pairs:
            c, i = int(p // 65536), int(p % 65536)
            if i:
                comp_ids.setdefault(c, []).append(i)
        comps_of: dict[int, int] = {}
        relabel = np.zeros(n + 1, dtype=np.uint16)
        for c in range(1, n + 1):
            found = comp_ids.get(c, [])
            if len(found) != 1:
                if found:
                    bad.update(found)
                else:
                    orphans += 1
                continue
            i = found[0]
            comps_of[i] = comps_of.get(i, 0) + 1
            if sizes[c] < min_voxels:
                bad.add(i)
            relabel[c] = i
            voxels[i] = voxels.get(i, 0) + int(sizes[c])
        dseg = relabel[labels]
        bad.update(i for i, k in comps_of.items() if k != 1)
    bad.update(i for i in present if i not in voxels)
    bad.update(i for i in voxels if i not in present)
    return _GridLesions(dseg=dseg, voxels=voxels, bad=bad, orphans=orphans)


def _brain_map(anatomy: _SubjectAnatomy, centroid: np.ndarray, years: float, atrophy_per_year: float,
               pose: np.ndarray) -> np.ndarray:
    """4x4 RAS map from scanner points of an acquisition to brain-space (MNI grid) points."""
    s = (1.0 - atrophy_per_year * years) ** (1.0 / 3.0)
    atrophy = _scaling(centroid, np.full(3, 1.0 / s))
    return anatomy.to_mni(centroid) @ atrophy @ np.linalg.inv(pose)


def _head_map(anatomy: _SubjectAnatomy, centroid: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return anatomy.to_mni(centroid) @ np.linalg.inv(pose)


def _lesions_on_grid(state: _State, acq: _Acquisition, to_brain: np.ndarray, anatomy: _SubjectAnatomy,
                     present: set[int], rules: LesionRules) -> tuple[np.ndarray, _GridLesions]:
    atlas = _atlas()
    frac = _sample(to_sitk(state.lesion * anatomy.parenchyma, atlas.affine), acq.grid, to_brain, acq.factors)
    ids = _sample(to_sitk(state.ids, atlas.affine), acq.grid, to_brain, acq.factors, sitk.sitkNearestNeighbor)
    return frac, _grid_lesions(frac, ids, acq.grid.affine, present, rules)


def _check_design(visits: list[_Visit], slots: list[_Slot], grid_vols: dict[str, dict[int, float]],
                  rules: LesionRules) -> set[int]:
    """Slots whose grid volumes disagree with their designed status (enlarging or not)."""
    bad: set[int] = set()
    base = visits[0]
    for i, v in enumerate(visits[1:], start=1):
        for ref in {visits[i - 1].label: visits[i - 1], base.label: base}.values():
            for s in slots:
                if s.id not in grid_vols[v.label] or s.id not in grid_vols[ref.label]:
                    continue
                designed = s.factors[v.state] / s.factors[ref.state] >= 1.5
                if _grows(grid_vols[ref.label][s.id], grid_vols[v.label][s.id], rules) != designed:
                    bad.add(s.id)
    return bad


# --------------------------------------------------------------------------------------------
# images


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(amplitude * f), f a random quadratic per axis, |f| <= 1."""
    terms = []
    for n in shape:
        u = np.linspace(-1.0, 1.0, n, dtype=np.float64)
        a, b = rng.uniform(-1, 1, 2)
        terms.append(a * u + b * (u ** 2 - 1.0 / 3.0))
    span = sum(float(np.abs(t).max()) for t in terms) or 1.0
    fx, fy, fz = (np.exp(amplitude * t / span).astype(np.float32) for t in terms)
    return fx[:, None, None] * fy[None, :, None] * fz[None, None, :]


def _acquire(contrast: str, acq: _Acquisition, head: _Head, brain: sitk.Image, to_head: np.ndarray,
             to_brain: np.ndarray, options: PhantomOptions, rng: np.random.Generator) -> np.ndarray:
    """Signal on the acquisition grid: head + brain, bias field, gain, Rician noise, scanner dtype."""
    signal = _sample(head.maps[contrast], acq.grid, to_head, acq.factors)
    signal += _sample(brain, acq.grid, to_brain, acq.factors)
    np.maximum(signal, 0.0, out=signal)
    scale = SCANNER_SCALE[contrast] * float(rng.uniform(0.9, 1.1))
    signal *= _bias_field(rng, acq.grid.shape, options.bias) * np.float32(scale)
    sigma = np.float32(options.noise * scale * TISSUE_SIGNAL[contrast]["wm"])
    if sigma > 0:
        real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        signal = np.sqrt(real * real + imag * imag)
    if options.dtype == "uint16":
        return np.clip(np.rint(signal), 0, 65535).astype(np.uint16)
    return signal.astype(np.float32)


# --------------------------------------------------------------------------------------------
# the study


def _requirements(acqs: dict[str, dict[str, _Acquisition]]) -> _Requirements:
    grids = [a.grid for per in acqs.values() for a in per.values()]
    vox = max(g.voxel_volume_mm3 for g in grids)
    edge = max(float(g.zooms.max()) for g in grids)
    vmin = max(20.0, 8.0 * vox, 4.0 * math.pi / 3.0 * edge ** 3)
    return _Requirements(vmin_mm3=vmin, sep_mm=2.0 * edge + 1.5, coarse_edge_mm=edge)


def _design_lesions(options: PhantomOptions, seed: int, si: int, visits: list[_Visit],
                    acqs: dict[str, dict[str, _Acquisition]], anatomy: _SubjectAnatomy, ref: str,
                    ) -> tuple[list[_Slot], dict[int, _Placed], dict[int, _State],
                               dict[str, tuple[np.ndarray, _GridLesions]], list[str]]:
    """Schedule and place lesions so that every designed lesion is one component on every grid."""
    atlas = _atlas()
    req = _requirements(acqs)
    n_states = options.sessions
    slots = _schedule(options, n_states, np.random.default_rng([seed, si, 1]))
    pool = _Candidates(np.random.default_rng([seed, si, 2]), anatomy, options.lesion_masks_dir)
    placed: dict[int, _Placed] = {}
    banned: set[str] = set()
    notes: list[str] = []
    rules = LesionRules()
    attempt = 0
    while True:
        placed = _place(slots, placed, banned, pool, anatomy, req)
        missing = [s.id for s in slots if s.id not in placed]
        if missing:
            notes.append(f"{len(missing)} designed lesion(s) did not fit and were dropped")
            slots = [s for s in slots if s.id in placed]
        if [s.id for s in slots] != list(range(1, len(slots) + 1)):
            # lesion ids are 1..N in design order (baseline lesions first, then new ones per visit)
            placed = {new: dataclasses.replace(placed[s.id], slot=new) for new, s in enumerate(slots, start=1)}
            for new, s in enumerate(slots, start=1):
                s.id = new
        states = {k: _state(k, slots, placed, anatomy, req) for k in range(n_states)}
        grids: dict[str, tuple[np.ndarray, _GridLesions]] = {}
        bad: set[int] = set()
        orphans = 0
        for v in visits:
            acq = acqs[v.label][ref]
            to_brain = _brain_map(anatomy, atlas.centroid, v.years, options.atrophy_per_year, acq.pose)
            present = {s.id for s in slots if s.present(v.state)}
            grids[v.label] = _lesions_on_grid(states[v.state], acq, to_brain, anatomy, present, rules)
            bad |= grids[v.label][1].bad
            orphans += grids[v.label][1].orphans
        vols = {label: {i: n * acqs[label][ref].grid.voxel_volume_mm3 for i, n in g[1].voxels.items()}
                for label, g in grids.items()}
        bad |= _check_design(visits, slots, vols, rules)
        if not bad and not orphans:
            return slots, placed, states, grids, notes
        attempt += 1
        log.debug("lesion design attempt %d: lesions %s are not clean components", attempt, sorted(bad))
        if orphans or attempt > _DESIGN_ATTEMPTS + 2:
            raise RuntimeError("phantom lesion design failed: lesions are not separable components on the "
                               "reference grids (use a finer resolution or fewer lesions)")
        if attempt > _DESIGN_ATTEMPTS:
            notes.append(f"{len(bad)} lesion(s) could not be made clean components on the grids and were dropped")
            slots = [s for s in slots if s.id not in bad]
            placed = {k: p for k, p in placed.items() if k not in bad}
        else:  # try other shapes for them
            for i in bad:
                banned.add(placed[i].candidate.key)
                del placed[i]


def _row(subject: str, visit: _Visit, visits: list[_Visit], slots: list[_Slot], grid: _GridLesions,
         grid_affine: np.ndarray, anatomy: _SubjectAnatomy, options: PhantomOptions) -> dict[str, Any]:
    """The true endpoints.csv row of one session."""
    vox = float(abs(np.linalg.det(grid_affine[:3, :3])))
    i = visits.index(visit)
    base, prev = visits[0], (visits[i - 1] if i > 0 else None)
    present = [s for s in slots if s.present(visit.state)]

    def new_vs(ref: _Visit) -> set[int]:
        return {s.id for s in present if not s.present(ref.state)}

    def enlarging_vs(ref: _Visit) -> set[int]:
        return {s.id for s in present if s.present(ref.state) and s.factors[visit.state] / s.factors[ref.state] >= 1.5}

    has_gd = "ceT1w" in options.contrasts and "T1w" in options.contrasts
    gd = {s.id for s in present if s.enhancing[visit.state]}
    s3 = 1.0 - options.atrophy_per_year * visit.years
    brain = anatomy.brain_mm3 * s3 / 1000.0
    icv = anatomy.icv_mm3 / 1000.0
    active = gd | ((new_vs(prev) | enlarging_vs(prev)) if prev is not None else set())
    return {
        "subject": subject,
        "session": visit.label,
        "is_baseline": i == 0,
        "days_since_baseline": visit.days,
        "t2_lesion_count": len(present),
        "t2_lesion_volume_ml": sum(grid.voxels.values()) * vox / 1000.0,
        "new_t2_vs_baseline": len(new_vs(base)) if i > 0 else None,
        "enlarging_t2_vs_baseline": len(enlarging_vs(base)) if i > 0 else None,
        "new_t2_vs_previous": len(new_vs(prev)) if prev is not None else None,
        "enlarging_t2_vs_previous": len(enlarging_vs(prev)) if prev is not None else None,
        "gd_lesion_count": len(gd) if has_gd else None,
        "gd_lesion_volume_ml": sum(grid.voxels.get(j, 0) for j in gd) * vox / 1000.0 if has_gd else None,
        "cua_lesion_count": len(active) if has_gd else None,
        "brain_volume_ml": brain,
        "icv_ml": icv,
        "bpf": brain / icv,
        "pbvc_vs_baseline": -100.0 * options.atrophy_per_year * visit.years + 0.0,
        "qc_status": "pass",
        "qc_notes": "",
        "pipeline_version": "truth",
        "config_sha256": None,
        "inputs_sha256": None,
    }



def _options_json(options: PhantomOptions) -> dict[str, Any]:
    out = dataclasses.asdict(options)
    out["resolution_mm"] = list(_as_triple(options.resolution_mm))
    out["contrasts"] = list(options.contrasts)
    out["lesion_masks_dir"] = str(options.lesion_masks_dir) if options.lesion_masks_dir else None
    return out


def _rounded(a: np.ndarray, decimals: int = 6) -> list:
    return np.round(np.asarray(a, dtype=float), decimals).tolist()


def _write_images(out: Path, sub: str, visit: _Visit, per: dict[str, _Acquisition], state: _State,
                  anatomy: _SubjectAnatomy, head: _Head, options: PhantomOptions, si: int) -> dict[str, Path]:
    """Acquire and write every contrast of one session (BIDS raw names)."""
    atlas = _atlas()
    images: dict[str, Path] = {}
    for c, acq in per.items():
        brain_img = to_sitk(_brain_signal(c, state, anatomy), atlas.affine)
        rng = np.random.default_rng([int(options.seed), si, 5, visit.key, CONTRASTS.index(c)])
        to_head = _head_map(anatomy, atlas.centroid, acq.pose)
        to_brain = _brain_map(anatomy, atlas.centroid, visit.years, options.atrophy_per_year, acq.pose)
        data = _acquire(c, acq, head, brain_img, to_head, to_brain, options, rng)
        images[c] = out / contrast_name(sub, visit.label, c)
        write_image(images[c], data, acq.grid.affine, dtype=np.dtype(options.dtype))
    return images


def _write_truth(truth_dir: Path, sub: str, i: int, visits: list[_Visit], per: dict[str, _Acquisition], ref: str,
                 state: _State, slots: list[_Slot], lesions: tuple[np.ndarray, _GridLesions],
                 anatomy: _SubjectAnatomy, head: _Head, options: PhantomOptions,
                 baseline_pose: np.ndarray) -> dict[str, Path]:
    """Write the truth images and transforms of one session; fail loudly if counts disagree."""
    atlas = _atlas()
    v = visits[i]
    racq = per[ref]
    grid = racq.grid
    rules = LesionRules()
    to_brain = _brain_map(anatomy, atlas.centroid, v.years, options.atrophy_per_year, racq.pose)
    to_head = _head_map(anatomy, atlas.centroid, racq.pose)
    frac, lesions_grid = lesions
    present = [s.id for s in slots if s.present(v.state)]
    keep = 1.0 - state.lesion
    gm = _sample(to_sitk(anatomy.gm * keep, atlas.affine), grid, to_brain, racq.factors)
    wm = _sample(to_sitk(anatomy.wm * keep, atlas.affine), grid, to_brain, racq.factors)
    env = _sample(to_sitk(anatomy.env, atlas.affine), grid, to_brain, racq.factors)
    icv = _sample(head.icv, grid, to_head, racq.factors)
    csf = np.clip(icv - gm - wm - frac, 0.0, 1.0)
    on_grid = float((gm.sum(dtype=np.float64) + wm.sum(dtype=np.float64) + frac.sum(dtype=np.float64))
                    * grid.voxel_volume_mm3) * 1e-3
    expected_ml = anatomy.brain_mm3 * (1.0 - options.atrophy_per_year * v.years) * 1e-3
    if abs(on_grid / expected_ml - 1.0) > 0.02:
        log.warning("sub-%s ses-%s: the %s field of view holds %.1f of %.1f mL of brain (clipped)",
                    sub, v.label, ref, on_grid, expected_ml)
    dseg = lesions_grid.dseg
    mask = dseg > 0
    n_components = int(label_lesions(mask, grid.affine, rules).max())
    if n_components != len(present) or lesions_grid.bad or lesions_grid.orphans:
        raise RuntimeError(f"sub-{sub} ses-{v.label}: truth mask has {n_components} lesions, designed "
                           f"{len(present)} (lesion separation broke on this grid)")

    def path(suffix: str, ext: str = ".nii.gz", **ents: str) -> Path:
        return truth_dir / bids_name(sub, v.label, suffix, ext, **ents)

    truth: dict[str, Path] = {"brain_mask": path("mask", desc="brain"), "lesion_mask": path("mask", label="lesion"),
                              "lesion_dseg": path("dseg", label="lesion"),
                              "lesion_probseg": path("probseg", label="lesion")}
    write_mask(truth["brain_mask"], env >= 0.5, grid.affine)
    write_mask(truth["lesion_mask"], mask, grid.affine)
    write_image(truth["lesion_dseg"], dseg, grid.affine, dtype=np.uint16)
    write_image(truth["lesion_probseg"], frac, grid.affine, dtype=np.float32)
    for name, arr in (("WM", wm), ("GM", gm), ("CSF", csf)):
        truth[f"{name}_probseg"] = path("probseg", label=name)
        write_image(truth[f"{name}_probseg"], arr, grid.affine, dtype=np.float32)
    selections: dict[str, list[int]] = {}
    if i > 0:
        b = visits[0].state
        selections["new"] = [s.id for s in slots if s.present(v.state) and not s.present(b)]
        selections["enlarging"] = [s.id for s in slots if s.present(v.state) and s.present(b)
                                   and s.factors[v.state] / s.factors[b] >= 1.5]
    if "ceT1w" in per:
        selections["enhancing"] = [s.id for s in slots if s.present(v.state) and s.enhancing[v.state]]
    for name, ids in selections.items():
        selected = np.isin(dseg, ids) if ids else np.zeros(dseg.shape, dtype=bool)
        if int(label_lesions(selected, grid.affine, rules).max()) != len(ids):
            raise RuntimeError(f"sub-{sub} ses-{v.label}: the {name} truth mask does not have {len(ids)} lesions")
        truth[f"{name}_mask"] = path("mask", label=name)
        write_mask(truth[f"{name}_mask"], selected, grid.affine)
    for c, acq in per.items():
        if c != ref:  # T maps reference points to points of C (ITK resampling convention, LPS)
            truth[f"xfm_{c}"] = path("xfm", ".txt", **{"from": c, "to": ref, "mode": "image"})
            _write_xfm(euler_from_matrix(LPS_FLIP @ acq.pose @ np.linalg.inv(racq.pose) @ LPS_FLIP),
                             truth[f"xfm_{c}"])
    if i > 0:  # T maps baseline reference points to points of this session's reference
        truth["xfm_baseline"] = path("xfm", ".txt", **{"from": "session", "to": "baseline", "mode": "image"})
        _write_xfm(euler_from_matrix(LPS_FLIP @ racq.pose @ np.linalg.inv(baseline_pose) @ LPS_FLIP),
                         truth["xfm_baseline"])
    return truth


def _lesion_entry(slot: _Slot, i: int, visits: list[_Visit], state: _State, racq: _Acquisition,
                  lesions_grid: _GridLesions, anatomy: _SubjectAnatomy, options: PhantomOptions) -> dict[str, Any]:
    """One lesion at one session for the truth JSON (volumes in anatomy space, RAS in scanner space)."""
    atlas = _atlas()
    v = visits[i]
    entry: dict[str, Any] = {"status": slot.status(v.state, visits[i - 1].state if i else None),
                             "enhancing": bool(slot.enhancing[v.state]) and slot.present(v.state)}
    if not slot.present(v.state):
        return entry
    les = next(x for x in state.lesions if x.slot.id == slot.id)
    s3 = 1.0 - options.atrophy_per_year * v.years
    box = _box(les.lo, les.frac.shape)
    volume = float((les.frac * anatomy.parenchyma[box]).sum(dtype=np.float64)) * float(np.prod(anatomy.scales)) * s3
    brain_to_scanner = racq.pose @ np.linalg.inv(_brain_map(anatomy, atlas.centroid, v.years,
                                                            options.atrophy_per_year, np.eye(4)))
    center = atlas.affine @ np.append(np.asarray(ndi.center_of_mass(les.frac)) + np.asarray(les.lo), 1.0)
    entry.update(volume_mm3=round(volume, 3),
                 grid_volume_mm3=round(lesions_grid.voxels.get(slot.id, 0) * racq.grid.voxel_volume_mm3, 3),
                 centroid_ras_mm=_rounded((brain_to_scanner @ center)[:3], 3), enhancement=les.pattern)
    return entry


def _make_subject(out: Path, truth_dir: Path, si: int, options: PhantomOptions) -> SubjectTruth:
    """Design, acquire and write one subject; return its truth."""
    atlas = _atlas()
    head = _head(options.skull)
    seed = int(options.seed)
    sub = subject_label(si)
    anatomy = _subject_anatomy(options, np.random.default_rng([seed, si, 0]), head)
    visits = _visits(options)
    ref = _reference([c for c in CONTRASTS if c in options.contrasts])
    acqs = {v.label: _acquisitions(options, seed, si, v, atlas.centroid) for v in visits}
    slots, placed, states, grids, notes = _design_lesions(options, seed, si, visits, acqs, anatomy, ref)
    for note in notes:
        log.info("sub-%s: %s", sub, note)
    write_table(out / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", ["session_id", "acq_time"],
                [{"session_id": f"ses-{v.label}", "acq_time": v.acq_time.isoformat()} for v in visits])
    sessions: list[SessionTruth] = []
    session_json = []
    lesion_sessions: dict[int, dict[str, dict[str, Any]]] = {s.id: {} for s in slots}
    baseline_pose = acqs[visits[0].label][ref].pose
    for i, v in enumerate(visits):
        state, per = states[v.state], acqs[v.label]
        images = _write_images(out, sub, v, per, state, anatomy, head, options, si)
        truth = _write_truth(truth_dir, sub, i, visits, per, ref, state, slots, grids[v.label], anatomy, head,
                             options, baseline_pose)
        lesions_grid = grids[v.label][1]
        row = _row(sub, v, visits, slots, lesions_grid, per[ref].grid.affine, anatomy, options)
        present = tuple(s.id for s in slots if s.present(v.state))
        sessions.append(SessionTruth(subject=sub, session=v.label, reference=ref, days_since_baseline=v.days,
                                     images=images, truth=truth, grid=per[ref].grid, endpoints=row,
                                     lesion_ids=present))
        for s in slots:
            lesion_sessions[s.id][v.label] = _lesion_entry(s, i, visits, state, per[ref], lesions_grid, anatomy,
                                                           options)
        session_json.append({
            "session": v.label, "acq_time": v.acq_time.isoformat(), "days_since_baseline": v.days,
            "years": round(v.years, 6), "rescan_of": v.rescan_of, "reference": ref,
            "atrophy_linear_scale": round((1.0 - options.atrophy_per_year * v.years) ** (1.0 / 3.0), 9),
            "brain_volume_ml": round(row["brain_volume_ml"], 6), "icv_ml": round(row["icv_ml"], 6),
            "pbvc_vs_baseline": round(row["pbvc_vs_baseline"], 9),
            "acquisitions": {c: {"anatomy_to_scanner_ras": _rounded(a.pose), "grid_shape": list(a.grid.shape),
                                 "grid_affine_ras": _rounded(a.grid.affine), "voxel_mm": _rounded(a.grid.zooms),
                                 "subsamples": list(a.factors)} for c, a in per.items()},
        })
    lesions_json = []
    for s in slots:
        p = placed[s.id]
        lesions_json.append({
            "id": s.id, "source": p.candidate.source, "candidate": p.candidate.key,
            "centroid_mni_ras_mm": _rounded((atlas.affine @ np.append(p.center, 1.0))[:3], 3),
            "volume_mm3_mni": round(p.volume_mm3, 3),
            "first_session": visits[[v.state for v in visits].index(s.first)].label,
            "severity": round(s.severity, 6), "sessions": lesion_sessions[s.id],
        })
    truth_json = truth_dir / f"sub-{sub}" / f"sub-{sub}_truth.json"
    write_json(truth_json, {
        "subject": sub, "msimaging_version": __version__, "options": _options_json(options),
        "subject_scales": _rounded(anatomy.scales), "warp_mm": options.warp_mm,
        "brain_centroid_mni_ras_mm": _rounded(atlas.centroid, 4),
        "atrophy_per_year": options.atrophy_per_year,
        "design_notes": notes, "sessions": session_json, "lesions": lesions_json,
        "conventions": "poses map anatomy RAS mm to scanner RAS mm (anatomy = MNI scaled by subject_scales "
                       "about the brain centroid); transforms are ITK (LPS) in the resampling convention "
                       "(DESIGN §3); lesion status is versus the previous session ('stable' at baseline)",
    })
    return SubjectTruth(label=sub, sessions=tuple(sessions), truth_json=truth_json)


def _write_xfm(transform: sitk.Transform, path: Path) -> None:
    _io_write_transform(path, transform)


def make_study(out_dir: Path | str, options: PhantomOptions = PhantomOptions()) -> StudyTruth:
    """Write a phantom BIDS study and its truth under ``out_dir``; return what was written.

    Raises ValueError for invalid options and RuntimeError when the designed lesions cannot be
    made separable components on the acquisition grids (the truth would be wrong).
    """
    problems = options.problems()
    if problems:
        raise ValueError("invalid phantom options: " + "; ".join(problems))
    out = Path(out_dir)
    truth_dir = out / "derivatives" / "truth"
    write_json(out / "dataset_description.json", {
        "Name": "msimaging phantom study", "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "msimaging.phantom", "Version": __version__}],
    })
    write_text(out / "README", "Synthetic multiple sclerosis MRI study made by msimaging.phantom "
               "(MNI152 2009a anatomy, known lesions, atrophy and head poses).\n"
               "Ground truth: derivatives/truth (masks, transforms, endpoints.csv, sub-*_truth.json).\n")
    write_table(out / "participants.tsv", ["participant_id"],
                [{"participant_id": f"sub-{subject_label(i)}"} for i in range(options.subjects)])
    write_json(truth_dir / "dataset_description.json", {
        "Name": "msimaging phantom ground truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "msimaging.phantom", "Version": __version__}],
    })
    subjects = tuple(_make_subject(out, truth_dir, i, options) for i in range(options.subjects))
    endpoints = truth_dir / "endpoints.csv"
    write_table(endpoints, COLUMNS, [s.endpoints for sub in subjects for s in sub.sessions])
    return StudyTruth(bids_dir=out, truth_dir=truth_dir, endpoints_csv=endpoints, options=options,
                      subjects=subjects)

"""Image geometry: the one place where nibabel (RAS) and ITK (LPS) conventions meet.

Conventions used everywhere in msimaging:

* A voxel-to-world ``affine`` is a 4x4 numpy array mapping voxel indices ``(i, j, k)`` of an
  array in nibabel's ``(x, y, z)`` order to **RAS** millimetres (NIfTI convention).
* ITK / SimpleITK images carry origin, spacing and direction in **LPS** millimetres and store
  their pixel buffer as ``(z, y, x)``; :func:`to_sitk` and :func:`from_sitk` convert both ways.
* Transforms are ITK transforms in ITK's *resampling* convention: the transform ``T`` used in
  ``SimpleITK.Resample(moving, fixed, T)`` maps physical points of ``fixed`` (LPS) to physical
  points of ``moving``. A file ``from-A_to-B`` holds the transform that puts A onto B's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

FloatArray = npt.NDArray[np.floating]

#: RAS <-> LPS flip (its own inverse).
LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Largest deviation from orthonormality (of the direction cosines) that ITK can represent.
ORTHONORMAL_TOL = 1e-3


@dataclass(frozen=True)
class Grid:
    """A voxel grid in world space: array shape and RAS voxel-to-world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def zooms(self) -> np.ndarray:
        return voxel_sizes(self.affine)

    @property
    def voxel_volume_mm3(self) -> float:
        return voxel_volume_mm3(self.affine)

    def reference_image(self) -> sitk.Image:
        """An empty (uint8) SimpleITK image on this grid, usable as a resampling reference."""
        return to_sitk(np.zeros(self.shape, dtype=np.uint8), self.affine)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm (the column norms of the 3x3 part)."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm^3 (absolute determinant of the 3x3 part)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def affine_problems(affine: np.ndarray) -> list[str]:
    """Reasons why ``affine`` cannot describe a real MRI grid (empty when it can)."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4):
        return [f"affine has shape {a.shape}, expected 4x4"]
    if not np.all(np.isfinite(a)):
        return ["affine contains NaN or infinite values"]
    problems = []
    zooms = voxel_sizes(a)
    if np.any(zooms < 1e-3):
        return [f"voxel sizes {np.round(zooms, 4).tolist()} mm include a zero: the affine is singular"]
    with np.errstate(all="ignore"):  # denormal entries: det under/overflows, which means singular
        det = float(np.linalg.det(a[:3, :3]))
    if not np.isfinite(det) or abs(det) < 1e-6:
        return ["the affine is singular (its voxel axes are linearly dependent)"]
    cosines = a[:3, :3] / zooms
    deviation = float(np.abs(cosines.T @ cosines - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOL:
        problems.append(
            f"the voxel axes are not orthogonal (sheared affine, deviation {deviation:.3g}); "
            "ITK-based tools cannot represent it"
        )
    if np.any(zooms > 20.0):
        problems.append(f"voxel sizes {np.round(zooms, 3).tolist()} mm are implausible for brain MRI")
    return problems


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image with ``data`` (x, y, z order) placed by the RAS ``affine``.

    The direction cosines are orthonormalised (ITK requires it); :func:`affine_problems` flags
    affines where that would move voxels noticeably.
    """
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D array, got {arr.ndim}D with shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    lps = LPS_FLIP @ np.asarray(affine, dtype=float)
    zooms = voxel_sizes(lps)
    cosines = lps[:3, :3] / zooms
    u, _, vt = np.linalg.svd(cosines)
    cosines = u @ vt
    # components whose squares underflow make ITK's direction SVD fail (resampling then returns zeros)
    cosines[np.abs(cosines) < 1e-12] = 0.0
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing([float(z) for z in zooms])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    img.SetDirection([float(c) for c in cosines.ravel()])
    return img


def sitk_affine(img: sitk.Image) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image."""
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=float)
    lps[:3, 3] = img.GetOrigin()
    return LPS_FLIP @ lps


def from_sitk(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of a SimpleITK image, data in (x, y, z) order, affine in RAS."""
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), sitk_affine(img)


def ras_to_lps_points(points: FloatArray) -> FloatArray:
    """Flip an (N, 3) array of points between RAS and LPS (the flip is its own inverse)."""
    pts = np.array(points, dtype=float, copy=True)
    pts[..., :2] *= -1.0
    return pts


lps_to_ras_points = ras_to_lps_points


def voxel_to_world(affine: np.ndarray, ijk: FloatArray) -> FloatArray:
    """RAS mm of voxel coordinates ``ijk`` (N, 3) under ``affine``."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
    return ijk @ np.asarray(affine, dtype=float)[:3, :3].T + np.asarray(affine, dtype=float)[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: FloatArray) -> FloatArray:
    """Continuous voxel coordinates of RAS points ``xyz`` (N, 3) under ``affine``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def transform_points_ras(transform: sitk.Transform, points_ras: FloatArray) -> FloatArray:
    """Apply an ITK transform (LPS in, LPS out) to RAS points, returning RAS points."""
    lps = ras_to_lps_points(np.atleast_2d(points_ras))
    out = np.array([transform.TransformPoint([float(c) for c in p]) for p in lps], dtype=float)
    return lps_to_ras_points(out)


def affine_matrix_lps(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 homogeneous matrix (LPS -> LPS) of a linear ITK transform (composites allowed)."""
    origin = np.zeros(3)
    basis = np.eye(3)
    t0 = np.asarray(transform.TransformPoint(tuple(origin)), dtype=float)
    m = np.eye(4)
    for axis in range(3):
        m[:3, axis] = np.asarray(transform.TransformPoint(tuple(basis[axis])), dtype=float) - t0
    m[:3, 3] = t0
    return m


def affine_transform_from_matrix(matrix_lps: np.ndarray) -> sitk.AffineTransform:
    """An ITK affine transform from a 4x4 LPS matrix."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in np.asarray(matrix_lps)[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in np.asarray(matrix_lps)[:3, 3]])
    return tx


def euler_from_matrix(matrix_lps: np.ndarray) -> sitk.Euler3DTransform:
    """A rigid ITK transform from a 4x4 LPS matrix whose 3x3 part is (close to) a rotation."""
    m = np.asarray(matrix_lps, dtype=float)
    u, _, vt = np.linalg.svd(m[:3, :3])
    rot = u @ vt
    best: tuple[float, sitk.Euler3DTransform] | None = None
    # Euler angles lose precision near gimbal lock; ZXY and ZYX lock at different poses, so one
    # of the two orders always represents the rotation to machine precision
    for zyx in (False, True):
        tx = sitk.Euler3DTransform()
        tx.SetComputeZYX(zyx)
        tx.SetMatrix([float(v) for v in rot.ravel()])
        tx.SetTranslation([float(v) for v in m[:3, 3]])
        err = float(np.abs(np.asarray(tx.GetMatrix()).reshape(3, 3) - rot).max())
        if best is None or err < best[0]:
            best = (err, tx)
        if err < 1e-12:
            break
    assert best is not None
    return best[1]


def read_transform(path: str | object) -> sitk.Transform:
    """Read an ITK transform file, flattening a one-element composite."""
    tx = sitk.ReadTransform(str(path))
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
    return tx


def write_transform(transform: sitk.Transform, path: str | object) -> None:
    """Write an ITK transform file (ITK text format)."""
    sitk.WriteTransform(transform, str(path))


def resample(
    moving: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolation: str = "linear",
    default: float = 0.0,
) -> sitk.Image:
    """Put ``moving`` onto the grid of ``reference`` (transform maps reference -> moving points)."""
    interpolators = {
        "nearest": sitk.sitkNearestNeighbor,
        "linear": sitk.sitkLinear,
        "bspline": sitk.sitkBSpline,
        "label": sitk.sitkLabelGaussian,
    }
    if interpolation not in interpolators:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(interpolators)}")
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    out_type = moving.GetPixelID() if interpolation == "nearest" else sitk.sitkFloat32
    return sitk.Resample(moving, reference, tx, interpolators[interpolation], float(default), out_type)


def resample_array(
    data: np.ndarray,
    affine: np.ndarray,
    grid: Grid,
    transform: sitk.Transform | None = None,
    interpolation: str = "linear",
    default: float = 0.0,
) -> np.ndarray:
    """Numpy front end of :func:`resample`: ``data`` on ``affine`` -> array on ``grid``."""
    moving = to_sitk(np.asarray(data, dtype=np.float32) if interpolation != "nearest" else data, affine)
    out = resample(moving, grid.reference_image(), transform, interpolation, default)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def resample_mask(
    mask: np.ndarray,
    affine: np.ndarray,
    grid: Grid,
    transform: sitk.Transform | None = None,
) -> np.ndarray:
    """Resample a binary mask by linear interpolation of its indicator, thresholded at 0.5.

    Unlike nearest neighbour this keeps the volume of a mask under sub-voxel shifts and between
    grids of different voxel sizes.
    """
    frac = resample_array(np.asarray(mask, dtype=np.float32), affine, grid, transform, "linear")
    return frac >= 0.5


def brain_points_ras(mask: np.ndarray, affine: np.ndarray, max_points: int = 20000,
                     seed: int = 0) -> FloatArray:
    """A deterministic sample of RAS points of the voxels of ``mask`` (for TRE figures)."""
    ijk = np.argwhere(np.asarray(mask) > 0)
    if len(ijk) > max_points:
        rng = np.random.default_rng(seed)
        ijk = ijk[np.sort(rng.choice(len(ijk), max_points, replace=False))]
    return voxel_to_world(affine, ijk)


def target_registration_error(
    estimate: sitk.Transform, truth: sitk.Transform, points_ras: FloatArray
) -> np.ndarray:
    """Distances in mm between where ``estimate`` and ``truth`` send each point."""
    a = transform_points_ras(estimate, points_ras)
    b = transform_points_ras(truth, points_ras)
    return np.linalg.norm(a - b, axis=1)


# --- header conventions, grids for multi-resolution work, rigid-transform algebra ----------------


def orientation_codes(affine: np.ndarray) -> str:
    """Anatomical direction each voxel axis points to, nibabel style: ``"RAS"``, ``"LPS"``, ...

    For oblique affines each axis gets the world axis it is closest to.
    """
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=float)))


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and the world axis closest to it (0 = not oblique)."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    cosines = np.abs(a / voxel_sizes(a))
    return float(np.degrees(np.arccos(np.clip(cosines.max(axis=0), -1.0, 1.0))).max())


def grid_corners(shape: tuple[int, ...]) -> np.ndarray:
    """The 8 corner voxel indices (8, 3) of a 3D grid of ``shape``."""
    return np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)],
                    dtype=float)


def affine_distance_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two voxel-to-world affines put the corners of a grid.

    Use it to compare a header's qform and sform, or an affine with the one ITK can represent.
    """
    corners = grid_corners(shape)
    return float(np.linalg.norm(voxel_to_world(a, corners) - voxel_to_world(b, corners), axis=1).max())


def itk_affine(affine: np.ndarray) -> np.ndarray:
    """The RAS affine ITK represents for ``affine``: same zooms and origin, orthonormal directions.

    :func:`to_sitk` stores this; for a sheared header it differs from ``affine`` and
    :func:`affine_distance_mm` of the two says by how much (in mm) voxels move.
    """
    lps = LPS_FLIP @ np.asarray(affine, dtype=float)
    zooms = voxel_sizes(lps)
    u, _, vt = np.linalg.svd(lps[:3, :3] / zooms)
    out = lps.copy()
    out[:3, :3] = (u @ vt) * zooms
    return LPS_FLIP @ out


def grid_of(img: sitk.Image) -> Grid:
    """The :class:`Grid` (x, y, z shape and RAS affine) of a SimpleITK image."""
    return Grid(shape=tuple(int(s) for s in img.GetSize()), affine=sitk_affine(img))  # type: ignore[arg-type]


def coarse_grid(grid: Grid, spacing_mm: float) -> Grid:
    """A grid with the same orientation and field of view and voxels of at least ``spacing_mm``.

    Axes already coarser than ``spacing_mm`` (thick slices) keep their voxel size, so a
    0.7x0.7x3 mm grid at 2 mm becomes about 2x2x3 mm, never 2x2x8.6 mm. Voxel centres are placed
    so that the new grid covers the same physical box.
    """
    zooms = voxel_sizes(grid.affine)
    extent = zooms * np.asarray(grid.shape)
    new_shape = np.maximum(1, np.round(extent / np.maximum(zooms, spacing_mm))).astype(int)
    new_zooms = extent / new_shape
    cosines = np.asarray(grid.affine, dtype=float)[:3, :3] / zooms
    affine = np.eye(4)
    affine[:3, :3] = cosines * new_zooms
    # the corner of voxel 0 stays at the same place: centre(0) = corner + half a voxel
    corner = voxel_to_world(grid.affine, -0.5 * np.ones(3))[0]
    affine[:3, 3] = corner + cosines @ (0.5 * new_zooms)
    return Grid(shape=tuple(int(s) for s in new_shape), affine=affine)  # type: ignore[arg-type]


def bounding_box(mask: np.ndarray, margin_vox: np.ndarray | int = 0) -> tuple[slice, slice, slice]:
    """Index slices of the bounding box of ``mask`` grown by ``margin_vox`` (per axis), clipped."""
    idx = np.argwhere(np.asarray(mask))
    if idx.size == 0:
        return tuple(slice(0, n) for n in np.shape(mask))  # type: ignore[return-value]
    margin = np.broadcast_to(np.asarray(margin_vox, dtype=int), (3,))
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, np.shape(mask))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def crop_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of ``data[box]`` given the affine of ``data``."""
    out = np.asarray(affine, dtype=float).copy()
    out[:3, 3] = voxel_to_world(affine, [[s.start or 0 for s in box]])[0]
    return out


def rotation_angle_deg(transform: sitk.Transform) -> float:
    """Rotation angle (degrees) of the linear part of a (near-)rigid transform."""
    m = affine_matrix_lps(transform)[:3, :3]
    u, _, vt = np.linalg.svd(m)
    rot = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def displacement_mm(transform: sitk.Transform, points_ras: FloatArray) -> np.ndarray:
    """How far (mm) ``transform`` moves each RAS point (|T(p) - p|)."""
    pts = np.atleast_2d(np.asarray(points_ras, dtype=float))
    return np.linalg.norm(transform_points_ras(transform, pts) - pts, axis=1)


def _rotation_log(rot: np.ndarray) -> np.ndarray:
    """Axis-angle vector (radians) of a 3x3 rotation (angle < 180 degrees)."""
    angle = float(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)))
    if angle < 1e-12:
        return np.zeros(3)
    w = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    return w * (angle / (2.0 * np.sin(angle)))


def _rotation_exp(w: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(w))
    if angle < 1e-15:
        return np.eye(3)
    k = np.asarray(w) / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * (kx @ kx)


def rigid_power(transform: sitk.Transform, alpha: float) -> sitk.Euler3DTransform:
    """``T**alpha`` of a rigid transform: the same screw motion, ``alpha`` of the way.

    ``rigid_power(T, 0.5)`` applied twice equals ``T``; ``rigid_power(T, -1)`` is its inverse.
    The linear part of ``T`` is first projected onto the nearest rotation. Rotation centre:
    the returned transform has centre 0 (it is a plain matrix + translation).
    """
    m = affine_matrix_lps(transform)
    u, _, vt = np.linalg.svd(m[:3, :3])
    rot = u @ vt
    t = m[:3, 3]
    w = _rotation_log(rot)
    rot_a = _rotation_exp(alpha * w)
    # R^a x + t_a, with (sum_{k<n} R^{ka}) t_a = t for alpha = 1/n generalised: the screw axis
    # decomposition. Solve with the matrix logarithm of the homogeneous matrix instead:
    # log([[R, t], [0, 1]]) = [[W, V^-1 t], [0, 0]], V = I + (1-cos)/th^2 W + (th - sin)/th^3 W^2.
    th = float(np.linalg.norm(w))
    wx = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])

    def v_matrix(theta: float, wx_: np.ndarray) -> np.ndarray:
        if theta < 1e-9:
            return np.eye(3) + 0.5 * wx_
        return (np.eye(3) + (1.0 - np.cos(theta)) / theta ** 2 * wx_
                + (theta - np.sin(theta)) / theta ** 3 * (wx_ @ wx_))

    u_vec = np.linalg.solve(v_matrix(th, wx), t)
    t_a = v_matrix(abs(alpha) * th, alpha * wx) @ (alpha * u_vec)
    out = sitk.Euler3DTransform()
    out.SetMatrix([float(v) for v in rot_a.ravel()])
    out.SetTranslation([float(v) for v in t_a])
    return out


def halfway_transforms(transform: sitk.Transform) -> tuple[sitk.Euler3DTransform, sitk.Euler3DTransform]:
    """The two half transforms of a rigid ``from-session_to-baseline`` transform ``T``.

    ``T`` maps baseline points to follow-up points (ITK resampling convention). Returns
    ``(to_baseline, to_followup)`` = ``(T**-1/2, T**1/2)``: the transforms that put the baseline
    and the follow-up image onto a halfway grid (use the baseline reference grid), so that
    ``to_followup o to_baseline**-1 == T`` and both visits are interpolated alike::

        bl_half = resample(baseline, halfway_grid, to_baseline)
        fu_half = resample(followup, halfway_grid, to_followup)
    """
    return rigid_power(transform, -0.5), rigid_power(transform, 0.5)


@dataclass(frozen=True)
class Canonical:
    """An image reoriented to RAS (nibabel's closest canonical) for display."""

    data: np.ndarray
    affine: np.ndarray

    def voxel(self, ras_mm: Sequence[float]) -> np.ndarray:
        return np.linalg.solve(self.affine, np.r_[np.asarray(ras_mm, float), 1.0])[:3]

    @property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def canonical(data: np.ndarray, affine: np.ndarray) -> Canonical:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), np.asarray(affine, float)))
    return Canonical(np.asarray(img.dataobj), np.asarray(img.affine, float))

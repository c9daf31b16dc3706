"""Real-background Gd+ cases: enhancing lesions implanted into a real post-contrast T1w.

Phantoms have no vessels, no choroid plexus and no dura, so a Gd+ detector that passes them can
count vessels on a patient. This module makes cases in which the detector must find enhancing
lesions *among* the real enhancing structures of a real ce-T1w (sub-p07's):

* **shapes**: real lesion components of ``shared/data/ms-lesion-masks`` in the volume bins
  :data:`SIZE_BINS_MM3` (:func:`msimaging.implant_longitudinal.lesion_components`), pasted at
  white-matter points of the session (:func:`~msimaging.implant_longitudinal.choose_centres`,
  :func:`~msimaging.implant_longitudinal.paste`), away from its own expert-marked lesions;
* **T2/FLAIR/T1w**: every implanted lesion is an MS lesion first: it gets the FLAIR and T2w excess
  and T1w hypointensity of real expert-marked lesions (:func:`msimaging.implant.implant`, the
  measured profile: core contrast, partial-volume edge, texture). The pre-contrast T1w
  hypointensity is carried into the ce-T1w (the lesion is T1-dark before the contrast agent
  arrives);
* **enhancement** on the ce-T1w, as a fractional signal increase over the local NAWM of the ce-T1w:
  drawn log-uniformly in :data:`ENHANCEMENT` per lesion, with the measured partial-volume edge and
  a smooth texture; **nodular** (the whole lesion) or, for lesions of at least
  :data:`RING_MIN_MM3` with probability :data:`RING_FRACTION`, **ring** (a shell of
  :data:`RING_WIDTH_MM` inside the boundary, a faintly enhancing core).

Enhancement contrast. Enhancing MS lesions on standard-dose (0.1 mmol/kg) T1w at 1.5-3 T have a
lesion-to-normal-tissue signal ratio of roughly 1.1-1.8, small lesions at the low end (contrast
ratios of enhancing lesions on T1 TSE, MPRAGE and T1 FLAIR: Downs et al., Quant Imaging Med Surg
2013;3:141-146; dose and sequence effects on MS lesion enhancement: Silver et al., Brain
1997;120:1149-1161; Filippi et al., Neurology 1996;46:379-384). :data:`ENHANCEMENT` spans
+15 % to +60 % over the lesion's own pre-contrast signal: the faint half of that range, where
detectors fail, and far below vessels and choroid plexus (sub-p07: +100 % and more).

The truth is the implanted fraction >= 0.5 of every lesion, labelled per lesion. Everything is
deterministic from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from msimaging.geometry import Grid, voxel_volume_mm3
from msimaging.implant import LesionProfile, _texture, implant, local_nawm, resample_box, signed_distance_mm
from msimaging.lesions import CONNECTIVITY

#: Volume bins (mm^3, 1 mm mask voxels) of the implanted Gd+ lesions, as the bench reports them.
SIZE_BINS_MM3: tuple[tuple[float, float], ...] = ((10.0, 20.0), (20.0, 50.0), (50.0, 200.0), (200.0, 1000.0))
#: Enhancement over the lesion's pre-contrast ce-T1w signal, as a fraction of the local NAWM (log-uniform).
ENHANCEMENT: tuple[float, float] = (0.15, 0.60)
#: Ring enhancement: lesions at least this large (mm^3) may be rings ...
RING_MIN_MM3 = 100.0
#: ... with this probability ...
RING_FRACTION = 0.5
#: ... enhancing in a shell this thick (mm) inside the boundary, the core at RING_CORE of the shell.
RING_WIDTH_MM = 1.5
RING_CORE = 0.15
#: Relative SD of the enhancement's smooth texture.
ENHANCEMENT_TEXTURE = 0.15


@dataclass
class EnhancingCase:
    """An implanted Gd+ case: images, per-lesion truth labels and the design of every lesion."""

    images: dict[str, np.ndarray]
    truth: np.ndarray                  # int32: implanted enhancing lesion k (fraction >= 0.5), 0 elsewhere
    lesions: list[dict[str, Any]]      # per truth label: volume_mm3, pattern, enhancement, source


def enhancement_shape(signed_mm: np.ndarray, pattern: str, ring_width_mm: float = RING_WIDTH_MM,
                      ring_core: float = RING_CORE) -> np.ndarray:
    """Relative enhancement (0..1) of a lesion at each signed distance to its boundary (inside > 0).

    ``nodular``: 1 inside, a one-voxel partial-volume ramp across the boundary (-0.5..0.5 mm).
    ``ring``: 1 in the shell ``0 < d <= ring_width_mm``, falling over 1 mm to ``ring_core`` deeper.
    """
    d = np.asarray(signed_mm, np.float32)
    edge = np.clip(d + 0.5, 0.0, 1.0)
    if pattern == "nodular":
        return edge.astype(np.float32)
    if pattern != "ring":
        raise ValueError(f"unknown enhancement pattern {pattern!r} (nodular or ring)")
    inner = np.clip(d - ring_width_mm, 0.0, 1.0)         # 0 in the shell, 1 a millimetre deeper
    return (edge * (1.0 - (1.0 - ring_core) * inner)).astype(np.float32)


def draw_enhancement(volumes_mm3: Sequence[float], rng: np.random.Generator,
                     enhancement: tuple[float, float] = ENHANCEMENT) -> list[tuple[float, str]]:
    """(enhancement, pattern) per lesion: log-uniform enhancement, ring for some large lesions."""
    lo, hi = np.log(enhancement[0]), np.log(enhancement[1])
    out = []
    for v in volumes_mm3:
        e = float(np.exp(rng.uniform(lo, hi)))
        ring = v >= RING_MIN_MM3 and rng.random() < RING_FRACTION
        out.append((e, "ring" if ring else "nodular"))
    return out


def implant_enhancing(images: Mapping[str, np.ndarray], affine: np.ndarray, brain: np.ndarray,
                      wm_weight: np.ndarray, admissible: np.ndarray, mask: np.ndarray, mask_affine: np.ndarray,
                      profile: LesionProfile, seed: int, enhancement: tuple[float, float] = ENHANCEMENT,
                      nawm: Mapping[str, np.ndarray] | None = None) -> EnhancingCase:
    """Implant the lesions of ``mask`` (1 mm, world coordinates by ``mask_affine``) as enhancing lesions.

    ``images`` must hold ``ceT1w`` and ``T1w`` on the session grid (and FLAIR / T2w when present:
    they get the lesions' hyperintensity). ``wm_weight``: NAWM weight; ``admissible``: where lesion
    tissue may lie (0..1).
    ``nawm``: local NAWM of each contrast when already computed (:func:`msimaging.implant.local_nawm`).
    """
    if "ceT1w" not in images or "T1w" not in images:
        raise ValueError("an enhancing case needs ceT1w and T1w on the session grid")
    rng = np.random.default_rng(seed)
    grid = Grid(tuple(brain.shape), affine)  # type: ignore[arg-type]
    t2_like = {c: v for c, v in images.items() if c in profile.contrasts}
    res = implant(t2_like, affine, brain, wm_weight, admissible, mask, mask_affine, None, profile,
                  int(rng.integers(1 << 31)), nawm=nawm)
    out = {c: np.asarray(v, np.float32).copy() for c, v in images.items()}
    out.update(res.images)
    ref = {c: (nawm[c] if nawm is not None and c in nawm else local_nawm(images[c], wm_weight, affine))
           for c in ("ceT1w", "T1w")}
    # the lesion's pre-contrast hypointensity (as a fraction of the T1w NAWM) carried into the ce-T1w
    t1_excess = (res.images["T1w"] - np.asarray(images["T1w"], np.float32)) / np.maximum(ref["T1w"], 1e-6)
    m = np.asarray(mask) > 0
    labels, n = ndi.label(m, structure=CONNECTIVITY)
    vols = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel_volume_mm3(mask_affine)
    design = draw_enhancement(vols, rng, enhancement)
    sd = signed_distance_mm(m, mask_affine)
    _, idx = ndi.distance_transform_edt(labels == 0, return_indices=True)
    owner = labels[tuple(idx)]
    near = sd > -1.5
    tex = _texture(m.shape, rng)
    enh = np.zeros(m.shape, np.float32)
    for k, (e, pattern) in enumerate(design, start=1):
        sel = near & (owner == k)
        enh[sel] = e * enhancement_shape(sd[sel], pattern) * (1.0 + ENHANCEMENT_TEXTURE * tex[sel])
    adm = np.clip(np.asarray(admissible, np.float32), 0.0, 1.0) * (np.asarray(brain) > 0)
    enh_grid = resample_box(enh, mask_affine, grid, None) * adm
    out["ceT1w"] = np.maximum(out["ceT1w"] + (t1_excess + enh_grid) * ref["ceT1w"], 0.0).astype(np.float32)
    # per-lesion truth on the session grid: the implanted fraction >= 0.5, labelled by source component
    owner_grid = np.rint(_nearest_labels(labels, mask_affine, grid)).astype(np.int32)
    truth = np.where(res.implanted, owner_grid, 0).astype(np.int32)
    lesions = []
    vox = voxel_volume_mm3(affine)
    for k, (e, pattern) in enumerate(design, start=1):
        v = float((truth == k).sum()) * vox
        lesions.append({"label": k, "volume_mm3": round(v, 1), "volume_mm3_1mm": round(float(vols[k - 1]), 1),
                        "pattern": pattern, "enhancement": round(e, 4)})
    return EnhancingCase(images=out, truth=truth, lesions=lesions)


def _nearest_labels(labels: np.ndarray, affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Integer labels resampled (nearest neighbour) onto ``grid`` by world coordinates."""
    from msimaging.geometry import resample_array

    return resample_array(labels.astype(np.float32), affine, grid, None, "nearest")


def placement(wm: np.ndarray, affine: np.ndarray, avoid: np.ndarray | None, mask_files: Sequence[Path],
              per_bin: int, seed: int, reference: tuple[np.ndarray, np.ndarray],
              bins: Sequence[tuple[float, float]] = SIZE_BINS_MM3, spacing_mm: float = 16.0):
    """Real lesion shapes of every size bin pasted at white-matter points: the placed 1 mm mask."""
    from msimaging.implant_longitudinal import choose_centres, lesion_components, paste

    rng = np.random.default_rng(seed)
    comps = lesion_components(mask_files, bins, per_bin, seed)
    centres = choose_centres(wm, affine, len(comps), rng, avoid=avoid, spacing_mm=spacing_mm)
    return paste(comps[:len(centres)], centres, reference)


__all__ = ["SIZE_BINS_MM3", "ENHANCEMENT", "EnhancingCase", "enhancement_shape", "draw_enhancement",
           "implant_enhancing", "placement"]

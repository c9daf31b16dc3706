"""The interactive viewer of the subject QC page: each visit scrollable in three planes, masks on top.

Each visit's reference image (FLAIR, else T2w) and, when present, its ce-T1w are embedded in the page
with the T2, new, enlarging and Gd+ masks (all on the session's reference grid): reoriented to RAS,
cropped to the brain mask (plus a margin), reduced by whole-voxel block factors until the page's voxel
budget holds (means for images, "any" for masks so no lesion vanishes), quantised to uint8 (0 to
the brain's 99.5th percentile), deflated and base64-encoded. A small vanilla-JS canvas viewer
(``data/viewer.js``, inlined; the browser's own ``DecompressionStream`` inflates) draws axial,
coronal and sagittal planes in radiological orientation (the subject's right on the left), with
the masks as toggleable overlays. Every counted lesion is a row; clicking it centres the viewer on the
lesion. Nothing is fetched: the page works offline.

Budget: a subject page stays under 20 MB. The images of a page share :data:`PAGE_VOXELS` voxels (one
byte each before deflate; 8 M is about 3 visits x FLAIR + ce-T1w at 1.3 mm on a 1 mm brain), and no
image has more than :data:`MAX_VOLUME_VOXELS`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping, Sequence

import numpy as np

#: Bit of each mask in the embedded label volume.
MASK_BITS = {"lesions": 1, "new": 2, "enlarging": 4, "enhancing": 8}
#: Voxels shared by every image of a subject page; and the most one image may have.
PAGE_VOXELS = 8_000_000
MAX_VOLUME_VOXELS = 2_000_000
#: Margin around the brain mask's bounding box (mm).
MARGIN_MM = 6.0
#: Upper display percentile of the brain's intensities (maps to 255).
DISPLAY_PERCENTILE = 99.5


@dataclass(frozen=True)
class ViewGrid:
    """The grid of the embedded volumes: shape, voxel size (mm) and RAS affine (voxel centre -> mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def zooms(self) -> tuple[float, float, float]:
        z = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(z[0]), float(z[1]), float(z[2]))

    def voxel(self, ras_mm: Sequence[float]) -> tuple[int, int, int]:
        """The voxel (i, j, k) of this grid nearest a RAS point, clipped into the grid."""
        ijk = np.linalg.solve(self.affine, np.r_[np.asarray(ras_mm, float), 1.0])[:3]
        return tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(ijk, self.shape))  # type: ignore[return-value]


@dataclass(frozen=True)
class SessionView:
    """One visit, ready to embed: the images (uint8, on ``grid``) and the mask bits."""

    grid: ViewGrid
    images: dict[str, np.ndarray]   # name -> uint8 volume
    labels: np.ndarray              # uint8, OR of MASK_BITS
    masks: tuple[str, ...]          # the masks this visit has (names of MASK_BITS)



#: Overlay colours and legend labels (the QC page's figures and the viewer share them).
OVERLAY_COLOURS = {"lesions": "#ff3030", "new": "#30ff30", "enlarging": "#ffa500", "enhancing": "#ff30ff",
                   "brain": "#30a0ff", "edges": "#ffff00"}
OVERLAY_LABELS = {"lesions": "T2 lesions", "new": "new T2 (vs baseline)", "enlarging": "enlarging T2 (vs baseline)",
                  "enhancing": "Gd+ lesions", "brain": "brain mask", "edges": "reference edges"}

def brain_box(brain: np.ndarray, zooms: Sequence[float], margin_mm: float = MARGIN_MM) -> tuple[slice, slice, slice]:
    """Bounding box of the mask plus ``margin_mm``, within the volume (the whole volume when empty)."""
    if not brain.any():
        return tuple(slice(0, n) for n in brain.shape)  # type: ignore[return-value]
    out = []
    for axis, (n, z) in enumerate(zip(brain.shape, zooms)):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.where(brain.any(axis=other))[0]
        pad = int(math.ceil(margin_mm / z))
        out.append(slice(max(0, int(idx[0]) - pad), min(n, int(idx[-1]) + pad + 1)))
    return tuple(out)  # type: ignore[return-value]


def reduction_factors(shape: Sequence[int], zooms: Sequence[float], max_voxels: int) -> tuple[int, int, int]:
    """Integer block factors per axis so the reduced volume has at most ``max_voxels`` voxels.

    The finest axis (in mm, after reduction) is coarsened first, so thick slices are kept.
    """
    f = [1, 1, 1]

    def count() -> int:
        return int(np.prod([math.ceil(n / k) for n, k in zip(shape, f)]))

    while count() > max_voxels:
        candidates = [a for a in range(3) if math.ceil(shape[a] / f[a]) > 1]
        if not candidates:
            break
        a = min(candidates, key=lambda ax: (zooms[ax] * f[ax], -shape[ax]))
        f[a] += 1
    return (f[0], f[1], f[2])


def block_reduce(vol: np.ndarray, factors: Sequence[int], how: str = "mean") -> np.ndarray:
    """Blocks of ``factors`` voxels to one (``mean`` for images, ``max`` for masks); edges padded."""
    if tuple(factors) == (1, 1, 1):
        return vol
    pad = [(0, (-n) % f) for n, f in zip(vol.shape, factors)]
    padded = np.pad(vol, pad, mode="edge" if how == "mean" else "constant")
    nx, ny, nz = (s // f for s, f in zip(padded.shape, factors))
    blocks = padded.reshape(nx, factors[0], ny, factors[1], nz, factors[2])
    return blocks.mean(axis=(1, 3, 5)) if how == "mean" else blocks.max(axis=(1, 3, 5))


def quantise(vol: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """uint8 display values: 0 at 0, 255 at the brain's 99.5th percentile of positive values."""
    vals = vol[brain] if brain is not None and brain.any() else vol.ravel()
    vals = vals[vals > 0]
    hi = float(np.percentile(vals, DISPLAY_PERCENTILE)) if vals.size else 1.0
    hi = hi if hi > 0 else 1.0
    return np.clip(np.round(np.asarray(vol, np.float32) / hi * 255.0), 0, 255).astype(np.uint8)


def session_view(ref: np.ndarray, affine: np.ndarray, brain: np.ndarray, masks: Mapping[str, np.ndarray],
                 extra: Mapping[str, np.ndarray] | None = None, ref_name: str = "FLAIR",
                 max_voxels: int = MAX_VOLUME_VOXELS) -> SessionView:
    """One visit's images (reference and ``extra``, all on the reference grid) and masks, for embedding."""
    from msimaging.geometry import canonical

    can = canonical(ref, affine)
    brain_c = canonical(np.asarray(brain, np.uint8), affine).data > 0
    box = brain_box(brain_c, can.zooms)
    cropped_shape = tuple(s.stop - s.start for s in box)
    f = reduction_factors(cropped_shape, can.zooms, max_voxels)
    start = np.array([s.start for s in box], float)
    step = np.diag([*map(float, f), 1.0])
    step[:3, 3] = start + (np.array(f, float) - 1) / 2
    grid_affine = can.affine @ step
    brain_r = block_reduce(brain_c[box], f, "max").astype(bool)
    images = {ref_name: quantise(block_reduce(np.asarray(can.data[box], np.float32), f), brain_r)}
    for name, img in (extra or {}).items():
        data = canonical(img, affine).data[box]
        images[name] = quantise(block_reduce(np.asarray(data, np.float32), f), brain_r)
    labels = np.zeros(brain_r.shape, np.uint8)
    present = []
    for name, bit in MASK_BITS.items():
        if name in masks:
            m = block_reduce(canonical(np.asarray(masks[name], np.uint8), affine).data[box] > 0, f, "max")
            labels |= np.where(m, bit, 0).astype(np.uint8)
            present.append(name)
    shape = labels.shape
    return SessionView(ViewGrid((int(shape[0]), int(shape[1]), int(shape[2])), grid_affine), images, labels,
                       tuple(present))


def encode(vol: np.ndarray) -> str:
    """uint8 volume, x fastest (index i + nx * (j + ny * k)), zlib-deflated, base64."""
    return base64.b64encode(zlib.compress(np.asarray(vol, np.uint8).ravel(order="F").tobytes(), 6)).decode("ascii")


def decode(text: str, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode` (tests, and readers of a page)."""
    flat = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    return flat.reshape(tuple(shape), order="F")


def lesion_entries(lesions: Sequence[Any], grid: ViewGrid) -> list[dict[str, Any]]:
    """Counted lesions (:class:`adjudication.InventoryLesion`) with the viewer voxel of each centroid."""
    out = []
    for les in lesions:
        status = "Gd+" if les.kind == "Gd" else (les.status_vs_baseline or "baseline")
        if les.kind != "Gd" and les.status_vs_previous in ("new", "enlarging") \
                and les.status_vs_previous != les.status_vs_baseline:
            status += f" ({les.status_vs_previous} vs previous)"
        out.append({"id": les.lesion_id, "kind": les.kind, "status": status, "volume_mm3": float(les.volume_mm3),
                    "ras": [float(v) for v in les.centroid_ras_mm], "voxel": list(grid.voxel(les.centroid_ras_mm))})
    return out


def payload(view: SessionView) -> dict[str, Any]:
    return {"shape": list(view.grid.shape), "zooms": list(view.grid.zooms),
            "affine": [[float(v) for v in row] for row in view.grid.affine],
            "images": {name: encode(v) for name, v in view.images.items()},
            "labels": encode(view.labels), "masks": list(view.masks)}


def section_html(viewer_id: str, title: str, view: SessionView, lesions: Sequence[Any]) -> str:
    """The viewer of one visit (its data as JSON) and the table of its counted lesions."""

    vid = html.escape(viewer_id)
    data = json.dumps({**payload(view), "colours": {k: OVERLAY_COLOURS[k] for k in view.masks}},
                      separators=(",", ":")).replace("</", "<\\/")
    images = "".join(f"<label><input type='radio' name='{vid}-base' value='{html.escape(n)}'"
                     f"{' checked' if i == 0 else ''}> {html.escape(n)}</label>" for i, n in enumerate(view.images))
    toggles = "".join(f"<label style='color:{OVERLAY_COLOURS[m]}'><input type='checkbox' class='msv-mask' "
                      f"value='{m}' checked> {html.escape(OVERLAY_LABELS[m])}</label>" for m in view.masks)
    planes = "".join(f"<div class='msv-plane'><canvas class='msv-canvas' data-plane='{p}'></canvas>"
                     f"<input type='range' class='msv-slider' data-plane='{p}' min='0' value='0' aria-label='{p} slice'>"
                     f"<div class='msv-index' data-plane='{p}'>{p}</div></div>" for p in ("axial", "coronal", "sagittal"))
    rows = []
    for e in lesion_entries(lesions, view.grid):
        x, y, z = e["ras"]
        rows.append(f"<tr class='msv-lesion' tabindex='0' data-viewer='{vid}' data-lesion='{html.escape(e['id'])}' "
                    f"data-voxel='{' '.join(str(v) for v in e['voxel'])}'><td>{html.escape(e['id'])}</td>"
                    f"<td>{html.escape(e['kind'])}</td><td>{html.escape(e['status'])}</td>"
                    f"<td>{e['volume_mm3']:.0f}</td><td>{x:.0f}, {y:.0f}, {z:.0f}</td></tr>")
    table = ("<table class='msv-lesions'><thead><tr><th>lesion_id</th><th>kind</th><th>status vs baseline</th>"
             "<th>mm³</th><th>RAS (mm)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows \
        else "<p class='note'>No counted lesion at this visit.</p>"
    return (f"<div class='msv-viewer' id='{vid}' data-ready='false'>"
            f"<div class='msv-title'>{html.escape(title)}</div>"
            f"<div class='msv-controls'>{images}<span class='msv-sep'></span>{toggles}"
            f"<span class='msv-pos'></span></div><div class='msv-planes'>{planes}</div>"
            f"<script type='application/json' class='msv-data'>{data}</script></div>"
            f"<details open class='msv-list'><summary>Counted lesions of this visit: click a row to centre the viewer "
            f"on it ({len(rows)})</summary>{table}</details>")


def assets_html() -> str:
    """The viewer's CSS and JS, inlined once per page."""
    pkg = resources.files("msimaging") / "data"
    css = (pkg / "viewer.css").read_text(encoding="utf-8")
    js = (pkg / "viewer.js").read_text(encoding="utf-8")
    return f"<style>{css}</style><script>{js}</script>"


def per_volume_voxels(n_images: int) -> int:
    """The voxel budget of one image when a page embeds ``n_images`` images."""
    return max(10_000, min(MAX_VOLUME_VOXELS, PAGE_VOXELS // max(1, n_images)))


def visit_html(viewer_id: str, title: str, ref: np.ndarray, affine: np.ndarray, brain: np.ndarray,
               masks: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray], lesions: Sequence[Any],
               ref_name: str = "FLAIR", max_voxels: int = MAX_VOLUME_VOXELS) -> str:
    """The viewer section of one visit, from its arrays (what :func:`report.run_report` calls)."""
    view = session_view(ref, affine, brain, masks, extra, ref_name, max_voxels)
    return section_html(viewer_id, title, view, lesions)

"""The radiologist's QC page: one self-contained HTML file per subject, readable offline.

For every visit: lesion, new and enlarging masks over FLAIR (else T2w) and Gd+ masks over ce-T1w
in axial slices; registration check figures (each contrast against the session reference, each
follow-up against the baseline); and every counted new, enlarging and Gd+ lesion as a thumbnail
labelled with its ``lesion_id`` (the id the reader's adjudication file uses), so that a reader
can verify each count. Every figure is a PNG file in ``sub-S/figures`` (Snakemake report items)
and is embedded in the page as a ``data:`` URI.

Display convention: axial slices in radiological orientation (the subject's right on the
viewer's left, marked R), from the image reoriented to RAS. Plotting functions are pure (arrays
in, PNG out); :func:`run_report` reads the files and assembles the page.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msimaging.geometry import Canonical, canonical
from msimaging.viewer import OVERLAY_COLOURS, OVERLAY_LABELS

log = logging.getLogger(__name__)

#: Field of view of a lesion thumbnail (mm).
THUMB_FOV_MM = 48.0


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axial(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS volume as a display array: rows anterior-up, subject's right on the left."""
    return vol[::-1, :, z].T


#: Percentiles for display are taken on at most this many voxels (evenly strided): the same
#: figure to the eye, a fraction of the cost on 1 mm volumes.
DISPLAY_SAMPLE = 400_000


def _display_range(img: np.ndarray) -> tuple[float, float]:
    flat = np.asarray(img).ravel()
    flat = flat[:: max(1, flat.size // DISPLAY_SAMPLE)]
    vals = flat[flat > 0]
    if vals.size == 0:
        return 0.0, 1.0
    hi = np.percentile(vals, 99.5)
    return 0.0, float(hi) if hi > 0 else 1.0


def _show(ax: Any, sl: np.ndarray, vmin: float, vmax: float, aspect: float) -> None:
    ax.imshow(sl, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _contour(ax: Any, mask_slice: np.ndarray, colour: str, width: float = 0.9) -> None:
    if mask_slice.any() and not mask_slice.all():
        ax.contour(mask_slice.astype(float), levels=[0.5], colors=[colour], linewidths=width, origin="lower")


def _orientation_marks(ax: Any) -> None:
    ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="w", fontsize=7, va="center", ha="left")
    ax.text(0.98, 0.5, "L", transform=ax.transAxes, color="w", fontsize=7, va="center", ha="right")


def choose_slices(masks: Sequence[np.ndarray], fallback_extent: np.ndarray | None, n_slices: int) -> list[int]:
    """Axial slice indices: the slices with most mask voxels (spread over the masks' extent)."""
    nz = (masks[0] if masks else fallback_extent).shape[2]  # type: ignore[union-attr]
    per_slice = np.zeros(nz)
    for m in masks:
        per_slice += m.sum(axis=(0, 1))
    if per_slice.any():
        zs = np.where(per_slice > 0)[0]
        if len(zs) <= n_slices:
            return [int(z) for z in zs]
        chunks = np.array_split(zs, n_slices)
        return [int(c[np.argmax(per_slice[c])]) for c in chunks]
    if fallback_extent is not None and fallback_extent.any():
        zs = np.where(fallback_extent.any(axis=(0, 1)))[0]
        lo, hi = zs.min(), zs.max()
    else:
        lo, hi = int(nz * 0.25), int(nz * 0.75)
    return sorted(set(np.linspace(lo + 0.3 * (hi - lo), hi - 0.12 * (hi - lo), n_slices).round().astype(int)))


def plot_overlays(image: np.ndarray, affine: np.ndarray, overlays: dict[str, np.ndarray], out_png: str,
                  n_slices: int = 8, title: str = "", brain: np.ndarray | None = None) -> list[int]:
    """Axial slices of ``image`` with mask contours (colours by overlay name) to a PNG.

    Returns the axial indices shown (on the RAS-reoriented grid).
    """
    plt = _plt()
    can = canonical(image, affine)
    masks = {k: canonical(v.astype(np.uint8), affine).data > 0 for k, v in overlays.items()}
    extent = canonical(brain.astype(np.uint8), affine).data > 0 if brain is not None else can.data > 0
    chosen = choose_slices(list(masks.values()), extent, n_slices)
    vmin, vmax = _display_range(can.data)
    zx, zy = can.zooms[0], can.zooms[1]
    fig, axes = plt.subplots(1, len(chosen), figsize=(2.0 * len(chosen), 2.5), squeeze=False,
                             facecolor="black")
    for ax, z in zip(axes[0], chosen):
        _show(ax, _axial(can.data, z), vmin, vmax, zy / zx)
        for name, m in masks.items():
            _contour(ax, _axial(m, z), OVERLAY_COLOURS.get(name, "y"))
        z_mm = float((can.affine @ np.array([0, 0, z, 1.0]))[2])
        ax.set_title(f"z = {z_mm:.0f} mm", fontsize=7, color="w")
        _orientation_marks(ax)
    handles = [plt.Line2D([], [], color=OVERLAY_COLOURS.get(k, "y"), label=OVERLAY_LABELS.get(k, k)) for k in masks]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False,
                   labelcolor="w")
    if title:
        fig.suptitle(title, fontsize=9, color="w")
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 0.93 if title else 1))
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90, facecolor="black")
    plt.close(fig)
    return chosen


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(np.asarray(image, np.float32), 1.0)
    return np.sqrt(sum(ndi.sobel(smooth, axis=a) ** 2 for a in range(3)))


#: Slices either side of a displayed slice that its 3-D edges depend on (Gaussian 4 sigma + Sobel).
_EDGE_REACH = 5


def slice_edges(image: np.ndarray, mask: np.ndarray, zs: Sequence[int], percentile: float = 85.0
                ) -> dict[int, np.ndarray]:
    """Strong intensity edges of the axial slices ``zs`` inside ``mask`` (eroded by a voxel: brain
    structures, not the scalp): gradient magnitude above its ``percentile`` there.

    Computed on thin slabs around the slices: the gradient of each slice is the 3-D one; the
    threshold is the percentile over the shown slices' brain. Returns ``{z: 2-D edge mask}``.
    """
    from scipy import ndimage as ndi

    nz = image.shape[2]
    grads, regions = {}, {}
    for z in zs:
        lo, hi = max(0, z - _EDGE_REACH), min(nz, z + _EDGE_REACH + 1)
        grads[z] = _gradient_magnitude(image[:, :, lo:hi])[:, :, z - lo]
        regions[z] = ndi.binary_erosion(np.asarray(mask[:, :, max(0, z - 1):z + 2]) > 0, iterations=1)[:, :, z - max(0, z - 1)]
    inside = np.concatenate([grads[z][regions[z]] for z in zs]) if zs else np.zeros(0)
    if inside.size == 0:
        return {z: np.zeros(image.shape[:2], bool) for z in zs}
    thr = np.percentile(inside, percentile)
    return {z: (grads[z] > thr) & regions[z] for z in zs}


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """2D checkerboard of two slices of equal shape, each scaled to its own 99th percentile."""
    def norm(x: np.ndarray) -> np.ndarray:
        hi = np.percentile(x[x > 0], 99) if (x > 0).any() else 1.0
        return np.clip(x / hi, 0, 1)

    a, b = norm(a), norm(b)
    ii, jj = np.indices(a.shape)
    ti = max(1, a.shape[0] // tiles)
    tj = max(1, a.shape[1] // tiles)
    return np.where(((ii // ti) + (jj // tj)) % 2 == 0, a, b)


def _yellow() -> Any:
    from matplotlib.colors import ListedColormap

    return ListedColormap([OVERLAY_COLOURS["edges"]])


def plot_registration(fixed: np.ndarray, moving_on_fixed: np.ndarray, affine: np.ndarray, brain: np.ndarray | None,
                      out_png: str, title: str, fixed_name: str, moving_name: str, n_slices: int = 4) -> None:
    """Registration check: checkerboard of fixed/moving and the moving image under the fixed image's edges."""
    plt = _plt()
    yellow = _yellow()
    f = canonical(fixed, affine)
    m = canonical(moving_on_fixed, affine).data
    b = canonical(brain.astype(np.uint8), affine).data > 0 if brain is not None else f.data > 0
    chosen = choose_slices([], b, n_slices)
    e = slice_edges(f.data, b, chosen)
    aspect = f.zooms[1] / f.zooms[0]
    fig, axes = plt.subplots(2, len(chosen), figsize=(2.1 * len(chosen), 4.6), squeeze=False, facecolor="black")
    vmin, vmax = _display_range(m)
    for k, z in enumerate(chosen):
        _show(axes[0][k], checkerboard(_axial(f.data, z), _axial(m, z)), 0, 1, aspect)
        _show(axes[1][k], _axial(m, z), vmin, vmax, aspect)
        overlay = np.ma.masked_where(~e[z][::-1, :].T, np.ones_like(_axial(m, z)))
        axes[1][k].imshow(overlay, origin="lower", cmap=yellow, alpha=0.6, aspect=aspect, vmin=0, vmax=1,
                          interpolation="nearest")
        for row in (0, 1):
            _orientation_marks(axes[row][k])
    axes[0][0].set_ylabel("checkerboard", color="w", fontsize=7)
    axes[1][0].set_ylabel(f"{moving_name} + {fixed_name} edges", color="w", fontsize=7)
    fig.suptitle(title, fontsize=9, color="w")
    fig.text(0.5, 0.01, f"top: alternating tiles of {fixed_name} and {moving_name}; "
             f"bottom: {moving_name} with the edges of {fixed_name} (yellow)", color="w", fontsize=7, ha="center")
    fig.tight_layout(rect=(0, 0.04, 1, 0.94))
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80, facecolor="black")
    plt.close(fig)


def plot_lesion_thumbnail(panels: Sequence[tuple[str, np.ndarray]], lesion: np.ndarray, affine: np.ndarray,
                          out_png: str, title: str, colour: str = "#30ff30",
                          fov_mm: float = THUMB_FOV_MM) -> None:
    """One counted lesion: each panel (name, image on the lesion's grid) cropped around it, lesion outlined.

    The axial slice is the lesion's largest cross-section; the field of view is ``fov_mm`` square.
    """
    plt = _plt()
    les = canonical(lesion.astype(np.uint8), affine)
    mask = les.data > 0
    if not mask.any():
        raise ValueError(f"{title}: empty lesion mask")
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    xs, ys = np.where(mask[:, :, z])
    cx, cy = float(xs.mean()), float(ys.mean())
    hx = max(4, int(round(fov_mm / 2 / les.zooms[0])))
    hy = max(4, int(round(fov_mm / 2 / les.zooms[1])))
    x0, x1 = max(0, int(cx) - hx), min(mask.shape[0], int(cx) + hx + 1)
    y0, y1 = max(0, int(cy) - hy), min(mask.shape[1], int(cy) + hy + 1)
    aspect = les.zooms[1] / les.zooms[0]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.15), squeeze=False, facecolor="black")
    for ax, (name, img) in zip(axes[0], panels):
        vol = canonical(img, affine).data
        vmin, vmax = _display_range(vol)
        crop = vol[x0:x1, y0:y1, z]
        _show(ax, crop[::-1].T, vmin, vmax, aspect)
        _contour(ax, mask[x0:x1, y0:y1, z][::-1].T, colour, 1.1)
        ax.set_title(name, fontsize=7, color="w")
    fig.suptitle(title, fontsize=8, color="w")
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80, facecolor="black")
    plt.close(fig)


# --- page assembly -------------------------------------------------------------------------------


def _png_tag(path: Path, alt: str, css: str = "figure") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="{css}" alt="{html.escape(alt)}" title="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _rows_html(rows: list[dict[str, str]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(columns or rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c) if r.get(c) is not None else ''))}</td>"
                                    for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1em 2em;background:#fafafa;color:#111}"
    "table{border-collapse:collapse;font-size:11px;margin:.4em 0}td,th{border:1px solid #bbb;padding:2px 5px}"
    "th{background:#eee}img.figure{max-width:100%;display:block;margin:.3em 0}"
    "img.thumb{height:170px;margin:2px}.thumbs{display:flex;flex-wrap:wrap;gap:4px}"
    "figure{margin:0;max-width:330px}figcaption{font-size:11px}.note{color:#555;font-size:12px}"
    "#figure-status{font-size:12px;padding:2px 6px;background:#e8f4e8;display:inline-block}"
    "#figure-status.bad{background:#f8d0d0}"
)

# Counts the figures the browser could decode, so a reader (and the browser test) sees at once
# whether every figure of the page rendered.
_SCRIPT = (
    "window.addEventListener('load',function(){var imgs=document.images,ok=0;"
    "for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}}"
    "var s=document.getElementById('figure-status');s.textContent=ok+' of '+imgs.length+' figures loaded';"
    "s.dataset.loaded=ok;s.dataset.total=imgs.length;if(ok!==imgs.length){s.className='bad';}});"
)


def page_html(subject: str, sections: list[str], n_figures: int) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>msimaging QC sub-{html.escape(subject)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>msimaging QC: sub-{html.escape(subject)}</h1>"
            f"<p id='figure-status' data-expected='{n_figures}'>{n_figures} figures (loading)</p>"
            f"{''.join(sections)}<script>{_SCRIPT}</script></body></html>\n")


def _thumb_panels(info: dict[str, Any], les_kind: str, ref_img: np.ndarray, ref_affine: np.ndarray,
                  cache: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    from msimaging import io

    if les_kind == "Gd":
        panels = [("ce-T1w", cache["ce"])]
        if "t1_image" in info:
            panels.append(("T1w (pre)", cache.setdefault("t1", io.read_image(info["t1_image"])[0])))
        if info.get("reference") in ("FLAIR", "T2w"):
            # an enhancing MS lesion is T2/FLAIR-hyperintense: the reader checks it here
            panels.append((f"{info['reference']} ses-{info['session']}", ref_img))
        return panels
    panels = [(f"{info['reference']} ses-{info['session']}", ref_img)]
    if "baseline_on_session" in cache:
        panels.append((f"{info['reference']} baseline", cache["baseline_on_session"]))
    return panels


def run_report(subject: str, sessions: list[dict[str, Any]], out_html: str, figures_dir: str, cfg: dict,
               out_inventory: str | None = None) -> None:
    """Figures, the lesion inventory (ids of the thumbnails) and the self-contained page of one subject.

    ``sessions``: per session (visit order) the files :meth:`dag.Plan.subject_info` lists.
    """
    from msimaging import io, viewer
    from msimaging import layout as L
    from msimaging.adjudication import INVENTORY_COLUMNS, session_inventory
    from msimaging.geometry import Canonical, canonical, Grid, read_transform, resample_array
    from msimaging.lesions import label_lesions, rules_from_config

    rules = rules_from_config(cfg)
    figs = Path(figures_dir)
    figs.mkdir(parents=True, exist_ok=True)
    n_figs = 0
    endpoints_rows = io.read_table(L.subject_endpoints(subject)) if Path(L.subject_endpoints(subject)).is_file() else []
    shown = ["session", "is_baseline", "days_since_baseline", "t2_lesion_count", "t2_lesion_volume_ml",
             "new_t2_vs_baseline", "enlarging_t2_vs_baseline", "new_t2_vs_previous", "gd_lesion_count",
             "cua_lesion_count", "brain_volume_ml", "bpf", "pbvc_vs_baseline", "qc_status", "qc_notes"]
    parts = ["<h2>Endpoints</h2><p class='note'>The pipeline's values, before any reader adjudication "
             "(endpoints.csv has the adjudicated values and says which rows in reader_adjudicated).</p>", _rows_html(endpoints_rows, [c for c in shown if not endpoints_rows
                                                                or c in endpoints_rows[0]]),
             "<p class='note'>Axial slices in radiological orientation (R = subject's right). Lesion ids are "
             "those of the adjudication file (T2: label of the lesion dseg; Gd+: Gd&lt;k&gt;).</p>"]
    inventory_rows: list[dict[str, Any]] = []
    viewer_voxels = viewer.per_volume_voxels(sum(1 + ("enhancing" in s) for s in sessions))
    baseline_info = next((s for s in sessions if s.get("is_baseline")), sessions[0] if sessions else None)
    for info in sessions:
        ses = info["session"]
        stem = f"sub-{subject}_ses-{ses}"
        ref_img, ref_affine = io.read_image(info["ref_image"])
        brain = io.read_mask(info["brain"])[0]
        dseg, _ = io.read_image(info["dseg"], dtype=np.int32)
        cache: dict[str, Any] = {}
        parts.append(f"<h2 id='ses-{html.escape(ses)}'>ses-{html.escape(ses)}"
                     f"{' (baseline)' if info.get('is_baseline') else ''}</h2>")

        # lesion masks over the reference image
        overlays = {"lesions": io.read_mask(info["lesions"])[0]}
        for key in ("new", "enlarging"):
            if key in info:
                overlays[key] = io.read_mask(info[key])[0]
        png = figs / f"{stem}_desc-lesions_overlay.png"
        plot_overlays(ref_img, ref_affine, overlays, str(png), title=f"ses-{ses} {info['reference']}: T2 lesions"
                      + (", new and enlarging vs baseline" if "new" in info else ""), brain=brain)
        parts.append("<h3>Lesion masks</h3>" + _png_tag(png, f"ses-{ses} lesion overlay"))
        n_figs += 1
        gd_mask = None
        if "enhancing" in info:
            cache["ce"], _ = io.read_image(info["ce_image"])
            gd_mask = io.read_mask(info["enhancing"])[0]
            png = figs / f"{stem}_desc-enhancing_overlay.png"
            plot_overlays(cache["ce"], ref_affine, {"enhancing": gd_mask}, str(png),
                          title=f"ses-{ses} ce-T1w: Gd+ lesions", brain=brain)
            parts.append(_png_tag(png, f"ses-{ses} enhancing overlay"))
            n_figs += 1
        else:
            parts.append("<p class='note'>Gd+ not measured (ce-T1w or T1w missing): no enhancing overlay.</p>")

        # the interactive viewer (msimaging.viewer), before the registration checks
        lesion_rows = io.read_table(info["lesion_table"])
        inventory = session_inventory(subject, ses, dseg, lesion_rows, gd_mask, ref_affine, rules)
        parts.append("<h3>Viewer</h3>" + viewer.visit_html(
            f"{stem}-viewer", f"ses-{ses}: scroll (wheel or slider), click to move the cross", ref_img, ref_affine,
            brain, {**overlays, **({"enhancing": gd_mask} if gd_mask is not None else {})},
            {"ce-T1w": cache["ce"]} if "ce" in cache else {}, inventory, info["reference"], viewer_voxels))

        # registration checks
        parts.append("<h3>Registration checks</h3>")
        for contrast, path in sorted(info.get("coregistered", {}).items()):
            moving, _ = io.read_image(path)
            png = figs / f"{stem}_desc-coreg{contrast}_regcheck.png"
            plot_registration(ref_img, moving, ref_affine, brain, str(png),
                              f"ses-{ses}: {contrast} co-registered to {info['reference']}",
                              info["reference"], contrast)
            parts.append(_png_tag(png, f"ses-{ses} {contrast} to {info['reference']} registration check"))
            n_figs += 1
        if "to_baseline_xfm" in info and baseline_info is not None:
            bl_img, bl_affine = io.read_image(baseline_info["ref_image"])
            bl_brain = io.read_mask(baseline_info["brain"])[0]
            xfm = read_transform(info["to_baseline_xfm"])  # from-session_to-baseline: baseline -> session points
            fu_on_bl = resample_array(ref_img, ref_affine, Grid(bl_img.shape, bl_affine), xfm)  # type: ignore[arg-type]
            png = figs / f"{stem}_desc-tobaseline_regcheck.png"
            plot_registration(bl_img, fu_on_bl, bl_affine, bl_brain, str(png),
                              f"ses-{ses} registered to baseline ses-{baseline_info['session']}",
                              "baseline", f"ses-{ses}")
            parts.append(_png_tag(png, f"ses-{ses} to baseline registration check"))
            n_figs += 1
            cache["baseline_on_session"] = resample_array(bl_img, bl_affine, Grid(ref_img.shape, ref_affine),  # type: ignore[arg-type]
                                                          xfm.GetInverse())
        elif not info.get("coregistered"):
            parts.append("<p class='note'>Single-contrast baseline visit: nothing registered.</p>")

        # every counted lesion, and thumbnails of the active ones
        inventory_rows += [les.to_row() for les in inventory]
        gd_labels = label_lesions(gd_mask, ref_affine, rules) if gd_mask is not None else None
        thumbs = []
        for les in inventory:
            active = les.kind == "Gd" or les.status_vs_baseline in ("new", "enlarging") \
                or les.status_vs_previous in ("new", "enlarging")
            if not active:
                continue
            if les.kind == "Gd":
                assert gd_labels is not None
                region = gd_labels == int(les.lesion_id[2:])
                colour = OVERLAY_COLOURS["enhancing"]
                what = "Gd+"
            else:
                region = dseg == int(les.lesion_id)
                status = les.status_vs_baseline if les.status_vs_baseline in ("new", "enlarging") \
                    else f"{les.status_vs_previous} vs previous"
                colour = OVERLAY_COLOURS["new" if "new" in status else "enlarging"]
                what = status
            label = f"lesion {les.lesion_id}: {what}, {les.volume_mm3:.0f} mm³"
            png = figs / f"{stem}_lesion-{les.lesion_id}_thumb.png"
            plot_lesion_thumbnail(_thumb_panels(info, les.kind, ref_img, ref_affine, cache), region, ref_affine,
                                  str(png), f"ses-{ses} {label}", colour)
            x, y, z = les.centroid_ras_mm
            thumbs.append(f"<figure id='{html.escape(stem)}-lesion-{html.escape(les.lesion_id)}'>"
                          f"{_png_tag(png, f'ses-{ses} {label}', 'thumb')}<figcaption>"
                          f"<b>{html.escape(les.lesion_id)}</b> {html.escape(what)}, "
                          f"{les.volume_mm3:.0f} mm³, RAS ({x:.0f}, {y:.0f}, {z:.0f}) mm, counts in: "
                          f"{html.escape(', '.join(les.counted_in()))}</figcaption></figure>")
            n_figs += 1
        parts.append(f"<h3>Counted new, enlarging and Gd+ lesions ({len(thumbs)})</h3>")
        parts.append(f"<div class='thumbs'>{''.join(thumbs)}</div>" if thumbs else
                     "<p class='note'>No new, enlarging or Gd+ lesion counted at this visit.</p>")
        parts.append("<details><summary>All counted lesions of this visit (lesion inventory)</summary>"
                     + _rows_html([{k: io.format_value(v, 1) for k, v in les.to_row().items()} for les in inventory],
                                  INVENTORY_COLUMNS[1:]) + "</details>")
    parts.append(viewer.assets_html())
    io.write_text(out_html, page_html(subject, parts, n_figs))
    if out_inventory:
        io.write_table(out_inventory, INVENTORY_COLUMNS, inventory_rows)
    log.info("QC page %s: %d figures", out_html, n_figs)

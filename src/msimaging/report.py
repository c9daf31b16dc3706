"""The radiologist's QC page: overlays per visit, one self-contained HTML file per subject.

Plotting functions are pure (arrays in, PNG file out); :func:`run_report` assembles the page.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OVERLAY_COLOURS = {"lesions": "#ff3030", "new": "#30ff30", "enlarging": "#ffa500", "enhancing": "#ff30ff",
                   "brain": "#30a0ff"}


def _axial_order(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, int]:
    """The data reoriented to RAS (nibabel canonical) and the index of its axial axis (2)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), affine))
    return np.asarray(img.dataobj), 2


def plot_overlays(image: np.ndarray, affine: np.ndarray, overlays: dict[str, np.ndarray], out_png: str,
                  n_slices: int = 8, title: str = "") -> None:
    """Axial slices of ``image`` with mask contours (colours by overlay name) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, _ = _axial_order(image, affine)
    masks = {k: _axial_order(v.astype(np.uint8), affine)[0] > 0 for k, v in overlays.items()}
    any_mask = np.zeros(img.shape, bool)
    for m in masks.values():
        any_mask |= m
    zs = np.where(any_mask.any(axis=(0, 1)))[0]
    nz = img.shape[2]
    if zs.size:
        chosen = np.unique(np.linspace(zs.min(), zs.max(), n_slices).round().astype(int))
    else:
        chosen = np.unique(np.linspace(nz * 0.25, nz * 0.75, n_slices).round().astype(int))
    vmax = float(np.percentile(img[img > 0], 99.5)) if (img > 0).any() else 1.0
    fig, axes = plt.subplots(1, len(chosen), figsize=(2.2 * len(chosen), 2.6), squeeze=False)
    for ax, z in zip(axes[0], chosen):
        ax.imshow(img[:, :, z].T, origin="lower", cmap="gray", vmin=0, vmax=vmax)
        for name, m in masks.items():
            if m[:, :, z].any():
                ax.contour(m[:, :, z].T.astype(float), levels=[0.5], colors=[OVERLAY_COLOURS.get(name, "y")],
                           linewidths=0.8)
        ax.set_title(f"z={z}", fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(path: str) -> str:
    from msimaging import io

    rows = io.read_table(path)
    if not rows:
        return "<p>(empty)</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v or '')}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def run_report(subject: str, sessions: list[dict[str, Any]], out_html: str, figures_dir: str, cfg: dict) -> None:
    from msimaging import io
    from msimaging import layout as L

    figs = Path(figures_dir)
    figs.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>sub-{html.escape(subject)}</h1>", "<h2>Endpoints</h2>", _table_html(L.subject_endpoints(subject))]
    for info in sessions:
        ses = info["session"]
        image, affine = io.read_image(info["ref_image"])
        overlays = {"lesions": io.read_mask(info["lesions"])[0]}
        for key in ("new", "enlarging"):
            if key in info:
                overlays[key] = io.read_mask(info[key])[0]
        png = figs / f"sub-{subject}_ses-{ses}_desc-lesions_overlay.png"
        plot_overlays(image, affine, overlays, str(png), title=f"ses-{ses} {info['reference']}: lesions")
        parts.append(f"<h2>ses-{html.escape(ses)}</h2>")
        parts.append(_png_tag(png, f"ses-{ses} lesion overlay"))
        if "enhancing" in info:
            ce, ce_affine = io.read_image(info["ce_image"])
            png = figs / f"sub-{subject}_ses-{ses}_desc-enhancing_overlay.png"
            plot_overlays(ce, ce_affine, {"enhancing": io.read_mask(info["enhancing"])[0]}, str(png),
                          title=f"ses-{ses} ce-T1w: Gd+ lesions")
            parts.append(_png_tag(png, f"ses-{ses} enhancing overlay"))
        parts.append("<h3>Lesions</h3>" + _table_html(info["lesion_table"]))
    style = ("body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;font-size:11px}"
             "td,th{border:1px solid #ccc;padding:2px 5px}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>msimaging QC sub-{html.escape(subject)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    io.write_text(out_html, page)

"""The MNI152 2009a template bundled with nilearn (offline): T1, tissue maps, brain envelope.

nilearn ships these maps inside its package (1 mm, 197x233x189, uint8 0..255), so nothing is
downloaded. They are read straight from nilearn's package data (the files
``nilearn.datasets.load_mni152_*_template`` loads), with the nilearn functions as a fallback for
other layouts. Tissue maps are returned as probabilities in [0, 1]; CSF is the brain envelope
minus GM and WM.

The brain envelope (:attr:`Template.brain`) is the intracranial brain the ``desc-brain_mask``
contract asks for: parenchyma, ventricles and sulcal CSF inside the smooth hull of the brain
(the template's brain region closed by 6 mm and filled); it is what registration carries onto
each session before the intensity refinement in :mod:`msimaging.preprocess`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

SPACE = "MNI152NLin2009aSym"

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Closing radius (mm) that turns the template's brain region into the smooth brain envelope.
ENVELOPE_CLOSING_MM = 6.0


@dataclass(frozen=True)
class Template:
    t1: np.ndarray      # float32, 0..1 (skull-stripped T1 template)
    gm: np.ndarray      # probabilities
    wm: np.ndarray
    csf: np.ndarray     # envelope minus GM and WM
    brain: np.ndarray   # bool: the brain envelope (parenchyma, ventricles, sulcal CSF)
    affine: np.ndarray  # RAS, 1 mm

    @property
    def brain_fraction(self) -> np.ndarray:
        """The envelope as a smooth 0..1 map (partial volume at its surface), float32."""
        return _smooth_fraction(self.brain)


def _nilearn_data_dir() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _load_all() -> tuple[dict[str, np.ndarray], np.ndarray]:
    import nibabel as nib

    folder = _nilearn_data_dir()
    if folder is not None and all((folder / f).is_file() for f in _FILES.values()):
        images = {k: nib.load(str(folder / f)) for k, f in _FILES.items()}
    else:  # pragma: no cover - other nilearn layouts
        from nilearn import datasets

        images = {"t1": datasets.load_mni152_template(resolution=1),
                  "gm": datasets.load_mni152_gm_template(resolution=1),
                  "wm": datasets.load_mni152_wm_template(resolution=1)}
    out = {}
    for k, img in images.items():
        data = np.asarray(img.dataobj, dtype=np.float32)
        if float(data.max()) > 1.5:  # stored as uint8 0..255
            data = data / np.float32(255.0)
        out[k] = np.clip(data, 0.0, 1.0).astype(np.float32)
    return out, np.asarray(images["t1"].affine, dtype=float)


def _ball_1mm(radius_mm: float) -> np.ndarray:
    r = int(np.floor(radius_mm))
    g = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (g ** 2).sum(axis=0) <= radius_mm ** 2 + 1e-6


def _smooth_fraction(mask: np.ndarray) -> np.ndarray:
    return np.clip(ndi.gaussian_filter(mask.astype(np.float32), 0.7), 0.0, 1.0).astype(np.float32)


def brain_envelope(t1: np.ndarray, parenchyma: np.ndarray, closing_mm: float = ENVELOPE_CLOSING_MM) -> np.ndarray:
    """The smooth brain envelope on the 1 mm template grid (bool).

    The template's brain region (``t1 > 0.01`` or parenchyma > 0.1) closed by ``closing_mm``,
    holes filled, lightly smoothed; the definition the phantom's truth masks use. The closing is
    computed on a 2 mm grid (a second, not ten) and brought back by linear interpolation.
    """
    region = (t1 > 0.01) | (parenchyma > 0.1)
    pad = [(0, (-n) % 2) for n in region.shape]
    r2 = np.pad(region, pad).astype(np.float32)
    nx, ny, nz = r2.shape
    coarse = r2.reshape(nx // 2, 2, ny // 2, 2, nz // 2, 2).mean(axis=(1, 3, 5)) > 0.5
    radius = closing_mm / 2.0
    margin = int(np.ceil(radius)) + 2
    padded = np.pad(coarse, margin)
    closed = ndi.binary_closing(padded, _ball_1mm(radius))[margin:-margin, margin:-margin, margin:-margin]
    closed = ndi.binary_fill_holes(closed | coarse)
    fine = ndi.zoom(closed.astype(np.float32), 2, order=1, grid_mode=True, mode="nearest")
    fine = fine[:region.shape[0], :region.shape[1], :region.shape[2]] > 0.5
    out = ndi.binary_fill_holes(fine | region)
    return ndi.gaussian_filter(out.astype(np.float32), 1.0) > 0.5


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The 1 mm MNI152 template (cached per process; arrays are read-only)."""
    maps, affine = _load_all()
    t1, gm, wm = maps["t1"], maps["gm"], maps["wm"]
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    brain = brain_envelope(t1, gm + wm)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    for arr in (t1, gm, wm, csf, brain):
        arr.setflags(write=False)
    return Template(t1=t1, gm=gm, wm=wm, csf=csf, brain=brain, affine=affine)

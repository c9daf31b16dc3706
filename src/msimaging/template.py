"""The MNI152 2009a template bundled with nilearn (offline): T1, tissue maps, brain mask.

nilearn ships these maps inside its package (1 mm, 197x233x189, uint8 0..255), so nothing is
downloaded. Tissue maps are returned as probabilities in [0, 1]; CSF is the brain region minus
GM and WM.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

SPACE = "MNI152NLin2009aSym"


@dataclass(frozen=True)
class Template:
    t1: np.ndarray      # float32, 0..1
    gm: np.ndarray      # probabilities
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray   # bool: GM+WM+CSF region (intracranial brain envelope)
    affine: np.ndarray  # RAS


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from nilearn import datasets

    loader = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
    }[name]
    img = loader(resolution=1)
    return np.asarray(img.get_fdata(), dtype=np.float32) / 255.0, np.asarray(img.affine, dtype=float)


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The 1 mm MNI152 template (cached per process)."""
    t1, affine = _load("t1")
    gm, _ = _load("gm")
    wm, _ = _load("wm")
    brain = ndi.binary_fill_holes(ndi.binary_closing(t1 > 0.02, np.ones((3, 3, 3)), iterations=2))
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    for arr in (t1, gm, wm, csf):
        arr.setflags(write=False)
    brain.setflags(write=False)
    return Template(t1=t1, gm=gm, wm=wm, csf=csf, brain=brain, affine=affine)

"""Combined unique active lesions: Gd+ plus new/enlarging T2 lesions that do not enhance."""

from __future__ import annotations

import numpy as np

from msimaging.endpoints import cua_count
from msimaging.lesions import LesionRules
from tests.conftest import oblique_affine

AFFINE = oblique_affine(zooms=(1.0, 1.0, 3.0))


def test_cua_counts_each_active_lesion_once():
    shape = (30, 30, 10)
    labels = np.zeros(shape, dtype=np.int32)
    labels[2:6, 2:6, 2:4] = 1          # new, enhancing: counted once, as Gd+
    labels[10:14, 2:6, 2:4] = 2        # enlarging, not enhancing: +1
    labels[20:24, 2:6, 2:4] = 3        # stable: not active
    gd = np.zeros(shape, dtype=bool)
    gd[3:5, 3:5, 2:4] = True           # inside lesion 1
    gd[20:24, 20:24, 5:7] = True       # Gd+ lesion without T2 change: +1
    hidden = np.zeros(shape, dtype=bool)
    hidden[2:6, 20:24, 6:8] = True     # new, found by subtraction only (not in the dseg): +1
    hidden_enh = np.zeros(shape, dtype=bool)
    hidden_enh[21:23, 21:23, 5:7] = True   # new by subtraction, on the 2nd Gd+ lesion: not again
    changes = [
        {"lesion_id": 1, "status": "new"},
        {"lesion_id": 2, "status": "enlarging"},
        {"lesion_id": 3, "status": "stable"},
        {"lesion_id": 4, "status": "new", "segmented": False, "voxels": np.flatnonzero(hidden).tolist()},
        {"lesion_id": 5, "status": "new", "segmented": False, "voxels": np.flatnonzero(hidden_enh).tolist()},
    ]
    assert cua_count(labels, changes, gd, AFFINE, LesionRules()) == 2 + 1 + 1

"""Shared fixtures: tiny images with non-identity affines, and the phantom studies."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def oblique_affine(zooms=(0.9, 1.1, 3.0), angles_deg=(12.0, -7.0, 20.0), origin=(-80.0, 95.0, -40.0),
                   lps: bool = True) -> np.ndarray:
    """An oblique, anisotropic, optionally LPS-stored voxel-to-RAS affine."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    if lps:
        rot = rot @ np.diag([-1.0, -1.0, 1.0])
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(zooms)
    a[:3, 3] = origin
    return a


@pytest.fixture
def make_nifti(tmp_path):
    """Write a small NIfTI with any data/affine and return its path (nipreps' make_nifti)."""
    counter = {"n": 0}

    def _make(data: np.ndarray, affine: np.ndarray | None = None, name: str | None = None,
              qform_affine: np.ndarray | None = None, dtype=None) -> Path:
        counter["n"] += 1
        aff = oblique_affine() if affine is None else affine
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype) if dtype else np.asarray(data), aff)
        img.set_sform(aff, code=1)
        img.set_qform(aff if qform_affine is None else qform_affine, code=1)
        path = tmp_path / (name or f"img{counter['n']}.nii.gz")
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))
        return path

    return _make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Whole-pipeline tests (tests/workflow) first, then the slow unit tests, then the rest (files kept whole).

    ``make test`` runs two xdist workers (``--dist loadfile``); handing out the long files first is
    meant to let them finish together (measured: the SLURM file can still end up last). The sort is
    stable and the same on every worker, as xdist requires.
    """
    def rank(item) -> int:
        if item.nodeid.startswith("tests/workflow/"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)

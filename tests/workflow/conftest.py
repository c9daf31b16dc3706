"""A small phantom study run through the whole pipeline once per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from msimaging.phantom import PhantomOptions, make_study
from tests.conftest import SHARED_DATA

MSIMAGING = [sys.executable, "-m", "msimaging.cli"]


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MSIMAGING, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"msimaging {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory) -> Path:
    """Two subjects, two visits, 3 mm, LPS headers; sub-p02 has no ce-T1w (Gd+ must be NA)."""
    root = tmp_path_factory.mktemp("phantom")
    masks = SHARED_DATA / "ms-lesion-masks"
    make_study(root, PhantomOptions(subjects=2, sessions=2, resolution_mm=3.0, seed=11, orientation="LPS",
                                    lesion_masks_dir=masks if masks.is_dir() else None))
    for f in root.glob("sub-p02/ses-*/anat/*ce-gadolinium*"):
        f.unlink()
    return root


@pytest.fixture(scope="session")
def pipeline_run(phantom_study, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("derivatives")
    proc = run_cli("run", str(phantom_study), str(out), "--cores", "2")
    return out, proc

"""A small phantom study run through the whole pipeline once per test session.

Under pytest-xdist the study and its run are made once for all workers (the first worker to ask
makes them under a file lock, the others wait and read them): ``make test`` puts test_pipeline.py
and test_qc_outcome.py on different workers, and each used to run the whole pipeline again.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from msimaging.phantom import PhantomOptions, make_study
from tests.conftest import SHARED_DATA

MSIMAGING = [sys.executable, "-m", "msimaging.cli"]


def require_chromium() -> str:
    """The headless browser (installed by `make browser`, part of `make test`); skips only outside CI."""
    from msimaging.browser import find_chromium

    exe = find_chromium()
    if exe:
        return exe
    reason = "headless Chromium is not installed and `make browser` could not install it (apt-get install chromium)"
    if os.environ.get("CI") or os.environ.get("MSIMAGING_REQUIRE_BROWSER"):
        pytest.fail(reason + "; CI requires the browser test")
    pytest.skip(reason)


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MSIMAGING, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"msimaging {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@contextmanager
def shared_folder(tmp_path_factory, name: str) -> Iterator[tuple[Path, bool]]:
    """``(folder, ready)`` shared by every xdist worker of this session, held under a lock.

    ``ready`` is False for the first caller, which must fill ``folder`` before leaving the block.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common base folder
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = done.exists()
        yield folder, ready
        done.touch()


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory) -> Path:
    """Two subjects, two visits, 3 mm, LPS headers; sub-p02 has no ce-T1w (Gd+ must be NA)."""
    with shared_folder(tmp_path_factory, "phantom") as (root, ready):
        if not ready:
            masks = SHARED_DATA / "ms-lesion-masks"
            make_study(root, PhantomOptions(subjects=2, sessions=2, resolution_mm=3.0, seed=11, orientation="LPS",
                                            lesion_masks_dir=masks if masks.is_dir() else None))
            for f in root.glob("sub-p02/ses-*/anat/*ce-gadolinium*"):
                f.unlink()
    return root


@pytest.fixture(scope="session")
def pipeline_run(phantom_study, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The study run once (read-only for the tests: a test that changes it works on a copy)."""
    with shared_folder(tmp_path_factory, "derivatives") as (out, ready):
        record = out.parent / "derivatives.run.json"
        if not ready:
            proc = run_cli("run", str(phantom_study), str(out), "--cores", "2")
            record.write_text(json.dumps({"args": [str(a) for a in proc.args], "returncode": proc.returncode,
                                          "stdout": proc.stdout, "stderr": proc.stderr}))
        saved = json.loads(record.read_text())
    return out, subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"], saved["stderr"])

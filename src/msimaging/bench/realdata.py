"""Real sessions prepared by the pipeline itself, as backgrounds for the real-data benchmarks.

``python -m msimaging.bench`` sections that work on real scans (``lesions``, ``activity``) must see
exactly what the pipeline's rules see: its bias correction, brain mask, template registration,
co-registration and standardisation. :func:`prepared_run` runs ``msimaging run`` on a BIDS dataset
of ``shared/data`` up to (not including) ``segment_lesions`` and returns its output folder.

The run is cached under ``WORK/pipeline-<digest>``, where the digest covers the input files and
every source file that makes those outputs (``PREPARATION_MODULES``, the preparation scripts and
rules, and the default config and schema less the sections read only from segmentation on), so a
code change that could alter them makes a new run: no cache survives such a change. (The phantom
generator is covered through the phantom study's own files, which are inputs.)
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "src" / "msimaging"
DEFAULT_SHARED = REPO.parent / "shared" / "data"

#: The package modules, scripts and rules that make the prepared inputs (validation, N4, brain
#: mask and template registration, co-registration and standardisation, and what they use).
PREPARATION_MODULES = ("__init__.py", "bids.py", "config.py", "dag.py", "geometry.py", "io.py", "layout.py",
                       "morphology.py", "preprocess.py", "register.py", "runtime.py", "template.py",
                       "validate.py")
PREPARATION_SCRIPTS = ("validate_inputs.py", "preprocess.py", "brain_mask.py", "coregister.py")
PREPARATION_RULES = ("common.smk", "preprocess.smk", "brain.smk", "register.smk")

#: Config sections read only from ``segment_lesions`` on.
CONFIG_AFTER_PREPARATION = frozenset({"lesions", "change", "enhancing", "atrophy", "qc", "outcome"})


def _config_text() -> bytes:
    """The default config without the sections that cannot change the prepared inputs."""
    import yaml

    from msimaging.config import default_config, load_schema

    cfg = {k: v for k, v in default_config().items() if k not in CONFIG_AFTER_PREPARATION}
    schema = load_schema()
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in CONFIG_AFTER_PREPARATION}
    return yaml.safe_dump({"config": cfg, "schema": {**schema, "properties": props}}, sort_keys=True).encode()


def code_digest(extra: tuple[Path, ...] = ()) -> str:
    """sha256 (16 hex digits) of the sources that make the prepared inputs, and of ``extra`` files."""
    h = hashlib.sha256()
    files = [PACKAGE / m for m in PREPARATION_MODULES] + [REPO / "scripts" / m for m in PREPARATION_SCRIPTS]
    files += [REPO / "workflow" / "Snakefile"] + [REPO / "workflow" / "rules" / m for m in PREPARATION_RULES]
    h.update(_config_text())
    for p in [*files, *extra]:
        h.update(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def prepared_run(bids_dir: Path, work: Path, cores: int = 2) -> Path:
    """The pipeline's outputs up to segmentation for every subject of ``bids_dir`` (cached)."""
    inputs = tuple(sorted(p for p in Path(bids_dir).rglob("*") if p.is_file() and "derivatives" not in p.parts))
    out = Path(work) / f"pipeline-{Path(bids_dir).name}-{code_digest(inputs)}"
    done = out / "prepared.ok"
    if done.is_file():
        return out
    cmd = [sys.executable, "-m", "msimaging.cli", "run", str(bids_dir), str(out), "--cores", str(cores),
           "--", "--omit-from", "segment_lesions", "--quiet"]
    log.info("preparing %s with the pipeline: %s", bids_dir, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not list(out.glob("sub-*/ses-*/anat/*_desc-brain_mask.nii.gz")):
        raise RuntimeError(f"pipeline preparation of {bids_dir} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    done.write_text("ok\n")
    return out


@dataclass
class Session:
    """One real session as the segmentation rule receives it (all on the session reference grid)."""

    name: str
    images: dict[str, np.ndarray]   # preprocessed contrasts: FLAIR, T2w, T1w, ceT1w when present
    affine: np.ndarray
    brain: np.ndarray
    template_xfm: Any               # template -> session (ITK resampling convention)
    truth: np.ndarray | None = None  # expert lesion mask on the grid, when there is one


def load_session(out: Path, sub: str, ses: str, ref: str = "FLAIR",
                 contrasts: tuple[str, ...] = ("FLAIR", "T2w", "T1w", "ceT1w")) -> Session:
    """Read the rule inputs of one session from a pipeline output folder."""
    from msimaging import io, layout as L
    from msimaging.geometry import read_transform

    brain, affine = io.read_mask(out / L.brain_mask(sub, ses))
    images = {}
    for c in contrasts:
        p = out / L.preproc_image(sub, ses, c, ref)
        if p.is_file():
            images[c] = io.read_image(p)[0]
    return Session(name=f"sub-{sub}_ses-{ses}", images=images, affine=affine, brain=brain,
                   template_xfm=read_transform(out / L.template_xfm(sub, ses)))

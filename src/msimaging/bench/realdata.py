"""Real sessions prepared by the pipeline itself, as backgrounds for the real-data benchmarks.

``python -m msimaging.bench`` sections that work on real scans (``lesions``, ``activity``) must see
exactly what the pipeline's rules see: its bias correction, brain mask, template registration,
co-registration and standardisation. :func:`prepared_run` runs ``msimaging run`` on a BIDS dataset
of ``shared/data`` up to (not including) ``segment_lesions`` and returns its output folder.

The run is cached under ``WORK/pipeline-<digest>``, where the digest covers the input files and
every source file that can change those outputs (the package except the modules of lesion
detection, scoring and reporting, which run after it; the workflow, scripts and default config),
so a code change that could alter them makes a new run: no cache survives such a change.
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

#: Package modules that only run from ``segment_lesions`` on (or never in a pipeline run): they
#: cannot change the prepared inputs, so they are left out of the cache digest.
AFTER_PREPARATION = frozenset({
    "segment.py", "lesions.py", "lesion_prior.py", "implant.py", "evaluate.py", "enhancing.py",
    "longitudinal.py", "atrophy.py", "endpoints.py", "outcome.py", "merge.py", "adjudication.py",
    "report.py", "cohort.py", "viewer.py", "browser.py", "recovery.py", "lesion_model.py", "bench",
    "implant_longitudinal.py", "implant_enhancing.py", "data/lesion_model.json", "data/lesion_profile.json", "data/lesion_frequency_mni_2mm.npz",
})


#: Config sections read only from ``segment_lesions`` on.
CONFIG_AFTER_PREPARATION = frozenset({"lesions", "change", "enhancing", "atrophy", "qc", "outcome"})


#: Package modules that only run from ``compare_visits`` / ``measure_brain`` on (see
#: :func:`pipeline_run` with its default ``omit_from``).
AFTER_SEGMENTATION = frozenset({
    "implant.py", "implant_longitudinal.py", "implant_enhancing.py", "evaluate.py", "longitudinal.py", "atrophy.py", "endpoints.py",
    "outcome.py", "merge.py", "adjudication.py", "report.py", "cohort.py", "viewer.py", "recovery.py", "bench",
})
CONFIG_AFTER_SEGMENTATION = frozenset({"change", "atrophy", "qc", "outcome"})
SCRIPTS_AFTER_SEGMENTATION = ("compare_visits.py", "measure_brain.py", "session_endpoints.py",
                              "subject_endpoints.py", "outcome_dataset.py", "qc_report.py")


def _config_text(after: frozenset[str] = CONFIG_AFTER_PREPARATION) -> bytes:
    """The default config without the sections that cannot change the prepared inputs."""
    import yaml

    from msimaging.config import default_config, load_schema

    cfg = {k: v for k, v in default_config().items() if k not in after}
    schema = load_schema()
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in after}
    return yaml.safe_dump({"config": cfg, "schema": {**schema, "properties": props}}, sort_keys=True).encode()


def code_digest(extra: tuple[Path, ...] = (), after: frozenset[str] = AFTER_PREPARATION,
                after_scripts: tuple[str, ...] = ("segment_lesions.py", "detect_enhancing.py",
                                                  *SCRIPTS_AFTER_SEGMENTATION),
                after_config: frozenset[str] = CONFIG_AFTER_PREPARATION) -> str:
    """sha256 (16 hex digits) of the sources that make the prepared inputs, and of ``extra`` files.

    ``after`` / ``after_scripts`` / ``after_config``: package files, rule scripts and config
    sections that run after the cached outputs and are left out (defaults: :func:`prepared_run`'s).
    """
    h = hashlib.sha256()
    files = [p for p in sorted(PACKAGE.rglob("*")) if p.is_file() and p.suffix in (".py", ".npz", ".json", ".gz")
             and p.relative_to(PACKAGE).parts[0] not in after
             and p.relative_to(PACKAGE).as_posix() not in after and "__pycache__" not in p.parts]
    for sub in ("workflow", "scripts"):
        files += [p for p in sorted((REPO / sub).rglob("*")) if p.is_file() and "__pycache__" not in p.parts
                  and p.name not in after_scripts]
    h.update(_config_text(after_config))
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


def pipeline_run(bids_dir: Path, work: Path, omit_from: tuple[str, ...] | None = ("compare_visits", "measure_brain"),
                 cores: int = 2) -> Path:
    """``msimaging run`` on ``bids_dir`` through segmentation and registration to baseline (cached).

    With the default ``omit_from`` the run stops before the longitudinal rules, whose functions
    (:func:`msimaging.longitudinal.run_compare`, :func:`msimaging.atrophy.run_measure`) a bench then
    calls on these outputs exactly as the rule scripts do: the cache key leaves their modules out,
    so change detection can be re-measured without re-running registration and segmentation.
    ``omit_from=None`` runs the whole pipeline (every source file in the key).
    """
    bids_dir = Path(bids_dir).resolve()      # the key names inputs by path: the same from any folder
    inputs = tuple(sorted(p for p in bids_dir.rglob("*") if p.is_file() and "derivatives" not in p.parts))
    if omit_from is None:
        digest = code_digest(inputs, after=frozenset(), after_scripts=(), after_config=frozenset())
        tag = "full"
    else:
        digest = code_digest(inputs, after=AFTER_SEGMENTATION, after_scripts=SCRIPTS_AFTER_SEGMENTATION,
                             after_config=CONFIG_AFTER_SEGMENTATION)
        tag = "to-" + "-".join(omit_from)
    out = Path(work) / f"pipeline-{Path(bids_dir).name}-{tag}-{digest}"
    done = out / "pipeline.ok"
    if done.is_file():
        return out
    cmd = [sys.executable, "-m", "msimaging.cli", "run", str(bids_dir), str(out), "--cores", str(cores), "--"]
    if omit_from:
        cmd += ["--omit-from", *omit_from]
    cmd += ["--quiet"]
    log.info("running the pipeline on %s: %s", bids_dir, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sessions = sorted({p.parent for p in inputs if p.parent.name == "anat"})
    segmented = len(list(out.glob("sub-*/ses-*/anat/*_label-lesion_dseg.nii.gz")))
    # a run with omitted rules ends "not finished" (no endpoints): it succeeded when every session
    # was segmented
    ok = proc.returncode == 0 if omit_from is None else segmented == len(sessions) > 0
    if not ok:
        raise RuntimeError(f"pipeline run of {bids_dir} failed (exit {proc.returncode}):\n"
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

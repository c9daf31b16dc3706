"""Where the workflow, scripts and default configuration live.

msimaging runs from a source checkout installed in editable mode (``pip install -e .``, what
``make`` does): the Snakemake workflow, its scripts and the default config sit beside ``src/``.
``MSIMAGING_HOME`` may point at another checkout.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    env = os.environ.get("MSIMAGING_HOME")
    root = Path(env) if env else Path(__file__).resolve().parents[2]
    return root


ROOT = project_root()
SNAKEFILE = ROOT / "workflow" / "Snakefile"
CONFIG_FILE = ROOT / "config" / "config.yaml"
SCHEMA_FILE = ROOT / "config" / "schema.yaml"
PROFILES_DIR = ROOT / "profiles"


def check_installation() -> list[str]:
    """Problems with the installation (empty when the workflow can run)."""
    missing = [p for p in (SNAKEFILE, CONFIG_FILE, SCHEMA_FILE) if not p.is_file()]
    return [
        f"{p} not found: install msimaging from a source checkout with `pip install -e .` "
        "(or set MSIMAGING_HOME to the checkout)"
        for p in missing
    ]

"""snakemake --lint must stay clean (CI also runs it through `make lint`)."""

import subprocess
import sys
from pathlib import Path

from msimaging.resources import SNAKEFILE


def test_snakemake_lint_is_clean():
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(exe), "--lint", "--snakefile", str(SNAKEFILE)], capture_output=True, text=True,
                          cwd=SNAKEFILE.parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr

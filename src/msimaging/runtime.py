"""What every Snakemake script does around its package call: logging, threads, failures.

Scripts are thin (STYLE.md): they open a :func:`step`, read ``snakemake.input``/``params``,
call one package function and write outputs. Nothing here imports snakemake; the ``smk``
object is only read through its attributes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def set_threads(threads: int) -> None:
    """Hold numerical libraries to ``threads`` (so SLURM allocations are respected).

    ITK (SimpleITK and ANTs) reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` when it first needs
    its default, so setting the variable is enough unless SimpleITK is already in use; only then
    is its global default set directly. Nothing heavy is imported here: a job that never uses
    ITK must not pay SimpleITK's import (~0.5 s) for it. (numpy's BLAS pool, sized at import
    from the CPUs the job may use, is hardly used by msimaging.)
    """
    n = max(1, int(threads))
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)
    sitk = sys.modules.get("SimpleITK")
    if sitk is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)


def process_age_s() -> float | None:
    """Seconds since this process started (interpreter start-up + imports so far), or None."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with snakemake
        return None
    return max(0.0, time.time() - psutil.Process().create_time())


def configure_logging(log_path: str | os.PathLike[str] | None, level: int = logging.INFO) -> None:
    """Send the msimaging logger (and warnings) to ``log_path`` (stderr when None)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if getattr(handler, "_msimaging", False):  # ours: close its file (others belong to their owners)
            handler.close()
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler._msimaging = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def failure_text(exc: BaseException) -> str:
    """One line saying why a step failed: the problems of a validation error joined by ' | ', else
    the exception's message (its class name when it has none); control characters are escaped."""
    problems = getattr(exc, "problems", None)
    if problems:
        text = " | ".join(str(p) for p in problems)
    else:
        text = str(exc).strip() or exc.__class__.__name__
        if isinstance(exc, (MemoryError, KeyError, IndexError, AttributeError, TypeError, ZeroDivisionError)):
            text = f"{exc.__class__.__name__}: {text}"
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in " ".join(text.splitlines()))


@contextmanager
def step(smk: Any, name: str) -> Iterator[logging.Logger]:
    """Run one rule's work: log to the rule's log file, hold threads, record failures."""
    log_path = smk.log[0] if len(smk.log) else None
    configure_logging(log_path)
    set_threads(getattr(smk, "threads", 1))
    logger = logging.getLogger(f"msimaging.{name}")
    wildcards = {k: v for k, v in dict(smk.wildcards).items()}
    startup = process_age_s()
    # "startup" = interpreter, snakemake's script preamble and the script's imports: the fixed
    # cost of one job (msimaging.bench.rules reads it back from the logs).
    logger.info("start %s %s threads=%s startup=%s s", name, wildcards, getattr(smk, "threads", 1),
                "NA" if startup is None else f"{startup:.2f}")
    t0 = time.perf_counter()
    profiler = start_profile()
    try:
        yield logger
    except Exception as exc:
        logger.error("%s failed: %s", name, failure_text(exc))
        logger.error("details:\n%s", traceback.format_exc())
        raise
    finally:
        stop_profile(profiler, name, wildcards)
    logger.info("done %s in %.1f s", name, time.perf_counter() - t0)


#: Developer aid: when set to a folder, every step writes a cProfile dump there (``<rule>_<wildcards>.prof``).
PROFILE_VARIABLE = "MSIMAGING_PROFILE_DIR"


def start_profile() -> Any:
    if not os.environ.get(PROFILE_VARIABLE):
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def stop_profile(profiler: Any, name: str, wildcards: dict[str, str]) -> None:
    if profiler is None:
        return
    profiler.disable()
    folder = Path(os.environ[PROFILE_VARIABLE])
    folder.mkdir(parents=True, exist_ok=True)
    label = "_".join([name, *(f"{k}-{v}" for k, v in sorted(wildcards.items()))])
    profiler.dump_stats(str(folder / f"{label}.prof"))

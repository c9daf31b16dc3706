"""Wall time, peak memory and CPU of a command and every process it starts (Linux).

``peak_tree_rss_mb`` is what a job allocation must hold: the largest *sum* of resident memory
over the command's whole process tree (``msimaging run``, Snakemake, the jobs running at the
same time), sampled every ``interval_s`` with psutil. The sum counts shared library pages once
per process, so it errs high. ``max_process_rss_mb`` is the kernel's exact high-water mark of
the single largest process (``ru_maxrss`` from ``wait4``), which sampling cannot miss.
``cpu_s`` is user + system CPU of the tree (processes reaped by their parents).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunMeasure:
    returncode: int
    wall_s: float
    peak_tree_rss_mb: float
    max_process_rss_mb: float
    cpu_s: float
    peak_processes: int
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int, interval_s: float):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak_bytes, self.peak_processes, self.samples = 0, 0, 0
        self._halt = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                continue
        self.samples += 1
        if total > self.peak_bytes:
            self.peak_bytes = total
        self.peak_processes = max(self.peak_processes, len(procs))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_measured(cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                 interval_s: float = 0.1) -> RunMeasure:
    """Run ``cmd`` (stdout and stderr to ``log_path``) and measure it and its process tree."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None)
        sampler = _TreeSampler(proc.pid, interval_s)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    # ru_maxrss is in KiB on Linux.
    return RunMeasure(returncode=proc.returncode, wall_s=wall, peak_tree_rss_mb=sampler.peak_bytes / 2**20,
                      max_process_rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime,
                      peak_processes=sampler.peak_processes, samples=sampler.samples)

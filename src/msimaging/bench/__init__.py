"""Benchmarks: ``python -m msimaging.bench [SECTION ...]`` (what ``make bench`` runs).

Each section is a module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> dict`` (figures, also printed). Figures are medians over repeated runs; the machine
is shared and noisy, so no timing is ever asserted in a test.
"""

from __future__ import annotations

SECTIONS: tuple[str, ...] = ("rules", "registration", "lesions", "atrophy", "activity", "outcome", "budget", "scale")

# Shared wiring: the plan (from the package) and wildcard constraints.
from msimaging import layout as L
from msimaging.dag import Plan

PLAN = Plan.from_config(config)


wildcard_constraints:
    subject=r"[A-Za-z0-9]+",
    session=r"[A-Za-z0-9]+",
    contrast=r"FLAIR|T2w|T1w|ceT1w",
    ref=r"FLAIR|T2w",

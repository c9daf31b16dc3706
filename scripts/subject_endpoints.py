"""Rule subject_endpoints: a subject's rows of endpoints.csv."""
from msimaging.endpoints import run_subject
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "subject_endpoints"):
    run_subject(list(smk.input), smk.output[0])

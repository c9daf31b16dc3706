"""Rule validate_inputs: check one subject's input images before anything is computed."""
from msimaging.runtime import step
from msimaging.validate import run_subject

with step(snakemake, "validate_inputs"):  # noqa: F821  (snakemake is injected)
    run_subject(snakemake.config, snakemake.wildcards.subject, snakemake.output[0])  # noqa: F821

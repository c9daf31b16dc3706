"""Rule outcome_dataset: endpoints.csv, its data dictionary and qc.tsv for the whole study."""
from msimaging.outcome import run_group
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "outcome_dataset"):
    run_group(list(smk.input.tables), list(smk.input.reports), smk.output.csv, smk.output.dictionary,
              smk.output.qc, smk.config)

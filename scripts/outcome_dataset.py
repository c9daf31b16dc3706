"""Rule outcome_dataset: endpoints.csv (reader adjudication applied), its data dictionary, qc.tsv."""
from msimaging.outcome import run_group
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "outcome_dataset"):
    adjudication = list(smk.input.get("adjudication", []))
    run_group(list(smk.input.tables), list(smk.input.reports), smk.output.csv, smk.output.dictionary,
              smk.output.qc, smk.config, list(smk.input.inventories), adjudication[0] if adjudication else None,
              smk.output.adjudication)

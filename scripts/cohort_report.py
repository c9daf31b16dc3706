"""Rule cohort_report: cohort.html, the whole study on one self-contained page."""
from msimaging.cohort import run_cohort
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "cohort_report"):
    run_cohort(smk.input.csv, smk.input.qc, smk.output.page, smk.config, smk.input.get("dataset"))

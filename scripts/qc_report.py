"""Rule qc_report: QC figures, the lesion inventory and the self-contained HTML page of one subject."""
from msimaging.report import run_report
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "qc_report"):
    run_report(smk.wildcards.subject, smk.params.sessions, smk.output.page, smk.output.figures,
               smk.config, smk.output.inventory)

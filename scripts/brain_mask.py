"""Rule brain_mask: brain mask of the session reference and the template transform."""
from msimaging.register import run_brain_mask
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "brain_mask"):
    run_brain_mask(smk.input.ref, smk.output.mask, smk.output.template_xfm, smk.output.qc,
                   smk.wildcards.subject, smk.wildcards.session, smk.config)

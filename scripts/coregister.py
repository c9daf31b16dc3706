"""Rule coregister: one contrast onto the session reference grid (rigid), standardised."""
from msimaging.register import run_coregister
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "coregister"):
    run_coregister(smk.input.moving, smk.input.ref, smk.input.brain, smk.output.xfm, smk.output.image,
                   smk.output.qc, smk.wildcards.contrast, smk.wildcards.ref, smk.wildcards.subject,
                   smk.wildcards.session, smk.config, out_png=smk.output.png)

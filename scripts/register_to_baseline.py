"""Rule register_to_baseline: a follow-up session's reference image onto the baseline's."""
from msimaging.register import run_to_baseline
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "register_to_baseline"):
    run_to_baseline(smk.input.fu, smk.input.fu_brain, smk.input.bl, smk.input.bl_brain, smk.output.xfm,
                    smk.output.qc, smk.wildcards.subject, smk.wildcards.session, smk.config,
                    out_png=smk.output.png)

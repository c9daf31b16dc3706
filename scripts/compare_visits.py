"""Rule compare_visits: new and enlarging T2 lesions vs baseline and vs the previous visit."""
from msimaging.longitudinal import run_compare
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "compare_visits"):
    run_compare(smk.input.fu_dseg, smk.input.fu_xfm, smk.input.bl_dseg, smk.input.prev_dseg,
                smk.input.get("prev_xfm"), smk.output.new, smk.output.enlarging, smk.output.qc,
                smk.wildcards.subject, smk.wildcards.session, smk.config)

"""Rule detect_enhancing: Gd+ lesions from ce-T1w against T1w on the session grid."""
from msimaging.enhancing import run_detect
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "detect_enhancing"):
    run_detect(smk.input.ce, smk.input.t1, smk.input.brain, smk.output.mask, smk.output.qc,
               smk.wildcards.subject, smk.wildcards.session, smk.config, lesions_path=smk.input.lesions,
               flair_path=smk.input.get("flair"))

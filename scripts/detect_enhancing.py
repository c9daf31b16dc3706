"""Rule detect_enhancing: Gd+ lesions from ce-T1w against T1w on the session grid."""
from msimaging.enhancing import run_detect
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "detect_enhancing"):
    run_detect(dict(smk.input.items()), smk.output.mask, smk.output.qc, smk.wildcards.subject,
               smk.wildcards.session, smk.config)

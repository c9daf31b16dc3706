"""Rule segment_lesions: T2/FLAIR lesion probability, mask and labels on the session grid."""
from msimaging.lesions import run_segment
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "segment_lesions"):
    run_segment(smk.input.ref, smk.input.brain, smk.output.prob, smk.output.mask, smk.output.dseg,
                smk.output.qc, smk.wildcards.subject, smk.wildcards.session, smk.config)

"""Rule segment_lesions: T2/FLAIR lesion probability, mask and labels on the session grid."""
from msimaging.runtime import step
from msimaging.segment import run_segment_lesions

smk = snakemake  # noqa: F821
with step(smk, "segment_lesions"):
    run_segment_lesions(dict(smk.input.items()), smk.output.prob, smk.output.mask, smk.output.dseg,
                        smk.output.qc, smk.wildcards.subject, smk.wildcards.session, smk.config)

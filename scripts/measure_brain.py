"""Rule measure_brain: ICV, brain parenchymal volume, BPF and PBVC vs baseline (BSI, halfway space)."""
from msimaging.atrophy import run_measure
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "measure_brain"):
    run_measure(smk.input.ref, smk.input.brain, smk.params.ref_contrast, smk.input.get("bl"),
                smk.input.get("bl_brain"), smk.input.get("xfm"), smk.output.qc,
                smk.wildcards.subject, smk.wildcards.session, smk.config,
                lesions_path=smk.input.get("lesions"), bl_lesions_path=smk.input.get("bl_lesions"))

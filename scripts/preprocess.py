"""Rule preprocess: N4 bias correction of one raw image on its own grid."""
from msimaging.preprocess import run_n4
from msimaging.runtime import step

with step(snakemake, "preprocess") as log:  # noqa: F821
    figures = run_n4(snakemake.input.image, snakemake.output.image, snakemake.config)  # noqa: F821
    log.info("figures: %s", figures)

"""Rule session_endpoints: the endpoints row and lesion table of one session."""
from msimaging.endpoints import run_session
from msimaging.runtime import step

smk = snakemake  # noqa: F821
with step(smk, "session_endpoints"):
    run_session(dict(smk.input.items()), smk.output.row, smk.output.lesions, smk.wildcards.subject,
                smk.wildcards.session, smk.params.info, smk.config)

"""Rule compare_visits: new and enlarging T2 lesions vs baseline and vs the previous visit."""
from msimaging.longitudinal import run_compare
from msimaging.runtime import step

smk = snakemake  # noqa: F821


def visit(key):
    files = {"flair": smk.input[key], "brain": smk.input[f"{key}_brain"], "dseg": smk.input[f"{key}_dseg"]}
    if f"{key}_xfm" in smk.input.keys():
        files["xfm"] = smk.input[f"{key}_xfm"]
    if f"{key}_t2" in smk.input.keys():
        files["t2"] = smk.input[f"{key}_t2"]
    return files


with step(smk, "compare_visits"):
    run_compare(visit("fu"), visit("bl"), visit("prev"), smk.output.new, smk.output.enlarging, smk.output.qc,
                smk.wildcards.subject, smk.wildcards.session, smk.config)

"""Every path msimaging writes, relative to OUTPUT_DIR, named in one place.

Functions take subject/session/contrast values and return relative paths; pass Snakemake
wildcards (``"{subject}"``) to get the patterns the workflow's rules use. Public derivatives
follow BIDS (DESIGN §3); intermediate files live under ``work/`` and logs/benchmarks under
``logs/`` and ``benchmarks/``.
"""

from __future__ import annotations

from msimaging.bids import bids_name

TEMPLATE_SPACE = "MNI152NLin2009aSym"

# --- public BIDS derivatives (DESIGN §3) -------------------------------------------------------


def brain_mask(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "mask", desc="brain")


def lesion_probseg(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "probseg", label="lesion")


def lesion_mask(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "mask", label="lesion")


def lesion_dseg(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "dseg", label="lesion")


def enhancing_mask(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "mask", label="enhancing")


def new_mask(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "mask", label="new")


def enlarging_mask(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "mask", label="enlarging")


def contrast_xfm(sub: str, ses: str, contrast: str, ref: str) -> str:
    """``from-<contrast>_to-<ref>``: puts the contrast's raw image onto the session reference grid."""
    return bids_name(sub, ses, "xfm", ".txt", **{"from": contrast, "to": ref, "mode": "image"})


def template_xfm(sub: str, ses: str) -> str:
    """``from-MNI152NLin2009aSym_to-session``: puts template maps onto the session reference grid.

    "session" names the session's reference grid, as in ``from-session_to-baseline``.
    """
    return bids_name(sub, ses, "xfm", ".txt", **{"from": TEMPLATE_SPACE, "to": "session", "mode": "image"})


def baseline_xfm(sub: str, ses: str) -> str:
    """``from-session_to-baseline``: puts a follow-up reference image onto the baseline grid."""
    return bids_name(sub, ses, "xfm", ".txt", **{"from": "session", "to": "baseline", "mode": "image"})


def lesion_table(sub: str, ses: str) -> str:
    return bids_name(sub, ses, "lesions", ".tsv")


def subject_endpoints(sub: str) -> str:
    return f"sub-{sub}/sub-{sub}_endpoints.tsv"


def counted_lesions(sub: str) -> str:
    """Every counted lesion of a subject with the ids its QC page and reader adjudication use."""
    return f"sub-{sub}/sub-{sub}_desc-counted_lesions.tsv"


def figures_dir(sub: str) -> str:
    return f"sub-{sub}/figures"


def qc_page(sub: str) -> str:
    return f"sub-{sub}.html"


COHORT_HTML = "cohort.html"              # the group page (msimaging.cohort)
ENDPOINTS_CSV = "endpoints.csv"
ENDPOINTS_JSON = "endpoints.json"
QC_TSV = "qc.tsv"
OUTCOME_MERGE_JSON = "outcome_merge.json"  # what the last --outcome-dataset merge did
ADJUDICATION_TSV = "adjudication.tsv"     # every endpoints cell changed by reader adjudication
DATASET_DESCRIPTION = "dataset_description.json"

# --- intermediate files (not part of the public contract) --------------------------------------


def _work(sub: str, ses: str | None, name: str) -> str:
    if ses is None:
        return f"work/sub-{sub}/sub-{sub}_{name}"
    return f"work/sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}_{name}"


def validation(sub: str) -> str:
    return _work(sub, None, "validation.json")


def n4_image(sub: str, ses: str, contrast: str) -> str:
    """Bias-corrected image of one contrast on its own (native) grid."""
    return _work(sub, ses, f"desc-n4_{contrast}.nii.gz")


def preproc_image(sub: str, ses: str, contrast: str, ref: str) -> str:
    """Bias-corrected, standardised image of one contrast on the session reference grid."""
    return _work(sub, ses, f"space-{ref}_desc-preproc_{contrast}.nii.gz")


def step_json(sub: str, ses: str, step: str) -> str:
    """Figures and QC of one step for one session (JSON)."""
    return _work(sub, ses, f"{step}.json")


def registration_figure(sub: str, ses: str, name: str) -> str:
    """Checkerboard overlay PNG of one registration (``name``: ``<contrast>_to-<ref>`` or ``to-baseline``)."""
    return _work(sub, ses, f"desc-{name}_registration.png")


def contrast_qc(sub: str, ses: str, contrast: str, ref: str) -> str:
    return _work(sub, ses, f"coregister_from-{contrast}_to-{ref}.json")


def session_row(sub: str, ses: str) -> str:
    return _work(sub, ses, "endpoints.json")


def log(rule: str, sub: str, ses: str | None = None, contrast: str | None = None) -> str:
    parts = [p for p in (f"sub-{sub}", f"ses-{ses}" if ses else None, contrast) if p]
    return f"logs/{rule}/{'_'.join(parts)}.log"


def benchmark(rule: str, sub: str, ses: str | None = None, contrast: str | None = None) -> str:
    parts = [p for p in (f"sub-{sub}", f"ses-{ses}" if ses else None, contrast) if p]
    return f"benchmarks/{rule}/{'_'.join(parts)}.tsv"

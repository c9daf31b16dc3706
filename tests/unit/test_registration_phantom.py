"""Brain mask and registration accuracy on a raw phantom study against its truth (issue #3 targets).

Skull and neck, oblique LPS headers, 2x2x3 mm voxels, uint16, bias field, head poses of up to
10 degrees and 15 mm per acquisition. The benchmark (``bench registration``) runs 0.7x0.7x3 mm and
three contrasts, which takes minutes. The registrations run as the pipeline's rules run them, with
one thread (``threads: 1`` in workflow/rules/register.smk): ITK's optimiser takes a different path
with another thread count (on this phantom the follow-up-to-baseline TRE is 0.25 mm with 1 thread
and 0.06 mm with 2), so a test at the machine's default, or at whatever an earlier test in the same
worker left, measured something the pipeline does not run. Measured with 1 thread: Dice min
0.9906, TRE worst median 0.08 mm within a visit, 0.25 mm to baseline; held at the README's figures
(Dice 0.990, TRE 0.15 mm within a visit and 0.30 mm to baseline).
"""

import pytest

from msimaging.bench.registration import phantom_figures


@pytest.fixture
def pipeline_threads():  # type: ignore[no-untyped-def]
    """One thread, as the pipeline's rules; the environment and SimpleITK's default given back after."""
    import os

    import SimpleITK as sitk

    from msimaging.runtime import THREAD_VARIABLES, set_threads

    saved = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    default = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    set_threads(1)
    yield
    for v, value in saved.items():
        if value is None:
            os.environ.pop(v, None)
        else:
            os.environ[v] = value
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(default)


@pytest.mark.slow
def test_brain_mask_dice_and_registration_tre_meet_the_targets(tmp_path, pipeline_threads):  # type: ignore[no-untyped-def]
    fig = phantom_figures(tmp_path, (2.0, 2.0, 3.0), seeds=1, contrasts=("FLAIR", "T1w"))
    assert fig["n_sessions"] == 2 and fig["n_coregistrations"] == 2 and fig["n_to_baseline"] == 1
    assert fig["brain_mask_dice_min"] >= 0.990, fig
    assert fig["coregister_tre_worst_median_mm"] <= 0.15, fig
    assert fig["to_baseline_tre_worst_median_mm"] <= 0.30, fig
    # N4 shrinks the white-matter spread the bias field adds (the phantom's field is mild in WM:
    # the strong check is test_preprocess.py); standardisation puts WM near 1
    assert fig["wm_cv_n4_median"] < fig["wm_cv_raw_median"], fig
    # (on FLAIR the main parenchymal peak is set to 1; white matter sits a little below it)
    assert 0.8 <= fig["wm_standardised_median"] <= 1.2, fig
    # correct registrations pass their QC (the flags are tested on wrong ones in test_register.py)
    assert fig["registration_qc_items"]["fail"] == 0 and fig["registration_qc_items"]["warn"] == 0, fig

"""Accuracy of the activity endpoints against known truth (issue #5 targets), slow.

Phantom: new / enlarging T2 lesions vs baseline and Gd+ lesions, with main's cross-sectional
segmentation as the per-visit input and the truth transforms; a scan-rescan pair gives no change.
Real: sub-p12's baseline against a re-positioned, re-interpolated copy of itself gives no change.
The same code is ``python -m msimaging.bench activity`` (which also measures sub-p12's F1).
"""

from __future__ import annotations

import pytest

from msimaging.bench import activity


@pytest.mark.slow
def test_phantom_activity_accuracy(tmp_path_factory):
    work = tmp_path_factory.mktemp("activity")
    fig = activity.phantom_figures(work, seeds=[1], resolution=2.0, registration="truth")
    assert fig["phantom_pairs"] == 2 and fig["new_truth"] >= 6 and fig["enlarging_truth"] >= 4
    assert fig["new_recall"] >= 0.9
    assert fig["false_new_per_pair"] <= 0.5
    assert fig["enlarging_recall"] >= 0.8
    assert fig["gd_truth"] >= 4
    assert fig["gd_recall"] >= 0.9
    assert fig["false_gd_per_scan"] <= 0.5
    assert fig["rescan_new"] == 0 and fig["rescan_enlarging"] == 0


@pytest.mark.slow
def test_real_baseline_against_its_repositioned_copy_has_no_change(shared_data):
    root = shared_data / "ms-longitudinal"
    if not root.is_dir():
        pytest.skip("ms-longitudinal is not present")
    from msimaging.lesions import LesionRules
    from msimaging.longitudinal import ChangeRules

    visits, _, _, _ = activity.p12_visits(root, LesionRules(), sessions=("01",))
    fig = activity.p12_rescan(root, visits["01"], LesionRules(), ChangeRules())
    assert fig["p12_rescan_new"] == 0
    assert fig["p12_rescan_enlarging"] == 0

"""New / enlarging lesions on the real-background longitudinal case, on the pipeline's own path.

sub-p12's raw scans, a real follow-up with implanted new lesions and growth, and two re-positioned
no-change copies of its baseline (:mod:`msimaging.bench.activity_real`) go through ``msimaging run``
(cached under bench-work/activity, keyed by a digest of code and inputs: the first run takes
about 9 minutes on two cores), then the compare_visits and measure_brain rules' functions.
The thresholds are the figures measured when this test was written, not yet the issue's targets
(see the bench's report): they guard against regressions.
"""

from __future__ import annotations

from pathlib import Path

import os

import pytest

from msimaging.bench import activity_real as A

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "bench-work" / "activity"

# opt-in: its first run is a ~9-minute pipeline run (plus ~3 min of comparisons), which would take CI
# past its 20-minute budget
pytestmark = [pytest.mark.realdata, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("MSIMAGING_TEST_REAL_LONGITUDINAL") != "1",
                                 reason="set MSIMAGING_TEST_REAL_LONGITUDINAL=1 (a ~9 min pipeline run)")]


@pytest.fixture(scope="module")
def figures(shared_data):
    return A.real_figures(shared_data / "ms-longitudinal", WORK)


def test_no_change_pairs_have_no_new_lesion_and_few_false_changes(figures):
    assert figures["no_change_pairs"] == 3
    assert figures["no_change_new_per_pair"] == [0, 0, 0]
    assert figures["false_new_or_enlarging_per_no_change_pair"] <= 0.3


def test_implanted_new_lesions_are_found_at_the_measured_rate(figures):
    # measured 2026-12-07 on case version 6 (implants calibrated to the brightening of sub-p12's
    # real changes, none on a lesion that really changed): 11/14 and 4/6 (seed 1: 12/15 and 4/5);
    # targets 0.80 (>= 30 mm^3) and 0.60 (10-30 mm^3)
    assert figures["new_recall_30_500mm3"] >= FLOOR_NEW_30
    assert figures["new_recall_10_30mm3"] >= FLOOR_NEW_10
    # measured 0.5 with T2w confirmation of new lesions (1.0 before); seed 1: 0
    assert figures["false_new_or_enlarging_per_implanted_pair"] <= 0.5


def test_implanted_growth_is_found_at_the_measured_rate(figures):
    # measured 0.75 (9/12) with enlarging from pooled growth evidence and blur matching (was 0/12);
    # target 0.70
    assert figures["enlarging_recall"] >= FLOOR_ENLARGING


def test_sub_p12_lesion_wise_f1_does_not_fall(figures):
    assert figures["p12_brightening_components"] == 25
    assert figures["p12_f1"] >= 0.33          # measured 0.375 (target 0.50; 0.364 before T2w confirmation)
    assert figures["p12_precision"] >= 0.81   # measured 0.857 (6 of 7)


def test_detectability_of_the_real_changes_is_reported(figures):
    d = figures["detectability"]
    assert d["p12_changes"] == 25 and d["null_placements"] > 500
    # the null of pooled evidence on no-change pairs is about N(0, 0.8): its 99.9th percentile ~2.5
    assert 1.5 < d["null_flair_z_p99.9"] < 3.5
    # measured: 14-15 of sub-p12's 25 reference changes hold no more evidence than the null on either
    # contrast, and 8 reach a pooled FLAIR z of 3.5 (the recall any clean detector is bounded by)
    assert d["p12_oracle_below_null_p99.9"] >= 10 and d["p12_oracle_flair_z_ge_3.5"] <= 10
    # the implanted new lesions (calibrated to the real changes' brightening) mostly hold evidence
    assert d["implant_oracle_below_null_p99.9"] <= 6


def test_real_no_change_pbvc(shared_data):
    from msimaging.bench.atrophy import real_no_change

    fig = real_no_change(shared_data / "ms-longitudinal", WORK)
    assert fig["max_abs_no_change_pbvc"] <= 0.10, fig


FLOOR_NEW_30 = 0.75   # measured 0.79 (11/14; 8/14 on case version 4, whose implants brightened less than any real change)
FLOOR_NEW_10 = 0.60   # measured 0.67 (4/6; 1/5 on case version 4)
FLOOR_ENLARGING = 0.70   # measured 0.75 (9/12; seed 1: 8/12)

"""cohort.html from tables: expected ranges, what to look at first, blinding, the page (no pipeline run)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from msimaging import cohort
from msimaging import layout as L
from msimaging.cohort import CohortOptions, Grouping
from msimaging.config import config_sha256, load_config
from msimaging.dag import Plan
from msimaging.endpoints import COLUMNS
from msimaging.io import write_table

ARM_VALUES = ("ALPHA-DRUG-7", "BETA-PLACEBO-3")


def endpoint_rows(n_subjects: int = 4, visits: tuple[tuple[str, int], ...] = (("M00", 0), ("M06", 182), ("M12", 365))
                  ) -> list[dict[str, str]]:
    rows = []
    for s in range(1, n_subjects + 1):
        for v, (ses, days) in enumerate(visits):
            base = v == 0
            rows.append({c: "NA" for c in COLUMNS} | {
                "subject": f"p{s:02d}", "session": ses, "is_baseline": "true" if base else "false",
                "days_since_baseline": str(days), "t2_lesion_count": str(10 + s + v),
                "t2_lesion_volume_ml": f"{12 + s + 0.5 * v:.4f}", "gd_lesion_count": "1",
                "new_t2_vs_baseline": "NA" if base else str(v), "enlarging_t2_vs_baseline": "NA" if base else "1",
                "new_t2_vs_previous": "NA" if base else "1", "enlarging_t2_vs_previous": "NA" if base else "0",
                "brain_volume_ml": f"{1650 + 10 * s - 5 * v:.4f}", "icv_ml": f"{2300 + 20 * s:.4f}",
                "bpf": f"{0.72 - 0.002 * v:.4f}", "pbvc_vs_baseline": "0.0000" if base else f"{-0.3 * v:.4f}",
                "qc_status": "pass", "qc_notes": ""})
    return rows


def qc_rows(rows: list[dict[str, str]], metric: str = "ncc", value: float = 0.94) -> list[dict[str, str]]:
    out = []
    for i, r in enumerate(rows):
        out.append({"subject": r["subject"], "session": r["session"], "step": "register_to_baseline",
                    "item": "session", "metric": metric, "value": f"{value + 0.001 * (i % 5):.4f}", "status": "pass",
                    "note": ""})
    return out


def test_robust_range_is_median_plus_minus_k_scaled_mad():
    rng = cohort.robust_range([1.0, 2.0, 3.0, 4.0, 100.0], k=3.0)
    assert rng is not None and rng.median == 3.0
    assert rng.scale == pytest.approx(1.4826 * 1.0)          # MAD of (2,1,0,1,97) = 1
    assert rng.outside(100.0) and not rng.outside(4.0)
    assert rng.low == pytest.approx(3.0 - 3.0 * 1.4826)
    assert cohort.robust_range([1.0, 2.0], k=3.0) is None      # too few values
    # identical values: the scale is 1 % of the median, not 0 (a 0.5 % difference is not an outlier)
    same = cohort.robust_range([200.0] * 8 + [201.0], k=3.5)
    assert same is not None and same.scale == pytest.approx(2.0) and not same.outside(201.0)
    # counts: at least 1 (so 0-1-2 counts are never outliers of each other)
    counts = cohort.robust_range([1, 1, 1, 1, 2, 0], k=3.5, min_scale=1.0)
    assert counts is not None and not counts.outside(4) and counts.outside(5)


def test_qc_figure_outlier_is_marked_on_the_bad_side_only():
    rows = endpoint_rows()
    qc = qc_rows(rows, "ncc", 0.94)
    qc[4]["value"] = "0.5000"                       # a registration far worse than the others
    qc += [{**r, "metric": "rotation_deg", "value": v} for r, v in zip(qc_rows(rows), ["2.0", "2.1", "1.9"] * 4)]
    qc[-1]["value"] = "0.0100"                      # much less motion than the others: not a problem
    qc[-2]["value"] = "9.0000"                      # much more: marked
    figs = {f.key: f for f in cohort.qc_figures(qc, 3.5)}
    ncc = figs["register_to_baseline.session.ncc"]
    assert ncc.side == "low"
    assert [(s, v) for s, v, _ in ncc.outliers()] == [(qc[4]["subject"], qc[4]["session"])]
    rot = figs["register_to_baseline.session.rotation_deg"]
    assert rot.side == "high" and [x for _, _, x in rot.outliers()] == [9.0]
    # non-numeric QC values (e.g. the contrasts used) are no figure
    assert cohort.qc_figures([{**qc[0], "metric": "contrasts", "value": "FLAIR+T1w"}], 3.5) == []


def test_look_first_lists_failures_implausible_pbvc_and_high_counts_most_serious_first():
    rows = endpoint_rows(6)
    by = {(r["subject"], r["session"]): r for r in rows}
    by[("p02", "M06")].update(qc_status="fail", qc_notes="register_to_baseline/session: ncc 0.41")
    by[("p03", "M12")].update(qc_status="warn", qc_notes="brain_mask/brain: volume 2300 mL")
    by[("p04", "M06")]["pbvc_vs_baseline"] = "-2.0000"        # 182 days: -4.0 %/year: implausible
    by[("p05", "M12")]["pbvc_vs_baseline"] = "-2.9000"        # 365 days: -2.9 %/year: plausible
    by[("p06", "M06")]["gd_lesion_count"] = "14"              # everyone else has 1
    found = cohort.look_first(rows, [], CohortOptions())
    got = [(f.subject, f.session, f.what) for f in found]
    assert got[0] == ("p02", "M06", "qc_status fail") and got[1] == ("p03", "M12", "qc_status warn")
    assert ("p04", "M06", "implausible PBVC") in got and "-4.0 %/year" in found[2].why
    assert not any(s == "p05" for s, _, _ in got)
    assert ("p06", "M06", "many Gd+ lesions") in got
    assert len(got) == 4
    assert cohort.annual_pbvc(by[("p04", "M00")]) is None     # baseline
    assert cohort.annual_pbvc({**by[("p04", "M06")], "days_since_baseline": "NA"}) is None


def _dataset(tmp_path: Path, arm_column: str = "treatment_arm") -> Path:
    path = tmp_path / "outcomes.csv"
    lines = [f"subject;visit;{arm_column};edss"]
    for s in range(1, 5):
        for v in ("M00", "M06", "M12"):
            lines.append(f"sub-p{s:02d};{v};{ARM_VALUES[s % 2]};3,5")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def _page(tmp_path: Path, cfg_cohort: dict, dataset: Path | None) -> str:
    rows = endpoint_rows()
    write_table(tmp_path / "endpoints.csv", COLUMNS, rows)
    write_table(tmp_path / "qc.tsv", ["subject", "session", "step", "item", "metric", "value", "status", "note"],
                qc_rows(rows))
    cfg = load_config({"bids_dir": "/x", "cohort": cfg_cohort})
    out = tmp_path / "cohort.html"
    cohort.run_cohort(tmp_path / "endpoints.csv", tmp_path / "qc.tsv", out, cfg, dataset)
    return out.read_text(encoding="utf-8")


@pytest.mark.parametrize("cfg_cohort", [{}, {"arm_column": "treatment_arm"}, {"unblinded": True}])
def test_blinded_pages_never_show_an_arm_nor_read_the_dataset(tmp_path, cfg_cohort):
    missing = tmp_path / "not-there.csv"   # reading it would raise: blinded runs must not open it
    page = _page(tmp_path, cfg_cohort, missing)
    assert "data-blinded='true'" in page and "Blinded" in page
    assert not any(v in page for v in ARM_VALUES) and "treatment_arm" not in page
    # the dataset on disk, with its arm column, changes nothing while blinded
    assert _page(tmp_path, cfg_cohort, _dataset(tmp_path)) == page


def test_unblinded_pages_group_the_plots_by_arm(tmp_path):
    page = _page(tmp_path, {"arm_column": "treatment_arm", "unblinded": True}, _dataset(tmp_path))
    assert "data-blinded='false'" in page and "grouped by treatment arm" in page
    assert all(v in page for v in ARM_VALUES)   # the arm column of the table
    # p01 is in arm BETA (1 % 2 = 1), p02 in ALPHA
    assert re.search(r"<tr data-subject='p01'[^>]*>.*?<td>BETA-PLACEBO-3</td>", page)
    assert re.search(r"<tr data-subject='p02'[^>]*>.*?<td>ALPHA-DRUG-7</td>", page)
    # an unblinded config without the column in the dataset stays ungrouped, and says why
    other = _page(tmp_path, {"arm_column": "arm", "unblinded": True}, _dataset(tmp_path, "treatment_arm"))
    assert "data-blinded='true'" in other and "has no column 'arm'" in html.unescape(other)
    assert not any(v in other for v in ARM_VALUES)


def test_arms_from_dataset_matches_subjects_with_or_without_prefix():
    data = "id,arm\r\nsub-p01,A\r\np02,B\r\np02,B\r\n\r\n".encode("utf-8")
    assert cohort.arms_from_dataset(data, "id", "arm") == {"p01": "A", "p02": "B"}
    assert cohort.arms_from_dataset(data, "id", "group") is None
    g = cohort.grouping(CohortOptions(arm_column="arm", unblinded=True), data, "id")
    assert g.by_arm and g.groups(["p01", "p02"]) == ["A", "B"] and g.arm("p09") == "(no arm)"
    assert g.groups(["p02", "p09"]) == ["B", "(no arm)"]


def test_unblinded_page_draws_subjects_the_dataset_lacks_as_no_arm(tmp_path):
    data = _dataset(tmp_path).read_text(encoding="utf-8").replace("sub-p04;", "sub-p99;")
    (tmp_path / "partial.csv").write_text(data, encoding="utf-8")
    page = _page(tmp_path, {"arm_column": "treatment_arm", "unblinded": True}, tmp_path / "partial.csv")
    assert re.search(r"<tr data-subject='p04'[^>]*>.*?<td>\(no arm\)</td>", page)


def test_page_has_a_row_and_a_link_per_visit_and_is_self_contained(tmp_path):
    page = _page(tmp_path, {}, None)
    rows = endpoint_rows()
    table = re.findall(r"<tr data-subject='(\w+)' data-session='(\w+)'>", page)
    assert table == [(r["subject"], r["session"]) for r in rows]
    for r in rows:
        assert f"href='{L.qc_page(r['subject'])}#ses-{r['session']}'" in page
    # the table shows endpoints.csv's values
    p01 = re.search(r"<tr data-subject='p01' data-session='M12'>(.*?)</tr>", page).group(1)
    assert f"<td>{rows[2]['t2_lesion_volume_ml']}</td>" in p01 and "<td class='status-pass'>pass</td>" in p01
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page
    # trajectories + one distribution per endpoint figure and per numeric QC figure
    assert page.count("<img ") == 1 + len(cohort.ENDPOINT_DISTRIBUTIONS) + 1
    assert "id='look-first' data-count='0'" in page


def test_cohort_config_keys_are_validated_and_left_out_of_config_sha256():
    cfg = load_config({"bids_dir": "/x"})
    assert cfg["cohort"] == {"arm_column": "", "unblinded": False, "outlier_k": 3.5, "max_abs_pbvc_per_year": 3.0}
    other = load_config({"bids_dir": "/x", "cohort": {"unblinded": True, "arm_column": "arm"}})
    assert config_sha256(other) == config_sha256(cfg)
    from msimaging.config import ConfigError

    with pytest.raises(ConfigError):
        load_config({"bids_dir": "/x", "cohort": {"unblinded": "yes"}})


def test_plan_reads_the_outcome_dataset_for_the_cohort_page_only_when_unblinded():
    base = {"bids_dir": "", "outcome": {"dataset": "/trial/outcomes.csv"}}
    blinded = Plan.from_config({**base, "cohort": {"arm_column": "arm", "unblinded": False}})
    assert "dataset" not in blinded.cohort_inputs()
    assert "dataset" not in Plan.from_config({**base, "cohort": {"unblinded": True}}).cohort_inputs()
    unblinded = Plan.from_config({**base, "cohort": {"arm_column": "arm", "unblinded": True}})
    assert unblinded.cohort_inputs()["dataset"] == "/trial/outcomes.csv"
    assert L.COHORT_HTML in unblinded.all_targets()

"""Reader adjudication: decisions change exactly the counts the rejected/added lesions were in."""

from __future__ import annotations

import numpy as np
import pytest

from msimaging.adjudication import (AdjudicationError, InventoryLesion, apply_decisions, parse_decisions,
                                    session_counts, session_inventory)
from msimaging.lesions import LesionRules
from tests.conftest import oblique_affine


def _t2(lid, status_bl=None, status_prev=None, overlaps=(), vol=100.0, ses="M06"):
    return InventoryLesion("p01", ses, str(lid), "T2", vol, (0.0, 0.0, 0.0), status_bl, status_prev, tuple(overlaps))


def _gd(k, overlaps=(), vol=50.0, ses="M06"):
    return InventoryLesion("p01", ses, f"Gd{k}", "Gd", vol, (1.0, 1.0, 1.0), overlaps=tuple(overlaps))


INVENTORY = [_t2(1, "stable", "stable"), _t2(2, "new", "new"), _t2(3, "new", "new", ["Gd1"]),
             _t2(4, "enlarging", "stable"), _gd(1, ["3"]), _gd(2)]
ROW = {"subject": "p01", "session": "M06", "is_baseline": "false", "t2_lesion_count": "4",
       "t2_lesion_volume_ml": "0.4000", "new_t2_vs_baseline": "2", "enlarging_t2_vs_baseline": "1",
       "new_t2_vs_previous": "2", "enlarging_t2_vs_previous": "0", "gd_lesion_count": "2",
       "gd_lesion_volume_ml": "0.1000", "cua_lesion_count": "3", "qc_notes": "", "reader_adjudicated": "false"}


def _decide(*rows):
    cols = ("subject", "session", "lesion_id", "decision", "reader", "reason", "lesion_type", "x_ras_mm",
            "y_ras_mm", "z_ras_mm")
    return parse_decisions([dict(zip(cols, r + ("",) * (len(cols) - len(r)))) for r in rows])


def test_counts_from_the_inventory_match_the_endpoint_definitions():
    c = session_counts(INVENTORY)
    assert c["t2_lesion_count"] == 4 and c["new_t2_vs_baseline"] == 2 and c["enlarging_t2_vs_baseline"] == 1
    assert c["gd_lesion_count"] == 2
    assert c["cua_lesion_count"] == 3  # Gd1, Gd2 and new lesion 2 (lesion 3 overlaps Gd1)
    assert c["t2_lesion_volume_ml"] == pytest.approx(0.4)


def test_rejecting_a_gd_lesion_lets_its_new_t2_lesion_count_in_cua():
    c = session_counts(INVENTORY, {"Gd1"})
    assert c["gd_lesion_count"] == 1 and c["cua_lesion_count"] == 3  # Gd2 + lesions 2 and 3


def test_apply_rejects_confirms_and_adds():
    ds = _decide(("p01", "M06", "2", "reject", "RA", "vessel"), ("sub-p01", "ses-M06", "1", "confirm", "RA"),
                 ("p01", "M06", "", "add", "RA", "missed", "Gd", "10", "-20", "30.5"))
    applied = apply_decisions([ROW], INVENTORY, ds)
    row = applied.rows[0]
    assert row["t2_lesion_count"] == "3" and row["new_t2_vs_baseline"] == "1" and row["new_t2_vs_previous"] == "1"
    assert row["t2_lesion_volume_ml"] == "0.3000"
    assert row["gd_lesion_count"] == "3" and row["gd_lesion_volume_ml"] == "0.1000"  # added: no outline
    assert row["cua_lesion_count"] == "3"  # -1 (lesion 2) +1 (added Gd)
    assert row["enlarging_t2_vs_baseline"] == "1" and row["reader_adjudicated"] == "true"
    assert "lesion 2 rejected by RA (vessel)" in row["qc_notes"] and "volumes exclude added" in row["qc_notes"]
    changed = {r["column"]: (r["pipeline_value"], r["adjudicated_value"]) for r in applied.log}
    assert changed["t2_lesion_count"] == ("4", "3") and changed["reader_adjudicated"] == ("false", "true")
    assert "enlarging_t2_vs_baseline" not in changed


def test_confirm_only_flags_the_row_and_changes_no_count():
    applied = apply_decisions([ROW], INVENTORY, _decide(("p01", "M06", "Gd2", "confirm", "RA")))
    assert {k: v for k, v in applied.rows[0].items() if k not in ("reader_adjudicated", "qc_notes")} == \
        {k: v for k, v in ROW.items() if k not in ("reader_adjudicated", "qc_notes")}
    assert applied.rows[0]["reader_adjudicated"] == "true"


def test_na_stays_na_and_rows_without_decisions_are_untouched():
    row = dict(ROW, gd_lesion_count="NA", gd_lesion_volume_ml="NA", cua_lesion_count="NA")
    other = dict(ROW, session="M12")
    applied = apply_decisions([row, other], INVENTORY + [_t2(1, ses="M12")],
                              _decide(("p01", "M06", "3", "reject", "RA", "artefact")))
    assert applied.rows[0]["cua_lesion_count"] == "NA" and applied.rows[0]["t2_lesion_count"] == "3"
    assert applied.rows[1] == dict(other, reader_adjudicated="false")


@pytest.mark.parametrize("rows, message", [
    ([("p01", "M06", "2", "delete", "RA", "x")], "not one of"),
    ([("p01", "M06", "2", "reject", "", "x")], "reader is required"),
    ([("p01", "M06", "2", "reject", "RA", "")], "needs a reason"),
    ([("p01", "M06", "", "add", "RA", "missed", "T2", "1", "", "3")], "numeric"),
    ([("p01", "M06", "", "add", "RA", "missed", "blob", "1", "2", "3")], "lesion_type"),
    ([("p01", "M06", "2", "reject", "RA", "x"), ("p01", "M06", "2", "confirm", "RB")], "both"),
])
def test_bad_decisions_are_named(rows, message):
    with pytest.raises(AdjudicationError, match=message):
        _decide(*rows)


def test_unknown_lesion_or_session_is_an_error_not_ignored():
    with pytest.raises(AdjudicationError, match="no counted lesion '99'"):
        apply_decisions([ROW], INVENTORY, _decide(("p01", "M06", "99", "reject", "RA", "x")))
    with pytest.raises(AdjudicationError, match="not in endpoints.csv"):
        apply_decisions([ROW], INVENTORY, _decide(("p01", "M24", "1", "reject", "RA", "x")))
    with pytest.raises(AdjudicationError, match="baseline"):
        apply_decisions([dict(ROW, is_baseline="true")], INVENTORY,
                        _decide(("p01", "M06", "", "add", "RA", "m", "new", "1", "2", "3")))


def test_inventory_from_masks_on_an_oblique_grid():
    affine = oblique_affine(zooms=(1.0, 1.2, 2.5))
    labels = np.zeros((30, 30, 12), np.int32)
    labels[3:7, 3:7, 2:5] = 1
    labels[15:20, 15:20, 5:8] = 2
    gd = np.zeros(labels.shape, bool)
    gd[16:19, 16:19, 5:7] = True      # inside lesion 2
    gd[25:28, 25:28, 8:10] = True     # enhancement outside T2 lesions
    rows = [{"lesion_id": "1", "status": "stable", "status_vs_previous": "stable"},
            {"lesion_id": "2", "status": "new", "status_vs_previous": "new"}]
    inv = session_inventory("p01", "M06", labels, rows, gd, affine, LesionRules(10.0, 3))
    ids = {les.lesion_id: les for les in inv}
    assert set(ids) == {"1", "2", "Gd1", "Gd2"}
    assert ids["2"].overlaps == ("Gd1",) and ids["Gd1"].overlaps == ("2",) and ids["Gd2"].overlaps == ()
    assert ids["1"].volume_mm3 == pytest.approx(48 * 1.0 * 1.2 * 2.5)
    assert ids["2"].counted_in() == ["t2_lesion_count", "new_t2_vs_baseline", "new_t2_vs_previous"]
    assert session_counts(inv)["cua_lesion_count"] == 2
    back = [InventoryLesion.from_row({k: str(v) if v is not None else "NA" for k, v in les.to_row().items()})
            for les in inv]
    assert [b.lesion_id for b in back] == [les.lesion_id for les in inv] and back[2].overlaps == inv[2].overlaps

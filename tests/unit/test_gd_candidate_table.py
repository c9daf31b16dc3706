"""The Gd+ bench's candidate table and its replay under other rules (msimaging.bench.enhancing_real)."""

from __future__ import annotations

import numpy as np

from msimaging.bench.enhancing_real import candidate_rows, replay
from msimaging.enhancing import EnhancingRules, accept, detect
from msimaging.lesions import LesionRules
from tests.unit.test_enhancing import AFFINE, _lesion_on_a_vein


def _row(cid: int, ok: bool, hits=(), in_expert=False, part_of=None, p=0.9) -> dict:
    r = {"candidate": cid, "accepted": ok, "hits": list(hits), "in_expert": in_expert, "t2_probability": p}
    if part_of is not None:
        r["part_of"] = part_of
    return r


def test_replay_counts_recall_by_size_and_false_lesions_once_per_candidate() -> None:
    table = {
        "real": [_row(1, True), _row(2, True, in_expert=True), _row(3, False)],
        "cases": [
            {"lesions": [{"label": 1, "volume_mm3_1mm": 15.0}, {"label": 2, "volume_mm3_1mm": 60.0}],
             "candidates": [_row(1, True, hits=[1]), _row(2, False, p=0.1),
                            # a rejected candidate's two accepted parts: one false lesion, not two
                            _row(3, False, p=0.1), _row(4, True, part_of=3), _row(5, True, part_of=3)]},
            {"lesions": [{"label": 1, "volume_mm3_1mm": 300.0}, {"label": 2, "volume_mm3_1mm": 30.0}],
             "candidates": [_row(1, False, hits=[1], p=0.1), _row(2, True, hits=[1], part_of=1),
                            # the part of an accepted candidate is never looked at
                            _row(3, True, hits=[2]), _row(4, True, part_of=3)]},
        ],
    }
    got = replay(table, lambda c: bool(c["accepted"]))
    assert got["gd_real_outside_t2"] == 1.0
    assert got["gd_implant_recall_10-20mm3"] == 1.0
    assert got["gd_implant_recall_20-50mm3"] == 1.0
    assert got["gd_implant_recall_50-200mm3"] == 0.0
    assert got["gd_implant_recall_200-1000mm3"] == 1.0
    assert got["gd_implant_recall_ge20mm3"] == round(2 / 3, 3)
    assert got["gd_implant_false_per_scan"] == 0.5
    # a stricter rule on the same table: every candidate below T2-model probability 0.5 is rejected
    strict = replay(table, lambda c: c["accepted"] and c["t2_probability"] >= 0.5)
    assert strict["gd_implant_false_per_scan"] == 0.5 and strict["gd_implant_recall_ge20mm3"] == round(2 / 3, 3)
    none = replay(table, lambda c: False)
    assert none["gd_implant_false_per_scan"] == 0.0 and none["gd_implant_recall_ge20mm3"] == 0.0


def test_candidate_rows_of_a_second_look_replay_to_the_detection() -> None:
    """The lesion on a vein is found only by a part of the second look: the rows carry the part
    with its hit, and replaying the recorded rules gives what the detection found."""
    t1, ce, brain, other, les = _lesion_on_a_vein()
    found = detect(ce, t1, AFFINE, brain, EnhancingRules(), LesionRules(), t2_lesions=les)
    assert found.part_labels is not None
    truth = np.where(les, 1, 0) + np.where(other & ~les, 2, 0)
    rows = candidate_rows(found, truth, np.zeros(les.shape, bool))
    assert len(rows) == len(found.candidates)
    parts = [r for r in rows if "part_of" in r]
    assert [r["hits"] for r in parts if r["accepted"]] == [[1]]
    lesions = [{"label": k, "volume_mm3_1mm": float((truth == k).sum() * np.prod([1.2, 1.2, 2.0]))} for k in (1, 2)]
    table = {"real": [], "cases": [{"lesions": lesions, "candidates": rows}]}
    recorded = replay(table, lambda c: bool(c["accepted"]))
    rules = replay(table, lambda c: accept(c, EnhancingRules())[0])
    assert {k: v for k, v in recorded.items() if v == v} == {k: v for k, v in rules.items() if v == v}
    assert recorded["gd_implant_recall_ge20mm3"] == 1.0 and recorded["gd_implant_false_per_scan"] == 0.0


def test_the_replay_command_changes_decision_rules_only(tmp_path, capsys) -> None:
    import dataclasses
    import json

    import pytest

    from msimaging.bench.enhancing_real import main
    from msimaging.enhancing import DECISION_RULES

    assert set(DECISION_RULES) <= {f.name for f in dataclasses.fields(EnhancingRules)}
    ev = {"volume_mm3": 40.0, "FLAIR_excess": 0.4, "T2w_excess": 0.5, "T1w_excess": -0.1, "csf_fraction": 0.0,
          "elongation": 1.5, "tubularity": 0.7, "t2_lesion": 0.0, "wm_prior": 0.9, "mirror_fraction": 0.0}
    rows = [{**ev, "candidate": 1, "t2_probability": 0.2, "hits": [1], "in_expert": False},
            {**ev, "candidate": 2, "t2_probability": 0.25, "hits": [], "in_expert": False}]
    for r in rows:
        r["accepted"] = accept(r, EnhancingRules())[0]
    table = {"real": [], "cases": [{"seed": 0, "lesions": [{"label": 1, "volume_mm3_1mm": 40.0}], "candidates": rows}]}
    path = tmp_path / "activity.json"
    path.write_text(json.dumps({"gd_candidates": table}))
    got = main([str(path), "--set", "min_t2_probability=0.15"])
    assert got["gd_implant_recall_ge20mm3"] == 1.0 and got["gd_implant_false_per_scan"] == 1.0
    assert "0.000 -> 1.000" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a decision rule"):
        main([str(path), "--set", "z_threshold=3"])

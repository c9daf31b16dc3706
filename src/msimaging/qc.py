"""Quality-control records: every step reports figures with a pass/warn/fail status.

Steps write a JSON list of :class:`QCItem` next to their outputs; the group step collects them
into ``qc.tsv`` and the endpoints carry the worst status of a session with its reasons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_ORDER = {"pass": 0, "warn": 1, "fail": 2}

QC_COLUMNS = ("subject", "session", "step", "item", "metric", "value", "status", "note")


@dataclass
class QCItem:
    step: str
    item: str
    metric: str
    value: float | str | None
    status: str = "pass"
    note: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUS_ORDER:
            raise ValueError(f"QC status {self.status!r} is not one of {sorted(STATUS_ORDER)}")


@dataclass
class QCReport:
    subject: str
    session: str
    items: list[QCItem] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, step: str, item: str, metric: str, value: float | str | None,
            status: str = "pass", note: str = "") -> QCItem:
        qc = QCItem(step, item, metric, value, status, note)
        self.items.append(qc)
        return qc

    @property
    def status(self) -> str:
        return worst_status(i.status for i in self.items)

    def notes(self) -> list[str]:
        return [f"{i.step}/{i.item}: {i.note}" for i in self.items if i.status != "pass" and i.note]

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "session": self.session,
            "items": [asdict(i) for i in self.items],
            "figures": self.figures,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QCReport":
        return cls(subject=d["subject"], session=d["session"],
                   items=[QCItem(**i) for i in d.get("items", [])], figures=dict(d.get("figures", {})))


def worst_status(statuses: Any) -> str:
    worst = "pass"
    for s in statuses:
        if STATUS_ORDER[s] > STATUS_ORDER[worst]:
            worst = s
    return worst


def threshold_status(value: float, warn: float, fail: float, higher_is_better: bool = True) -> str:
    """pass/warn/fail of a figure against two thresholds (NaN fails)."""
    if value != value:  # NaN
        return "fail"
    if higher_is_better:
        return "fail" if value < fail else "warn" if value < warn else "pass"
    return "fail" if value > fail else "warn" if value > warn else "pass"

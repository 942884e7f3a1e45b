"""``benefits fairness``: does any group of members quietly get worse offers (大数据杀熟)?

Two audits, one report (JSON + HTML with plots):

- :mod:`~training.fairness.counterfactual`: sampled members (:mod:`~training.fairness.sources`) ranked
  by the service's own ranking as every level of one attribute (tier, paid membership, region, a
  declared attribute), nothing else changed;
- :mod:`~training.fairness.logged`: the slates members were shown (the API's request log, or a
  simulation's impressions), grouped by attribute.

Both measure each slate the same way (:mod:`~training.fairness.slates`: offered value, discount depth,
exposure by offer kind) and compare groups with fairlearn's ``MetricFrame`` against the operator's
thresholds (:mod:`~training.fairness.groups`), signed so that "the higher tier got less" shows as a
negative gap. :mod:`~training.fairness.report` writes the files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from training.fairness.groups import AuditConfig
from training.fairness.report import summary


def assemble(
    model: dict[str, Any],
    guard: bool,
    k: int,
    config: AuditConfig,
    counterfactual: dict[str, Any] | None,
    logged: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report dictionary; ``pass`` is False when any judged check of either audit fails."""
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "guard": guard,
        "k": k,
        "config": config.model_dump(),
        "counterfactual": counterfactual,
        "logged": logged,
    }
    report["summary"] = summary(report)
    verdicts = [s["pass"] for s in report["summary"] if s["pass"] is not None]
    report["pass"] = all(verdicts) if verdicts else None
    return report

"""The off-policy promotion gate and the terminal summary of ``benefits evaluate``
(:mod:`training.counterfactual`).

The gate: a version is promoted only when the estimate (DR, or SNIPS) of its claims per view minus the
promoted model's (the popularity baseline when none is promoted), on logged slates it was not trained
on, has its lower bound above a margin. ``benefits train`` and ``benefits promote`` ask it when given
``--require-offpolicy-gain DIR`` or the ``promotion_offpolicy_logs`` setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.registry import Registry
from infra.settings import Settings
from training.counterfactual import EvaluationError, Options, run


def summary(result: dict[str, Any]) -> list[str]:
    """The result in lines for the terminal."""
    lines = [
        f"{result['views']:,} logged views ({result['slots']:,} slots) from {result['logs']}; "
        f"{result['estimator']} estimator; policy {result['policy']['exploration']}"
        + (f" T={result['policy']['temperature']}" if result["policy"]["temperature"] else "")
        + f", k {result['policy']['k']}"
    ]
    for metric in ("claims_per_view", "value_per_view"):
        lines.append(f"{metric.replace('_', ' ')}:")
        for role in ("candidate", "baseline", "difference"):
            block = result[role]
            name = block["policy"] if role != "difference" else "candidate - baseline"
            for est in ("ips", "snips", "dr"):
                e = block[metric][est]
                lines.append(
                    f"  {role:<10} {name[:28]:<28} {est:<5} {e['estimate']:+.5f}  "
                    f"[{e['ci_low']:+.5f}, {e['ci_high']:+.5f}]"
                )
            orc = block.get("oracle")
            if orc is not None and metric in orc:
                lines.append(f"  {role:<10} {name[:28]:<28} true  {orc[metric]:+.5f}")
        lp = result["logging_policy"][metric]
        lines.append(
            f"  logged policy (on-policy) {lp['estimate']:+.5f}  [{lp['ci_low']:+.5f}, {lp['ci_high']:+.5f}]"
        )
    lines.extend(f"note: {n}" for n in result["notes"])
    return lines


@dataclass(frozen=True)
class Gate:
    """The off-policy promotion gate: the estimate of (version - promoted) must have its lower bound
    above ``margin`` (claims per view) on the logs at ``logs``."""

    logs: Path
    margin: float = 0.0
    estimator: str = "dr"
    events: Path | None = None

    def __post_init__(self) -> None:
        if self.estimator not in ("dr", "snips"):
            raise EvaluationError(
                f"off-policy gate estimator {self.estimator!r} is not one of ['dr', 'snips']"
            )


def gate_decision(settings: Settings, version: str, gate: Gate) -> tuple[bool, str, dict[str, Any]]:
    """(pass?, why, the evaluation) for promoting ``version`` (against the promoted model, or the
    popularity baseline when none is promoted)."""
    registry = Registry(settings.registry_dir)
    baseline = "promoted" if registry.promoted() is not None else "popularity"
    result = run(settings, gate.logs, version, baseline, Options(events=gate.events))
    d = result["difference"]["claims_per_view"][gate.estimator]
    against = result["baseline"]["policy"]
    against = f"the promoted {against}" if baseline == "promoted" else "popularity (no model is promoted)"
    ok = bool(np.isfinite(d["ci_low"]) and d["ci_low"] > gate.margin)
    why = (
        f"off-policy {gate.estimator.upper()} on {result['views']:,} logged views ({gate.logs}): {version} "
        f"minus {against} = {d['estimate']:+.5f} claims per view, {100 * (1 - result['alpha']):.0f}% "
        f"interval [{d['ci_low']:+.5f}, {d['ci_high']:+.5f}]; lower bound "
        f"{'above' if ok else 'not above'} the margin {gate.margin:g}"
    )
    return ok, why, result

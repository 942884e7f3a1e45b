"""``benefits evaluate`` and the off-policy promotion gate of ``benefits promote``
(:mod:`training.counterfactual`).

Exit codes: 0 done (the gate passed), 1 the gate refused, 2 bad input (logs without propensities,
unknown versions, unreadable data), each with one line naming what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from infra.registry import Registry
from infra.settings import Settings


def evaluate_command(
    settings: Settings,
    policy: str,
    logs: Path,
    baseline: str,
    k: int | None,
    temperature: float | None,
    events: Path | None,
    catalog: Path | None,
    as_json: bool,
    out: Path | None,
) -> int:
    from training.counterfactual import EvaluationError, Options, run
    from training.counterfactual_gate import summary
    from training.sources import INPUT_ERRORS

    errors: tuple[type[Exception], ...] = (EvaluationError, *INPUT_ERRORS)
    try:
        result = run(
            settings,
            logs,
            policy,
            baseline,
            Options(k=k, temperature=temperature, events=events, catalog=catalog),
        )
    except errors as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    typer.echo(text if as_json else "\n".join(summary(result)))
    return 0


def offpolicy_gate(settings: Settings, reg: Registry, version: str, logs: Path | None) -> list[str] | None:
    """The gate's line for the promotion's checks when ``version`` passes (or no gate is asked for:
    no ``--require-offpolicy-gain`` and no ``promotion_offpolicy_logs`` setting); None after printing
    and recording why it was refused."""
    from training.counterfactual import EvaluationError
    from training.counterfactual_gate import Gate, gate_decision
    from training.sources import INPUT_ERRORS

    errors: tuple[type[Exception], ...] = (EvaluationError, *INPUT_ERRORS)
    path = logs or settings.promotion_offpolicy_logs
    if path is None:
        return []
    try:
        gate = Gate(Path(path), settings.promotion_offpolicy_margin, settings.promotion_offpolicy_estimator)
        ok, why, _ = gate_decision(settings, version, gate)
    except errors as exc:
        ok, why = False, f"the off-policy gate could not evaluate {version}: {exc}"
    if ok:
        return [why]
    reg.record("refused", version, previous=reg.promoted(), reason=f"offpolicy: {why}")
    typer.echo(f"refused: model {version}: {why}\nthe pointer is unchanged: {reg.promoted()}", err=True)
    return None

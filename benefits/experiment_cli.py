"""``benefits experiment report``: per-arm rates, differences and a verdict, from a running service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

experiment = typer.Typer(no_args_is_help=True, help="Experiments: per-arm results.")


@experiment.command("report")
def report_command(
    url: Annotated[str, typer.Option(help="Base URL of any API replica (counts are shared).")] = (
        "http://127.0.0.1:8000"
    ),
    admin_key: Annotated[
        str | None, typer.Option(help="Admin API key (default: the configured one).")
    ] = None,
    control: Annotated[
        str | None, typer.Option(help="Control arm (default: the first declared arm).")
    ] = None,
    metric: Annotated[str, typer.Option(help="claims_per_view, clicks_per_view, ...")] = "claims_per_view",
    mde: Annotated[float, typer.Option(help="Minimum detectable effect, relative (0.1 = 10%).")] = 0.1,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power for the sample-size gate.")] = 0.8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Rates with Wilson intervals per arm, each arm against the control (difference, interval, p-value),
    the views per arm a --mde change needs, and a verdict that calls no winner before that."""
    import httpx

    from benefits.cli import _settings
    from training.abtest import report

    settings = _settings()
    key = admin_key or settings.admin_api_keys[0].get_secret_value()
    try:
        r = httpx.get(f"{url.rstrip('/')}/v1/admin/experiment", headers={"X-API-Key": key}, timeout=10)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    if r.status_code != 200:
        typer.echo(f"error: {r.status_code} {r.text}", err=True)
        raise typer.Exit(2)
    body = r.json()
    arms = [a["name"] for a in body["experiment"]["arms"]]
    try:
        out = report(body["counts"], control or arms[0], metric, mde, alpha, power)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    out["experiment_id"] = body["experiment"]["experiment_id"]
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"experiment {out['experiment_id']}: {metric}, control {out['control']}, MDE {mde:.0%}")
    for arm, a in out["arms"].items():
        rate = a[metric]
        shown = f"{rate:.4f}" if rate is not None else "-"
        typer.echo(
            f"  {arm:<12} views={a['views']:>8.0f} claims={a['claims']:>6.0f} {metric}={shown} "
            f"[{a['ci'][0]:.4f}, {a['ci'][1]:.4f}]"
        )
    for arm, c in out["comparisons"].items():
        diff = (
            f"diff {c['difference']:+.4f} [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] p={c['p_value']:.3f}; "
            if "ci" in c
            else ""
        )
        typer.echo(f"  {arm} vs {out['control']}: {diff}{c['verdict']}")


shadow = typer.Typer(no_args_is_help=True, help="Shadow models: compare their slates with the live ones.")


@shadow.command("report")
def shadow_report_command(
    log: Annotated[Path, typer.Option(help="The shadow log (BENEFITS_SHADOW_LOG_PATH).")],
    k: Annotated[int, typer.Option(help="Slate depth compared.")] = 5,
) -> None:
    """overlap@k, Kendall's tau over the offers both slates share, and both score distributions (JSON)."""
    from training.shadow_report import load, report

    if not log.exists():
        typer.echo(f"error: {log} does not exist", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(report(load(log), k), indent=2))

"""The ``benefits`` command: one verb per job. Logging is configured here (entry point), nowhere else.

Heavy imports happen inside each command so that ``benefits --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infra.logs import configure_logging
from infra.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _add_groups() -> None:
    from benefits.experiment_cli import experiment, shadow

    app.add_typer(experiment, name="experiment")
    app.add_typer(shadow, name="shadow")


_add_groups()


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level)
    return settings


@app.command()
def demo(
    members: Annotated[int, typer.Option(help="Simulated members to train on.")] = 2000,
    days: Annotated[float, typer.Option(help="Simulated days of history.")] = 14.0,
) -> None:
    """Everything end to end on embedded Redis and broker: simulate, train, stream, show rankings react."""
    from benefits.demo import run_demo

    raise typer.Exit(run_demo(_settings(), n_members=members, days=days))


@app.command()
def serve(
    workers: Annotated[
        int, typer.Option(min=1, help="API processes sharing the listening socket (one per core).")
    ] = 1,
) -> None:
    """Run the recommend API (uvicorn) against BENEFITS_REDIS_URL / BENEFITS_KAFKA_BOOTSTRAP."""
    import contextlib
    import logging

    from service.server import serve as run

    settings = _settings()
    with contextlib.ExitStack() as stack:
        if settings.redis_url is None:
            if settings.environment == "prod":
                raise typer.BadParameter("environment=prod needs BENEFITS_REDIS_URL")
            from harness.embedded import start_redis

            svc = start_redis(data_dir=settings.embedded_redis_dir)
            stack.callback(svc.stop)
            logging.getLogger(__name__).warning(
                "no BENEFITS_REDIS_URL: started an embedded Redis at %s (data: %s)",
                svc.url,
                settings.embedded_redis_dir or "not persisted",
            )
            settings = settings.model_copy(update={"redis_url": svc.url})
        run(settings, workers=workers)


@app.command()
def worker() -> None:
    """Run a stream worker: fold member-events into member state in Redis."""
    from stream.worker import run_worker

    settings = _settings()
    run_worker(settings, engine=settings.worker_engine)


@app.command()
def replay(
    events: Annotated[
        Path | None, typer.Option(help="JSONL event log to replay; default: the events topic from the start.")
    ] = None,
) -> None:
    """Rebuild member state, offer statistics and money state (stock, budget used, per-member claims)
    from the event log into BENEFITS_REDIS_URL, after a data loss. Offers come from the catalog in Redis,
    else the seed (BENEFITS_CATALOG_SEED_PATH or the demo catalog)."""
    import asyncio
    import json
    import time

    from benefits.ops import catalog_offers
    from stream.replay import run

    settings = _settings()

    async def main() -> dict[str, object]:
        return await run(settings, await catalog_offers(settings, time.time()), events)

    try:
        out = asyncio.run(main())
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(out))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("var/sim"),
    members: Annotated[int, typer.Option(help="Members in the population.")] = 2000,
    days: Annotated[float, typer.Option(help="Days of history.")] = 14.0,
    offers: Annotated[int, typer.Option(help="Offers in the catalog.")] = 200,
    seed: Annotated[int, typer.Option()] = 1,
    offpolicy_log: Annotated[
        bool,
        typer.Option(help="Also log marginal propensities and every eligible offer's truth (for evaluate)."),
    ] = False,
) -> None:
    """Simulate members, offers, events and logged impressions with outcomes."""
    from training.simulate import simulate_to_dir

    _settings()
    simulate_to_dir(
        out, n_members=members, days=days, n_offers=offers, seed=seed, offpolicy_log=offpolicy_log
    )


@app.command()
def train(
    data: Annotated[
        Path, typer.Option(help="Simulation directory, or an impressions CSV/Parquet file.")
    ] = Path("var/sim"),
    events: Annotated[
        Path | None,
        typer.Option(help="Event log: a JSONL file or an archive directory written by `benefits archive`."),
    ] = None,
    promote: Annotated[bool, typer.Option(help="Promote the new version when it passes its checks.")] = True,
    catalog: Annotated[
        Path | None, typer.Option(help="Catalogue file (default: catalog.json beside the data).")
    ] = None,
    members: Annotated[
        Path | None, typer.Option(help="Members table (CSV/Parquet): member_id, [event_ts], attributes.")
    ] = None,
    spec: Annotated[
        Path | None, typer.Option(help="Feature specification (JSON); default: the shipped one.")
    ] = None,
    history: Annotated[
        str, typer.Option(help="both (event log + labels), events (log only) or labels (labels only).")
    ] = "both",
    split: Annotated[
        str, typer.Option(help="time (latest slice held out) or member (new members held out).")
    ] = "time",
    calibration: Annotated[
        str, typer.Option(help="platt, isotonic or none (fitted on validation).")
    ] = "platt",
    param: Annotated[
        list[str] | None, typer.Option(help="LightGBM parameter KEY=VALUE (repeatable; overrides --params).")
    ] = None,
    params: Annotated[Path | None, typer.Option(help="LightGBM parameters: a JSON object file.")] = None,
    objective: Annotated[
        str, typer.Option(help="binary, or lambdarank (per-request ranking, calibrated into P(claim)).")
    ] = "binary",
    require_offpolicy_gain: Annotated[
        Path | None,
        typer.Option(
            help="Logged slates (as for evaluate --logs) the new version must also win on to be promoted."
        ),
    ] = None,
) -> None:
    """Build point-in-time training rows, train LightGBM, evaluate, export ONNX into the registry."""
    from training.pipeline import TrainOptions, parse_params, train_command
    from training.sources import INPUT_ERRORS

    settings = _settings()
    try:
        options = TrainOptions(
            catalog=catalog,
            members=members,
            spec=spec,
            history=history,  # type: ignore[arg-type]
            split=split,  # type: ignore[arg-type]
            calibration=calibration,  # type: ignore[arg-type]
            params=parse_params(params, param or []),
            objective=objective,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        train_command(
            settings, data=data, events=events, promote=promote, options=options,
            offpolicy_logs=require_offpolicy_gain,
        )  # fmt: skip
    except INPUT_ERRORS as exc:  # data the user gave that cannot be used: one line, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def archive(
    out: Annotated[
        Path | None, typer.Option(help="Archive directory (default BENEFITS_ARCHIVE_DIR).")
    ] = None,
    idle_exit_seconds: Annotated[
        float | None, typer.Option(help="Exit after this long without new records (batch runs, tests).")
    ] = None,
) -> None:
    """Archive the member-events topic to Parquet by event date (own consumer group, erasure-aware)."""
    import asyncio

    from stream.archiver import run_archiver

    settings = _settings()
    if settings.kafka_bootstrap is None:
        raise typer.BadParameter("benefits archive needs BENEFITS_KAFKA_BOOTSTRAP")
    stats = asyncio.run(
        run_archiver(settings, out or settings.archive_dir, idle_exit_seconds=idle_exit_seconds)
    )
    typer.echo(f"archived {stats.archived} events ({stats.invalid} invalid skipped, {stats.erased} erasures)")


@app.command("import-model")
def import_model(
    booster: Annotated[Path, typer.Argument(help="A LightGBM model text file (Booster.save_model).")],
    spec: Annotated[
        Path | None, typer.Option(help="Feature specification its columns follow (default: the shipped one).")
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(help="Catalogue whose taxonomy the specification takes its vocabularies from."),
    ] = None,
    promote: Annotated[bool, typer.Option(help="Promote it after the checks.")] = False,
) -> None:
    """Register an external LightGBM booster whose feature names match a specification (ONNX, parity)."""
    from training.import_model import import_booster

    settings = _settings()
    try:
        version = import_booster(
            Path(settings.registry_dir), booster, spec, catalog, promote=promote, lifecycle=settings.lifecycle
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"registered {version}{' (promoted)' if promote else ''}")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Model version in the registry.")],
    require_offpolicy_gain: Annotated[
        Path | None,
        typer.Option(
            help="Logged slates (as for evaluate --logs) VERSION must win on against the promoted model."
        ),
    ] = None,
) -> None:
    """Check VERSION (loads, schema, predictions, parity with its LightGBM source), then make it the
    served model; API replicas hot-swap it within a poll interval. Refused (exit 1) with the reason."""
    from benefits.models_commands import promote_command

    raise typer.Exit(promote_command(_settings(), version, require_offpolicy_gain))


@app.command()
def evaluate(
    policy: Annotated[str, typer.Option(help="The candidate model version (in the registry).")],
    logs: Annotated[
        Path,
        typer.Option(
            help="Logged slates with propensities: a simulation directory, impressions table or archive."
        ),
    ],
    baseline: Annotated[str, typer.Option(help="A model version, promoted, or popularity.")] = "promoted",
    k: Annotated[int | None, typer.Option(help="Slate size of the policy (default: as logged).")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Evaluate softmax (Plackett-Luce) exploration at this temperature.")
    ] = None,
    events: Annotated[Path | None, typer.Option(help="Event log for an impressions table.")] = None,
    catalog: Annotated[Path | None, typer.Option(help="Catalogue file (default: beside the logs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result (JSON) here.")] = None,
) -> None:
    """Counterfactual evaluation: claims and value per view of POLICY and the baseline estimated from
    logged slates (IPS, SNIPS, doubly robust, with intervals), and their difference."""
    from benefits.evaluate_cli import evaluate_command

    raise typer.Exit(
        evaluate_command(_settings(), policy, logs, baseline, k, temperature, events, catalog, as_json, out)
    )


@app.command()
def rollback(
    to: Annotated[
        str | None, typer.Option(help="A version promoted before (default: the previous one).")
    ] = None,
) -> None:
    """Point back at an earlier promoted version, after the same checks as promote."""
    from benefits.models_commands import rollback_command

    raise typer.Exit(rollback_command(_settings(), to))


@app.command()
def models() -> None:
    """List model versions (held-out AUC, which is promoted) and the promotion history."""
    from benefits.models_commands import models_command

    raise typer.Exit(models_command(_settings()))


@app.command()
def loadtest(
    target: Annotated[
        str | None, typer.Option(help="Base URL(s) of running API(s), comma-separated; none: start a stack.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Storefront API key (default: the first configured).")
    ] = None,
    shape: Annotated[str, typer.Option(help="steady | ramp | flash | soak")] = "steady",
    rps: Annotated[float, typer.Option(help="Page views per second (flash: the normal rate).")] = 500.0,
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 60.0,
    spike_factor: Annotated[float, typer.Option(help="flash: peak = rps x this.")] = 10.0,
    user_rps: Annotated[float, typer.Option(help="Page views per second per Locust user.")] = 10.0,
    arrivals: Annotated[
        str, typer.Option(help="jittered (mean x U(0.5,1.5)) | poisson (exponential) | uniform (constant).")
    ] = "jittered",
    offers: Annotated[int, typer.Option(help="Catalog size of the started stack.")] = 200,
    members: Annotated[int, typer.Option(help="Known members (Zipf-skewed) in the started stack.")] = 10_000,
    workers: Annotated[
        int, typer.Option(help="API processes of the started stack (one `benefits serve --workers N`).")
    ] = 1,
    claim_units: Annotated[
        int, typer.Option(help="flash: members race for a coupon of this many units (0: no claims).")
    ] = 0,
    claim_share: Annotated[float, typer.Option(help="Share of spike page views that also claim.")] = 0.2,
    experiment: Annotated[
        bool, typer.Option(help="Run a two-arm experiment (model vs popularity) and report it.")
    ] = False,
    p99_ms: Annotated[float, typer.Option(help="Budget: p99 of recommend in ms.")] = 10.0,
    spike_p99_ms: Annotated[float, typer.Option(help="Budget during a flash-sale spike.")] = 25.0,
    max_error_rate: Annotated[float, typer.Option(help="Budget: share of failed requests.")] = 0.0,
    max_degraded_rate: Annotated[
        float | None,
        typer.Option(help="Budget: share of degraded (fallback) answers; reported only if unset."),
    ] = None,
    budget_on: Annotated[str, typer.Option(help="Judge the client's or the server's p99.")] = "client",
    client_guard_ms: Annotated[
        float, typer.Option(help="With --budget-on server: client p99 above this = saturated.")
    ] = 50.0,
    capacity: Annotated[bool, typer.Option(help="Step the rate to find the max rps within budget.")] = False,
    capacity_offers: Annotated[str, typer.Option(help="Catalog sizes for --capacity.")] = "50,200,500",
    capacity_workers: Annotated[str, typer.Option(help="API process counts for --capacity.")] = "1,2",
    capacity_step: Annotated[float, typer.Option(help="Seconds per capacity step.")] = 15.0,
    capacity_start_rps: Annotated[float, typer.Option(help="First rate of the capacity search.")] = 100.0,
    registry: Annotated[
        Path | None, typer.Option(help="Serve this registry's model instead of training.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Result name (benchmarks/results/NAME.json).")] = None,
    results_dir: Annotated[Path | None, typer.Option(help="Write results here instead.")] = None,
    keep_files: Annotated[bool, typer.Option(help="Keep the work directory (logs, timelines).")] = False,
) -> None:
    """Storefront load (Locust) against the recommend API; exit 1 when the latency/error budget breaks."""
    from benchmarks.loadtest import RESULTS_DIR, Options, run_command

    settings = _settings()
    if (
        shape not in ("steady", "ramp", "flash", "soak")
        or budget_on not in ("client", "server")
        or arrivals not in ("jittered", "poisson", "uniform")
    ):
        typer.echo(
            "error: --shape is steady|ramp|flash|soak, --budget-on client|server, "
            "--arrivals jittered|poisson|uniform",
            err=True,
        )
        raise typer.Exit(2)
    opts = Options(
        targets=[t.strip().rstrip("/") for t in (target or "").split(",") if t.strip()],
        api_key=api_key,
        shape=shape,  # type: ignore[arg-type]
        rps=rps,
        duration_s=duration,
        spike_factor=spike_factor,
        user_rps=user_rps,
        arrivals=arrivals,  # type: ignore[arg-type]
        offers=offers,
        members=members,
        workers=workers,
        claim_units=claim_units,
        claim_share=claim_share,
        experiment=experiment,
        p99_ms=p99_ms,
        spike_p99_ms=spike_p99_ms,
        max_error_rate=max_error_rate,
        max_degraded_rate=max_degraded_rate,
        budget_on=budget_on,  # type: ignore[arg-type]
        client_guard_ms=client_guard_ms,
        capacity=capacity,
        capacity_offers=[int(x) for x in capacity_offers.split(",")],
        capacity_workers=[int(x) for x in capacity_workers.split(",")],
        capacity_step_s=capacity_step,
        capacity_start_rps=capacity_start_rps,
        registry=registry,
        name=name,
        results_dir=results_dir or RESULTS_DIR,
        keep_files=keep_files,
    )
    raise typer.Exit(run_command(settings, opts))


@app.command()
def reliability(
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated scenarios (default: all): " + "redis, broker, worker, redis-empty, "
            "topic-recreated, models, overload-256, overload, slow-clients, schemathesis, bad-input, "
            "dead-letters, security."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Report to write.")] = Path("docs/reliability.md"),
) -> None:
    """Faults, overload, bad input and security against real processes; writes docs/reliability.md.
    Exit 1 when any check fails."""
    from harness.reliability import SCENARIOS, run

    _settings()
    names = [n.strip() for n in only.split(",")] if only else None
    unknown = [n for n in names or [] if n not in SCENARIOS]
    if unknown:
        typer.echo(f"error: unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}", err=True)
        raise typer.Exit(2)
    outcomes = run(names, out)
    for o in outcomes:
        typer.echo(f"{'pass' if o.passed else 'base' if o.baseline else 'FAIL'}  {o.name}")
    typer.echo(f"wrote {out}")
    raise typer.Exit(0 if all(o.ok for o in outcomes) else 1)


def _fairness() -> None:
    from benefits.fairness_cli import command

    app.command("fairness")(command)


_fairness()


def _catalog_app() -> typer.Typer:
    from benefits.catalog_cli import app as catalog

    return catalog


app.add_typer(_catalog_app(), name="catalog", help="Bulk import / export of the offer catalogue.")


if __name__ == "__main__":
    app()

"""The ``benefits`` command: one verb per job. Logging is configured here (entry point), nowhere else.

Heavy imports happen inside each command so that ``benefits --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benefits.logs import configure_logging
from benefits.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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
def serve() -> None:
    """Run the recommend API (uvicorn) against BENEFITS_REDIS_URL / BENEFITS_KAFKA_BOOTSTRAP."""
    from service.app import serve as run

    run(_settings())


@app.command()
def worker() -> None:
    """Run a stream worker: fold member-events into member state in Redis."""
    from features.stream import run_worker

    run_worker(_settings())


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("var/sim"),
    members: Annotated[int, typer.Option(help="Members in the population.")] = 2000,
    days: Annotated[float, typer.Option(help="Days of history.")] = 14.0,
    offers: Annotated[int, typer.Option(help="Offers in the catalog.")] = 200,
    seed: Annotated[int, typer.Option()] = 1,
) -> None:
    """Simulate members, offers, events and logged impressions with outcomes."""
    from training.simulate import simulate_to_dir

    _settings()
    simulate_to_dir(out, n_members=members, days=days, n_offers=offers, seed=seed)


@app.command()
def train(
    data: Annotated[
        Path, typer.Option(help="Simulation directory, or an impressions CSV/Parquet file.")
    ] = Path("var/sim"),
    events: Annotated[Path | None, typer.Option(help="Event log (JSONL) for a bring-your-own table.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote the new version when it passes its checks.")] = True,
) -> None:
    """Build point-in-time training rows, train LightGBM, evaluate, export ONNX into the registry."""
    from training.pipeline import train_command

    settings = _settings()
    train_command(settings, data=data, events=events, promote=promote)


@app.command()
def promote(version: Annotated[str, typer.Argument(help="Model version in the registry.")]) -> None:
    """Make VERSION the served model; API replicas hot-swap it within a poll interval."""
    from benefits.registry import Registry, RegistryError

    settings = _settings()
    try:
        ptr = Registry(settings.registry_dir).promote(version)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"promoted {ptr['version']} (previous: {ptr['previous']})")


@app.command()
def rollback() -> None:
    """Promote the previously promoted model version."""
    from benefits.registry import Registry, RegistryError

    settings = _settings()
    try:
        ptr = Registry(settings.registry_dir).rollback()
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"promoted {ptr['version']} (previous: {ptr['previous']})")


@app.command()
def models() -> None:
    """List model versions in the registry and which one is promoted."""
    from benefits.registry import Registry

    settings = _settings()
    reg = Registry(settings.registry_dir)
    current = reg.promoted()
    for v in reg.versions():
        typer.echo(f"{'*' if v == current else ' '} {v}")


if __name__ == "__main__":
    app()

"""``benefits catalog import FILE`` / ``benefits catalog export``: the catalogue in bulk from a shell, with
the same validation and report as ``POST /v1/admin/offers/import`` (``service.bulk``).

They talk to the catalogue store in Redis (``BENEFITS_REDIS_URL`` / ``BENEFITS_REDIS_PREFIX``) directly,
through the same store methods as the admin API; running API replicas pick a change up within a poll
interval.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from features.taxonomy import load_taxonomy
from infra.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _store_call(settings: Settings, fn: Any) -> Any:
    from infra.redis_client import connect
    from service.catalog import CatalogStore

    if settings.redis_url is None:
        typer.echo("error: set BENEFITS_REDIS_URL to the Redis that holds the catalogue", err=True)
        raise typer.Exit(2)

    async def run() -> Any:
        client = connect(settings.redis_url or "", cluster=settings.redis_cluster, timeout_ms=5000)
        try:
            return await fn(CatalogStore(client, settings.layout))
        finally:
            await client.aclose()

    return asyncio.run(run())


def _print_report(report: dict[str, Any]) -> None:
    typer.echo(
        f"{report['rows']} rows: {report['valid']} valid, {report['refused_count']} refused; "
        f"{len(report['created'])} created, {len(report['updated'])} updated, "
        f"{len(report['unchanged'])} unchanged"
        + (" (dry run: nothing written)" if report["dry_run"] else "")
        + (f"; catalogue version {report['catalog_version']}" if report["applied"] else "")
    )
    for w in report["warnings"]:
        typer.echo(f"warning: {w}")
    for r in report["refused"]:
        for e in r["errors"]:
            typer.echo(f"refused: row {r['row']} ({r['offer_id'] or '?'}): {e['field']}: {e['message']}")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="CSV or JSON file of offers.", exists=True, dir_okay=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and report; write nothing.")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="csv | json (default: from the name).")] = None,
    json_report: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Validate FILE and write its valid offers (one catalogue version bump; unchanged offers are not
    rewritten, so importing the same file again changes nothing). Exit 1 when any row was refused."""
    from benefits.cli import _settings
    from service import bulk

    settings = _settings()
    data = file.read_bytes()
    kind = fmt or bulk.detect_format(file.name, data)
    try:
        report, _ = _store_call(
            settings,
            lambda store: bulk.run_import(
                store,
                data,
                kind,
                dry_run=dry_run,
                taxonomy=load_taxonomy(settings.taxonomy_path or settings.catalog_seed_path),
            ),
        )
    except bulk.ImportFormatError as exc:
        typer.echo(f"error: {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_report:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_report(report)
    raise typer.Exit(1 if report["refused_count"] else 0)


@app.command()
def export(
    out: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv | json")] = "csv",
) -> None:
    """The whole catalogue in the import format (an export re-imports unchanged)."""
    from benefits.cli import _settings
    from service import bulk

    if fmt not in ("csv", "json"):
        typer.echo("error: --format is csv or json", err=True)
        raise typer.Exit(2)
    settings = _settings()
    _, offers = _store_call(settings, lambda store: store.read_all())
    body = bulk.to_csv(offers).encode() if fmt == "csv" else bulk.to_json(offers) + b"\n"
    if out is None:
        sys.stdout.buffer.write(body)
    else:
        out.write_bytes(body)
        typer.echo(f"wrote {len(offers)} offers to {out}", err=True)

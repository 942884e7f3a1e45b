"""``benefits fairness``: the command line (the work is in :mod:`benefits.fairness_run`, imported when the
command runs so that ``benefits --help`` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_ATTRIBUTES = "tier,paid,region"
DEFAULT_PAGES = "home,category,product,member_center"


def command(
    data: Annotated[Path | None, typer.Option(help="A `benefits simulate` directory.")] = None,
    simulate: Annotated[bool, typer.Option(help="Simulate a fresh population and audit it.")] = False,
    sim_members: Annotated[int, typer.Option(min=10, help="--simulate: members.")] = 600,
    sim_days: Annotated[float, typer.Option(min=1, help="--simulate: days of history.")] = 5.0,
    redis_url: Annotated[str | None, typer.Option(help="A running stack's Redis.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Its key prefix (BENEFITS_REDIS_PREFIX).")] = None,
    model: Annotated[
        str | None, typer.Option(help="VERSION, ONNX path or `biased`; default promoted.")
    ] = None,
    guard: Annotated[
        bool | None,
        typer.Option("--guard/--no-guard", help="Online guard (default BENEFITS_FAIRNESS_GUARD_ENABLED)."),
    ] = None,
    sample: Annotated[int, typer.Option(min=1, help="Members in the counterfactual audit.")] = 300,
    pages: Annotated[str, typer.Option(help="Page types each member is ranked on.")] = DEFAULT_PAGES,
    k: Annotated[int, typer.Option(min=1, max=50, help="Slate size audited (top k).")] = 5,
    attributes: Annotated[str, typer.Option(help="tier, paid, region, declared:NAME.")] = DEFAULT_ATTRIBUTES,
    log_path: Annotated[
        Path | None, typer.Option("--log", help="The API's request log (JSON lines).")
    ] = None,
    members: Annotated[
        Path | None, typer.Option(help="Members table (member_id, region, segment) joined to --log.")
    ] = None,
    catalog: Annotated[Path | None, typer.Option(help="Catalogue for --log alone (default: seed).")] = None,
    config: Annotated[Path | None, typer.Option(help="Thresholds file (JSON).")] = None,
    min_value_ratio: Annotated[float | None, typer.Option(help="Offered value ratio, at least.")] = None,
    min_depth_ratio: Annotated[float | None, typer.Option(help="Discount depth ratio, at least.")] = None,
    max_worse_version_net: Annotated[
        float | None,
        typer.Option(
            help="Shared families with a worse version for the higher group, net of better, at most."
        ),
    ] = None,
    max_exposure_diff: Annotated[
        float | None,
        typer.Option(help="Slot share per offer kind, difference at most (default: not judged)."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 1,
    out: Annotated[Path, typer.Option(help="Directory for fairness.json and .html.")] = Path("var/fairness"),
) -> None:
    """Fairness audit (大数据杀熟): counterfactual (change only tier / paid / region and re-rank with the
    service's ranking) and logged slates; JSON + HTML report; exit 1 when a judged gap fails its threshold."""
    from pydantic import ValidationError

    from benefits.fairness_run import Bad, Options, run
    from infra.logs import configure_logging
    from infra.settings import Settings
    from training.fairness.sources import check_pages

    update: dict[str, Any] = {}
    if redis_url is not None:
        update["redis_url"] = redis_url
    if prefix is not None:
        update["redis_prefix"] = prefix
    try:
        settings = Settings(**update)  # the environment's settings, these two flags on top (validated)
    except ValidationError as exc:
        names = {"redis_url": "--redis-url", "redis_prefix": "--prefix"}
        where = ", ".join(
            names.get(str(e["loc"][0]), str(e["loc"][0])) + f": {e['msg']}" for e in exc.errors()
        )
        typer.echo(f"error: {where}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    sources = sum([data is not None, simulate, redis_url is not None])
    try:
        if sources > 1:
            raise Bad("give one member source: --data, --simulate or --redis-url")
        opts = Options(
            data=data, simulate=simulate, sim_members=sim_members, sim_days=sim_days, seed=seed,
            model=model, guard=guard, sample=sample, pages=check_pages([p.strip() for p in pages.split(",")
                                                                         if p.strip()]),
            k=k, attributes=[a.strip() for a in attributes.split(",") if a.strip()], log=log_path,
            members=members, catalog=catalog, config=config, out=out,
            overrides={"min_value_ratio": min_value_ratio, "min_depth_ratio": min_depth_ratio,
                       "max_worse_version_net": max_worse_version_net,
                       "max_exposure_diff": max_exposure_diff},
        )  # fmt: skip
        if data is None and not simulate and redis_url is None and settings.redis_url is not None:
            typer.echo(f"auditing the stack at BENEFITS_REDIS_URL (prefix {settings.redis_prefix})", err=True)
        result = run(settings, opts)
    except (Bad, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for s in result["summary"]:
        verdict = {True: "pass", False: "FAIL", None: "not judged"}[s["pass"]]
        gap = s["offered_value_gap"]
        gap_s = f"offered value {s['group']} vs {s['versus']}: {gap:+.2f}" if gap is not None else ""
        failed = f"  failed: {', '.join(s['failed'])}" if s["failed"] else ""
        typer.echo(f"{verdict:10} {s['audit']:14} {s['attribute']:10} {gap_s}{failed}")
    typer.echo(f"wrote {out / 'fairness.json'} and {out / 'fairness.html'}")
    raise typer.Exit(0 if result["pass"] is not False else 1)

"""The composition behind ``benefits fairness``: wires the service's ranking, a model and a member
source into the audit of :mod:`training.fairness` (which may not import the service), and writes the
report.

Member sources (one for the counterfactual audit): ``--data DIR`` (a ``benefits simulate`` directory),
``--simulate`` (a fresh small simulation), ``--redis-url``/``--prefix`` (a running stack's member states
and catalogue). Logged slates: ``--log FILE`` (the API's request log), else a simulation's impressions
whenever ``--data``/``--simulate`` is used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from features.projection import Context
from features.spec import FeatureSpec, load_spec
from features.state import MemberState
from features.taxonomy import CatalogError, Taxonomy, load_catalog_file, load_taxonomy, spec_for_taxonomy
from infra.settings import Settings
from service.catalog import CatalogSnapshot, build_snapshot
from service.model import LoadedModel, ModelRefused, load_model
from service.policy import policy_from
from service.ranking import Mode, Policy, rank
from training.fairness.counterfactual import RankedSlate, Ranker, Sample
from training.fairness.groups import AuditConfig

log = logging.getLogger(__name__)


class Bad(Exception):
    """Bad input: printed as ``error: ...``, exit 2."""


def service_ranker(
    snap: CatalogSnapshot, model: LoadedModel | None, policy: Policy, now: float, k: int
) -> Ranker:
    """The service's ranking of one member in one context, greedy (no exploration: the audit compares
    what the policy prefers), in the mode the API would pick (consent off: non-personalised)."""

    def ranker(state: MemberState, context: Context) -> RankedSlate:
        mode = Mode.PERSONALISED if state.personalization_consent else Mode.NON_PERSONALISED
        out = rank(snap, state, context, now, k, model=model, mode=mode, policy=policy)
        return RankedSlate(tuple(it.offer_id for it in out.items), out.guard_blocked)

    return ranker


def spec_for(settings: Settings, taxonomy: Taxonomy) -> FeatureSpec:
    """The feature specification the API would run with this taxonomy (as ``service.app`` builds it)."""
    return spec_for_taxonomy(load_spec(settings.feature_spec_path), taxonomy).with_lifecycle(
        settings.lifecycle
    )


def resolve_model(settings: Settings, model: str | None, spec: FeatureSpec, workdir: Path) -> LoadedModel:
    """``--model``: a registry version, an ONNX file, ``biased`` (the deliberately biased test model),
    or (None) the registry's promoted version."""
    from infra.registry import Registry

    registry = Registry(Path(settings.registry_dir))
    try:
        if model == "biased":
            from harness.biased import biased_model

            return biased_model(workdir)
        if model is None:
            version = registry.promoted()
            if version is None:
                raise Bad(f"no promoted model in {settings.registry_dir}: pass --model VERSION|PATH|biased")
            return load_model(registry.model_path(version), version, spec=spec)
        if model in registry.versions():
            return load_model(registry.model_path(model), model, spec=spec)
        path = Path(model)
        if path.exists():
            return load_model(path, path.stem, spec=spec)
    except ModelRefused as exc:
        raise Bad(f"--model {model or 'promoted'}: refused ({exc})") from None
    raise Bad(f"--model {model}: neither a version in {settings.registry_dir} nor a file")


async def _redis_catalog(settings: Settings, spec: FeatureSpec, taxonomy: Taxonomy) -> CatalogSnapshot:
    """The live catalogue with its stock and budget use, as an API replica installs it."""
    from infra.money_store import MoneyStore
    from infra.redis_client import open_client
    from infra.redis_layout import MemberStore
    from service.catalog import CatalogHolder, CatalogStore

    assert settings.redis_url is not None
    client = await open_client(settings.redis_url, cluster=settings.redis_cluster, timeout_ms=5000)
    try:
        money = MoneyStore(client, settings.redis_prefix)
        holder = CatalogHolder(
            CatalogStore(client, settings.layout), MemberStore(client, settings.layout), spec, taxonomy,
            money=money,
        )  # fmt: skip
        await holder.refresh()
        await holder.refresh_usage()
    finally:
        await client.aclose()
    if holder.current is None or len(holder.current) == 0:
        raise Bad(f"no catalogue under prefix {settings.redis_prefix!r} at {settings.redis_url}")
    return holder.current


async def _redis_sample(settings: Settings, n: int, pages: list[str], categories: list[str],
                        members: Any, seed: int) -> Sample:  # fmt: skip
    from infra.redis_client import open_client
    from infra.redis_layout import MemberStore
    from training.fairness.sources import from_redis

    assert settings.redis_url is not None
    client = await open_client(settings.redis_url, cluster=settings.redis_cluster, timeout_ms=5000)
    try:
        store = MemberStore(client, settings.layout)
        return await from_redis(store, n, pages, categories, time.time(), members, seed)
    except ValueError as exc:
        raise Bad(str(exc)) from None
    finally:
        await client.aclose()


@dataclasses.dataclass
class Options:
    data: Path | None
    simulate: bool
    sim_members: int
    sim_days: float
    seed: int
    model: str | None
    guard: bool | None
    sample: int
    pages: list[str]
    k: int
    attributes: list[str]
    log: Path | None
    members: Path | None
    catalog: Path | None
    overrides: dict[str, Any]
    config: Path | None
    out: Path


def run(settings: Settings, o: Options) -> dict[str, Any]:
    """The report (also written to ``o.out``/fairness.json and .html)."""
    from training.fairness.groups import load_config

    try:
        config = load_config(o.config, o.overrides)
    except ValueError as exc:
        raise Bad(str(exc)) from None
    o.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        return _run(settings, o, config, Path(tmp))


def _run(settings: Settings, o: Options, config: AuditConfig, workdir: Path) -> dict[str, Any]:
    from training import fairness
    from training.fairness import counterfactual, logged, report
    from training.fairness.slates import catalogue_facts
    from training.fairness.sources import read_members_table

    if o.log is not None and not o.log.exists():
        raise Bad(f"--log {o.log} does not exist")
    members = None
    if o.members is not None:
        try:
            members = read_members_table(o.members)
        except ValueError as exc:
            raise Bad(str(exc)) from None
    data = o.data
    if o.simulate:
        from training.simulate import simulate_to_dir

        data = workdir / "sim"
        simulate_to_dir(data, n_members=o.sim_members, days=o.sim_days, seed=o.seed, progress=False)
        if o.model is None and not _has_promoted(settings):
            settings = _train_on(settings, data, workdir)
    snap, sample, spec = _source(settings, o, data, members)
    offers = list(snap.offers)
    facts = catalogue_facts(offers)
    guard = settings.fairness_guard_enabled if o.guard is None else o.guard

    cf, version = None, None
    if sample is not None:
        model = resolve_model(settings, o.model, spec, workdir)
        version = model.version
        policy = dataclasses.replace(policy_from(settings), fairness_guard=guard)
        ranker = service_ranker(snap, model, policy, sample.now, o.k)
        try:
            cf = counterfactual.run(sample, o.attributes, offers, ranker, facts, config)
        except ValueError as exc:
            raise Bad(str(exc)) from None
    logged_part = None
    logged_attrs = [a for a in (*o.attributes, "segment") if not a.startswith("declared:")]
    if o.log is not None:
        joined = None
        if members is not None:
            joined = logged.join_table(members, settings.member_hash_salt.get_secret_value().encode())
        elif sample is not None and sample.source.get("kind") == "redis":
            joined = _join_states(settings, sample)
        live = sample is not None and sample.source.get("kind") == "redis"
        rows = logged.from_request_log(o.log, facts, joined, snap.version if live else None)
        logged_part = logged.run(rows, logged_attrs, config)
    elif data is not None and (data / "impressions.parquet").exists():
        logged_part = logged.run(logged.from_impressions(data, facts), logged_attrs, config)

    out = fairness.assemble({"version": version}, guard, o.k, config, cf, logged_part)
    report.write_json(out, o.out / "fairness.json")
    report.write_html(out, o.out / "fairness.html")
    return out


def _source(
    settings: Settings, o: Options, data: Path | None, members: Any
) -> tuple[CatalogSnapshot, Sample | None, FeatureSpec]:
    """The catalogue snapshot, the members to audit counterfactually (None: logged slates only) and the
    feature specification, from a simulation directory, a live stack's Redis, or (--log alone) the seed."""
    from training.fairness.sources import from_data_dir

    if data is not None:
        if not (data / "catalog.json").exists():
            raise Bad(f"--data {data}: no catalog.json (expected a `benefits simulate` directory)")
        try:
            taxonomy, offers = load_catalog_file(data / "catalog.json")
        except CatalogError as exc:
            raise Bad(str(exc)) from None
        spec = spec_for(settings, taxonomy)
        categories = sorted({x.category for x in offers if x.category})
        try:
            sample = from_data_dir(data, o.sample, o.pages, categories, o.seed)
        except ValueError as exc:
            raise Bad(str(exc)) from None
        return build_snapshot(1, offers, sample.now, spec=spec), sample, spec
    taxonomy = load_taxonomy(settings.taxonomy_path or settings.catalog_seed_path)
    spec = spec_for(settings, taxonomy)
    if settings.redis_url is not None:
        if o.catalog is not None:
            log.warning("--catalog %s ignored: the live catalogue in Redis is used", o.catalog)
        snap = asyncio.run(_redis_catalog(settings, spec, taxonomy))
        categories = sorted({x.category for x in snap.offers if x.category})
        sample = asyncio.run(_redis_sample(settings, o.sample, o.pages, categories, members, o.seed))
        return snap, sample, spec
    if o.log is not None:
        from service.catalog import load_seed

        now = time.time()
        try:
            offers = load_seed(o.catalog or settings.catalog_seed_path, now, taxonomy)
        except (CatalogError, OSError, ValueError) as exc:
            raise Bad(f"catalogue: {exc}") from None
        return build_snapshot(1, offers, now, spec=spec), None, spec
    raise Bad("nothing to audit: give --data DIR, --simulate, --redis-url URL or --log FILE")


def _join_states(settings: Settings, sample: Sample) -> dict[str, dict[str, str]]:
    """Member hash -> region of every member the live stack's scan read (log lines carry no region)."""
    from training.fairness.logged import member_hash

    salt = settings.member_hash_salt.get_secret_value().encode()
    return {member_hash(salt, m): {"region": region} for m, region in sample.regions.items()}


def _has_promoted(settings: Settings) -> bool:
    from infra.registry import Registry

    return Registry(Path(settings.registry_dir)).promoted() is not None


def _train_on(settings: Settings, data: Path, workdir: Path) -> Settings:
    """No promoted model: train one on the simulation (the `benefits train` pipeline) in the work dir."""
    from training import pipeline

    registry = workdir / "registry"
    log.warning(
        "no promoted model in %s: training one on the simulation into %s", settings.registry_dir, registry
    )
    spec = load_spec(settings.feature_spec_path).with_lifecycle(settings.lifecycle)
    pipeline.run(registry, data, promote=True, progress=False, spec=spec)
    return settings.model_copy(update={"registry_dir": registry})

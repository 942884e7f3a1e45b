"""The recommend API: ``create_app(settings)`` builds it; ``service.server.serve`` runs it under uvicorn.

The lifespan owns every shared resource (Redis client, catalog, model, event publisher, pollers) and
hands them to routes as typed dependencies (``service/deps.py``). Errors are mapped to HTTP here and
only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.spec import load_spec
from features.taxonomy import Taxonomy, load_taxonomy, spec_for_taxonomy
from infra.epoch_store import StoreEpoch
from infra.experiment_store import ExperimentStore
from infra.money_store import MoneyStore
from infra.redis_client import AnyRedis, connect
from infra.redis_layout import MemberStore
from infra.registry import Registry
from infra.settings import Settings
from service import admin, api, console, experiment_api, storefront_api
from service import openapi as openapi_doc
from service.auth import KeyRing
from service.body import invalid_body
from service.catalog import CatalogHolder, CatalogStore, build_snapshot, load_seed
from service.claims import ClaimService
from service.deps import Resources
from service.epoch import EpochWatch
from service.erasure import Eraser
from service.errors import ServiceError, service_error_body, store_error_body
from service.experiment_runtime import ExperimentRuntime
from service.fastpath import RecommendFastPath
from service.feedback import FeedbackService
from service.member_tokens import MemberTokens
from service.metrics import Metrics
from service.middleware import EdgeLimits, InFlight
from service.model import ModelHolder
from service.policy import policy_from
from service.publisher import Publisher
from service.recommend import Recommender
from service.request_log import RefusalLog
from service.shadow import ShadowScorer

log = logging.getLogger(__name__)


def redis_client(settings: Settings) -> AnyRedis:
    if settings.redis_url is None:
        raise ValueError("redis_url is required (serve() starts an embedded Redis in dev when it is unset)")
    # The project's one client factory; its bounded retries sit inside the request's own deadline
    # (service.recommend wraps the state read in asyncio.timeout), so they cannot blow the budget.
    return connect(settings.redis_url, cluster=settings.redis_cluster, timeout_ms=settings.redis_timeout_ms)


def money_redis_client(settings: Settings) -> AnyRedis:
    """The client for claims: no automatic retry (service.claims retries the idempotent script itself,
    within claim_deadline_ms) and the claim timeout, not the request path's 50 ms."""
    if settings.redis_url is None:
        raise ValueError("redis_url is required")
    return connect(
        settings.redis_url,
        cluster=settings.redis_cluster,
        timeout_ms=settings.claim_redis_timeout_ms,
        retries=0,
    )


async def _every(seconds: float, what: str, fn: Callable[[], Awaitable[Any]]) -> None:
    """Run ``fn`` every ``seconds`` until cancelled; log failures and carry on (a poller must never die)."""
    task = asyncio.current_task()
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("%s: store unreachable (%s)", what, exc)
        except Exception:
            log.exception("%s failed", what)
        # A cancellation that arrived mid-call may come back as a library's own error (a Redis read cut
        # off turns into a connection error): without this check the poller would swallow it and loop
        # forever, and the lifespan's shutdown, which awaits it, would hang.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


async def _initial_catalog(res: Resources) -> None:
    """Seed an empty catalog, then load it. If Redis is down, serve the seed in process (version 0)."""
    settings = res.settings
    seed = load_seed(settings.catalog_seed_path, time.time(), res.catalog.taxonomy)
    try:
        if await res.catalog_store.seed_if_empty(seed):
            log.info("catalog was empty: seeded %d offers", len(seed))
        await res.catalog.refresh()
        await res.catalog.refresh_usage()
    except (RedisError, OSError) as exc:
        log.warning("catalog store unreachable at start (%s): serving the seed catalog until it is back", exc)
        res.catalog.current = build_snapshot(
            0, seed, time.time(), spec=res.catalog.spec, lifecycle=res.catalog.lifecycle
        )


async def _initial_experiment(experiments: ExperimentRuntime, settings: Settings) -> None:
    """Store the file's experiment when none is stored, then follow the store (Redis down: no experiment
    until the poller reaches it; members get the promoted model meanwhile)."""
    try:
        if settings.experiment_path is not None:
            await experiments.seed_from_file(settings.experiment_path)
        await experiments.refresh()
    except (RedisError, OSError) as exc:
        log.warning("experiment store unreachable at start (%s): no experiment until it is back", exc)


def _update_gauges(res: Resources, counted_refusals: set[tuple[str, int]]) -> None:
    res.metrics.set_model(res.models.version)
    model = res.models.current
    res.metrics.model_compiled.set(1 if model is not None and model.compiled is not None else 0)
    if model is not None and model.fallback_reason is not None:
        key = ("scorer:" + model.version, 0)  # count a model's fallback once, not once per poll
        if key not in counted_refusals:
            counted_refusals.add(key)
            res.metrics.scorer_fallback.labels(reason=model.fallback_reason).inc()
    for key, exc in res.models.refused.items():
        if key not in counted_refusals:
            counted_refusals.add(key)
            res.metrics.model_refused.labels(reason=exc.reason).inc()
    snap = res.catalog.current
    if snap is not None:
        res.metrics.catalog_version.set(snap.version)
        res.metrics.catalog_offers.set(len(snap))


def _tune_gc() -> None:
    """Keep the cyclic GC off the request path's tail.

    Everything loaded at start (modules, ONNX session, catalog arrays) is moved to a permanent
    generation that collections never scan again (``gc.freeze``), and young collections run less often:
    a request allocates a few thousand short-lived objects that reference counting frees anyway, and a
    full collection over a large heap is a multi-millisecond pause for every request in flight.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def check_sensitive_categories(settings: Settings, taxonomy: Taxonomy) -> None:
    """Refuse to start when a sensitive category the operator set is not one of the taxonomy's (a typo
    would silently quote health browsing back to members). The default list names the demo shop's
    categories; against another taxonomy, those it lacks simply never match."""
    if "sensitive_categories" not in settings.model_fields_set:
        return
    unknown = sorted(set(settings.sensitive_categories) - set(taxonomy.categories))
    if unknown:
        raise ValueError(
            f"BENEFITS_SENSITIVE_CATEGORIES: unknown categories {unknown}; known: {taxonomy.categories}"
        )


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics(settings.metrics_multiprocess_dir)
    keys = KeyRing(settings.storefront_api_keys, settings.admin_api_keys, settings.support_api_keys)
    in_flight = InFlight()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client(settings)
        money_client = money_redis_client(settings)
        store = MemberStore(client, settings.layout)
        catalog_store = CatalogStore(client, settings.layout)
        taxonomy = load_taxonomy(settings.taxonomy_path or settings.catalog_seed_path)
        # The operator's subtypes (and categories, tags) are the specification's vocabularies: a model
        # trained on another taxonomy has another hash and is refused. So does the programme configuration
        # (stage thresholds, tier rules) when the spec has lifecycle features; eligibility in ranking
        # and claims, reasons and features all read settings.lifecycle.
        spec = spec_for_taxonomy(load_spec(settings.feature_spec_path), taxonomy).with_lifecycle(
            settings.lifecycle
        )
        check_sensitive_categories(settings, taxonomy)
        log.info(
            "feature specification %s (%d features), %d categories",
            spec.hash,
            len(spec),
            len(taxonomy.categories),
        )
        money = MoneyStore(
            money_client,
            settings.redis_prefix,
            settings.idempotency_ttl_seconds,
            settings.money_retention_seconds,
        )
        catalog = CatalogHolder(
            catalog_store, store, spec, taxonomy, money=money, lifecycle=settings.lifecycle
        )
        registry = Registry(settings.registry_dir)
        models = ModelHolder(registry, settings.scorer_runtime, settings.scorer_cache_dir, spec=spec)
        # Feedback waiting on a slow or dead broker may hold at most a quarter of the in-flight slots,
        # so a broker outage cannot get recommend requests shed (service.publisher).
        publisher = Publisher(
            settings.kafka_bootstrap, settings.events_topic, max_pending=max(1, settings.max_in_flight // 4)
        )
        policy = policy_from(settings)
        res = Resources(
            settings=settings,
            redis=client,
            catalog=catalog,
            catalog_store=catalog_store,
            models=models,
            registry=registry,
            recommender=Recommender(
                store,
                catalog,
                models,
                metrics,
                policy,
                settings.deadline_ms,
                settings.member_hash_salt.get_secret_value().encode(),
                default_limit=settings.default_limit,
                default_locale=settings.default_locale,
            ),
            feedback=FeedbackService(
                store,
                catalog,
                publisher,
                metrics,
                ClaimService(
                    money,
                    store,
                    catalog,
                    publisher.send,
                    metrics,
                    deadline_ms=settings.claim_deadline_ms,
                ),
            ),
            metrics=metrics,
            keys=keys,
            in_flight=in_flight,
            tokens=MemberTokens(settings.member_token_secret, settings.member_tokens_required),
        )
        app.state.resources = res
        experiments = ExperimentRuntime(
            ExperimentStore(client, settings.layout),
            models,
            metrics,
            settings.member_hash_salt.get_secret_value().encode(),
        )
        res.recommender.experiments = experiments
        res.recommender.log_sample_rate = settings.request_log_sample_rate
        res.feedback.experiments = experiments
        res.feedback.eraser = Eraser(
            store,
            money,
            publisher,
            archive_dir=settings.archive_dir,
            retention_seconds=settings.events_retention_seconds,
            registry_dir=settings.registry_dir,
        )
        shadow = None
        if settings.shadow_log_path is not None:
            shadow = ShadowScorer(settings.shadow_log_path, settings.shadow_queue_max, policy, metrics)
            res.recommender.shadow = shadow
        metrics.business.bind(lambda: catalog.current, policy.objective)
        counted: set[tuple[str, int]] = set()
        await asyncio.to_thread(models.refresh)
        if models.version is None:
            log.warning("no promoted model in %s: answering non-personalised rankings", settings.registry_dir)
        await _initial_catalog(res)
        await _initial_experiment(experiments, settings)
        _update_gauges(res, counted)
        publisher.start()

        async def poll_models() -> None:
            await asyncio.to_thread(models.refresh)
            _update_gauges(res, counted)

        async def poll_catalog() -> None:
            await catalog.refresh()
            await catalog.refresh_usage()
            _update_gauges(res, counted)

        async def poll_experiment() -> None:
            await experiments.refresh()
            await experiments.flush()

        epoch = EpochWatch(StoreEpoch(client, settings.layout), res.recommender, metrics)
        res.epoch = epoch
        try:
            await epoch.start()
        except (RedisError, OSError) as exc:
            log.warning("store epoch unreadable at start (%s): the poller takes it once Redis is back", exc)
        tasks = [
            asyncio.create_task(_every(1.0, "store epoch check", epoch.check)),
            *([asyncio.create_task(shadow.run())] if shadow is not None else []),
            asyncio.create_task(_every(settings.experiment_poll_seconds, "experiment poll", poll_experiment)),
            asyncio.create_task(_every(settings.model_poll_seconds, "model poll", poll_models)),
            asyncio.create_task(_every(settings.catalog_poll_seconds, "catalog poll", poll_catalog)),
        ]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await publisher.stop()
            with contextlib.suppress(RedisError, OSError):
                await experiments.flush()  # the last second of per-arm counts
            await client.aclose()
            await money_client.aclose()

    app = FastAPI(
        title="Benefit recommendations",
        version="1",
        lifespan=lifespan,
        description="Ranks coupons, membership benefits and consult offers per member and page.",
    )
    # service.admin first: its fixed paths (/v1/admin/offers/export, /import) must win over
    # /v1/admin/offers/{offer_id}.
    app.include_router(admin.router)
    app.include_router(api.recommend_router)
    app.include_router(api.storefront)
    app.include_router(storefront_api.router)
    app.include_router(api.admin)
    app.include_router(api.ops)
    app.include_router(experiment_api.router)
    app.include_router(console.router)
    app.mount("/console/static", console.static_files(), name="console-static")

    def openapi() -> dict[str, Any]:
        # Built once (the taxonomy of this process); the event-time bounds follow the clock per copy.
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            spec.setdefault("components", {}).setdefault("schemas", {}).update(api.openapi_components())
            res: Resources | None = getattr(app.state, "resources", None)
            taxonomy = (
                res.catalog.taxonomy
                if res is not None
                else load_taxonomy(settings.taxonomy_path or settings.catalog_seed_path)
            )
            app.openapi_schema = openapi_doc.document(spec, taxonomy)
        return openapi_doc.with_clock(app.openapi_schema, settings)

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return Response(service_error_body(exc), status_code=exc.status, media_type="application/json")

    @app.exception_handler(RedisError)
    @app.exception_handler(TimeoutError)
    async def _store_error(request: Request, exc: Exception) -> Response:
        # The one mapping of store failures for every route: a dependency is down, not a bug (503, no
        # traceback). Routes that degrade instead (recommend) catch their own errors before this.
        log.warning("store error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return Response(
            store_error_body(),
            status_code=503,
            media_type="application/json",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Framework-raised errors in the service's one error shape. A body that is not even text
        # (undecodable bytes) is a 400 in FastAPI; it is an invalid request like any other: 422.
        status = 422 if exc.status_code == 400 else exc.status_code
        headers = getattr(exc, "headers", None)
        if status == 405:
            # Starlette names only the first matching route's methods: list every route's on the path,
            # and answer OPTIONS with them (service/openapi.py).
            allow = ", ".join(openapi_doc.allowed_methods(app.routes, dict(request.scope)))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            headers = {**(headers or {}), "Allow": allow}
        code = {404: "not_found", 405: "method_not_allowed", 422: "invalid_request"}.get(status, "http_error")
        return Response(
            orjson.dumps({"error": code, "message": str(exc.detail)}),
            status_code=status,
            media_type="application/json",
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return Response(invalid_body(exc), status_code=422, media_type="application/json")

    def shed_recommend() -> bytes | None:
        res: Resources | None = getattr(app.state, "resources", None)
        return res.recommender.shed_answer() if res is not None else None

    def resources() -> Resources | None:
        res: Resources | None = getattr(app.state, "resources", None)
        return res

    # Innermost: literal paths answer only their own methods (service/openapi.py).
    app.add_middleware(openapi_doc.MethodGuard, routes=lambda: app.routes)  # type: ignore[arg-type]
    # Inside the edge limits (added after, so outermost): the hot route skips the router (service.fastpath).
    app.add_middleware(RecommendFastPath, resources=resources)  # type: ignore[arg-type]
    app.add_middleware(
        EdgeLimits,  # type: ignore[arg-type]
        max_in_flight=settings.max_in_flight,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        shed_recommend=shed_recommend,
        path_limits={admin.IMPORT_PATH: settings.max_import_bytes},
        keys=keys,
        body_read_timeout_ms=settings.body_read_timeout_ms,
        in_flight=in_flight,
    )
    # Outermost: every refused answer (>= 400), from any layer, gets a log line (service.request_log).
    app.add_middleware(RefusalLog)  # type: ignore[arg-type]
    return app

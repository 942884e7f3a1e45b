"""Routes: validate, call domain code, return. Hot routes return orjson bytes (about 2x the throughput of
returning dicts through FastAPI's encoder); the response models document them in OpenAPI."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from redis.exceptions import RedisError

from features.events import InvalidEvent, check_event_time
from features.offers import Offer
from infra.registry import RegistryError
from infra.settings import Settings
from service.auth import Scope, check_explain
from service.body import decode_recommend
from service.deps import (
    FeedbackDep,
    MemberTokenDep,
    Resources,
    ResourcesDep,
    check_member_token,
    require_admin,
    require_recommend_scope,
    require_storefront,
)
from service.erasure import ErasureReport
from service.errors import Conflict, Invalid, ModelRefused, NotFound
from service.i18n import negotiate
from service.metrics import CONTENT_TYPE
from service.promotion import check_version
from service.recommend import RecommendQuery
from service.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    MemberId,
    OfferIn,
    RecommendRequest,
)
from service.schemas import RecommendResponse as RecommendResponseModel

log = logging.getLogger(__name__)

_errors: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (401, 403, 404, 409, 413, 422, 503)
}


MAX_ACCEPT_LANGUAGE = 512


def openapi_components() -> dict[str, Any]:
    """Schemas the generated spec would miss: the recommend body, decoded outside FastAPI."""
    schema = RecommendRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"RecommendRequest": schema, **defs}


_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


storefront = APIRouter(dependencies=[Depends(require_storefront)], responses=_errors, tags=["storefront"])
admin = APIRouter(dependencies=[Depends(require_admin)], responses=_errors, tags=["admin"])
ops = APIRouter(tags=["operations"])
#: Recommend takes storefront keys, and support/admin keys for ``explain: true`` (service.auth).
recommend_router = APIRouter(responses=_errors, tags=["storefront"])


#: (field, value) pairs already logged: each unknown value is logged once per process (bounded).
_LOGGED_UNKNOWN: set[tuple[str, str]] = set()
_LOGGED_UNKNOWN_MAX = 1000


def _report_unknown_context(res: Resources, unknown: list[tuple[str, str]]) -> None:
    for field, value in unknown:
        res.metrics.context_unknown.labels(field=field).inc()
        if (field, value) not in _LOGGED_UNKNOWN and len(_LOGGED_UNKNOWN) < _LOGGED_UNKNOWN_MAX:
            _LOGGED_UNKNOWN.add((field, value))
            log.warning("context %s=%r is not in the declared vocabulary: ranked as 'other'", field, value)


#: The body is decoded by msgspec (service.body), so FastAPI does not see it: document it by hand.
_RECOMMEND_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RecommendRequest"}}},
    }
}


@recommend_router.post(
    "/v1/recommend",
    response_class=Response,
    responses={200: {"model": RecommendResponseModel}},
    openapi_extra=_RECOMMEND_BODY,
)
async def recommend(
    request: Request,
    res: ResourcesDep,
    scope: Annotated[Scope, Depends(require_recommend_scope)],
    member_token: MemberTokenDep = None,
    accept_language: Annotated[str | None, Header(max_length=MAX_ACCEPT_LANGUAGE)] = None,
) -> Response:
    """Ranked offers (coupons, benefits, consults) for one member on one page, with reasons.

    The body is a :class:`~service.schemas.RecommendRequest`. Sentences are in the body's ``locale``,
    else the best ``Accept-Language`` match, else the service default. (Served by
    :mod:`service.fastpath` once the app is started; this route documents it and is the same code.)

    ``explain: true`` needs a support or admin key (403 with a storefront key); with member tokens on,
    a storefront call carries ``X-Member-Token`` for the body's member (403 otherwise)."""
    body = await recommend_answer(res, await request.body(), accept_language, scope, member_token)
    return Response(body, media_type="application/json")


async def recommend_answer(
    res: Resources,
    raw: bytes,
    accept_language: str | None,
    scope: Scope = "storefront",
    member_token: str | None = None,
) -> bytes:
    """The recommend answer as JSON bytes for a raw request body (raises RequestValidationError, and
    Forbidden when the key's scope or the member token does not allow this request)."""
    if accept_language is not None and len(accept_language) > MAX_ACCEPT_LANGUAGE:
        raise RequestValidationError(
            [{"loc": ("header", "accept-language"), "msg": f"longer than {MAX_ACCEPT_LANGUAGE} characters"}]
        )
    if scope == "storefront":
        body = decode_recommend(raw)
    else:
        try:
            body = decode_recommend(raw)
        except RequestValidationError:
            # Not a valid explain request, so not one this key may make: the scope answer comes first.
            check_explain(scope, False)
            raise
    check_explain(scope, body.explain)
    if scope == "storefront":
        check_member_token(res, member_token, body.member_id)
    c = body.context
    context, unknown = res.catalog.context_vocabulary.normalise(c.page_type, c.category, c.device, c.channel)
    if unknown:
        _report_unknown_context(res, unknown)
    query = RecommendQuery(
        member_id=body.member_id,
        context=context,
        limit=body.limit or res.settings.default_limit,
        explain=body.explain,
        locale=negotiate(body.locale, accept_language, res.settings.default_locale),
    )
    return orjson.dumps(await res.recommender.recommend(query))


def check_feedback_time(event_ts: float | None, settings: Settings) -> None:
    """A 422 naming ``event_ts`` when it is too far ahead of the server's clock or past retention."""
    if event_ts is None:
        return
    try:
        check_event_time(
            event_ts, time.time(), settings.event_max_future_skew_seconds, settings.member_ttl_seconds
        )
    except InvalidEvent as exc:
        raise RequestValidationError(
            [{"loc": ("body", "event_ts"), "msg": exc.detail, "type": exc.reason}]
        ) from None


@storefront.post(
    "/v1/feedback", status_code=202, response_class=Response, responses={202: {"model": FeedbackResponse}}
)
async def feedback(
    body: FeedbackRequest,
    fb: FeedbackDep,
    res: ResourcesDep,
    member_token: MemberTokenDep = None,
    # Checked below rather than with Header(pattern=...): with the pattern in the header's schema, a
    # later in-process app hung at shutdown after /openapi.json was served (tests/service/test_api.py).
    idempotency_key: Annotated[
        str | None,
        Header(description="1-64 of A-Z a-z 0-9 _ . : @ -; a retry with it returns the first outcome"),
    ] = None,
    accept_language: Annotated[str | None, Header(max_length=MAX_ACCEPT_LANGUAGE)] = None,
) -> Response:
    """Record what the member saw and did; published to the member-events topic before answering 202.

    ``event_ts`` may be at most ``event_max_future_skew_seconds`` ahead of the server's clock and no
    older than the member state's retention (``member_ttl_seconds``). With member tokens on, the
    request carries ``X-Member-Token`` for the body's member (403 otherwise).

    A claim is checked and reserved atomically (eligibility, caps, stock, budget): a refusal is a 409
    naming the rule (``reason``) with its sentence, in the body's ``locale``, else the best
    ``Accept-Language`` match, else the service default (as recommend). Send an ``Idempotency-Key`` header
    (or ``event_id``):
    a retry with the same key returns the first outcome and changes nothing. A 503 whose message says
    "outcome unknown" must be retried with the same key."""
    check_member_token(res, member_token, body.member_id)
    check_feedback_time(body.event_ts, res.settings)
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise Invalid("Idempotency-Key must be 1-64 characters of letters, digits, '_', '.', ':', '@' or '-'")
    if idempotency_key is not None and body.event_id is not None:
        raise Invalid("give one idempotency key: the Idempotency-Key header or event_id, not both")
    c = body.context
    # The same normalisation as recommend: a claim's channel and page rules see the same values.
    context = (
        res.catalog.context_vocabulary.normalise(c.page_type, c.category, c.device, c.channel)[0]
        if c is not None
        else None
    )
    out = await fb.submit(
        body.type,
        body.member_id,
        body.offer_id,
        body.request_id,
        body.event_ts,
        body.position,
        body.propensity,
        body.arm,
        event_id=body.event_id,
        idempotency_key=idempotency_key,
        context=context,
        locale=negotiate(body.locale, accept_language, res.settings.default_locale),
    )
    return _json(out, 202)


@admin.delete("/v1/members/{member_id}", response_model=ErasureReport)
async def erase_member(member_id: MemberId, fb: FeedbackDep) -> ErasureReport:
    """Erase a member from Redis, the event archive and derived stores, publish a tombstone for the stream
    consumers, and report what was removed where and what remains (service.erasure)."""
    return await fb.erase_member(member_id)


# -- catalog ---------------------------------------------------------------------------------------------


async def _write_offer(res: ResourcesDep, offer: Offer) -> int:
    problems = res.catalog.taxonomy.problems(offer)
    if problems:
        raise Invalid(f"offer {offer.offer_id}: " + "; ".join(problems))
    # A store error here is a 503 by the app's one store-error handler (service.app).
    version = await res.catalog_store.put(offer)
    await res.catalog.refresh()  # this replica sees it at once; the others within a poll interval
    return version


@admin.get("/v1/admin/offers")
async def list_offers(res: ResourcesDep) -> Response:
    version, offers = await res.catalog_store.read_all()
    offers.sort(key=lambda o: o.offer_id)
    return _json({"catalog_version": version, "offers": [o.model_dump(mode="json") for o in offers]})


@admin.post("/v1/admin/offers", status_code=201)
async def create_offer(offer: OfferIn, res: ResourcesDep) -> dict[str, object]:
    if await res.catalog_store.get(offer.offer_id) is not None:
        raise Conflict(
            f"offer {offer.offer_id!r} exists; use PUT /v1/admin/offers/{offer.offer_id} to replace it"
        )
    version = await _write_offer(res, offer)
    return {"catalog_version": version, "offer": offer.model_dump(mode="json")}


@admin.get("/v1/admin/offers/{offer_id}")
async def get_offer(offer_id: str, res: ResourcesDep) -> Offer:
    offer = await res.catalog_store.get(offer_id)
    if offer is None:
        raise NotFound(f"offer {offer_id!r} is not in the catalog")
    return offer


@admin.put("/v1/admin/offers/{offer_id}")
async def put_offer(offer_id: str, offer: OfferIn, res: ResourcesDep) -> dict[str, object]:
    """Create or replace an offer."""
    if offer.offer_id != offer_id:
        raise Invalid(f"offer_id in the body ({offer.offer_id!r}) differs from the path ({offer_id!r})")
    version = await _write_offer(res, offer)
    return {"catalog_version": version, "offer": offer.model_dump(mode="json")}


@admin.delete("/v1/admin/offers/{offer_id}")
async def retire_offer(offer_id: str, res: ResourcesDep) -> dict[str, object]:
    """Retire an offer: it stays in the catalog as inactive (``explain`` reports it), never shown again."""
    offer = await res.catalog_store.get(offer_id)
    if offer is None:
        raise NotFound(f"offer {offer_id!r} is not in the catalog")
    retired = offer.model_copy(update={"active": False})
    version = await _write_offer(res, retired)
    return {"catalog_version": version, "offer": retired.model_dump(mode="json")}


# -- models ----------------------------------------------------------------------------------------------


@admin.get("/v1/admin/models")
async def list_models(res: ResourcesDep) -> dict[str, object]:
    reg = res.registry
    versions = []
    for v in reg.versions():
        try:
            meta = reg.metadata(v)
        except (RegistryError, ValueError):
            meta = {}
        versions.append(
            {
                "version": v,
                "metrics": meta.get("metrics"),
                "feature_spec_hash": meta.get("feature_spec_hash", meta.get("feature_schema")),
            }
        )
    return {**res.models.status(), "versions": versions}


@admin.post("/v1/admin/models/{version}/promote")
async def promote_model(version: str, res: ResourcesDep) -> dict[str, object]:
    """Check the version against the running code, then promote it and swap it in on this replica."""
    reg = res.registry
    try:
        known = version in reg.versions()
    except RegistryError:
        known = False
    if not known:
        raise NotFound(f"model version {version!r} is not in the registry")
    try:
        model, checks = await asyncio.to_thread(
            check_version, reg, version, res.models.runtime, res.models.cache_dir, res.models.spec
        )
    except ModelRefused as exc:
        res.metrics.model_refused.labels(reason=exc.reason).inc()
        reg.record("refused", version, reason=f"{exc.reason}: {exc.detail}")
        raise Invalid(
            f"model {version} refused ({exc.reason}): {exc.detail}; still serving {res.models.version}"
        ) from None
    pointer = reg.promote(version, reason="admin API", checks=checks)
    res.models.install(model)
    res.metrics.set_model(model.version)
    return {"promoted": version, "previous": pointer.get("previous"), "serving": res.models.version}


# -- operations ------------------------------------------------------------------------------------------


@ops.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@ops.get("/readyz", responses={503: {"description": "Not ready: the body says which check failed"}})
async def readyz(res: ResourcesDep) -> Response:
    """Ready for traffic: Redis reachable, a model loaded, a catalog loaded."""
    try:
        async with asyncio.timeout(0.5):
            redis_ok = bool(await res.redis.ping())
    except (RedisError, OSError, TimeoutError):
        redis_ok = False
    snap = res.catalog.current
    checks: dict[str, object] = {
        "pid": os.getpid(),  # which API process answered (several share a port: benefits serve --workers)
        "redis": redis_ok,
        "model": res.models.version,
        "scorer": res.models.current.runtime if res.models.current is not None else None,
        "catalog_version": snap.version if snap is not None else None,
        "catalog_offers": len(snap) if snap is not None else 0,
        # Requests holding a slot (bodies read, being answered) against the limit that sheds load.
        "in_flight": res.in_flight.n if res.in_flight is not None else None,
        "max_in_flight": res.settings.max_in_flight,
        # Redis came back without its data (infra.epoch_store): every member is cold until
        # `benefits replay` rebuilds them. Reported, not made a readiness failure: every replica sees
        # the same Redis, and pulling them all out of the Service would turn cold answers into none.
        "state_lost": bool(res.epoch is not None and res.epoch.lost),
    }
    if res.models.pointer_refused is not None:
        # Still ready when it serves an earlier good version; the body says the pointer was refused.
        checks["model_pointer_refused"] = res.models.pointer_refused
    ready = redis_ok and res.models.version is not None and snap is not None and snap.version > 0
    return _json({"ready": ready, **checks}, 200 if ready else 503)


@ops.get("/metrics", response_class=PlainTextResponse)
async def metrics(res: ResourcesDep) -> Response:
    return Response(res.metrics.render(), media_type=CONTENT_TYPE)

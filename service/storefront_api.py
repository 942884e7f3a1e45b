"""Storefront routes beyond recommend and single feedback: an offer's public fields, and the
impressions (or clicks, dismissals) of a whole slate in one call.

Thin: validation here, the work in ``service.feedback`` (each item exactly as ``POST /v1/feedback``
would record it) and the in-process catalogue snapshot (no Redis read for an offer).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from service import api
from service.deps import FeedbackDep, MemberTokenDep, ResourcesDep, check_member_token, require_storefront
from service.errors import NotFound, ServiceError
from service.schemas import MemberId, OfferIdStr, Position, RecommendContext, RequestId

router = APIRouter(dependencies=[Depends(require_storefront)], responses=api._errors, tags=["storefront"])

#: Most items in one batch: a slate is at most 50 offers (the recommend ``limit``).
MAX_BATCH = 50


class PublicOffer(BaseModel):
    """What a storefront may know of an offer: no cost, budget, stock or targeting rules."""

    offer_id: str
    kind: Literal["coupon", "benefit", "consult"]
    subtype: str
    title: str
    category: str | None
    value: float
    threshold: float
    valid_until_ts: float | None
    display_text: str | None
    image_key: str | None
    active: bool


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/v1/offers/{offer_id}", response_class=Response, responses={200: {"model": PublicOffer}})
async def public_offer(offer_id: OfferIdStr, res: ResourcesDep) -> Response:
    """An offer's public fields (what a page renders), from this replica's catalogue snapshot."""
    snap = res.catalog.current
    i = snap.table.index.get(offer_id) if snap is not None else None
    if snap is None or i is None:
        raise NotFound(f"offer {offer_id!r} is not in the catalog")
    o = snap.offers[i]
    body = {
        "offer_id": o.offer_id,
        "kind": o.kind,
        "subtype": o.subtype,
        "title": o.title,
        "category": o.category,
        "value": o.value,
        **o.storefront_fields(),
        "active": o.active,
    }
    return _json(body)


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    offer_id: OfferIdStr
    position: Position = 0
    propensity: Annotated[float, Field(gt=0.0, le=1.0)] | None = None


class FeedbackBatch(BaseModel):
    """One member's impressions (or clicks, dismissals) of one recommend answer."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: Claims and redemptions change money state: they go one by one through ``POST /v1/feedback``.
    type: Literal["impression", "click", "dismiss"] = "impression"
    member_id: MemberId
    request_id: RequestId
    arm: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    event_ts: Annotated[float, Field(ge=946684800.0, le=4102444800.0)] | None = None
    items: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH)]
    #: The page the slate was shown on (the recommend request's ``context``): impressions keep it, so
    #: retraining from the event archive sees the context serving ranked with.
    context: RecommendContext | None = None


class BatchResult(BaseModel):
    offer_id: str
    status: Literal["accepted", "refused"]
    event_id: str | None = None
    event_type: str | None = None
    error: str | None = None
    message: str | None = None


class BatchResponse(BaseModel):
    accepted: int
    refused: int
    results: list[BatchResult]


@router.post(
    "/v1/feedback/batch",
    status_code=202,
    response_class=Response,
    responses={
        202: {"model": BatchResponse, "description": "Every item accepted"},
        207: {"model": BatchResponse, "description": "Some items refused: see each result"},
    },
)
async def feedback_batch(
    body: FeedbackBatch, fb: FeedbackDep, res: ResourcesDep, member_token: MemberTokenDep = None
) -> Response:
    """Record a whole slate's impressions in one call: each item becomes the same event a single
    ``POST /v1/feedback`` would publish. Items are independent: the answer lists one result per item
    in order (``accepted`` with its event id, or ``refused`` with the error), 202 when all were
    accepted, 207 when some were refused. With member tokens on, ``X-Member-Token`` must be for the
    body's member (403 otherwise)."""

    check_member_token(res, member_token, body.member_id)
    api.check_feedback_time(body.event_ts, res.settings)
    c = body.context
    context = (
        res.catalog.context_vocabulary.normalise(c.page_type, c.category, c.device, c.channel)[0]
        if c is not None
        else None
    )

    async def one(item: BatchItem) -> dict[str, object]:
        try:
            out = await fb.submit(
                body.type,
                body.member_id,
                item.offer_id,
                body.request_id,
                body.event_ts,
                item.position,
                item.propensity,
                body.arm,
                context=context,
            )
        except ServiceError as exc:
            return {"offer_id": item.offer_id, "status": "refused", "error": exc.code, "message": exc.message}
        return {"offer_id": item.offer_id, **out}

    results = await asyncio.gather(*(one(i) for i in body.items))
    accepted = sum(1 for r in results if r["status"] == "accepted")
    return _json(
        {"accepted": accepted, "refused": len(results) - accepted, "results": results},
        202 if accepted == len(results) else 207,
    )

"""Feedback from the storefront and member erasure: both become records on the member-events topic.

Feedback types map onto :mod:`features.events` (so the stream worker folds them like any event):

=============  =====================================================================
impression     ``Impression`` (with position and propensity, for off-policy training)
click          ``Click``
dismiss        ``Dismiss``
claim          ``CouponClaim`` / ``BenefitUse`` / ``ConsultBooked`` by the offer's kind;
               a limited offer first reserves one unit atomically (Lua in Redis)
redeem         ``CouponRedeem``
=============  =====================================================================

Erasure deletes every key of the member, then publishes a Kafka *tombstone*: a record keyed by the
member id with a null value and the header ``benefits-erasure: 1``. Consumers (the features worker, the
event-log archiver) must treat a null value as "forget this member" and must not fold it as an event.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

from redis.exceptions import RedisError

from features import events as ev
from infra.redis_layout import MemberStore
from service.catalog import CatalogHolder
from service.errors import Conflict, NotFound, Unavailable
from service.experiment_runtime import FEEDBACK_COUNTER, ExperimentRuntime
from service.metrics import Metrics
from service.publisher import Publisher

log = logging.getLogger(__name__)

FeedbackType = Literal["impression", "click", "claim", "redeem", "dismiss"]
FEEDBACK_TYPES: tuple[str, ...] = FeedbackType.__args__  # type: ignore[attr-defined]
ERASURE_HEADER = ("benefits-erasure", b"1")

_CLAIM_EVENT: dict[str, type[ev.CouponClaim] | type[ev.BenefitUse] | type[ev.ConsultBooked]] = {
    "coupon": ev.CouponClaim,
    "benefit": ev.BenefitUse,
    "consult": ev.ConsultBooked,
}


def to_event(
    kind: str,
    member_id: str,
    offer_id: str,
    offer_kind: str,
    request_id: str,
    event_ts: float,
    position: int = 0,
    propensity: float | None = None,
    arm: str | None = None,
) -> ev.Event:
    """The member event a feedback message stands for."""
    eid, mid, ts = uuid.uuid4().hex, member_id, event_ts
    if kind == "impression":
        return ev.Impression(
            event_id=eid, member_id=mid, event_ts=ts, request_id=request_id, offer_id=offer_id,
            position=position, propensity=propensity, arm=arm,
        )  # fmt: skip
    if kind == "click":
        return ev.Click(
            event_id=eid, member_id=mid, event_ts=ts, request_id=request_id, offer_id=offer_id, arm=arm
        )
    if kind == "dismiss":
        return ev.Dismiss(
            event_id=eid, member_id=mid, event_ts=ts, request_id=request_id, offer_id=offer_id, arm=arm
        )
    if kind == "claim":
        return _CLAIM_EVENT[offer_kind](event_id=eid, member_id=mid, event_ts=ts, offer_id=offer_id, arm=arm)
    if kind == "redeem":
        return ev.CouponRedeem(event_id=eid, member_id=mid, event_ts=ts, offer_id=offer_id, arm=arm)
    raise ValueError(f"unknown feedback type {kind!r}")


class FeedbackService:
    def __init__(
        self, store: MemberStore, catalog: CatalogHolder, publisher: Publisher, metrics: Metrics
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.publisher = publisher
        self.metrics = metrics
        #: The running experiment (set by the app's lifespan): feedback carries the member's arm.
        self.experiments: ExperimentRuntime | None = None

    async def submit(
        self,
        kind: str,
        member_id: str,
        offer_id: str,
        request_id: str,
        event_ts: float | None = None,
        position: int = 0,
        propensity: float | None = None,
        arm: str | None = None,
    ) -> dict[str, object]:
        snap = self.catalog.current
        i = snap.table.index.get(offer_id) if snap is not None else None
        if snap is None or i is None:
            self.metrics.feedback.labels(type=kind, outcome="unknown_offer").inc()
            raise NotFound(f"offer {offer_id!r} is not in the catalog")
        offer = snap.offers[i]
        xp = self.experiments
        if arm is None and xp is not None:
            # Assignment is a pure function of the member (sticky): the arm they were shown under.
            arm = xp.assign(member_id)
        event = to_event(
            kind, member_id, offer_id, offer.kind, request_id, event_ts or time.time(), position, propensity,
            arm,
        )  # fmt: skip
        reserved_units: int | None = None
        if kind == "claim" and offer.inventory is not None:
            try:
                reserved_units = await self.store.reserve(
                    offer_id, limit=offer.inventory, ttl_seconds=self.store.layout.stats_ttl_seconds
                )
            except (RedisError, OSError):
                self.metrics.feedback.labels(type=kind, outcome="unavailable").inc()
                self.metrics.business.claim(offer, "unavailable")
                raise Unavailable("inventory store unreachable; the claim was not recorded, retry") from None
            if reserved_units is None:
                self.metrics.feedback.labels(type=kind, outcome="sold_out").inc()
                self.metrics.business.claim(offer, "sold_out")
                raise Conflict(f"offer {offer_id!r} is sold out")
        try:
            await self.publisher.send(member_id, ev.encode(event))
        except Unavailable:
            if reserved_units is not None:
                # Give the unit back: the claim is not recorded anywhere, so it must not hold inventory.
                try:
                    await self.store.release(offer_id, 1)
                except (RedisError, OSError):
                    log.error("could not release a reserved unit of %s after a failed publish", offer_id)
            self.metrics.feedback.labels(type=kind, outcome="unavailable").inc()
            if kind == "claim":
                self.metrics.business.claim(offer, "unavailable")
            raise
        self.metrics.feedback.labels(type=kind, outcome="accepted").inc()
        if kind == "claim":
            self.metrics.business.claim(offer, "accepted")
        if arm is not None and xp is not None:
            xp.count(arm, FEEDBACK_COUNTER[kind])
            if kind == "claim":
                xp.count(arm, "cost", offer.cost)
        out: dict[str, object] = {
            "status": "accepted",
            "event_id": event.event_id,
            "event_type": ev.event_type(event),
        }
        if reserved_units is not None:
            out["inventory_left"] = int(offer.inventory or 0) - reserved_units
        return out

    async def erase_member(self, member_id: str) -> dict[str, object]:
        """Delete all the member's keys, then publish the tombstone. Idempotent: safe to retry."""
        try:
            deleted = await self.store.erase_member(member_id)
        except (RedisError, OSError):
            raise Unavailable("member store unreachable; nothing was erased, retry") from None
        try:
            await self.publisher.send(member_id, None, headers=[ERASURE_HEADER])
        except Unavailable as exc:
            raise Unavailable(
                f"member data erased from Redis ({deleted} keys) but the tombstone was not published: "
                f"{exc.message}"
            ) from None
        return {"status": "erased", "keys_deleted": deleted, "tombstone": True}

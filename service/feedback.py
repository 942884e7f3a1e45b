"""Feedback from the storefront and member erasure: both become records on the member-events topic.

Feedback types map onto :mod:`features.events` (so the stream worker folds them like any event):

=============  =====================================================================
impression     ``Impression`` (with position and propensity, for off-policy training)
click          ``Click``
dismiss        ``Dismiss``
claim          ``CouponClaim`` / ``BenefitUse`` / ``ConsultBooked`` by the offer's kind, after one
               atomic, idempotent check-and-reserve of eligibility, caps, stock and budget
               (:mod:`service.claims`)
redeem         ``CouponRedeem``
=============  =====================================================================

Idempotency: a message's ``event_id`` (given by the producer, or derived from the ``Idempotency-Key``
header) is stable across retries. A retried claim returns its first outcome (stored by the claim
script); a retried impression/click/dismiss/redeem publishes the same event id again, which the fold
skips (``features.state``: a member's latest 64 event ids), so it changes nothing.

Erasure (:mod:`service.erasure`) deletes every key of the member, then publishes a Kafka *tombstone*: a
record keyed by the member id with a null value and the header ``benefits-erasure: 1``. Consumers (the
features worker, the event-log archiver) must treat a null value as "forget this member" and must not
fold it as an event. It answers with a report of what was removed where.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

from features import events as ev
from features.projection import Context
from infra.redis_layout import MemberStore
from service.catalog import CatalogHolder
from service.claims import ClaimService, event_id_for
from service.erasure import Eraser, ErasureReport
from service.errors import ClaimRefused, NotFound, Unavailable
from service.experiment_runtime import FEEDBACK_COUNTER, ExperimentRuntime
from service.i18n import DEFAULT_LOCALE
from service.metrics import Metrics
from service.publisher import Publisher

log = logging.getLogger(__name__)

FeedbackType = Literal["impression", "click", "claim", "redeem", "dismiss"]
FEEDBACK_TYPES: tuple[str, ...] = FeedbackType.__args__  # type: ignore[attr-defined]

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
    event_id: str | None = None,
    context: Context | None = None,
) -> ev.Event:
    """The member event a feedback message stands for (an impression keeps its page ``context``)."""
    eid, mid, ts = event_id or uuid.uuid4().hex, member_id, event_ts
    if kind == "impression":
        c = context
        return ev.Impression(
            event_id=eid, member_id=mid, event_ts=ts, request_id=request_id, offer_id=offer_id,
            position=position, propensity=propensity, arm=arm,
            page_type=c.page_type if c else None, category=c.category if c else None,
            device=c.device if c else None, channel=c.channel if c else None,
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
        self,
        store: MemberStore,
        catalog: CatalogHolder,
        publisher: Publisher,
        metrics: Metrics,
        claims: ClaimService,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.publisher = publisher
        self.metrics = metrics
        self.claims = claims
        #: The running experiment (set by the app's lifespan): feedback carries the member's arm.
        self.experiments: ExperimentRuntime | None = None
        #: Erasure everywhere (set by the app's lifespan: it needs the money store and the settings).
        self.eraser: Eraser | None = None

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
        event_id: str | None = None,
        idempotency_key: str | None = None,
        context: Context | None = None,
        locale: str = DEFAULT_LOCALE,
    ) -> dict[str, object]:
        """Publish one feedback event; a claim goes through :class:`service.claims.ClaimService` (its
        refusal's sentence in ``locale``)."""
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
        eid = event_id_for(member_id, offer_id, kind, idempotency_key, event_id)
        if kind == "claim":
            try:
                out = await self.claims.claim(
                    member_id, offer_id, eid, event_ts, context, arm=arm, locale=locale
                )
            except ClaimRefused as exc:
                self.metrics.business.claim(offer, exc.reason)
                raise
            except Unavailable:
                self.metrics.business.claim(offer, "unavailable")
                raise
            self.metrics.business.claim(offer, "accepted")
            if arm is not None and xp is not None:
                xp.count(arm, FEEDBACK_COUNTER[kind])
                xp.count(arm, "cost", offer.cost)
            return out
        event = to_event(
            kind, member_id, offer_id, offer.kind, request_id, event_ts or time.time(), position, propensity,
            arm, eid, context,
        )  # fmt: skip
        try:
            await self.publisher.send(member_id, ev.encode(event))
        except Unavailable:
            self.metrics.feedback.labels(type=kind, outcome="unavailable").inc()
            raise
        self.metrics.feedback.labels(type=kind, outcome="accepted").inc()
        if arm is not None and xp is not None:
            xp.count(arm, FEEDBACK_COUNTER[kind])
        return {"status": "accepted", "event_id": event.event_id, "event_type": ev.event_type(event)}

    async def erase_member(self, member_id: str) -> ErasureReport:
        """Erase the member everywhere and report it (:class:`service.erasure.Eraser`). Idempotent."""
        if self.eraser is None:
            raise Unavailable("erasure is not set up in this process")
        return await self.eraser.erase(member_id)

"""Claims: one atomic, idempotent check-and-reserve per claim, then the claim event.

A claim is accepted only if the offer is eligible for this member now and stays within every limit:

1. **Idempotency first.** The key (``Idempotency-Key`` header or the body's ``event_id``) names the
   claim's event id. If an outcome is stored for it, that first outcome is the answer and nothing
   changes (an accepted claim's event is published again, harmlessly: the fold skips an event id it
   has applied, so a first publish whose acknowledgement was lost is completed by the retry).
2. **Eligibility on the member's state** (read from Redis, one GET): :func:`features.eligibility.evaluate`,
   the code ranking runs, with its reason codes and sentences (``service.ranking``). Stock and budget
   are left to step 3 (the snapshot's counts are up to a poll old). ``fatigue`` (too many impressions
   without an action) does not refuse a claim: it caps *showing* an offer, and a claim is that action.
3. **The claim script** (``infra.money_store``): stock, budget, the member's claim cap and cool-down,
   re-checked and reserved in one atomic step on the offer's slot, the outcome stored with the key.
4. **The claim event** (with the budget charged) on the member-events topic.

Failure handling, the part that decides whether money leaks:

- A Redis timeout means the script may still run. The money client never retries by itself; this
  module retries the script *with the same key* (so at most one reservation) until
  ``claim_deadline_ms``, then answers 503 "outcome unknown; retry with the same Idempotency-Key".
- The broker certainly did not take the event (:class:`~service.errors.NotPublished`): the reservation
  is undone atomically (``release``), 503 "not recorded, retry".
- The broker may have taken it (no acknowledgement): the reservation stays (never oversell), 503
  "outcome unknown"; the retry with the same key publishes the event again and answers "accepted".
  A client that never retries leaves that unit reserved with no event: it is never sold twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from features import events as ev
from features.eligibility import RULES, evaluate
from features.offers import Offer
from features.projection import Context
from features.state import new_state
from infra.money_store import ClaimOutcome, MoneyStore
from infra.redis_layout import MemberStore
from service.catalog import CatalogHolder
from service.errors import ClaimRefused, NotFound, NotPublished, Unavailable
from service.i18n import DEFAULT_LOCALE, exclusion_text
from service.metrics import Metrics

log = logging.getLogger(__name__)

#: Rules that refuse showing an offer but not claiming it (see the module docstring).
NOT_FOR_CLAIMS = frozenset({"fatigue"})
#: Rules from here on in RULES order are decided by (or passed to) the claim script.
_FIRST_SCRIPT_RULE = RULES.index("sold_out")
#: A context that no channel / page rule applies to (a claim without a context names neither).
_NO_CONTEXT = Context(page_type="", channel="")

UNKNOWN = (
    "the claim's outcome is unknown (the store did not answer in time); retry with the same Idempotency-Key"
)

_CLAIM_EVENT: dict[str, type[ev.CouponClaim] | type[ev.BenefitUse] | type[ev.ConsultBooked]] = {
    "coupon": ev.CouponClaim,
    "benefit": ev.BenefitUse,
    "consult": ev.ConsultBooked,
}

Publish = Callable[[str, bytes], Awaitable[None]]


def event_id_for(
    member_id: str, offer_id: str, kind: str, idempotency_key: str | None, event_id: str | None
) -> str:
    """The event id of a feedback message: the producer's ``event_id`` as given; else derived from the
    ``Idempotency-Key`` header (stable, so a retry names the same event); else a new random id."""
    if event_id is not None:
        return event_id
    if idempotency_key is not None:
        raw = f"{member_id}|{offer_id}|{kind}|{idempotency_key}".encode()
        return "k" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    return uuid.uuid4().hex


def claim_event(
    offer: Offer, member_id: str, event_id: str, event_ts: float, cost: float, arm: str | None = None
) -> ev.Event:
    return _CLAIM_EVENT[offer.kind](
        event_id=event_id, member_id=member_id, event_ts=event_ts, offer_id=offer.offer_id, cost=cost, arm=arm
    )


class ClaimService:
    def __init__(
        self,
        money: MoneyStore,
        members: MemberStore,
        catalog: CatalogHolder,
        publish: Publish,
        metrics: Metrics | None = None,
        deadline_ms: float = 1000.0,
    ) -> None:
        self.money = money
        self.members = members
        self.catalog = catalog
        self.publish = publish
        self.metrics = metrics
        self.deadline_s = deadline_ms / 1000.0

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.feedback.labels(type="claim", outcome=outcome).inc()

    async def claim(
        self,
        member_id: str,
        offer_id: str,
        event_id: str,
        event_ts: float | None = None,
        context: Context | None = None,
        now: float | None = None,
        arm: str | None = None,
        locale: str = DEFAULT_LOCALE,
    ) -> dict[str, Any]:
        """Claim one unit of ``offer_id`` for ``member_id``; ``event_id`` is the idempotency key.

        Returns the accepted answer; raises :class:`ClaimRefused` (409, its sentence in ``locale``),
        :class:`NotFound` (404) or :class:`Unavailable` (503)."""
        t0 = time.perf_counter()
        try:
            return await self._claim(member_id, offer_id, event_id, event_ts, context, now, arm, locale)
        finally:
            if self.metrics is not None:
                self.metrics.claim_seconds.observe(time.perf_counter() - t0)

    async def _claim(
        self,
        member_id: str,
        offer_id: str,
        event_id: str,
        event_ts: float | None,
        context: Context | None,
        now: float | None,
        arm: str | None = None,
        locale: str = DEFAULT_LOCALE,
    ) -> dict[str, Any]:
        now = time.time() if now is None else now
        snap = self.catalog.current
        i = snap.table.index.get(offer_id) if snap is not None else None
        if snap is None or i is None:
            self._count("unknown_offer")
            raise NotFound(f"offer {offer_id!r} is not in the catalog")
        offer = snap.offers[i]
        deadline = time.monotonic() + self.deadline_s

        prior = await self._with_retries(lambda: self.money.outcome(offer_id, member_id, event_id), deadline)
        if prior is not None:
            return await self._answer(offer, member_id, prior, arm, locale)

        try:
            stored = await self.members.get_member(member_id)
        except (RedisError, OSError):
            self._count("unavailable")
            raise Unavailable("member store unreachable; the claim was not recorded, retry") from None
        state = stored.state if stored is not None else new_state(member_id)
        reasons = evaluate(snap.elig, snap.table.index, state, context or _NO_CONTEXT, now)
        code = int(reasons[i])
        rule = RULES[code] if code >= 0 and RULES[code] not in NOT_FOR_CLAIMS else None
        if rule is not None and code < _FIRST_SCRIPT_RULE:
            outcome = await self._refuse(offer_id, member_id, event_id, event_ts or now, rule)
            return await self._answer(offer, member_id, outcome, arm, locale)
        # Rules after stock and budget (claimed, dismissed) go to the script, which reports stock and
        # budget first: the same first failing rule as ranking's.
        limits = self.money.limits(offer)
        outcome = await self._with_retries(
            lambda: self.money.claim(offer_id, member_id, event_id, event_ts or now, now, limits, rule),
            deadline,
        )
        return await self._answer(offer, member_id, outcome, arm, locale)

    async def _refuse(
        self, offer_id: str, member_id: str, event_id: str, event_ts: float, reason: str
    ) -> ClaimOutcome:
        try:
            return await self.money.refuse(offer_id, member_id, event_id, event_ts, reason)
        except (RedisError, OSError):
            # Not stored: a retry decides again on the same state, which gives the same answer.
            return ClaimOutcome("refused", reason, event_id, event_ts, 0, 0, first=True)

    async def _with_retries(self, call: Callable[[], Awaitable[Any]], deadline: float) -> Any:
        """Run a money-store call, retrying timeouts and connection errors until ``deadline``. Safe
        only because every call is idempotent per key (a read, or the script with the same key)."""
        pause = 0.01
        while True:
            try:
                return await call()
            except (RedisTimeoutError, RedisConnectionError, OSError) as exc:
                if time.monotonic() + pause >= deadline:
                    self._count("unknown")
                    log.warning(
                        "claim store call gave up (%s): outcome unknown to the caller", type(exc).__name__
                    )
                    raise Unavailable(UNKNOWN) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
            except RedisError:
                self._count("unavailable")
                raise Unavailable(UNKNOWN) from None

    async def _answer(
        self,
        offer: Offer,
        member_id: str,
        outcome: ClaimOutcome,
        arm: str | None = None,
        locale: str = DEFAULT_LOCALE,
    ) -> dict[str, Any]:
        if not outcome.accepted:
            reason = outcome.reason or "claimed"
            self._count(f"refused_{reason}")
            # The sentence of the rule, from the message catalogue in the request's language (the
            # stored first outcome keeps its rule; its sentence follows the asking request).
            raise ClaimRefused(reason, exclusion_text(reason, locale), offer.offer_id)
        cost = self.money.limits(offer).cost_milli / 1000.0
        event = claim_event(offer, member_id, outcome.event_id, outcome.event_ts, cost, arm)
        try:
            await self.publish(member_id, ev.encode(event))
        except NotPublished as exc:
            if outcome.first:
                await self._undo(offer.offer_id, member_id, outcome.event_id)
            self._count("unavailable")
            raise Unavailable(f"{exc.message} (the claim was not recorded)") from None
        except Unavailable as exc:
            # The broker may have the event: keep the reservation (never sell a unit twice); the retry
            # with the same key publishes again (the fold skips the duplicate) and answers "accepted".
            self._count("unknown")
            raise Unavailable(f"{exc.message}: {UNKNOWN}") from None
        self._count("accepted")
        out: dict[str, Any] = {
            "status": "accepted",
            "event_id": outcome.event_id,
            "event_type": ev.event_type(event),
        }
        if offer.inventory is not None:
            out["inventory_left"] = offer.inventory - outcome.units_used
        if offer.budget is not None:
            out["budget_left"] = round(offer.budget - outcome.cost_used_milli / 1000.0, 3)
        return out

    async def _undo(self, offer_id: str, member_id: str, event_id: str) -> None:
        try:
            await self.money.release(offer_id, member_id, event_id)
        except (RedisError, OSError):
            # The unit stays reserved under an accepted outcome; a retry with the same key publishes
            # the event then. Never oversold, at worst held until the client retries.
            log.error(
                "could not undo claim %s of %s on %s after a failed publish", event_id, member_id, offer_id
            )

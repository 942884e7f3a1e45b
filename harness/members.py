"""Simulated members for tests, scenarios and benchmarks, and the one writer that puts member states into
Redis the way the worker stores them (:meth:`infra.redis_layout.MemberStore.put_members`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import numpy as np

from features import events as ev
from features.events import PAGE_TYPES, TIERS
from features.offers import CATEGORIES
from features.projection import DEVICES, Context
from features.state import MemberState, apply, new_state
from infra.redis_client import connect
from infra.redis_layout import MemberStore, StoredMember
from infra.settings import Settings

_SHOP = [c for c in CATEGORIES if c != "other"]
#: Members per pipeline when writing states (one round trip each).
WRITE_BATCH = 500


def simulate_member(member_id: str, now: float, rng: np.random.Generator) -> MemberState:
    """A member folded from a random 30-day history (browsing, carts, orders, coupons, impressions)."""
    s = new_state(member_id)
    favs = rng.choice(_SHOP, size=int(rng.integers(1, 4)), replace=False).tolist()
    n = int(rng.integers(5, 120))
    ts = np.sort(now - rng.exponential(7 * 86400, size=n).clip(0, 30 * 86400)).tolist()
    first = ts[0]
    k = 0

    def eid() -> str:
        nonlocal k
        k += 1
        return f"{member_id}-{k}"

    tier = TIERS[int(rng.choice(len(TIERS), p=[0.5, 0.3, 0.15, 0.05]))]
    apply(s, ev.TierChanged(event_id=eid(), member_id=member_id, event_ts=first, tier=tier))  # type: ignore[arg-type]
    joined = now - float(rng.uniform(0, 900)) * 86400
    month = int(rng.integers(1, 13))
    apply(
        s,
        ev.ProfileUpdated(
            event_id=eid(), member_id=member_id, event_ts=first, birth_month=month, joined_ts=joined
        ),
    )
    if rng.random() < 0.2:
        apply(s, ev.PaidMembershipStarted(event_id=eid(), member_id=member_id, event_ts=first))
    for t in ts:
        cat = (
            favs[int(rng.integers(len(favs)))] if rng.random() < 0.7 else _SHOP[int(rng.integers(len(_SHOP)))]
        )
        r = rng.random()
        if r < 0.55:
            apply(
                s,
                ev.PageView(
                    event_id=eid(), member_id=member_id, event_ts=t, page_type="category", category=cat
                ),
            )
        elif r < 0.65:
            apply(s, ev.Search(event_id=eid(), member_id=member_id, event_ts=t, category=cat))
        elif r < 0.75:
            apply(s, ev.AddToCart(event_id=eid(), member_id=member_id, event_ts=t, category=cat, amount=40.0))
        elif r < 0.82:
            amount = float(rng.gamma(2.0, 60.0))
            coupon = eid() if rng.random() < 0.3 else None
            order = ev.Order(
                event_id=eid(),
                member_id=member_id,
                event_ts=t,
                amount=amount,
                categories=[cat],
                coupon_id=coupon,
            )
            apply(s, order)
        elif r < 0.95:
            oid = f"coupon-{cat}-threshold-{int(rng.integers(0, 200)):03d}"
            apply(
                s,
                ev.Impression(event_id=eid(), member_id=member_id, event_ts=t, request_id="r", offer_id=oid),
            )
        else:
            oid = f"coupon-{cat}-limited-{int(rng.integers(0, 200)):03d}"
            apply(s, ev.CouponClaim(event_id=eid(), member_id=member_id, event_ts=t, offer_id=oid))
    return s


def random_context(rng: np.random.Generator) -> Context:
    page = str(rng.choice(PAGE_TYPES))
    return Context(
        page_type=page,
        category=str(rng.choice(_SHOP)) if page in ("category", "product") else None,
        device=str(rng.choice(DEVICES)),
        channel="app",
    )


def simulate_members(member_ids: Sequence[str], seed: int = 3, consent: bool = True) -> list[MemberState]:
    """Member states folded from random histories, consent on by default (CPU-bound: do it outside a
    load window when the load generator shares this process)."""
    rng = np.random.default_rng(seed)
    now = time.time()
    states = [simulate_member(m, now, rng) for m in member_ids]
    if consent:
        for s in states:
            s.personalization_consent = True
    return states


async def put_states(store: MemberStore, states: Iterable[MemberState], batch: int = WRITE_BATCH) -> None:
    """Write ``states`` through ``store`` in pipelines of ``batch`` members."""
    part: list[MemberState] = []
    for s in states:
        part.append(s)
        if len(part) >= batch:
            await store.put_members(StoredMember(state=x) for x in part)
            part = []
    if part:
        await store.put_members(StoredMember(state=x) for x in part)


async def write_states(settings: Settings, states: Iterable[MemberState]) -> None:
    """Write member states into the Redis and prefix of ``settings`` (a client of its own)."""
    assert settings.redis_url is not None
    client = connect(settings.redis_url, cluster=False, timeout_ms=2000)
    try:
        await put_states(MemberStore(client, settings.layout), states)
    finally:
        await client.aclose()


def write_members(
    settings: Settings, member_ids: Sequence[str], states: Sequence[MemberState] | None = None
) -> None:
    """Write member states the way the worker writes them (simulated ones unless ``states`` is given)."""
    asyncio.run(write_states(settings, simulate_members(member_ids) if states is None else states))

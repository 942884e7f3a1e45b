"""Property-based tests of claims, limits and replay: generated catalogs, members, contexts and event and
claim sequences, run through the real claim service (``service.claims``) against the session's Redis.

Invariants:

- a claim is accepted exactly when ranking's eligibility (``features.eligibility.evaluate`` with the live
  stock and budget use) lets the offer through, and a refusal names the rule evaluate names: no
  ineligible offer is ever accepted (``fatigue`` aside: it caps showing, a claim is the action);
- no limit is exceeded: units <= inventory, budget used <= budget, claims per member <= the cap, and a
  member's claims on an offer are at least the cool-down apart; also under concurrent claims;
- a retry with a key already used returns the first outcome and changes nothing;
- replaying the published events (``stream.replay.rebuild``) gives the live money state and the live
  member states.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from features import events as ev
from features.decay import HOUR
from features.eligibility import RULES, evaluate
from features.events import TIERS
from features.lifecycle import STAGES
from features.offers import Caps, Eligibility, Offer
from features.projection import Context
from features.state import MemberState, apply, new_state
from harness.embedded import Service
from infra.money_store import MoneyStore, to_milli
from infra.redis_layout import MemberStore, RedisLayout, StoredMember
from service.catalog import CatalogHolder, CatalogStore, build_snapshot
from service.claims import ClaimService, event_id_for
from service.errors import ClaimRefused
from stream.replay import LogRecord, rebuild

pytestmark = pytest.mark.integration

T0 = 1.79e9
_counter = iter(range(10**9))


_DAYS = [0.5, 2.0, 5.0, 15.0, 35.0, 100.0]


def _range(draw: st.DrawFn, values: list[float]) -> tuple[float | None, float | None]:
    lo, hi = draw(st.none() | st.sampled_from(values)), draw(st.none() | st.sampled_from(values))
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return lo, hi


@st.composite
def lifecycle_rules(draw: st.DrawFn) -> dict[str, Any]:
    """Lifecycle eligibility (issue 19): none on about half the offers, else one or two rules."""
    if draw(st.booleans()):
        return {}
    out: dict[str, Any] = {}
    for rule in draw(
        st.lists(
            st.sampled_from(["stage", "order", "visit", "paid", "gap", "points"]),
            min_size=1,
            max_size=2,
            unique=True,
        )
    ):
        if rule == "stage":
            out["lifecycle_stages"] = draw(
                st.lists(st.sampled_from(STAGES), min_size=2, max_size=4, unique=True)
            )
        elif rule in ("order", "visit"):
            out[f"min_days_since_{rule}"], out[f"max_days_since_{rule}"] = _range(draw, _DAYS)
        elif rule == "paid":
            out["paid_expiring_within_days"] = draw(st.none() | st.sampled_from([3.0, 7.0, 30.0]))
            out["paid_lapsed_within_days"] = draw(st.none() | st.sampled_from([3.0, 14.0]))
        elif rule == "gap":
            out["min_tier_gap"], out["max_tier_gap"] = _range(draw, [10.0, 100.0, 500.0, 2500.0])
        else:
            out["points_expiring_within_days"] = draw(st.sampled_from([1.0, 7.0, 30.0]))
            out["min_points_expiring"] = draw(st.sampled_from([1, 100, 400]))
    return out


#: A member's lifecycle history: (event kind, days before T0, fields); visits, orders (growth value),
#: a paid membership with an expiry (or an end), points lots with expiries.
@st.composite
def lifecycles(draw: st.DrawFn) -> list[tuple[str, float, dict[str, Any]]]:
    out: list[tuple[str, float, dict[str, Any]]] = []
    joined = draw(st.sampled_from([3.0, 300.0]))
    out.append(("profile", joined, {"joined_ts": T0 - joined * 86400}))
    for age in draw(st.lists(st.sampled_from([0.2, 1.0, 4.0, 10.0, 20.0, 40.0, 70.0]), max_size=3)):
        out.append(("view", age, {}))
    for age, amount in draw(
        st.lists(
            st.tuples(st.sampled_from([1.0, 20.0, 45.0]), st.sampled_from([100.0, 950.0, 2900.0])), max_size=2
        )
    ):
        out.append(("order", age, {"amount": amount}))
    paid = draw(st.sampled_from(["none", "expiring", "lapsed", "ended"]))
    if paid != "none":
        expires = draw(st.sampled_from([-20.0, -2.0, 1.5, 6.0, 40.0]))
        out.append(("paid", 300.0, {"expires_at": T0 + expires * 86400, "plan": "PLUS"}))
        if paid == "ended":
            out.append(("ended", draw(st.sampled_from([1.0, 10.0])), {}))
    lots = draw(
        st.lists(st.tuples(st.sampled_from([50, 300]), st.sampled_from([0.5, 5.0, 20.0, 45.0])), max_size=3)
    )
    if lots:
        expiring = [ev.PointsLot(points=p, expires_at=T0 + d * 86400) for p, d in lots]
        out.append(("points", 1.0, {"points": 1000, "expiring": expiring}))
    return out


_LIFECYCLE_EVENTS: dict[str, Any] = {
    "profile": ev.ProfileUpdated,
    "view": lambda **kw: ev.PageView(page_type="home", **kw),
    "order": ev.Order,
    "paid": ev.PaidMembershipStarted,
    "ended": ev.PaidMembershipEnded,
    "points": ev.PointsChanged,
}


@st.composite
def offers(draw: st.DrawFn, i: int) -> Offer:
    kind = draw(st.sampled_from(["coupon", "benefit", "consult"]))
    subtype = {"coupon": "limited", "benefit": "partner_perk", "consult": "stylist"}[kind]
    cost = draw(st.sampled_from([0.0, 0.1, 5.0, 30.0]))
    budgeted = cost > 0 and draw(st.booleans())
    return Offer(
        offer_id=f"o{i}",
        kind=kind,
        subtype=subtype,
        title=f"offer {i}",
        value=10.0,
        cost=cost,
        inventory=draw(st.none() | st.integers(0, 6)),
        budget=cost * draw(st.integers(0, 6)) + draw(st.sampled_from([0.0, cost / 2])) if budgeted else None,
        eligibility=Eligibility(
            tiers=draw(st.lists(st.sampled_from(TIERS), max_size=2, unique=True)),
            paid_only=draw(st.booleans()),
            channels=draw(st.lists(st.sampled_from(["app", "web"]), max_size=1)),
            valid_to_ts=draw(st.none() | st.just(T0 + 5 * HOUR)),
            **draw(lifecycle_rules()),
        ),
        caps=Caps(
            max_claims_per_member=draw(st.integers(1, 3)),
            cooldown_after_claim_hours=draw(st.sampled_from([0.0, 1.0])),
            cooldown_after_dismiss_hours=draw(st.sampled_from([0.0, 2.0])),
            max_impressions_without_action=draw(st.integers(1, 3)),
        ),
    )


@st.composite
def catalogs(draw: st.DrawFn) -> list[Offer]:
    n = draw(st.integers(1, 3))
    return [draw(offers(i)) for i in range(n)]


#: One step: ("claim", member, offer, key or None, channel or None) / ("dismiss"|"impression", m, o) /
#: ("wait", hours). Keys come from a small pool so that retries and reuse happen.
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("claim"),
            st.integers(0, 3),
            st.integers(0, 2),
            st.none() | st.sampled_from(["k1", "k2", "k3", "k4", "k5"]),
            st.none() | st.sampled_from(["app", "web"]),
        ),
        st.tuples(st.sampled_from(["dismiss", "impression"]), st.integers(0, 3), st.integers(0, 2)),
        st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 3.0])),
    ),
    min_size=1,
    max_size=30,
)


@dataclass
class World:
    offers: list[Offer]
    states: dict[str, MemberState]
    money: MoneyStore
    store: MemberStore
    service: ClaimService
    log: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def world(redis_url: str, catalog: list[Offer], states: list[MemberState]) -> AsyncIterator[World]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0)
    prefix = f"p{next(_counter)}x{id(catalog) % 10_000}"
    layout = RedisLayout(prefix=prefix)
    store = MemberStore(client, layout)
    money = MoneyStore(client, prefix, idempotency_ttl_seconds=3600)
    holder = CatalogHolder(CatalogStore(client, layout), store)
    holder.current = build_snapshot(1, catalog, T0)
    log: list[bytes] = []

    async def publish(member_id: str, value: bytes) -> None:
        log.append(value)

    service = ClaimService(money, store, holder, publish)
    await store.put_members([StoredMember(state=s) for s in states])
    try:
        yield World(catalog, {s.member_id: s for s in states}, money, store, service, log)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _fold(w: World, event: ev.Event) -> None:
    apply(w.states[event.member_id], event)
    await w.store.put_members([StoredMember(state=w.states[event.member_id])])


def _expected(
    w: World, member_id: str, i: int, context: Context, now: float, usage: dict[str, Any]
) -> str | None:
    """What ranking's eligibility says of offer ``i`` for this member now, with the live stock/budget."""
    snap = build_snapshot(1, w.offers, now)
    claimed = snap.claimed.copy()
    cost_used = snap.cost_used.copy()
    for oid, u in usage.items():
        j = snap.table.index[oid]
        claimed[j], cost_used[j] = u.units, u.cost
    j = snap.table.index[w.offers[i].offer_id]
    code = int(
        evaluate(snap.elig, snap.table.index, w.states[member_id], context, now, claimed, cost_used)[j]
    )
    if code < 0 or RULES[code] == "fatigue":
        return None
    return RULES[code]


@given(
    catalog=catalogs(),
    tiers=st.lists(st.sampled_from(TIERS), min_size=4, max_size=4),
    histories=st.lists(lifecycles(), min_size=4, max_size=4),
    plan=steps,
)
def test_claims_follow_ranking_eligibility_and_never_exceed_a_limit(
    redis_server: Service,
    catalog: list[Offer],
    tiers: list[str],
    histories: list[list[tuple[str, float, dict[str, Any]]]],
    plan: list[tuple[Any, ...]],
) -> None:
    # Members come from events (on the log, so that replay sees them too), with lifecycles: stages,
    # recency, paid memberships, growth value and expiring points for the lifecycle rules.
    history: list[ev.Event] = []
    states = []
    for i, tier in enumerate(tiers):
        mid = f"m{i}"
        mine: list[ev.Event] = [
            ev.TierChanged(event_id=f"t{i}", member_id=mid, event_ts=T0 - 86400, tier=tier)
        ]  # type: ignore[arg-type]
        if i % 2 == 0:
            mine.append(ev.PaidMembershipStarted(event_id=f"p{i}", member_id=mid, event_ts=T0 - 86400))
        for k, (kind, days_ago, fields) in enumerate(histories[i]):
            make = _LIFECYCLE_EVENTS[kind]
            mine.append(make(event_id=f"l{i}-{k}", member_id=mid, event_ts=T0 - days_ago * 86400, **fields))
        s = new_state(mid)
        for e in mine:
            apply(s, e)
        history += mine
        states.append(s)

    async def main() -> None:
        async with world(redis_server.url, catalog, states) as w:
            w.log.extend(ev.encode(e) for e in history)
            now = T0
            first: dict[tuple[str, str, str], tuple[str, str | None]] = {}
            accepted_at: dict[tuple[str, str], list[float]] = {}
            for step in plan:
                if step[0] == "wait":
                    now += step[1] * HOUR
                    continue
                if step[0] in ("dismiss", "impression"):
                    _, m, o = step
                    o %= len(catalog)
                    cls = ev.Dismiss if step[0] == "dismiss" else ev.Impression
                    event = cls(event_id=f"x{next(_counter)}", member_id=f"m{m}", event_ts=now,
                                request_id="r", offer_id=catalog[o].offer_id)  # fmt: skip
                    w.log.append(ev.encode(event))  # another producer's event, on the same log
                    await _fold(w, event)
                    continue
                _, m, o, key, channel = step
                o %= len(catalog)
                mid, oid = f"m{m}", catalog[o].offer_id
                # As the API names it: from the Idempotency-Key (per member, offer and key) or a new id.
                eid = event_id_for(mid, oid, "claim", key, None)
                context = (
                    Context(channel=channel, page_type="") if channel else Context(page_type="", channel="")
                )
                usage = await w.money.usage([x.offer_id for x in catalog])
                retry = (mid, oid, eid) in first
                expected = _expected(w, mid, o, context, now, usage)
                try:
                    await w.service.claim(
                        mid, oid, eid, event_ts=now, context=context if channel else None, now=now
                    )
                    got: tuple[str, str | None] = ("accepted", None)
                except ClaimRefused as exc:
                    got = ("refused", exc.reason)
                if retry:
                    assert got == first[(mid, oid, eid)], "a retry must return the first outcome"
                    assert await w.money.usage([x.offer_id for x in catalog]) == usage, (
                        "a retry changed money"
                    )
                    continue
                first[(mid, oid, eid)] = got
                assert got == (("accepted", None) if expected is None else ("refused", expected)), (
                    step,
                    expected,
                )
                if got[0] == "accepted":
                    accepted_at.setdefault((mid, oid), []).append(now)
                    await _fold(w, ev.decode(w.log[-1]))
            # Limits, read back from Redis.
            usage = await w.money.usage([x.offer_id for x in catalog])
            for offer in catalog:
                u = usage.get(offer.offer_id)
                units, cost = (u.units, u.cost_milli) if u else (0, 0)
                if offer.inventory is not None:
                    assert units <= offer.inventory
                if offer.budget is not None:
                    assert cost <= to_milli(offer.budget)
                assert cost == units * to_milli(offer.cost)
                claims = await w.money.all_member_claims(offer.offer_id)
                assert sum(n for n, _ in claims.values()) == units
                for mid, (n, _) in claims.items():
                    assert n <= offer.caps.max_claims_per_member
                    times = accepted_at[(mid, offer.offer_id)]
                    gap = offer.caps.cooldown_after_claim_hours * HOUR
                    assert all(b - a >= gap for a, b in itertools.pairwise(times))
            # Replay of what was published equals the live state.
            rebuilt = rebuild([LogRecord(None, None, None, v) for v in w.log], catalog, 3600)
            for offer in catalog:
                live = usage.get(offer.offer_id)
                again = rebuilt.money.get(offer.offer_id)
                assert (live.units if live else 0) == (again.units if again else 0)
                assert (live.cost_milli if live else 0) == (again.cost_milli if again else 0)
                assert await w.money.all_member_claims(offer.offer_id) == (again.members if again else {})
            assert set(rebuilt.members) <= set(w.states)
            for mid, stored in rebuilt.members.items():
                assert msgspec.to_builtins(stored.state) == msgspec.to_builtins(w.states[mid])

    asyncio.run(main())


@given(
    inventory=st.integers(0, 20),
    budget_units=st.integers(0, 25),
    cap=st.integers(1, 3),
    n_members=st.integers(1, 12),
    attempts=st.integers(1, 4),
)
def test_concurrent_claims_never_exceed_any_limit(
    redis_server: Service, inventory: int, budget_units: int, cap: int, n_members: int, attempts: int
) -> None:
    offer = Offer(
        offer_id="hot", kind="coupon", subtype="limited", title="hot", value=5.0, cost=0.1,
        inventory=inventory, budget=round(0.1 * budget_units, 1),
        caps=Caps(max_claims_per_member=cap, cooldown_after_claim_hours=0),
    )  # fmt: skip
    states = [new_state(f"c{i}") for i in range(n_members)]

    async def main() -> None:
        async with world(redis_server.url, [offer], states) as w:

            async def one(mid: str, key: str) -> bool:
                try:
                    await w.service.claim(mid, "hot", key, now=T0)
                    return True
                except ClaimRefused:
                    return False

            calls = [one(f"c{i % n_members}", f"k{i}") for i in range(n_members * attempts)]
            calls += [one("c0", "k0") for _ in range(3)]  # concurrent retries of one key
            results = await asyncio.gather(*calls)
            u = (await w.money.usage(["hot"])).get("hot")
            units = u.units if u else 0
            expected = min(inventory, budget_units, n_members * min(cap, attempts))
            assert units == expected
            assert sum(results[: n_members * attempts]) == expected
            assert all(n <= cap for n, _ in (await w.money.all_member_claims("hot")).values())

    asyncio.run(main())

"""The membership programme as it runs through the horizon: history before it, joins, paid memberships
that expire or renew, growth value and tier moves, points lots that expire, and what a member does after
claiming a lifecycle offer.

Every change is an event, emitted at its own time through :class:`Programme.emit` (the sink and the
member's folded state): the events carry what the fold needs (``expires_at`` on paid memberships,
``expiring`` lots on points snapshots), and tier changes follow :mod:`features.lifecycle`'s tier rules
exactly (an upgrade when an order lifts the growth value over a threshold, a downgrade when old spend
leaves the rolling window at a week boundary).

Reactions to a claimed lifecycle offer (the dynamics the lifecycle features and offers are about):

- **wake-up coupon**: a silent or lapsing member comes back (visits again) with :data:`WAKE_P`;
- **renewal offer**: the membership renews with :data:`RENEW_AFTER_CLAIM_P` instead of the segment's
  base rate at expiry (a lapsed member re-subscribes with :data:`WINBACK_AFTER_CLAIM_P`);
- **tier nudge**: an order closing the gap to the next tier follows with :data:`NUDGE_ORDER_P`;
- **points-expiry offer**: the expiring points are spent on it (the lot leaves the balance).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from features import events as ev
from features import lifecycle as lc
from features.decay import DAY, HOUR
from features.state import GROWTH_BUCKET_SECONDS, POINTS_LOTS_KEPT, MemberState, apply
from training.sim_population import (
    HISTORY_DAYS,
    HISTORY_ORDERS_MAX,
    JOINS,
    LIFECYCLE,
    PLAN,
    REGIONS,
    SHOP_CATEGORIES,
    Members,
    pick,
)

WAKE_P = 0.75
#: Probability to renew at expiry without a claimed renewal offer, per segment.
RENEW_BASE_P = np.array([0.3, 0.2, 0.35, 0.45, 0.2])
RENEW_AFTER_CLAIM_P = 0.85
WINBACK_AFTER_CLAIM_P = 0.55
NUDGE_ORDER_P = 0.5
#: Points earned per currency unit spent; earned points expire a year later (lots merged per 30 days).
POINTS_PER_CURRENCY = 1.0
POINTS_LIFE_DAYS = 365.0


class Sink:
    """Collects encoded events with their times; written sorted by (event_ts, emission order) at the end."""

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.raw: list[bytes] = []
        self.n = 0

    def eid(self) -> str:
        self.n += 1
        return f"e{self.n:09d}"

    def add(self, event: ev.Event) -> None:
        self.ts.append(event.event_ts)
        self.raw.append(ev.encode(event))

    def write(self, path: Any) -> None:
        order = np.argsort(np.asarray(self.ts), kind="stable")
        raw = self.raw
        with open(path, "wb") as f:
            chunk = 100_000
            for i in range(0, len(order), chunk):
                f.write(b"".join(raw[j] + b"\n" for j in order[i : i + chunk]))


@dataclass
class Schedule:
    """Future work in time order: an event to fold into a member's state (already in the sink), or an
    action to run then (which emits its own events)."""

    heap: list[tuple[float, int, int, Any]] = field(default_factory=list)
    seq: int = 0

    def fold_at(self, member: int, event: ev.Event) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (event.event_ts, self.seq, member, event))

    def call_at(self, ts: float, member: int, action: Callable[[float], None]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (ts, self.seq, member, action))

    def run_until(self, t: float, states: list[MemberState]) -> None:
        """Fold and run everything due strictly before ``t``."""
        heap = self.heap
        while heap and heap[0][0] < t:
            ts, _, who, item = heapq.heappop(heap)
            if callable(item):
                item(ts)
            else:
                apply(states[who], item)


@dataclass
class Counters:
    """What the programme did (for meta.json and the tests)."""

    renewals: int = 0
    renewals_after_claim: int = 0
    lapses: int = 0
    tier_up: int = 0
    tier_down: int = 0
    woken: int = 0
    nudged_orders: int = 0
    points_expired: int = 0
    points_spent: int = 0
    joins: int = 0


class Programme:
    def __init__(
        self,
        members: Members,
        states: list[MemberState],
        sink: Sink,
        schedule: Schedule,
        rng: np.random.Generator,
        start_ts: float,
        end_ts: float,
    ) -> None:
        self.m, self.states, self.sink, self.schedule, self.rng = members, states, sink, schedule, rng
        self.start_ts, self.end_ts = start_ts, end_ts
        n = len(members.member_id)
        self.paid_exp = members.paid_expires_ts.copy()  # current paid expiry (0: none)
        self.balance = members.points.astype(np.int64).copy()
        self.lots: list[dict[float, int]] = [
            {float(members.lot_expires_ts[i]): int(members.lot_points[i])} if members.lot_points[i] else {}
            for i in range(n)
        ]
        #: A claimed renewal offer will renew the membership: the expiry check leaves it alone.
        self.renewing = np.zeros(n, dtype=bool)
        self.counters = Counters()
        #: Order callback (the run's): (member, ts, amount, category index or -1) for nudged orders.
        self.place_order: Callable[[int, float, int, float], None] = lambda i, a, c, t: None

    def emit(self, i: int, event: ev.Event) -> None:
        """An event happening now: into the log and the member's state."""
        self.sink.add(event)
        apply(self.states[i], event)

    def _e(self, cls: type[Any], i: int, ts: float, **kw: Any) -> Any:
        return cls(event_id=self.sink.eid(), member_id=self.m.member_id[i], event_ts=ts, **kw)

    # --- the start ------------------------------------------------------------------------------------
    def open(self) -> None:
        """History, attributes and the scheduled programme events of every member."""
        m = self.m
        for i in range(len(m.member_id)):
            if m.start_stage[i] == JOINS:
                self.schedule.call_at(float(m.joined_ts[i]), i, partial(self._attributes, i))
                continue
            self._history(i)
            self._attributes(i, self.start_ts + 1.0 + (i % 500) * 0.5)
        # Growth older than the window drops out at week boundaries: tier downgrades, if any.
        week = (int(self.start_ts // GROWTH_BUCKET_SECONDS) + 1) * GROWTH_BUCKET_SECONDS
        while week < self.end_ts:
            self.schedule.call_at(week + 1.0, -1, self._week)
            week += GROWTH_BUCKET_SECONDS

    def _history(self, i: int) -> None:
        """Orders over the last year summing to the member's growth value, and the last visit."""
        m, rng = self.m, self.rng
        last = float(m.last_visit_ts[i])
        first = max(float(m.joined_ts[i]) + 60.0, self.start_ts - HISTORY_DAYS * DAY)
        growth = float(m.growth[i])
        n = int(min(HISTORY_ORDERS_MAX, max(1, round(growth / float(m.basket[i]))))) if growth > 0 else 0
        if n:
            shares = rng.dirichlet(np.ones(n) * 3.0)
            amounts = np.round(shares * growth, 2)
            amounts[-1] = round(growth - float(amounts[:-1].sum()), 2)
            times = np.sort(rng.uniform(first, max(first, last - 60.0), n))
            cats = pick(rng, np.tile(m.prefs[i], (n, 1)))
            for ts, amount, c in zip(times.tolist(), amounts.tolist(), cats.tolist(), strict=True):
                if amount <= 0:
                    continue
                self.emit(
                    i,
                    self._e(ev.Order, i, ts, amount=amount, categories=[SHOP_CATEGORIES[c]], items=2),
                )
        self.emit(i, self._e(ev.PageView, i, last, page_type="home"))
        lapsed = float(m.paid_lapsed_ts[i])
        if lapsed:
            period = float(m.paid_period_days[i]) * DAY
            self.emit(i, self._e(ev.PaidMembershipStarted, i, lapsed - period, plan=PLAN, expires_at=lapsed))
            self.emit(i, self._e(ev.PaidMembershipEnded, i, lapsed))

    def _attributes(self, i: int, t0: float) -> None:
        m = self.m
        if m.start_stage[i] == JOINS:
            self.counters.joins += 1
        self.emit(
            i,
            self._e(
                ev.ProfileUpdated,
                i,
                t0,
                birth_month=int(m.birth_month[i]),
                region=REGIONS[m.region[i]],
                joined_ts=float(m.joined_ts[i]),
            ),
        )
        self.emit(i, self._e(ev.TierChanged, i, t0 + 0.1, tier=ev.TIERS[m.tier[i]]))
        self.emit(i, self._points_event(i, t0 + 0.2))
        exp = float(self.paid_exp[i])
        if exp:
            period = float(m.paid_period_days[i]) * DAY
            # The membership started a period before it expires (maybe before the history begins).
            started = self._e(
                ev.PaidMembershipStarted, i, min(t0 + 0.3, exp - period), plan=PLAN, expires_at=exp
            )
            self.emit(i, started)
            self._watch_expiry(i, exp)
        lot_ts = float(m.lot_expires_ts[i])
        if m.lot_points[i] and lot_ts < self.end_ts:
            self.schedule.call_at(lot_ts, i, partial(self._lot_expires, i, lot_ts))

    # --- paid membership ------------------------------------------------------------------------------
    def _watch_expiry(self, i: int, exp: float) -> None:
        if exp >= self.end_ts:
            return
        check = max(exp - float(self.rng.uniform(0.0, 1.0)) * DAY, self.start_ts + 700.0)
        self.schedule.call_at(min(check, exp - 1.0), i, partial(self._renew_check, i, exp))

    def _renew_check(self, i: int, exp: float, t: float) -> None:
        if self.paid_exp[i] != exp or self.renewing[i]:
            return  # renewed since, or about to be (after a claimed renewal offer)
        if self.rng.random() < RENEW_BASE_P[self.m.segment[i]]:
            self._renew(i, t)
        else:
            self.schedule.call_at(exp, i, partial(self._lapse, i, exp))

    def _renew(self, i: int, t: float, after_claim: bool = False) -> None:
        self.renewing[i] = False
        period = float(self.m.paid_period_days[i]) * DAY
        exp = float(self.paid_exp[i])
        new_exp = (exp if exp > t else t) + period
        self.paid_exp[i] = new_exp
        self.emit(i, self._e(ev.PaidMembershipRenewed, i, t, plan=PLAN, expires_at=new_exp))
        self.counters.renewals += 1
        self.counters.renewals_after_claim += after_claim
        self._watch_expiry(i, new_exp)

    def _renew_claimed(self, i: int, t: float) -> None:
        self._renew(i, t, after_claim=True)

    def _lapse(self, i: int, exp: float, t: float) -> None:
        if self.paid_exp[i] != exp:
            return
        self.paid_exp[i] = 0.0
        self.emit(i, self._e(ev.PaidMembershipEnded, i, t))
        self.counters.lapses += 1

    # --- growth value and tiers -----------------------------------------------------------------------
    def tier_check(self, i: int, t: float) -> None:
        """After an order: an upgrade when the growth value now implies a higher tier."""
        st = self.states[i]
        implied = lc.implied_tier(lc.growth_value(st, t, LIFECYCLE.tiers), LIFECYCLE.tiers)
        if ev.TIERS.index(implied) > ev.TIERS.index(st.tier):
            self.emit(i, self._e(ev.TierChanged, i, t, tier=implied))
            self.counters.tier_up += 1

    def _week(self, t: float) -> None:
        for i, st in enumerate(self.states):
            if not st.events_total or st.tier == "regular":
                continue
            implied = lc.implied_tier(lc.growth_value(st, t, LIFECYCLE.tiers), LIFECYCLE.tiers)
            if ev.TIERS.index(implied) < ev.TIERS.index(st.tier):
                self.emit(i, self._e(ev.TierChanged, i, t, tier=implied))
                self.counters.tier_down += 1

    # --- points ---------------------------------------------------------------------------------------
    def _points_event(self, i: int, t: float) -> ev.PointsChanged:
        lots = sorted((exp, p) for exp, p in self.lots[i].items() if exp > t)[:POINTS_LOTS_KEPT]
        return self._e(
            ev.PointsChanged,
            i,
            t,
            points=int(self.balance[i]),
            expiring=[ev.PointsLot(points=p, expires_at=exp) for exp, p in lots],
        )

    def earn(self, i: int, amount: float, t: float) -> None:
        earned = int(amount * POINTS_PER_CURRENCY)
        if earned <= 0:
            return
        self.balance[i] += earned
        expires = (int((t + POINTS_LIFE_DAYS * DAY) // (30 * DAY)) + 1) * 30 * DAY
        self.lots[i][expires] = self.lots[i].get(expires, 0) + earned
        self.emit(i, self._points_event(i, t))

    def _lot_expires(self, i: int, lot: float, t: float) -> None:
        pts = self.lots[i].pop(lot, 0)
        if pts <= 0:
            return  # spent on the points-expiry offer
        self.balance[i] = max(0, int(self.balance[i]) - pts)
        self.counters.points_expired += pts
        self.emit(i, self._points_event(i, t))

    # --- reactions to a claimed lifecycle offer ------------------------------------------------------
    def claimed(self, i: int, family: str, t: float, state: MemberState) -> None:
        """The member claimed a lifecycle offer of ``family`` at ``t`` (the claim event's time)."""
        rng = self.rng
        if family == "wake_up":
            m = self.m
            away = not (m.active_from[i] <= t < m.active_until[i])
            if away and rng.random() < WAKE_P:
                m.active_from[i] = t + float(rng.uniform(0.05, 2.0)) * DAY
                m.active_until[i] = np.inf
                self.counters.woken += 1
        elif family == "renewal":
            lapsed = lc.paid_days_since_lapse(state, t) is not None
            if rng.random() < (WINBACK_AFTER_CLAIM_P if lapsed else RENEW_AFTER_CLAIM_P):
                self.renewing[i] = True
                at = t + float(rng.uniform(0.5 * HOUR, DAY))
                self.schedule.call_at(at, i, partial(self._renew_claimed, i))
        elif family == "tier_nudge":
            gap = lc.tier_progress(state, t, LIFECYCLE.tiers).gap
            if gap is not None and rng.random() < NUDGE_ORDER_P:
                at = t + float(rng.uniform(0.1, 2.0)) * DAY
                amount = round(gap / LIFECYCLE.tiers.growth_per_currency + float(rng.uniform(10.0, 80.0)), 2)
                cat = int(pick(rng, self.m.prefs[i][None, :])[0])
                self.counters.nudged_orders += 1
                self.schedule.call_at(at, i, partial(self.place_order, i, amount, cat))
        elif family == "points_expiry":
            soon = [exp for exp in self.lots[i] if t < exp <= t + 30 * DAY]
            if soon:
                self.schedule.call_at(t + 1.0, i, partial(self._spend_lot, i, min(soon)))

    def _spend_lot(self, i: int, lot: float, t: float) -> None:
        pts = self.lots[i].pop(lot, 0)
        if pts <= 0:
            return
        self.balance[i] = max(0, int(self.balance[i]) - pts)
        self.counters.points_spent += pts
        self.emit(i, self._points_event(i, t))

"""Background activity, drawn up front: every member's sessions over the whole horizon (pages, searches,
carts, orders) and the CRM's push slots, in one time-ordered table.

A session exists whether or not its member is visiting at the time: the run skips the pages of a
member outside their active window (silent, not joined yet, or gone quiet), so waking a member up only
has to move the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features import events as ev
from features.decay import DAY, HOUR
from training.sim_population import CART_P, PAGES_MEAN, SHOP_CATEGORIES, Members, pick

# Hour-of-day and day-of-week traffic shape (UTC stands in for local time).
_HOURLY = np.array(
    [
        *(0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.8, 0.9, 1.0, 1.1),
        *(1.3, 1.1, 1.0, 1.0, 1.0, 1.1, 1.3, 1.6, 1.9, 2.0, 1.6, 0.8),
    ]
)
_WEEKLY = np.array([1.0, 1.0, 1.0, 1.0, 1.1, 1.35, 1.3])  # Monday first
SALES_TRAFFIC = 2.5
#: CRM push slots per member and day (daytime, 9:00-21:00); the run sends one only to a member who has
#: not visited for :data:`PUSH_MIN_IDLE_DAYS` and has a lifecycle offer to push.
PUSH_PER_DAY = 0.5
PUSH_MIN_IDLE_DAYS = 3.0


def intensity(days: float, start_ts: float, sales_day: int) -> np.ndarray:
    """Relative traffic per hour of the horizon."""
    n_hours = math.ceil(days * 24)
    hours = np.arange(n_hours)
    ts = start_ts + hours * HOUR
    dow = ((ts // DAY).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    w = _HOURLY[hours % 24] * _WEEKLY[dow]
    w[(hours // 24) == sales_day] *= SALES_TRAFFIC
    return w


@dataclass
class Timeline:
    """All background activity, one row per page (or search, or push slot), sorted by time."""

    ts: np.ndarray
    member: np.ndarray
    page_type: np.ndarray  # index into ev.PAGE_TYPES
    category: np.ndarray  # index into SHOP_CATEGORIES, -1 = none
    is_request: np.ndarray
    cart_amount: np.ndarray  # > 0: add_to_cart after this page
    order_amount: np.ndarray  # > 0: order after this page
    is_push: np.ndarray  # a CRM push slot, not a page: no visit, maybe a push request
    extra: dict[str, Any] = field(default_factory=dict)


def make_timeline(
    m: Members, start_ts: float, days: float, request_p: float, rng: np.random.Generator, sales_day: int
) -> Timeline:
    inten = intensity(days, start_ts, sales_day)
    n_hours = len(inten)
    # Expected sessions over the horizon, scaled so that a member's average daily rate holds.
    expected = m.rate * inten.sum() / 24.0
    n_sess = rng.poisson(expected)
    s_member = np.repeat(np.arange(len(n_sess)), n_sess)
    hour = rng.choice(n_hours, size=len(s_member), p=inten / inten.sum())
    s_ts = start_ts + hour * HOUR + rng.random(len(s_member)) * HOUR
    s_ts = np.maximum(s_ts, start_ts + 600.0)  # the profile events at the start come first
    seg = m.segment[s_member]
    # Focus category: from long-run preferences, sometimes anything; parents (once parents) often baby.
    focus = pick(rng, m.prefs[s_member])
    wander = rng.random(len(s_member)) < 0.2
    focus = np.where(wander, rng.integers(0, len(SHOP_CATEGORIES), len(s_member)), focus)
    baby = SHOP_CATEGORIES.index("baby")
    is_parent_now = (m.parent_ts[s_member] > 0) & (s_ts >= m.parent_ts[s_member])
    focus = np.where(is_parent_now & (rng.random(len(s_member)) < 0.5), baby, focus)

    n_pages = 1 + rng.poisson(PAGES_MEAN[seg])
    p_sess = np.repeat(np.arange(len(s_member)), n_pages)
    first = np.zeros(len(p_sess), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(n_pages)[:-1]])
    first[starts] = True
    gaps = rng.exponential(45.0, len(p_sess))
    gaps[first] = 0.0
    # Cumulative gap within each session.
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[starts], n_pages)
    p_ts = s_ts[p_sess] + cum
    # Page types: home or search first; then mostly category/product pages.
    later_names = ("category", "product", "search", "member_center", "cart")
    later_types = np.array([ev.PAGE_TYPES.index(t) for t in later_names])
    later = later_types[pick(rng, np.tile([0.3, 0.45, 0.15, 0.05, 0.05], (len(p_sess), 1)))]
    first_types = np.array([ev.PAGE_TYPES.index("home"), ev.PAGE_TYPES.index("search")])
    first_t = first_types[(rng.random(len(p_sess)) < 0.25).astype(np.int64)]
    page_type = np.where(first, first_t, later)
    p_member = s_member[p_sess]
    page_cat = np.where(rng.random(len(p_sess)) < 0.75, focus[p_sess], pick(rng, m.prefs[p_member]))
    has_cat = np.isin(page_type, [ev.PAGE_TYPES.index(t) for t in ("category", "product", "search", "cart")])
    page_cat = np.where(has_cat, page_cat, -1)
    is_request = rng.random(len(p_sess)) < request_p

    # A cart at the last page of some sessions, and an order after some carts.
    last = np.zeros(len(p_sess), dtype=bool)
    last[np.cumsum(n_pages) - 1] = True
    cart = last & (rng.random(len(p_sess)) < CART_P[m.segment[p_member]])
    amount = m.basket[p_member] * rng.lognormal(-0.1, 0.45, len(p_sess))
    order = cart & (rng.random(len(p_sess)) < 0.55)
    page_cat = np.where(cart & (page_cat < 0), focus[p_sess], page_cat)

    # CRM push slots: daytime, any day; most go unsent (see PUSH_MIN_IDLE_DAYS).
    n_push = rng.poisson(PUSH_PER_DAY * days, len(m.member_id))
    push_member = np.repeat(np.arange(len(n_push)), n_push)
    push_day = np.floor(rng.random(len(push_member)) * days)
    push_ts = start_ts + push_day * DAY + (9.0 + 12.0 * rng.random(len(push_member))) * HOUR
    keep = push_ts < start_ts + days * DAY
    push_member, push_ts = push_member[keep], push_ts[keep]
    n_p = len(push_ts)

    ts = np.concatenate([p_ts, push_ts])
    order_idx = np.argsort(ts, kind="stable")
    home = ev.PAGE_TYPES.index("home")
    return Timeline(
        ts=ts[order_idx],
        member=np.concatenate([p_member, push_member])[order_idx],
        page_type=np.concatenate([page_type, np.full(n_p, home)])[order_idx],
        category=np.concatenate([page_cat, np.full(n_p, -1)])[order_idx],
        is_request=np.concatenate([is_request, np.ones(n_p, dtype=bool)])[order_idx],
        cart_amount=np.concatenate([np.where(cart, np.round(amount, 2), 0.0), np.zeros(n_p)])[order_idx],
        order_amount=np.concatenate([np.where(order, np.round(amount, 2), 0.0), np.zeros(n_p)])[order_idx],
        is_push=np.concatenate([np.zeros(len(p_ts), dtype=bool), np.ones(n_p, dtype=bool)])[order_idx],
        extra={"sessions": len(s_member), "push_slots": n_p},
    )

"""Eligibility: which offers a member may be shown right now, and why not for the others.

Pure and vectorised over :class:`~features.projection.OfferTable` columns. A wrong answer here is a
bug the member sees (an offer they cannot claim), so every rule has a stable reason code that
``explain=true`` returns for excluded offers and that tests check one by one.

Rules, in the order they are reported (the first failing rule is the reason):

``inactive``, ``not_started``, ``expired``, ``tier``, ``paid_only``, ``region``, ``channel``,
``page_type``, ``birthday_month``, ``tenure``, the lifecycle rules (``lifecycle_stage``,
``days_since_order``, ``days_since_visit``, ``paid_renewal_window``, ``tier_gap``, ``points_expiring``:
read off the state at ``now`` by :mod:`features.lifecycle`), ``sold_out``, ``budget_exhausted``, ``claimed``
(member reached the per-member claim cap or is in the post-claim cool-down), ``dismissed`` (post-dismiss
cool-down of the offer or of any offer of its family, :attr:`Offer.family_key`), ``fatigue`` (too many
impressions without any action).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from features import lifecycle as lc
from features.decay import DAY, HOUR
from features.events import PAGE_TYPES, TIERS
from features.offers import CHANNELS, Offer
from features.projection import Context
from features.state import MemberState

RULES: tuple[str, ...] = (
    "inactive",
    "not_started",
    "expired",
    "tier",
    "paid_only",
    "region",
    "channel",
    "page_type",
    "birthday_month",
    "tenure",
    "lifecycle_stage",
    "days_since_order",
    "days_since_visit",
    "paid_renewal_window",
    "tier_gap",
    "points_expiring",
    "sold_out",
    "budget_exhausted",
    "claimed",
    "dismissed",
    "fatigue",
)
_RULE_INDEX = {rule: i for i, rule in enumerate(RULES)}

_INF = float("inf")
_NAN = float("nan")


def _bound(x: float | None, missing: float) -> float:
    return missing if x is None else x


@dataclass
class EligibilityTable:
    """Eligibility columns for a catalog (same order as the OfferTable built from the same offers), and
    the programme configuration the lifecycle rules read the state with: every caller of
    :func:`evaluate` (ranking, claims, the fairness guard) takes it from here, so they cannot disagree."""

    offers: list[Offer]
    lifecycle: lc.LifecycleConfig = lc.DEFAULT_CONFIG
    active: np.ndarray = field(init=False)
    valid_from: np.ndarray = field(init=False)
    valid_to: np.ndarray = field(init=False)
    tier_ok: np.ndarray = field(init=False)  # (n, len(TIERS)) bool
    paid_only: np.ndarray = field(init=False)
    channel_ok: np.ndarray = field(init=False)  # (n, len(CHANNELS))
    page_ok: np.ndarray = field(init=False)  # (n, len(PAGE_TYPES))
    birthday_only: np.ndarray = field(init=False)
    min_tenure_days: np.ndarray = field(init=False)
    inventory: np.ndarray = field(init=False)
    budget: np.ndarray = field(init=False)
    cost: np.ndarray = field(init=False)
    regions: dict[int, frozenset[str]] = field(init=False)
    max_impressions: np.ndarray = field(init=False)
    dismiss_cooldown_s: np.ndarray = field(init=False)
    claim_cooldown_s: np.ndarray = field(init=False)
    max_claims: np.ndarray = field(init=False)
    # Lifecycle rules: bounds are +-inf when unset, "within N days" is NaN when unset.
    stage_ok: np.ndarray = field(init=False)  # (n, len(STAGES)) bool
    order_days: np.ndarray = field(init=False)  # (n, 2) min, max
    visit_days: np.ndarray = field(init=False)  # (n, 2)
    paid_expiring_days: np.ndarray = field(init=False)
    paid_lapsed_days: np.ndarray = field(init=False)
    tier_gap: np.ndarray = field(init=False)  # (n, 2)
    tier_gap_set: np.ndarray = field(init=False)
    points_days: np.ndarray = field(init=False)
    points_min: np.ndarray = field(init=False)
    #: Whether any offer has a lifecycle rule (else the request skips those reads).
    any_lifecycle: bool = field(init=False)
    #: Family number per offer (offers with one :attr:`Offer.family_key` share it).
    family_idx: np.ndarray = field(init=False)
    #: Family number -> offer positions, for families of more than one offer.
    family_members: dict[int, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        offers = self.offers
        n = len(offers)
        self.active = np.array([o.active for o in offers], dtype=bool)
        self.valid_from = np.array(
            [
                o.eligibility.valid_from_ts if o.eligibility.valid_from_ts is not None else -_INF
                for o in offers
            ]
        ).reshape(n)
        self.valid_to = np.array(
            [o.eligibility.valid_to_ts if o.eligibility.valid_to_ts is not None else _INF for o in offers]
        ).reshape(n)
        self.tier_ok = np.array(
            [[(not o.eligibility.tiers) or t in o.eligibility.tiers for t in TIERS] for o in offers],
            dtype=bool,
        ).reshape(n, len(TIERS))
        self.paid_only = np.array([o.eligibility.paid_only for o in offers], dtype=bool)
        self.channel_ok = np.array(
            [[(not o.eligibility.channels) or c in o.eligibility.channels for c in CHANNELS] for o in offers],
            dtype=bool,
        ).reshape(n, len(CHANNELS))
        self.page_ok = np.array(
            [
                [(not o.eligibility.page_types) or p in o.eligibility.page_types for p in PAGE_TYPES]
                for o in offers
            ],
            dtype=bool,
        ).reshape(n, len(PAGE_TYPES))
        self.birthday_only = np.array([o.eligibility.birthday_month_only for o in offers], dtype=bool)
        self.min_tenure_days = np.array([o.eligibility.min_tenure_days for o in offers], dtype=np.float64)
        self.inventory = np.array([o.inventory if o.inventory is not None else _INF for o in offers]).reshape(
            n
        )
        self.budget = np.array([o.budget if o.budget is not None else _INF for o in offers]).reshape(n)
        self.cost = np.array([o.cost for o in offers], dtype=np.float64).reshape(n)
        self.regions = {
            i: frozenset(o.eligibility.regions) for i, o in enumerate(offers) if o.eligibility.regions
        }
        self.max_impressions = np.array(
            [o.caps.max_impressions_without_action for o in offers], dtype=np.int64
        )
        self.dismiss_cooldown_s = np.array([o.caps.cooldown_after_dismiss_hours * HOUR for o in offers])
        self.claim_cooldown_s = np.array([o.caps.cooldown_after_claim_hours * HOUR for o in offers])
        self.max_claims = np.array([o.caps.max_claims_per_member for o in offers], dtype=np.int64)
        el = [o.eligibility for o in offers]
        self.stage_ok = np.array(
            [[(not e.lifecycle_stages) or st in e.lifecycle_stages for st in lc.STAGES] for e in el],
            dtype=bool,
        ).reshape(n, len(lc.STAGES))
        self.order_days = np.array(
            [[_bound(e.min_days_since_order, -_INF), _bound(e.max_days_since_order, _INF)] for e in el]
        ).reshape(n, 2)
        self.visit_days = np.array(
            [[_bound(e.min_days_since_visit, -_INF), _bound(e.max_days_since_visit, _INF)] for e in el]
        ).reshape(n, 2)
        self.paid_expiring_days = np.array([_bound(e.paid_expiring_within_days, _NAN) for e in el]).reshape(n)
        self.paid_lapsed_days = np.array([_bound(e.paid_lapsed_within_days, _NAN) for e in el]).reshape(n)
        self.tier_gap = np.array(
            [[_bound(e.min_tier_gap, -_INF), _bound(e.max_tier_gap, _INF)] for e in el]
        ).reshape(n, 2)
        self.tier_gap_set = np.array(
            [e.min_tier_gap is not None or e.max_tier_gap is not None for e in el], dtype=bool
        )
        self.points_days = np.array([_bound(e.points_expiring_within_days, _NAN) for e in el]).reshape(n)
        self.points_min = np.array([e.min_points_expiring for e in el], dtype=np.int64)
        #: The distinct points windows (days) the offers use, each with its offers' mask.
        windows = sorted({float(d) for d in self.points_days.tolist() if d == d})  # d == d: not NaN
        self.points_windows = [(d, self.points_days == d) for d in windows]
        self.any_lifecycle = any(e.uses_lifecycle for e in el)
        families: dict[str, int] = {}
        self.family_idx = np.array(
            [families.setdefault(o.family_key, len(families)) for o in offers], dtype=np.int64
        ).reshape(n)
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(self.family_idx.tolist()):
            groups.setdefault(f, []).append(i)
        self.family_members = {f: np.array(ix) for f, ix in groups.items() if len(ix) > 1}


def evaluate(
    table: EligibilityTable,
    index: dict[str, int],
    state: MemberState,
    context: Context,
    now: float,
    claimed: np.ndarray | None = None,
    cost_used: np.ndarray | None = None,
) -> np.ndarray:
    """Reason code per offer: -1 when eligible, else the index in :data:`RULES` of the first failing rule.

    ``claimed`` and ``cost_used`` are per-offer arrays (inventory reserved so far, budget spent so far);
    missing means nothing used. ``sold_out``/``budget_exhausted`` mean "one more claim would exceed it",
    the same test the claim script (``infra.money_store``) makes atomically. The lifecycle rules read
    the state with the table's programme configuration (:attr:`EligibilityTable.lifecycle`).
    """
    n = len(table.offers)
    # Every failing rule's mask, in RULES order; written last to first below, so that where several
    # rules fail an offer the first one is the reason (one masked write per rule that fails anywhere).
    failed: list[tuple[int, np.ndarray]] = []

    def fail(rule: str, mask: np.ndarray) -> None:
        if mask.any():
            failed.append((_RULE_INDEX[rule], mask))

    fail("inactive", ~table.active)
    fail("not_started", table.valid_from > now)
    fail("expired", table.valid_to <= now)
    tier = TIERS.index(state.tier) if state.tier in TIERS else 0
    fail("tier", ~table.tier_ok[:, tier])
    if not lc.paid_active(state, now):
        fail("paid_only", table.paid_only)
    if table.regions:
        region_bad = np.zeros(n, dtype=bool)
        for i, allowed in table.regions.items():
            region_bad[i] = state.region not in allowed
        fail("region", region_bad)
    # A value outside the lists ("other": one the specification does not know) passes only offers
    # without that restriction: a restriction means "only these".
    if context.channel in CHANNELS:
        fail("channel", ~table.channel_ok[:, CHANNELS.index(context.channel)])
    else:
        fail("channel", ~np.all(table.channel_ok, axis=1))
    if context.page_type in PAGE_TYPES:
        fail("page_type", ~table.page_ok[:, PAGE_TYPES.index(context.page_type)])
    else:
        fail("page_type", ~np.all(table.page_ok, axis=1))
    month = datetime.fromtimestamp(now, UTC).month
    if state.birth_month != month:
        fail("birthday_month", table.birthday_only)
    joined = state.joined_ts or state.first_seen_ts
    tenure_days = (now - joined) / DAY if joined else 0.0
    fail("tenure", table.min_tenure_days > tenure_days)
    if table.any_lifecycle:
        _lifecycle_rules(table, state, now, table.lifecycle, fail)
    if claimed is not None:
        fail("sold_out", claimed >= table.inventory)
    if cost_used is not None:
        # Exhausted when one more claim would overrun it (the claim script's own test, in milli-units:
        # half a milli of slack so float sums of exact milli amounts agree with it).
        fail("budget_exhausted", cost_used + table.cost > table.budget + 5e-4)
    if state.offers:
        claimed_bad = np.zeros(n, dtype=bool)
        dismissed_bad = np.zeros(n, dtype=bool)
        fatigue_bad = np.zeros(n, dtype=bool)
        for offer_id, inter in state.offers.items():
            j = index.get(offer_id)
            if j is None:
                continue
            if inter.claims >= table.max_claims[j] or (
                inter.last_claim_ts and now - inter.last_claim_ts < table.claim_cooldown_s[j]
            ):
                claimed_bad[j] = True
            if inter.last_dismiss_ts and now - inter.last_dismiss_ts < table.dismiss_cooldown_s[j]:
                # The whole family cools down: a clone of a dismissed offer is the same offer to the
                # member. The dismissed offer's own cool-down applies to its family.
                clones = table.family_members.get(int(table.family_idx[j]))
                dismissed_bad[clones if clones is not None else j] = True
            if inter.impressions_since_action() >= table.max_impressions[j]:
                fatigue_bad[j] = True
        fail("claimed", claimed_bad)
        fail("dismissed", dismissed_bad)
        fail("fatigue", fatigue_bad)
    reason = np.full(n, -1, dtype=np.int64)
    for code, mask in reversed(failed):
        reason[mask] = code
    return reason


def _lifecycle_rules(
    table: EligibilityTable,
    state: MemberState,
    now: float,
    config: lc.LifecycleConfig,
    fail: Callable[[str, np.ndarray], None],
) -> None:
    fail("lifecycle_stage", ~table.stage_ok[:, lc.STAGES.index(lc.stage(state, now, config))])
    d_order = lc.days_since_order(state, now)
    fail("days_since_order", (d_order < table.order_days[:, 0]) | (d_order > table.order_days[:, 1]))
    d_visit = lc.days_since_visit(state, now)
    fail("days_since_visit", (d_visit < table.visit_days[:, 0]) | (d_visit > table.visit_days[:, 1]))
    left = lc.paid_days_left(state, now)
    lapsed = lc.paid_days_since_lapse(state, now)
    exp_days, lapse_days = table.paid_expiring_days, table.paid_lapsed_days
    renewal_set = ~np.isnan(exp_days) | ~np.isnan(lapse_days)
    with np.errstate(invalid="ignore"):  # NaN (unset) compares False: that side never qualifies
        expiring_ok = (left <= exp_days) if left is not None else np.zeros(len(exp_days), dtype=bool)
        lapsed_ok = (lapsed <= lapse_days) if lapsed is not None else np.zeros(len(exp_days), dtype=bool)
    fail("paid_renewal_window", renewal_set & ~(expiring_ok | lapsed_ok))
    if table.tier_gap_set.any():
        gap = lc.tier_progress(state, now, config.tiers).gap
        if gap is None:
            fail("tier_gap", table.tier_gap_set)
        else:
            fail(
                "tier_gap", table.tier_gap_set & ((gap < table.tier_gap[:, 0]) | (gap > table.tier_gap[:, 1]))
            )
    if table.points_windows:
        expiring = np.full(len(table.points_days), np.iinfo(np.int64).max, dtype=np.int64)  # unset: passes
        for days, offers in table.points_windows:
            expiring[offers] = lc.points_expiring_within(state, now, days)
        fail("points_expiring", expiring < table.points_min)

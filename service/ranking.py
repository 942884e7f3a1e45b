"""The ranking pipeline, pure apart from the ONNX call: no web framework, no Redis, no clock.

    candidates (the catalog snapshot)
      -> eligibility (features.eligibility.evaluate: a reason code per offer)
      -> feature rows (features.projection.rows; the model only sees eligible rows)
      -> ONNX scores p(claim | shown)                       [personalised modes]
         or the offer's smoothed prior click rate            [non-personalised / fallback]
      -> value-aware score = p * (1 + value_weight * value_norm) * pacing
         (expected value to the member, damped for offers spending their budget ahead of schedule)
      -> slate rules: pinned first; at most ``max_per_category`` per category; at least
         ``min_kinds`` kinds (coupon / benefit / consult) when the eligible set has them
      -> top-k, each with reason codes and a sentence, and its propensity (probability of being shown
         at that position under epsilon-greedy exploration; 1.0 when exploration is off).

Reasons are read off the feature row that the model scored (what the member did, the page, the offer),
never off sensitive attributes: no age, no gender, and health browsing is never quoted back.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.eligibility import RULES, evaluate
from features.events import TIERS
from features.offers import CATEGORIES, Offer
from features.projection import FEATURE_INDEX, OFFER_FEATURES, Context, rows
from features.state import MemberState
from service.catalog import CatalogSnapshot
from service.model import LoadedModel


class Mode(enum.StrEnum):
    PERSONALISED = "personalised"
    COLD_START = "cold_start"  # unknown member: the model scores an empty state
    NON_PERSONALISED = "non_personalised"  # consent off: priors only, nothing learned from the member
    FALLBACK = "fallback"  # degraded: Redis or model unavailable


@dataclass(frozen=True)
class Policy:
    max_per_category: int = 2
    min_kinds: int = 2
    value_weight: float = 0.3
    epsilon: float = 0.0


@dataclass
class RankedOffer:
    offer_id: str
    kind: str
    subtype: str
    title: str
    category: str | None
    value: float
    score: float
    position: int
    propensity: float
    reasons: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id,
            "kind": self.kind,
            "subtype": self.subtype,
            "title": self.title,
            "category": self.category,
            "value": self.value,
            "score": self.score,
            "position": self.position,
            "propensity": self.propensity,
            "reasons": self.reasons,
        }


@dataclass
class Ranking:
    items: list[RankedOffer]
    candidates: int
    eligible: int
    excluded: list[dict[str, str]] | None = None
    #: stage -> milliseconds (features, model, rerank)
    timings_ms: dict[str, float] = field(default_factory=dict)


EXCLUSION_SENTENCES: dict[str, str] = {
    "inactive": "The offer has been retired.",
    "not_started": "The offer's campaign has not started yet.",
    "expired": "The offer's campaign has ended.",
    "tier": "The offer is for a higher membership tier.",
    "paid_only": "The offer is for paid members only.",
    "region": "The offer is not available in your region.",
    "channel": "The offer is not available on this channel.",
    "page_type": "The offer is not shown on this kind of page.",
    "birthday_month": "The offer is only shown in your birthday month.",
    "tenure": "The offer needs a longer membership.",
    "sold_out": "The offer is sold out.",
    "budget_exhausted": "The offer's budget is used up.",
    "claimed": "You have already claimed this offer (limit or waiting period).",
    "dismissed": "You dismissed this offer recently.",
    "fatigue": "You have seen this offer several times recently.",
}
assert set(EXCLUSION_SENTENCES) == set(RULES)

#: Categories whose browsing is never quoted back to the member (health data is sensitive).
SENSITIVE_CATEGORIES = frozenset({"health"})

_F = FEATURE_INDEX
_NO_CATEGORY = len(CATEGORIES)
#: Column of OfferTable.static holding the smoothed click-rate prior (the non-personalised score).
_PRIOR_CTR = OFFER_FEATURES.index("offer_prior_ctr")


def rank(
    snap: CatalogSnapshot,
    state: MemberState,
    context: Context,
    now: float,
    limit: int,
    *,
    model: LoadedModel | None,
    mode: Mode,
    policy: Policy,
    explain: bool = False,
    rng: np.random.Generator | None = None,
) -> Ranking:
    """Rank the snapshot's offers for one member. ``model`` is used only in the personalised modes."""
    t0 = time.perf_counter()
    reason = evaluate(snap.elig, snap.table.index, state, context, now, snap.claimed, snap.cost_used)
    eligible = np.flatnonzero(reason < 0)
    personal = mode in (Mode.PERSONALISED, Mode.COLD_START) and model is not None
    x: np.ndarray | None = None
    if personal and len(eligible):
        # Rows for the whole table then a gather: cheaper than building a sub-table per request, and the
        # expensive part (the model) still only sees eligible rows.
        x = rows(state, snap.table, context, now)[eligible]
    t1 = time.perf_counter()
    if x is not None and model is not None:
        base = model.predict(x).astype(np.float64)
    else:
        base = snap.table.static[eligible, _PRIOR_CTR].astype(np.float64)
    t2 = time.perf_counter()
    score = base * (1.0 + policy.value_weight * snap.value_norm[eligible]) * snap.pacing[eligible]
    picks = _slate(snap, eligible, score, limit, policy, rng)
    items = []
    for pos, (j, prop) in enumerate(picks):
        i = int(eligible[j])
        o = snap.offers[i]
        row = x[j] if x is not None else None
        items.append(
            RankedOffer(
                offer_id=o.offer_id,
                kind=o.kind,
                subtype=o.subtype,
                title=o.title,
                category=o.category,
                value=o.value,
                score=round(float(score[j]), 6),
                position=pos,
                propensity=round(prop, 6),
                reasons=reasons_for(o, row, state if personal else None, snap, i, context),
            )
        )
    excluded = None
    if explain:
        excluded = [
            {
                "offer_id": snap.offers[i].offer_id,
                "reason": RULES[r],
                "text": EXCLUSION_SENTENCES[RULES[r]],
            }
            for i, r in enumerate(reason.tolist())
            if r >= 0
        ]
    t3 = time.perf_counter()
    return Ranking(
        items=items,
        candidates=len(snap),
        eligible=len(eligible),
        excluded=excluded,
        timings_ms={"features": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3, "rerank": (t3 - t2) * 1e3},
    )


def _slate(
    snap: CatalogSnapshot,
    eligible: np.ndarray,
    score: np.ndarray,
    limit: int,
    policy: Policy,
    rng: np.random.Generator | None,
) -> list[tuple[int, float]]:
    """Greedy slate: (index into ``eligible``, propensity) per position."""
    n = len(eligible)
    if n == 0:
        return []
    pinned = snap.pinned[eligible]
    kinds = snap.table.kind_idx[eligible]
    cats = snap.table.category_idx[eligible]
    # Pinned first, then by score; stable on the catalog order (offer id) for ties.
    order = np.lexsort((-score, ~pinned)).tolist()
    limit = min(limit, n)
    need_kinds = min(policy.min_kinds, limit, len(set(kinds.tolist())))
    kinds_l, cats_l, pinned_l = kinds.tolist(), cats.tolist(), pinned.tolist()
    kinds_in: set[int] = set()
    per_cat: dict[int, int] = {}
    picks: list[tuple[int, float]] = []
    taken: set[int] = set()

    def allowed(j: int) -> bool:
        if j in taken:
            return False
        if pinned_l[j]:
            return True  # pinned offers bypass the mix and category rules (they still count toward them)
        c = cats_l[j]
        if c != _NO_CATEGORY and per_cat.get(c, 0) >= policy.max_per_category:
            return False
        missing = need_kinds - len(kinds_in)
        return not (missing > 0 and missing >= limit - len(picks) and kinds_l[j] in kinds_in)

    explore = policy.epsilon > 0.0 and rng is not None
    while len(picks) < limit:
        best = next((j for j in order if allowed(j)), None)
        if best is None:
            break
        chosen, prop = best, 1.0
        if explore and not pinned_l[best]:
            valid = [j for j in order if allowed(j) and not pinned_l[j]]
            assert rng is not None
            if rng.random() < policy.epsilon:
                chosen = valid[int(rng.integers(len(valid)))]
            # P(chosen) under epsilon-greedy: the greedy pick w.p. 1-eps, plus a uniform draw w.p. eps.
            prop = (1.0 - policy.epsilon) * (chosen == best) + policy.epsilon / len(valid)
        picks.append((chosen, prop))
        taken.add(chosen)
        kinds_in.add(kinds_l[chosen])
        c = cats_l[chosen]
        if c != _NO_CATEGORY:
            per_cat[c] = per_cat.get(c, 0) + 1
    return picks


def _r(code: str, text: str) -> dict[str, str]:
    return {"code": code, "text": text}


def reasons_for(
    offer: Offer,
    row: np.ndarray | None,
    state: MemberState | None,
    snap: CatalogSnapshot,
    i: int,
    context: Context,
    max_reasons: int = 3,
) -> list[dict[str, str]]:
    """Reason codes and sentences for one shown offer, strongest first.

    ``row`` and ``state`` are None in non-personalised modes: then only offer and page facts are used.
    """
    out: list[dict[str, str]] = []
    cat = offer.category
    if offer.pinned:
        out.append(_r("featured", "Featured offer."))
    if context.category is not None and cat == context.category:
        out.append(_r("page_context", f"Matches the {cat} page you are viewing."))
    if row is not None and state is not None:
        out.extend(_personal_reasons(offer, row, state))
    if snap.value_norm[i] >= 0.5:
        out.append(_r("high_value", f"A high-value offer, worth {offer.value:.0f}."))
    if offer.inventory is not None and snap.claimed[i] >= 0.8 * offer.inventory:
        out.append(_r("limited_quantity", "Limited quantity: almost gone."))
    if not out:
        out.append(_r("popular", "Popular with members."))
    return out[:max_reasons]


def _personal_reasons(offer: Offer, row: np.ndarray, state: MemberState) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    cat = offer.category
    avg_basket = float(row[_F["avg_basket"]])
    if row[_F["birthday_month_now"]] >= 1.0 and (
        offer.eligibility.birthday_month_only or offer.subtype == "birthday_gift"
    ):
        out.append(_r("birthday_month", "It is your birthday month."))
    if cat is not None and cat not in SENSITIVE_CATEGORIES:
        if row[_F["cat_interest_7d"]] >= 1.0:
            out.append(_r("category_interest", f"You browsed {cat} products this week."))
        elif row[_F["cat_orders_30d"]] >= 1.0:
            out.append(_r("category_purchases", f"You often buy {cat} products."))
    if offer.subtype in ("free_shipping", "shipping"):
        if offer.threshold > 0 and avg_basket >= offer.threshold:
            out.append(
                _r(
                    "free_shipping_basket",
                    f"Free shipping: your basket usually exceeds the {offer.threshold:.0f} threshold.",
                )
            )
        elif row[_F["orders_30d"]] >= 2.0:
            out.append(_r("frequent_orders", "Free shipping: you order often."))
    elif offer.threshold > 0 and avg_basket >= 0.8 * offer.threshold:
        out.append(
            _r(
                "threshold_within_reach",
                f"Your usual basket is close to the {offer.threshold:.0f} threshold.",
            )
        )
    if offer.eligibility.tiers and state.tier in offer.eligibility.tiers and state.tier in TIERS[1:]:
        out.append(_r("tier_benefit", f"A benefit of your {state.tier} membership."))
    if offer.eligibility.paid_only and state.paid_member:
        out.append(_r("paid_membership", "Included with your paid membership."))
    if offer.kind == "coupon" and (
        row[_F["coupon_order_share"]] >= 0.3 or row[_F["coupon_claims_30d"]] >= 2.0
    ):
        out.append(_r("coupon_habit", "You often use coupons."))
    if offer.kind == "consult" and row[_F["consults_30d"]] > 0.0:
        out.append(_r("consult_history", "You have booked consultations before."))
    return out

"""The online fairness guard against "big-data price discrimination" (大数据杀熟).

Rule: never offer a member a strictly worse version of an offer family than a lower membership tier
would be offered in the same context. Versions of one family (same :func:`offer_family`) are compared
by value and threshold: ``a`` is strictly worse than ``b`` when ``a.value <= b.value`` and
``a.threshold >= b.threshold`` with at least one of the two strict (a smaller discount, or the same
discount for a bigger spend).

"Would be offered" is read off the catalogue and the eligibility rules, not off the model: a version is
open to a lower tier in this context when that tier passes its tier rule and every other rule holds for
this member (same state, page, channel and time). A model-based reading (re-scoring the member as each
lower tier) would cost a model call per tier; the catalogue reading is a few vector operations and is
stricter: whenever the better version is open to a lower tier, the worse one is never shown to a higher
tier, whatever the model prefers. Members of the lowest tier are never restricted.

Blocked offers leave the candidate set before scoring (so the slate fills with the next best), are
reported by ``explain=true`` with the exclusion code ``fairness_guard``, and are counted
(``benefits_fairness_guard_blocked_total``).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np

from features.eligibility import RULES, evaluate
from features.events import TIERS
from features.offers import Offer
from features.projection import Context
from features.state import MemberState
from service.catalog import CatalogSnapshot

_TIER_RULE = RULES.index("tier")
_EMPTY = np.zeros(0, dtype=np.int64)


def offer_family(offer: Offer) -> str:
    """The offer's family (its dedupe key): the catalogue's ``family`` when it has one, else
    kind + subtype + category."""
    family = getattr(offer, "family", None)
    if family:
        return str(family)
    return f"{offer.kind}:{offer.subtype}:{offer.category or '-'}"


def strictly_worse(a: Offer, b: Offer) -> bool:
    """``a`` is a strictly worse version than ``b`` (lower value or higher threshold, not better on the
    other)."""
    return (
        a.value <= b.value and a.threshold >= b.threshold and (a.value < b.value or a.threshold > b.threshold)
    )


@dataclass(frozen=True)
class Dominance:
    """Per catalogue: pairs (worse, better) of versions of one family, and tier openness."""

    worse: np.ndarray  # offer index of the worse version, one entry per pair
    better: np.ndarray  # offer index of the strictly better version of the same family
    #: (n, len(TIERS)): open_below[i, t] = offer i's tier rule admits some tier lower than t.
    open_below: np.ndarray


def dominance(offers: list[Offer], tier_ok: np.ndarray) -> Dominance:
    by_family: dict[str, list[int]] = {}
    for i, o in enumerate(offers):
        by_family.setdefault(offer_family(o), []).append(i)
    worse: list[int] = []
    better: list[int] = []
    for members in by_family.values():
        if len(members) < 2:
            continue
        for i in members:
            for j in members:
                if i != j and strictly_worse(offers[i], offers[j]):
                    worse.append(i)
                    better.append(j)
    n = len(offers)
    open_below = np.zeros((n, len(TIERS)), dtype=bool)
    if n:
        # Tier t's "lower tiers" are 0..t-1: a running OR over the tier columns, shifted by one.
        open_below[:, 1:] = np.logical_or.accumulate(tier_ok, axis=1)[:, :-1]
    return Dominance(np.asarray(worse, dtype=np.int64), np.asarray(better, dtype=np.int64), open_below)


#: One cached table per catalogue snapshot (snapshots are immutable and replaced whole).
_cache: tuple[CatalogSnapshot, Dominance] | None = None


def _dominance_of(snap: CatalogSnapshot) -> Dominance:
    global _cache
    cached = _cache
    if cached is not None and cached[0] is snap:
        return cached[1]
    d = dominance(snap.offers, snap.elig.tier_ok)
    _cache = (snap, d)
    return d


def blocked(
    snap: CatalogSnapshot,
    reason: np.ndarray,
    eligible: np.ndarray,
    state: MemberState,
    context: Context,
    now: float,
) -> np.ndarray:
    """Indices (into the catalogue) of eligible offers the guard withholds from this member, sorted."""
    tier = TIERS.index(state.tier) if state.tier in TIERS else 0
    if tier == 0 or len(eligible) == 0:
        return _EMPTY
    dom = _dominance_of(snap)
    if len(dom.worse) == 0:
        return _EMPTY
    worse_ok = reason[dom.worse] < 0  # the worse version would be shown to this member
    if not worse_ok.any():
        return _EMPTY
    better = dom.better
    open_lower = dom.open_below[better, tier]
    # A better version eligible for this member and open to a lower tier: a lower tier gets it here.
    offered_lower = open_lower & (reason[better] < 0)
    # One this member is refused only by the tier rule: a lower tier gets it when the other rules hold
    # for that tier too (paid, region, caps ... are the member's own); evaluated only when it matters.
    tier_only = worse_ok & open_lower & (reason[better] == _TIER_RULE)
    if tier_only.any():
        lower_ok = np.zeros(len(reason), dtype=bool)
        for t in range(tier):
            as_lower = msgspec.structs.replace(state, tier=TIERS[t])
            r = evaluate(snap.elig, snap.table.index, as_lower, context, now, snap.claimed, snap.cost_used)
            lower_ok |= (r < 0) & snap.elig.tier_ok[:, t]
        offered_lower |= tier_only & lower_ok[better]
    hit = worse_ok & offered_lower
    if not hit.any():
        return _EMPTY
    return np.unique(dom.worse[hit])

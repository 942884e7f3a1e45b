"""What one slate offers a member, as numbers the audit compares between groups.

Per slate (the top ``k`` offers one member was, or would be, shown in one context):

- ``offered_value``: the mean face value of the slate's coupons (currency; NaN when it has none). The
  issue's probe ("gold members' top-5 coupons were worth less on average") is this number.
- ``discount_depth``: the mean ``value / threshold`` of the slate's coupons that have a threshold (NaN
  when none has): a bigger coupon for a bigger spend is not a better deal, this says how deep it is.
- ``exposure_<kind>``: the share of the slate's slots held by each offer kind (coupon, benefit,
  consult; NaN for an empty slate).

And between two slates of the same member and context (counterfactual pairs): offer families both were
shown, and those where one got a **strictly worse version** (lower value for no lower threshold, or a
higher threshold for no more value) — the "same offer, worse price" form of 大数据杀熟 the online guard
(``service.fairness_guard``) forbids. Families are the guard's: the catalogue's ``family`` when set,
else kind + subtype + category (versions that differ in value or threshold are one family). The two
definitions are kept equal to the guard's by a test (training may not import the service).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from features.offers import OFFER_KINDS, Offer

#: The per-slate measures, in column order.
METRICS: tuple[str, ...] = ("offered_value", "discount_depth", *(f"exposure_{k}" for k in OFFER_KINDS))
#: Measures where more is better for the member (judged by a ratio); the rest are shares (a difference).
VALUE_METRICS: tuple[str, ...] = ("offered_value", "discount_depth")


@dataclass(frozen=True)
class OfferFacts:
    """What the audit needs of one offer."""

    kind: str
    value: float
    threshold: float
    version_family: str


def version_family(offer: Offer) -> str:
    """The offer's family of versions, as the online guard reads it (``service.fairness_guard``)."""
    family = getattr(offer, "family", None)
    if family:
        return str(family)
    return f"{offer.kind}:{offer.subtype}:{offer.category or '-'}"


def strictly_worse(a: OfferFacts, b: OfferFacts) -> bool:
    """``a`` is a strictly worse version than ``b``: not more value, not a lower threshold, and worse on
    at least one of the two."""
    return (
        a.value <= b.value and a.threshold >= b.threshold and (a.value < b.value or a.threshold > b.threshold)
    )


def catalogue_facts(offers: Iterable[Offer]) -> dict[str, OfferFacts]:
    return {
        o.offer_id: OfferFacts(o.kind, float(o.value), float(o.threshold), version_family(o)) for o in offers
    }


def slate_metrics(offer_ids: Sequence[str], facts: Mapping[str, OfferFacts]) -> tuple[np.ndarray, int]:
    """(one value per :data:`METRICS`, how many of ``offer_ids`` the catalogue does not know).

    Offers the catalogue does not know are left out of every measure (a logged slate from an older
    catalogue version can name retired offers; the caller counts and reports them)."""
    items = [facts[o] for o in offer_ids if o in facts]
    unknown = len(offer_ids) - len(items)
    out = np.full(len(METRICS), np.nan)
    coupons = [f for f in items if f.kind == "coupon"]
    if coupons:
        out[0] = sum(f.value for f in coupons) / len(coupons)
        deep = [f.value / f.threshold for f in coupons if f.threshold > 0]
        if deep:
            out[1] = sum(deep) / len(deep)
    if items:
        for j, kind in enumerate(OFFER_KINDS):
            out[2 + j] = sum(f.kind == kind for f in items) / len(items)
    return out, unknown


@dataclass
class VersionCount:
    """Offer families two groups' slates both held, and those where the first got a worse version."""

    matched: int = 0
    worse: int = 0
    #: ... and those where the first got a strictly better version (the other direction, for context).
    better: int = 0
    #: Sum over matched families of (first group's best value - second group's best value).
    value_diff: float = 0.0

    def add(self, other: VersionCount) -> None:
        self.matched += other.matched
        self.worse += other.worse
        self.better += other.better
        self.value_diff += other.value_diff

    @property
    def net(self) -> float:
        """(worse - better) / matched: the direction that is not chance trading both ways."""
        return (self.worse - self.better) / self.matched if self.matched else math.nan


def worse_versions(
    first: Sequence[str], second: Sequence[str], facts: Mapping[str, OfferFacts]
) -> VersionCount:
    """Families both slates hold; a family counts as worse when a version only ``first`` was shown is
    strictly worse than a version only ``second`` was shown (versions both were shown are no gap)."""
    a: dict[str, dict[str, OfferFacts]] = {}
    b: dict[str, dict[str, OfferFacts]] = {}
    for ids, into in ((first, a), (second, b)):
        for o in ids:
            f = facts.get(o)
            if f is not None:
                into.setdefault(f.version_family, {})[o] = f
    out = VersionCount()
    for fam, mine in a.items():
        theirs = b.get(fam)
        if not theirs:
            continue
        out.matched += 1
        only_mine = [f for o, f in mine.items() if o not in theirs]
        only_theirs = [f for o, f in theirs.items() if o not in mine]
        out.worse += any(strictly_worse(x, y) for x in only_mine for y in only_theirs)
        out.better += any(strictly_worse(y, x) for x in only_mine for y in only_theirs)
        out.value_diff += max(x.value for x in mine.values()) - max(y.value for y in theirs.values())
    return out

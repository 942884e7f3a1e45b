"""A deterministic demo catalog of coupons, benefits and consult offers (about 200 by default).

Used by the demo, the simulator, tests and benchmarks. Pure: the campaign window is given, never read
from a clock.

Every catalog size holds the benefits, the consults and the membership programme's lifecycle offers
(:func:`lifecycle_offers`: wake-up coupons, renewal offers, a tier-progress nudge, a points-expiry offer,
a welcome pack; the birthday gift is one of the benefits), each with its family; coupons fill the rest.
"""

from __future__ import annotations

import random

from features.decay import DAY
from features.offers import CATEGORIES, SUBTYPES, Caps, Eligibility, Offer

_SHOP_CATEGORIES = [c for c in CATEGORIES if c != "other"]

_BENEFIT_TITLES = {
    "free_shipping": "Free shipping for a month",
    "priority_delivery": "Priority delivery",
    "birthday_gift": "Birthday gift",
    "partner_perk": "Video-streaming VIP (partner perk)",
    "dedicated_service": "Dedicated customer service",
    "home_pickup_returns": "Home pickup for returns",
    "points_multiplier": "Double points week",
}
_CONSULT_TITLES = {
    "health": "Health consultation",
    "nutrition": "Nutrition consult",
    "beauty": "Beauty consult",
    "stylist": "Dedicated stylist session",
    "financial_planning": "Financial planning session",
}
_CONSULT_CATEGORY = {"health": "health", "nutrition": "health", "beauty": "beauty", "stylist": "fashion"}

#: The lifecycle offers' families (:attr:`Offer.family`).
LIFECYCLE_FAMILIES: tuple[str, ...] = (
    "wake_up",
    "welcome",
    "renewal",
    "tier_nudge",
    "points_expiry",
    "birthday",
)
#: One claim per member for a lifecycle offer, and no second one for a year.
_ONCE = Caps(max_claims_per_member=1, cooldown_after_claim_hours=24 * 365)


def lifecycle_offers() -> list[Offer]:
    """The programme's lifecycle pushes, each eligible only where its lifecycle rule holds (no campaign
    window: they run all year). The reasons (``service.reasons``) say why: "Welcome back.", "Your PLUS
    membership ends in 5 days.", "Spend 100 more to reach Gold.", "300 of your points expire this month."
    """

    def offer(offer_id: str, family: str, title: str, elig: Eligibility, **kw: object) -> Offer:
        fields: dict[str, object] = {"kind": "coupon", "subtype": "no_threshold", "caps": _ONCE, **kw}
        return Offer(
            offer_id=offer_id,
            family=family,
            title=title,
            eligibility=elig,
            **fields,  # type: ignore[arg-type]
        )

    return [
        offer("wake-up-coupon", "wake_up", "We miss you: 20 off, no minimum",
              Eligibility(lifecycle_stages=["silent"]), value=20.0, cost=12.0),
        offer("wake-up-threshold", "wake_up", "Welcome back: 30 off over 99",
              Eligibility(lifecycle_stages=["lapsing", "returning"], min_days_since_order=14),
              subtype="threshold", value=30.0, threshold=99.0, cost=18.0),
        offer("welcome-pack", "welcome", "Welcome pack: 15 off your first orders",
              Eligibility(lifecycle_stages=["new"]), value=15.0, cost=9.0),
        offer("renewal-offer", "renewal", "Renew your membership: 30 off the fee",
              Eligibility(paid_expiring_within_days=7), value=30.0, cost=15.0),
        offer("renewal-winback", "renewal", "Come back to your membership: 40 off the fee",
              Eligibility(paid_lapsed_within_days=30), value=40.0, cost=20.0),
        offer("tier-progress-nudge", "tier_nudge", "15 off over 99 towards your next tier",
              Eligibility(min_tier_gap=1, max_tier_gap=300), subtype="threshold", value=15.0,
              threshold=99.0, cost=9.0),
        offer("points-expiry", "points_expiry", "Turn expiring points into 10 off",
              Eligibility(points_expiring_within_days=30, min_points_expiring=100), value=10.0, cost=6.0),
    ]  # fmt: skip


def demo_catalog(start_ts: float, n_offers: int = 200, seed: int = 7, days: float = 60.0) -> list[Offer]:
    """``n_offers`` valid offers whose campaigns run ``days`` days from ``start_ts``."""
    rng = random.Random(seed)
    end_ts = start_ts + days * DAY
    offers: list[Offer] = []

    # Benefits and consults first: a fixed, small set that every catalog size contains.
    for subtype, title in _BENEFIT_TITLES.items():
        elig = Eligibility()
        if subtype in ("priority_delivery", "dedicated_service"):
            elig = Eligibility(tiers=["gold", "diamond"])
        elif subtype == "partner_perk":
            elig = Eligibility(paid_only=True)
        elif subtype == "birthday_gift":
            elig = Eligibility(birthday_month_only=True)
        offers.append(
            Offer(
                offer_id=f"benefit-{subtype}",
                kind="benefit",
                subtype=subtype,
                title=title,
                value=rng.choice([10.0, 15.0, 20.0, 30.0]),
                threshold=59.0 if subtype == "free_shipping" else 0.0,
                cost=rng.choice([2.0, 3.0, 5.0]),
                eligibility=elig,
                caps=Caps(max_claims_per_member=1, cooldown_after_claim_hours=24 * 30),
                family="birthday" if subtype == "birthday_gift" else None,
            )
        )
    for subtype, title in _CONSULT_TITLES.items():
        offers.append(
            Offer(
                offer_id=f"consult-{subtype}",
                kind="consult",
                subtype=subtype,
                title=title,
                category=_CONSULT_CATEGORY.get(subtype),
                value=rng.choice([30.0, 50.0, 80.0]),
                cost=rng.choice([8.0, 12.0, 20.0]),
                eligibility=Eligibility(tiers=["silver", "gold", "diamond"])
                if subtype == "financial_planning"
                else Eligibility(),
            )
        )

    offers.extend(lifecycle_offers())
    i = 0
    while len(offers) < n_offers:
        subtype = SUBTYPES["coupon"][i % len(SUBTYPES["coupon"])]
        category = _SHOP_CATEGORIES[(i // len(SUBTYPES["coupon"])) % len(_SHOP_CATEGORIES)]
        threshold = rng.choice([99.0, 149.0, 199.0, 299.0]) if subtype in ("threshold", "category") else 0.0
        value = (
            round(threshold * rng.uniform(0.08, 0.2), 0) if threshold else rng.choice([3.0, 5.0, 8.0, 10.0])
        )
        elig = Eligibility(
            tiers=rng.choice([[], [], [], ["silver", "gold", "diamond"], ["gold", "diamond"]]),
            page_types=rng.choice([[], [], [], ["home", "category", "product", "search", "cart"]]),
            valid_from_ts=start_ts,
            valid_to_ts=end_ts,
        )
        offers.append(
            Offer(
                offer_id=f"coupon-{category}-{subtype}-{i:03d}",
                kind="coupon",
                subtype=subtype,
                title=_coupon_title(subtype, category, value, threshold),
                category=None if subtype in ("no_threshold", "shipping") else category,
                value=value,
                threshold=threshold,
                cost=value * 0.6,
                inventory=rng.choice([500, 1000, 2000]) if subtype == "limited" else None,
                budget=value * 0.6 * rng.choice([2000, 5000, 20000]),
                campaign_start_ts=start_ts,
                campaign_end_ts=end_ts,
                eligibility=elig,
            )
        )
        i += 1
    return offers[:n_offers]


def _coupon_title(subtype: str, category: str, value: float, threshold: float) -> str:
    if subtype == "threshold":
        return f"Spend {threshold:.0f} save {value:.0f} on {category}"
    if subtype == "category":
        return f"{value:.0f} off {category} over {threshold:.0f}"
    if subtype == "shipping":
        return "Free shipping coupon"
    if subtype == "limited":
        return f"Limited: first members get {value:.0f} off {category}"
    return f"{value:.0f} off, no minimum"

"""The offer model: coupons, membership benefits and consult offers, all ranked alike.

An :class:`Offer` is what the catalog stores and the admin API accepts. It is validated once, when it
enters the catalog; the request path works on the column arrays of :class:`features.projection.OfferTable`
built from a list of offers, never on these objects.
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.events import PAGE_TYPES, TIERS, PageType, Tier

OfferKind = Literal["coupon", "benefit", "consult"]
OFFER_KINDS: tuple[str, ...] = OfferKind.__args__  # type: ignore[attr-defined]

#: The demo shop's subtypes per kind and categories (:data:`features.taxonomy.DEMO_TAXONOMY`). They
#: are the default, not a fixed list: an operator's catalogue declares its own taxonomy, and offers are
#: checked against it where they enter the catalogue (:meth:`features.taxonomy.Taxonomy.check`).
SUBTYPES: dict[str, tuple[str, ...]] = {
    "coupon": ("threshold", "no_threshold", "shipping", "category", "limited"),
    "benefit": (
        "free_shipping",
        "priority_delivery",
        "birthday_gift",
        "partner_perk",
        "dedicated_service",
        "home_pickup_returns",
        "points_multiplier",
    ),
    "consult": ("health", "nutrition", "beauty", "stylist", "financial_planning"),
}
ALL_SUBTYPES: tuple[str, ...] = tuple(s for k in OFFER_KINDS for s in SUBTYPES[k])

CATEGORIES: tuple[str, ...] = (
    "baby",
    "beauty",
    "fashion",
    "electronics",
    "grocery",
    "health",
    "home",
    "sports",
    "books",
    "pets",
    "toys",
    "outdoor",
    "other",
)
CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORIES)}

Channel = Literal["app", "web", "mini_program"]
CHANNELS: tuple[str, ...] = Channel.__args__  # type: ignore[attr-defined]

OfferId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]

#: Lifecycle stages (the same list as ``features.lifecycle.STAGES``, which reads them off the state).
LifecycleStage = Literal["new", "active", "silent", "lapsing", "returning"]
_DaysBound = Annotated[float, Field(ge=0, le=3650)] | None


class Eligibility(BaseModel):
    """Who may see the offer, where and when. Empty lists mean "no restriction"."""

    # NaN/inf would slip through every comparison (valid_to_ts < now is False for NaN): refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tiers: list[Tier] = []
    paid_only: bool = False
    regions: list[Annotated[str, Field(max_length=32)]] = []
    channels: list[Channel] = []
    page_types: list[PageType] = []
    birthday_month_only: bool = False
    min_tenure_days: Annotated[float, Field(ge=0)] = 0.0
    valid_from_ts: float | None = None
    valid_to_ts: float | None = None
    # Lifecycle rules (issue 19), read off the state at request time by ``features.lifecycle``.
    #: The member's lifecycle stage is one of these (empty: any).
    lifecycle_stages: list[LifecycleStage] = []
    #: Days since the member's last order / last visit within [min, max] (None: unbounded). A member who
    #: never ordered (visited) counts as 365 days.
    min_days_since_order: _DaysBound = None
    max_days_since_order: _DaysBound = None
    min_days_since_visit: _DaysBound = None
    max_days_since_visit: _DaysBound = None
    #: A renewal audience: a paid membership that ends within N days, or (the second field) one that
    #: lapsed within the last N days. With both set, either qualifies.
    paid_expiring_within_days: _DaysBound = None
    paid_lapsed_within_days: _DaysBound = None
    #: Growth value still missing to the member's next tier, within [min, max] (a member at the top tier
    #: has no gap and fails the rule).
    min_tier_gap: Annotated[float, Field(ge=0, le=1e9)] | None = None
    max_tier_gap: Annotated[float, Field(ge=0, le=1e9)] | None = None
    #: At least ``min_points_expiring`` points expire within N days.
    points_expiring_within_days: _DaysBound = None
    min_points_expiring: Annotated[int, Field(ge=1, le=10**9)] = 1

    @model_validator(mode="after")
    def _window(self) -> Eligibility:
        if (
            self.valid_from_ts is not None
            and self.valid_to_ts is not None
            and self.valid_to_ts <= self.valid_from_ts
        ):
            raise ValueError("valid_to_ts must be after valid_from_ts")
        for lo, hi in (
            ("min_days_since_order", "max_days_since_order"),
            ("min_days_since_visit", "max_days_since_visit"),
            ("min_tier_gap", "max_tier_gap"),
        ):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and b < a:
                raise ValueError(f"{hi} must be at least {lo}")
        return self

    @functools.cached_property  # the model is frozen; read per shown offer on the request path
    def uses_lifecycle(self) -> bool:
        """True when any lifecycle rule is set (the ranker evaluates those offers one by one)."""
        return bool(
            self.lifecycle_stages
            or self.paid_expiring_within_days is not None
            or self.paid_lapsed_within_days is not None
            or self.points_expiring_within_days is not None
            or any(
                getattr(self, f) is not None
                for f in (
                    "min_days_since_order",
                    "max_days_since_order",
                    "min_days_since_visit",
                    "max_days_since_visit",
                    "min_tier_gap",
                    "max_tier_gap",
                )
            )
        )


class Caps(BaseModel):
    """Per-member frequency caps and cool-downs."""

    # NaN/inf would slip through every comparison (valid_to_ts < now is False for NaN): refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_impressions_without_action: Annotated[int, Field(ge=1, le=1000)] = 6
    cooldown_after_dismiss_hours: Annotated[float, Field(ge=0, le=24 * 365)] = 72.0
    cooldown_after_claim_hours: Annotated[float, Field(ge=0, le=24 * 365)] = 24.0 * 30
    max_claims_per_member: Annotated[int, Field(ge=1, le=1000)] = 1


class Offer(BaseModel):
    """One rankable offer."""

    # NaN/inf would slip through every comparison (valid_to_ts < now is False for NaN): refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    offer_id: OfferId
    kind: OfferKind
    subtype: Annotated[str, Field(min_length=1, max_length=48)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    category: Annotated[str, Field(min_length=1, max_length=48)] | None = None
    #: The operator's labels (e.g. "weekend", "new_member"); features may test for one.
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=48)]], Field(max_length=32)] = []
    #: What the member gets, in currency (discount amount, or estimated worth of a benefit/consult).
    value: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    #: Minimum basket for threshold coupons, in currency; 0 when there is none.
    threshold: Annotated[float, Field(ge=0, le=1e7)] = 0.0
    #: Expected cost to the business per claim, in currency; drawn from the budget.
    cost: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    #: Limited quantity; None means unlimited.
    inventory: Annotated[int, Field(ge=0, le=10**9)] | None = None
    #: Total budget over the campaign; None means unbudgeted.
    budget: Annotated[float, Field(ge=0, le=1e10)] | None = None
    campaign_start_ts: float | None = None
    campaign_end_ts: float | None = None
    eligibility: Eligibility = Eligibility()
    caps: Caps = Caps()
    #: Pinned offers are placed first when eligible (e.g. a sale-day hero coupon).
    pinned: bool = False
    active: bool = True
    #: Dedupe key: offers of one family are interchangeable to the member (clones of one coupon in two
    #: campaigns). A slate holds at most one per family and a dismissal cools the whole family down.
    #: None = derived from kind, subtype, value and threshold (:attr:`family_key`).
    family: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    #: What a storefront shows beside the title (optional; returned on every recommended item).
    display_text: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    #: The storefront's key for the offer's image in its own asset store (not a URL we fetch).
    image_key: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_./:@-]+$")] | None = (
        None
    )

    @property
    def valid_until_ts(self) -> float | None:
        """When the member can no longer use the offer: the earlier of the eligibility window's end and
        the campaign's end (None when neither is set)."""
        ends = [t for t in (self.eligibility.valid_to_ts, self.campaign_end_ts) if t is not None]
        return min(ends) if ends else None

    def storefront_fields(self) -> dict[str, object]:
        """The fields a storefront renders, beyond id, kind, title and value: on every recommended item
        and in ``GET /v1/offers/{offer_id}``."""
        return {
            "threshold": self.threshold,
            "valid_until_ts": self.valid_until_ts,
            "display_text": self.display_text,
            "image_key": self.image_key,
        }

    @property
    def family_key(self) -> str:
        """The offer's family: the explicit ``family``, else ``kind:subtype:value:threshold``."""
        if self.family is not None:
            return f"family:{self.family}"
        return f"{self.kind}:{self.subtype}:{self.value:g}:{self.threshold:g}"

    @model_validator(mode="after")
    def _consistent(self) -> Offer:
        if self.budget is not None and self.cost <= 0:
            raise ValueError("a budgeted offer needs a positive cost")
        if (self.campaign_start_ts is None) != (self.campaign_end_ts is None):
            raise ValueError("campaign_start_ts and campaign_end_ts go together")
        start, end = self.campaign_start_ts, self.campaign_end_ts
        if start is not None and end is not None and end <= start:
            raise ValueError("campaign_end_ts must be after campaign_start_ts")
        return self


__all__ = [
    "ALL_SUBTYPES",
    "CATEGORIES",
    "CATEGORY_INDEX",
    "CHANNELS",
    "OFFER_KINDS",
    "PAGE_TYPES",
    "SUBTYPES",
    "TIERS",
    "Caps",
    "Eligibility",
    "Offer",
]

"""Member event schema, version 1.

Every event on the ``member-events`` topic is one JSON object with a ``type`` tag, a ``member_id``
(also the Kafka message key, so all of a member's events land on one partition, in order), an
``event_id`` (unique, chosen by the producer) and ``event_ts`` (event time, Unix seconds, UTC).

Event time, not arrival time, drives every feature: the fold is written so that events arriving out of
order (within the allowed lateness) end in the same state as ordered ones.

Decoding is done with msgspec straight from bytes into typed structs: it validates types, required
fields and the tag in one pass at a few microseconds per event, which matters at 20k events/s.
Unknown fields are rejected so that a producer typo is dead-lettered instead of silently ignored.

Additions stay backward compatible: a new field is optional with a default, so every event written
before it still decodes (``v`` stays 1). Added since the first release: ``arm`` (the member's
experiment arm, ``None`` outside an experiment) on the feedback events (impression, click, dismiss,
claims, redemption); ``plan`` and ``expires_at`` on ``paid_membership_started`` and the
``paid_membership_renewed`` event (issue 19); ``expiring`` (points lots with their expiry) on
``points_changed``; the page context (``page_type``, ``category``, ``device``, ``channel``) on
``impression``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = 1

PageType = Literal["home", "category", "product", "search", "cart", "checkout", "member_center", "order"]
PAGE_TYPES: tuple[str, ...] = PageType.__args__  # type: ignore[attr-defined]

Tier = Literal["regular", "silver", "gold", "diamond"]
TIERS: tuple[str, ...] = Tier.__args__  # type: ignore[attr-defined]

# Ids become parts of Redis keys (inside a {hash tag}), so braces and spaces are not allowed. msgspec
# matches patterns with Python's ``re.search``, where ``$`` also matches before a trailing newline
# ("nl-0\n" would pass and be folded into a key the API can never read): ``\Z`` is the true end.
ID_PATTERN = r"^[A-Za-z0-9_.:@-]+\Z"
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=ID_PATTERN)]
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=48)]
Timestamp = Annotated[float, msgspec.Meta(ge=946684800.0, le=4102444800.0)]  # 2000-01-01 .. 2100-01-01
Money = Annotated[float, msgspec.Meta(ge=0.0, le=1e7)]


class _Event(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True, kw_only=True):
    event_id: Id
    member_id: Id
    event_ts: Timestamp
    v: Literal[1] = 1


class PageView(_Event, tag="page_view", frozen=True):
    page_type: PageType
    category: Category | None = None
    product_id: Id | None = None


class Search(_Event, tag="search", frozen=True):
    category: Category | None = None
    query_len: Annotated[int, msgspec.Meta(ge=0, le=512)] = 0


class AddToCart(_Event, tag="add_to_cart", frozen=True):
    category: Category
    amount: Money = 0.0


class Order(_Event, tag="order", frozen=True):
    amount: Money
    categories: Annotated[list[Category], msgspec.Meta(max_length=64)] = []
    items: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 1
    coupon_id: Id | None = None
    discount: Money = 0.0


#: An experiment arm name (service.experiments.ArmName).
ArmName = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]


class CouponClaim(_Event, tag="coupon_claim", frozen=True):
    offer_id: Id
    #: Budget charged by this claim (the offer's cost when the service accepted it); None from producers
    #: that charge no budget (the offer's current cost is used then). Replay rebuilds budget use from it.
    cost: Money | None = None
    arm: ArmName | None = None


class CouponRedeem(_Event, tag="coupon_redeem", frozen=True):
    offer_id: Id
    discount: Money = 0.0
    arm: ArmName | None = None


class BenefitUse(_Event, tag="benefit_use", frozen=True):
    offer_id: Id
    #: Budget charged by this claim (the offer's cost when the service accepted it); None from producers
    #: that charge no budget (the offer's current cost is used then). Replay rebuilds budget use from it.
    cost: Money | None = None
    arm: ArmName | None = None


class ConsultBooked(_Event, tag="consult_booked", frozen=True):
    offer_id: Id
    #: Budget charged by this claim (the offer's cost when the service accepted it); None from producers
    #: that charge no budget (the offer's current cost is used then). Replay rebuilds budget use from it.
    cost: Money | None = None
    arm: ArmName | None = None


#: A page-context value as the service ranked with it (already mapped to the specification's vocabulary).
ContextValue = Annotated[str, msgspec.Meta(min_length=1, max_length=48)]


class Impression(_Event, tag="impression", frozen=True):
    request_id: Id
    offer_id: Id
    position: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    propensity: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    arm: ArmName | None = None
    #: The page the offer was shown on (the feedback's ``context``, normalised as the recommend request's
    #: was); None when the storefront did not say. Training from the archive alone reads it back, so its
    #: rows see the context serving saw.
    page_type: ContextValue | None = None
    category: Category | None = None
    device: ContextValue | None = None
    channel: ContextValue | None = None


class Click(_Event, tag="click", frozen=True):
    request_id: Id
    offer_id: Id
    arm: ArmName | None = None


class Dismiss(_Event, tag="dismiss", frozen=True):
    request_id: Id
    offer_id: Id
    arm: ArmName | None = None


class TierChanged(_Event, tag="tier_changed", frozen=True):
    tier: Tier


PlanName = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_. -]+$")]


class PaidMembershipStarted(_Event, tag="paid_membership_started", frozen=True):
    #: The paid programme's name as the member sees it ("PLUS", "88VIP", "Prime"); None = unnamed.
    plan: PlanName | None = None
    #: When the paid membership ends unless renewed (Unix seconds, UTC); None = open-ended.
    expires_at: Timestamp | None = None


class PaidMembershipRenewed(_Event, tag="paid_membership_renewed", frozen=True):
    """A renewal: the membership now runs until ``expires_at``."""

    expires_at: Timestamp
    plan: PlanName | None = None


class PaidMembershipEnded(_Event, tag="paid_membership_ended", frozen=True):
    pass


class PointsLot(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Part of a balance that expires at one time."""

    points: Annotated[int, msgspec.Meta(ge=1, le=10**9)]
    expires_at: Timestamp


class PointsChanged(_Event, tag="points_changed", frozen=True):
    points: Annotated[int, msgspec.Meta(ge=0, le=10**9)]
    #: The balance's lots that expire (a snapshot, like ``points``; lots not listed never expire).
    expiring: Annotated[list[PointsLot], msgspec.Meta(max_length=32)] = []


class ConsentChanged(_Event, tag="consent_changed", frozen=True):
    personalization: bool


AttributeName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
AttributeText = Annotated[str, msgspec.Meta(max_length=128)]
#: A declared member attribute's value: text (categorical), number, boolean, a list of text, or null
#: (the attribute is unset). Which attributes become features, and how, the specification says.
AttributeValue = (
    AttributeText | float | bool | Annotated[list[AttributeText], msgspec.Meta(max_length=32)] | None
)


class ProfileUpdated(_Event, tag="profile_updated", frozen=True):
    """Slow-moving attributes the storefront knows at sign-up (birthday month, region, join date) and the
    business's own typed member attributes (``attributes``: age band, household, habits, ...), each one
    last-writer-wins by event time."""

    birth_month: Annotated[int, msgspec.Meta(ge=1, le=12)] | None = None
    region: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    joined_ts: Timestamp | None = None
    attributes: Annotated[dict[AttributeName, AttributeValue], msgspec.Meta(max_length=64)] | None = None


Event = (
    PageView
    | Search
    | AddToCart
    | Order
    | CouponClaim
    | CouponRedeem
    | BenefitUse
    | ConsultBooked
    | Impression
    | Click
    | Dismiss
    | TierChanged
    | PaidMembershipStarted
    | PaidMembershipRenewed
    | PaidMembershipEnded
    | PointsChanged
    | ConsentChanged
    | ProfileUpdated
)

EVENT_TYPES: tuple[type[_Event], ...] = Event.__args__  # type: ignore[attr-defined]
EVENT_TYPE_NAMES: tuple[str, ...] = tuple(t.__struct_config__.tag for t in EVENT_TYPES)  # type: ignore[misc]

MAX_EVENT_BYTES = 16 * 1024

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class InvalidEvent(ValueError):
    """An event that cannot be folded. ``reason`` is a short, stable label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode(raw: bytes) -> Event:
    """Parse and validate one event; raise :class:`InvalidEvent` with a reason label otherwise."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if "Invalid value" in msg and "`$.type`" in msg:
            raise InvalidEvent("unknown_type", msg) from None
        if "Object missing required field `type`" in msg:
            raise InvalidEvent("missing_type", msg) from None
        raise InvalidEvent("schema", msg) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent("malformed", str(exc)) from None


def check_event_time(
    event_ts: float, now: float, max_future_skew_s: float, retention_s: float | None
) -> None:
    """Refuse an event time too far in the future or older than the retention (:class:`InvalidEvent`).

    A dismissal stamped in 2100 would hide an offer until then and impressions from the future would
    keep it in fatigue for good; an event older than the state's retention describes state that has
    already expired. ``now`` is the caller's clock (the core reads none); ``retention_s`` None: no
    lower bound."""
    if event_ts > now + max_future_skew_s:
        raise InvalidEvent(
            "event_ts_future", f"event_ts {event_ts:.3f} is more than {max_future_skew_s:g}s after {now:.3f}"
        )
    if retention_s is not None and event_ts < now - retention_s:
        raise InvalidEvent(
            "event_ts_expired", f"event_ts {event_ts:.3f} is older than the retention of {retention_s:g}s"
        )


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def event_type(event: Event) -> str:
    return event.__struct_config__.tag  # type: ignore[return-value]

"""Per-offer aggregate statistics (impressions, clicks, claims, redemptions, dismissals, cost used).

They feed the ranker as smoothed priors and the eligibility rules as budget consumption. The stream
worker keeps one partial aggregate per Kafka partition (so that each partial has a single writer and
can be made exactly-once alongside that partition's offset); readers sum the partials.
"""

from __future__ import annotations

import msgspec

from features import events as ev


class OfferCounters(msgspec.Struct, array_like=True, gc=False):
    impressions: int = 0
    clicks: int = 0
    claims: int = 0
    redeems: int = 0
    dismisses: int = 0
    #: Currency spent from the offer's budget (cost per claim, charged at claim time).
    cost_used: float = 0.0

    def merge(self, other: OfferCounters) -> OfferCounters:
        return OfferCounters(
            self.impressions + other.impressions,
            self.clicks + other.clicks,
            self.claims + other.claims,
            self.redeems + other.redeems,
            self.dismisses + other.dismisses,
            self.cost_used + other.cost_used,
        )


def apply_offer_event(
    stats: dict[str, OfferCounters], event: ev.Event, cost_of: dict[str, float] | None = None
) -> None:
    """Fold an event into the per-offer counters (in place). Non-offer events are ignored."""
    match event:
        case ev.Impression():
            _get(stats, event.offer_id).impressions += 1
        case ev.Click():
            _get(stats, event.offer_id).clicks += 1
        case ev.Dismiss():
            _get(stats, event.offer_id).dismisses += 1
        case ev.CouponClaim() | ev.BenefitUse() | ev.ConsultBooked():
            c = _get(stats, event.offer_id)
            c.claims += 1
            if event.cost is not None:
                c.cost_used += event.cost
            elif cost_of is not None:
                c.cost_used += cost_of.get(event.offer_id, 0.0)
        case ev.CouponRedeem():
            _get(stats, event.offer_id).redeems += 1
        case _:
            pass


def _get(stats: dict[str, OfferCounters], offer_id: str) -> OfferCounters:
    c = stats.get(offer_id)
    if c is None:
        c = stats[offer_id] = OfferCounters()
    return c


def merge_all(parts: list[dict[str, OfferCounters]]) -> dict[str, OfferCounters]:
    total: dict[str, OfferCounters] = {}
    for part in parts:
        for offer_id, c in part.items():
            total[offer_id] = total[offer_id].merge(c) if offer_id in total else c
    return total


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(dict[str, OfferCounters])


def encode_stats(stats: dict[str, OfferCounters]) -> bytes:
    return _enc.encode(stats)


def decode_stats(raw: bytes) -> dict[str, OfferCounters]:
    return _dec.decode(raw)

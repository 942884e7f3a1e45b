"""Pure tests of the event schema, the decayed counters and the member fold."""

from __future__ import annotations

import math
import random

import msgspec
import pytest

from features import events as ev
from features import state as st
from features.decay import HALF_LIVES_SECONDS, Decayed
from features.state import (
    IMPRESSION_TIMES_KEPT,
    apply,
    copy_state,
    decode_state,
    encode_state,
    fold,
    new_state,
)

T0 = 1_760_000_000.0


def _e(kind: type[ev._Event], i: int, ts: float, member: str = "m1", **kw: object) -> ev.Event:
    return kind(event_id=f"e{i}", member_id=member, event_ts=ts, **kw)  # type: ignore[return-value]


def mixed_events(n: int, seed: int = 0, member: str = "m1") -> list[ev.Event]:
    rng = random.Random(seed)
    out: list[ev.Event] = []
    for i in range(n):
        ts = T0 + rng.uniform(0, 10 * 86400)
        r = rng.random()
        if r < 0.4:
            out.append(
                _e(ev.PageView, i, ts, member, page_type="category", category=rng.choice(["baby", "home"]))
            )
        elif r < 0.5:
            out.append(_e(ev.Search, i, ts, member, category="beauty"))
        elif r < 0.6:
            out.append(_e(ev.AddToCart, i, ts, member, category="baby", amount=20.0))
        elif r < 0.7:
            out.append(
                _e(
                    ev.Order,
                    i,
                    ts,
                    member,
                    amount=rng.uniform(10, 300),
                    categories=["baby"],
                    coupon_id="c1",
                    discount=5,
                )
            )
        elif r < 0.8:
            out.append(_e(ev.Impression, i, ts, member, request_id="r", offer_id=rng.choice(["o1", "o2"])))
        elif r < 0.85:
            out.append(_e(ev.Click, i, ts, member, request_id="r", offer_id="o1"))
        elif r < 0.88:
            out.append(_e(ev.TierChanged, i, ts, member, tier=rng.choice(["silver", "gold"])))
        elif r < 0.9:
            # Paid membership with expiries and renewals (issue 19): last-writer-wins plus counts.
            expires = ts + rng.uniform(1, 60) * 86400
            kind = rng.choice([ev.PaidMembershipStarted, ev.PaidMembershipRenewed, ev.PaidMembershipEnded])
            kw: dict[str, object] = {} if kind is ev.PaidMembershipEnded else {"expires_at": expires}
            if kind is not ev.PaidMembershipEnded:
                kw["plan"] = rng.choice(["PLUS", "88VIP"])
            out.append(_e(kind, i, ts, member, **kw))
        elif r < 0.95:
            lots = [
                ev.PointsLot(points=rng.randint(1, 500), expires_at=ts + rng.uniform(1, 90) * 86400)
                for _ in range(rng.randrange(3))
            ]
            out.append(_e(ev.PointsChanged, i, ts, member, points=rng.randint(0, 5000), expiring=lots))
        else:
            out.append(_e(ev.CouponClaim, i, ts, member, offer_id="o2"))
    return out


def assert_states_equal(a: object, b: object) -> None:
    """Equal field for field; floats to 1e-9 relative (decayed sums differ only by rounding)."""
    da, db = msgspec.to_builtins(a), msgspec.to_builtins(b)
    _close(da, db, "$")


def _close(a: object, b: object, path: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12), f"{path}: {a} != {b}"  # type: ignore[arg-type]
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# --- schema ----------------------------------------------------------------------------------------


def test_round_trip_every_event_type() -> None:
    samples = mixed_events(200)
    for e in samples:
        assert ev.decode(ev.encode(e)) == e
    assert {ev.event_type(e) for e in samples} >= {"page_view", "order", "impression", "tier_changed"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "malformed"),
        (b'{"type":"teleport","event_id":"e","member_id":"m","event_ts":1760000000}', "unknown_type"),
        (b'{"event_id":"e","member_id":"m","event_ts":1760000000}', "missing_type"),
        (b'{"type":"page_view","event_id":"e","member_id":"m","event_ts":1760000000}', "schema"),
        (b'{"type":"order","event_id":"e","member_id":"m","event_ts":1760000000,"amount":-5}', "schema"),
        (b'{"type":"search","event_id":"e","member_id":"m {x}","event_ts":1760000000}', "schema"),
        (b'{"type":"search","event_id":"e","member_id":"m","event_ts":1760000000,"extra":1}', "schema"),
        (b'{"type":"search","event_id":"e","member_id":"m","event_ts":12}', "schema"),
        (b'{"type":"search","event_id":"e","member_id":"m","event_ts":1760000000,"v":2}', "schema"),
        (b"[" + b"1," * 20000 + b"1]", "oversized"),
    ],
)
def test_invalid_events_have_reasons(raw: bytes, reason: str) -> None:
    with pytest.raises(ev.InvalidEvent) as info:
        ev.decode(raw)
    assert info.value.reason == reason


# --- decayed counters --------------------------------------------------------------------------------


def test_decay_halves_after_each_half_life() -> None:
    d = Decayed()
    d.add(T0, 8.0)
    for i, h in enumerate(HALF_LIVES_SECONDS):
        assert d.at_index(T0 + h, i) == pytest.approx(4.0)
        assert d.at_index(T0 + 2 * h, i) == pytest.approx(2.0)
    assert d.at(T0 - 100) == [8.0] * len(HALF_LIVES_SECONDS)  # clock skew: never inflate


def test_decay_is_order_independent() -> None:
    rng = random.Random(3)
    points = [(T0 + rng.uniform(0, 30 * 86400), rng.uniform(0.5, 3)) for _ in range(500)]
    a, b = Decayed(), Decayed()
    for ts, w in sorted(points):
        a.add(ts, w)
    rng.shuffle(points)
    for ts, w in points:
        b.add(ts, w)
    now = T0 + 31 * 86400
    for x, y in zip(a.at(now), b.at(now), strict=True):
        assert x == pytest.approx(y, rel=1e-9)


# --- fold -----------------------------------------------------------------------------------------------


def test_shuffled_stream_folds_to_same_state() -> None:
    events = mixed_events(2000, seed=1)
    ordered = fold(sorted(events, key=lambda e: e.event_ts))
    for seed in range(3):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        assert_states_equal(fold(shuffled), ordered)


def test_counts_recency_and_spend() -> None:
    s = new_state("m1")
    apply(s, _e(ev.PageView, 1, T0, page_type="category", category="baby"))
    apply(s, _e(ev.PageView, 2, T0 + 10, page_type="product", category="toaster-ovens"))
    apply(
        s,
        _e(
            ev.Order,
            3,
            T0 + 20,
            amount=100.0,
            categories=["baby", "baby", "home"],
            coupon_id="c",
            discount=10,
        ),
    )
    apply(s, _e(ev.Order, 4, T0 + 30, amount=50.0))
    assert s.counts["page_view"].sums[0] == pytest.approx(1 + 2 ** (-10 / 3600))
    assert s.last_ts["page_view"] == T0 + 10
    # Categories are the operator's: the fold keeps any name (the specification reads the ones offers have).
    assert set(s.cat_interest) == {"baby", "toaster-ovens"}
    assert s.cat_orders["baby"].sums[3] == pytest.approx(1.0)  # once per order, not per line
    assert s.orders_total == 2 and s.spend_total == 150.0
    assert s.orders_with_coupon == 1 and s.discount_total == 10.0
    assert s.first_seen_ts == T0 and s.last_event_ts == T0 + 30


def test_attributes_are_last_writer_wins_by_event_time() -> None:
    late_gold = _e(ev.TierChanged, 1, T0 + 100, tier="gold")
    early_silver = _e(ev.TierChanged, 2, T0, tier="silver")
    for order in ([late_gold, early_silver], [early_silver, late_gold]):
        assert fold(list(order)).tier == "gold"
    started = _e(ev.PaidMembershipStarted, 3, T0)
    ended = _e(ev.PaidMembershipEnded, 4, T0 + 5)
    assert fold([ended, started]).paid_member is False
    assert fold([started]).paid_member is True
    off = _e(ev.ConsentChanged, 5, T0 + 1, personalization=False)
    assert fold([off]).personalization_consent is False


def test_member_attributes_are_last_writer_wins_per_attribute() -> None:
    a = _e(ev.ProfileUpdated, 1, T0 + 10, attributes={"age_band": "25-34", "kids": True})
    b = _e(ev.ProfileUpdated, 2, T0, attributes={"age_band": "18-24", "income": 42000.0})
    c = _e(ev.ProfileUpdated, 3, T0 + 20, attributes={"habits": ["coffee", "travel"], "kids": None})
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        s = fold(list(order))
        values = {k: v.value for k, v in s.attributes.items()}
        # the later age band wins whatever the arrival order; the older event still sets income (partial
        # updates never erase what they do not mention); null unsets
        assert values == {
            "age_band": "25-34",
            "income": 42000.0,
            "kids": None,
            "habits": ["coffee", "travel"],
        }
    s2 = decode_state(encode_state(s))
    assert s2.attributes["habits"].value == ["coffee", "travel"]


def test_profile_attribute_values_are_typed() -> None:
    good = b'{"type":"profile_updated","event_id":"e","member_id":"m","event_ts":1760000000,"attributes":'
    assert ev.decode(good + b'{"age":31,"vip":true,"band":"a","tags":["x"]}}').attributes == {
        "age": 31.0,
        "vip": True,
        "band": "a",
        "tags": ["x"],
    }
    with pytest.raises(ev.InvalidEvent):
        ev.decode(good + b'{"nested":{"no":1}}}')
    with pytest.raises(ev.InvalidEvent):
        ev.decode(good + b'{"bad name!":1}}')


def test_categories_tracked_per_member_are_bounded() -> None:
    s = new_state("m1")
    for i in range(st.MAX_CATEGORIES_TRACKED + 10):
        apply(s, _e(ev.PageView, i, T0 + i, page_type="category", category=f"c{i:03d}"))
    assert len(s.cat_interest) == st.MAX_CATEGORIES_TRACKED
    assert "c000" not in s.cat_interest and f"c{st.MAX_CATEGORIES_TRACKED + 9:03d}" in s.cat_interest


def test_impression_fatigue_counts_only_after_last_action() -> None:
    s = new_state("m1")
    for i in range(4):
        apply(s, _e(ev.Impression, i, T0 + i * 60, request_id="r", offer_id="o1"))
    apply(s, _e(ev.Click, 10, T0 + 150, request_id="r", offer_id="o1"))  # after 3rd impression
    inter = s.offers["o1"]
    assert inter.shown == 4 and inter.clicks == 1
    assert inter.impressions_since_action() == 1
    for i in range(40):
        apply(s, _e(ev.Impression, 100 + i, T0 + 1000 + i, request_id="r", offer_id="o1"))
    assert len(s.offers["o1"].recent_shown_ts) == IMPRESSION_TIMES_KEPT
    assert s.offers["o1"].impressions_since_action() == IMPRESSION_TIMES_KEPT


def test_tracked_offers_are_bounded() -> None:
    s = new_state("m1")
    for i in range(500):
        apply(s, _e(ev.Impression, i, T0 + i, request_id="r", offer_id=f"o{i}"))
    assert len(s.offers) <= 96
    assert "o499" in s.offers and "o0" not in s.offers


def test_state_codec_round_trip_and_copy_is_independent() -> None:
    s = fold(mixed_events(300))
    assert_states_equal(decode_state(encode_state(s)), s)
    c = copy_state(s)
    apply(c, _e(ev.Order, 999, T0 + 99, amount=1.0))
    assert c.orders_total == s.orders_total + 1
    assert len(encode_state(s)) < 8192

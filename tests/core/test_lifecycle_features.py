"""The lifecycle columns of the feature specification (issue 19): each equals what features.lifecycle
says of the state under the specification's programme configuration (the one eligibility and reasons
read), the configuration is part of the hash where a feature reads it, and "not applicable" is finite."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from features import events as ev
from features import lifecycle as lc
from features.decay import DAY
from features.demo_catalog import demo_catalog
from features.eligibility import RULES, EligibilityTable, evaluate
from features.offers import Eligibility, Offer
from features.projection import DEFAULT_SPEC, Context, OfferTable, rows
from features.spec import DEFAULT_SPEC_PATH, FeatureSpec, SpecError, parse_spec
from features.state import MemberState, fold

NOW = 1_790_000_000.0
CONFIG = lc.LifecycleConfig(
    lapsing_days=3,
    silent_days=5,
    tiers=lc.TierRules(thresholds={"silver": 200.0, "gold": 1000.0, "diamond": 4000.0}),
    points_expiring_days=7,
)
_n = 0


def _e(kind: type[ev._Event], ts: float, **kw: object) -> ev.Event:
    global _n
    _n += 1
    return kind(event_id=f"f{_n}", member_id="m1", event_ts=ts, **kw)  # type: ignore[return-value]


def _member(rng: random.Random) -> MemberState:
    """A member with a random lifecycle: visits with gaps, orders, a paid membership, points lots."""
    joined = NOW - rng.choice([5, 60, 400]) * DAY
    events: list[ev.Event] = [_e(ev.ProfileUpdated, joined, joined_ts=joined)]
    for _ in range(rng.randint(0, 12)):
        age = rng.choice([rng.uniform(0, 3), rng.uniform(3, 20), rng.uniform(30, 90)]) * DAY
        if rng.random() < 0.5:
            events.append(_e(ev.PageView, NOW - age, page_type="home"))
        else:
            events.append(_e(ev.Order, NOW - age, amount=rng.choice([30.0, 180.0, 900.0, 2500.0])))
    r = rng.random()
    if r < 0.6:
        expiry = NOW + rng.choice([-40, -3, 0.5, 4, 200, 500]) * DAY
        events.append(_e(ev.PaidMembershipStarted, NOW - 300 * DAY, plan="PLUS", expires_at=expiry))
        if r < 0.2:
            events.append(_e(ev.PaidMembershipEnded, NOW - rng.uniform(1, 60) * DAY))
    if rng.random() < 0.6:
        lots = [
            ev.PointsLot(points=rng.randint(1, 500), expires_at=NOW + rng.uniform(-5, 40) * DAY)
            for _ in range(rng.randint(0, 4))
        ]
        events.append(_e(ev.PointsChanged, NOW - DAY, points=1000, expiring=lots))
    return fold(events)


def _col(x: np.ndarray, spec: FeatureSpec, name: str) -> np.ndarray:
    return x[:, spec.index[name]]


@pytest.mark.parametrize("config", [lc.DEFAULT_CONFIG, CONFIG], ids=["default", "custom"])
def test_each_lifecycle_column_is_what_the_rules_read(config: lc.LifecycleConfig) -> None:
    spec = DEFAULT_SPEC.with_lifecycle(config)
    table = OfferTable(demo_catalog(NOW - DAY, 12), spec)
    rng = random.Random(3)
    for _ in range(150):
        s = _member(rng)
        x = rows(s, table, Context(), NOW)
        assert np.isfinite(x).all()
        for name in ("lifecycle_stage", "days_since_visit", "paid_days_left", "paid_days_since_lapse",
                     "tier_gap", "tier_gap_share", "points_expiring"):  # fmt: skip
            col = _col(x, spec, name)
            assert (col == col[0]).all(), name  # member columns: one value broadcast to every offer
        progress = lc.tier_progress(s, NOW, config.tiers)
        left, lapsed = lc.paid_days_left(s, NOW), lc.paid_days_since_lapse(s, NOW)
        expected = {
            "lifecycle_stage": lc.STAGES.index(lc.stage(s, NOW, config)),
            "days_since_visit": lc.days_since_visit(s, NOW),
            "paid_days_left": 365.0 if left is None else min(365.0, left),
            "paid_days_since_lapse": 365.0 if lapsed is None else min(365.0, lapsed),
            "tier_gap": progress.gap or 0.0,
            "tier_gap_share": (
                progress.gap / config.tiers.thresholds[progress.next_tier]  # type: ignore[index]
                if progress.gap is not None and progress.next_tier is not None
                else 0.0
            ),
            "points_expiring": lc.points_expiring_within(s, NOW, config.points_expiring_days),
        }
        for name, value in expected.items():
            assert _col(x, spec, name)[0] == pytest.approx(value, rel=1e-6, abs=1e-4), name


def test_the_configuration_changes_stage_and_gap_as_it_changes_eligibility() -> None:
    """One member, two programmes: the stage and tier-gap columns and the stage / tier-gap rules move
    together (the same features.lifecycle functions, the same configuration)."""
    week = int(NOW // (7 * DAY))
    s = fold(
        [
            _e(ev.ProfileUpdated, NOW - 400 * DAY, joined_ts=NOW - 400 * DAY),
            _e(ev.PageView, NOW - 7 * DAY, page_type="home"),
        ]
    )
    s.growth_weeks = {week: 900.0}
    offers = [
        Offer(offer_id="wake", kind="coupon", subtype="no_threshold", title="w",
              eligibility=Eligibility(lifecycle_stages=["silent"])),
        Offer(offer_id="nudge", kind="coupon", subtype="no_threshold", title="n",
              eligibility=Eligibility(max_tier_gap=150)),
    ]  # fmt: skip
    got = {}
    for name, config in (("default", lc.DEFAULT_CONFIG), ("custom", CONFIG)):
        spec = DEFAULT_SPEC.with_lifecycle(config)
        x = rows(s, OfferTable(offers, spec), Context(), NOW)
        reasons = evaluate(EligibilityTable(offers, config), {"wake": 0, "nudge": 1}, s, Context(), NOW)
        got[name] = (
            lc.STAGES[int(_col(x, spec, "lifecycle_stage")[0])],
            float(_col(x, spec, "tier_gap")[0]),
            [None if r < 0 else RULES[r] for r in reasons.tolist()],
        )
    # Default: 7 days away is "active" and 900 of growth is silver-less (gap 100 to silver: 1000).
    assert got["default"] == ("active", pytest.approx(100.0), ["lifecycle_stage", None])
    # Custom: silent after 5 days; silver at 200 reached, 100 short of gold at 1000.
    assert got["custom"] == ("silent", pytest.approx(100.0), [None, None])
    s.growth_weeks = {week: 800.0}
    reasons = evaluate(EligibilityTable(offers, CONFIG), {"wake": 0, "nudge": 1}, s, Context(), NOW)
    assert RULES[int(reasons[1])] == "tier_gap"  # 200 short of gold under the custom rules


def test_the_hash_covers_the_configuration_where_a_feature_reads_it() -> None:
    custom = DEFAULT_SPEC.with_lifecycle(CONFIG)
    assert custom.hash != DEFAULT_SPEC.hash
    assert custom.canonical()["lifecycle"] == {
        "lapsing_days": 3.0,
        "silent_days": 5.0,
        "tiers": {"thresholds": {"silver": 200.0, "gold": 1000.0, "diamond": 4000.0}},
        "points_expiring_days": 7.0,
    }
    # The defaults, given explicitly or not, hash alike; so does a field left at its default.
    assert DEFAULT_SPEC.with_lifecycle(lc.LifecycleConfig()).hash == DEFAULT_SPEC.hash
    assert "lifecycle" not in DEFAULT_SPEC.canonical()
    # A configuration no feature reads leaves the hash alone (days since a visit and the paid
    # membership columns do not depend on it).
    plain = parse_spec(
        json.dumps(
            {
                "version": 1,
                "features": [
                    {"name": "visit", "kind": "days_since", "params": {"event": "visit"}},
                    {"name": "left", "kind": "paid_days_left"},
                ],
            }
        )
    )
    assert plain.with_lifecycle(CONFIG).hash == plain.hash
    # The model file records it (feature_spec is the canonical form).
    assert FeatureSpec.model_validate({**custom.model_dump()}).hash == custom.hash


def test_a_spec_file_cannot_declare_another_programme() -> None:
    data = json.loads(DEFAULT_SPEC_PATH.read_text())
    declared = parse_spec(json.dumps({**data, "lifecycle": {"silent_days": 60}}))
    assert declared.lifecycle_config.silent_days == 60
    with pytest.raises(SpecError, match="BENEFITS_LIFECYCLE"):
        declared.with_lifecycle(CONFIG)
    assert declared.with_lifecycle(lc.LifecycleConfig(silent_days=60)).hash == declared.hash


@pytest.mark.parametrize(
    ("feature", "needle"),
    [
        ({"name": "x", "kind": "days_since", "params": {"event": "impression"}}, "impression"),
        ({"name": "x", "kind": "tier_gap", "params": {"relative": "yes"}}, "relative"),
        ({"name": "x", "kind": "points_expiring", "params": {"days": 0}}, "days"),
        ({"name": "x", "kind": "lifecycle_stage", "params": {"vocabulary": "stage"}}, "unknown parameters"),
    ],
)
def test_bad_lifecycle_features_are_refused(feature: dict[str, object], needle: str) -> None:
    data = json.loads(DEFAULT_SPEC_PATH.read_text())
    data["features"].append(feature)
    with pytest.raises(SpecError, match=needle):
        parse_spec(json.dumps(data))


def test_a_feature_may_set_its_own_points_window() -> None:
    spec = parse_spec(
        json.dumps(
            {
                "version": 1,
                "features": [
                    {"name": "pts_7d", "kind": "points_expiring", "params": {"days": 7}},
                    {"name": "pts", "kind": "points_expiring"},
                ],
            }
        )
    )
    lots = [
        ev.PointsLot(points=300, expires_at=NOW + 5 * DAY),
        ev.PointsLot(points=200, expires_at=NOW + 20 * DAY),
    ]
    s = fold([_e(ev.PointsChanged, NOW - DAY, points=900, expiring=lots)])
    x = rows(s, OfferTable(demo_catalog(NOW - DAY, 3), spec), Context(), NOW)
    assert x[0].tolist() == [300.0, 500.0]  # the default window is the configuration's 30 days

"""Real data: The Complete Journey baskets of 200 households replayed as order events through the
broker and a worker process; the stored state equals the offline fold for every household."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.offers import CATEGORIES
from harness import replay_cj
from harness.embedded import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_mapping_of_baskets_to_orders() -> None:
    orders = replay_cj.load_orders(households=20, max_baskets_per_household=30, seed=1)
    assert len({o.member_id for o in orders}) == 20
    assert all(o.member_id.startswith("cj") and o.amount >= 0 and 1 <= o.items <= 10_000 for o in orders)
    assert all(set(o.categories) <= set(CATEGORIES) for o in orders)
    assert [o.event_ts for o in orders] == sorted(o.event_ts for o in orders)
    assert all((o.coupon_id is None) == (o.discount == 0.0) for o in orders)


def test_complete_journey_replay_matches_offline_fold(
    redis_server: Service, broker: Service, tmp_path: Path
) -> None:
    # 200 households (the minimum sample), their first 25 baskets each: ~5k orders, seconds.
    orders = replay_cj.load_orders(households=200, max_baskets_per_household=25, seed=7)
    report = replay_cj.replay_and_check(
        orders, redis_server.url, broker.url, timeout_s=90, log_path=tmp_path / "worker.log"
    )
    assert report["households"] == 200
    assert report["orders_with_coupon"] > 0
    assert report["parity"], report

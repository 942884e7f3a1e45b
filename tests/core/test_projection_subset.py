"""Rows for a subset of the catalogue (the eligible offers) are exactly those rows of the full matrix."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from features import events as ev
from features.decay import DAY, HOUR
from features.demo_catalog import demo_catalog
from features.projection import OfferTable, rows
from features.state import apply
from harness.members import random_context, simulate_member

T0 = 1_760_000_000.0
TABLE = OfferTable(demo_catalog(T0 - DAY, n_offers=80))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    picks=st.lists(st.integers(0, len(TABLE) - 1), max_size=len(TABLE), unique=True),
)
def test_rows_of_a_subset_equal_the_gathered_full_rows(seed: int, picks: list[int]) -> None:
    rng = np.random.default_rng(seed)
    state = simulate_member(f"m{seed}", T0, rng)  # views, orders, impressions, clicks on catalogue offers
    for k, i in enumerate(rng.choice(len(TABLE), size=12, replace=False).tolist()):
        oid, ts = TABLE.offers[i].offer_id, T0 - (k + 1) * HOUR  # member x offer history to scatter
        apply(
            state,
            ev.Impression(
                event_id=f"i{k}", member_id=state.member_id, event_ts=ts, request_id="r", offer_id=oid
            ),
        )
        if k % 3 == 0:
            apply(
                state,
                ev.Click(
                    event_id=f"c{k}", member_id=state.member_id, event_ts=ts, request_id="r", offer_id=oid
                ),
            )
    context = random_context(rng)
    only = np.array(picks, dtype=np.int64)
    full = rows(state, TABLE, context, T0)
    np.testing.assert_array_equal(rows(state, TABLE, context, T0, only=only), full[only])

"""Point-in-time rows: no row can see an event at or after its own impression time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import events as ev
from features.projection import FEATURE_INDEX
from training import dataset
from training.simulate import load_catalog


@pytest.fixture(scope="module")
def data(sim_dir: Path) -> tuple[pd.DataFrame, list[ev.Event], list]:
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    events = dataset.load_events(sim_dir / "events.jsonl")
    return imp, events, load_catalog(sim_dir / "catalog.json")


def _rows_by_key(ts: dataset.TrainingSet) -> dict[tuple[str, str], np.ndarray]:
    f = ts.frame
    return {(r, o): ts.X[i] for i, (r, o) in enumerate(zip(f["request_id"], f["offer_id"], strict=True))}


def test_rows_unchanged_when_future_events_are_removed(data: tuple) -> None:
    imp, events, catalog = data
    full = dataset.build(imp, events, catalog)
    cut = float(np.quantile(imp["event_ts"], 0.5))
    past = [e for e in events if e.event_ts < cut]
    early = imp[imp["event_ts"] < cut]
    truncated = dataset.build(early, past, catalog)
    a, b = _rows_by_key(full), _rows_by_key(truncated)
    assert len(b) == len(early) > 1000
    for key, row in b.items():
        np.testing.assert_array_equal(row, a[key])


def test_future_event_is_invisible_but_would_matter(data: tuple) -> None:
    imp, events, catalog = data
    base = dataset.build(imp, events, catalog)
    # A member's impression of a category coupon, and a burst of browsing in that category injected
    # exactly at and just after the impression time.
    baby = {o.offer_id for o in catalog if o.kind == "coupon" and o.category == "baby"}
    cat_rows = base.frame[base.frame["offer_id"].isin(baby)]
    target = cat_rows.iloc[len(cat_rows) // 2]
    t, member = float(target["event_ts"]), str(target["member_id"])
    burst = [
        ev.PageView(
            event_id=f"inj{i}", member_id=member, event_ts=t + i, page_type="product", category="baby"
        )
        for i in range(0, 20)
    ]
    injected = dataset.build(imp, events + burst, catalog)
    a, b = _rows_by_key(base), _rows_by_key(injected)
    key = (str(target["request_id"]), str(target["offer_id"]))
    np.testing.assert_array_equal(a[key], b[key])
    # ...while the member's later rows do see it (so the check above is not vacuous).
    later = base.frame[(base.frame["member_id"] == member) & (base.frame["event_ts"] > t + 20)]
    if len(later):
        k2 = (str(later.iloc[0]["request_id"]), str(later.iloc[0]["offer_id"]))
        assert b[k2][FEATURE_INDEX["views_30d"]] > a[k2][FEATURE_INDEX["views_30d"]]
    # A row at a moment just after the burst sees it: build the same impression one minute later.
    moved = imp[(imp["request_id"] == target["request_id"])].copy()
    moved["event_ts"] = t + 60.0
    moved["request_id"] = "moved"
    seen = dataset.build(moved, events + burst, catalog)
    unseen = dataset.build(moved, events, catalog)
    i = FEATURE_INDEX["cat_interest_1d"]
    row = seen.frame.index[seen.frame["offer_id"] == target["offer_id"]][0]
    assert seen.X[row, i] > unseen.X[row, i] + 10


def test_own_outcome_is_not_a_feature(data: tuple) -> None:
    imp, events, catalog = data
    ts = dataset.build(imp, events, catalog)
    f = ts.frame
    # The row of a claimed impression must not already count that claim for that offer.
    claimed = f.index[f["label"] == 1]
    assert len(claimed) > 10
    assert (ts.X[claimed, FEATURE_INDEX["mo_claimed"]] == 0).all()


def test_bring_your_own_table_without_events(data: tuple) -> None:
    imp, _, catalog = data
    byo = imp[["member_id", "offer_id", "event_ts", "label", "page_type", "category"]].copy()
    prepared = dataset.prepare_impressions(byo, catalog)
    events = dataset.synthesize_events(prepared, catalog)
    ts = dataset.build(prepared.drop(columns=["group"]), events, catalog)
    assert len(ts) == len(imp)
    assert np.isfinite(ts.X).all()

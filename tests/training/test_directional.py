"""Behaviour through the exported ONNX model: browsing baby products raises the baby coupon's score."""

from __future__ import annotations

import numpy as np

from features import events as ev
from features.decay import HOUR
from features.projection import Context, OfferTable, rows
from features.state import apply, new_state
from infra.registry import MODEL_FILE
from training import export, pipeline
from training.simulate import DEFAULT_START_TS, load_catalog


def test_baby_browsing_raises_the_baby_coupon(trained: pipeline.Outcome, sim_dir) -> None:
    catalog = load_catalog(sim_dir / "catalog.json")
    table = OfferTable(catalog)
    sess = export.session((trained.path / MODEL_FILE).read_bytes())
    baby = [i for i, o in enumerate(catalog) if o.kind == "coupon" and o.category == "baby"]
    others = [i for i, o in enumerate(catalog) if o.kind == "coupon" and o.category not in (None, "baby")]
    assert baby and others

    t0 = DEFAULT_START_TS + 3 * 24 * HOUR
    state = new_state("m-dir")
    setup: list[ev.Event] = [
        ev.ProfileUpdated(
            event_id="p", member_id="m-dir", event_ts=t0 - 86400, birth_month=1, region="tier2_city"
        ),
        ev.TierChanged(event_id="t", member_id="m-dir", event_ts=t0 - 86400, tier="silver"),
        ev.PageView(
            event_id="g1", member_id="m-dir", event_ts=t0 - 7200, page_type="category", category="grocery"
        ),
    ]
    for e in setup:
        apply(state, e)
    ctx = Context(page_type="home", device="android", channel="app")
    now = t0
    before = export.onnx_predict(sess, rows(state, table, ctx, now))

    for i in range(8):
        apply(
            state,
            ev.PageView(
                event_id=f"b{i}",
                member_id="m-dir",
                event_ts=now + 30 * i,
                page_type="product",
                category="baby",
            ),
        )
    apply(state, ev.Search(event_id="s", member_id="m-dir", event_ts=now + 300, category="baby", query_len=7))
    after_t = now + 600
    after = export.onnx_predict(sess, rows(state, table, ctx, after_t))

    assert after[baby].mean() > before[baby].mean()
    # Relative to other categories' coupons the baby coupons move up.
    rel_before = before[baby].mean() / before[others].mean()
    rel_after = after[baby].mean() / after[others].mean()
    assert rel_after > rel_before * 1.2
    # The best baby coupon ranks higher among all coupons than before.
    coupons = baby + others

    def rank(scores: np.ndarray) -> int:
        order = np.argsort(-scores[coupons])
        best = max(baby, key=lambda i: scores[i])
        return int(np.flatnonzero(np.asarray(coupons)[order] == best)[0])

    assert rank(after) < rank(before)

"""Consent in the real worker: browsing after an opt-out is not stored in Redis, claims and dismissals
still are, an opt-in resumes collection, and a late opt-out removes what was folded after its time.

Real broker, real Redis, real ``benefits worker`` process; nothing mocked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from features import events as ev
from harness import stream_driver as h

pytestmark = pytest.mark.integration

T0 = 1_760_000_000.0


def _e(kind: str, i: int, member: str, ts: float, **kw: object) -> ev.Event:
    raw = {"type": kind, "event_id": f"{member}-{i}", "member_id": member, "event_ts": ts, **kw}
    return msgspec.convert(raw, ev.Event)  # type: ignore[arg-type]


def _view(i: int, member: str, ts: float, category: str) -> ev.Event:
    return _e("page_view", i, member, ts, page_type="category", category=category)


def test_worker_does_not_store_browsing_after_an_opt_out(
    worker_cfg: h.WorkerConfig, worker_log: Path
) -> None:
    out, back, late = "opted-out", "came-back", "late-opt-out"
    events = [
        _view(0, out, T0, "home"),
        _e("consent_changed", 1, out, T0 + 10, personalization=False),
        _view(2, out, T0 + 20, "baby"),
        _e("search", 3, out, T0 + 21, category="beauty"),
        _e("add_to_cart", 4, out, T0 + 22, category="baby", amount=30.0),
        _e("impression", 5, out, T0 + 23, request_id="r1", offer_id="o1"),
        _e("click", 6, out, T0 + 24, request_id="r1", offer_id="o1"),
        _e("coupon_claim", 7, out, T0 + 25, offer_id="o1"),
        _e("dismiss", 8, out, T0 + 26, request_id="r1", offer_id="o2"),
        _e("consent_changed", 0, back, T0, personalization=False),
        _view(1, back, T0 + 5, "baby"),
        _e("consent_changed", 2, back, T0 + 10, personalization=True),
        _view(3, back, T0 + 20, "home"),
        # The opt-out is timed before the browsing but reaches the topic after it.
        _view(0, late, T0 + 20, "baby"),
        _view(1, late, T0 + 30, "beauty"),
        _e("consent_changed", 2, late, T0 + 10, personalization=False),
    ]
    mids = sorted({e.member_id for e in events})
    asyncio.run(h.produce(worker_cfg.bootstrap, worker_cfg.events_topic, h.keyed(events)))
    with h.worker_process(worker_cfg, worker_log) as proc:
        seen = asyncio.run(h.wait_folded(worker_cfg.redis_url, worker_cfg.prefix, mids, len(events), 60))
        assert proc.poll() is None, worker_log.read_text()[-3000:]
        assert seen == len(events), worker_log.read_text()[-3000:]
    stored = {
        m: s.state
        for m, s in asyncio.run(h.read_members(worker_cfg.redis_url, worker_cfg.prefix, mids)).items()
    }

    s = stored[out]
    assert not s.personalization_consent
    assert s.cat_interest == {} and s.cat_last_ts == {} and s.counts == {} and s.last_ts == {}
    assert s.visit_days == [] and s.events_total == 0
    assert s.offers["o1"].claims == 1 and s.offers["o1"].clicks == 0 and s.offers["o1"].shown == 0
    assert s.offers["o1"].recent_shown_ts == [T0 + 23]  # the frequency cap's input
    assert s.offers["o2"].dismisses == 1 and s.coupon_claims_total == 1

    assert stored[back].personalization_consent and set(stored[back].cat_interest) == {"home"}
    assert stored[late].cat_interest == {} and not stored[late].personalization_consent

    # The worker and one in-order pass of the fold agree (the late opt-out converged).
    reference = h.offline_fold(sorted(events, key=lambda e: e.event_ts))
    for m in mids:
        assert stored[m] == reference[m], m

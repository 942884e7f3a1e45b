"""The fold skips an event id it already applied to the member (producer retries), within a bounded
window, without giving up order independence."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec

from features import events as ev
from features.state import APPLIED_IDS_KEPT, MemberState, already_applied, apply, fold, new_state

T0 = 1.76e9


def order(i: int, amount: float = 100.0, eid: str | None = None) -> ev.Order:
    return ev.Order(
        event_id=eid or f"o{i}", member_id="m", event_ts=T0 + i, amount=amount, categories=["home"]
    )


def _flat(x: Any, path: str = "") -> dict[str, Any]:
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _flat(val, f"{path}.{key}").items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _flat(val, f"{path}[{i}]").items()}
    return {path: x}


def same(a: MemberState, b: MemberState) -> bool:
    """Equal, floats up to rounding (decayed sums depend on the order of additions)."""
    fa, fb = _flat(msgspec.to_builtins(a)), _flat(msgspec.to_builtins(b))
    if fa.keys() != fb.keys():
        return False
    return all(
        math.isclose(x, y, rel_tol=1e-9) if isinstance(x, float) else x == y
        for x, y in ((fa[k], fb[k]) for k in fa)
    )


def test_same_event_id_twice_is_folded_once() -> None:
    """The issue's bug: one order published twice gave orders_total 2, spend_total 200."""
    state = new_state("m")
    e = order(0)
    apply(state, e)
    assert already_applied(state, e)
    apply(state, e)
    assert (state.orders_total, state.spend_total, state.events_total) == (1, 100.0, 1)


def test_duplicates_anywhere_in_a_shuffled_stream_fold_to_the_unique_state() -> None:
    events = [order(i) for i in range(40)]
    unique = fold(events)
    rng = random.Random(7)
    for _ in range(20):
        noisy = events + rng.sample(events, 15)
        rng.shuffle(noisy)
        assert same(fold(noisy), unique)


def test_window_is_bounded_and_keeps_the_latest_events() -> None:
    events = [order(i) for i in range(3 * APPLIED_IDS_KEPT)]
    state = fold(events)
    assert len(state.applied) == APPLIED_IDS_KEPT
    assert [ts for ts, _ in state.applied] == [e.event_ts for e in events[-APPLIED_IDS_KEPT:]]
    # A retry of a recent event is skipped; one older than the whole window cannot be recognised.
    apply(state, events[-1])
    assert state.orders_total == len(events)
    apply(state, events[0])
    assert state.orders_total == len(events) + 1

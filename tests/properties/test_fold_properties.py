"""Property: producer retries (the same event id again, anywhere later in the stream, in any order)
fold to the state of the unique events, and so does replay (``stream.replay.rebuild``) of that log."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from features import events as ev
from harness.arrival import consent_first
from harness.stream_driver import offline_fold, synthetic_events
from stream.replay import LogRecord, rebuild


def _flat(x: Any, path: str = "") -> dict[str, Any]:
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _flat(val, f"{path}.{key}").items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _flat(val, f"{path}[{i}]").items()}
    return {path: x}


def close(a: Any, b: Any) -> bool:
    fa, fb = _flat(msgspec.to_builtins(a)), _flat(msgspec.to_builtins(b))
    return fa.keys() == fb.keys() and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) if isinstance(x, float) else x == y
        for x, y in ((fa[k], fb[k]) for k in fa)
    )


@given(
    seed=st.integers(0, 10**6), n=st.integers(1, 300), dup_share=st.floats(0.0, 1.0), shuffle=st.booleans()
)
def test_retried_events_fold_once_in_any_order(seed: int, n: int, dup_share: float, shuffle: bool) -> None:
    # 30 members: ~10 events each, well inside the 64-event window a duplicate must fall in.
    events = synthetic_events(n, 30, seed=seed)
    rng = random.Random(seed)
    dups = [e for e in events if rng.random() < dup_share]
    noisy = list(events)
    for e in dups:  # a retry comes after its original
        noisy.insert(rng.randint(noisy.index(e) + 1, len(noisy)), e)
    if shuffle:
        rng.shuffle(noisy)
        # Consent changes before their member's later events: the exact-equality condition of
        # features.consent (unconstrained orders: tests/core/test_consent.py).
        noisy = consent_first(noisy)
    clean = offline_fold(events)
    folded = offline_fold(noisy)
    assert clean.keys() == folded.keys()
    assert all(close(clean[m], folded[m]) for m in clean)
    rebuilt = rebuild([LogRecord(None, None, None, ev.encode(e)) for e in noisy], [], 3600)
    assert rebuilt.duplicates == len(dups)
    assert all(close(clean[m], rebuilt.members[m].state) for m in clean)

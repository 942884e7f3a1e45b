"""Hostile conditions over real processes, in reduced form: the scenario functions ``benefits
reliability`` runs for docs/reliability.md.

Only the emptied store runs here: its pieces (the API's flag, the worker's hold, ``benefits replay``
clearing both) are tested apart in tests/service/test_state_lost.py and tests/stream/test_store_epoch.py,
but only this runs them together as an operator would (``benefits serve`` + ``benefits worker`` +
``benefits replay`` as commands). The slow-client and topic-recreated scenarios are not wrapped: they
would repeat tests/service/test_slow_clients.py (slow bodies against a real uvicorn) and
tests/stream/test_topic_recreated.py (both shapes, against a real worker and broker) at a higher cost.
"""

from __future__ import annotations

import pytest

from harness import reliability as rel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_redis_back_empty_is_reported_held_and_recovered_by_replay() -> None:
    o = rel.emptied_store(rate=100.0, fb_rate=30.0, history=1500, members=100, before_s=2.0, held_s=3.0,
                          after_s=2.0)  # fmt: skip
    failed = [k for k, ok in o.checks.items() if not ok and k not in o.timing]
    assert not failed, (failed, o.numbers, o.notes)
    assert o.numbers["quiet_cold_starts_after_detection"] == 0

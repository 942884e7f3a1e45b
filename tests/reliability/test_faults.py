"""Faults with real processes under load, in reduced form (seconds, not minutes): the same scenario
functions ``benefits reliability`` runs for docs/reliability.md. Each starts its own Redis, broker, API
and worker on free loopback ports."""

from __future__ import annotations

import pytest

from harness import reliability as rel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _explain(o: rel.Outcome) -> str:
    # Latency checks (o.timing) are reported in docs/reliability.md; tests gate on behaviour only.
    failed = [k for k, ok in o.checks.items() if not ok and k not in o.timing]
    return f"{o.name}: failed {failed}\n{o.numbers}"


def test_redis_sigkill_and_restart_under_load() -> None:
    """Zero 5xx, degraded (state_*) answers during the outage, personalised again without an API restart
    (and the catalog comes back: an empty Redis must not empty the served catalog)."""
    o = rel.redis_kill(rate=200.0, before_s=1.5, outage_s=2.0, after_s=3.0)
    assert o.behaviour_passed, _explain(o)
    assert o.numbers["degraded_during_outage"] > 0


def test_broker_sigkill_and_restart_under_load() -> None:
    """Recommend unaffected; feedback 503 during the outage (none silently accepted); every 202 before
    the kill read back from the topic and folded; accepted and folded again after the restart."""
    o = rel.broker_kill(rec_rate=200.0, fb_rate=80.0, before_s=1.5, outage_s=2.0, after_s=2.5)
    assert o.behaviour_passed, _explain(o)
    assert o.numbers["feedback_503_during_outage"] > 0


def test_worker_sigkill_keeps_exactly_once_under_recommend_load() -> None:
    o = rel.worker_kill(n_events=12_000, rate=4000.0, kills=1, rec_rate=100.0)
    assert o.behaviour_passed, _explain(o)


def test_bad_models_refused_through_api_and_registry_under_load() -> None:
    o = rel.bad_models(rate=100.0, seconds=6.0)
    assert o.behaviour_passed, _explain(o)

"""Reliability and security checks against real processes: ``benefits reliability`` (``make reliability``).

Every scenario starts its own parts (embedded Redis and broker on free loopback ports, ``benefits serve``
and ``benefits worker`` as child processes via :mod:`harness.stack`), drives them with a small bounded
asyncio HTTP/1.1 load generator (:class:`~harness.reliability.load.Load`; Locust stays with the load
test), breaks something and measures what the clients saw. The runner writes ``docs/reliability.md``;
``tests/reliability`` runs the same scenario functions with short durations.

Modules: :mod:`.stack` (private stack, :class:`Outcome`), :mod:`.load` (load generator, summaries),
``scenarios_faults``, ``scenarios_hostile``, ``scenarios_input``, ``scenarios_overload``,
``scenarios_security``, :mod:`.report`
(the document). The test models come from :mod:`harness.testmodel`, member states from
:mod:`harness.members`.

Scenarios (each returns a :class:`Outcome` with measured numbers and pass/fail checks):

- :func:`redis_kill`: SIGKILL Redis under load, restart it on the same port: zero 5xx, degraded answers
  during the outage, personalised answers again without restarting the API.
- :func:`broker_kill`: SIGKILL the broker under load: recommend unaffected, feedback 503 (counted), every
  feedback accepted before the kill was read back from the topic before the kill, feedback accepted
  again and folded by the worker after the restart.
- :func:`worker_kill`: SIGKILL the stream worker mid-stream (the stream harness of ``tests/stream``);
  the final Redis state equals one offline pass.
- :func:`bad_models`: corrupt, truncated and schema-mismatched models promoted through the admin API and
  through the registry pointer: refused with the reason, the previous model keeps serving.
- :func:`overload`: closed-loop capacity, then 3x that rate open-loop: p99 of accepted requests, share
  shed with fast 503s.
- :func:`slow_clients`: connections that send a recommend's headers and part of its body (with and
  without a key) or never finish their headers: 401 from the headers, 408 at the body deadline, real
  page views and feedback meanwhile personalised and accepted (no slot held).
- :func:`topic_recreated`: the broker loses its topic and it is created again (offsets restart at 0)
  with the worker up and with it down: every feedback event the API accepted folded exactly once, the
  offsets-backwards alarm raised.
- :func:`emptied_store`: Redis restarted without its data under load: the API says ``state_lost`` (no
  quiet cold starts), the worker holds folding, ``benefits replay`` rebuilds and both recover by
  themselves; every event folded once.
- :func:`schemathesis_run`: the OpenAPI spec fuzzed with each key scope, every check and the stateful
  phase (OpenAPI links): no 5xx, responses and status codes conform, refusals match the schema.
- :func:`security_checks`: route x key matrix over every route of the running spec, secrets and raw
  member ids absent from the API's log, body limits, erasure leaves no key of the member.

Hazard: the embedded broker (tansu, memory storage) and Redis (no persistence) lose their data when
killed. The checks are written for that and say so in the report; production runs durable ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.reliability.report import render
from harness.reliability.scenarios_faults import broker_kill, redis_kill, worker_kill
from harness.reliability.scenarios_hostile import emptied_store, slow_clients, topic_recreated
from harness.reliability.scenarios_input import (
    BAD_OFFERS,
    BAD_SETTINGS,
    SCHEMATHESIS_EXCEPTIONS,
    _offer,
    bad_input,
    bad_models,
    schemathesis_run,
)
from harness.reliability.scenarios_overload import overload
from harness.reliability.scenarios_security import PUBLIC_PATHS, dead_letters_suite, security_checks
from harness.reliability.stack import DOC, Outcome, Stack, load_avg, private_stack
from harness.testmodel import build_registry

__all__ = [
    "BAD_OFFERS",
    "BAD_SETTINGS",
    "DOC",
    "PUBLIC_PATHS",
    "SCENARIOS",
    "SCHEMATHESIS_EXCEPTIONS",
    "Outcome",
    "Stack",
    "_offer",
    "bad_input",
    "bad_models",
    "broker_kill",
    "build_registry",
    "dead_letters_suite",
    "emptied_store",
    "overload",
    "private_stack",
    "redis_kill",
    "run",
    "schemathesis_run",
    "security_checks",
    "slow_clients",
    "topic_recreated",
    "worker_kill",
]

log = logging.getLogger(__name__)


SCENARIOS: dict[str, Callable[[], Outcome]] = {
    "redis": redis_kill,
    "broker": broker_kill,
    "worker": worker_kill,
    "redis-empty": emptied_store,
    "topic-recreated": topic_recreated,
    "models": bad_models,
    "overload-256": lambda: _named(
        overload(max_in_flight=256), "Overload (3x capacity), before: max_in_flight=256"
    ),
    "overload": overload,
    "slow-clients": slow_clients,
    "schemathesis": schemathesis_run,
    "bad-input": bad_input,
    "dead-letters": dead_letters_suite,
    "security": security_checks,
}


def _named(o: Outcome, name: str) -> Outcome:
    o.name = name
    o.baseline = True
    return o


def run(only: Sequence[str] | None = None, out: Path | None = DOC) -> list[Outcome]:
    """Run the scenarios (all, or the named ones) in order; write the report when ``out`` is set."""
    started = time.time()
    load_before = load_avg()
    outcomes: list[Outcome] = []
    for name, fn in SCENARIOS.items():
        if only and name not in only:
            continue
        log.info("scenario %s ...", name)
        t0 = time.perf_counter()
        try:
            o = fn()
        except Exception as exc:
            log.exception("scenario %s crashed", name)
            o = Outcome(name, "crashed", lost="unknown: the scenario did not finish")
            o.check(f"ran to the end ({type(exc).__name__}: {exc})", False)
        verdict = "pass" if o.passed else "baseline" if o.baseline else "FAIL"
        log.info("scenario %s: %s in %.0fs", name, verdict, time.perf_counter() - t0)
        outcomes.append(o)
    if out is not None:
        out.write_text(render(outcomes, started, time.time() - started, load_before))
        log.info("wrote %s", out)
    return outcomes

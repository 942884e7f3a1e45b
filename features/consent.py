"""Personalisation consent as the fold and training see it: from which event time a member's behaviour
may be kept, and the periods in which it may not.

Semantics (one rule for the stream worker, replay and training):

- consent is on unless a ``consent_changed`` event says otherwise; the latest consent event at or
  before an event's time (by ``(event_ts, event_id)``) decides;
- the fold keeps the *behaviour* of an event (browsing, carts, searches, impression counts, clicks,
  visits, order details: see :mod:`features.state`) only when consent is on at its time **and** it is
  later than the member's latest opt-out. An opt-out therefore also forgets the behaviour collected
  before it (the member withdrew the consent it was collected under; PIPL art. 47 asks for deletion on
  withdrawal). Collection resumes from the first opt-in after the latest opt-out.

So the behaviour a state may hold is that of events with ``event_ts >= collect_from``, one number per
member (:func:`collect_from`): ``0`` when the member never opted out, ``inf`` while opted out, else the
time of the first opt-in after the latest opt-out. It only ever rises when a later opt-out arrives, and
the fold then clears the behaviour it holds (:func:`features.state.apply`).

Arrival order. A state never holds behaviour from before ``collect_from`` in any arrival order, and a
member whose latest consent event is an opt-out ends in exactly the in-order state whatever the order
(a late opt-out clears what was folded after it). Exact equality with the in-order state needs one more
thing: every consent change reaches the fold before the events timed after it (as when one producer, or
one partition in order, carries them). Otherwise behaviour is *lost*, never gained: the behaviour of an
event folded before an earlier-timed opt-out arrived, or dropped before an earlier-timed opt-in arrived,
cannot be told apart from the rest of a decayed counter or brought back (it was never stored). The
tests (tests/core/test_consent.py) check all three statements.

Training uses :func:`off_periods` to drop a member's rows while consent was off (``[off, on)``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import msgspec

#: Consent changes a state keeps: its latest opt-out and the earliest opt-ins after it. A member who
#: sends more opt-ins than this in a row without an opt-out loses the latest ones from the log; they
#: matter only if an opt-out timed between them arrives late (then collection resumes later: safe side).
CONSENT_CHANGES_KEPT = 16

NEVER = float("inf")


class ConsentChange(msgspec.Struct, array_like=True, gc=False, frozen=True, order=True):
    """One ``consent_changed`` event as the state keeps it (ordered by time, then event id)."""

    ts: float
    event_id: str
    personalization: bool


def record(log: list[ConsentChange], change: ConsentChange) -> None:
    """Add a consent change to a member's log (in place): sorted, pruned to the latest opt-out and the
    opt-ins after it (earlier changes can never matter again), bounded by :data:`CONSENT_CHANGES_KEPT`."""
    key = (change.ts, change.event_id)
    i = bisect.bisect_left([(c.ts, c.event_id) for c in log], key)
    if i < len(log) and (log[i].ts, log[i].event_id) == key:
        return
    log.insert(i, change)
    last_off = max((j for j, c in enumerate(log) if not c.personalization), default=0)
    if last_off:
        del log[:last_off]
    if len(log) > CONSENT_CHANGES_KEPT:
        del log[CONSENT_CHANGES_KEPT:]


def collect_from(log: list[ConsentChange]) -> float:
    """The event time from which behaviour may be kept (see the module docstring) for a pruned log."""
    if not log or log[0].personalization:
        return 0.0  # no opt-out (the pruned log starts with the latest opt-out when there is one)
    return log[1].ts if len(log) > 1 else NEVER


def off_periods(changes: Iterable[tuple[float, str, bool]]) -> list[tuple[float, float]]:
    """Half-open ``[off, on)`` periods with consent off, from a member's ``(event_ts, event_id,
    personalization)`` consent changes in any order; the last one may end at ``inf``."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for ts, _, on in sorted(changes):
        if not on and start is None:
            start = ts
        elif on and start is not None:
            if ts > start:
                out.append((start, ts))
            start = None
    if start is not None:
        out.append((start, NEVER))
    return out


def in_periods(ts: float, periods: list[tuple[float, float]]) -> bool:
    """True when ``ts`` falls in one of ``periods`` (sorted, disjoint, half-open)."""
    i = bisect.bisect_right([a for a, _ in periods], ts) - 1
    return i >= 0 and ts < periods[i][1]

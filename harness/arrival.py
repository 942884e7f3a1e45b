"""Arrival orders for order-independence tests of the fold (pure; used by tests only)."""

from __future__ import annotations

from collections.abc import Sequence

from features import events as ev


def consent_first(arrival: Sequence[ev.Event]) -> list[ev.Event]:
    """The same arrival order, except that each ``consent_changed`` moves ahead of every event of its
    member timed at or after it (when one arrived earlier). That is the condition under which any
    arrival order folds to exactly the in-order state (``features.consent``); without it a late consent
    change can only lose behaviour."""
    items = list(enumerate(arrival))  # (uid, event): a retried event appears twice with two uids
    changes = sorted(
        ((uid, e) for uid, e in items if isinstance(e, ev.ConsentChanged)),
        key=lambda p: (p[1].event_ts, p[1].event_id),
        reverse=True,
    )
    for uid, c in changes:
        at = next(i for i, (u, _) in enumerate(items) if u == uid)
        first = next(
            (
                i
                for i, (u, e) in enumerate(items)
                if u != uid and e.member_id == c.member_id and e.event_ts >= c.event_ts
            ),
            len(items),
        )
        if first < at:
            items.insert(first, items.pop(at))
    return [e for _, e in items]

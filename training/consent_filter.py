"""Consent in training: a member's impressions shown while their personalisation consent was off are not
training rows, and their behaviour from then is not in any row's features.

The periods come from the member's ``consent_changed`` events (:func:`features.consent.off_periods`:
from an opt-out to the next opt-in, ``[off, on)``). Rows inside one are dropped here; the point-in-time
replay (:mod:`training.dataset`) folds events through the shared fold, which already keeps no behaviour
during an opt-out and forgets what came before one (:mod:`features.state`), so the rows after a
re-consent see exactly what the service saw. Rows from before an opt-out stay: consent was valid when
they were collected (PIPL art. 15); erasure (``DELETE /v1/members/{id}``) is what removes a member's
history from the archive that training reads.

Offer-level statistics (impressions, clicks and claims per offer, no member identity) count every
member's events, as the stream worker's live counters do, so the prior columns match serving.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from features import consent
from features import events as ev

log = logging.getLogger(__name__)

#: Events whose whole content is behaviour (the fold ignores them during an opt-out); orders keep only
#: their growth value then, which is counted with them.
BEHAVIOURAL_TYPES = frozenset({"page_view", "search", "add_to_cart", "click", "impression", "order"})


@dataclass(frozen=True)
class ConsentFiltered:
    """What the consent filter left out of a training set."""

    #: impression rows shown while the member's consent was off
    rows_dropped: int = 0
    #: behavioural events timed while consent was off (the fold keeps only their obligation part)
    events_ignored: int = 0
    #: members with at least one opted-out period
    members_opted_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def off_periods_by_member(events: list[ev.Event]) -> dict[str, list[tuple[float, float]]]:
    """Each member's ``[off, on)`` periods (only members with one)."""
    changes: dict[str, list[tuple[float, str, bool]]] = {}
    for e in events:
        if isinstance(e, ev.ConsentChanged):
            changes.setdefault(e.member_id, []).append((e.event_ts, e.event_id, e.personalization))
    out = {m: consent.off_periods(c) for m, c in changes.items()}
    return {m: p for m, p in out.items() if p}


def drop_opted_out(df: pd.DataFrame, events: list[ev.Event]) -> tuple[pd.DataFrame, ConsentFiltered]:
    """``df`` (prepared impressions: ``member_id``, ``event_ts``, ``request_id``, ``group``) without the
    rows shown during an opt-out, regrouped; and what was left out."""
    periods = off_periods_by_member(events)
    if not periods:
        return df, ConsentFiltered()
    ignored = sum(
        1
        for e in events
        if e.member_id in periods
        and ev.event_type(e) in BEHAVIOURAL_TYPES
        and consent.in_periods(e.event_ts, periods[e.member_id])
    )
    members = df["member_id"].to_numpy()
    ts = df["event_ts"].to_numpy(dtype=np.float64)
    drop = np.zeros(len(df), dtype=bool)
    for member, spans in periods.items():
        rows = np.flatnonzero(members == member)
        for a, b in spans:
            drop[rows[(ts[rows] >= a) & (ts[rows] < b)]] = True
    report = ConsentFiltered(int(drop.sum()), ignored, len(periods))
    if report.rows_dropped or report.events_ignored:
        log.warning(
            "consent: dropped %d impression rows shown while %d members had opted out; of %d behavioural "
            "events from those periods only claims, caps, impression times and growth reach any row",
            report.rows_dropped,
            report.members_opted_out,
            report.events_ignored,
        )
    if not drop.any():
        return df, report
    out = df[~drop].reset_index(drop=True)
    out["group"] = (out["request_id"] != out["request_id"].shift()).cumsum().to_numpy() - 1
    return out, report

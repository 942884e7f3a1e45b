"""Lifecycle feature computations (issue 19): the member's stage, recency, paid membership, tier progress
and expiring points, read off the state at ``now`` by :mod:`features.lifecycle` under the
specification's programme configuration (``spec.lifecycle_config``), the same functions and the same
configuration eligibility and reasons read, so the model, the rules and the sentences agree.

All member scope: one number per request, broadcast to every offer row (cheap whatever the catalogue).
"Not applicable" is a finite value, never NaN, so LightGBM, ONNX and the compiled scorer see the same
rows:

==================== ===========================================================================
kind                 value
==================== ===========================================================================
lifecycle_stage      the stage's position in :data:`features.lifecycle.STAGES` (new 0, active 1,
                     silent 2, lapsing 3, returning 4)
days_since           days since the last visit (``event: visit``) or order (``event: order``),
                     :data:`~features.lifecycle.NEVER_DAYS` (365) when never
paid_days_left       days until an active paid membership ends; 365 (the cap) when it has no end
                     or the member has no active paid membership
paid_days_since_lapse days since the paid membership lapsed (ended or expired unrenewed); 365 when
                     it has not
tier_gap             growth value still missing to the next tier (``relative``: as a share of that
                     tier's threshold); 0 at the top tier (below it the gap is always positive)
points_expiring      points of the latest snapshot expiring within ``days`` (default: the
                     configuration's ``points_expiring_days``)
==================== ===========================================================================

Kinds that read the configuration are registered with ``lifecycle=True``: a specification declaring
one hashes the configuration with it (:meth:`features.spec.FeatureSpec.canonical`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from features import lifecycle as lc
from features.computations_base import Kind, MemberFn, number, one_of, only_params
from features.state import MemberState

if TYPE_CHECKING:
    from features.spec import FeatureSpec

_STAGE_CODES = {s: float(i) for i, s in enumerate(lc.STAGES)}


def _capped(days: float | None) -> float:
    return lc.NEVER_DAYS if days is None else min(lc.NEVER_DAYS, days)


def _lifecycle_stage(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p)
    config = spec.lifecycle_config
    return lambda s, now: _STAGE_CODES[lc.stage(s, now, config)]


def _days_since(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "event")
    if one_of(p, "event", ("visit", "order")) == "visit":
        return lc.days_since_visit
    return lc.days_since_order


def _paid_days_left(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p)
    return lambda s, now: _capped(lc.paid_days_left(s, now))


def _paid_days_since_lapse(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p)
    return lambda s, now: _capped(lc.paid_days_since_lapse(s, now))


def _tier_gap(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "relative")
    relative = p.get("relative", False)
    if not isinstance(relative, bool):
        raise ValueError(f"relative must be true or false, not {relative!r}")
    rules = spec.lifecycle_config.tiers

    def fn(s: MemberState, now: float) -> float:
        progress = lc.tier_progress(s, now, rules)
        if progress.gap is None or progress.next_tier is None:
            return 0.0
        if relative:
            return progress.gap / rules.thresholds[progress.next_tier]  # type: ignore[index]
        return progress.gap

    return fn


def _points_expiring(p: dict[str, Any], spec: FeatureSpec) -> MemberFn:
    only_params(p, "days")
    days = number(p, "days", spec.lifecycle_config.points_expiring_days)
    if not 0 < days <= 3650:
        raise ValueError(f"days must be in (0, 3650], not {days}")
    return lambda s, now: float(lc.points_expiring_within(s, now, days))


#: Registered into :data:`features.computations.KINDS`.
LIFECYCLE_KINDS: dict[str, Kind] = {
    "lifecycle_stage": Kind("member", _lifecycle_stage, lifecycle=True),
    "days_since": Kind("member", _days_since),
    "paid_days_left": Kind("member", _paid_days_left),
    "paid_days_since_lapse": Kind("member", _paid_days_since_lapse),
    "tier_gap": Kind("member", _tier_gap, lifecycle=True),
    "points_expiring": Kind("member", _points_expiring, lifecycle=True),
}

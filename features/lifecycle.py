"""The member's lifecycle read off the folded state at ``now``: stage, recency, paid membership, growth
value and tier progress, expiring points.

The fold (:mod:`features.state`) keeps only order-independent facts (latest visit, distinct visit days,
paid membership per the latest event, spend per week, points lots); everything that depends on the
clock is derived here, at read time, from ``now`` and a :class:`LifecycleConfig`. Eligibility, reasons
and the projection call these same functions, so an offer is never shown for a stage the features and
the sentence disagree about.

Stages (first that holds):

========== ==================================================================================
new        joined (or first seen) less than ``new_days`` ago
silent     no visit for ``silent_days`` or more (or no visit at all)
lapsing    no visit for ``lapsing_days`` or more
returning  the member came back within the last ``returning_days`` after a gap of at least
           ``silent_days`` between two visit days
active     otherwise
========== ==================================================================================
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.decay import DAY
from features.events import TIERS
from features.state import GROWTH_BUCKET_SECONDS, GROWTH_BUCKETS_KEPT, VISIT_DAYS_KEPT, MemberState

LifecycleStage = Literal["new", "active", "silent", "lapsing", "returning"]
STAGES: tuple[str, ...] = LifecycleStage.__args__  # type: ignore[attr-defined]

#: "days since" for something that never happened (also the cap of every days-since value).
NEVER_DAYS = 365.0

_Days = Annotated[float, Field(gt=0, le=3650)]


class TierRules(BaseModel):
    """The programme's tier rules: the growth value each tier needs over a rolling window."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: Growth value needed per tier above ``regular`` (ascending with the tier order).
    thresholds: dict[Literal["silver", "gold", "diamond"], Annotated[float, Field(gt=0)]] = {
        "silver": 1000.0,
        "gold": 3000.0,
        "diamond": 8000.0,
    }
    #: Growth value per currency unit spent.
    growth_per_currency: Annotated[float, Field(gt=0, le=1000)] = 1.0
    #: The rolling window (days; kept at 7-day granularity, at most the fold's 56 weeks).
    window_days: Annotated[float, Field(ge=7, le=GROWTH_BUCKETS_KEPT * 7)] = 365.0

    @model_validator(mode="after")
    def _ascending(self) -> TierRules:
        values = [self.thresholds[t] for t in TIERS[1:] if t in self.thresholds]
        if values != sorted(values) or len(set(values)) != len(values):
            raise ValueError("tier thresholds must rise with the tier (silver < gold < diamond)")
        return self


class LifecycleConfig(BaseModel):
    """The membership programme's configuration: stage thresholds (days), tier rules and the window of
    the "points expiring" feature; the defaults suit the demo shop.

    Built once at start-up from settings (``BENEFITS_LIFECYCLE`` / ``BENEFITS_LIFECYCLE_CONFIG_PATH``) and
    passed to eligibility (ranking and claims read it from the catalog snapshot's eligibility table),
    reasons and the feature specification (whose hash covers it when a lifecycle feature is declared,
    so a model is served only under the configuration it was trained with).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    new_days: _Days = 30.0
    lapsing_days: _Days = 14.0
    silent_days: _Days = 30.0
    returning_days: Annotated[float, Field(gt=0, le=VISIT_DAYS_KEPT - 2)] = 14.0
    tiers: TierRules = TierRules()
    #: Days ahead the ``points_expiring`` feature counts expiring points over (a feature may set its own).
    points_expiring_days: _Days = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleConfig:
        if self.lapsing_days >= self.silent_days:
            raise ValueError("lapsing_days must be below silent_days")
        return self


DEFAULT_CONFIG = LifecycleConfig()


class ConfigError(ValueError):
    """A programme configuration that cannot be used (unreadable file, bad field)."""


def parse_config(text: str | bytes, source: str = "lifecycle configuration") -> LifecycleConfig:
    """Validate a programme configuration's JSON text; :class:`ConfigError` names the bad fields."""
    try:
        return LifecycleConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'configuration'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: Path | str) -> LifecycleConfig:
    """The programme configuration in the JSON file at ``path``."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read lifecycle configuration {p}: {exc}") from None
    return parse_config(text, str(p))


def days_since(now: float, ts: float) -> float:
    """Days from ``ts`` to ``now`` (never negative), :data:`NEVER_DAYS` when ``ts`` is unset."""
    if ts <= 0.0:
        return NEVER_DAYS
    return min(NEVER_DAYS, max(0.0, (now - ts) / DAY))


def days_since_visit(state: MemberState, now: float) -> float:
    return days_since(now, state.last_visit_ts)


def days_since_order(state: MemberState, now: float) -> float:
    return days_since(now, state.last_ts.get("order", 0.0))


def stage(state: MemberState, now: float, config: LifecycleConfig = DEFAULT_CONFIG) -> str:
    """The member's lifecycle stage at ``now`` (see the module docstring)."""
    joined = state.joined_ts or state.first_seen_ts
    if joined and (now - joined) < config.new_days * DAY:
        return "new"
    idle = days_since_visit(state, now)
    if idle >= config.silent_days:
        return "silent"
    if idle >= config.lapsing_days:
        return "lapsing"
    today = int(now // DAY)
    days = [d for d in state.visit_days if d <= today]
    for prev, cur in itertools.pairwise(days):
        if cur - prev >= config.silent_days and today - cur < config.returning_days:
            return "returning"
    return "active"


# --- paid membership ------------------------------------------------------------------------------------


def paid_active(state: MemberState, now: float) -> bool:
    """A paid member at ``now``: started (or renewed) and neither ended nor past its expiry."""
    return state.paid_member and (state.paid_expires_ts == 0.0 or state.paid_expires_ts > now)


def paid_days_left(state: MemberState, now: float) -> float | None:
    """Days until an active paid membership with an expiry ends; None when not applicable."""
    if not paid_active(state, now) or state.paid_expires_ts == 0.0:
        return None
    return (state.paid_expires_ts - now) / DAY


def paid_lapsed_ts(state: MemberState, now: float) -> float:
    """When the member's paid membership lapsed (ended or expired unrenewed); 0 if it has not."""
    if state.paid_member:
        if state.paid_expires_ts and state.paid_expires_ts <= now:
            return state.paid_expires_ts
        return 0.0
    if state.paid_ended_ts and state.paid_ended_ts <= now:
        return state.paid_ended_ts
    return 0.0


def paid_days_since_lapse(state: MemberState, now: float) -> float | None:
    lapsed = paid_lapsed_ts(state, now)
    return (now - lapsed) / DAY if lapsed else None


# --- growth value and tiers -----------------------------------------------------------------------------


def growth_value(state: MemberState, now: float, rules: TierRules = DEFAULT_CONFIG.tiers) -> float:
    """Growth value over the rolling window ending at ``now`` (7-day buckets, future ones left out)."""
    current = int(now // GROWTH_BUCKET_SECONDS)
    first = current - int(rules.window_days // 7) + 1
    spend = sum(v for w, v in state.growth_weeks.items() if first <= w <= current)
    return spend * rules.growth_per_currency


def implied_tier(growth: float, rules: TierRules = DEFAULT_CONFIG.tiers) -> str:
    """The highest tier whose threshold ``growth`` reaches."""
    tier = "regular"
    for t in TIERS[1:]:
        need = rules.thresholds.get(t)  # type: ignore[call-overload]
        if need is not None and growth >= need:
            tier = t
    return tier


@dataclass(frozen=True)
class TierProgress:
    growth: float
    #: max(the programme's declared tier, the tier the growth value implies).
    tier: str
    #: The next tier and the growth value still missing to reach it (None at the top tier).
    next_tier: str | None
    gap: float | None


def tier_progress(state: MemberState, now: float, rules: TierRules = DEFAULT_CONFIG.tiers) -> TierProgress:
    growth = growth_value(state, now, rules)
    declared = TIERS.index(state.tier) if state.tier in TIERS else 0
    current = max(declared, TIERS.index(implied_tier(growth, rules)))
    for t in TIERS[current + 1 :]:
        need = rules.thresholds.get(t)  # type: ignore[call-overload]
        if need is not None:
            return TierProgress(growth, TIERS[current], t, max(0.0, need - growth))
    return TierProgress(growth, TIERS[current], None, None)


# --- points ---------------------------------------------------------------------------------------------


def points_expiring(state: MemberState, now: float, until_ts: float) -> int:
    """Points of the latest snapshot that expire after ``now`` and at or before ``until_ts``."""
    return sum(p for exp, p in state.points_expiring if now < exp <= until_ts)


def points_expiring_within(state: MemberState, now: float, days: float) -> int:
    return points_expiring(state, now, now + days * DAY)


def month_end_ts(now: float) -> float:
    """The first instant of the next UTC month (points expiring "this month" expire before it)."""
    d = datetime.fromtimestamp(now, UTC)
    nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return nxt.timestamp() - 1e-6

"""Schemathesis hooks for :func:`harness.reliability.scenarios_input.schemathesis_run` (loaded by the CLI
through ``SCHEMATHESIS_HOOKS``).

JSON Schema cannot compare two values, so a body the generator draws as *positive* may still break one
of the API's rules between fields, which the API refuses with a 422 naming the rule. Those rules are
written in the schema's descriptions (service/openapi.py); this hook makes each positive body keep them
before it is sent, touching only fields whose own values are valid (a negative case stays negative),
so ``positive_data_acceptance`` still catches every rule the schema *can* state and does not (e.g. a
subtype outside its kind's list). The rules:

- offers: campaign start and end go together and the end is after the start; the eligibility window's
  end is after its start; each ``max_*`` is at least its ``min_*``; in ``PUT`` the body's ``offer_id``
  is the path's;
- the experiment: arm names unique and not ``holdout``; the arms' and the holdout's shares sum to at
  most 1; ``model_version`` only on ``policy: model`` arms, and every model version one the registry
  holds (``BENEFITS_ST_MODEL_VERSIONS``: state, not shape);
- the import: a ``format`` parameter agrees with the body's media type;
- feedback: one idempotency key, the ``Idempotency-Key`` header or the body's ``event_id``;
- and one the other way: a *negative* ``event_ts`` just past the document's clock-bound limits is
  moved further out (:func:`sharpen_event_ts`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, TypeGuard

import schemathesis
from schemathesis.core.parameters import ParameterLocation

DAY = 86400.0
_MIN_MAX = (
    ("min_days_since_order", "max_days_since_order"),
    ("min_days_since_visit", "max_days_since_visit"),
    ("min_tier_gap", "max_tier_gap"),
)


def _num(v: Any) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _positive_body(case: Any) -> bool:
    meta = case.meta
    return meta is not None and not meta.is_negative_at(ParameterLocation.BODY)


def _after(t: float) -> float:
    """A time after ``t`` (a day later, or the next float where a day is below the precision)."""
    later = t + DAY
    return later if later > t else math.nextafter(t, math.inf)


def repair_offer(body: dict[str, Any], path_id: Any = None) -> None:
    start, end = body.get("campaign_start_ts"), body.get("campaign_end_ts")
    if _num(start) and (end is None or (_num(end) and end <= start)):
        body["campaign_end_ts"] = _after(start)
    elif _num(end) and start is None:
        body["campaign_start_ts"] = -_after(-end)
    elig = body.get("eligibility")
    if isinstance(elig, dict):
        lo, hi = elig.get("valid_from_ts"), elig.get("valid_to_ts")
        if _num(lo) and _num(hi) and hi <= lo:
            elig["valid_to_ts"] = _after(lo)
        for a, b in _MIN_MAX:
            x, y = elig.get(a), elig.get(b)
            if _num(x) and _num(y) and y < x:
                elig[a], elig[b] = y, x
    if isinstance(path_id, str) and isinstance(body.get("offer_id"), str):
        body["offer_id"] = path_id


def repair_experiment(body: dict[str, Any], versions: list[str]) -> None:
    arms = body.get("arms")
    if not isinstance(arms, list):
        return
    seen: set[str] = {"holdout"}
    shares: list[float] = []
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict):
            continue
        name = arm.get("name")
        if isinstance(name, str):
            k = i
            while name in seen:
                name, k = f"arm{k}", k + 1
            arm["name"] = name
            seen.add(name)
        if arm.get("model_version") is not None and arm.get("policy", "model") != "model":
            arm["model_version"] = None
        elif isinstance(arm.get("model_version"), str) and versions:
            arm["model_version"] = versions[i % len(versions)]
        if _num(arm.get("share")):
            shares.append(arm["share"])
    holdout = body.get("holdout")
    hold = 0.0
    if isinstance(holdout, dict) and _num(holdout.get("share")):
        hold = float(holdout["share"])
    total = sum(shares) + hold
    if total > 1.0 and shares:
        scale = 0.99 / total
        for arm in arms:
            if isinstance(arm, dict) and _num(arm.get("share")):
                arm["share"] = arm["share"] * scale
        if isinstance(holdout, dict) and _num(holdout.get("share")):
            holdout["share"] = holdout["share"] * scale
    shadow = body.get("shadow")
    if isinstance(shadow, dict) and isinstance(shadow.get("model_version"), str) and versions:
        shadow["model_version"] = versions[0]


def sharpen_event_ts(body: dict[str, Any], now: float, ttl: float, skew: float) -> None:
    """A *negative* body's ``event_ts`` just outside the document's bounds: move it two days further.
    The bounds move with the clock (service/openapi.py), so a value a hair past the maximum served a
    few seconds ago is inside the API's window by the time it is sent; two days out it is outside
    whatever the clock. Only ever moves a value away from the accepted window (a negative case stays
    negative)."""
    ts = body.get("event_ts")
    if not _num(ts):
        return
    if now - ttl <= ts < now - ttl + DAY + 60:
        body["event_ts"] = ts - 2 * DAY
    elif now + skew - 600 < ts <= now + skew:
        body["event_ts"] = ts + 2 * DAY


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    op = case.operation
    method, path = op.method.upper(), op.path
    if path in ("/v1/feedback", "/v1/feedback/batch") and isinstance(case.body, dict) and case.meta:
        if case.meta.is_negative_at(ParameterLocation.BODY):
            ttl = _env_float("BENEFITS_ST_MEMBER_TTL_SECONDS", 90 * DAY)
            skew = _env_float("BENEFITS_ST_EVENT_MAX_FUTURE_SKEW_SECONDS", 300.0)
            sharpen_event_ts(case.body, time.time(), ttl, skew)
        elif case.body.get("event_id") is not None and not case.meta.is_negative_at(ParameterLocation.HEADER):
            # One idempotency key per request: the header or the body's event_id (a 422 otherwise).
            headers = case.headers or {}
            for name in [h for h in headers if h.lower() == "idempotency-key"]:
                del headers[name]
        return
    if path == "/v1/admin/offers/import" and case.meta is not None:
        csv_body = "csv" in (case.media_type or "")
        if csv_body and case.meta.is_negative_at(ParameterLocation.BODY) and not isinstance(case.body, str):
            # A JSON value drawn as a wrong-typed CSV body reaches the wire as text (``{}`` is a readable
            # one-column CSV): send an empty file, which the schema refuses too.
            case.body = ""
        query = case.query
        negative = case.meta.is_negative_at(ParameterLocation.QUERY)
        if isinstance(query, dict) and query.get("format") in ("csv", "json") and not negative:
            query["format"] = "json" if "json" in (case.media_type or "") else "csv"
        return
    if not isinstance(case.body, dict) or not _positive_body(case):
        return
    if path == "/v1/admin/offers" and method == "POST":
        repair_offer(case.body)
    elif path == "/v1/admin/offers/{offer_id}" and method == "PUT":
        repair_offer(case.body, (case.path_parameters or {}).get("offer_id"))
    elif path == "/v1/admin/experiment" and method == "PUT":
        versions = [v for v in os.environ.get("BENEFITS_ST_MODEL_VERSIONS", "").split(",") if v]
        repair_experiment(case.body, versions)

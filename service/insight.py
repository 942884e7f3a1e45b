"""Read-only views for operations: campaign state per offer, this process's health from its own
metrics, and a member as the ranker sees them. Pure functions over the catalogue snapshot, the metrics
registry and a member state; the admin routes (``service.admin``) serve them as JSON.
"""

from __future__ import annotations

import math
import time
from typing import Any

from features.offer_stats import OfferCounters
from features.offers import Offer
from features.state import MemberState
from service.business_metrics import pacing_now
from service.catalog import CatalogSnapshot
from service.metrics import STAGES, Metrics
from service.objective import Objective
from service.quantiles import histogram_quantile

#: Feature-name prefixes that describe the offer or the member x offer pair, not the member.


def _r(x: float, nd: int = 4) -> float | None:
    return round(x, nd) if math.isfinite(x) else None


def campaigns(
    snap: CatalogSnapshot | None,
    metrics: Metrics,
    stats: dict[str, OfferCounters],
    objective: Objective,
    now: float | None = None,
) -> dict[str, Any]:
    """One row per offer: stock, budget, pacing, claims (total and per minute), refusals by reason."""
    now = time.time() if now is None else now
    business = metrics.business
    business.sample(snap, stats, now)
    rate = business.per_minute()
    out: list[dict[str, Any]] = []
    if snap is not None:
        pace = pacing_now(snap, now, objective)
        for i, o in enumerate(snap.offers):
            claimed = float(snap.claimed[i])
            spent = float(snap.cost_used[i])
            outcomes = dict(business.outcomes.get(o.offer_id, {}))
            c = stats.get(o.offer_id)
            row: dict[str, Any] = {
                "offer_id": o.offer_id,
                "title": o.title,
                "kind": o.kind,
                "active": o.active,
                "limited": o.inventory is not None,
                "budgeted": o.budget is not None,
                "inventory": o.inventory,
                "inventory_reserved": int(claimed),
                "inventory_left": max(0, o.inventory - int(claimed)) if o.inventory is not None else None,
                "budget": o.budget,
                "budget_spent": _r(spent, 2),
                "budget_spent_share": _r(spent / o.budget) if o.budget else None,
                "campaign_elapsed_share": _elapsed(o, now),
                "pacing": _r(float(pace[i])),
                "claims": int(max(c.claims if c is not None else 0, claimed)),
                "impressions": c.impressions if c is not None else 0,
                "claims_per_min": _r(rate.get(o.offer_id, 0.0), 2) if rate else None,
                "claims_accepted_here": outcomes.pop("accepted", 0),
                "refusals": outcomes,
            }
            out.append(row)
    reasons = sorted({r for row in out for r in row["refusals"]})
    return {
        "catalog_version": snap.version if snap is not None else None,
        "at": now,
        "rate_window_seconds": _window(business),
        "refusal_reasons": reasons,
        "offers": out,
    }


def _window(business: Any) -> float | None:
    samples = business._samples
    return round(samples[-1][0] - samples[0][0], 1) if len(samples) >= 2 else None


def _elapsed(o: Offer, now: float) -> float | None:
    if o.campaign_start_ts is None or o.campaign_end_ts is None:
        return None
    return _r(min(1.0, max(0.0, (now - o.campaign_start_ts) / (o.campaign_end_ts - o.campaign_start_ts))))


# -- health ----------------------------------------------------------------------------------------------


def _samples(metrics: Metrics, name: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name:
                out.append((s.name, dict(s.labels), float(s.value)))
    return out


def _by(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, labels, value in _samples(metrics, name):
        out[labels.get(label, "")] = out.get(labels.get(label, ""), 0.0) + value
    return out


def stage_latency_ms(metrics: Metrics) -> dict[str, dict[str, float | None]]:
    per: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
    counts: dict[str, float] = {}
    for _, labels, value in _samples(metrics, "benefits_recommend_stage_seconds_bucket"):
        per.setdefault(labels["stage"], []).append((float(labels["le"]), value))
    for _, labels, value in _samples(metrics, "benefits_recommend_stage_seconds_count"):
        counts[labels["stage"]] = value
    out: dict[str, dict[str, float | None]] = {}
    for stage, buckets in per.items():
        buckets.sort()
        row: dict[str, float | None] = {"count": counts.get(stage, 0.0)}
        for q in (0.5, 0.95, 0.99):
            v = histogram_quantile(q, buckets)
            row[f"p{int(q * 100)}"] = round(v * 1e3, 3) if v is not None else None
        out[stage] = row
    return out


def health(metrics: Metrics, model_version: str | None, snap: CatalogSnapshot | None) -> dict[str, Any]:
    modes = _by(metrics, "benefits_recommend_total", "mode")
    degraded = _by(metrics, "benefits_recommend_degraded_total", "cause")
    answers = sum(modes.values())
    feedback: dict[str, dict[str, float]] = {}
    for _, labels, value in _samples(metrics, "benefits_feedback_total"):
        feedback.setdefault(labels["type"], {})[labels["outcome"]] = value
    deadline = sum(v for _, _, v in _samples(metrics, "benefits_recommend_deadline_exceeded_total"))
    return {
        "model_version": model_version,
        "catalog_version": snap.version if snap is not None else None,
        "catalog_offers": len(snap) if snap is not None else 0,
        "answers": answers,
        "answers_by_mode": modes,
        "degraded": sum(degraded.values()),
        "degraded_share": _r(sum(degraded.values()) / answers) if answers else None,
        "degraded_by_cause": degraded,
        "degraded_share_by_cause": {k: _r(v / answers) for k, v in degraded.items()} if answers else {},
        "deadline_exceeded": deadline,
        "stage_latency_ms": stage_latency_ms(metrics),
        "feedback": feedback,
        "edge_rejected_by_cause": _by(metrics, "benefits_http_rejected_total", "cause"),
        "models_refused_by_reason": _by(metrics, "benefits_model_refused_total", "reason"),
    }


# -- member ----------------------------------------------------------------------------------------------

_ATTRIBUTES = (
    "tier",
    "paid_member",
    "paid_since_ts",
    "points",
    "personalization_consent",
    "birth_month",
    "region",
    "joined_ts",
    "first_seen_ts",
    "last_event_ts",
    "events_total",
    "orders_total",
    "spend_total",
    "orders_with_coupon",
    "coupon_claims_total",
    "coupon_redeems_total",
)


def member(state: MemberState, snap: CatalogSnapshot | None, now: float | None = None) -> dict[str, Any]:
    """Attributes, the member-side model features (for a default home-page context), category interest
    and per-offer history with the offer's caps."""
    now = time.time() if now is None else now
    attributes: dict[str, Any] = {a: getattr(state, a) for a in _ATTRIBUTES if hasattr(state, a)}
    # The business's declared attributes (profile_updated), as stored.
    attributes.update({f"attributes.{k}": v.value for k, v in sorted(state.attributes.items())})
    features: dict[str, float | None] = {}
    if snap is not None:
        # The member-side columns of the specification the service runs, bound by name.
        p = snap.table.projection
        features = {n: _r(float(v)) for n, v in zip(p.member_names, p.member_vector(state, now), strict=True)}
    interest = {
        cat: _r(float(counter.at_index(now, 2)), 3) for cat, counter in sorted(state.cat_interest.items())
    }
    offers = []
    for oid, inter in sorted(state.offers.items()):
        i = snap.table.index.get(oid) if snap is not None else None
        offer = snap.offers[i] if snap is not None and i is not None else None
        caps = offer.caps.model_dump() if offer is not None else None
        offers.append(
            {
                "offer_id": oid,
                "title": offer.title if offer is not None else None,
                "shown": inter.shown,
                "clicks": inter.clicks,
                "claims": inter.claims,
                "dismisses": inter.dismisses,
                "impressions_since_action": inter.impressions_since_action(),
                "last_shown_ts": inter.last_shown_ts or None,
                "last_claim_ts": inter.last_claim_ts or None,
                "last_dismiss_ts": inter.last_dismiss_ts or None,
                "caps": caps,
            }
        )
    return {
        "member_id": state.member_id,
        "attributes": attributes,
        "features": features,
        "category_interest_7d": interest,
        "offers": offers,
    }

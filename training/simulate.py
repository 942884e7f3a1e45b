"""Simulator: members with lifecycles, the demo catalog, a member event stream and logged impressions with
outcomes.

What it models, and why (the point is that personalisation from the features must matter, and that we
know the truth to compare against):

- **Segments** with their own tastes (:mod:`training.sim_population`): young trend-seekers (limited drops,
  fashion/beauty, stylist); price-sensitive members in smaller cities (discount coupons, points); older
  members (health and nutrition consults, home pickup, dedicated service); high-value paid members (free
  shipping, priority delivery, partner perks); and casual members. Segment sets tier, paid membership,
  points, tenure, region, device, channel, basket size, activity and category preferences. A share of
  members are (or become, mid-horizon) young parents who browse baby products.
- **Lifecycles** (:mod:`training.sim_population`, :mod:`training.sim_membership`): at the start some
  members are silent (no visit for 30-150 days) or lapsing (14-30 days), some are new, some join during
  the horizon and some active ones stop visiting in it. Each has a history before the horizon (orders over
  the last year summing to the growth value their tier needs, the last visit). Paid memberships (monthly
  or annual PLUS plans) carry their expiry and renew or lapse at it; some members' memberships lapsed just
  before the horizon. Orders raise the growth value and move members up a tier under
  :mod:`features.lifecycle`'s rules (old spend leaving the window moves them down); points earned expire a
  year later and a part of many balances expires within weeks. Claiming a lifecycle offer changes what
  happens next: a silent member woken by a wake-up coupon comes back, a renewal offer makes the renewal
  likelier, a tier nudge brings the order that closes the gap, expiring points get spent.
- **Sessions** (:mod:`training.sim_timeline`) follow a daily rhythm (lunch and evening peaks), a weekly
  one (busier weekends) and a sales day (2.5x traffic, coupons more attractive). A session has a focus
  category, page views, searches, maybe a cart and an order (which may redeem a claimed coupon and earns
  points). **Pushes**: the CRM sends a member away for 3 days or more one lifecycle offer they qualify for
  (``source = push``: no page, no visit).
- **Requests** (:mod:`training.sim_run`): some page views ask for a slate. The *logging policy* samples
  the slate among the offers that :func:`features.eligibility.evaluate` says are eligible for the member's
  simulated state at that time (caps, cool-downs, inventory, budget and the lifecycle rules all apply),
  mixing uniform exploration with a mild "same category as the page" preference and a push for lifecycle
  offers, by Plackett-Luce sampling. Each shown item records its propensity: the probability that the
  policy picked it at its position given the items above it.
- **Outcomes** (:mod:`training.sim_truth`) are drawn from a latent true claim probability ``true_p``
  (logistic). Ordinary offers: segment x offer subtype, the member's recent interest in the offer's
  category (decayed page views, 1-day half-life, as folded into the member state), the page context, value
  vs basket for the price-sensitive, birthday month, the sales day, repeated exposure (fatigue) and a
  per-member intercept. Lifecycle offers: the member's lifecycle (time away, days left on the paid
  membership or since it lapsed, the gap to the next tier against the basket, points expiring, tenure) and
  segment. A claim is preceded by a click; some non-claims click or dismiss.

Everything is also an event (``impression``, ``click``, ``coupon_claim`` / ``benefit_use`` /
``consult_booked``, ``dismiss``, ``order``, ``coupon_redeem``, ``points_changed`` with expiring lots,
``profile_updated``, ``tier_changed``, ``paid_membership_started`` / ``_renewed`` / ``_ended`` with
``expires_at``; history before the horizon included).

Output directory::

    events.jsonl         one features.events.encode(event) per line, sorted by event_ts
    impressions.parquet  request_id, member_id, offer_id, event_ts, position, page_type, category,
                         device, channel, propensity, label (claimed), clicked, true_p, segment,
                         source (page | push), family (the offer's family, else its kind), stage
                         (the member's lifecycle stage at the request)
    members.parquet      member_id, segment, tier, paid_member, points, region, birth_month, joined_ts,
                         device, channel, sessions_per_day, basket_mean, new_parent_ts (0 = none),
                         start_stage, last_visit_ts, growth_value, paid_expires_ts, paid_period_days,
                         paid_lapsed_ts, points_expiring, points_expire_ts
    catalog.json         list of Offer.model_dump(mode="json")
    meta.json            parameters, counts (per start stage, per family, programme events), time
                         window, sales day, timings
    candidates.parquet   with ``offpolicy_log`` only: request_id, offer_id, true_p, logging_p of every
                         eligible offer of every request; impressions then also carry
                         ``propensity_marginal`` (see training/sim_offpolicy.py)

Determinism: the same arguments (including ``seed``) give byte-identical outputs.
Units: timestamps are Unix seconds (UTC); the simulated "local" clock is UTC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from features.offers import CATEGORY_INDEX, Offer
from training.sim_population import SEGMENTS, START_STAGES, Members, make_members
from training.sim_run import DEFAULT_START_TS, IMPRESSION_COLUMNS, SimConfig, simulate
from training.sim_truth import AFFINITY, BASE_LOGIT, true_logit


def simulate_to_dir(
    out: Path,
    n_members: int = 2000,
    days: float = 14.0,
    n_offers: int = 200,
    seed: int = 1,
    progress: bool = True,
    offpolicy_log: bool = False,
) -> dict[str, Any]:
    """Simulate into ``out`` (see the module docstring for the files). Returns the meta dict."""
    cfg = SimConfig(
        n_members=n_members,
        days=days,
        n_offers=n_offers,
        seed=seed,
        progress=progress,
        offpolicy_log=offpolicy_log,
    )
    return simulate(cfg, Path(out))


def load_catalog(path: Path) -> list[Offer]:
    """The offers of a catalogue file (a list of offers, or ``{"taxonomy", "offers"}``), checked."""
    from features.taxonomy import load_catalog_file

    return load_catalog_file(path)[1]


def category_index(name: str | None) -> int:
    return CATEGORY_INDEX.get(name, -1) if name else -1


__all__ = [
    "AFFINITY",
    "BASE_LOGIT",
    "DEFAULT_START_TS",
    "IMPRESSION_COLUMNS",
    "SEGMENTS",
    "START_STAGES",
    "Members",
    "SimConfig",
    "category_index",
    "load_catalog",
    "make_members",
    "simulate",
    "simulate_to_dir",
    "true_logit",
]

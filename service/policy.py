"""The ranking policy built from settings: slate rules, the objective's weights, reason premises."""

from __future__ import annotations

from infra.settings import Settings
from service.objective import Objective
from service.ranking import Policy
from service.reasons import ReasonRules


def policy_from(settings: Settings) -> Policy:
    """The :class:`~service.ranking.Policy` every recommend request of this process ranks with."""
    s = settings
    return Policy(
        max_per_category=s.slate_max_per_category,
        min_kinds=s.slate_min_kinds,
        epsilon=s.exploration_epsilon,
        exploration=s.exploration_mode,
        temperature=s.softmax_temperature,
        objective=Objective(
            claim_value=s.objective_claim_value,
            value_weight=s.value_weight,
            cost_weight=s.cost_weight,
            pacing_floor=s.pacing_floor,
            pacing_reserve_fraction=s.pacing_reserve_fraction,
        ),
        reasons=ReasonRules(
            min_browse_weight=s.reason_min_browse_weight,
            min_category_orders=s.reason_min_category_orders,
            min_orders=s.reason_min_orders,
            frequent_orders=s.reason_frequent_orders,
            near_threshold_share=s.reason_near_threshold_share,
            coupon_order_share=s.reason_coupon_order_share,
            min_coupon_claims=s.reason_min_coupon_claims,
            high_value_share=s.reason_high_value_share,
            limited_share=s.reason_limited_share,
            popular_min_impressions=s.reason_popular_min_impressions,
            popular_min_claims=s.reason_popular_min_claims,
            sensitive_categories=frozenset(s.sensitive_categories),
            # The same object the catalog's eligibility tables and the feature specification get.
            lifecycle=s.lifecycle,
        ),
        fairness_guard=s.fairness_guard_enabled,
    )

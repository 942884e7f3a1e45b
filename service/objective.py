"""The ranking objective lives in :mod:`features.objective` (pure, so that training evaluates the policy
that serves, counterfactually); re-exported here for the service's modules."""

from features.objective import Objective, campaign_windows, pacing, score, shares_left, time_left_share

__all__ = ["Objective", "campaign_windows", "pacing", "score", "shares_left", "time_left_share"]

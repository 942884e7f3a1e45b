"""Softmax (Plackett-Luce) exploration: the logged propensities are the probabilities the ranker used."""

from __future__ import annotations

from collections import Counter

import numpy as np

from features.projection import Context
from service.catalog import build_snapshot
from service.ranking import Mode, Policy, rank
from tests.service.test_ranking import NOW, _catalog, state_with


def test_logged_propensities_match_the_sampling_frequencies() -> None:
    snap = build_snapshot(1, _catalog(), NOW)
    policy = Policy(exploration="softmax", temperature=2.0, min_kinds=1, max_per_category=3)
    rng = np.random.default_rng(7)
    n = 4000
    first: Counter[str] = Counter()
    pair: Counter[tuple[str, str]] = Counter()
    logged_first: dict[str, float] = {}
    logged_second: dict[tuple[str, str], float] = {}
    slate_probs = []
    for _ in range(n):
        out = rank(
            snap, state_with(), Context(), NOW, 3, model=None, mode=Mode.NON_PERSONALISED, policy=policy,
            rng=rng,
        )  # fmt: skip
        a, b = out.items[0], out.items[1]
        first[a.offer_id] += 1
        pair[(a.offer_id, b.offer_id)] += 1
        # The same slate prefix always logs the same propensity (it is a function of the scores only).
        assert logged_first.setdefault(a.offer_id, a.propensity) == a.propensity
        assert logged_second.setdefault((a.offer_id, b.offer_id), b.propensity) == b.propensity
        slate_probs.append(np.prod([it.propensity for it in out.items]))
        assert all(0.0 < it.propensity <= 1.0 for it in out.items)
    assert abs(sum(logged_first.values()) - 1.0) < 0.05  # nearly every first item was seen
    for oid, p in logged_first.items():
        se = np.sqrt(p * (1 - p) / n)
        assert abs(first[oid] / n - p) < 4 * se + 1e-3, oid
    for (a, b), p in logged_second.items():
        if first[a] >= 300:
            se = np.sqrt(p * (1 - p) / first[a])
            assert abs(pair[(a, b)] / first[a] - p) < 4 * se + 1e-3, (a, b)
    # Not degenerate: the slate varies, and no slate is certain.
    assert len(first) > 3 and max(slate_probs) < 1.0


def test_rules_only_ignores_learned_and_prior_scores() -> None:
    snap = build_snapshot(1, _catalog(), NOW)
    out = rank(
        snap, state_with(), Context(), NOW, 3, model=None, mode=Mode.NON_PERSONALISED,
        policy=Policy(min_kinds=1), rules_only=True,
    )  # fmt: skip
    # Equal base scores: the order is value (value_norm), then the slate rules.
    values = [it.value for it in out.items]
    assert values == sorted(values, reverse=True)
    assert len({it.score for it in out.items}) == len(out.items)

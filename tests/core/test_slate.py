"""The slate policy (features.slate): its per-position distributions are the probabilities its draws
follow, and the vectorised draws used offline follow the same rules and probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import slate


def _cand(seed: int, n: int = 24, pinned: int = 1) -> slate.Candidates:
    rng = np.random.default_rng(seed)
    return slate.Candidates(
        score=rng.normal(0.0, 1.0, n),
        pinned=np.r_[np.ones(pinned, dtype=bool), np.zeros(n - pinned, dtype=bool)],
        kinds=rng.integers(0, 3, n),
        categories=rng.integers(0, 5, n),
        families=rng.integers(0, n - 4, n),  # some clones
    )


def _frequencies(
    cand: slate.Candidates, limit: int, policy: slate.SlatePolicy, draws: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((len(cand), limit))
    for _ in range(draws):
        for j, (i, _) in enumerate(slate.select(cand, limit, policy, rng)):
            out[i, j] += 1
    return out / draws


@pytest.mark.parametrize(
    "policy",
    [
        slate.SlatePolicy(max_per_category=1, min_kinds=3, exploration="softmax", temperature=0.7),
        slate.SlatePolicy(max_per_category=2, min_kinds=2, exploration="epsilon", epsilon=0.3),
    ],
)
def test_vectorised_draws_follow_the_one_at_a_time_policy(policy: slate.SlatePolicy) -> None:
    cand = _cand(1)
    draws = 20_000
    one = _frequencies(cand, 5, policy, draws, seed=2)
    many = slate.sample_marginals(cand, 5, policy, np.random.default_rng(3), draws)
    se = np.sqrt(np.maximum(one * (1 - one), 1.0 / draws) / draws) * np.sqrt(2)
    assert np.all(np.abs(many - one) < 4.5 * se + 1e-9), np.abs(many - one).max()
    # Both respect the rules: at most one offer per position (the last one stays empty as often in
    # both when the category cap and the kind mix leave nothing), and the pinned one is always first.
    assert np.all(many.sum(axis=0) <= 1.0 + 1e-12)
    assert np.all(np.abs(many.sum(axis=0) - one.sum(axis=0)) < 0.02)
    assert many[0, 0] == 1.0 and one[0, 0] == 1.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), limit=st.integers(1, 6), temperature=st.floats(0.2, 3.0))
def test_logged_propensities_are_the_distribution_of_each_position(
    seed: int, limit: int, temperature: float
) -> None:
    """What a drawn slate logs as each position's propensity is the probability
    :meth:`Slate.distribution` gives that offer after the offers above it (the sequential estimator's
    target probabilities rest on this)."""
    cand = _cand(seed, n=12)
    policy = slate.SlatePolicy(
        max_per_category=2, min_kinds=2, exploration="softmax", temperature=temperature
    )
    picks = slate.select(cand, limit, policy, np.random.default_rng(seed))
    s = slate.Slate(cand, limit, policy)
    for i, prop in picks:
        dist = s.distribution(explore=True)
        assert dist is not None
        offers, probs = dist
        assert abs(float(probs[offers.index(i)]) - prop) < 1e-12
        np.testing.assert_allclose(probs.sum(), 1.0)
        s.take(i, prop)
    assert s.distribution(explore=True) is None  # full, or nothing more allowed


def test_greedy_marginals_are_the_greedy_slate() -> None:
    cand = _cand(4)
    policy = slate.SlatePolicy(max_per_category=1, min_kinds=3)
    picks = slate.select(cand, 5, policy, None)
    many = slate.sample_marginals(cand, 5, policy, np.random.default_rng(0), 50)  # epsilon 0: no draw
    for j, (i, prop) in enumerate(picks):
        assert prop == 1.0 and many[i, j] == 1.0

"""Exact Plackett-Luce position marginals against enumeration of every ordered prefix, and against the
draws on a catalogue-sized example."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.pl_marginals import position_marginals


def enumerate_marginals(pi: np.ndarray, k: int) -> np.ndarray:
    pi = pi / pi.sum()
    out = np.zeros((len(pi), k))
    for prefix in itertools.permutations(range(len(pi)), k):
        p, left = 1.0, 1.0
        for a in prefix:
            p *= pi[a] / left
            left -= pi[a]
        for j, a in enumerate(prefix):
            out[a, j] += p
    return out


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=7),
    k=st.integers(1, 5),
)
def test_matches_enumeration_of_every_prefix(weights: list[float], k: int) -> None:
    pi = np.asarray(weights)
    k = min(k, len(pi))
    want = enumerate_marginals(pi, k)
    for j in range(k):
        got = position_marginals(pi, np.arange(len(pi)), np.full(len(pi), j))
        np.testing.assert_allclose(got, want[:, j], rtol=1e-9, atol=1e-12)


def test_a_slate_of_a_catalogue_matches_its_draws() -> None:
    rng = np.random.default_rng(0)
    n = 120
    pi = 0.3 / n + 0.7 * rng.dirichlet(np.full(n, 0.3))  # the simulator's mix: uniform + a skewed part
    items, positions = np.array([0, 5, 17, 42, 3, 99]), np.arange(6)
    got = position_marginals(pi, items, positions)
    draws = 200_000
    keys = np.log(pi)[None, :] + rng.gumbel(size=(draws, n))  # Gumbel-top-k = Plackett-Luce
    top = np.argsort(-keys, axis=1)[:, :6]
    freq = np.array([(top[:, j] == a).mean() for a, j in zip(items, positions, strict=True)])
    se = np.sqrt(freq * (1 - freq) / draws)
    assert np.all(np.abs(got - freq) < 4.5 * se + 1e-5), (got, freq)


def test_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(ValueError, match="distinct"):
        position_marginals(np.ones(4), np.array([1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="positions"):
        position_marginals(np.ones(4), np.array([1]), np.array([4]))
    with pytest.raises(ValueError, match="non-negative"):
        position_marginals(np.array([0.5, -0.1]), np.array([0]), np.array([0]))

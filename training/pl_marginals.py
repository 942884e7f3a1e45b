"""Exact position marginals of Plackett-Luce sampling: P(offer a is drawn at position j).

A Plackett-Luce draw without replacement with weights ``pi`` (normalised) orders the offers as
independent exponential clocks ``E_i ~ Exp(pi_i)`` ring: the offer at position ``j`` is the one whose
clock rings ``(j+1)``-th. Hence

    P(a at j) = integral over t >= 0 of  pi_a exp(-pi_a t) * P(exactly j other clocks rang by t) dt

and "how many others rang by t" is a Poisson-binomial count with probabilities ``1 - exp(-pi_i t)``,
computed by the usual dynamic programme over offers (counts 0..j only). The integral is taken by
Gauss-Legendre quadrature on panels ``[0, h], [h, 2h], [2h, 4h], ...`` up to where a Chernoff bound says
the rest is below ``1e-13``: far below any propensity that matters (the logged ones are >= 1e-9).

Why it is needed: the logged ``propensity`` of a slate position is *conditional* on the offers above it.
Estimating another policy slot by slot needs the *marginal* probability of the logged offer at its
position (``propensity_marginal``); the simulator, which knows its logging policy's weights over every
eligible offer, writes it with this function. Cost: about a millisecond per slate of 100 offers.
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: Gauss-Legendre nodes per panel, and the width of the first panel (in units of 1 / total weight).
_NODES = 8
_FIRST_PANEL = 0.5
_TAIL = 1e-13
_MAX_PANELS = 64
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_NODES)


def _panels(pi: np.ndarray, items: np.ndarray, j_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and weights covering [0, T] with the tail beyond T negligible for every query."""
    edges = _FIRST_PANEL * 2.0 ** np.arange(_MAX_PANELS)
    pa = pi[items]
    # Mean number of the *other* offers rung by each edge, per query: (queries, edges).
    rung = len(pi) - np.exp(-np.outer(edges, pi)).sum(axis=1)
    mu = rung[None, :] - (-np.expm1(-np.outer(pa, edges)))
    j = max(float(j_max), 1e-300)
    # Chernoff: P(N <= j) <= exp(-mu) (e mu / j)^j when mu > j; the tail is at most that times the
    # queried offer's own survival exp(-pi_a t).
    log_bound = np.where(mu > j, -mu + j * (1.0 + np.log(np.maximum(mu, 1e-300) / j)), 0.0)
    log_tail = (log_bound - np.outer(pa, edges)).max(axis=0)
    below = np.flatnonzero(log_tail < math.log(_TAIL))
    last = int(below[0]) if len(below) else _MAX_PANELS - 1
    e = np.r_[0.0, edges[: last + 1]]
    lo, hi = e[:-1, None], e[1:, None]
    nodes = (lo + hi) / 2.0 + (hi - lo) / 2.0 * _GL_X[None, :]
    weights = (hi - lo) / 2.0 * _GL_W[None, :]
    return nodes.ravel(), weights.ravel()


def position_marginals(pi: np.ndarray, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """P(``items[m]`` is drawn at position ``positions[m]``) under Plackett-Luce sampling with weights
    ``pi`` over all offers (indices of ``items`` point into ``pi``, distinct; positions from 0)."""
    pi = np.asarray(pi, dtype=np.float64)
    if pi.ndim != 1 or len(pi) == 0 or not np.all(pi >= 0) or pi.sum() <= 0:
        raise ValueError("pi must be a non-empty vector of non-negative weights with a positive sum")
    pi = pi / pi.sum()
    items = np.asarray(items, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    if len(items) == 0:
        return np.zeros(0)
    if len(np.unique(items)) != len(items):
        raise ValueError("items must be distinct")
    j_max = int(positions.max())
    if positions.min() < 0 or j_max >= len(pi):
        raise ValueError("positions must be in [0, number of offers)")
    t, w = _panels(pi, items, j_max)
    width = j_max + 1
    fired = -np.expm1(-np.outer(pi, t))  # (n, Q): P(offer i rang by t)
    rest = np.ones(len(pi), dtype=bool)
    rest[items] = False
    base = _counts(fired[rest], width)  # (Q, width): the offers nobody asked about
    # Each query's count: the base times every *other* queried offer's factor (1 - q + q z).
    counts = np.broadcast_to(base, (len(items), *base.shape)).copy()
    for m, a in enumerate(items.tolist()):
        q = np.broadcast_to(fired[a][None, :, None], (len(items), len(t), 1)).copy()
        q[m] = 0.0  # an offer is not among the "others" of its own query
        counts[:, :, 1:] = counts[:, :, 1:] * (1.0 - q) + counts[:, :, :-1] * q
        counts[:, :, :1] *= 1.0 - q
    pa = pi[items][:, None]
    at_j = np.take_along_axis(counts, positions[:, None, None], axis=2)[:, :, 0]
    out: np.ndarray = np.clip((pa * np.exp(-pa * t[None, :]) * at_j * w[None, :]).sum(axis=1), 0.0, 1.0)
    return out


@functools.cache
def _fold(width: int) -> np.ndarray:
    """(width², width) 0/1 matrix taking coefficient pairs (e, f) to degree e + f, dropping >= width."""
    out = np.zeros((width * width, width))
    for e in range(width):
        for f in range(width - e):
            out[e * width + f, e + f] = 1.0
    return out


def _counts(fired: np.ndarray, width: int) -> np.ndarray:
    """P(exactly c of the offers rang by each node), c < width: the Poisson-binomial generating
    polynomial prod_i (1 - q_i + q_i z) over the rows of ``fired`` (n, Q), truncated to degree
    ``width - 1``. Multiplied as a balanced tree (pairs, then pairs of pairs): a few array operations
    per level instead of a Python step per offer."""
    n, q = fired.shape
    poly = np.zeros((max(n, 1), q, width))
    poly[:, :, 0] = 1.0
    if n:
        poly[:, :, 0] = 1.0 - fired
        if width > 1:
            poly[:, :, 1] = fired
    fold = _fold(width)
    while len(poly) > 1:
        if len(poly) % 2:
            one = np.zeros((1, q, width))
            one[:, :, 0] = 1.0
            poly = np.concatenate([poly, one])
        a, b = poly[0::2], poly[1::2]
        poly = (a[:, :, :, None] * b[:, :, None, :]).reshape(len(a), q, width * width) @ fold
    out: np.ndarray = poly[0]
    return out

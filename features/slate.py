"""The slate: which eligible offers fill the positions, under the slate rules and the exploration mode.

Pure (numpy, no clock): the service ranks with it (``service.ranking``) and the counterfactual evaluation
(``training.counterfactual``) computes a candidate policy's probabilities with the same code, so the
policy evaluated offline is the one that serves.

Rules, in the order :meth:`Slate.allowed` applies them:

- pinned offers first (then by score; ties keep the catalog order);
- at most one offer per family (``Offer.family_key``), pinned or not;
- at most ``max_per_category`` per category ("no category" is one more category); pinned offers bypass
  the cap but count toward it;
- at least ``min_kinds`` kinds (coupon / benefit / consult) when the eligible set has them: once the
  positions left are only enough for the missing kinds, an offer of a kind already in is not allowed.

Exploration (each position's draw is among the offers the rules still allow; a pinned best is always
taken):

- ``epsilon``: the greedy pick, or w.p. ``epsilon`` a uniform pick among the allowed unpinned offers;
- ``softmax``: Plackett-Luce, w.p. proportional to ``exp(score / temperature)``.

A position's *propensity* is the probability of its offer given the offers above it
(:meth:`Slate.distribution`); a slate's is their product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlatePolicy:
    max_per_category: int = 2
    min_kinds: int = 2
    #: "epsilon" or "softmax" (see the module docstring).
    exploration: str = "epsilon"
    epsilon: float = 0.0
    #: Softmax temperature in score units.
    temperature: float = 0.5


@dataclass(frozen=True)
class Candidates:
    """The eligible offers' columns (aligned): what the rules read."""

    score: np.ndarray
    pinned: np.ndarray
    kinds: np.ndarray
    categories: np.ndarray
    families: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def order(self) -> list[int]:
        """Pinned first, then by score; stable on the given order for ties."""
        out: list[int] = np.lexsort((-self.score, ~self.pinned)).tolist()
        return out


class Slate:
    """A slate being filled, position by position; indices are into the :class:`Candidates`."""

    def __init__(
        self, cand: Candidates, limit: int, policy: SlatePolicy, order: list[int] | None = None
    ) -> None:
        n = len(cand)
        self.cand = cand
        self.policy = policy
        self.order = cand.order() if order is None else order
        self.limit = min(limit, n)
        kinds = cand.kinds.tolist()
        self.need_kinds = min(policy.min_kinds, self.limit, len(set(kinds)))
        self._kinds, self._cats = kinds, cand.categories.tolist()
        self._pinned, self._fam = cand.pinned.tolist(), cand.families.tolist()
        self.kinds_in: set[int] = set()
        self.families_in: set[int] = set()
        self.per_cat: dict[int, int] = {}
        self.taken: set[int] = set()
        self.picks: list[tuple[int, float]] = []

    def allowed(self, j: int) -> bool:
        if j in self.taken or self._fam[j] in self.families_in:
            return False  # one offer per family, pinned or not: two clones are one offer to the member
        if self._pinned[j]:
            return True  # pinned offers bypass the mix and category rules (they still count toward them)
        if self.per_cat.get(self._cats[j], 0) >= self.policy.max_per_category:
            return False
        missing = self.need_kinds - len(self.kinds_in)
        return not (
            missing > 0 and missing >= self.limit - len(self.picks) and self._kinds[j] in self.kinds_in
        )

    @property
    def full(self) -> bool:
        return len(self.picks) >= self.limit

    def best(self) -> int | None:
        """The greedy pick for the next position (None when nothing is allowed)."""
        return next((j for j in self.order if self.allowed(j)), None)

    def valid(self) -> list[int]:
        """The allowed unpinned offers, in ranking order: what exploration draws among."""
        return [j for j in self.order if self.allowed(j) and not self._pinned[j]]

    def take(self, j: int, propensity: float = 1.0) -> None:
        self.picks.append((j, propensity))
        self.taken.add(j)
        self.families_in.add(self._fam[j])
        self.kinds_in.add(self._kinds[j])
        c = self._cats[j]
        self.per_cat[c] = self.per_cat.get(c, 0) + 1

    def softmax(self, valid: list[int]) -> np.ndarray:
        """Plackett-Luce probabilities of ``valid`` (stable: shifted by the maximum first)."""
        z = self.cand.score[valid] / self.policy.temperature
        w = np.exp(z - z.max())
        out: np.ndarray = w / w.sum()
        return out

    def distribution(self, explore: bool) -> tuple[list[int], np.ndarray] | None:
        """The next position's offers and their probabilities given the picks so far; None when the
        slate is full or nothing is allowed. ``explore`` False: the greedy pick w.p. 1."""
        if self.full:
            return None
        best = self.best()
        if best is None:
            return None
        if not explore or self._pinned[best]:
            return [best], np.ones(1)
        valid = self.valid()
        if self.policy.exploration == "softmax":
            return valid, self.softmax(valid)
        eps = self.policy.epsilon
        p = np.full(len(valid), eps / len(valid))
        p[valid.index(best)] += 1.0 - eps
        return valid, p


def explores(policy: SlatePolicy) -> bool:
    """Whether the policy draws at random at all (softmax always; epsilon-greedy when epsilon > 0)."""
    return policy.exploration == "softmax" or policy.epsilon > 0.0


def select(
    cand: Candidates,
    limit: int,
    policy: SlatePolicy,
    rng: np.random.Generator | None,
    order: list[int] | None = None,
) -> list[tuple[int, float]]:
    """The slate: (index into ``cand``, propensity) per position. Greedy without ``rng``."""
    if len(cand) == 0:
        return []
    s = Slate(cand, limit, policy, order)
    explore = rng is not None and explores(policy)
    softmax = policy.exploration == "softmax"
    while not s.full:
        best = s.best()
        if best is None:
            break
        chosen, prop = best, 1.0
        if explore and not s._pinned[best]:
            assert rng is not None
            valid = s.valid()
            if softmax:
                w = s.softmax(valid)
                k = int(rng.choice(len(valid), p=w))
                s.take(valid[k], float(w[k]))
                continue
            if rng.random() < policy.epsilon:
                chosen = valid[int(rng.integers(len(valid)))]
            # P(chosen) under epsilon-greedy: the greedy pick w.p. 1-eps, plus a uniform draw w.p. eps.
            prop = (1.0 - policy.epsilon) * (chosen == best) + policy.epsilon / len(valid)
        s.take(chosen, prop)
    return s.picks


def sample_marginals(
    cand: Candidates, limit: int, policy: SlatePolicy, rng: np.random.Generator, samples: int
) -> np.ndarray:
    """(candidates, limit): how often each candidate lands at each position over ``samples`` exploring
    draws of :func:`select`, drawn all at once (the same rules on arrays of samples, and each
    position's draw by the Gumbel-max trick, which samples the same softmax). The off-policy estimate
    of a softmax policy needs these marginals; one draw at a time is a hundred times slower."""
    n = len(cand)
    out = np.zeros((n, limit))
    if n == 0 or limit <= 0:
        return out
    limit_eff = min(limit, n)
    order = np.asarray(cand.order())
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    fam = np.unique(cand.families, return_inverse=True)[1]
    cat = np.unique(cand.categories, return_inverse=True)[1]
    kind = np.unique(cand.kinds, return_inverse=True)[1]
    need_kinds = min(policy.min_kinds, limit_eff, int(kind.max()) + 1)
    pinned = np.asarray(cand.pinned, dtype=bool)
    taken = np.zeros((samples, n), dtype=bool)
    fam_in = np.zeros((samples, int(fam.max()) + 1), dtype=bool)
    cat_n = np.zeros((samples, int(cat.max()) + 1), dtype=np.int64)
    kind_in = np.zeros((samples, int(kind.max()) + 1), dtype=bool)
    active = np.ones(samples, dtype=bool)
    softmax = policy.exploration == "softmax"
    z = cand.score / policy.temperature if softmax else None
    for step in range(limit_eff):
        missing = need_kinds - kind_in.sum(axis=1)
        block = (missing > 0) & (missing >= limit_eff - step)
        rules = (cat_n[:, cat] < policy.max_per_category) & ~(block[:, None] & kind_in[:, kind])
        allowed = ~taken & ~fam_in[:, fam] & (pinned[None, :] | rules) & active[:, None]
        active &= allowed.any(axis=1)
        if not active.any():
            break
        best = np.argmin(np.where(allowed, rank[None, :], n), axis=1)
        valid = allowed & ~pinned[None, :]
        explore = active & ~pinned[best]
        if softmax:
            assert z is not None
            keys = np.where(valid, z[None, :] + rng.gumbel(size=(samples, n)), -np.inf)
            choice = np.where(explore, np.argmax(keys, axis=1), best)
        else:
            uniform = np.argmax(np.where(valid, rng.random((samples, n)), -1.0), axis=1)
            choice = np.where(explore & (rng.random(samples) < policy.epsilon), uniform, best)
        rows = np.flatnonzero(active)
        c = choice[rows]
        np.add.at(out[:, step], c, 1.0)
        taken[rows, c] = True
        fam_in[rows, fam[c]] = True
        kind_in[rows, kind[c]] = True
        np.add.at(cat_n, (rows, cat[c]), 1)
    result: np.ndarray = out / samples
    return result

"""Exponentially time-decayed counters that do not depend on arrival order.

A counter keeps, for each half-life h, the value ``sum_i w_i * 2^-((ref - t_i)/h)`` where ``ref`` is the
latest event time it has seen. Adding an event older than ``ref`` decays *its* weight to ``ref``;
adding a newer one decays the stored sums forward. Both paths compute the same sum, so a shuffled
stream ends in the same state as a sorted one (up to float rounding, ~1e-12 relative). Reading at a
time ``now`` decays the sums from ``ref`` to ``now``; the clock is always a parameter.

Units: timestamps and half-lives are seconds.
"""

from __future__ import annotations

import math

import msgspec

HOUR = 3600.0
DAY = 24 * HOUR

#: The half-lives every decayed counter keeps, in order. Changing this changes FEATURE schema.
HALF_LIVES_SECONDS: tuple[float, ...] = (HOUR, DAY, 7 * DAY, 30 * DAY)
HALF_LIFE_LABELS: tuple[str, ...] = ("1h", "1d", "7d", "30d")
_RATES = tuple(math.log(2.0) / h for h in HALF_LIVES_SECONDS)


class Decayed(msgspec.Struct, array_like=True, gc=False):
    """Decayed sums at each of :data:`HALF_LIVES_SECONDS`, referenced to ``ref_ts``."""

    ref_ts: float = 0.0
    sums: list[float] = msgspec.field(default_factory=lambda: [0.0] * len(HALF_LIVES_SECONDS))

    def add(self, ts: float, weight: float = 1.0) -> None:
        sums = self.sums
        if ts >= self.ref_ts:
            dt = ts - self.ref_ts
            if dt > 0.0 and self.ref_ts > 0.0:
                for i, rate in enumerate(_RATES):
                    sums[i] = sums[i] * math.exp(-rate * dt) + weight
            else:
                for i in range(len(sums)):
                    sums[i] += weight
            self.ref_ts = ts
        else:
            dt = self.ref_ts - ts
            for i, rate in enumerate(_RATES):
                sums[i] += weight * math.exp(-rate * dt)

    def at(self, now: float) -> list[float]:
        """The sums decayed to ``now`` (no decay if ``now`` is before the last event: clock skew)."""
        dt = now - self.ref_ts
        if dt <= 0.0 or self.ref_ts == 0.0:
            return list(self.sums)
        return [s * math.exp(-rate * dt) for s, rate in zip(self.sums, _RATES, strict=True)]

    def at_index(self, now: float, i: int) -> float:
        dt = now - self.ref_ts
        if dt <= 0.0 or self.ref_ts == 0.0:
            return self.sums[i]
        return self.sums[i] * math.exp(-_RATES[i] * dt)

"""The one histogram quantile of the project: Prometheus' ``histogram_quantile`` over cumulative buckets.

Used for every percentile computed from bucket counts: the console's stage latencies
(:mod:`service.insight`, from this process's own histograms) and, from scrapes, the load test's stage
histograms, the reliability overload scenario and the stream benchmark's freshness histogram.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly inside the bucket that holds it
    (Prometheus' ``histogram_quantile``; the first bucket's lower bound is 0). None when it is empty.

    Hazard: the answer is only as fine as the buckets; a quantile in the +Inf bucket is reported as the
    highest finite bound (a lower limit of the truth).
    """
    if not cumulative:
        return None
    total = cumulative[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower
            in_bucket = count - below
            if in_bucket <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / in_bucket
        lower, below = upper, count
    return lower

"""What the simulator adds to its output for counterfactual evaluation (``SimConfig.offpolicy_log``).

- ``propensity_marginal`` on every impression: the probability that the logging policy shows that offer
  at that position, marginal over the offers above it (exact, :mod:`training.pl_marginals`). The logged
  ``propensity`` is conditional on the offers above; slot-by-slot estimators of another policy need the
  marginal (see ``training.counterfactual``).
- ``candidates.parquet``: every eligible offer of every request with its true claim probability
  (``true_p``: the oracle) and its logging weight (``logging_p``, the Plackett-Luce weight the logging
  policy drew with). With it the true value of *any* policy on the logged requests is computable
  exactly, and the evaluation takes each request's eligible set as logged instead of re-deriving it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.pl_marginals import position_marginals

CANDIDATES_FILE = "candidates.parquet"


class OffPolicyLog:
    def __init__(self) -> None:
        self.request_id: list[str] = []
        self.offer_id: list[str] = []
        self.true_p: list[np.ndarray] = []
        self.logging_p: list[np.ndarray] = []
        self.marginal: list[np.ndarray] = []

    def add(
        self, request_id: str, offer_ids: list[str], true_p: np.ndarray, pi: np.ndarray, shown: np.ndarray
    ) -> None:
        """One request: its eligible offers with their truth and logging weights, and the slate drawn
        (``shown``: indices into them, top first)."""
        self.request_id.extend([request_id] * len(offer_ids))
        self.offer_id.extend(offer_ids)
        self.true_p.append(np.asarray(true_p, dtype=np.float64))
        self.logging_p.append(np.asarray(pi, dtype=np.float64))
        self.marginal.append(position_marginals(pi, shown, np.arange(len(shown))))

    def marginal_column(self) -> np.ndarray:
        """``propensity_marginal`` per impression, in the order the slates were added."""
        return np.concatenate(self.marginal) if self.marginal else np.zeros(0)

    def frame(self) -> pd.DataFrame:
        empty = np.zeros(0)
        return pd.DataFrame(
            {
                "request_id": self.request_id,
                "offer_id": self.offer_id,
                "true_p": np.concatenate(self.true_p) if self.true_p else empty,
                "logging_p": np.concatenate(self.logging_p) if self.logging_p else empty,
            }
        )

    def write(self, out: Path) -> None:
        self.frame().to_parquet(Path(out) / CANDIDATES_FILE, index=False)

"""LightGBM training with a time-based split and early stopping.

The split is by impression time, never random: the model is validated on the future of what it was
trained on, as it will be used. ``train < t1 <= valid < t2 <= test`` with ``t1``/``t2`` at the 70% and
80% quantiles of impression times by default; the validation slice drives early stopping, the test slice
is only scored once at the end. All rows of one request share a time, so a request never straddles
a boundary.

The objective is binary (claim or not) by default: the service needs a calibrated probability for the
value re-rank (expected value = p x offer value). ``lambdarank`` (LightGBM's LambdaMART over the rows of
each request, early-stopped on validation NDCG@5) is offered beside it; its score is not a probability,
so the pipeline always calibrates it into P(claim) on the validation slice (Platt by default) and the
served graph outputs that probability, keeping p x value - cost meaningful. NDCG per request is reported
by :mod:`training.evaluate` for both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import lightgbm as lgb
import numpy as np

log = logging.getLogger(__name__)

Objective = Literal["binary", "lambdarank"]
OBJECTIVES: tuple[str, ...] = Objective.__args__  # type: ignore[attr-defined]

#: Two threads: the machines are 2-core and shared with the service under test (field notes).
NUM_THREADS = 2

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.06,
    "num_leaves": 31,
    "min_data_in_leaf": 80,
    "feature_fraction": 0.85,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 127,
    "num_threads": NUM_THREADS,
    "force_row_wise": True,
    "deterministic": True,
    "verbose": -1,
    "seed": 7,
}


@dataclass
class Split:
    train: np.ndarray  # boolean masks over the rows
    valid: np.ndarray
    test: np.ndarray
    t1: float
    t2: float

    def window(self, ts: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        sel = ts[mask]
        return (float(sel.min()), float(sel.max())) if len(sel) else (0.0, 0.0)


def time_split(ts: np.ndarray, train_frac: float = 0.7, valid_frac: float = 0.1) -> Split:
    """Masks for train / valid / test by impression-time quantiles (see module docstring)."""
    if len(ts) == 0:
        raise ValueError("no rows to split")
    # Cut at distinct times so that every slice is non-empty even when many rows share a time
    # (e.g. all households offered one campaign share its start).
    uniq, counts = np.unique(ts, return_counts=True)
    cum = np.cumsum(counts) / len(ts)
    if len(uniq) < 3:
        raise ValueError("need at least three distinct impression times for a time split")
    i1 = min(int(np.searchsorted(cum, train_frac)) + 1, len(uniq) - 2)
    i2 = min(max(int(np.searchsorted(cum, train_frac + valid_frac)) + 1, i1 + 1), len(uniq) - 1)
    t1, t2 = float(uniq[i1]), float(uniq[i2])
    train = ts < t1
    valid = (ts >= t1) & (ts < t2)
    test = ts >= t2
    return Split(train, valid, test, t1, t2)


def member_split(members: np.ndarray, valid_frac: float = 0.1, test_frac: float = 0.2) -> Split:
    """Masks by member (a stable hash of the id): test members are never seen in training, so the test
    slice measures how the model ranks *new* members. ``t1``/``t2`` are NaN (no time cut)."""
    import zlib

    uniq, inverse = np.unique(np.asarray(members).astype(str), return_inverse=True)
    h = np.array([zlib.crc32(m.encode()) % 10_000 for m in uniq.tolist()], dtype=np.float64)[inverse] / 1e4
    test = h < test_frac
    valid = (h >= test_frac) & (h < test_frac + valid_frac)
    train = ~(test | valid)
    if not train.any() or not test.any():
        raise ValueError("too few members for a split by member")
    return Split(train, valid, test, float("nan"), float("nan"))


@dataclass
class TrainResult:
    booster: lgb.Booster
    best_iteration: int
    seconds: float
    params: dict[str, Any]


def group_sizes(groups: np.ndarray) -> list[int]:
    """Run lengths of the request numbers ``groups`` (a request's rows are contiguous): LightGBM's
    ``group`` argument for a ranking objective."""
    g = np.asarray(groups)
    if len(g) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    return np.diff(np.r_[starts, len(g)]).astype(int).tolist()


def train_binary(
    X: np.ndarray,
    y: np.ndarray,
    split: Split,
    params: dict[str, Any] | None = None,
    num_boost_round: int = 1000,
    early_stopping_rounds: int = 40,
    feature_names: list[str] | tuple[str, ...] | None = None,
    *,
    objective: Objective = "binary",
    groups: np.ndarray | None = None,
) -> TrainResult:
    """Fit on ``split.train`` with early stopping on ``split.valid`` (log loss; NDCG@5 for
    ``lambdarank``, which needs ``groups``, the request number of each row)."""
    p = {**DEFAULT_PARAMS, **(params or {}), "objective": objective}
    if objective == "lambdarank":
        if groups is None:
            raise ValueError("lambdarank needs the request of each row (groups)")
        return _train_ranker(X, y, split, p, num_boost_round, early_stopping_rounds, feature_names, groups)
    t0 = time.perf_counter()
    if feature_names is None:
        from features.projection import FEATURE_NAMES

        feature_names = FEATURE_NAMES if X.shape[1] == len(FEATURE_NAMES) else None
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(X.shape[1])]
    dtrain = lgb.Dataset(X[split.train], label=y[split.train], feature_name=names, free_raw_data=True)
    callbacks: list[Any] = [lgb.log_evaluation(period=0)]
    valid_sets = []
    if split.valid.any() and 0 < y[split.valid].sum() < split.valid.sum():
        dvalid = lgb.Dataset(X[split.valid], label=y[split.valid], reference=dtrain)
        valid_sets = [dvalid]
        callbacks.append(lgb.early_stopping(early_stopping_rounds, verbose=False))
    booster = lgb.train(
        {**p, "metric": "binary_logloss"},
        dtrain,
        num_boost_round=num_boost_round,
        valid_sets=valid_sets,
        valid_names=["valid"] if valid_sets else None,
        callbacks=callbacks,
    )
    return _trimmed(booster, split, t0, p, "trees")


def _trimmed(booster: lgb.Booster, split: Split, t0: float, p: dict[str, Any], what: str) -> TrainResult:
    """Keep only the trees up to the best iteration: the exported ONNX graph and LightGBM's own predict
    then agree without anyone having to remember num_iteration."""
    best = booster.best_iteration or booster.current_iteration()
    if booster.best_iteration and booster.best_iteration < booster.current_iteration():
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    seconds = time.perf_counter() - t0
    log.info("trained %d %s on %d rows in %.1fs", best, what, int(split.train.sum()), seconds)
    return TrainResult(booster, int(best), seconds, p)


def _train_ranker(
    X: np.ndarray,
    y: np.ndarray,
    split: Split,
    p: dict[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
    feature_names: list[str] | tuple[str, ...] | None,
    groups: np.ndarray,
) -> TrainResult:
    t0 = time.perf_counter()
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(X.shape[1])]
    label = y.astype(np.int32)
    dtrain = lgb.Dataset(
        X[split.train], label=label[split.train], group=group_sizes(groups[split.train]), feature_name=names
    )
    callbacks: list[Any] = [lgb.log_evaluation(period=0)]
    valid_sets = []
    if split.valid.any() and y[split.valid].sum() > 0:
        dvalid = lgb.Dataset(
            X[split.valid], label=label[split.valid], group=group_sizes(groups[split.valid]), reference=dtrain
        )
        valid_sets = [dvalid]
        callbacks.append(lgb.early_stopping(early_stopping_rounds, verbose=False))
    booster = lgb.train(
        {**p, "metric": "ndcg", "eval_at": [5]},
        dtrain,
        num_boost_round=num_boost_round,
        valid_sets=valid_sets,
        valid_names=["valid"] if valid_sets else None,
        callbacks=callbacks,
    )
    return _trimmed(booster, split, t0, p, "lambdarank trees")


def feature_importance(booster: lgb.Booster) -> list[tuple[str, float]]:
    """(feature, share of total gain), largest first."""
    gain = booster.feature_importance(importance_type="gain")
    total = float(gain.sum()) or 1.0
    names = booster.feature_name()
    pairs = sorted(zip(names, (float(g) / total for g in gain), strict=True), key=lambda kv: -kv[1])
    return pairs

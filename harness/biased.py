"""A deliberately biased model for the fairness tests and the audit's self-check: it learned that gold
and diamond members claim small coupons and the others big ones, so it ranks the smaller version of an
offer family first for high tiers (the "big-data price discrimination" the guard and the audit catch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from features.projection import FEATURE_INDEX, FEATURE_NAMES
from harness.testmodel import random_rows, served_onnx
from service.model import LoadedModel, load_model


def biased_booster(seed: int = 0, trees: int = 40, n_rows: int = 6000) -> Any:
    import lightgbm as lgb

    from training.export import float32_thresholds

    rng = np.random.default_rng(seed)
    f = FEATURE_INDEX
    x = random_rows(n_rows, rng)
    x[:, f["tier"]] = rng.integers(0, 4, n_rows)
    x[:, f["offer_value"]] = rng.uniform(1.0, 40.0, n_rows)
    high = x[:, f["tier"]] >= 2
    slope = np.where(high, -0.3, 0.3)  # high tiers: the smaller the coupon the likelier the claim
    logit = -1.0 + slope * (x[:, f["offer_value"]] - 15.0)
    y = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1, "num_threads": 1,
              "verbose": -1, "seed": seed}  # fmt: skip
    booster = lgb.train(params, lgb.Dataset(x, label=y, feature_name=list(FEATURE_NAMES)), trees)
    return float32_thresholds(booster)


def biased_model(directory: Path, seed: int = 0) -> LoadedModel:
    """The biased model exported to ONNX under ``directory`` and loaded as the service loads models."""
    path = Path(directory) / "biased.onnx"
    path.write_bytes(served_onnx(biased_booster(seed)).SerializeToString())
    return load_model(path, "biased")

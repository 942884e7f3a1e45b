"""The one builder of small test and benchmark models: LightGBM trained here, exported to ONNX with the
training package's exporter (:func:`training.export.to_onnx`), so every test, scenario and benchmark
serves the graph production serves. Models need a realistic cost and shape, not quality.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from features.projection import DEFAULT_SPEC, FEATURE_INDEX, FEATURE_NAMES, N_FEATURES
from infra.registry import LGB_FILE, METADATA_FILE, MODEL_FILE, Registry


def synthetic_booster(
    x: np.ndarray, rng: np.random.Generator, trees: int, leaves: int = 31, seed: int = 1
) -> Any:
    """A binary LightGBM model of a realistic size trained on projected feature rows ``x``, with labels
    drawn from a known logistic of a few features (interest in the offer's category, page match, value,
    fatigue, tier, threshold vs basket). Benchmarks need its cost, not its quality."""
    import lightgbm as lgb

    from training.export import float32_thresholds

    f = FEATURE_INDEX
    logit = (
        -3.2
        + 0.6 * np.log1p(x[:, f["cat_interest_7d"]])
        + 0.4 * np.log1p(x[:, f["cat_orders_30d"]])
        + 0.9 * x[:, f["page_category_match"]]
        + 0.02 * x[:, f["offer_value"]]
        - 0.3 * x[:, f["mo_impressions_since_action"]]
        + 0.3 * x[:, f["tier"]]
        + 0.5 * (x[:, f["threshold_to_basket"]] < 1.0)
    )
    y = (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    params = {"objective": "binary", "num_leaves": leaves, "min_data_in_leaf": 20, "learning_rate": 0.05,
              "num_threads": 1, "verbose": -1, "seed": seed}  # fmt: skip
    booster = lgb.train(
        params, lgb.Dataset(x, label=y, feature_name=list(FEATURE_NAMES)), num_boost_round=trees
    )
    # LightGBM compares thresholds in double, ONNX in float32: round them so both agree exactly.
    return float32_thresholds(booster)


def served_onnx(booster: Any) -> Any:
    """``booster`` as the served ONNX graph, with the feature schema and names in its metadata."""
    from training.export import set_metadata, spec_props, to_onnx

    model = to_onnx(booster)
    set_metadata(model, spec_props(DEFAULT_SPEC))
    return model


def random_rows(n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Feature rows without a member behind them: gamma-distributed counts, a fifth on a matching page."""
    x = rng.gamma(1.0, 2.0, size=(n_rows, N_FEATURES)).astype(np.float32)
    x[:, FEATURE_INDEX["page_category_match"]] = rng.random(n_rows) < 0.2
    return x


@functools.cache
def train_booster(seed: int = 0, n_trees: int = 20, num_leaves: int = 15, n_rows: int = 3000) -> Any:
    """A small LightGBM model on random rows (about a second)."""
    rng = np.random.default_rng(seed)
    return synthetic_booster(random_rows(n_rows, rng), rng, n_trees, num_leaves, seed)


def train_onnx(seed: int = 0, n_trees: int = 20, num_leaves: int = 15, n_rows: int = 3000) -> Any:
    """A small model on random rows (about a second), as served ONNX with the feature metadata."""
    return served_onnx(train_booster(seed, n_trees, num_leaves, n_rows))


@functools.cache
def lgb_texts() -> dict[str, str]:
    """The LightGBM text of the good models in :func:`model_files`, as the exporter registers it."""
    return {v: train_booster(seed).model_to_string() for v, seed in (("v1", 1), ("v2", 2))}


@functools.cache
def model_files() -> dict[str, bytes]:
    """Two good models and the bad ones a server must refuse, trained once per process."""
    from training.export import set_metadata

    good1 = served_onnx(train_booster(1)).SerializeToString()
    good2 = served_onnx(train_booster(2)).SerializeToString()
    mismatched = train_onnx(3, n_trees=5)
    set_metadata(mismatched, {"feature_spec_hash": "deadbeefdeadbeef", "feature_names": "[]"})
    return {
        "v1": good1,
        "v2": good2,
        "bad-schema": mismatched.SerializeToString(),
        "bad-truncated": good1[: len(good1) // 2],
        "bad-corrupt": b"this is not an onnx model" * 40,
    }


def build_registry(root: Path) -> Registry:
    """``v1`` (promoted) and ``v2`` good, each with its LightGBM text (the compiled scorer's source);
    ``bad-corrupt``, ``bad-truncated``, ``bad-schema`` refusable."""
    meta = {
        "feature_spec_hash": DEFAULT_SPEC.hash,
        "feature_names": list(FEATURE_NAMES),
        "metrics": {"auc": 0.7},
    }
    for version, data in model_files().items():
        d = root / "models" / version
        d.mkdir(parents=True, exist_ok=True)
        (d / MODEL_FILE).write_bytes(data)
        (d / METADATA_FILE).write_text(json.dumps(meta))
        if version in lgb_texts():
            (d / LGB_FILE).write_text(lgb_texts()[version])
    reg = Registry(root)
    reg.promote("v1")
    return reg

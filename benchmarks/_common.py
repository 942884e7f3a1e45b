"""Shared helpers of the benchmarks: machine description and the result-file convention.

Every ``python -m benchmarks.NAME`` prints its JSON summary as the last line of stdout and writes it to
``benchmarks/results/NAME.json``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU model, core counts and Python version of this machine."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_result(name: str, summary: dict[str, Any]) -> Path:
    """Write ``summary`` to ``benchmarks/results/NAME.json`` and print it as the last line of stdout."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary, sort_keys=True), flush=True)
    return path


def synthetic_booster(
    x: np.ndarray, rng: np.random.Generator, trees: int, leaves: int = 31, seed: int = 1
) -> Any:
    """A binary LightGBM model of a realistic size trained on projected feature rows ``x``, with labels
    drawn from a known logistic of a few features (interest in the offer's category, page match, value,
    fatigue, tier, threshold vs basket). Benchmarks need its cost, not its quality."""
    import lightgbm as lgb

    from features.projection import FEATURE_INDEX, FEATURE_NAMES
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

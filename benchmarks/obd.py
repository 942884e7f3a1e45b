"""Off-policy estimators on real logged data: ``python -m benchmarks.obd``.

The Open Bandit Dataset (ZOZOTOWN fashion e-commerce; Saito et al., "Open Bandit Dataset and Pipeline",
NeurIPS 2021 Datasets track; data under CC BY 4.0) has two logs of the same 80 items x 3 positions
campaign: one collected by a *uniform random* policy and one by *Bernoulli Thompson sampling* (BTS),
each row with the logging policy's propensity. Its small sample (10,000 rows per log) ships inside the
``obp`` 0.4.1 wheel on PyPI. This command fetches that wheel with pip into a cache directory (``pip
download --no-deps``: obp itself is never installed, it pulls torch) and reads the CSV files straight
out of the zip; the data is ~24 MB, so it is not kept in the repository.

The check: estimate the random policy's click rate *from the BTS log* with IPS, SNIPS and DR
(``training.offpolicy``; target probability 1/80 for every item at every position), and compare with the
random log's own, on-policy click rate. The truth is itself a sample (about 40 clicks), so its Wilson
interval is reported beside it: a relative error inside the truth's own noise is all one can ask.

Writes ``benchmarks/results/obd.json``.
"""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from benchmarks._common import write_result
from training.offpolicy import all_estimates, cross_fit_rates

log = logging.getLogger(__name__)

WHEEL = "obp-0.4.1-py3-none-any.whl"
N_ITEMS = 80
COLUMNS = ["item_id", "position", "click", "propensity_score"]


def fetch_wheel(cache: Path) -> Path:
    """The obp 0.4.1 wheel in ``cache`` (downloaded with pip, without its dependencies, if missing)."""
    path = cache / WHEEL
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "obp==0.4.1", "-d", str(cache), "-q"],
            check=True,
        )
    return path


def read_log(wheel: Path, policy: str, campaign: str = "all") -> pd.DataFrame:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(f"obp/dataset/obd/{policy}/{campaign}/{campaign}.csv")
    return pd.read_csv(io.BytesIO(raw), usecols=COLUMNS)


def evaluate_uniform_from(log_df: pd.DataFrame, folds: int = 2, seed: int = 0) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of the uniform-random policy's CTR from a propensity-scored log."""
    p_log = log_df["propensity_score"].to_numpy(dtype=np.float64)
    reward = log_df["click"].to_numpy(dtype=np.float64)
    p_target = np.full(len(log_df), 1.0 / N_ITEMS)
    # Reward model for DR: click rate per (item, position), cross-fitted on two folds.
    keys = (log_df["item_id"].to_numpy() * 10 + log_df["position"].to_numpy()).astype(np.int64)
    fold = np.random.default_rng(seed).integers(0, folds, len(log_df))
    q_logged, tables, base = cross_fit_rates(keys, reward, fold)
    pos = log_df["position"].to_numpy()
    q_target = np.empty(len(log_df))
    for f, table in tables.items():
        # E over the uniform target of the model's rate at the row's position (all 80 items).
        per_pos = {
            p: float(np.mean([table.get(i * 10 + p, base) for i in range(N_ITEMS)])) for p in (1, 2, 3)
        }
        idx = np.flatnonzero(fold == f)
        q_target[idx] = [per_pos[int(p)] for p in pos[idx]]
    est = all_estimates(p_log, reward, p_target, q_logged, q_target)
    return {k: e.as_dict() for k, e in est.items()}


def run(cache: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    wheel = fetch_wheel(cache)
    random_log = read_log(wheel, "random")
    bts_log = read_log(wheel, "bts")
    clicks, n = int(random_log["click"].sum()), len(random_log)
    truth = clicks / n
    t_low, t_high = proportion_confint(clicks, n, alpha=0.05, method="wilson")
    estimates = evaluate_uniform_from(bts_log)
    for e in estimates.values():
        e["relative_error"] = abs(e["estimate"] - truth) / truth
        e["interval_covers_truth"] = bool(e["ci_low"] <= truth <= e["ci_high"])
        e["relative_interval_width"] = (e["ci_high"] - e["ci_low"]) / truth
    return {
        "benchmark": "obd",
        "data": "Open Bandit Dataset small sample (obp 0.4.1 wheel), campaign 'all', CC BY 4.0",
        "target_policy": "uniform random over 80 items at each of 3 positions",
        "evaluated_from": {"log": "bts", "rows": len(bts_log), "clicks": int(bts_log["click"].sum())},
        "on_policy_truth": {
            "log": "random",
            "rows": n,
            "clicks": clicks,
            "ctr": truth,
            "wilson_95": [t_low, t_high],
            "relative_half_width": (t_high - t_low) / 2 / truth,
        },
        "naive_bts_ctr": float(bts_log["click"].mean()),
        "estimates": estimates,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("var/cache/obd"), help="where the wheel is kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    write_result("obd", run(args.cache))


if __name__ == "__main__":
    main()

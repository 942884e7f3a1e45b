"""Counterfactual evaluation against the simulator's oracle: ``python -m benchmarks.offpolicy_sim``.

1. Simulate a training log and train a model on it (``training.pipeline``, as ``benefits train``).
2. Simulate an evaluation log of *other* members (another seed) with the logging policy's marginal
   propensities and every eligible offer's true claim probability (``--offpolicy-log``).
3. ``benefits evaluate`` (``training.counterfactual.run``) of the new model against the popularity
   baseline on that log, as greedy top-k and as softmax exploration: IPS, SNIPS and DR estimates of
   claims per view with 95 % intervals.
4. The oracle: the true expected claims per view of the same policies on the same logged views, from
   the true claim probabilities (exact for greedy; for softmax over the same Plackett-Luce draws).

Reports per policy and estimator the estimate, interval, oracle, relative error and whether the
interval covers the oracle. Writes ``benchmarks/results/offpolicy-sim.json``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import machine_info, write_result
from infra.settings import Settings
from training import counterfactual as cf
from training import pipeline
from training.counterfactual_gate import summary as summary_lines
from training.simulate import simulate_to_dir

log = logging.getLogger(__name__)

ESTIMATORS = ("ips", "snips", "dr")


def _rows(result: dict[str, Any], metric: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role in ("candidate", "baseline", "difference"):
        block = result[role]
        truth = block["oracle"][metric]
        rows = {}
        for est in ESTIMATORS:
            e = block[metric][est]
            rows[est] = {
                "estimate": e["estimate"],
                "ci": [e["ci_low"], e["ci_high"]],
                "oracle": truth,
                "relative_error": abs(e["estimate"] - truth) / abs(truth) if truth else None,
                "covers_oracle": bool(e["ci_low"] <= truth <= e["ci_high"]),
            }
        out[role] = {"policy": block.get("policy", "candidate - baseline"), **rows}
    return out


def run(
    members: int,
    days: float,
    eval_members: int,
    eval_days: float,
    offers: int,
    temperature: float,
    work: Path,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    train_dir, eval_dir, registry = work / "train", work / "eval", work / "registry"
    sim_train = simulate_to_dir(
        train_dir, n_members=members, days=days, n_offers=offers, seed=1, progress=False
    )
    outcome = pipeline.run(registry, train_dir, promote=False, progress=False)
    sim_eval = simulate_to_dir(
        eval_dir,
        n_members=eval_members,
        days=eval_days,
        n_offers=offers,
        seed=2,
        progress=False,
        offpolicy_log=True,
    )
    settings = Settings(registry_dir=registry)
    policies: dict[str, Any] = {}
    for name, temp in (("greedy", None), (f"softmax T={temperature:g}", temperature)):
        t = time.perf_counter()
        res = cf.run(settings, eval_dir, outcome.version, "popularity", cf.Options(temperature=temp))
        policies[name] = {
            "claims_per_view": _rows(res, "claims_per_view"),
            "value_per_view": _rows(res, "value_per_view"),
            "logging_policy_claims_per_view": res["logging_policy"]["claims_per_view"],
            "notes": res["notes"],
            "seconds": round(time.perf_counter() - t, 1),
        }
        log.info("%s: %s", name, "; ".join(summary_lines(res)[:5]))
    return {
        "benchmark": "offpolicy-sim",
        "train_log": {"members": members, "days": days, "impressions": sim_train["impressions"], "seed": 1},
        "eval_log": {
            "members": eval_members,
            "days": eval_days,
            "views": sim_eval["requests"],
            "impressions": sim_eval["impressions"],
            "seed": 2,
        },
        "model": {"version": outcome.version, "held_out_auc": outcome.result["overall"]["model"]["auc"]},
        "estimator": "position-based (marginal propensities), DR reward model: cross-fitted LightGBM",
        "baseline": "popularity (smoothed claim prior, same slate rules)",
        "policies": policies,
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000, help="members of the training log")
    parser.add_argument("--days", type=float, default=10.0)
    parser.add_argument("--eval-members", type=int, default=1500, help="members of the evaluation log")
    parser.add_argument("--eval-days", type=float, default=10.0)
    parser.add_argument("--offers", type=int, default=120)
    parser.add_argument("--temperature", type=float, default=0.5, help="softmax policy's temperature")
    parser.add_argument("--work", type=Path, default=None, help="keep the logs and registry here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        summary = run(
            args.members, args.days, args.eval_members, args.eval_days, args.offers, args.temperature, work
        )
    write_result("offpolicy-sim", summary)


if __name__ == "__main__":
    main()

"""In-process ranking benchmark: ``python -m benchmarks.ranking``.

Measures the recommend path without HTTP: one Redis GET of the member's blob (real Redis, started
here), decode, eligibility, feature rows, ONNX scoring, value-aware re-rank, slate rules, reasons,
metrics and the structured log line (written to /dev/null). Sequential requests (concurrency 1) on one
core (the process pins itself to one CPU; Redis runs as its own process).

Members are varied (thousands of distinct states folded from random event histories), page contexts
are varied, and a tenth of the requests are for unknown members (cold start), so the tree ensemble is
not fed the same rows over and over (field notes: that flatters onnxruntime by up to 2.6x).

The model is a LightGBM binary classifier of ``--trees`` trees x 31 leaves trained here on rows
projected from those simulated states (labels from a logistic of interest, value and context), then
exported with the training package's exporter (``training.export.to_onnx``) so the graph is the one
production serves.

The process tunes its garbage collector after set-up as ``benefits serve`` does (``gc.freeze()`` and a
higher young-generation threshold, ``service.app._tune_gc``): the measured path is the served one.

Prints the JSON summary as the last line and writes ``benchmarks/results/ranking.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine_info, write_result
from features.demo_catalog import demo_catalog
from features.projection import rows
from features.state import MemberState
from harness.embedded import start_redis
from harness.members import put_states, random_context, simulate_member
from harness.testmodel import served_onnx, synthetic_booster
from infra.experiment_store import ExperimentStore
from infra.redis_client import connect
from infra.redis_layout import MemberStore, RedisLayout
from infra.registry import LGB_FILE
from service.app import _tune_gc
from service.catalog import CatalogHolder, CatalogStore, build_snapshot
from service.experiment_runtime import ExperimentRuntime
from service.experiments import Assigner, Experiment, StoredExperiment, allocate
from service.metrics import Metrics
from service.model import ModelHolder, load_model
from service.ranking import Policy
from service.recommend import Recommender, RecommendQuery
from service.shadow import ShadowScorer

CANDIDATES = (50, 200, 500)
#: Issue 15's target at 200 candidates (the first one, issue 4's, was p50 <= 1 ms, p99 <= 2 ms).
TARGET_200 = {"p50_ms": 0.5, "p99_ms": 1.0}


def train_model(
    states: list[MemberState], now: float, trees: int, rng: np.random.Generator
) -> tuple[bytes, str]:
    """The served ONNX graph and the LightGBM text beside it (the compiled scorer's source)."""
    table = build_snapshot(1, demo_catalog(now - 86400, 200), now).table
    blocks = []
    for s in states[:400]:
        x = rows(s, table, random_context(rng), now)
        blocks.append(x[rng.choice(len(x), size=40, replace=False)])
    booster = synthetic_booster(np.vstack(blocks), rng, trees)
    return bytes(served_onnx(booster).SerializeToString()), booster.model_to_string()


class RecordingMetrics(Metrics):
    """Metrics that also keep every stage time, for percentiles per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: dict[str, list[float]] = {}

    def observe_stage(self, stage: str, ms: float) -> None:
        super().observe_stage(stage, ms)
        self.samples.setdefault(stage, []).append(ms)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 4)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    now = time.time()
    redis_svc = start_redis()
    client = connect(redis_svc.url, cluster=False, timeout_ms=50)
    layout = RedisLayout(prefix="bench")
    try:
        t0 = time.perf_counter()
        states = [simulate_member(f"bm-{i}", now, rng) for i in range(args.members)]
        store = MemberStore(client, layout)
        await put_states(store, states)
        sim_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        model_bytes, lgb_text = train_model(states, now, args.trees, rng)
        train_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(model_bytes)
            (Path(tmp) / LGB_FILE).write_text(lgb_text)
            # The served runtime (BENEFITS_SCORER_RUNTIME's default: compiled trees when they match).
            model = load_model(path, f"bench-{args.trees}x31", args.scorer, Path(tmp) / "scorer-cache")
        models = ModelHolder(registry=None)  # type: ignore[arg-type]  # the registry is not polled here
        models.install(model)
        # As `benefits serve` does once its lifespan has loaded everything (service.server): freeze what
        # start-up allocated and collect the young generation less often.
        _tune_gc()

        results: dict[str, Any] = {}
        for n in CANDIDATES:
            catalog = CatalogHolder(CatalogStore(client, layout), store)
            catalog.current = build_snapshot(1, demo_catalog(now - 86400, n), now)
            metrics = RecordingMetrics()
            rec = Recommender(store, catalog, models, metrics, Policy(), deadline_ms=25.0, hash_salt=b"bench")
            queries = []
            for _ in range(args.warmup + args.requests):
                known = rng.random() < 0.9
                member = (
                    f"bm-{int(rng.integers(args.members))}" if known else f"new-{int(rng.integers(10**9))}"
                )
                queries.append(RecommendQuery(member, random_context(rng), limit=5))
            totals: list[float] = []
            eligible: list[int] = []
            degraded = 0
            for i, q in enumerate(queries):
                t = time.perf_counter()
                body = await rec.recommend(q)
                dt = (time.perf_counter() - t) * 1e3
                if i >= args.warmup:
                    totals.append(dt)
                    eligible.append(body["eligible"])
                    degraded += bool(body["degraded"])
            stages = {
                s: {"p50_ms": pct(v[args.warmup :], 50), "p99_ms": pct(v[args.warmup :], 99)}
                for s, v in metrics.samples.items()
            }
            results[str(n)] = {
                "p50_ms": pct(totals, 50),
                "p90_ms": pct(totals, 90),
                "p99_ms": pct(totals, 99),
                "mean_ms": round(float(np.mean(totals)), 4),
                "max_ms": round(float(np.max(totals)), 4),
                "eligible_mean": round(float(np.mean(eligible)), 1),
                "degraded": degraded,
                "stages": stages,
            }
            logging.getLogger(__name__).info("%d candidates: %s", n, results[str(n)])
        if args.shadow:
            shadow_bytes, shadow_text = train_model(states, now, args.trees, rng)
            shadow_model = _load_bytes(shadow_bytes, shadow_text, f"shadow-{args.trees}x31", args.scorer)
            logging.getLogger(__name__).info("shadow model served by %s", shadow_model.runtime)
            results["shadow_200"] = await _shadow_compare(
                args, store, client, layout, models, shadow_model, now, rng
            )
        if args.fairness_guard_compare:
            results["fairness_guard_200"] = await _guard_compare(
                args, store, client, layout, models, now, rng
            )
        r200 = results["200"]
        return {
            "benchmark": "ranking",
            "machine": machine_info(),
            "pinned_cpu": args.cpu,
            "concurrency": 1,
            "members_in_redis": args.members,
            "requests_per_point": args.requests,
            "warmup_per_point": args.warmup,
            "unknown_member_share": 0.1,
            "model": {
                "trees": args.trees,
                "num_leaves": 31,
                "source": "trained in benchmark, training.export.to_onnx",
                "scorer_runtime": args.scorer,
                "served_by": model.runtime,
            },
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "setup_seconds": {"simulate_and_load": round(sim_s, 1), "train_and_export": round(train_s, 1)},
            "results": results,
            "target_200": {
                **TARGET_200,
                "met": r200["p50_ms"] <= TARGET_200["p50_ms"] and r200["p99_ms"] <= TARGET_200["p99_ms"],
            },
        }
    finally:
        await client.aclose()
        redis_svc.stop()


async def _shadow_compare(
    args: argparse.Namespace,
    store: MemberStore,
    client: Any,
    layout: RedisLayout,
    models: ModelHolder,
    shadow_model: Any,
    now: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """200 candidates without and with a shadow model (``--shadow-share`` of requests), in one run.

    Blocks of 200 requests alternate off / on; before an "off" block the shadow queue is drained, so its
    work (which runs on the same event loop, between requests) only lands on the "on" blocks. Both use
    the same experiment (one arm holding everyone, the promoted model), so they differ by the shadow only.
    """
    catalog = CatalogHolder(CatalogStore(client, layout), store)
    catalog.current = build_snapshot(1, demo_catalog(now - 86400, 200), now)
    exp = Experiment.model_validate(
        {
            "experiment_id": "bench",
            "arms": [{"name": "all", "share": 1.0}],
            "shadow": {"model_version": shadow_model.version, "sample_share": args.shadow_share},
        }
    )
    stored = StoredExperiment(experiment=exp, allocation=allocate(exp, None), revision=1, updated_ts=now)
    recs = {}
    for flag in (False, True):
        metrics = Metrics()
        rec = Recommender(store, catalog, models, metrics, Policy(), 25.0, b"bench")
        runtime = ExperimentRuntime(ExperimentStore(client, layout), models, metrics, b"bench")
        runtime.assigner = Assigner(stored, b"bench")
        runtime.loaded = {shadow_model.version: shadow_model}
        rec.experiments = runtime
        recs[flag] = rec
    tmp = tempfile.TemporaryDirectory()
    scorer = ShadowScorer(Path(tmp.name) / "shadow.jsonl", 256, Policy(), recs[True].metrics, seed=args.seed)
    recs[True].shadow = scorer
    task = asyncio.create_task(scorer.run())
    totals: dict[bool, list[float]] = {False: [], True: []}
    block = 200
    try:
        for i in range(args.warmup + 2 * args.requests):
            flag = (i // block) % 2 == 1
            if not flag and i % block == 0:
                while scorer.queue:
                    await asyncio.sleep(0.001)
            known = rng.random() < 0.9
            member = f"bm-{int(rng.integers(args.members))}" if known else f"new-{int(rng.integers(10**9))}"
            q = RecommendQuery(member, random_context(rng), limit=5)
            t = time.perf_counter()
            await recs[flag].recommend(q)
            if i >= args.warmup:
                totals[flag].append((time.perf_counter() - t) * 1e3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        tmp.cleanup()
    off99, on99 = pct(totals[False], 99), pct(totals[True], 99)
    return {
        "shadow_share": args.shadow_share,
        "requests_each": len(totals[False]),
        "shadow_scored": scorer.scored,
        "off": {"p50_ms": pct(totals[False], 50), "p99_ms": off99},
        "on": {"p50_ms": pct(totals[True], 50), "p99_ms": on99},
        "p99_added_pct": round(100.0 * (on99 - off99) / off99, 2),
        "target_p99_added_pct": 5.0,
    }


async def _guard_compare(
    args: argparse.Namespace,
    store: MemberStore,
    client: Any,
    layout: RedisLayout,
    models: ModelHolder,
    now: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """200 candidates with the fairness guard off and on, in one run: the two recommenders answer the
    same queries alternately (off, on, off, on ...) so machine noise falls on both alike."""
    catalog = CatalogHolder(CatalogStore(client, layout), store)
    catalog.current = build_snapshot(1, demo_catalog(now - 86400, 200), now)
    recs = {
        flag: Recommender(store, catalog, models, Metrics(), Policy(fairness_guard=flag), 25.0, b"bench")
        for flag in (False, True)
    }
    totals: dict[bool, list[float]] = {False: [], True: []}
    blocked = 0
    for i in range(args.warmup + args.requests):
        known = rng.random() < 0.9
        member = f"bm-{int(rng.integers(args.members))}" if known else f"new-{int(rng.integers(10**9))}"
        q = RecommendQuery(member, random_context(rng), limit=5)
        for flag in (False, True) if i % 2 == 0 else (True, False):
            t = time.perf_counter()
            await recs[flag].recommend(q)
            if i >= args.warmup:
                totals[flag].append((time.perf_counter() - t) * 1e3)
    blocked = int(recs[True].metrics.fairness_guard_blocked._value.get())
    off, on = pct(totals[False], 50), pct(totals[True], 50)
    return {
        "off": {"p50_ms": off, "p99_ms": pct(totals[False], 99)},
        "on": {"p50_ms": on, "p99_ms": pct(totals[True], 99)},
        "p50_overhead_pct": round((on - off) / off * 100.0, 2),
        "offers_withheld": blocked,
        "requests": args.requests,
    }


def _load_bytes(model_bytes: bytes, lgb_text: str, version: str, scorer: str) -> Any:
    """A second model loaded as the service loads a registered one (its LightGBM text beside the ONNX
    graph, so the same runtime serves it as the live model)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model_bytes)
        (Path(tmp) / LGB_FILE).write_text(lgb_text)
        return load_model(path, version, scorer, Path(tmp) / "scorer-cache")  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--trees", type=int, default=150)
    parser.add_argument("--scorer", choices=["auto", "onnx", "compiled"], default="auto")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin this process to (-1: no pinning)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--shadow", action="store_true", help="also 200 candidates without and with a shadow model, one run"
    )
    parser.add_argument("--shadow-share", type=float, default=0.1, help="share of requests shadow-scored")
    parser.add_argument(
        "--fairness-guard-compare",
        action="store_true",
        help="also measure 200 candidates with the fairness guard off and on, alternating, in one run",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The per-request structured line is part of the measured path: format it, write it to /dev/null.
    req_log = logging.getLogger("service.requests")
    req_log.setLevel(logging.INFO)
    req_log.propagate = False
    req_log.addHandler(logging.StreamHandler(open(os.devnull, "w")))  # noqa: SIM115
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    import uvloop

    summary = uvloop.run(run(args))
    write_result("ranking", summary)


if __name__ == "__main__":
    main()

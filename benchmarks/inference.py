"""Model inference micro-benchmark: ``python -m benchmarks.inference``.

The same LightGBM model (``--trees`` trees x ``--leaves`` leaves, binary), scored three ways on the same
rows, one thread, this process pinned to one CPU:

- **onnxruntime**: the served path, the graph from the training package's exporter
  (``training.export.to_onnx``) loaded by ``service.model.load_model`` (one intra/inter-op thread);
- **lightgbm**: ``Booster.predict(x, num_threads=1)``;
- **lleaves**: the model compiled to native code with LLVM (``lleaves.Model.compile``, ``n_jobs=1``),
  when it is installed (the benchmarks extra pins it with a compatible llvmlite); otherwise reported as
  unavailable with the reason.

Rows are varied (field notes: repeating one batch lets the branch predictor learn it and flatters
onnxruntime by up to 2.6x): ``--batches`` distinct feature matrices per batch size, each the projection
(``features.projection.rows``) of a different simulated member on a different page against a demo
catalog of that many offers, cycled in order. Every engine gets the same float32 matrices the service
builds; conversions an engine makes internally (lleaves and LightGBM work in float64) count as its cost.
Thresholds are the float32-safe ones the exporter uses (``training.export.float32_thresholds``), so the
three engines must agree, and the benchmark checks they do.

Reports p50/p99/mean microseconds per call at 50, 200 and 500 rows and the ratios to onnxruntime
(> 1: slower than onnxruntime). Prints the JSON summary as the last line and writes
``benchmarks/results/inference.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine_info, write_result
from features.demo_catalog import demo_catalog
from features.projection import rows
from harness.members import random_context, simulate_member
from harness.testmodel import served_onnx, synthetic_booster
from service.catalog import build_snapshot

ROW_COUNTS = (50, 200, 500)
log = logging.getLogger(__name__)


def make_batches(n_rows: int, batches: int, states: list[Any], now: float, seed: int) -> list[np.ndarray]:
    """``batches`` distinct float32 matrices of ``n_rows`` rows (one member x page against the catalog)."""
    rng = np.random.default_rng(seed + n_rows)
    table = build_snapshot(1, demo_catalog(now - 86400, n_rows), now).table
    out = []
    for _ in range(batches):
        s = states[int(rng.integers(len(states)))]
        x = np.ascontiguousarray(rows(s, table, random_context(rng), now), dtype=np.float32)
        out.append(x)
    return out


def train_booster(states: list[Any], now: float, trees: int, leaves: int, seed: int) -> Any:
    """A binary LightGBM model on projected rows of the benchmark's own members."""
    x = np.vstack(make_batches(200, 400, states, now, seed)[:400])
    return synthetic_booster(x, np.random.default_rng(seed), trees, leaves, seed)


def time_calls(
    fns: dict[str, Callable[[np.ndarray], np.ndarray]], batches: list[np.ndarray], calls: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Per-call microseconds of every engine over ``calls`` calls cycling through ``batches``.

    Interleaved: call i scores batch i with every engine in turn (the order rotating), so that a burst of
    noise from other processes on this shared machine lands on all engines alike, not on one of them.
    """
    names = list(fns)
    for i in range(warmup):
        for k in names:
            fns[k](batches[i % len(batches)])
    times = {k: np.empty(calls) for k in names}
    for i in range(calls):
        x = batches[i % len(batches)]
        for j in range(len(names)):
            k = names[(i + j) % len(names)]
            t = time.perf_counter()
            fns[k](x)
            times[k][i] = time.perf_counter() - t
    out = {}
    for k, v in times.items():
        us = v * 1e6
        out[k] = {
            "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
            "mean_us": round(float(us.mean()), 1),
        }
    return out


def engines(
    booster: Any, workdir: Path
) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], dict[str, str]]:
    """The scoring functions available here, and why any are missing."""
    from service.model import load_model

    model = served_onnx(booster)
    onnx_path = workdir / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    served = load_model(onnx_path, "bench")
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "onnxruntime": served.predict,
        "lightgbm": lambda x: np.asarray(booster.predict(x, num_threads=1)),
    }
    missing: dict[str, str] = {}
    try:
        import lleaves

        txt = workdir / "model.txt"
        booster.save_model(str(txt))
        compiled = lleaves.Model(model_file=str(txt))
        t = time.perf_counter()
        compiled.compile(cache=str(workdir / "model.so"))
        log.info("lleaves compiled the model in %.1fs", time.perf_counter() - t)
        fns["lleaves"] = lambda x: np.asarray(compiled.predict(x, n_jobs=1))
    except Exception as exc:  # ImportError, or llvmlite API mismatch (AttributeError) at compile time
        missing["lleaves"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return fns, missing


def run(args: argparse.Namespace) -> dict[str, Any]:
    now = time.time()
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    states = [simulate_member(f"im-{i}", now, rng) for i in range(args.members)]
    booster = train_booster(states, now, args.trees, args.leaves, args.seed)
    setup_s = time.perf_counter() - t
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fns, missing = engines(booster, Path(tmp))
        for n in ROW_COUNTS:
            batches = make_batches(n, args.batches, states, now, args.seed + 17)
            # The engines must agree on these very rows before their speed means anything.
            ref = fns["onnxruntime"](batches[0])
            parity = {
                k: float(np.abs(fn(batches[0]) - ref).max()) for k, fn in fns.items() if k != "onnxruntime"
            }
            timings = time_calls(fns, batches, args.calls, args.warmup)
            base = timings["onnxruntime"]
            results[str(n)] = {
                "timings": timings,
                "ratio_to_onnxruntime": {
                    k: {
                        "p50": round(v["p50_us"] / base["p50_us"], 2),
                        "mean": round(v["mean_us"] / base["mean_us"], 2),
                    }
                    for k, v in timings.items()
                },
                "max_abs_diff_vs_onnxruntime": parity,
            }
            log.info("%d rows: %s", n, results[str(n)]["ratio_to_onnxruntime"])
    import lightgbm
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__, "lightgbm": lightgbm.__version__}
    for dist in ("lleaves", "llvmlite"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "benchmark": "inference",
        "machine": machine_info(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "pinned_cpu": args.cpu,
        "model": {"trees": args.trees, "num_leaves": args.leaves, "objective": "binary"},
        "rows_varied": {"distinct_batches_per_size": args.batches, "calls_per_engine": args.calls},
        "versions": versions,
        "unavailable": missing,
        "setup_seconds": round(setup_s, 1),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", type=int, default=150)
    parser.add_argument("--leaves", type=int, default=31)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=300, help="Distinct matrices per batch size")
    parser.add_argument("--calls", type=int, default=2000, help="Timed calls per engine and size")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin this process to (-1: no pinning)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    write_result("inference", run(args))


if __name__ == "__main__":
    main()

"""Bring your own data: does a table's member attributes rank *new* members better? (issue 13's figure)

    python -m benchmarks.byod [--members 3000]

The cafe operator's dataset (:mod:`harness.cafe`: its own categories restaurant / coffee / travel, member
attributes age band, income, household, habits, commuter) trained twice by the ``benefits train``
pipeline with a split by member, so the test members were never seen in training: once with the
attributes declared in the specification (``--members members.csv --spec spec.json``), once without.
Writes ``benchmarks/results/byod-attributes.json``: held-out AUC both ways, the attributes' share of the
model's gain, and the run's sizes.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import machine_info, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from features.spec import load_spec
    from harness.cafe import write_cafe
    from training import pipeline

    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_cafe(Path(tmp) / "cafe", n_members=args.members, seed=args.seed)
        for name, kwargs in (
            ("with_attributes", {"spec": load_spec(paths["spec"]), "members": paths["members"]}),
            ("without_attributes", {}),
        ):
            t0 = time.perf_counter()
            out = pipeline.run(
                Path(tmp) / f"reg-{name}",
                paths["impressions"],
                promote=False,
                progress=False,
                split_by="member",
                **kwargs,  # type: ignore[arg-type]
            )
            m = out.result["overall"]["model"]
            attr_gain = sum(g for f, g in out.metadata["importance"] if f.startswith("attr_"))
            runs[name] = {
                "auc": round(float(m["auc"]), 4),
                "logloss": round(float(m["logloss"]), 4),
                "popularity_auc": round(float(out.result["overall"]["popularity"]["auc"]), 4),
                "attribute_gain_share": round(float(attr_gain), 3),
                "top_features": [f for f, _ in out.metadata["importance"][:5]],
                "test_rows": out.metadata["training_window"]["test"]["rows"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
    result = {
        "benchmark": "byod-attributes",
        "dataset": {"kind": "harness.cafe", "members": args.members, "seed": args.seed},
        "split": "member (test members never seen in training)",
        "runs": runs,
        "auc_gain": round(runs["with_attributes"]["auc"] - runs["without_attributes"]["auc"], 4),
        "machine": machine_info(),
    }
    path = write_result("byod-attributes", result)
    # User-facing output of a benchmark script.
    print(
        f"held-out AUC on new members: {runs['with_attributes']['auc']:.4f} with attributes, "
        f"{runs['without_attributes']['auc']:.4f} without -> {path}"
    )


if __name__ == "__main__":
    main()

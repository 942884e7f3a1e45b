"""A two-arm experiment inside the load test (``benefits loadtest --experiment``).

Before the run :func:`declare` puts an experiment through the admin API: half the members on the
promoted model, half on the popularity baseline (sticky by a salted hash of the member id, as in
production). Locust's traffic does not know about arms: the service assigns them and counts views, and
the feedback it receives under each arm. After the run :func:`report` waits for every API process to
flush its counts to the shared store and computes the same per-arm report as ``benefits experiment
report`` (rates with Wilson intervals, the difference with its interval, the sample size a 10 % effect
needs, and a verdict that calls no winner early).

What it shows under load: assignment and counting hold at the load test's rates across all API
processes, and the report's arithmetic on the counts they shared. Locust's clicks are drawn at random,
not from the arms' slates, so the two arms' click rates should not differ: the verdict must not call a
winner (an A/A check of the report).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from training.abtest import report as abtest_report

EXPERIMENT_ID = "loadtest-ab"
CONTROL = "model"
METRIC = "clicks_per_view"


def declare(base: str, admin_key: str) -> dict[str, Any]:
    body = {
        "experiment_id": EXPERIMENT_ID,
        "arms": [
            {"name": CONTROL, "share": 0.5, "policy": "model"},
            {"name": "popularity", "share": 0.5, "policy": "popularity"},
        ],
        "description": "benefits loadtest --experiment: promoted model vs popularity",
    }
    r = httpx.put(f"{base}/v1/admin/experiment", json=body, headers={"X-API-Key": admin_key}, timeout=10)
    r.raise_for_status()
    return body


def report(base: str, admin_key: str, flush_wait_s: float) -> dict[str, Any]:
    """The per-arm report, once every process has flushed its counts (they flush every poll interval)."""
    time.sleep(flush_wait_s)
    r = httpx.get(f"{base}/v1/admin/experiment", headers={"X-API-Key": admin_key}, timeout=10)
    r.raise_for_status()
    body = r.json()
    out = abtest_report(body["counts"], CONTROL, METRIC, mde_relative=0.1)
    out["experiment_id"] = body["experiment"]["experiment_id"]
    return out

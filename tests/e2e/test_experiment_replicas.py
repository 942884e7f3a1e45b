"""A two-arm experiment over real HTTP: two ``benefits serve`` processes share Redis, the broker and the
registry; the experiment comes from the experiment file setting. A member's arm is the same on both
replicas and after a replica restarts; ``benefits experiment report`` shows per-arm rates with intervals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness import stack
from harness.embedded import Service
from infra.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENT = {
    "experiment_id": "e2e-ab",
    "arms": [
        {"name": "control", "share": 0.45},
        {"name": "treatment", "share": 0.45, "policy": "popularity"},
    ],
    "holdout": {"share": 0.05, "policy": "rules_only"},
}


def arms_of(base: str, key: dict[str, str], members: list[str]) -> dict[str, tuple[str | None, str | None]]:
    out = {}
    with httpx.Client(base_url=base, headers=key, timeout=5.0) as c:
        for m in members:
            r = c.post("/v1/recommend", json={"member_id": m})
            assert r.status_code == 200, r.text
            out[m] = (r.json()["arm"], r.json()["model_version"])
    return out


def test_two_arm_experiment_is_sticky_across_replicas_and_a_restart(
    redis_server: Service,
    broker: Service,
    topics: dict[str, str],
    unique: str,
    trained_registry: Path,
    tmp_path: Path,
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(trained_registry, registry)
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(EXPERIMENT))
    settings = Settings(
        environment="test",
        redis_url=redis_server.url,
        kafka_bootstrap=broker.url,
        events_topic=topics["events"],
        dead_letter_topic=topics["dlq"],
        redis_prefix=f"x{unique}",
        registry_dir=registry,
        experiment_path=path,
        experiment_poll_seconds=0.3,
    )
    key = {"X-API-Key": settings.storefront_api_keys[0].get_secret_value()}
    configs = [stack.api_settings(settings) for _ in range(2)]
    procs = [stack.start_api(cfg, tmp_path, name=f"api{i}") for i, cfg in enumerate(configs)]
    bases = [f"http://127.0.0.1:{cfg.port}" for cfg in configs]
    try:
        for base, proc in zip(bases, procs, strict=True):
            stack.wait_ready(base, proc)
        members = [f"e2e-{i}" for i in range(80)]
        first = arms_of(bases[0], key, members)
        assert arms_of(bases[1], key, members) == first
        arms = {a for a, _ in first.values()}
        assert {"control", "treatment"} <= arms, arms
        promoted = next(v for a, v in first.values() if a == "control")
        assert promoted is not None  # the control arm is scored by the promoted model ...
        assert all(v is None for a, v in first.values() if a == "treatment")  # ... popularity by none

        # Feedback through replica 1: the server puts the member's arm on each event and counts it.
        with httpx.Client(base_url=bases[1], headers=key, timeout=5.0) as c:
            for m in list(first)[:30]:
                offer = c.post("/v1/recommend", json={"member_id": m}).json()["offers"][0]["offer_id"]
                for kind in ("impression", "click", "claim"):
                    fb = {"type": kind, "member_id": m, "offer_id": offer, "request_id": f"rq-{m}"}
                    assert c.post("/v1/feedback", json=fb).status_code == 202

        # Restart replica 0: same arms afterwards (the hash is salted, the allocation is stored).
        procs[0].stop()
        procs[0] = stack.start_api(configs[0], tmp_path, name="api0-restarted")
        stack.wait_ready(bases[0], procs[0])
        assert arms_of(bases[0], key, members) == first

        time.sleep(1.0)  # one flush interval and then some
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENEFITS_")}
        env["BENEFITS_ENVIRONMENT"] = "test"
        out = subprocess.run(
            [sys.executable, "-m", "benefits.cli", "experiment", "report", "--url", bases[0], "--json"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        control = report["arms"]["control"]
        n_control = sum(1 for a, _ in first.values() if a == "control")
        assert control["views"] >= 3 * n_control  # three rounds of recommends on the control members
        claims = sum(report["arms"][a]["claims"] for a in report["arms"])
        assert claims == sum(
            1 for arm, _ in list(first.values())[:30] if arm is not None
        )  # no arm: uncounted
        lo, hi = control["ci"]
        assert 0.0 <= lo <= control["claims_per_view"] <= hi <= 1.0
        assert report["comparisons"]["treatment"]["verdict"].startswith("keep running")
    finally:
        for proc in procs:
            proc.stop()

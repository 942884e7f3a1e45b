"""``benefits serve --workers 2`` over real HTTP: one port, two processes that both answer, both compile
(or load the cached) trees, both hot-swap a promoted model, a scrape of the port counts both, and a
killed worker is replaced."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import stack
from harness.embedded import Service
from harness.scrape import parse_metrics
from harness.testmodel import build_registry
from infra.registry import Registry
from infra.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def workers(redis_server: Service, unique: str, tmp_path: Path) -> Iterator[tuple[str, Registry, Settings]]:
    registry = build_registry(tmp_path / "registry")  # v1 promoted, v2 ready; both with LightGBM text
    settings = stack.api_settings(
        Settings(
            environment="test",
            redis_url=redis_server.url,
            redis_prefix=f"w{unique}",
            registry_dir=registry.root,
            model_poll_seconds=0.3,
            catalog_poll_seconds=0.3,
            # Both workers compile into one fresh cache at the same moment: one compiles under the lock,
            # the other loads its object. "compiled" refuses a model that does not compile.
            scorer_runtime="compiled",
            scorer_cache_dir=tmp_path / "scorer-cache",
        )
    )
    proc = stack.start_api(settings, tmp_path, name="api-workers", workers=2)
    base = f"http://127.0.0.1:{settings.port}"
    try:
        stack.wait_ready(base, proc, timeout_s=120)
        yield base, registry, settings
    finally:
        code = proc.stop()
        assert code == 0, f"serve --workers exited with {code}:\n{proc.tail()}"


def _readyz_by_pid(base: str, until: Callable[[dict[int, dict[str, Any]]], bool], timeout_s: float) -> dict:
    """/readyz on new connections (the kernel picks the accepting process) until ``until(by_pid)``."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base, timeout=5.0, limits=no_keepalive) as client:
        while time.monotonic() < deadline:
            r = client.get("/readyz")
            if r.status_code == 200:
                body = r.json()
                seen[body["pid"]] = body
                if until(seen):
                    return seen
            time.sleep(0.01)
    raise AssertionError(f"not met within {timeout_s}s: {seen}")


def test_two_workers_share_the_port_and_hot_swap_together(workers: tuple[str, Registry, Settings]) -> None:
    base, registry, settings = workers
    key = {"X-API-Key": settings.storefront_api_keys[0].get_secret_value()}
    seen = _readyz_by_pid(base, lambda s: len(s) >= 2, timeout_s=30)
    assert len(seen) == 2
    assert all(b["model"] == "v1" and b["scorer"] == "lleaves" for b in seen.values()), seen
    # New connection per request: the kernel spreads them over both processes.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base, headers=key, timeout=5.0, limits=no_keepalive) as client:
        for i in range(40):
            r = client.post("/v1/recommend", json={"member_id": f"w-{i}"})
            assert r.status_code == 200 and r.json()["model_version"] == "v1", r.text
        # Whichever process answers the scrape, it reports both processes' counts summed.
        for _ in range(6):
            scrape = parse_metrics(client.get("/metrics").text)
            answered = sum(v for k, v in scrape.items() if k.startswith("benefits_recommend_total{"))
            assert answered == 40, scrape
            assert scrape['benefits_recommend_stage_seconds_count{stage="total"}'] == 40
            assert scrape['benefits_model_info{version="v1"}'] == 1

    registry.promote("v2")  # what `benefits promote v2` does: every worker polls and swaps on its own
    pids = set(seen)
    swapped = _readyz_by_pid(
        base, lambda s: all(p in s and s[p]["model"] == "v2" for p in pids), timeout_s=30
    )
    assert all(swapped[p]["scorer"] == "lleaves" for p in pids)

    # A worker that dies is replaced; the new one loads the promoted model and answers on the port.
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    after = _readyz_by_pid(base, lambda s: any(p not in pids for p in s), timeout_s=60)
    new = [p for p in after if p not in pids]
    assert after[new[0]]["model"] == "v2"

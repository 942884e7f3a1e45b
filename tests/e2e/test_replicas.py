"""Two stateless API replicas behind a local round-robin proxy share the catalog and the model registry.

The proxy stands in for the production load balancer (nginx in deploy/docker-compose.yml, a Service in
Kubernetes): it is a test fixture, not part of the system. Through it we check that a catalog change
made on one replica and a model promotion reach every replica within a few seconds, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import stack
from harness.embedded import Service, free_port
from infra.registry import Registry
from infra.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class RoundRobinProxy:
    """A minimal TCP proxy alternating new connections between upstream ports (test fixture only)."""

    def __init__(self, upstreams: list[int]) -> None:
        self.port = free_port()
        self._next = itertools.cycle(upstreams)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", next(self._next))
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def replicas(
    redis_server: Service,
    broker: Service,
    topics: dict[str, str],
    unique: str,
    trained_registry: Path,
    tmp_path: Path,
) -> Iterator[tuple[Settings, list[str], str, Path]]:
    # A private copy of the registry: this test promotes versions and must not disturb other tests.
    registry = tmp_path / "registry"
    shutil.copytree(trained_registry, registry)
    settings = Settings(
        environment="test",
        redis_url=redis_server.url,
        kafka_bootstrap=broker.url,
        events_topic=topics["events"],
        dead_letter_topic=topics["dlq"],
        redis_prefix=f"r{unique}",
        registry_dir=registry,
        model_poll_seconds=0.5,
        catalog_poll_seconds=0.5,
    )
    configs = [stack.api_settings(settings) for _ in range(2)]
    procs = [stack.start_api(cfg, tmp_path, name=f"api{i}") for i, cfg in enumerate(configs)]
    try:
        bases = [f"http://127.0.0.1:{cfg.port}" for cfg in configs]
        for base, proc in zip(bases, procs, strict=True):
            stack.wait_ready(base, proc)
        with RoundRobinProxy([cfg.port for cfg in configs]) as proxy:
            yield settings, bases, f"http://127.0.0.1:{proxy.port}", registry
    finally:
        for proc in procs:
            proc.stop()


def _wait_until(predicate: object, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s}s")


def test_catalog_change_and_promotion_reach_every_replica(
    replicas: tuple[Settings, list[str], str, Path],
) -> None:
    settings, bases, proxy, registry = replicas
    store_key = {"X-API-Key": settings.storefront_api_keys[0].get_secret_value()}
    admin_key = {"X-API-Key": settings.admin_api_keys[0].get_secret_value()}

    # Requests through the proxy are answered by both replicas, all successfully (no keep-alive, so
    # each request is a new connection and the proxy alternates replicas).
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=proxy, headers=store_key, timeout=5.0, limits=no_keepalive) as client:
        for i in range(20):
            r = client.post("/v1/recommend", json={"member_id": f"rr-{i}", "context": {"page_type": "home"}})
            assert r.status_code == 200, r.text

    # An offer created through replica 0 becomes eligible on replica 1 without a restart.
    offer = {
        "offer_id": "replica-test-pinned",
        "kind": "coupon",
        "subtype": "no_threshold",
        "title": "Replica test coupon",
        "value": 5.0,
        "pinned": True,
    }
    r = httpx.post(f"{bases[0]}/v1/admin/offers", json=offer, headers=admin_key, timeout=5.0)
    assert r.status_code == 201, r.text

    def pinned_on_replica_1() -> bool:
        r = httpx.post(
            f"{bases[1]}/v1/recommend",
            json={"member_id": "rr-x", "context": {"page_type": "home"}},
            headers=store_key,
            timeout=5.0,
        )
        return r.status_code == 200 and r.json()["offers"][0]["offer_id"] == offer["offer_id"]

    assert _wait_until(pinned_on_replica_1, 10.0) < 10.0

    # Promoting another version (a copy of the current model under a new name) swaps it on both.
    reg = Registry(registry)
    current = reg.promoted()
    assert current is not None
    new_version = f"{current}-b"
    shutil.copytree(reg.version_dir(current), reg.version_dir(new_version))
    reg.promote(new_version)

    def both_serve_new() -> bool:
        versions = [httpx.get(f"{b}/readyz", timeout=5.0).json().get("model") for b in bases]
        return versions == [new_version, new_version]

    _wait_until(both_serve_new, 10.0)
    with httpx.Client(base_url=proxy, headers=store_key, timeout=5.0) as client:
        versions = {
            client.post("/v1/recommend", json={"member_id": f"rr-{i}"}).json()["model_version"]
            for i in range(6)
        }
    assert versions == {new_version}

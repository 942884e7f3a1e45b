"""Service test fixtures: a self-contained model registry (small LightGBM models from the one test-model
builder, ``harness.testmodel``), settings pointing at the session Redis with a unique
prefix, and app runners (in process via ASGI with the lifespan, or over real HTTP under uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
import uvicorn
from fastapi import FastAPI

from features.projection import DEFAULT_SPEC, FEATURE_NAMES
from harness.embedded import Service, free_port
from harness.testmodel import train_onnx
from infra.registry import METADATA_FILE, MODEL_FILE, Registry
from infra.settings import Settings
from service.app import create_app

STOREFRONT_KEY = "test-storefront-key-0001"
ADMIN_KEY = "test-admin-key-00000001"
SUPPORT_KEY = "test-support-key-0000001"
SF = {"X-API-Key": STOREFRONT_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}
#: ``explain: true`` on recommend needs the support (or admin) scope.
SUPPORT = {"X-API-Key": SUPPORT_KEY}


def set_meta(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v


def write_version(root: Path, version: str, model_bytes: bytes, meta: dict[str, Any] | None = None) -> None:
    d = root / "models" / version
    d.mkdir(parents=True, exist_ok=True)
    (d / MODEL_FILE).write_bytes(model_bytes)
    meta = meta or {
        "feature_spec_hash": DEFAULT_SPEC.hash,
        "feature_names": list(FEATURE_NAMES),
        "metrics": {"auc": 0.7},
    }
    (d / METADATA_FILE).write_text(json.dumps(meta))


@pytest.fixture(scope="session")
def model_bytes() -> dict[str, bytes]:
    """Two good models and the bad ones the service must refuse."""
    good1 = train_onnx(seed=1).SerializeToString()
    good2 = train_onnx(seed=2).SerializeToString()
    mismatched = train_onnx(seed=3, n_trees=5)
    set_meta(mismatched, {"feature_spec_hash": "deadbeefdeadbeef", "feature_names": "[]"})
    return {
        "good1": good1,
        "good2": good2,
        "mismatched": mismatched.SerializeToString(),
        "truncated": good1[: len(good1) // 2],
        "corrupt": b"this is not an onnx model" * 40,
    }


@pytest.fixture
def registry(tmp_path: Path, model_bytes: dict[str, bytes]) -> Registry:
    """A registry per test with v1 promoted, v2 available and the bad versions present."""
    root = tmp_path / "registry"
    for version, key in [("v1", "good1"), ("v2", "good2"), ("bad-schema", "mismatched")]:
        write_version(root, version, model_bytes[key])
    write_version(root, "bad-truncated", model_bytes["truncated"])
    write_version(root, "bad-corrupt", model_bytes["corrupt"])
    reg = Registry(root)
    reg.promote("v1")
    return reg


@pytest.fixture
def settings(redis_server: Service, registry: Registry, unique: str) -> Settings:
    return make_settings(redis_server.url, registry.root, unique)


def make_settings(redis_url: str | None, registry_dir: Path, prefix: str, **extra: Any) -> Settings:
    base: dict[str, Any] = {
        "environment": "test",
        "redis_url": redis_url,
        "redis_prefix": f"t{prefix}",
        "registry_dir": registry_dir,
        "storefront_api_keys": [STOREFRONT_KEY],
        "admin_api_keys": [ADMIN_KEY],
        "support_api_keys": [SUPPORT_KEY],
        "model_poll_seconds": 0.2,
        "catalog_poll_seconds": 0.2,
        "deadline_ms": 200.0,  # generous: the test machine is shared and noisy
    }
    base.update(extra)
    return Settings(**base)


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process with its lifespan, reached through httpx's ASGI transport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


@contextlib.contextmanager
def live_server(settings: Settings, app: FastAPI | None = None) -> Iterator[str]:
    """The app (``create_app(settings)`` unless given) under uvicorn (uvloop + httptools) in a thread on a
    free port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app or create_app(settings),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def wait_for(predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


__all__ = ["ADMIN", "SF", "live_server", "make_settings", "running", "shutil", "wait_for", "write_version"]

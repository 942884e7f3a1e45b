"""Each degraded cause, produced for real and read over real HTTP (uvicorn in a thread):

``state_unavailable`` (Redis refusing connections, at the production deadline), ``state_timeout``
(a ``CLIENT PAUSE``d Redis), ``state_corrupt`` (a corrupt blob under the member's key), ``no_model``
(empty registry), ``model_error`` (a model that passes its load checks and fails on live rows),
``overloaded`` (over ``max_in_flight``). With the breaker open the answer keeps the cause that opened it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import redis
from onnx import TensorProto, helper

from features.projection import DEFAULT_SPEC, N_FEATURES
from harness.embedded import Service, free_port, start_redis
from infra.registry import Registry
from tests.service.conftest import SF, live_server, make_settings, set_meta, write_version
from training.export import spec_props

pytestmark = [pytest.mark.integration]


def _recommend(c: httpx.Client, member_id: str = "m1") -> dict[str, Any]:
    r = c.post("/v1/recommend", json={"member_id": member_id, "limit": 4}, headers=SF)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["degraded"] is (body["degraded_cause"] is not None)
    return body


@pytest.fixture
def private_redis() -> Any:
    svc = start_redis()  # a private one: these tests pause it
    try:
        yield svc
    finally:
        svc.stop()


def test_refused_connections_are_unavailable_at_the_production_deadline(
    registry: Registry, unique: str
) -> None:
    """At the default 25 ms deadline the client's retry backoff outlasts the read budget: the answer
    said ``state_timeout`` though nothing was slow (issue 12)."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(closed, registry.root, unique, deadline_ms=25.0)
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        causes = [_recommend(c)["degraded_cause"] for _ in range(12)]  # before and after the breaker opens
        assert set(causes) == {"state_unavailable"}, causes


def test_paused_redis_is_a_timeout_also_while_the_breaker_is_open(
    private_redis: Service, registry: Registry, unique: str
) -> None:
    settings = make_settings(private_redis.url, registry.root, unique, deadline_ms=25.0)
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        assert _recommend(c)["degraded"] is False
        redis.Redis.from_url(private_redis.url).execute_command("CLIENT", "PAUSE", "1500", "ALL")
        causes = [_recommend(c)["degraded_cause"] for _ in range(8)]
        assert set(causes) == {"state_timeout"}, causes


def test_corrupt_blob_is_state_corrupt(redis_server: Service, registry: Registry, unique: str) -> None:
    settings = make_settings(redis_server.url, registry.root, unique)
    redis.Redis.from_url(redis_server.url).set(settings.layout.member_key("m-corrupt"), b"\xc1not msgpack")
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        body = _recommend(c, "m-corrupt")
        assert body["degraded_cause"] == "state_corrupt" and body["mode"] == "fallback" and body["offers"]
        assert _recommend(c, "m-fine")["degraded"] is False  # one bad blob harms one member only


def test_empty_registry_is_no_model(redis_server: Service, tmp_path: Path, unique: str) -> None:
    settings = make_settings(redis_server.url, tmp_path / "empty", unique)
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        body = _recommend(c)
        assert body["degraded_cause"] == "no_model" and body["model_version"] is None and body["offers"]


def fails_on_live_rows() -> bytes:
    """A graph that answers the two-row load probe and fails on any other batch size: it reshapes its
    per-row output to exactly two values (a model that passed its checks and breaks in service)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, N_FEATURES])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [2])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("ReduceSum", ["input", "axes"], ["s"], keepdims=0),
        helper.make_node("Sigmoid", ["s"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "two_rows_only", [x], [y], initializer=[axes, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    set_meta(model, spec_props(DEFAULT_SPEC))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_model_failing_on_live_rows_is_model_error(
    redis_server: Service, tmp_path: Path, unique: str
) -> None:
    root = tmp_path / "registry"
    write_version(root, "two-rows", fails_on_live_rows())
    Registry(root).promote("two-rows")
    settings = make_settings(redis_server.url, root, unique, scorer_runtime="onnx")
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        assert c.get("/readyz").json()["model"] == "two-rows"  # it passed the load checks
        body = _recommend(c)
        assert body["degraded_cause"] == "model_error" and body["mode"] == "fallback" and body["offers"]
        assert np.isfinite([o["score"] for o in body["offers"]]).all()


def test_over_the_in_flight_limit_is_overloaded(
    private_redis: Service, registry: Registry, unique: str
) -> None:
    settings = make_settings(
        private_redis.url, registry.root, unique, max_in_flight=1, deadline_ms=2000.0, redis_timeout_ms=3000
    )
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        assert _recommend(c)["degraded"] is False
        redis.Redis.from_url(private_redis.url).execute_command("CLIENT", "PAUSE", "800", "ALL")
        held: list[dict[str, Any]] = []
        t = threading.Thread(
            target=lambda: held.append(_recommend(httpx.Client(base_url=base, timeout=10.0)))
        )
        t.start()
        time.sleep(0.2)  # the first request now waits on the paused Redis, holding the only slot
        body = _recommend(c, "m2")
        assert body["degraded_cause"] == "overloaded" and body["offers"]
        t.join(timeout=10)
        assert held and held[0]["degraded_cause"] is None  # the held one finished once the pause ended

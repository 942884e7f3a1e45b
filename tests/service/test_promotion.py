"""Safe promotion: ``benefits promote`` checks a version before the pointer moves and refuses with the
reason; ``benefits rollback --to``; the promotion history in ``benefits models``; a replica that meets a
bad pointer keeps serving the last good version and says so in ``/readyz``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from benefits.cli import app
from harness.embedded import Service
from harness.testmodel import build_registry
from infra.registry import LGB_FILE, POINTER_FILE, Registry
from tests.service.conftest import SF, live_server, make_settings, write_version
from tests.service.test_degraded_causes import fails_on_live_rows


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    """v1 promoted and v2 good, each with its LightGBM source; bad-corrupt, bad-truncated, bad-schema;
    two-rows (passes the service's load probe, fails on other batch sizes); v2-wrong-source (v2's ONNX
    beside v1's LightGBM text: parity fails)."""
    registry = build_registry(tmp_path / "registry")
    write_version(registry.root, "two-rows", fails_on_live_rows())
    src, dst = registry.version_dir("v2"), registry.root / "models" / "v2-wrong-source"
    dst.mkdir()
    for name in ("model.onnx", "metadata.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    (dst / LGB_FILE).write_bytes((registry.version_dir("v1") / LGB_FILE).read_bytes())
    return registry


def cli(reg: Registry, *args: str) -> tuple[int, str]:
    """Run ``benefits ARGS`` in process. The CLI configures logging (root handlers and level): put the
    test process's logging back afterwards, so later tests' log capture is untouched."""
    env = {"BENEFITS_REGISTRY_DIR": str(reg.root), "BENEFITS_ENVIRONMENT": "test"}
    root = logging.getLogger()
    saved = (
        root.handlers[:],
        root.level,
        {n: logging.getLogger(n).level for n in logging.root.manager.loggerDict},
    )
    try:
        result = CliRunner().invoke(app, list(args), env=env)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("bad-corrupt", "corrupt"),
        ("bad-truncated", "corrupt"),
        ("bad-schema", "schema_mismatch"),
        ("two-rows", "bad_output"),
        ("v2-wrong-source", "parity"),
    ],
)
def test_promote_refuses_a_bad_version_and_leaves_the_pointer(
    reg: Registry, version: str, reason: str
) -> None:
    pointer_before = (reg.root / POINTER_FILE).read_bytes()
    code, out = cli(reg, "promote", version)
    assert code == 1, out
    assert f"refused: model {version} failed its checks ({reason})" in out
    assert "the pointer is unchanged: v1" in out
    assert (reg.root / POINTER_FILE).read_bytes() == pointer_before
    last = reg.history()[-1]
    assert last["action"] == "refused" and last["version"] == version and last["reason"].startswith(reason)


def test_promote_checks_then_moves_and_rollback_goes_to_any_earlier_version(reg: Registry) -> None:
    code, out = cli(reg, "promote", "v2")
    assert code == 0, out
    assert "promoted v2 (previous: v1)" in out and "parity with LightGBM" in out
    assert reg.promoted() == "v2"
    assert cli(reg, "promote", "nope")[0] == 2
    code, out = cli(reg, "rollback", "--to", "v1")
    assert code == 0 and reg.promoted() == "v1", out
    code, out = cli(reg, "rollback", "--to", "bad-corrupt")  # never promoted: promote, not roll back
    assert code == 2 and "was never promoted" in out and reg.promoted() == "v1"
    code, out = cli(reg, "rollback")  # one step back: to v2
    assert code == 0 and reg.promoted() == "v2"
    actions = [(e["action"], e["version"]) for e in reg.history()]
    assert actions == [("promote", "v1"), ("promote", "v2"), ("rollback", "v1"), ("rollback", "v2")]
    code, out = cli(reg, "models")
    assert code == 0
    assert "* v2" in out and "history (4 entries" in out and "rollback" in out


def test_rollback_refuses_an_earlier_version_that_no_longer_loads(reg: Registry) -> None:
    assert cli(reg, "promote", "v2")[0] == 0
    (reg.version_dir("v1") / "model.onnx").write_bytes(b"overwritten")
    code, out = cli(reg, "rollback", "--to", "v1")
    assert code == 1 and "(corrupt)" in out and reg.promoted() == "v2"


def _point_at(reg: Registry, version: str) -> None:
    """Move the pointer without any check, as an old tool or a hand-edited synced bucket would."""
    ptr = {"version": version, "previous": reg.promoted(), "promoted_at": time.time()}
    (reg.root / POINTER_FILE).write_text(json.dumps(ptr))


@pytest.mark.integration
def test_a_replica_started_on_a_bad_pointer_serves_the_last_good_version(
    reg: Registry, redis_server: Service, unique: str
) -> None:
    assert cli(reg, "promote", "v2")[0] == 0
    _point_at(reg, "bad-corrupt")
    settings = make_settings(redis_server.url, reg.root, unique, scorer_runtime="onnx")
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=5.0) as c:
        ready = c.get("/readyz")
        body = ready.json()
        assert ready.status_code == 200 and body["ready"] and body["model"] == "v2", body
        refused = body["model_pointer_refused"]
        assert (
            refused["version"] == "bad-corrupt"
            and refused["reason"] == "corrupt"
            and refused["serving"] == "v2"
        )
        rec = c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF).json()
        assert rec["degraded"] is False and rec["model_version"] == "v2"
        # Rolling back clears it on the next poll.
        assert cli(reg, "rollback", "--to", "v1")[0] == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            body = c.get("/readyz").json()
            if body["model"] == "v1":
                break
            time.sleep(0.1)
        assert body["model"] == "v1" and "model_pointer_refused" not in body


@pytest.mark.integration
def test_admin_api_promote_runs_the_same_checks(reg: Registry, redis_server: Service, unique: str) -> None:
    from tests.service.conftest import ADMIN

    settings = make_settings(redis_server.url, reg.root, unique, scorer_runtime="onnx")
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        r = c.post("/v1/admin/models/two-rows/promote", headers=ADMIN)
        assert r.status_code in (400, 422) and "bad_output" in r.text, r.text
        assert reg.promoted() == "v1"
        r = c.post("/v1/admin/models/v2/promote", headers=ADMIN)
        assert r.status_code == 200 and reg.promoted() == "v2"
        assert reg.history()[-1]["checks"], "the checks passed are recorded with the move"

"""``benefits fairness`` against a running stack: a live API (real HTTP) over a real Redis serving the
deliberately biased model; its request log lines carry the member's groups and no more; the audit
samples the member states from Redis, ranks them counterfactually, audits the logged slates (region
joined from the states by the salted member hash) and flags tier."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from benefits.cli import app
from features.events import TIERS
from harness.biased import biased_booster
from harness.embedded import Service
from harness.members import simulate_members, write_members
from harness.testmodel import served_onnx
from infra.logs import JsonFormatter
from infra.registry import Registry
from tests.service.conftest import SF, live_server, make_settings, write_version

pytestmark = [pytest.mark.integration]

REGIONS = ("north", "south")
MEMBERS = 48
PAGES = ("home", "category", "member_center")


@pytest.fixture
def biased_registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    write_version(root, "biased-v1", served_onnx(biased_booster()).SerializeToString())
    Registry(root).promote("biased-v1")
    return root


def test_the_audit_runs_on_a_live_stack_and_flags_the_biased_model(
    redis_server: Service, biased_registry: Path, unique: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    settings = make_settings(redis_server.url, biased_registry, unique, request_log_sample_rate=1.0)
    ids = [f"fair-{i}" for i in range(MEMBERS)]
    states = simulate_members(ids, seed=5)
    for i, s in enumerate(states):  # every tier well represented, two regions
        s.tier, s.region = TIERS[i % len(TIERS)], REGIONS[i % 2]
    write_members(settings, ids, states)

    caplog.set_level(logging.INFO, logger="service.requests")
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=10) as c:
        for member_id in ids:
            for page in PAGES:
                body = {"member_id": member_id, "context": {"page_type": page}}
                assert c.post("/v1/recommend", json=body, headers=SF).status_code == 200
        assert c.post("/v1/recommend", json={"member_id": "nobody"}, headers=SF).status_code == 200
    fmt = JsonFormatter()
    lines = [fmt.format(r) for r in caplog.records if r.name == "service.requests"]
    log_path = tmp_path / "api.log"
    log_path.write_text("\n".join(["not json", *lines]) + "\n")

    # The log line: the member as a salted hash, its tier and paid membership, nothing more about them.
    recs = [json.loads(x) for x in lines if json.loads(x)["msg"] == "recommend"]
    assert len(recs) == MEMBERS * len(PAGES) + 1
    known = [r for r in recs if r["group"] is not None]
    assert len(known) == MEMBERS * len(PAGES) and {r["group"]["tier"] for r in known} == set(TIERS)
    assert all(set(r["group"]) == {"tier", "paid"} for r in known)
    assert all("region" not in r and "fair-" not in json.dumps(r) for r in recs)

    out = tmp_path / "report"
    env = {"BENEFITS_REGISTRY_DIR": str(biased_registry), "BENEFITS_LOG_LEVEL": "WARNING"}
    args = ["fairness", "--redis-url", redis_server.url, "--prefix", settings.redis_prefix, "--log",
            str(log_path), "--sample", "40", "--pages", ",".join(PAGES), "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args, env=env)
    # Exit 1 is the verdict (a failed check), not a crash.
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    report = json.loads((out / "fairness.json").read_text())
    assert report["model"]["version"] == "biased-v1"
    cf = {s["attribute"]: s for s in report["counterfactual"]["attributes"]}
    assert report["counterfactual"]["source"]["kind"] == "redis" and report["counterfactual"]["members"] == 40
    assert cf["tier"]["pass"] is False and set(cf["region"]["levels"]) == set(REGIONS)
    value = next(c for c in cf["tier"]["checks"] if c["metric"] == "offered_value")
    assert value["group"] in ("gold", "diamond") and value["gap"] < 0

    log_part = report["logged"]
    assert log_part["source"]["lines"] == len(recs) and log_part["source"]["lines_without_group"] == 1
    groups = {s["attribute"]: s for s in log_part["attributes"]}
    assert groups["tier"]["rows"] == {t: MEMBERS // len(TIERS) * len(PAGES) for t in TIERS}
    # Region is not on the line: joined from the member states in Redis by the salted hash (the unknown
    # member's line matches none).
    per_region = MEMBERS // 2 * len(PAGES)
    assert groups["region"]["rows"] == dict.fromkeys(REGIONS, per_region)
    assert log_part["source"]["lines_unmatched_in_join"] == 1
    assert groups["tier"]["pass"] is False  # what gold and diamond members were actually shown

    # The log alone (no member source): the logged audit only, offer values from the seed catalogue.
    res = CliRunner().invoke(
        app, ["fairness", "--log", str(log_path), "--out", str(tmp_path / "log-only")], env=env
    )
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    report = json.loads((tmp_path / "log-only" / "fairness.json").read_text())
    assert report["counterfactual"] is None and report["model"]["version"] is None
    assert {s["attribute"] for s in report["logged"]["attributes"]} == {"tier", "paid"}  # no join: no region

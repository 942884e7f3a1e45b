"""The experiment over HTTP: declared through the admin API, sticky per member, carried by the answer and
by feedback events, counted per arm in Prometheus and in the shared store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from features import events as ev
from harness.embedded import Service
from infra.settings import Settings
from service.app import create_app
from tests.service.conftest import ADMIN, SF, running, wait_for
from tests.service.test_feedback import consume
from training import shadow_report

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TWO_ARMS = {
    "experiment_id": "ab1",
    "arms": [
        {"name": "control", "share": 0.4},
        {"name": "treatment", "share": 0.4, "model_version": "v2"},
    ],
    "holdout": {"share": 0.1, "policy": "rules_only"},
}


@pytest.fixture
def xp_settings(settings: Settings, broker: Service, topics: dict[str, str]) -> Settings:
    return settings.model_copy(
        update={
            "kafka_bootstrap": broker.url,
            "events_topic": topics["events"],
            "experiment_poll_seconds": 0.2,
        }
    )


@pytest.fixture
async def client(xp_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(xp_settings)
    async with running(app) as c:

        async def ready() -> bool:
            return bool(app.state.resources.feedback.publisher.ready)

        assert await wait_for(ready, timeout_s=20), "producer never connected"
        yield c


async def recommend(c: httpx.AsyncClient, member_id: str) -> dict[str, object]:
    r = await c.post("/v1/recommend", json={"member_id": member_id}, headers=SF)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


async def test_two_arm_experiment_end_to_end(client: httpx.AsyncClient, xp_settings: Settings) -> None:
    assert (await client.get("/v1/admin/experiment", headers=ADMIN)).status_code == 404
    assert (await client.put("/v1/admin/experiment", json=TWO_ARMS, headers=SF)).status_code == 403
    r = await client.put("/v1/admin/experiment", json=TWO_ARMS, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 1

    arms: dict[str, str | None] = {}
    scored: dict[str, int] = {}
    for i in range(60):
        body = await recommend(client, f"xm{i}")
        arms[f"xm{i}"] = body["arm"]  # type: ignore[assignment]
        if body["degraded"]:
            # A fallback answer (e.g. past the 25 ms deadline on a busy machine) is scored by no model;
            # it still carries the member's arm.
            continue
        expected_version = {"control": "v1", "treatment": "v2"}.get(str(body["arm"]))
        if body["arm"] in ("control", "treatment"):
            assert body["model_version"] == expected_version, body
            scored[str(body["arm"])] = scored.get(str(body["arm"]), 0) + 1
        elif body["arm"] == "holdout":
            assert body["model_version"] is None  # a baseline: no model scored it
    assert {"control", "treatment"} <= set(arms.values())
    assert scored.get("control") and scored.get("treatment"), scored
    for m in list(arms)[:20]:  # sticky
        assert (await recommend(client, m))["arm"] == arms[m]

    member = next(m for m, a in arms.items() if a == "treatment")
    offer = (await recommend(client, member))["offers"][0]["offer_id"]  # type: ignore[index]
    for kind in ("impression", "click", "claim"):
        fb = {"type": kind, "member_id": member, "offer_id": offer, "request_id": "rq1"}
        r = await client.post("/v1/feedback", json=fb, headers=SF)
        assert r.status_code == 202, r.text
    records = await consume(xp_settings, 3)
    events = [ev.decode(rec.value) for rec in records if rec.value is not None]
    assert [e.arm for e in events] == ["treatment"] * 3  # type: ignore[union-attr]

    async def counted() -> dict[str, dict[str, float]] | None:
        got = (await client.get("/v1/admin/experiment", headers=ADMIN)).json()["counts"]
        return got if got.get("treatment", {}).get("claims") == 1.0 else None

    counts = await wait_for(counted, timeout_s=5)
    assert counts, "per-arm counts never reached the store"
    assert counts["treatment"]["views"] >= sum(1 for a in arms.values() if a == "treatment")
    assert counts["treatment"]["impressions"] == 1.0 and counts["treatment"]["clicks"] == 1.0
    metrics = (await client.get("/metrics")).text
    assert 'benefits_experiment_events_total{arm="treatment",event="claims",experiment="ab1"} 1.0' in metrics


async def test_changes_keep_members_unless_asked(client: httpx.AsyncClient) -> None:
    assert (await client.put("/v1/admin/experiment", json=TWO_ARMS, headers=ADMIN)).status_code == 200
    before = {f"ym{i}": (await recommend(client, f"ym{i}"))["arm"] for i in range(80)}
    grown = {**TWO_ARMS, "arms": [{"name": "control", "share": 0.45}, TWO_ARMS["arms"][1]]}  # type: ignore[index]
    assert (await client.put("/v1/admin/experiment", json=grown, headers=ADMIN)).status_code == 200
    after = {m: (await recommend(client, m))["arm"] for m in before}
    assert all(after[m] == a for m, a in before.items() if a is not None)

    shrunk = {**TWO_ARMS, "arms": [{"name": "control", "share": 0.2}, TWO_ARMS["arms"][1]]}  # type: ignore[index]
    r = await client.put("/v1/admin/experiment", json=shrunk, headers=ADMIN)
    assert r.status_code == 409 and "'control'" in r.json()["message"]
    r = await client.put("/v1/admin/experiment?reassign=true", json=shrunk, headers=ADMIN)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("version", "status", "text"),
    [("nope", 422, "missing"), ("bad-schema", 422, "schema_mismatch")],
)
async def test_an_arm_the_service_cannot_serve_is_refused(
    client: httpx.AsyncClient, version: str, status: int, text: str
) -> None:
    body = {"experiment_id": "e", "arms": [{"name": "t", "share": 0.5, "model_version": version}]}
    r = await client.put("/v1/admin/experiment", json=body, headers=ADMIN)
    assert r.status_code == status and text in r.json()["message"], r.text


async def test_a_bad_declaration_is_a_422_naming_the_field(client: httpx.AsyncClient) -> None:
    body = {"experiment_id": "e", "arms": [{"name": "t", "share": 1.5}]}
    r = await client.put("/v1/admin/experiment", json=body, headers=ADMIN)
    assert r.status_code == 422 and "arms.0.share" in r.text


async def test_shadow_model_is_logged_beside_the_live_slate(xp_settings: Settings, tmp_path: Path) -> None:
    log_path = tmp_path / "shadow.jsonl"
    settings = xp_settings.model_copy(update={"shadow_log_path": log_path, "kafka_bootstrap": None})
    app = create_app(settings)
    async with running(app) as c:
        body = {"experiment_id": "sh", "arms": [{"name": "all", "share": 1.0}],
                "shadow": {"model_version": "v2", "sample_share": 1.0}}  # fmt: skip
        assert (await c.put("/v1/admin/experiment", json=body, headers=ADMIN)).status_code == 200
        for i in range(20):
            answer = await recommend(c, f"sh{i}")
            assert answer["model_version"] == "v1" and "shadow" not in answer

        async def logged() -> bool:
            return app.state.resources.recommender.shadow.scored >= 20

        assert await wait_for(logged, timeout_s=10)
    records = shadow_report.load(log_path)
    assert len(records) == 20
    assert {(r["live"]["model_version"], r["shadow"]["model_version"]) for r in records} == {("v1", "v2")}
    out = shadow_report.report(records, k=5)
    assert 0.0 <= out["overlap@5"] <= 1.0 and out["requests"] == 20
    assert out["scores"]["live"]["n"] == out["scores"]["shadow"]["n"] == 100
    # Two different models: some slates differ, and the shared offers' order is compared.
    assert out["identical_slates"] < 1.0 and out["kendall_tau_requests"] > 0

"""Model hot-swap and refusal; catalog changes reaching a second replica within seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from infra.registry import Registry
from infra.settings import Settings
from service.app import create_app
from service.errors import ModelRefused
from service.model import ModelHolder, load_model
from tests.service.conftest import ADMIN, SF, live_server, running, wait_for

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("bad-schema", "schema_mismatch"),
        ("bad-truncated", "corrupt"),
        ("bad-corrupt", "corrupt"),
        ("nope", "missing"),
    ],
)
def test_bad_models_are_refused_with_a_reason(registry: Registry, version: str, reason: str) -> None:
    with pytest.raises(ModelRefused) as exc:
        ModelHolder(registry).check(version)
    assert exc.value.reason == reason


def test_models_are_bound_to_the_spec_hash(tmp_path: Path, model_bytes: dict[str, bytes]) -> None:
    """A model built for the service's specification loads; one built for another spec, or a model from
    before declared specifications under a non-default spec, is refused naming the hashes."""
    import onnx

    from features.projection import DEFAULT_SPEC, FEATURE_NAMES, LEGACY_FEATURE_SCHEMA_V1
    from tests.service.conftest import set_meta

    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes["good1"])
    assert load_model(path, "ok").metadata["feature_spec_hash"] == DEFAULT_SPEC.hash
    other = DEFAULT_SPEC.with_vocabulary("channel", ["app", "web", "mini_program", "kiosk"])
    with pytest.raises(ModelRefused, match=f"specification's '{other.hash}'") as exc:
        load_model(path, "ok", spec=other)
    assert exc.value.reason == "schema_mismatch"
    legacy = onnx.load_from_string(model_bytes["good1"])
    set_meta(legacy, {"feature_schema": LEGACY_FEATURE_SCHEMA_V1, "feature_names": str(list(FEATURE_NAMES))})
    path.write_bytes(legacy.SerializeToString())
    with pytest.raises(ModelRefused, match="no feature_spec_hash"):
        load_model(path, "legacy", spec=other)
    # A model from before declared specifications has the 62 columns of feature schema v1: the default
    # specification (with the lifecycle columns since issue 19) refuses it, the v1 columns' spec takes it.
    import lightgbm as lgb
    import numpy as np

    from features.spec import LEGACY_V1_SPEC_HASH, FeatureSpec
    from training.export import to_onnx

    x = np.random.default_rng(0).random((400, 62))
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, label=x[:, 0] > 0.5), 3
    )
    old = to_onnx(booster, n_features=62)
    set_meta(old, {"feature_schema": LEGACY_FEATURE_SCHEMA_V1})
    path.write_bytes(old.SerializeToString())
    with pytest.raises(ModelRefused, match="no feature_spec_hash"):
        load_model(path, "legacy")
    lifecycle = {"lifecycle_stage", "days_since", "paid_days_left", "paid_days_since_lapse", "tier_gap",
                 "points_expiring"}  # fmt: skip
    data = DEFAULT_SPEC.model_dump()
    data["features"] = [f for f in data["features"] if f["kind"] not in lifecycle]
    v1 = FeatureSpec.model_validate(data)
    assert v1.hash == LEGACY_V1_SPEC_HASH
    assert load_model(path, "legacy", spec=v1).version == "legacy"


def test_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelRefused, match="corrupt"):
        load_model(tmp_path / "m.onnx", "x")


@pytest.mark.anyio
async def test_promote_on_disk_hot_swaps_and_a_bad_promotion_keeps_the_old(
    settings: Settings, registry: Registry
) -> None:
    async with running(create_app(settings)) as c:

        async def version() -> str:
            r = await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)
            assert r.status_code == 200
            v: str = r.json()["model_version"]
            return v

        assert await version() == "v1"
        registry.promote("v2")  # what `benefits promote v2` does on another machine

        async def swapped() -> bool:
            return await version() == "v2"

        assert await wait_for(swapped, timeout_s=5)
        registry.promote("bad-truncated")  # a broken promotion: refused, v2 keeps serving
        await asyncio.sleep(0.6)
        assert await version() == "v2"
        status = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert status["serving"] == "v2" and status["promoted"] == "bad-truncated"
        assert [r["reason"] for r in status["refused"]] == ["corrupt"]
        assert 'benefits_model_refused_total{reason="corrupt"} 1.0' in (await c.get("/metrics")).text


@pytest.mark.anyio
async def test_promote_api_refuses_schema_mismatch_and_swaps_good(
    settings: Settings, registry: Registry
) -> None:
    async with running(create_app(settings)) as c:
        r = await c.post("/v1/admin/models/bad-schema/promote", headers=ADMIN)
        assert r.status_code == 422 and "schema_mismatch" in r.json()["message"]
        assert registry.promoted() == "v1"  # the pointer was not touched
        assert (await c.post("/v1/admin/models/missing/promote", headers=ADMIN)).status_code == 404
        r = await c.post("/v1/admin/models/v2/promote", headers=ADMIN)
        assert r.status_code == 200 and r.json() == {"promoted": "v2", "previous": "v1", "serving": "v2"}
        body = (await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)).json()
        assert body["model_version"] == "v2"
        listing = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert {"v1", "v2", "bad-schema"} <= {v["version"] for v in listing["versions"]}


def test_hot_swap_under_load_drops_no_request(settings: Settings, registry: Registry) -> None:
    """Real HTTP: requests keep flowing while the model is swapped back and forth; all are 200."""
    with live_server(settings) as base:

        async def load() -> tuple[int, set[str], list[int]]:
            async with httpx.AsyncClient(base_url=base, headers=SF, timeout=5.0) as c:
                statuses: list[int] = []
                versions: set[str] = set()
                t_end = time.monotonic() + 2.5

                async def one() -> None:
                    while time.monotonic() < t_end:
                        r = await c.post("/v1/recommend", json={"member_id": "m1"})
                        statuses.append(r.status_code)
                        if r.status_code == 200:
                            versions.add(r.json()["model_version"])

                async def swap() -> None:
                    for v in ("v2", "v1", "v2"):
                        await asyncio.sleep(0.6)
                        registry.promote(v)

                await asyncio.gather(*(one() for _ in range(4)), swap())
                return len(statuses), versions, statuses

        n, versions, statuses = asyncio.run(load())
        assert n > 20 and set(statuses) == {200}
        assert versions == {"v1", "v2"}


@pytest.mark.anyio
async def test_catalog_change_reaches_a_second_replica_within_seconds(settings: Settings) -> None:
    async with running(create_app(settings)) as a, running(create_app(settings)) as b:
        offer = {"offer_id": "flash-1", "kind": "coupon", "subtype": "no_threshold", "title": "Flash 20 off",
                 "value": 20.0, "cost": 10.0, "pinned": True}  # fmt: skip
        r = await a.put("/v1/admin/offers/flash-1", json=offer, headers=ADMIN)
        assert r.status_code == 200
        t0 = time.monotonic()

        async def b_shows_it() -> bool:
            body = (await b.post("/v1/recommend", json={"member_id": "m9"}, headers=SF)).json()
            return bool(body["offers"]) and body["offers"][0]["offer_id"] == "flash-1"

        assert await wait_for(b_shows_it, timeout_s=5)
        assert time.monotonic() - t0 < 3.0
        await a.delete("/v1/admin/offers/flash-1", headers=ADMIN)

        async def b_dropped_it() -> bool:
            body = (await b.post("/v1/recommend", json={"member_id": "m9"}, headers=SF)).json()
            return "flash-1" not in [o["offer_id"] for o in body["offers"]]

        assert await wait_for(b_dropped_it, timeout_s=5)

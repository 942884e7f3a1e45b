"""An operator's own shop served end to end with no code change: its taxonomy (restaurant, coffee,
travel) through the catalogue API, eligibility, ranking and reasons; a model trained on its member
attributes, served with those attributes read from the member's blob (one Redis read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from features import events as ev
from features.state import apply, new_state
from harness.cafe import write_cafe
from harness.embedded import Service
from harness.members import write_states
from infra.registry import Registry
from service.app import create_app
from tests.service.conftest import ADMIN, SF, make_settings, running
from training import pipeline

pytestmark = [pytest.mark.integration]
T0 = 1_760_000_000.0


@pytest.fixture(scope="module")
def cafe_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    paths = write_cafe(tmp_path_factory.mktemp("cafe"), n_members=1500)
    reg = tmp_path_factory.mktemp("registry")
    from features.spec import load_spec

    out = pipeline.run(
        reg, paths["impressions"], promote=False, progress=False, spec=load_spec(paths["spec"]),
        members=paths["members"], split_by="member",
    )  # fmt: skip
    Registry(reg).promote(out.version)
    return paths, reg


def _member(member_id: str, attributes: dict[str, Any]) -> Any:
    s = new_state(member_id)
    apply(
        s,
        ev.ProfileUpdated(event_id=f"{member_id}-p", member_id=member_id, event_ts=T0, attributes=attributes),
    )
    return s


@pytest.mark.anyio
async def test_operator_taxonomy_and_attributes_end_to_end(
    cafe_model: tuple[dict[str, Path], Path], redis_server: Service, unique: str
) -> None:
    paths, reg = cafe_model
    settings = make_settings(
        redis_server.url,
        reg,
        unique,
        catalog_seed_path=paths["catalog"],
        feature_spec_path=paths["spec"],
        slate_max_per_category=20,
        slate_min_kinds=1,
        # Rank by the probability alone (no value term), so the order is what the model learned.
        value_weight=0.0,
        scorer_runtime="onnx",
    )
    coffee = {
        "age_band": "18-24",
        "income": 20000.0,
        "household": "single",
        "habits": ["coffee"],
        "commuter": True,
    }
    family = {
        "age_band": "35-49",
        "income": 30000.0,
        "household": "family",
        "habits": ["dining"],
        "commuter": False,
    }
    traveller = {
        "age_band": "50+",
        "income": 120000.0,
        "household": "couple",
        "habits": ["travel"],
        "commuter": False,
    }
    await write_states(settings, [_member("c1", coffee), _member("f1", family), _member("t1", traveller)])
    async with running(create_app(settings)) as c:
        ready = (await c.get("/readyz")).json()
        assert ready["model"] is not None, ready  # the model of the cafe's spec was accepted
        best: dict[str, dict[str, float]] = {}
        for member in ("c1", "f1", "t1"):
            r = await c.post("/v1/recommend", json={"member_id": member, "limit": 20}, headers=SF)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["mode"] == "personalised", body
            assert all(o["reasons"] for o in body["offers"])
            best[member] = {}
            for o in body["offers"]:
                best[member][o["category"]] = max(best[member].get(o["category"], 0.0), o["score"])
        # The member attributes in the blob steer the scores as the model learned from the table: each
        # category scores highest for the member whose attributes favour it.
        for member, category in (("c1", "coffee"), ("f1", "restaurant"), ("t1", "travel")):
            assert max(best, key=lambda m: best[m].get(category, -1.0)) == member, (category, best)
        # A page category the operator never declared: ranked as "other", never a 422.
        r = await c.post(
            "/v1/recommend", json={"member_id": "c1", "context": {"category": "spaceships"}}, headers=SF
        )
        assert r.status_code == 200
        # The catalogue API takes the operator's categories and refuses one outside the taxonomy.
        new = {
            "offer_id": "coffee-x",
            "kind": "coupon",
            "subtype": "fixed_off",
            "title": "2 off",
            "category": "coffee",
        }
        assert (await c.post("/v1/admin/offers", json=new, headers=ADMIN)).status_code == 201
        bad = {**new, "offer_id": "baby-x", "category": "baby"}
        r = await c.post("/v1/admin/offers", json=bad, headers=ADMIN)
        assert r.status_code == 422 and "category 'baby'" in r.json()["message"]

"""The operations admin API (what the console calls): bulk import with a dry run and a report, export,
campaign state, model rollback, the health summary, a member's state and slate preview."""

from __future__ import annotations

import json
import time

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from features.demo_catalog import demo_catalog
from features.offers import Offer
from harness.members import simulate_members, write_states
from infra.registry import Registry
from infra.settings import Settings
from service import bulk
from service.app import create_app
from tests.service.conftest import ADMIN, SF, running

pytestmark = [pytest.mark.integration]

CSV = "text/csv"


def _offers(n: int, prefix: str = "imp") -> list[Offer]:
    return [o.model_copy(update={"offer_id": f"{prefix}-{o.offer_id}"}) for o in demo_catalog(time.time(), n)]


@pytest.mark.anyio
async def test_csv_of_200_offers_imports_in_one_call_and_reimport_changes_nothing(settings: Settings) -> None:
    data = bulk.to_csv(_offers(200)).encode()
    async with running(create_app(settings)) as c:
        before = (await c.get("/v1/admin/offers", headers=ADMIN)).json()
        r = await c.post("/v1/admin/offers/import", content=data, headers={**ADMIN, "Content-Type": CSV})
        assert r.status_code == 200, r.text
        dry = r.json()
        assert dry["dry_run"] and not dry["applied"]
        assert (dry["rows"], dry["valid"], dry["refused_count"], len(dry["created"])) == (200, 200, 0, 200)
        assert dry["catalog_version"] == before["catalog_version"]
        # the dry run wrote nothing
        assert len((await c.get("/v1/admin/offers", headers=ADMIN)).json()["offers"]) == len(before["offers"])

        r = await c.post(
            "/v1/admin/offers/import?dry_run=false", content=data, headers={**ADMIN, "Content-Type": CSV}
        )
        done = r.json()
        assert done["applied"] and len(done["created"]) == 200
        assert done["catalog_version"] == before["catalog_version"] + 1  # one bump for the whole file
        after = (await c.get("/v1/admin/offers", headers=ADMIN)).json()
        assert len(after["offers"]) == len(before["offers"]) + 200

        again = (
            await c.post(
                "/v1/admin/offers/import?dry_run=false", content=data, headers={**ADMIN, "Content-Type": CSV}
            )
        ).json()
        assert not again["applied"] and len(again["unchanged"]) == 200 and not again["created"]
        assert again["catalog_version"] == done["catalog_version"]  # idempotent: the version did not move


@pytest.mark.anyio
async def test_bad_rows_are_refused_with_reasons_and_never_written(settings: Settings) -> None:
    good = _offers(3, "bad")
    csv_text = bulk.to_csv(good)
    lines = csv_text.splitlines()
    header = lines[0].split(",")
    bad = lines[1].split(",")
    bad[header.index("offer_id")] = "bad-row"
    bad[header.index("value")] = "lots"  # not a number
    dup = lines[2]  # repeats the id of the row above it
    text = "\n".join([lines[0] + ",colour", *(x + ",red" for x in [lines[1], lines[2], ",".join(bad), dup])])
    async with running(create_app(settings)) as c:
        r = await c.post(
            "/v1/admin/offers/import?dry_run=false", content=text, headers={**ADMIN, "Content-Type": CSV}
        )
        rep = r.json()
        assert rep["rows"] == 4 and rep["valid"] == 2 and rep["refused_count"] == 2
        by_row = {x["row"]: x for x in rep["refused"]}
        assert by_row[3]["offer_id"] == "bad-row" and by_row[3]["errors"][0]["field"] == "value"
        assert "repeats row" in by_row[4]["errors"][0]["message"]
        assert any("colour" in w for w in rep["warnings"])  # the ignored column is named
        assert (await c.get("/v1/admin/offers/bad-row", headers=ADMIN)).status_code == 404
        assert (await c.get(f"/v1/admin/offers/{good[0].offer_id}", headers=ADMIN)).status_code == 200


@pytest.mark.anyio
async def test_json_import_export_round_trip_and_unreadable_files(settings: Settings) -> None:
    offers = _offers(5, "js")
    body = orjson.dumps({"offers": [o.model_dump(mode="json") for o in offers]})
    async with running(create_app(settings)) as c:
        r = await c.post(
            "/v1/admin/offers/import?dry_run=false",
            content=body,
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert sorted(r.json()["created"]) == sorted(o.offer_id for o in offers)
        exported = await c.get("/v1/admin/offers/export?format=csv", headers=ADMIN)
        assert exported.headers["content-type"].startswith("text/csv")
        re = (
            await c.post(
                "/v1/admin/offers/import", content=exported.content, headers={**ADMIN, "Content-Type": CSV}
            )
        ).json()
        assert re["refused_count"] == 0 and not re["created"] and not re["updated"]
        ejson = await c.get("/v1/admin/offers/export?format=json", headers=ADMIN)
        assert {o["offer_id"] for o in ejson.json()} >= {o.offer_id for o in offers}

        r = await c.post(
            "/v1/admin/offers/import",
            content=b"{not json",
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert r.status_code == 422 and "not valid JSON" in r.json()["message"]
        r = await c.post(
            "/v1/admin/offers/import",
            content=b'{"x": 1}',
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert r.status_code == 422
        # the storefront key cannot import
        r = await c.post(
            "/v1/admin/offers/import", content=body, headers={**SF, "Content-Type": "application/json"}
        )
        assert r.status_code == 403


@given(
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
    tiers=st.lists(st.sampled_from(["regular", "silver", "gold", "diamond", "platinum", ""]), max_size=3),
)
@hsettings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_parse_accepts_exactly_what_the_offer_model_accepts(value: object, tiers: list[str]) -> None:
    """Property: a CSV row is valid iff the equivalent offer validates; a refused row always says why."""
    offer = demo_catalog(0.0, 1)[0]
    row = offer.model_dump(mode="json")
    cell = str(value)
    header = list(bulk.CSV_COLUMNS)
    line = bulk.to_csv([offer]).splitlines()[1].split(",")
    # Unquoted, so without the characters CSV gives a meaning to (separator, quote, line breaks).
    for special in (",", "\n", "\r", '"', "\x00"):
        cell = cell.replace(special, "")
    line[header.index("value")] = cell
    line[header.index("eligibility.tiers")] = "|".join(tiers)
    parsed = bulk.parse(("\n".join([",".join(header), ",".join(line)])).encode(), "csv")
    assert parsed.rows == 1
    assert len(parsed.offers) + len(parsed.refused) == 1
    for r in parsed.refused:
        assert r.errors and all(e["message"] for e in r.errors)
    row["value"] = line[header.index("value")].strip() or 0.0
    row["eligibility"]["tiers"] = [t for t in tiers if t]
    try:
        Offer.model_validate(row)
        ok = True
    except ValueError:
        ok = False
    assert ok == (len(parsed.offers) == 1)


@pytest.mark.anyio
async def test_rollback_returns_to_the_previous_model(settings: Settings, registry: Registry) -> None:
    async with running(create_app(settings)) as c:
        r = await c.post("/v1/admin/models/rollback", headers=ADMIN)
        assert r.status_code == 409 and "no previous" in r.json()["message"]  # a registry state
        assert (await c.post("/v1/admin/models/v2/promote", headers=ADMIN)).json()["serving"] == "v2"
        status = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert status["previous"] == "v1"
        r = await c.post("/v1/admin/models/rollback", headers=ADMIN)
        assert r.status_code == 200 and r.json()["serving"] == "v1" and r.json()["promoted"] == "v1"
        assert registry.promoted() == "v1"


@pytest.mark.anyio
async def test_member_state_and_preview_with_every_excluded_offer(settings: Settings) -> None:
    (state,) = simulate_members(["m-console-1"])
    await write_states(settings, [state])
    async with running(create_app(settings)) as c:
        assert (await c.get("/v1/admin/members/nobody-here", headers=ADMIN)).status_code == 404
        m = (await c.get("/v1/admin/members/m-console-1", headers=ADMIN)).json()
        assert m["member_id"] == "m-console-1" and m["attributes"]["tier"] == state.tier
        assert "orders_30d" in m["features"] and "offer_value" not in m["features"]
        for o in m["offers"]:
            assert set(o) >= {"offer_id", "shown", "claims", "caps"}
        p = await c.post("/v1/admin/members/m-console-1/preview", json={"page_type": "home"}, headers=ADMIN)
        body = p.json()
        assert p.status_code == 200 and body["offers"] and all(o["reasons"] for o in body["offers"])
        assert len(body["offers"]) + len(body["excluded"]) <= body["candidates"]
        assert body["eligible"] + len(body["excluded"]) == body["candidates"]
        # a preview is not a storefront answer: the recommend counters did not move
        health = (await c.get("/v1/admin/health", headers=ADMIN)).json()
        assert health["answers"] == 0
        await c.post("/v1/recommend", json={"member_id": "m-console-1"}, headers=SF)
        health = (await c.get("/v1/admin/health", headers=ADMIN)).json()
        assert health["answers"] == 1 and sum(health["answers_by_mode"].values()) == 1
        assert health["stage_latency_ms"]["total"]["count"] == 1
        assert health["stage_latency_ms"]["total"]["p50"] is not None


@pytest.mark.anyio
async def test_campaigns_report_stock_and_budget(settings: Settings) -> None:
    async with running(create_app(settings)) as c:
        r = (await c.get("/v1/admin/campaigns", headers=ADMIN)).json()
        rows = {o["offer_id"]: o for o in r["offers"]}
        limited = [o for o in rows.values() if o["limited"]]
        budgeted = [o for o in rows.values() if o["budgeted"]]
        assert limited and budgeted
        for o in limited:
            assert o["inventory_left"] == o["inventory"] - o["inventory_reserved"]
        for o in budgeted:
            assert 0.0 <= o["budget_spent_share"] <= 1.0 and o["pacing"] is not None
        assert json.dumps(r)  # plain JSON all the way down


def test_csv_export_imports_back_to_the_same_offers_lists_included() -> None:
    """An exported catalogue imports back unchanged, list cells (tags, eligibility lists) included: tags
    were exported joined by "|" and refused on import as a string."""
    offers = [
        o.model_copy(update={"tags": tags})
        for o, tags in zip(
            demo_catalog(time.time(), 6), [[], ["weekend"], ["weekend", "new_member"]] * 2, strict=True
        )
    ]
    parsed = bulk.parse(bulk.to_csv(offers).encode(), "csv")
    assert not parsed.refused, parsed.refused
    assert sorted((o for _, o in parsed.offers), key=lambda o: o.offer_id) == sorted(
        offers, key=lambda o: o.offer_id
    )

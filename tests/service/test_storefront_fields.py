"""What the storefront needs: display fields on every recommended item, an offer's public fields, a
whole slate's impressions in one feedback call; and the per-offer business metrics in /metrics."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from features import events as ev
from features.demo_catalog import demo_catalog
from harness.embedded import Service
from infra.settings import Settings
from service.app import create_app
from tests.service.conftest import ADMIN, SF, running, wait_for
from tests.service.test_feedback import consume

pytestmark = [pytest.mark.integration]


@pytest.mark.anyio
async def test_recommended_items_carry_display_fields_and_public_offer_read(settings: Settings) -> None:
    async with running(create_app(settings)) as c:
        first = (await c.post("/v1/recommend", json={"member_id": "sf-1"}, headers=SF)).json()["offers"][0]
        offer = (await c.get(f"/v1/admin/offers/{first['offer_id']}", headers=ADMIN)).json()
        offer.update(display_text="Save on your next basket", image_key="offers/hero-1.webp")
        offer["eligibility"]["valid_to_ts"] = time.time() + 3600.0
        assert (
            await c.put(f"/v1/admin/offers/{offer['offer_id']}", json=offer, headers=ADMIN)
        ).status_code == 200
        items = (await c.post("/v1/recommend", json={"member_id": "sf-1"}, headers=SF)).json()["offers"]
        item = next(i for i in items if i["offer_id"] == offer["offer_id"])
        assert (
            item["display_text"] == "Save on your next basket" and item["image_key"] == "offers/hero-1.webp"
        )
        assert item["threshold"] == offer["threshold"]
        ends = [t for t in (offer["eligibility"]["valid_to_ts"], offer["campaign_end_ts"]) if t is not None]
        assert item["valid_until_ts"] == min(ends)
        for other in items:
            assert {"threshold", "valid_until_ts", "display_text", "image_key"} <= other.keys()

        pub = await c.get(f"/v1/offers/{offer['offer_id']}", headers=SF)
        assert pub.status_code == 200
        body = pub.json()
        assert body["display_text"] == "Save on your next basket" and body["active"] is True
        assert not {"cost", "budget", "inventory", "eligibility", "caps"} & body.keys()  # public fields only
        assert (await c.get("/v1/offers/nope", headers=SF)).status_code == 404
        assert (await c.get(f"/v1/offers/{offer['offer_id']}")).status_code == 401

        bad = {**offer, "image_key": "http://x y"}
        r = await c.put(f"/v1/admin/offers/{offer['offer_id']}", json=bad, headers=ADMIN)
        assert r.status_code == 422 and "image_key" in r.text


@pytest.fixture
def fb_settings(settings: Settings, broker: Service, topics: dict[str, str]) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.url, "events_topic": topics["events"]})


@pytest.mark.anyio
async def test_one_call_reports_a_whole_slate(fb_settings: Settings) -> None:
    app = create_app(fb_settings)
    async with running(app) as c:

        async def ready() -> bool:
            return bool(app.state.resources.feedback.publisher.ready)

        assert await wait_for(ready, timeout_s=20), "producer never connected"
        answer = (await c.post("/v1/recommend", json={"member_id": "sf-2", "limit": 5}, headers=SF)).json()
        items = [
            {"offer_id": o["offer_id"], "position": o["position"], "propensity": o["propensity"]}
            for o in answer["offers"]
        ]
        batch = {"member_id": "sf-2", "request_id": answer["request_id"], "items": items}
        r = await c.post("/v1/feedback/batch", json=batch, headers=SF)
        assert r.status_code == 202, r.text
        out = r.json()
        assert out["accepted"] == len(items) and [x["offer_id"] for x in out["results"]] == [
            i["offer_id"] for i in items
        ]
        records = await consume(fb_settings, len(items))
        events = [ev.decode(rec.value) for rec in records if rec.value is not None]
        shown = {(e.offer_id, e.position) for e in events if isinstance(e, ev.Impression)}
        assert shown == {(i["offer_id"], i["position"]) for i in items}
        assert all(rec.key == b"sf-2" for rec in records)

        # one unknown offer: the others are recorded, the unknown one is named
        batch["items"] = [*items[:1], {"offer_id": "no-such-offer", "position": 1}]
        r = await c.post("/v1/feedback/batch", json=batch, headers=SF)
        assert r.status_code == 207
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "refused"]
        # claims stay one by one (money); an empty or oversized batch is a 422 naming the field
        r = await c.post("/v1/feedback/batch", json={**batch, "type": "claim"}, headers=SF)
        assert r.status_code == 422 and "type" in r.text
        r = await c.post("/v1/feedback/batch", json={**batch, "items": []}, headers=SF)
        assert r.status_code == 422 and "items" in r.text
        # the single form still works
        one = {
            "type": "impression",
            "member_id": "sf-2",
            "offer_id": items[0]["offer_id"],
            "request_id": "r1",
        }
        assert (await c.post("/v1/feedback", json=one, headers=SF)).status_code == 202


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.mark.anyio
async def test_business_metrics_per_limited_offer_with_bounded_labels(fb_settings: Settings) -> None:
    app = create_app(fb_settings)
    async with running(app) as c:

        async def ready() -> bool:
            return bool(app.state.resources.feedback.publisher.ready)

        assert await wait_for(ready, timeout_s=20), "producer never connected"
        catalog = demo_catalog(time.time())
        limited = next(o for o in catalog if o.inventory is not None)
        unlimited = next(o for o in catalog if o.inventory is None and o.budget is None)
        small = limited.model_copy(update={"offer_id": "tiny-stock", "inventory": 1})
        assert (
            await c.post("/v1/admin/offers", json=small.model_dump(mode="json"), headers=ADMIN)
        ).status_code == 201
        claim = {"type": "claim", "member_id": "sf-3", "offer_id": "tiny-stock", "request_id": "r1"}
        assert (await c.post("/v1/feedback", json=claim, headers=SF)).status_code == 202
        r = await c.post("/v1/feedback", json={**claim, "member_id": "sf-4"}, headers=SF)
        assert r.status_code == 409
        claim_u = {**claim, "offer_id": unlimited.offer_id}
        assert (await c.post("/v1/feedback", json=claim_u, headers=SF)).status_code == 202

        async def scraped() -> str | None:
            # Stock used is read by the catalogue poller (every catalog_poll_seconds): wait for it.
            text = (await c.get("/metrics")).text
            return text if _samples(text, "benefits_offer_inventory_left").get(key) == 0.0 else None

        key = (("offer_id", "tiny-stock"),)
        text = await wait_for(scraped, timeout_s=10)
        assert text, "the sold-out offer's stock never reached /metrics"
        left = _samples(text, "benefits_offer_inventory_left")
        assert left[(("offer_id", "tiny-stock"),)] == 0.0
        total = _samples(text, "benefits_offer_inventory_total")
        assert total[(("offer_id", "tiny-stock"),)] == 1.0
        claims = _samples(text, "benefits_offer_claims_total")
        assert claims[(("offer_id", "tiny-stock"), ("outcome", "accepted"))] == 1.0
        assert claims[(("offer_id", "tiny-stock"), ("outcome", "sold_out"))] == 1.0
        # an unlimited, unbudgeted offer never gets its own series
        assert claims[(("offer_id", "_other"), ("outcome", "accepted"))] == 1.0
        assert not any(("offer_id", unlimited.offer_id) in k for k in claims)
        spent = _samples(text, "benefits_offer_budget_spent")
        watched = {
            o.offer_id for o in catalog if o.active and (o.inventory is not None or o.budget is not None)
        }
        assert len(left) + 0 <= 50 and len(spent) <= 50  # capped at max_offers
        dropped = _samples(text, "benefits_offer_series_dropped")[()]
        assert dropped == max(0, len(watched) + 1 - 50)

        # the console's campaign view counts the same refusals
        camp = (await c.get("/v1/admin/campaigns", headers=ADMIN)).json()
        row = next(o for o in camp["offers"] if o["offer_id"] == "tiny-stock")
        assert row["inventory_left"] == 0 and row["refusals"] == {"sold_out": 1}
        assert row["claims_accepted_here"] == 1 and "sold_out" in camp["refusal_reasons"]

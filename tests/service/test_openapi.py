"""The OpenAPI document says what the API enforces, and OPTIONS / 405 list every method of a path (real
HTTP under uvicorn, real Redis). The whole document is fuzzed with every schemathesis check in
tests/reliability/test_bad_input.py; these pin the pieces that were wrong."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.settings import Settings
from tests.service.conftest import ADMIN, SF, live_server

pytestmark = [pytest.mark.integration]


def _allow(r: httpx.Response) -> set[str]:
    return {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()} - {"HEAD", "OPTIONS"}


PATHS = {
    "/v1/admin/offers": {"GET", "POST"},
    "/v1/admin/offers/o-1": {"GET", "PUT", "DELETE"},
    # A literal path beside a template (/v1/admin/offers/{offer_id}) has only its own methods.
    "/v1/admin/offers/export": {"GET"},
    "/v1/admin/offers/import": {"POST"},
    "/v1/admin/experiment": {"GET", "PUT", "DELETE"},
    "/v1/recommend": {"POST"},
}


def test_options_and_405_list_every_method_of_the_path(settings: Settings) -> None:
    with live_server(settings) as base, httpx.Client(base_url=base, headers=ADMIN, timeout=10) as c:
        for path, methods in PATHS.items():
            r = c.options(path)
            assert (r.status_code, _allow(r)) == (204, methods), (path, r.status_code, r.headers)
            r = c.request("PATCH", path, json={})
            assert (r.status_code, _allow(r)) == (405, methods), (path, r.status_code, r.headers)
            assert r.json()["error"] == "method_not_allowed"
        # Starlette alone routed these to the template's route, as an offer named "export".
        for method in ("PUT", "DELETE"):
            r = c.request(method, "/v1/admin/offers/export", json={})
            assert (r.status_code, _allow(r)) == (405, {"GET"}), method
        assert c.options("/nowhere").status_code == 404


def _spec(base: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/openapi.json", timeout=10)
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def test_offer_schema_is_the_running_taxonomy_and_the_api_enforces_it(
    settings: Settings, tmp_path: Path
) -> None:
    """An operator's taxonomy: the document's offer variants list its subtypes per kind and its
    categories (a kind without subtypes has no variant), and the API refuses what the document does."""
    offer = {
        "offer_id": "c1",
        "kind": "coupon",
        "subtype": "percent_off",
        "title": "10 %",
        "category": "coffee",
    }
    catalogue = {
        "taxonomy": {
            "categories": ["coffee", "travel"],
            "subtypes": {"coupon": ["percent_off", "fixed_off"], "benefit": ["lounge"], "consult": []},
        },
        "offers": [offer],
    }
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalogue))
    s = settings.model_copy(update={"taxonomy_path": path, "catalog_seed_path": path})
    with live_server(s) as base, httpx.Client(base_url=base, headers=ADMIN, timeout=10) as c:
        schemas = _spec(base)["components"]["schemas"]
        body = _spec(base)["paths"]["/v1/admin/offers"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/OfferInput"}
        assert schemas["OfferInput"]["discriminator"]["propertyName"] == "kind"
        assert set(schemas["OfferInput"]["discriminator"]["mapping"]) == {"coupon", "benefit"}
        coupon = schemas["CouponOfferInput"]["properties"]
        assert coupon["kind"]["const"] == "coupon"
        assert coupon["subtype"]["enum"] == ["percent_off", "fixed_off"]
        assert coupon["category"]["anyOf"][0]["enum"] == ["coffee", "travel"]
        assert schemas["BenefitOfferInput"]["properties"]["subtype"]["enum"] == ["lounge"]

        ok = c.post("/v1/admin/offers", json={**offer, "offer_id": "c2", "subtype": "fixed_off"})
        assert ok.status_code == 201, ok.text
        for bad, field in (
            ({"kind": "benefit", "subtype": "percent_off"}, "subtype"),  # a coupon subtype on a benefit
            ({"kind": "consult", "subtype": "percent_off"}, "subtype"),  # no consult subtypes at all
            ({"category": "baby"}, "category"),  # the demo's category, not this taxonomy's
            ({"active": 0}, "active"),  # 0 is not false in a JSON body
        ):
            r = c.post("/v1/admin/offers", json={**offer, "offer_id": "c3", **bad})
            assert r.status_code == 422 and field in r.text, (bad, r.status_code, r.text)


def test_event_time_bounds_in_the_document_are_the_enforced_ones(settings: Settings) -> None:
    with live_server(settings) as base, httpx.Client(base_url=base, headers=SF, timeout=10) as c:
        t0 = time.time()
        schemas = _spec(base)["components"]["schemas"]
        bounds = {}
        for name in ("FeedbackRequest", "FeedbackBatch"):
            number = schemas[name]["properties"]["event_ts"]["anyOf"][0]
            bounds[name] = (number["minimum"], number["maximum"])
            assert "member_ttl_seconds" in schemas[name]["properties"]["event_ts"]["description"]
        lo, hi = bounds["FeedbackRequest"]
        assert bounds["FeedbackBatch"] == pytest.approx((lo, hi), abs=5)
        assert hi == pytest.approx(t0 + settings.event_max_future_skew_seconds, abs=5)
        assert lo == pytest.approx(t0 - settings.member_ttl_seconds + 86400, abs=5)
        fb = {"type": "impression", "member_id": "m1", "offer_id": "no-such-offer", "request_id": "r1"}
        # Inside the document's bounds: validated (then the unknown offer is a 404); outside: a 422.
        for ts in (lo, hi):
            assert c.post("/v1/feedback", json={**fb, "event_ts": ts}).status_code == 404
        for ts in (lo - 2 * 86400, hi + 2 * 86400, 4102444800.0):
            r = c.post("/v1/feedback", json={**fb, "event_ts": ts})
            assert r.status_code == 422 and "event_ts" in r.text, (ts, r.text)


def test_links_lead_from_created_offers_to_their_operations(settings: Settings) -> None:
    with live_server(settings) as base:
        paths = _spec(base)["paths"]
    links = paths["/v1/admin/offers"]["post"]["responses"]["201"]["links"]
    assert set(links) == {"GetOffer", "ReplaceOffer", "RetireOffer"}
    by_id = paths["/v1/admin/offers/{offer_id}"]
    assert links["GetOffer"]["operationId"] == by_id["get"]["operationId"]
    assert links["GetOffer"]["parameters"] == {"offer_id": "$response.body#/offer/offer_id"}
    public = paths["/v1/recommend"]["post"]["responses"]["200"]["links"]["GetPublicOffer"]
    assert public["operationId"] == paths["/v1/offers/{offer_id}"]["get"]["operationId"]

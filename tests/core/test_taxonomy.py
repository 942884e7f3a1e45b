"""The operator's taxonomy: declared by the catalogue, checked where offers enter, used by the features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features import events as ev
from features.context import ContextVocabulary
from features.eligibility import EligibilityTable, evaluate
from features.offers import Eligibility, Offer
from features.projection import DEFAULT_SPEC, OfferTable, rows
from features.spec import OTHER
from features.state import apply, new_state
from features.taxonomy import (
    DEMO_TAXONOMY,
    CatalogError,
    Taxonomy,
    load_catalog_file,
    load_taxonomy,
    parse_catalog,
    spec_for_taxonomy,
)

T0 = 1_760_000_000.0
CAFE = Taxonomy(
    categories=["restaurant", "coffee", "travel"],
    subtypes={"coupon": ["percent_off", "fixed_off"], "benefit": ["lounge"], "consult": []},
    tags=["weekend"],
)


def _offer(oid: str, category: str | None, subtype: str = "percent_off", **kw: object) -> dict[str, object]:
    return {"offer_id": oid, "kind": "coupon", "subtype": subtype, "title": oid, "category": category, **kw}


def test_the_demo_taxonomy_is_the_default_and_gives_the_default_spec() -> None:
    assert spec_for_taxonomy(DEFAULT_SPEC, DEMO_TAXONOMY).hash == DEFAULT_SPEC.hash
    tax, offers = parse_catalog([_offer("c1", "baby", "threshold")])
    assert tax == DEMO_TAXONOMY and offers[0].category == "baby"


def test_an_operator_catalogue_declares_its_own_categories(tmp_path: Path) -> None:
    data = {
        "taxonomy": CAFE.model_dump(),
        "offers": [
            _offer("c1", "coffee", tags=["weekend"]),
            _offer("c2", "travel", "fixed_off"),
            {
                "offer_id": "b1",
                "kind": "benefit",
                "subtype": "lounge",
                "title": "Lounge",
                "category": "travel",
            },
        ],
    }
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    tax, offers = load_catalog_file(path)
    assert tax.categories == ["restaurant", "coffee", "travel"] and len(offers) == 3
    assert load_taxonomy(path) == tax
    spec = spec_for_taxonomy(DEFAULT_SPEC, tax)
    assert spec.hash != DEFAULT_SPEC.hash and spec.vocabulary("subtype") == [
        "percent_off",
        "fixed_off",
        "lounge",
    ]
    # The features use the operator's categories and subtypes.
    table = OfferTable(offers, spec)
    s = new_state("m")
    apply(
        s, ev.PageView(event_id="e", member_id="m", event_ts=T0 - 60, page_type="category", category="coffee")
    )
    x = rows(s, table, ContextVocabulary.of(spec, tax).normalise("category", "coffee", None, None)[0], T0)
    col = spec.index
    assert x[:, col["cat_interest_1d"]].tolist()[:2] == [pytest.approx(1.0, rel=1e-3), 0.0]
    assert x[:, col["page_category_match"]].tolist() == [1.0, 0.0, 0.0]
    assert x[:, col["subtype_code"]].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("offer", "needle"),
    [
        (_offer("x", "baby"), "category 'baby'"),
        (_offer("x", "coffee", "threshold"), "subtype 'threshold'"),
        (_offer("x", "coffee", tags=["midnight"]), "tags .'midnight'."),
    ],
)
def test_offers_outside_the_taxonomy_are_refused_naming_the_field(
    offer: dict[str, object], needle: str
) -> None:
    with pytest.raises(CatalogError, match=needle):
        parse_catalog({"taxonomy": CAFE.model_dump(), "offers": [offer]}, "cafe.json")


def test_a_missing_catalogue_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=str(tmp_path / "catalog.json")):
        load_catalog_file(tmp_path / "catalog.json")


def test_unknown_context_values_map_to_other_and_are_reported() -> None:
    vocab = ContextVocabulary.of(DEFAULT_SPEC, CAFE)
    ctx, unknown = vocab.normalise("spaceship", "bakery", "fridge", "tv")
    assert (ctx.page_type, ctx.category, ctx.device, ctx.channel) == (OTHER, OTHER, OTHER, OTHER)
    assert unknown == [
        ("category", "bakery"),
        ("page_type", "spaceship"),
        ("device", "fridge"),
        ("channel", "tv"),
    ]
    ctx, unknown = vocab.normalise("category", "coffee", "ios", "web")
    assert unknown == [] and ctx.category == "coffee"
    ctx, _ = vocab.normalise(None, None, None, None)
    assert (ctx.page_type, ctx.category, ctx.device, ctx.channel) == ("home", None, "other", "app")


def test_an_unknown_channel_or_page_passes_only_unrestricted_offers() -> None:
    free = Offer.model_validate(_offer("free", "coffee"))
    app_only = Offer.model_validate(_offer("app", "coffee", eligibility=Eligibility(channels=["app"])))
    cart_only = Offer.model_validate(_offer("cart", "coffee", eligibility=Eligibility(page_types=["cart"])))
    offers = [free, app_only, cart_only]
    ctx, _ = ContextVocabulary.of(DEFAULT_SPEC, CAFE).normalise("spaceship", None, None, "tv")
    table = OfferTable(offers)
    reason = evaluate(EligibilityTable(offers), table.index, new_state("m"), ctx, T0)
    assert (reason < 0).tolist() == [True, False, False]
    assert np.all(reason[1:] >= 0)

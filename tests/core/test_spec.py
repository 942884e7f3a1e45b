"""The declared feature specification: validation, hashing, binding by name, and model compatibility."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features import events as ev
from features.decay import DAY
from features.demo_catalog import demo_catalog
from features.projection import (
    DEFAULT_SPEC,
    FEATURE_NAMES,
    LEGACY_FEATURE_SCHEMA_V1,
    Context,
    OfferTable,
    rows,
)
from features.spec import (
    DEFAULT_SPEC_PATH,
    LEGACY_V1_SPEC_HASH,
    FeatureSpec,
    SpecError,
    load_spec,
    parse_spec,
    spec_mismatch,
)
from features.state import apply, new_state

T0 = 1_760_000_000.0


def _spec(**changes: object) -> dict[str, object]:
    data = json.loads(DEFAULT_SPEC_PATH.read_text())
    data.update(changes)
    return data


LIFECYCLE_FEATURES = (
    "lifecycle_stage",
    "days_since_visit",
    "paid_days_left",
    "paid_days_since_lapse",
    "tier_gap",
    "tier_gap_share",
    "points_expiring",
)


def _v1_spec() -> FeatureSpec:
    """The default specification without its lifecycle columns: the 62 columns of feature schema v1."""
    data = _spec()
    data["features"] = [f for f in data["features"] if f["name"] not in LIFECYCLE_FEATURES]  # type: ignore[attr-defined]
    return FeatureSpec.model_validate(data)


def test_default_spec_is_the_shipped_file_with_todays_columns() -> None:
    assert load_spec().hash == DEFAULT_SPEC.hash
    assert DEFAULT_SPEC.names == FEATURE_NAMES and len(DEFAULT_SPEC) == 69
    assert FEATURE_NAMES[:3] == ("tier", "paid_member", "log_points")
    assert FEATURE_NAMES[-2:] == ("device_code", "channel_code")
    # The lifecycle columns (issue 19) follow the other member columns, so those stay one block.
    i = FEATURE_NAMES.index("log_orders_total")
    assert FEATURE_NAMES[i + 1 : i + 1 + len(LIFECYCLE_FEATURES)] == LIFECYCLE_FEATURES
    # Without them the specification is the one of feature schema v1, hash for hash.
    v1 = _v1_spec()
    assert len(v1) == 62 and v1.hash == LEGACY_V1_SPEC_HASH


def test_hash_covers_params_vocabularies_and_order_not_descriptions() -> None:
    base = _spec()
    assert FeatureSpec.model_validate(_spec(description="another text")).hash == DEFAULT_SPEC.hash
    changed_param = _spec()
    changed_param["features"][5]["params"]["half_life"] = "1d"  # type: ignore[index]
    vocab = _spec()
    vocab["vocabularies"]["tier"] = ["regular", "silver", "gold", "diamond", "platinum"]  # type: ignore[index]
    order = _spec()
    feats = order["features"]  # type: ignore[index]
    feats[0], feats[1] = feats[1], feats[0]  # type: ignore[index]
    hashes = {FeatureSpec.model_validate(d).hash for d in (base, changed_param, vocab, order)}
    assert len(hashes) == 4


@pytest.mark.parametrize(
    ("feature", "needle"),
    [
        ({"name": "x", "kind": "no_such_kind"}, "unknown kind"),
        (
            {"name": "x", "kind": "decayed_count", "params": {"event": "page_view", "half_life": "2d"}},
            "half_life",
        ),
        (
            {"name": "x", "kind": "decayed_count", "params": {"event": "teleport", "half_life": "1d"}},
            "teleport",
        ),
        ({"name": "x", "kind": "decayed_count", "params": {"event": "order"}}, "missing parameter"),
        ({"name": "x", "kind": "offer_kind", "params": {"kind": "coupon", "typo": 1}}, "unknown parameters"),
        (
            {
                "name": "x",
                "kind": "member_attribute",
                "params": {"attribute": "a", "type": "categorical", "vocabulary": "nope"},
            },
            "no vocabulary",
        ),
        ({"name": "tier", "kind": "tenure_days"}, "repeat"),
    ],
)
def test_bad_specifications_are_refused_naming_the_problem(feature: dict[str, object], needle: str) -> None:
    data = _spec()
    data["features"] = [*data["features"], feature]  # type: ignore[misc]
    with pytest.raises(SpecError, match=needle):
        parse_spec(json.dumps(data))


def test_a_custom_spec_binds_columns_by_name_with_attributes_and_tags() -> None:
    spec = FeatureSpec.model_validate(
        {
            "version": 1,
            "vocabularies": {"age_band": ["18-24", "25-34", "35-49"], "page_type": ["home", "category"]},
            "context": {"page_type": {"vocabulary": "page_type"}},
            "features": [
                {"name": "page", "kind": "context_code", "params": {"field": "page_type"}},
                {
                    "name": "age",
                    "kind": "member_attribute",
                    "params": {"attribute": "age_band", "type": "categorical", "vocabulary": "age_band"},
                },
                {
                    "name": "income",
                    "kind": "member_attribute",
                    "params": {"attribute": "income", "default": -1},
                },
                {
                    "name": "likes_coffee",
                    "kind": "member_attribute",
                    "params": {"attribute": "habits", "type": "list", "contains": "coffee"},
                },
                {"name": "weekend", "kind": "offer_tag", "params": {"tag": "weekend"}},
                {
                    "name": "views_7d",
                    "kind": "decayed_count",
                    "params": {"event": "page_view", "half_life": "7d"},
                },
                {"name": "interest_7d", "kind": "category_interest", "params": {"half_life": "7d"}},
            ],
        }
    )
    assert spec.member_attributes() == {"age_band": "categorical", "income": "numeric", "habits": "list"}
    offers = demo_catalog(T0 - DAY, 12)
    offers = [offers[0].model_copy(update={"tags": ["weekend"]}), *offers[1:]]
    table = OfferTable(offers, spec)
    s = new_state("m")
    apply(
        s,
        ev.ProfileUpdated(
            event_id="p",
            member_id="m",
            event_ts=T0 - 10,
            attributes={"age_band": "35-49", "habits": ["coffee"]},
        ),
    )
    k = next(i for i, o in enumerate(offers) if i > 0 and o.category)
    cat = offers[k].category
    apply(s, ev.PageView(event_id="v", member_id="m", event_ts=T0 - 5, page_type="category", category=cat))
    x = rows(s, table, Context(page_type="search"), T0)
    col = spec.index
    assert x.shape == (12, 7)
    assert (x[:, col["page"]] == 2).all()  # outside the vocabulary: len(vocabulary), i.e. "other"
    assert (x[:, col["age"]] == 2).all() and (x[:, col["income"]] == -1).all()
    assert (x[:, col["likes_coffee"]] == 1).all()
    assert x[0, col["weekend"]] == 1 and x[1:, col["weekend"]].sum() == 0
    assert x[k, col["interest_7d"]] > 0.99
    assert all(x[i, col["interest_7d"]] == 0 for i, o in enumerate(offers) if o.category != cat)
    assert x[:, col["views_7d"]] == pytest.approx(np.full(12, 1.0), rel=1e-3)


def test_models_are_checked_against_the_spec_hash() -> None:
    other = DEFAULT_SPEC.with_vocabulary("tier", ["regular", "silver", "gold", "diamond", "platinum"])
    assert spec_mismatch({"feature_spec_hash": DEFAULT_SPEC.hash}, DEFAULT_SPEC) is None
    assert "feature_spec_hash" in str(spec_mismatch({"feature_spec_hash": DEFAULT_SPEC.hash}, other))
    # A model from before declared specifications (62 columns): accepted by the v1 columns' spec only,
    # no longer by the default one, which has the lifecycle columns too.
    legacy = {"feature_schema": LEGACY_FEATURE_SCHEMA_V1}
    assert spec_mismatch(legacy, _v1_spec()) is None
    assert spec_mismatch(legacy, DEFAULT_SPEC) is not None
    assert spec_mismatch(legacy, other) is not None
    assert spec_mismatch({"feature_schema": "v0:deadbeefdeadbeef"}, DEFAULT_SPEC) is not None
    assert spec_mismatch({}, DEFAULT_SPEC) is not None

"""The ``member_offer_attribute`` kind: a member's attribute ``PREFIX:OFFER_ID`` lands in that offer's row
only, through the fold of ``profile_updated`` events, for all offers or a subset (``only``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features import events as ev
from features.offers import Offer
from features.projection import Context, OfferTable, rows
from features.spec import FeatureSpec, default_spec
from features.state import fold

T = 1_760_000_000.0


def _spec(**params: object) -> FeatureSpec:
    data = json.loads(default_spec().model_dump_json())
    data["features"].append({"name": "spend_on", "kind": "member_offer_attribute", "params": params})
    return FeatureSpec.model_validate(data)


def _offers() -> list[Offer]:
    return [Offer(offer_id=f"o{i}", kind="coupon", subtype="threshold", title=f"o{i}") for i in range(4)]


def test_each_offer_reads_its_own_attribute() -> None:
    spec = _spec(prefix="spend", default=-1)
    table = OfferTable(_offers(), spec)
    state = fold(
        [
            ev.ProfileUpdated(event_id="a", member_id="m", event_ts=T, attributes={"spend:o1": 5.0}),
            ev.ProfileUpdated(event_id="b", member_id="m", event_ts=T + 1, attributes={"spend:o3": 2.5}),
            # Other prefixes, unknown offers and text values are not this feature's.
            ev.ProfileUpdated(
                event_id="c", member_id="m", event_ts=T + 2,
                attributes={"other:o0": 9.0, "spend:nope": 1.0, "spend:o2": "high"},
            ),
        ]
    )  # fmt: skip
    col = spec.index["spend_on"]
    x = rows(state, table, Context(), T + 10)
    assert x[:, col].tolist() == [-1.0, 5.0, -1.0, 2.5]
    sub = rows(state, table, Context(), T + 10, only=np.array([3, 0, 1]))
    assert sub[:, col].tolist() == [2.5, -1.0, 5.0]
    # A later update of one pair replaces it (last writer wins by event time).
    later = ev.ProfileUpdated(event_id="d", member_id="m", event_ts=T + 3, attributes={"spend:o1": 0.5})
    fold([later], state)
    assert rows(state, table, Context(), T + 10)[1, col] == 0.5


@pytest.mark.parametrize(
    ("params", "match"),
    [({}, "prefix"), ({"prefix": "a b"}, "prefix"), ({"prefix": "p", "default": "x"}, "default"),
     ({"prefix": "p", "scale": 2}, "unknown parameters")],
)  # fmt: skip
def test_bad_parameters_are_refused(params: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _spec(**params)

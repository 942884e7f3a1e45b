"""The msgspec decoder of the recommend body and the documented pydantic model agree on what is valid."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from features.events import PAGE_TYPES
from features.offers import CATEGORIES
from features.projection import DEVICES
from service.body import decode_recommend
from service.schemas import RecommendRequest

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 60),
    st.text(max_size=8),
    st.sampled_from(["m1", "a:b@c", "x" * 65, "nl-0\n", "m1\r\n"]),
)
_context = st.dictionaries(
    st.sampled_from(["page_type", "category", "device", "channel", "extra"]),
    st.one_of(_values, st.sampled_from([*PAGE_TYPES, *CATEGORIES, *DEVICES, "app", "web", "mini_program"])),
)
_body = st.dictionaries(
    st.sampled_from(["member_id", "context", "limit", "explain", "locale", "surprise"]),
    st.one_of(_values, _context, st.sampled_from(["zh-CN", "en", "zh", "en-GB", "fr-FR", "x"])),
)


def _pydantic_ok(body: dict[str, Any]) -> bool:
    try:
        RecommendRequest.model_validate(body, strict=True)
    except ValidationError:
        return False
    return True


def _msgspec_ok(body: dict[str, Any]) -> bool:
    try:
        decode_recommend(orjson.dumps(body))
    except RequestValidationError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(_body)
def test_msgspec_and_pydantic_accept_the_same_bodies(body: dict[str, Any]) -> None:
    assert _msgspec_ok(body) == _pydantic_ok(body), body


def test_a_valid_body_decodes_to_the_same_values() -> None:
    raw = {"member_id": "m1", "context": {"page_type": "cart", "category": CATEGORIES[0]}, "limit": 3}
    got = decode_recommend(orjson.dumps(raw))
    want = RecommendRequest.model_validate(raw)
    assert msgspec.structs.asdict(got.context) == want.context.model_dump()
    assert (got.member_id, got.limit, got.explain) == (want.member_id, want.limit, want.explain)


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (b'{"member_id": "m1", "surprise": 1}', ("body", "surprise")),
        (b'{"member_id": "m1", "context": {"extra": 1}}', ("body", "context", "extra")),
        (b'{"context": {}}', ("body", "member_id")),
        (b'{"member_id": "m1", "limit": 0}', ("body", "limit")),
        (b'{"member_id": "m1", "limit": "5"}', ("body", "limit")),
        (b'{"member_id": "m1", "limit": true}', ("body", "limit")),
        (b'{"member_id": "m1", "explain": "yes"}', ("body", "explain")),
        (b'{"member_id": "m1", "explain": 0}', ("body", "explain")),
        (b'{"member_id": "nl-0\\n"}', ("body", "member_id")),
        (b'{"member_id": "m1", "locale": "fr-FR"}', ("body", "locale")),
        (b"\xff\xfe", ("body",)),
        (b"", ("body",)),
    ],
)
def test_errors_name_the_field(raw: bytes, loc: tuple[str, ...]) -> None:
    with pytest.raises(RequestValidationError) as exc:
        decode_recommend(raw)
    assert exc.value.errors()[0]["loc"] == loc

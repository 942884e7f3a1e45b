"""The recommend request body decoded by msgspec (one pass from bytes to a typed struct).

``POST /v1/recommend`` is the hot route: FastAPI's own body handling (``json.loads``, then pydantic
validation, then dependency resolution for the body) cost about 5 % of a request's CPU in the issue's
profile; msgspec decodes and validates the same body in a couple of microseconds. The pydantic model
:class:`service.schemas.RecommendRequest` stays the documented schema (OpenAPI); this struct mirrors it
field for field, and ``tests/service/test_body.py`` checks the two accept and refuse the same bodies.

Errors become the service's one 422 shape (a :class:`fastapi.exceptions.RequestValidationError` whose
``loc`` names the field, e.g. ``context.page_type``, ``surprise`` for an unknown field).
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
import orjson
from fastapi.exceptions import RequestValidationError

from features.events import ID_PATTERN
from service.i18n import LOCALE_TAGS, is_locale_tag

#: A context value (mirrors service.schemas.ContextValue): any short label; which values are known is
#: the feature specification's business (an unknown one ranks as "other"), only malformed ones are 422.
ContextValue = Annotated[str, msgspec.Meta(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:&' -]+$")]


class ContextBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    page_type: ContextValue | None = None
    category: ContextValue | None = None
    device: ContextValue | None = None
    channel: ContextValue | None = None


class RecommendBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    member_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=ID_PATTERN)]
    context: ContextBody = ContextBody()
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None
    explain: bool = False
    locale: Annotated[str, msgspec.Meta(min_length=2, max_length=35)] | None = None


_WireLimit = Annotated[int, msgspec.Meta(ge=1, le=50)] | Annotated[float, msgspec.Meta(ge=1, le=50)]


class _RecommendWire(RecommendBody, forbid_unknown_fields=True, frozen=True):
    """What is decoded: JSON has one number type, so 6.0 is the integer 6 (JSON Schema's "integer"
    admits it); a fraction is refused after decoding, strings and booleans by the decoder."""

    limit: _WireLimit | None = None  # type: ignore[assignment]


_decoder = msgspec.json.Decoder(_RecommendWire)
# msgspec's messages end in " - at `$.a.b`"; unknown and missing fields name the key in backquotes.
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_KEY = re.compile(r"(?:unknown|missing required) field `(?P<key>[^`]+)`")


def decode_recommend(raw: bytes) -> RecommendBody:
    """The typed body, or :class:`RequestValidationError` naming the field."""
    try:
        body = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RequestValidationError([_error(str(exc))]) from None
    except msgspec.DecodeError as exc:
        raise RequestValidationError([{"loc": ("body",), "msg": str(exc), "type": "json_invalid"}]) from None
    limit: object = body.limit
    if isinstance(limit, float):
        if not limit.is_integer():
            raise RequestValidationError(
                [{"loc": ("body", "limit"), "msg": "Expected `int`, got a fraction", "type": "int_type"}]
            )
        body = msgspec.structs.replace(body, limit=int(limit))
    if body.locale is not None and not is_locale_tag(body.locale):
        msg = f"unsupported locale {body.locale!r}; one of: {', '.join(LOCALE_TAGS)}"
        raise RequestValidationError([{"loc": ("body", "locale"), "msg": msg, "type": "value_error"}])
    return body


def _error(message: str) -> dict[str, object]:
    m = _AT.match(message)
    msg, path = (m.group("msg"), m.group("path") or "") if m else (message, "")
    loc = [p for p in re.split(r"[.\[\]]+", path) if p]
    key = _KEY.search(msg)
    if key is not None:
        loc.append(key.group("key"))
    return {"loc": ("body", *loc), "msg": msg, "type": "value_error"}


def invalid_body(exc: RequestValidationError) -> bytes:
    """The 422 body: every invalid field named (``context.page_type``), with its message."""
    fields = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        fields.append({"field": ".".join(loc) or "body", "message": err.get("msg", "invalid")})
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return orjson.dumps({"error": "invalid_request", "message": message, "fields": fields})

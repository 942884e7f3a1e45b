"""The OpenAPI document says what the API enforces, and ``OPTIONS`` / 405 answers list every method.

FastAPI's generated document is completed here (:func:`document`):

- **Offers by kind** (``OfferInput``, the body of ``POST /v1/admin/offers`` and ``PUT
  /v1/admin/offers/{offer_id}``): one variant per kind (``oneOf`` with a ``kind`` discriminator) whose
  ``subtype`` is an ``enum`` of that kind's subtypes, ``category`` and ``tags`` enums of the running
  taxonomy (``features.taxonomy``, the operator's catalogue: the document is built from the taxonomy
  this process loaded, so it changes with it). A budget needs a positive cost (``if``/``then``).
  Rules between two values (campaign end after start, validity window, min <= max pairs, path id ==
  body id) cannot be written in JSON Schema: their descriptions say so and the API answers 422 naming
  them.
- **Feedback time** (``event_ts`` of ``FeedbackRequest`` and ``FeedbackBatch``): the API refuses times
  more than ``event_max_future_skew_seconds`` ahead of its clock or older than
  ``member_ttl_seconds``. Those bounds move with the clock, so they are written into each copy of the
  document as it is served (:func:`with_clock`), a day inside the older edge so that a value read from
  the document stays acceptable for a day.
- **Links** (OpenAPI 3.1 ``links``) from a created or listed offer to reading, replacing and retiring
  it, and from a recommend answer to the storefront's offer view, so a stateful fuzzer follows them.

``OPTIONS`` on any routed path answers 204 with ``Allow`` listing every method of every route on that
path (Starlette alone answers 405 with the methods of the first matching route only), and a 405 lists
them all too (:func:`allowed_methods`).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from starlette.routing import BaseRoute, Match, Mount

from features.offers import OFFER_KINDS
from features.taxonomy import Taxonomy
from infra.settings import Settings
from service.admin import IMPORT_PATH
from service.bulk import MAX_ROWS
from service.schemas import IDEMPOTENCY_KEY_PATTERN

#: Kept inside the older edge of the accepted event times: a value taken from the document stays
#: acceptable for this long after it was served.
EVENT_TS_MARGIN_SECONDS = 24 * 3600.0

_OFFER_WRITES = (("/v1/admin/offers", "post"), ("/v1/admin/offers/{offer_id}", "put"))

_RELATIONAL = (
    "Rules between fields, checked by the API (422 naming them) because JSON Schema cannot compare two "
    "values: campaign_start_ts and campaign_end_ts go together and the end is after the start; "
    "eligibility.valid_to_ts is after valid_from_ts; each max_* is at least its min_*; in PUT the body's "
    "offer_id is the path's."
)


def document(base: dict[str, Any], taxonomy: Taxonomy) -> dict[str, Any]:
    """The generated document completed with the taxonomy's offer variants, the import body and the
    links (built once)."""
    spec = copy.deepcopy(base)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    _offer_variants(spec, schemas, taxonomy)
    _import_body(spec)
    _idempotency_header(spec)
    _links(spec)
    return spec


def _idempotency_header(spec: dict[str, Any]) -> None:
    """The ``Idempotency-Key`` header's alphabet (checked in the route: a pattern in FastAPI's header
    declaration hung in-process app shutdown, see service/api.py)."""
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param.get("in") == "header" and param.get("name", "").lower() == "idempotency-key":
                    param["schema"] = {
                        "anyOf": [{"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN}, {"type": "null"}],
                        "title": "Idempotency-Key",
                        "description": param.get("description", ""),
                    }


def _import_body(spec: dict[str, Any]) -> None:
    """The import route reads its body itself (CSV or JSON): document both, with what makes a file
    readable as a whole; each row's problems are listed in the 200 report, not refused."""
    op = spec.get("paths", {}).get(IMPORT_PATH, {}).get("post")
    if op is None:
        return
    op["requestBody"] = {
        "required": True,
        "description": (
            "The offers, one per row (CSV with a header row naming the columns, dotted for nested fields) "
            f'or a JSON list of offers (or {{"offers": [...]}}), at most {MAX_ROWS} rows. The format '
            "comes from the ``format`` parameter, else the content type, else the first byte. A file that "
            "cannot be read as a whole is a 422; rows that do not validate are listed in the report."
        ),
        "content": {
            "text/csv": {
                "schema": {
                    "type": "string",
                    # A non-empty first line (the header) and no carriage return (a bare one is a 422).
                    # No maxLength: the size bound is the body limit (413, BENEFITS_MAX_IMPORT_BYTES),
                    # the row bound (MAX_ROWS) is in the description.
                    "pattern": "^[^\\r\\n\\ufeff][^\\r]*$",
                }
            },
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"type": "array", "maxItems": MAX_ROWS, "items": {}},
                        {
                            "type": "object",
                            "required": ["offers"],
                            "properties": {"offers": {"type": "array", "maxItems": MAX_ROWS, "items": {}}},
                        },
                    ]
                }
            },
        },
    }


def with_clock(spec: dict[str, Any], settings: Settings, now: float | None = None) -> dict[str, Any]:
    """A copy of ``spec`` with the event-time bounds the API enforces at ``now`` (default: the clock)."""
    now = time.time() if now is None else now
    lo = now - settings.member_ttl_seconds + EVENT_TS_MARGIN_SECONDS
    hi = now + settings.event_max_future_skew_seconds
    out = dict(spec)
    schemas = dict(out["components"]["schemas"])
    out["components"] = {**out["components"], "schemas": schemas}
    for name in ("FeedbackRequest", "FeedbackBatch"):
        if name not in schemas or "event_ts" not in schemas[name].get("properties", {}):
            continue
        model = copy.deepcopy(schemas[name])
        model["properties"]["event_ts"] = {
            "anyOf": [{"type": "number", "minimum": round(lo, 3), "maximum": round(hi, 3)}, {"type": "null"}],
            "title": "Event Ts",
            "description": (
                "When it happened (Unix seconds, UTC); the server's clock when omitted. Accepted from "
                f"now - member_ttl_seconds ({settings.member_ttl_seconds} s) to now + "
                f"event_max_future_skew_seconds ({settings.event_max_future_skew_seconds} s); the bounds "
                "here were computed when this document was served (the older one a day inside), "
                "outside them the answer is a 422 naming event_ts."
            ),
        }
        schemas[name] = model
    return out


def _offer_variants(spec: dict[str, Any], schemas: dict[str, Any], taxonomy: Taxonomy) -> None:
    base = schemas.get("Offer")
    if base is None:
        return
    variants: list[dict[str, Any]] = []
    mapping: dict[str, str] = {}
    for kind in OFFER_KINDS:
        subtypes = list(taxonomy.subtypes.get(kind, []))
        if not subtypes:
            continue  # the taxonomy declares no subtype for this kind: no such offer can be created
        name = f"{kind.capitalize()}OfferInput"
        variant = copy.deepcopy(base)
        variant["title"] = name
        props = variant["properties"]
        props["kind"] = {"type": "string", "const": kind, "title": "Kind"}
        props["subtype"] = {"type": "string", "enum": subtypes, "title": "Subtype"}
        props["category"] = {
            "anyOf": [{"type": "string", "enum": list(taxonomy.categories)}, {"type": "null"}],
            "title": "Category",
        }
        if taxonomy.tags:
            props["tags"] = {**props["tags"], "items": {"type": "string", "enum": list(taxonomy.tags)}}
        # A budget is drawn by the cost of each claim: a budgeted offer needs a positive cost.
        variant["if"] = {"properties": {"budget": {"type": "number"}}, "required": ["budget"]}
        variant["then"] = {
            "properties": {"cost": {"type": "number", "exclusiveMinimum": 0}},
            "required": ["cost"],
        }
        variant["description"] = f"An offer of kind {kind}. {_RELATIONAL}"
        schemas[name] = variant
        ref = f"#/components/schemas/{name}"
        variants.append({"$ref": ref})
        mapping[kind] = ref
    schemas["OfferInput"] = {
        "title": "OfferInput",
        "description": (
            "An offer as the admin API accepts it: its subtype one of its kind's, its category and tags "
            "the taxonomy's (features/taxonomy.py; this document is built from the taxonomy the service "
            "loaded)."
        ),
        "oneOf": variants,
        "discriminator": {"propertyName": "kind", "mapping": mapping},
    }
    for path, method in _OFFER_WRITES:
        op = spec.get("paths", {}).get(path, {}).get(method)
        if op is None:
            continue
        content = op.get("requestBody", {}).get("content", {}).get("application/json")
        if content is not None:
            content["schema"] = {"$ref": "#/components/schemas/OfferInput"}


def _operation_id(spec: dict[str, Any], path: str, method: str) -> str | None:
    op = spec.get("paths", {}).get(path, {}).get(method)
    return None if op is None else op.get("operationId")


def _links(spec: dict[str, Any]) -> None:
    by_id = "/v1/admin/offers/{offer_id}"
    targets = {m: _operation_id(spec, by_id, m) for m in ("get", "put", "delete")}
    names = {"get": "GetOffer", "put": "ReplaceOffer", "delete": "RetireOffer"}

    def add(path: str, method: str, status: str, expr: str, which: dict[str, str | None]) -> None:
        op = spec.get("paths", {}).get(path, {}).get(method)
        if op is None or status not in op.get("responses", {}):
            return
        links = op["responses"][status].setdefault("links", {})
        for m, op_id in which.items():
            if op_id is not None:
                links[names.get(m, m)] = {"operationId": op_id, "parameters": {"offer_id": expr}}

    add("/v1/admin/offers", "post", "201", "$response.body#/offer/offer_id", targets)
    add(by_id, "put", "200", "$response.body#/offer/offer_id", targets)
    add(by_id, "get", "200", "$response.body#/offer_id", {"put": targets["put"], "delete": targets["delete"]})
    add("/v1/admin/offers", "get", "200", "$response.body#/offers/0/offer_id", targets)
    public = _operation_id(spec, "/v1/offers/{offer_id}", "get")
    names["public"] = "GetPublicOffer"
    add("/v1/recommend", "post", "200", "$response.body#/offers/0/offer_id", {"public": public})


# -- OPTIONS and 405 ---------------------------------------------------------------------------------------


def _flat(routes: list[BaseRoute]) -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
        if inner is not None:
            out.extend(_flat(inner.routes))
        elif not isinstance(route, Mount):
            out.append(route)
    return out


def _templates(routes: list[BaseRoute], scope: dict[str, Any]) -> dict[str, set[str]]:
    """Path template -> methods of every route whose path matches the scope's path."""
    out: dict[str, set[str]] = {}
    probe = {**scope, "method": "GET"}
    for route in _flat(routes):
        route_methods = getattr(route, "methods", None)
        if not route_methods:
            continue
        match, _ = route.matches(probe)
        if match in (Match.FULL, Match.PARTIAL):
            out.setdefault(getattr(route, "path", ""), set()).update(route_methods)
    return out


def allowed_methods(routes: list[BaseRoute], scope: dict[str, Any]) -> list[str]:
    """The methods of the scope's path, as the OpenAPI document has it: of the route paths that match,
    the most specific one (a literal path such as ``/v1/admin/offers/export`` before the template
    ``/v1/admin/offers/{offer_id}``), every route on it, with OPTIONS; sorted. Empty when none matches."""
    found = _templates(routes, scope)
    if not found:
        return []
    fewest = min(t.count("{") for t in found)
    methods = set().union(*(m for t, m in found.items() if t.count("{") == fewest))
    methods.add("OPTIONS")
    return sorted(methods)


class MethodGuard:
    """Pure ASGI middleware: a literal path that a template also matches (``/v1/admin/offers/export``
    and ``/v1/admin/offers/{offer_id}``) answers only its own methods. Starlette would send ``PUT
    /v1/admin/offers/export`` to the template's route (offer id "export"), which the document does not
    say; here it is a 405 listing the literal path's methods (OPTIONS: 204 with them)."""

    def __init__(self, app: Any, routes: Any) -> None:
        self.app = app
        self.routes = routes  # callable: the app's routes (read once, at the first request)
        self._guarded: dict[str, list[str]] | None = None

    def _guard(self) -> dict[str, list[str]]:
        if self._guarded is None:
            routes = self.routes()
            paths = (getattr(r, "path", "{") for r in _flat(routes) if getattr(r, "methods", None))
            literal = {p for p in paths if "{" not in p}
            guarded = {}
            for path in literal:
                found = _templates(routes, {"type": "http", "path": path, "root_path": "", "method": "GET"})
                if any("{" in t for t in found):
                    guarded[path] = allowed_methods(routes, {"type": "http", "path": path, "root_path": ""})
            self._guarded = guarded
        return self._guarded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            allow = self._guard().get(scope["path"])
            if allow is not None and scope["method"] not in allow:
                await _method_answer(send, scope["method"], allow)
                return
            if allow is not None and scope["method"] == "OPTIONS":
                await _method_answer(send, "OPTIONS", allow)
                return
        await self.app(scope, receive, send)


async def _method_answer(send: Any, method: str, allow: list[str]) -> None:
    headers = [(b"allow", ", ".join(allow).encode())]
    if method == "OPTIONS":
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b'{"error":"method_not_allowed","message":"Method Not Allowed"}'
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""Security: every route of the app is guarded by exactly one scope or is on the public list (derived
from ``app.routes``, so a new route cannot escape), then the whole key matrix, logs, body limits and
erasure against real processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from harness import reliability as rel
from harness.embedded import Service
from service.app import create_app
from service.deps import require_admin, require_recommend_scope, require_storefront
from tests.service.conftest import ADMIN, SF, make_settings, running

#: Recommend takes storefront keys (and support/admin keys for explain only: service.auth.check_explain).
SCOPE_DEPS = {require_storefront: "storefront", require_admin: "admin", require_recommend_scope: "storefront"}


def _scopes(route: APIRoute) -> set[str]:
    found: set[str] = set()
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        if d.call in SCOPE_DEPS:
            found.add(SCOPE_DEPS[d.call])  # type: ignore[index]
        stack.extend(d.dependencies)
    return found


def _flat(routes: Any) -> list[Any]:
    """Every route, with included routers opened (FastAPI 0.165 keeps them as ``_IncludedRouter``
    wrappers around the original router; none of ours adds a prefix)."""
    out: list[Any] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            assert not getattr(inner, "prefix", ""), "a router prefix would change the paths below"
            out.extend(_flat(inner.routes))
        else:
            out.append(route)
    return out


def _app_routes(tmp_path: Path) -> list[tuple[str, str, str]]:
    app = create_app(make_settings(None, tmp_path, "x"))
    out: list[tuple[str, str, str]] = []
    for route in _flat(app.routes):
        if not isinstance(route, APIRoute):
            path = getattr(route, "path", "")
            assert path in rel.PUBLIC_PATHS, f"non-API route {path} is not on the public list"
            continue
        scopes = _scopes(route)
        assert len(scopes) <= 1, f"{route.path} has several scopes {scopes}"
        scope = scopes.pop() if scopes else "public"
        if scope == "public":
            assert route.path in rel.PUBLIC_PATHS, f"{route.path} has no API key dependency"
        out.extend((m, route.path, scope) for m in sorted(route.methods or ()))
    return out


def test_every_route_has_a_scope_or_is_public(tmp_path: Path) -> None:
    routes = _app_routes(tmp_path)
    assert {p for _, p, s in routes if s == "admin"} >= {"/v1/admin/offers", "/v1/members/{member_id}"}
    assert {p for _, p, s in routes if s == "storefront"} == {
        "/v1/recommend",
        "/v1/feedback",
        "/v1/feedback/batch",
        "/v1/offers/{offer_id}",
    }


@pytest.mark.anyio
@pytest.mark.integration
async def test_route_key_matrix_over_every_app_route(
    redis_server: Service, tmp_path: Path, unique: str
) -> None:
    """Every APIRoute x {no key, wrong key, storefront, admin}: 401 / 401 / 403 for the other scope /
    allowed for its own, never a 5xx; in process, so the route list is ``app.routes`` itself."""
    rel.build_registry(tmp_path / "registry")
    settings = make_settings(redis_server.url, tmp_path / "registry", unique)
    app = create_app(settings)
    keys = {"none": {}, "wrong": {"X-API-Key": "wrong-key-000000000"}, "storefront": SF, "admin": ADMIN}
    async with running(app) as c:
        failures = []
        n = 0
        for route in _flat(app.routes):
            if not isinstance(route, APIRoute):
                continue
            scopes = _scopes(route)
            scope = scopes.pop() if scopes else "public"
            url = route.path.replace("{", "").replace("}", "")
            for method in sorted(route.methods or ()):
                for key_name, headers in keys.items():
                    n += 1
                    body: dict[str, Any] | None = {} if method in ("POST", "PUT") else None
                    r: httpx.Response = await c.request(method, url, headers=headers, json=body)
                    if scope == "public":
                        ok = r.status_code < 500 or (route.path == "/readyz" and r.status_code == 503)
                    elif key_name in ("none", "wrong"):
                        ok = r.status_code == 401
                    elif key_name != scope:
                        ok = r.status_code == 403
                    else:
                        # No broker in this app: erasure answers the documented 503 "unavailable".
                        down = r.status_code == 503 and r.json().get("error") == "unavailable"
                        ok = r.status_code not in (401, 403) and (r.status_code < 500 or down)
                    if not ok:
                        failures.append((method, route.path, key_name, r.status_code))
    assert n >= 4 * 13
    assert not failures, failures


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.integration
@pytest.mark.slow
def test_logs_body_limits_and_erasure_against_real_processes() -> None:
    """No key, salt or raw member id in any API or worker log line (at DEBUG); oversized bodies 413
    (declared and chunked); erasure leaves no key of the member, also with events not yet folded."""
    o = rel.security_checks()
    assert o.behaviour_passed, [k for k, ok in o.checks.items() if not ok]

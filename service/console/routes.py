"""Console pages. Thin: each route renders a template; the page's script reads and writes through the
admin JSON API (``/v1/admin/...``) with the operator's admin key, so the console adds no second write
path and holds no data of its own.

Authentication: the login page checks the admin key against the API and keeps it in the tab's
``sessionStorage`` (gone when the tab closes); every fetch sends it as ``X-API-Key``. The pages
themselves carry no data and no secret, so they are served without a key. No cookie is set, so there is
no ambient credential for a cross-site request to ride on (no CSRF surface). The price of a key in
``sessionStorage`` is that script injection could read it: every page is sent with a Content-Security-
Policy that allows only this origin's own script files (no inline script, no CDN), and the scripts
write data into the page with ``textContent`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from features.events import PAGE_TYPES
from features.offers import CHANNELS, OFFER_KINDS
from features.projection import DEVICES
from features.taxonomy import DEMO_TAXONOMY

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=_HERE / "templates")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: (path, template, nav label) of every page behind the login.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("catalogue", "catalogue.html", "Catalogue"),
    ("campaigns", "campaigns.html", "Campaigns"),
    ("models", "models.html", "Models"),
    ("health", "health.html", "Health"),
    ("member", "member.html", "Member"),
)

# No router prefix: full paths, so route listings (the security tests) see the paths as served.
router = APIRouter(include_in_schema=False)


def static_files() -> StaticFiles:
    return StaticFiles(directory=_HERE / "static")


def _vocab(request: Request) -> dict[str, Any]:
    # The operator's taxonomy when the app has started (the demo shop's otherwise).
    res = getattr(request.app.state, "resources", None)
    taxonomy = res.catalog.taxonomy if res is not None else DEMO_TAXONOMY
    return {
        "kinds": OFFER_KINDS,
        "subtypes": taxonomy.subtypes,
        "categories": taxonomy.categories,
        "page_types": PAGE_TYPES,
        "devices": DEVICES,
        "channels": CHANNELS,
    }


def _render(request: Request, template: str, page: str) -> Response:
    return templates.TemplateResponse(
        request,
        template,
        {"page": page, "pages": PAGES, **_vocab(request)},
        headers=_HEADERS,
    )


@router.get("/console", response_class=RedirectResponse)
async def index() -> RedirectResponse:
    return RedirectResponse("/console/catalogue", status_code=307)


@router.get("/console/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    return _render(request, "login.html", "login")


def _page_route(name: str, template: str) -> None:
    async def show(request: Request) -> Response:
        return _render(request, template, name)

    show.__name__ = f"console_{name}"
    router.add_api_route(f"/console/{name}", show, methods=["GET"], response_class=HTMLResponse)


for _name, _template, _ in PAGES:
    _page_route(_name, _template)

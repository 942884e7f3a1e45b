"""Admin routes for operations tooling (the console calls these and nothing else; so do scripts):
bulk import / export of the catalogue, live campaign state, model rollback, this process's health
summary, and a member's state with a preview of their slate.

Thin: each route validates, calls the domain module (``service.bulk``, ``service.insight``), returns.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from infra.registry import RegistryError
from service import api, bulk, insight
from service.deps import ResourcesDep, require_admin
from service.errors import Conflict, Invalid, NotFound
from service.recommend import RecommendQuery
from service.schemas import MemberId, RecommendContext

IMPORT_PATH = "/v1/admin/offers/import"

router = APIRouter(dependencies=[Depends(require_admin)], responses=api._errors, tags=["admin"])


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post(IMPORT_PATH)
async def import_offers(
    request: Request,
    res: ResourcesDep,
    dry_run: Annotated[bool, Query(description="Validate and report; write nothing.")] = True,
    format: Annotated[
        Literal["csv", "json"] | None, Query(description="File format; guessed from the body when unset.")
    ] = None,
) -> Response:
    """Bulk create / replace offers from a CSV or JSON body. Answers a validation report: refused rows
    with the reason for each, and which offers would be (or were) created, updated or left unchanged.
    ``dry_run`` defaults to true: nothing is written until the caller asks for it. Applying writes the
    valid rows only, with one catalogue version bump; re-importing the same file changes nothing."""
    data = await request.body()
    fmt = format or bulk.detect_format(request.headers.get("content-type", ""), data)
    try:
        report, applied = await bulk.run_import(
            res.catalog_store, data, fmt, dry_run=dry_run, taxonomy=res.catalog.taxonomy
        )
    except bulk.ImportFormatError as exc:
        raise Invalid(f"import file refused: {exc}") from None
    if applied:
        await res.catalog.refresh()  # this replica at once; the others within a poll interval
    return _json(report)


@router.get(
    "/v1/admin/offers/export",
    response_class=Response,
    responses={
        200: {
            "description": "The catalogue as CSV (format=csv) or a JSON list of offers (format=json)",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array"}},
            },
        }
    },
)
async def export_offers(res: ResourcesDep, format: Literal["csv", "json"] = "csv") -> Response:
    """The whole catalogue in the import format (an export re-imports unchanged)."""
    _, offers = await res.catalog_store.read_all()
    if format == "json":
        return Response(bulk.to_json(offers), media_type="application/json")
    return Response(bulk.to_csv(offers), media_type="text/csv")


@router.get("/v1/admin/campaigns")
async def campaigns(res: ResourcesDep) -> Response:
    """Live state per offer in this replica's catalogue snapshot: inventory left, budget spent, pacing,
    claims per minute, claim refusals by reason (counted by this process)."""
    return _json(
        insight.campaigns(
            res.catalog.current, res.metrics, res.catalog.stats, res.recommender.policy.objective
        )
    )


@router.post("/v1/admin/models/rollback")
async def rollback_model(res: ResourcesDep) -> dict[str, object]:
    """Promote the previously promoted version, with the same checks as a promote. 409 when the registry
    has no previous version to roll back to (a state of the registry, not a bad request)."""
    pointer = res.registry.pointer()
    previous = pointer.get("previous") if pointer else None
    if not previous:
        raise Conflict("no previous model version to roll back to")
    try:
        res.registry.version_dir(str(previous))
    except RegistryError:
        raise Conflict(f"previous version {previous!r} is not a valid registry version") from None
    return await api.promote_model(str(previous), res)


@router.get("/v1/admin/health")
async def health(res: ResourcesDep) -> Response:
    """This process's own metrics, summarised: answers by mode, degraded share by cause, stage latency
    percentiles, feedback outcomes, edge refusals, model and catalogue in use."""
    return _json(insight.health(res.metrics, res.models.version, res.catalog.current))


@router.get("/v1/admin/members/{member_id}")
async def member_state(member_id: MemberId, res: ResourcesDep) -> Response:
    """A member as the ranker sees them: attributes, the member-side features, per-offer history and
    caps. 404 when nothing is stored for the member (they would be ranked cold-start)."""
    stored = await res.recommender.store.get_member(member_id)
    if stored is None:
        raise NotFound(f"no state stored for member {member_id!r} (they are ranked as cold start)")
    return _json(insight.member(stored.state, res.catalog.current))


@router.post("/v1/admin/members/{member_id}/preview")
async def member_preview(
    member_id: MemberId,
    res: ResourcesDep,
    context: RecommendContext | None = None,
    limit: Annotated[int, Query(ge=1, le=50, description="Offers to show (1-50).")] = 10,
) -> Response:
    """The slate this member would get in ``context``, with reasons and every excluded offer with why.
    The same recommender as ``POST /v1/recommend``; a preview is not counted in the recommend metrics
    and publishes nothing."""
    c = context or RecommendContext()
    query = RecommendQuery(
        member_id=member_id,
        context=res.catalog.context_vocabulary.normalise(c.page_type, c.category, c.device, c.channel)[0],
        limit=limit,
        explain=True,
    )
    return _json(await res.recommender.recommend(query, account=False))

"""Admin routes of the experiment: declare or change it, read it with its per-arm counts, end it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.deps import RecommenderDep, require_admin
from service.errors import NotFound, Unavailable
from service.experiment_runtime import ExperimentRuntime
from service.experiments import Experiment
from service.schemas import ErrorResponse

router = APIRouter(
    dependencies=[Depends(require_admin)],
    responses={s: {"model": ErrorResponse} for s in (401, 403, 404, 409, 422, 503)},
    tags=["admin"],
)


def _runtime(rec: RecommenderDep) -> ExperimentRuntime:
    if rec.experiments is None:
        raise Unavailable("experiments are not running on this replica")
    return rec.experiments


RuntimeDep = Annotated[ExperimentRuntime, Depends(_runtime)]


@router.get("/v1/admin/experiment")
async def get_experiment(xp: RuntimeDep) -> dict[str, object]:
    """The stored experiment, its bucket allocation and the per-arm counts of every replica."""
    stored = await xp.current()
    if stored is None:
        raise NotFound("no experiment is declared")
    counts = await xp.store.counts(stored.experiment.experiment_id)
    return {**stored.model_dump(mode="json"), "counts": counts, "this_replica": xp.status()}


@router.put("/v1/admin/experiment")
async def put_experiment(
    experiment: Experiment,
    xp: RuntimeDep,
    reassign: Annotated[
        bool, Query(description="re-draw every arm (moves members); needed to shrink or drop an arm")
    ] = False,
) -> dict[str, object]:
    """Declare or change the experiment. Growing an arm only adds members who were in no arm; shrinking
    or removing one is a 409 unless ``reassign=true``. Every replica follows within a poll interval."""
    stored = await xp.put(experiment, reassign=reassign)
    return stored.model_dump(mode="json")


@router.delete("/v1/admin/experiment")
async def end_experiment(xp: RuntimeDep) -> dict[str, object]:
    """End the experiment: every member gets the promoted model again (counts stay in the store)."""
    if not await xp.store.delete():
        raise NotFound("no experiment is declared")
    await xp.refresh()
    return {"status": "ended"}

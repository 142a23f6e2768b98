"""`/workers`: the machines seen asking for work or holding a job, per container group."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from kelpie.api.convert import worker_body
from kelpie.api.deps import CurrentPrincipal, StoreDep, scope
from kelpie.api.errors import error_responses
from kelpie.schemas import NO_NUL, WorkerList
from kelpie.store.models import WORKER_RETENTION_SECONDS

router = APIRouter(tags=["workers"])

DEFAULT_SEEN_WITHIN_SECONDS = 24 * 3600
# Machines not seen for longer are forgotten (the `workers` retention upkeep).
MAX_SEEN_WITHIN_SECONDS = int(WORKER_RETENTION_SECONDS)


@router.get(
    "/workers",
    response_model=WorkerList,
    operation_id="list_workers",
    responses=error_responses(400, 401, 403),
    summary="Machines seen (polling for work or holding a job), by container group",
)
async def list_workers(
    principal: CurrentPrincipal,
    store: StoreDep,
    container_group_id: Annotated[
        str | None, Query(min_length=1, max_length=255, pattern=NO_NUL)
    ] = None,
    seen_within: Annotated[
        int, Query(ge=1, le=MAX_SEEN_WITHIN_SECONDS, description="seconds")
    ] = DEFAULT_SEEN_WITHIN_SECONDS,
) -> JSONResponse:
    """The machines that used the caller's keys (an admin: anyone's) within `seen_within`
    seconds, ordered by group and machine: when each last polled for work, the job it holds,
    how many of the user's jobs it is blocked from, and the worker's version."""
    workers = await store.list_workers(scope(principal), container_group_id, seen_within)
    body = [worker_body(worker) for worker in workers]
    return JSONResponse({"_count": len(body), "workers": body})

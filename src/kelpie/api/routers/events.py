"""`/jobs/{id}/events`: what happened to a job, in order (claims, failures, hand-backs,
checkpoints from the API; downloads, restores and warnings from the holding worker)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from kelpie.api.convert import event_body
from kelpie.api.deps import CurrentPrincipal, JobId, StoreDep, scope
from kelpie.api.errors import ApiError, error_responses, not_found
from kelpie.schemas import JobEventIn, JobEventOut, Message
from kelpie.store.models import HeldOutcome

router = APIRouter(prefix="/jobs", tags=["events"])


@router.get(
    "/{job_id}/events",
    response_model=list[JobEventOut],
    operation_id="list_job_events",
    responses=error_responses(400, 401, 403, 404),
    summary="The job's events, oldest first (`after` = the last id seen)",
)
async def list_events(
    job_id: JobId,
    principal: CurrentPrincipal,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> JSONResponse:
    events = await store.list_job_events(str(job_id), scope(principal), after, limit)
    if events is None:
        raise not_found("Job", job_id)
    return JSONResponse([event_body(event) for event in events])


@router.post(
    "/{job_id}/events",
    status_code=202,
    response_model=Message,
    operation_id="add_job_event",
    responses=error_responses(400, 401, 403, 404, 409),
    summary="The holding worker reports an event of its attempt",
)
async def add_event(
    job_id: JobId, event: JobEventIn, principal: CurrentPrincipal, store: StoreDep
) -> JSONResponse:
    outcome = await store.add_worker_event(
        str(job_id),
        event.machine_id,
        scope(principal),
        event.attempt_id,
        event.kind,
        event.message,
        event.data,
    )
    if outcome is HeldOutcome.NOT_FOUND:
        raise not_found("Job", job_id)
    if outcome is HeldOutcome.NOT_HOLDER:
        raise ApiError(409, f"attempt {event.attempt_id} does not hold the job")
    return JSONResponse({"message": "Event recorded"}, status_code=202)

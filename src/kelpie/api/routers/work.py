"""The worker protocol (PROTOCOL §4): claim, heartbeat, and the holder's reports."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from kelpie.api.convert import claimed_job_body, retry_meaning
from kelpie.api.deps import CurrentPrincipal, JobId, app_state, scope
from kelpie.api.errors import ApiError, error_responses, not_found
from kelpie.api.state import AppState
from kelpie.schemas import (
    NO_NUL,
    WORKER_VERSION_HEADER,
    FailureReport,
    HeartbeatOut,
    HeartbeatReport,
    JobOut,
    Message,
    WorkerReport,
)
from kelpie.store.models import HeldOutcome, Principal, WorkerSighting

log = logging.getLogger("kelpie.api.work")
router = APIRouter(tags=["worker"])

# A long-polling call re-checks the queue at least this often, to catch leases that stall
# and any job the store's cross-process channel did not announce.
RECHECK_SECONDS = 0.5
MAX_WAIT_SECONDS = 30
MAX_VERSION_LENGTH = 64

_ERRORS = error_responses(400, 401, 403, 404, 409)
_NOT_HOLDER = "this machine does not hold the job (its lease was lost, or the job ended)"


@router.get(
    "/work",
    response_model=list[JobOut],
    operation_id="claim_work",
    responses=_ERRORS,
    summary="Claim the next job for a machine (optionally long-polling)",
)
async def claim_work(
    request: Request,
    principal: CurrentPrincipal,
    machine_id: Annotated[str, Query(min_length=1, max_length=255, pattern=NO_NUL)],
    container_group_id: Annotated[str, Query(min_length=1, max_length=255, pattern=NO_NUL)],
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
) -> JSONResponse:
    state = app_state(request)
    version = request.headers.get(WORKER_VERSION_HEADER)
    await _note_seen(state, principal, container_group_id, machine_id, polled=True, version=version)
    deadline = time.monotonic() + wait
    while True:
        # After an outage the leases of running jobs are extended before anything is handed
        # out, so a holder that beats again in time keeps its job.
        await state.liveness.ensure_fresh()
        job = await state.store.claim_job(machine_id, container_group_id, scope(principal))
        if job is not None:
            if job.webhook:
                state.webhooks_due.set()
            return JSONResponse([claimed_job_body(job)])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return JSONResponse([])
        await state.notifier.wait(container_group_id, min(remaining, RECHECK_SECONDS))
        if await request.is_disconnected():
            # The poller gave up (a worker shutting down drops its long-poll): a job claimed
            # now would reach nobody and sit stalled for two heartbeat intervals.
            return JSONResponse([])


@router.post(
    "/jobs/{job_id}/heartbeat",
    response_model=HeartbeatOut,
    operation_id="heartbeat_job",
    responses=_ERRORS,
    summary="The holder is alive; answers the status the worker must act on",
)
async def heartbeat(
    job_id: JobId, report: HeartbeatReport, principal: CurrentPrincipal, request: Request
) -> JSONResponse:
    state = app_state(request)
    status = await state.store.heartbeat(
        str(job_id), report.machine_id, scope(principal), report.attempt_id, report.progress
    )
    if status == "running":
        await _note_seen(state, principal, report.container_group_id, report.machine_id)
    if status is None:
        raise not_found("Job", job_id)
    if report.attempt_id is not None and status != "running":
        raise ApiError(409, _not_holder_because(status, report.attempt_id))
    return JSONResponse({"status": status})


@router.post(
    "/jobs/{job_id}/completed",
    response_model=Message,
    operation_id="report_job_completed",
    responses=_ERRORS,
    summary="The holder's command exited 0 and its outputs are uploaded",
)
async def report_completed(
    job_id: JobId, report: WorkerReport, principal: CurrentPrincipal, request: Request
) -> JSONResponse:
    state = app_state(request)
    outcome = await state.store.complete_if_held(
        str(job_id), report.machine_id, scope(principal), report.attempt_id
    )
    if ignored := _unless_done(job_id, outcome, report):
        return ignored
    state.webhooks_due.set()
    return JSONResponse({"message": "Job completed"})


@router.post(
    "/jobs/{job_id}/failed",
    status_code=202,
    response_model=Message,
    operation_id="report_job_failed",
    responses=_ERRORS,
    summary="The holder's command failed",
)
async def report_failed(
    job_id: JobId, report: FailureReport, principal: CurrentPrincipal, request: Request
) -> JSONResponse:
    state = app_state(request)
    meaning = await _retry_meaning(state, str(job_id), principal, report.exit_code)
    if meaning == "interruption":
        return await _interrupted_by_exit_code(str(job_id), report, principal, state)
    result = await state.store.fail_if_held(
        str(job_id),
        report.machine_id,
        scope(principal),
        report.exit_code,
        report.error,
        report.attempt_id,
        fail_now=meaning == "fail",
    )
    if ignored := _unless_done(job_id, result.outcome, report, status_code=202):
        return ignored
    if result.job is not None and result.job.status == "failed":
        state.webhooks_due.set()
    if result.job is not None and result.machine_blocked_jobs >= state.settings.max_blocked_jobs:
        state.reallocator.request(result.job.user_id, report.machine_id)
    if result.job is not None and result.job.status == "pending":
        state.notifier.notify(result.job.container_group_id)
    return JSONResponse({"message": "Job failure recorded"}, status_code=202)


@router.post(
    "/jobs/{job_id}/interrupted",
    status_code=202,
    response_model=Message,
    operation_id="report_job_interrupted",
    responses=_ERRORS,
    summary="The holder is going away; the job is pending again at once",
)
async def report_interrupted(
    job_id: JobId, report: WorkerReport, principal: CurrentPrincipal, request: Request
) -> JSONResponse:
    state = app_state(request)
    outcome = await state.store.interrupt_if_held(
        str(job_id), report.machine_id, scope(principal), report.attempt_id
    )
    if ignored := _unless_done(job_id, outcome, report, status_code=202):
        return ignored
    state.webhooks_due.set()  # the interruption that reaches max_interruptions fails the job
    state.notifier.notify(report.container_group_id)
    return JSONResponse({"message": "Job interrupted"}, status_code=202)


async def _note_seen(
    state: AppState,
    principal: Principal,
    container_group_id: str,
    machine_id: str,
    *,
    polled: bool = False,
    version: str | None = None,
) -> None:
    """Records the machine as seen (for `GET /workers` and pending reasons), at most every
    few seconds per machine."""
    sighting = WorkerSighting(
        user_id=principal.user.id,
        any_user=principal.user.is_admin,
        container_group_id=container_group_id,
        machine_id=machine_id,
        polled=polled,
        version=None if version is None else version[:MAX_VERSION_LENGTH],
    )
    if state.sightings.due(sighting):
        await state.store.note_workers_seen([sighting])


async def _retry_meaning(
    state: AppState, job_id: str, principal: Principal, exit_code: int | None
) -> Literal["fail", "interruption"] | None:
    """What the job's retry rules make of a failure with this exit code. The rules never
    change after submission, so reading them before the fenced write is safe."""
    if exit_code is None:
        return None
    job = await state.store.get_job(job_id, scope(principal))
    return None if job is None else retry_meaning(job, exit_code)


async def _interrupted_by_exit_code(
    job_id: str, report: FailureReport, principal: Principal, state: AppState
) -> JSONResponse:
    """A failure report whose exit code the job counts as an interruption (it handled its
    own preemption): handed back like an interruption, no failure counted."""
    outcome = await state.store.interrupt_if_held(
        job_id,
        report.machine_id,
        scope(principal),
        report.attempt_id,
        exit_code=report.exit_code,
    )
    if ignored := _unless_done(job_id, outcome, report, status_code=202):
        return ignored
    state.webhooks_due.set()
    state.notifier.notify(report.container_group_id)
    return JSONResponse(
        {"message": "Job failure recorded as an interruption (retry.interruption_exit_codes)"},
        status_code=202,
    )


def _unless_done(
    job_id: uuid.UUID | str, outcome: HeldOutcome, report: WorkerReport, status_code: int = 200
) -> JSONResponse | None:
    """None when the report took effect. A caller that does not hold the job gets 409 when it
    sent its attempt id; without one (the reference worker, which crashes on any error
    answer) it gets a success that says the report was ignored."""
    if outcome is HeldOutcome.NOT_FOUND:
        raise not_found("Job", job_id)
    if outcome is HeldOutcome.NOT_HOLDER:
        if report.attempt_id is not None:
            raise ApiError(409, _NOT_HOLDER)
        return JSONResponse({"message": f"ignored: {_NOT_HOLDER}"}, status_code=status_code)
    return None


def _not_holder_because(status: str, attempt_id: int) -> str:
    if status == "canceled":
        return f"attempt {attempt_id} does not hold the job (canceled, or held by another)"
    return f"attempt {attempt_id} does not hold the job: the job is {status}"

"""`/jobs`: submit, read, list, cancel and purge jobs (PROTOCOL §3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kelpie.api.convert import (
    attempt_body,
    job_body,
    job_goodput_body,
    new_job,
    pending_reason_body,
)
from kelpie.api.deps import AdminPrincipal, CurrentPrincipal, JobId, StoreDep, app_state, scope
from kelpie.api.errors import ApiError, error_responses, not_found
from kelpie.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from kelpie.api.idempotency import REPLAYED_HEADER, IdempotencyKeyHeader, idempotent_request
from kelpie.api.state import AppState
from kelpie.schemas import (
    MAX_BATCH,
    MAX_NAME_LENGTH,
    NO_NUL,
    AttemptOut,
    JobCreate,
    JobGoodputOut,
    JobList,
    JobOut,
    JobStatus,
    Message,
    PurgeOut,
    parse_label_filter,
)
from kelpie.store.models import CancelOutcome, IdempotentRequest, JobQuery, Principal, Submitted
from kelpie.store.protocol import IdempotencyConflict
from kelpie.webhooks.targets import address_policy

router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS = error_responses(400, 401, 403, 404)
GroupFilter = Annotated[str | None, Query(min_length=1, max_length=255, pattern=NO_NUL)]
MAX_LABEL_FILTERS = 16


def _refuse_unreachable_webhooks(
    state: AppState, submissions: Sequence[JobCreate], *, batch: bool
) -> None:
    """A webhook whose host is an address kelpie does not deliver to (the server's
    KELPIE_WEBHOOK_ALLOWED_NETWORKS decides) is a 400 naming the field, like any invalid one."""
    policy = address_policy(state.settings.webhook_allowed_networks)
    for index, submission in enumerate(submissions):
        refusal = submission.webhook and policy.literal_refusal(submission.webhook)
        if refusal:
            where = ("body", index, "webhook") if batch else ("body", "webhook")
            error = {"type": "value_error", "loc": where, "msg": refusal, "input": None}
            raise RequestValidationError([error])


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    operation_id="submit_job",
    responses={**_ERRORS, **error_responses(409)},
    summary="Queue a job",
)
async def submit_job(
    submission: JobCreate,
    principal: CurrentPrincipal,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    state = app_state(request)
    _refuse_unreachable_webhooks(state, [submission], batch=False)
    once = idempotent_request(idempotency_key, "job", [submission])
    submitted = await _submit(state, principal, [submission], once)
    return JSONResponse(
        job_body(submitted.jobs[0]),
        status_code=submitted.status_code,
        headers=_replay_headers(submitted),
    )


@router.post(
    "/batch",
    status_code=202,
    response_model=list[JobOut],
    operation_id="submit_jobs_batch",
    responses={**_ERRORS, **error_responses(409)},
    summary="Queue up to 1000 jobs, all or nothing",
)
async def submit_batch(
    submissions: Annotated[list[JobCreate], Body(min_length=1, max_length=MAX_BATCH)],
    principal: CurrentPrincipal,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    state = app_state(request)
    _refuse_unreachable_webhooks(state, submissions, batch=True)
    once = idempotent_request(idempotency_key, "batch", submissions)
    submitted = await _submit(state, principal, submissions, once)
    return JSONResponse(
        [job_body(job) for job in submitted.jobs],
        status_code=submitted.status_code,
        headers=_replay_headers(submitted),
    )


async def _submit(
    state: AppState,
    principal: Principal,
    submissions: Sequence[JobCreate],
    request: IdempotentRequest | None,
) -> Submitted:
    """Stores the jobs (once per idempotency key) and wakes the long polls of their groups."""
    jobs = [new_job(item, principal) for item in submissions]
    if request is None:
        created = await state.store.create_jobs(principal.user.id, jobs)
        submitted = Submitted(created, replayed=False, status_code=202)
    else:
        try:
            submitted = await state.store.create_jobs_once(principal.user.id, jobs, request)
        except IdempotencyConflict as exc:
            raise ApiError(409, f"{IDEMPOTENCY_HEADER}: {exc}") from exc
    if not submitted.replayed:
        for group in {job.container_group_id for job in submitted.jobs}:
            state.notifier.notify(group)
    return submitted


def _replay_headers(submitted: Submitted) -> dict[str, str]:
    return {REPLAYED_HEADER: "true"} if submitted.replayed else {}


@router.get(
    "", response_model=JobList, operation_id="list_jobs", responses=_ERRORS, summary="List jobs"
)
async def list_jobs(
    principal: CurrentPrincipal,
    store: StoreDep,
    status: JobStatus | None = None,
    container_group_id: Annotated[
        str | None, Query(min_length=1, max_length=255, pattern=NO_NUL)
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    asc: bool = False,
    name: Annotated[
        str | None, Query(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NO_NUL)
    ] = None,
    label: Annotated[list[str] | None, Query(max_length=MAX_LABEL_FILTERS)] = None,
) -> JSONResponse:
    jobs = await store.list_jobs(
        JobQuery(
            user_id=scope(principal),
            status=status,
            container_group_id=container_group_id,
            page=page,
            page_size=page_size,
            ascending=asc,
            name=name,
            labels=_label_filters(label or []),
        )
    )
    return JSONResponse({"_count": len(jobs), "jobs": [job_body(job) for job in jobs]})


def _label_filters(filters: Sequence[str]) -> tuple[tuple[str, str], ...]:
    parsed = []
    for text in filters:
        try:
            parsed.append(parse_label_filter(text))
        except ValueError as exc:
            raise ApiError(400, f"label: {exc}") from exc
    return tuple(parsed)


@router.delete(
    "",
    status_code=204,
    operation_id="delete_all_jobs",
    responses=_ERRORS,
    summary="Remove every job (admin; test resets)",
)
async def delete_all_jobs(principal: AdminPrincipal, store: StoreDep) -> Response:
    await store.delete_all_jobs()
    return Response(status_code=204)


@router.delete(
    "/container-groups/{container_group_id}",
    response_model=PurgeOut,
    operation_id="purge_container_group",
    responses=_ERRORS,
    summary="Delete pending and cancel running jobs of a container group",
)
async def purge_group(
    container_group_id: Annotated[str, Path(min_length=1, max_length=255, pattern=NO_NUL)],
    principal: CurrentPrincipal,
    store: StoreDep,
) -> PurgeOut:
    count = await store.purge_group(principal.user.id, container_group_id)
    return PurgeOut(count=count)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    operation_id="get_job",
    responses=_ERRORS,
    summary="Get a job",
)
async def get_job(job_id: JobId, principal: CurrentPrincipal, store: StoreDep) -> JSONResponse:
    job = await store.get_job(str(job_id), scope(principal))
    if job is None:
        raise not_found("Job", job_id)
    body = job_body(job)
    reason = await store.pending_reason(job)
    if reason is not None:
        body["pending_reason"] = pending_reason_body(reason, job.container_group_id)
    return JSONResponse(body)


@router.delete(
    "/{job_id}",
    status_code=202,
    response_model=Message,
    operation_id="cancel_job",
    responses={**_ERRORS, **error_responses(409)},
    summary="Cancel a job",
)
async def cancel_job(job_id: JobId, principal: CurrentPrincipal, store: StoreDep) -> JSONResponse:
    outcome = await store.cancel_job(str(job_id), scope(principal))
    if outcome is CancelOutcome.NOT_FOUND:
        raise not_found("Job", job_id)
    if outcome is CancelOutcome.ALREADY_ENDED:
        raise ApiError(409, "job has already ended (completed or failed) and cannot be canceled")
    return JSONResponse({"message": "Job canceled"}, status_code=202)


@router.get(
    "/{job_id}/attempts",
    response_model=list[AttemptOut],
    operation_id="list_job_attempts",
    responses=_ERRORS,
    summary="Every time a machine held the job",
)
async def list_attempts(
    job_id: JobId, principal: CurrentPrincipal, store: StoreDep
) -> JSONResponse:
    attempts = await store.list_attempts(str(job_id), scope(principal))
    if attempts is None:
        raise not_found("Job", job_id)
    return JSONResponse([attempt_body(attempt) for attempt in attempts])


@router.get(
    "/{job_id}/goodput",
    response_model=JobGoodputOut,
    operation_id="get_job_goodput",
    responses=_ERRORS,
    summary="Where the job's time went, attempt by attempt, and what interruptions cost",
)
async def job_goodput(job_id: JobId, principal: CurrentPrincipal, store: StoreDep) -> JSONResponse:
    ledger = await store.job_goodput(str(job_id), scope(principal))
    if ledger is None:
        raise not_found("Job", job_id)
    return JSONResponse(job_goodput_body(ledger))

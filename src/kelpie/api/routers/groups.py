"""`/container-groups`: what a caller's jobs look like per container group (the queue), for
the dashboard's group pages: counts by status, machines blocked from its jobs, and the queue
depth, running jobs and interruptions over time; and the group's goodput report (what
interruptions cost, how often to checkpoint). Read-only; scoped like `/jobs`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from kelpie.api.convert import group_goodput_body
from kelpie.api.deps import CurrentPrincipal, StoreDep, scope
from kelpie.api.errors import error_responses, not_found
from kelpie.schemas import (
    NO_NUL,
    AttemptOutcome,
    GroupDetailOut,
    GroupGoodputOut,
    GroupList,
    format_timestamp,
)
from kelpie.store.overview import ActivityBucket, GroupCounts

router = APIRouter(prefix="/container-groups", tags=["container groups"])

GroupPath = Annotated[
    str, Path(min_length=1, max_length=255, pattern=NO_NUL, description="The container group.")
]
MAX_WINDOW_SECONDS = 30 * 24 * 3600
_BUCKET_OUTCOMES: tuple[AttemptOutcome, ...] = (
    "interrupted",
    "lost",
    "failed",
    "completed",
    "canceled",
)


def _counts_body(group: GroupCounts) -> dict[str, Any]:
    return {"container_group_id": group.container_group_id, "jobs": dict(group.jobs)}


def _bucket_body(bucket: ActivityBucket) -> dict[str, Any]:
    return {
        "start": format_timestamp(bucket.start),
        "pending": bucket.pending,
        "running": bucket.running,
        **{outcome: bucket.ended.get(outcome, 0) for outcome in _BUCKET_OUTCOMES},
    }


@router.get(
    "",
    response_model=GroupList,
    operation_id="list_container_groups",
    responses=error_responses(401, 403),
    summary="Container groups the caller has jobs in, with their jobs by status",
)
async def list_groups(principal: CurrentPrincipal, store: StoreDep) -> JSONResponse:
    groups = await store.group_counts(scope(principal))
    return JSONResponse({"_count": len(groups), "groups": [_counts_body(g) for g in groups]})


@router.get(
    "/{container_group_id}",
    response_model=GroupDetailOut,
    operation_id="get_container_group",
    responses=error_responses(400, 401, 403, 404),
    summary="A container group: jobs by status, blocked machines, activity over time",
)
async def get_group(
    container_group_id: GroupPath,
    principal: CurrentPrincipal,
    store: StoreDep,
    window: Annotated[int, Query(ge=60, le=MAX_WINDOW_SECONDS)] = 24 * 3600,
    buckets: Annotated[int, Query(ge=1, le=500)] = 48,
) -> JSONResponse:
    user_id = scope(principal)
    counts = await store.group_counts(user_id, container_group_id)
    if not counts:
        raise not_found("Container group", container_group_id)
    blocked = await store.blocked_machines(user_id, container_group_id)
    bucket_seconds = window / buckets
    since = datetime.now(UTC) - timedelta(seconds=window)
    activity = await store.group_activity(
        user_id, container_group_id, since, bucket_seconds, buckets
    )
    return JSONResponse(
        {
            **_counts_body(counts[0]),
            "blocked_machines": [
                {
                    "machine_id": machine.machine_id,
                    "jobs": machine.jobs,
                    "last_blocked": format_timestamp(machine.last_blocked),
                    "reallocated": machine.reallocated,
                }
                for machine in blocked
            ],
            "activity": {
                "since": format_timestamp(since),
                "bucket_seconds": bucket_seconds,
                "buckets": [_bucket_body(bucket) for bucket in activity],
            },
        }
    )


@router.get(
    "/{container_group_id}/goodput",
    response_model=GroupGoodputOut,
    operation_id="get_container_group_goodput",
    responses=error_responses(400, 401, 403, 404),
    summary="What interruptions cost the group's jobs, and how often to checkpoint",
)
async def get_group_goodput(
    container_group_id: GroupPath,
    principal: CurrentPrincipal,
    store: StoreDep,
    window: Annotated[
        int,
        Query(
            ge=60,
            le=MAX_WINDOW_SECONDS,
            description="Seconds of history: the attempts that started within this long before"
            " now (60 s to 30 days).",
        ),
    ] = 7 * 24 * 3600,
) -> JSONResponse:
    user_id = scope(principal)
    if not await store.group_counts(user_id, container_group_id):
        raise not_found("Container group", container_group_id)
    until = datetime.now(UTC)
    report = await store.group_goodput(
        user_id, container_group_id, until - timedelta(seconds=window), until
    )
    return JSONResponse(group_goodput_body(report))

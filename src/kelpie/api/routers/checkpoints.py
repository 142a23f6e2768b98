"""`/jobs/{id}/checkpoints`: committed checkpoint generations (PROTOCOL §8).

The holding attempt's worker uploads a generation's files under the job's own area of each
checkpoint prefix, `<prefix>.kelpie/<job id>/`, then commits the file list here (a key
anywhere else, another job's area included, is refused); a resume restores exactly the
newest committed generation. kelpie keeps the list (never the contents) and tells the
committing worker which objects no kept generation needs any more.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from kelpie.api.convert import checkpoint_body, checkpoint_targets, manifest_body
from kelpie.api.deps import CurrentPrincipal, JobId, StoreDep, scope
from kelpie.api.errors import ApiError, error_responses, not_found
from kelpie.schemas import (
    CHECKPOINT_AREA,
    CheckpointCommit,
    CheckpointCommitted,
    CheckpointManifestOut,
    CheckpointOut,
)
from kelpie.store.models import CommitOutcome, ManifestEntry

router = APIRouter(prefix="/jobs", tags=["checkpoints"])

Generation = Annotated[int, Path(ge=1, le=2**63 - 1, description="A generation number.")]


@router.post(
    "/{job_id}/checkpoints",
    status_code=201,
    response_model=CheckpointCommitted,
    operation_id="commit_checkpoint",
    responses=error_responses(400, 401, 403, 404, 409),
    summary="Commit a checkpoint generation (the holding attempt's worker)",
)
async def commit_checkpoint(
    job_id: JobId, commit: CheckpointCommit, principal: CurrentPrincipal, store: StoreDep
) -> JSONResponse:
    job = await store.get_job(str(job_id), scope(principal))
    if job is None:
        raise not_found("Job", job_id)
    targets = checkpoint_targets(job)
    for index, item in enumerate(commit.files):
        if item.target >= len(targets):
            raise ApiError(
                400,
                f"files[{index}].target: the job has {len(targets)} checkpoint target(s)",
                index=index,
            )
        area = f"{targets[item.target][1]}{CHECKPOINT_AREA}{job_id}/"
        if not item.key.startswith(area) or ".." in item.key.split("/"):
            raise ApiError(400, f"files[{index}].key: must lie under {area!r}", index=index)
    result = await store.commit_checkpoint(
        str(job_id),
        commit.machine_id,
        scope(principal),
        commit.attempt_id,
        commit.generation,
        [ManifestEntry(f.target, f.path, f.key, f.size, f.sha256) for f in commit.files],
        commit.upload_seconds,
    )
    if result.outcome is CommitOutcome.NOT_FOUND:
        raise not_found("Job", job_id)
    if result.outcome is CommitOutcome.NOT_HOLDER:
        raise ApiError(409, f"attempt {commit.attempt_id} does not hold the job")
    if result.outcome is CommitOutcome.NOT_NEWER:
        raise ApiError(
            409,
            f"generation {commit.generation} is not newer than the newest committed one"
            f" ({result.newest})",
        )
    assert result.checkpoint is not None
    expired = [
        {"bucket": targets[target][0], "key": key}
        for target, key in result.expired
        if target < len(targets)
    ]
    status = 200 if result.outcome is CommitOutcome.REPEATED else 201
    return JSONResponse(
        {"checkpoint": checkpoint_body(result.checkpoint), "expired": expired},
        status_code=status,
    )


@router.get(
    "/{job_id}/checkpoints",
    response_model=list[CheckpointOut],
    operation_id="list_checkpoints",
    responses=error_responses(400, 401, 403, 404),
    summary="Every committed checkpoint generation, oldest first",
)
async def list_checkpoints(
    job_id: JobId, principal: CurrentPrincipal, store: StoreDep
) -> JSONResponse:
    checkpoints = await store.list_checkpoints(str(job_id), scope(principal))
    if checkpoints is None:
        raise not_found("Job", job_id)
    return JSONResponse([checkpoint_body(checkpoint) for checkpoint in checkpoints])


@router.get(
    "/{job_id}/checkpoints/{generation}",
    response_model=CheckpointManifestOut,
    operation_id="get_checkpoint",
    responses=error_responses(400, 401, 403, 404),
    summary="A kept checkpoint generation with its files",
)
async def get_checkpoint(
    job_id: JobId, generation: Generation, principal: CurrentPrincipal, store: StoreDep
) -> JSONResponse:
    job = await store.get_job(str(job_id), scope(principal))
    if job is None:
        raise not_found("Job", job_id)
    checkpoint = await store.get_checkpoint(str(job_id), scope(principal), generation)
    if checkpoint is None:
        raise ApiError(404, f"Checkpoint generation {generation} of job {job_id} not found")
    if not checkpoint.kept:
        raise ApiError(404, f"Checkpoint generation {generation} of job {job_id} is no longer kept")
    return JSONResponse(manifest_body(checkpoint, job))

"""Typed settings of `kelpie worker`, read from the container's environment at start.

Names follow PROTOCOL §5 (`KELPIE_API_URL`, `SALAD_MACHINE_ID`, `INPUT_DIR`, …) so a container
written for the reference worker keeps working; kelpie's own knobs are `KELPIE_WORKER_*`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kelpie.worker.proctree import ContainmentMode

DEFAULT_INPUT_DIR = Path("/input")
DEFAULT_CHECKPOINT_DIR = Path("/checkpoint")
DEFAULT_OUTPUT_DIR = Path("/output")


class WorkerSettings(BaseSettings):
    """Everything the worker reads at start; validated before the first poll."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    api_url: str = Field(validation_alias="KELPIE_API_URL")
    api_key: str = Field(validation_alias="KELPIE_API_KEY", repr=False)
    machine_id: str = Field(min_length=1, validation_alias="SALAD_MACHINE_ID")
    container_group_id: str = Field(min_length=1, validation_alias="SALAD_CONTAINER_GROUP_ID")

    input_dir: Path = Field(DEFAULT_INPUT_DIR, validation_alias="INPUT_DIR")
    checkpoint_dir: Path = Field(DEFAULT_CHECKPOINT_DIR, validation_alias="CHECKPOINT_DIR")
    output_dir: Path = Field(DEFAULT_OUTPUT_DIR, validation_alias="OUTPUT_DIR")

    max_time_with_no_work_s: Annotated[float, Field(ge=0)] = Field(
        0.0, validation_alias="MAX_TIME_WITH_NO_WORK_S"
    )
    """Idle this long (no job claimed) → exit 0 (and ask IMDS to reallocate). 0 = never."""

    max_job_failures: Annotated[int, Field(ge=0)] = Field(3, validation_alias="MAX_JOB_FAILURES")
    """Consecutive local job failures before the worker asks IMDS to reallocate it. 0 = never."""

    poll_wait_s: Annotated[float, Field(ge=0, le=30)] = Field(
        20.0, validation_alias="KELPIE_WORKER_POLL_WAIT_S"
    )
    stop_grace_s: Annotated[float, Field(gt=0)] = Field(
        10.0, validation_alias="KELPIE_WORKER_STOP_GRACE_S"
    )
    """From the first signal sent to a job to its SIGKILL."""

    upload_grace_s: Annotated[float, Field(gt=0)] = Field(
        30.0, validation_alias="KELPIE_WORKER_UPLOAD_GRACE_S"
    )
    """On shutdown: how long pending checkpoint uploads may take before `interrupted` is sent."""

    upload_retry_s: Annotated[float, Field(gt=0)] = Field(
        300.0, validation_alias="KELPIE_WORKER_UPLOAD_RETRY_S"
    )
    """After exit 0: how long a failing upload keeps being retried before the job fails."""

    sweep_interval_s: Annotated[float, Field(gt=0)] = Field(
        5.0, validation_alias="KELPIE_WORKER_SWEEP_INTERVAL_S"
    )
    """Fallback scan of watched dirs for files inotify did not report (stable size, not open)."""

    checkpoint_settle_s: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, validation_alias="KELPIE_WORKER_CHECKPOINT_SETTLE_S"
    )
    """How long checkpoint folders must be still (and no file there open for writing) before
    their state is taken as a generation."""

    storage_retry_s: Annotated[float, Field(gt=0)] = Field(
        60.0, validation_alias="KELPIE_WORKER_STORAGE_RETRY_S"
    )
    """How long a failing S3 request is retried before the bucket counts as unreachable (the
    job is then handed back, no failure counted)."""

    upload_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(
        8, validation_alias="KELPIE_WORKER_UPLOAD_CONCURRENCY"
    )
    transfer_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(
        16, validation_alias="KELPIE_WORKER_TRANSFER_CONCURRENCY"
    )

    sync_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, validation_alias="KELPIE_SYNC_ROOTS"
    )
    """Folders a job may sync into or point its dirs at (os.pathsep-separated).

    Empty (the default) means the worker's INPUT_DIR, CHECKPOINT_DIR and OUTPUT_DIR.
    """

    containment: ContainmentMode = Field("auto", validation_alias="KELPIE_WORKER_CONTAINMENT")
    """How the worker holds every process of a job: a cgroup v2 per job, or as a child
    subreaper tracking them from /proc; `auto` takes a cgroup where the container allows it."""

    reallocate_on_idle: bool = Field(True, validation_alias="KELPIE_WORKER_REALLOCATE_ON_IDLE")
    imds_url: str = Field("http://169.254.169.254", validation_alias="SALAD_IMDS_URL")

    @field_validator("api_url")
    @classmethod
    def _url_has_scheme(cls, url: str) -> str:
        url = url.strip().rstrip("/")
        if not url:
            raise ValueError("must not be empty")
        # The reference docs show `kelpie.saladexamples.com` without a scheme.
        return url if "://" in url else f"https://{url}"

    @field_validator("sync_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("input_dir", "checkpoint_dir", "output_dir", "sync_roots")
    @classmethod
    def _absolute(cls, value: Path | list[Path]) -> Path | list[Path]:
        for path in value if isinstance(value, list) else [value]:
            if not path.is_absolute():
                raise ValueError(f"{path} must be an absolute path")
        return value

    @model_validator(mode="after")
    def _default_roots(self) -> WorkerSettings:
        if not self.sync_roots:
            self.sync_roots = [self.input_dir, self.checkpoint_dir, self.output_dir]
        return self

    @property
    def job_dirs(self) -> tuple[Path, Path, Path]:
        return (self.input_dir, self.checkpoint_dir, self.output_dir)

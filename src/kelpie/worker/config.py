"""Typed settings of `kelpie worker`, read from the container's environment at start.

Names follow PROTOCOL §5 (`KELPIE_API_URL`, `SALAD_MACHINE_ID`, `INPUT_DIR`, …) so a container
written for the reference worker keeps working; kelpie's own knobs are `KELPIE_WORKER_*`.
Off SaladCloud (no `SALAD_MACHINE_ID`) the machine id and the job folders come from the
worker's name instead (see `kelpie.worker.identity`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kelpie.worker.identity import (
    DEFAULT_CONTAINER_GROUP,
    FIRST_FREE_NAME,
    default_worker_home,
    machine_id_for,
)
from kelpie.worker.proctree import ContainmentMode

DEFAULT_INPUT_DIR = Path("/input")
DEFAULT_CHECKPOINT_DIR = Path("/checkpoint")
DEFAULT_OUTPUT_DIR = Path("/output")
WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class WorkerSettings(BaseSettings):
    """Everything the worker reads at start; validated before the first poll."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    api_url: str = Field(validation_alias="KELPIE_API_URL")
    api_key: str = Field(validation_alias="KELPIE_API_KEY", repr=False)
    machine_id: str = Field("", validation_alias="SALAD_MACHINE_ID")
    """Set by SaladCloud; elsewhere `<host name>-<worker name>`."""
    container_group_id: str = Field(
        DEFAULT_CONTAINER_GROUP, min_length=1, validation_alias="SALAD_CONTAINER_GROUP_ID"
    )
    worker_name: str | None = Field(None, validation_alias="KELPIE_WORKER_NAME")
    """Off SaladCloud: this worker's name on its host (default: the first free `w1`, `w2`, …,
    chosen by `kelpie worker` before it reads its settings)."""
    worker_home: Path = Field(
        default_factory=default_worker_home, validation_alias="KELPIE_WORKER_HOME"
    )
    """Off SaladCloud: where each worker name has its lock and its job folders."""

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

    log_piece_s: Annotated[float, Field(gt=0, le=60)] = Field(
        2.0, validation_alias="KELPIE_WORKER_LOG_PIECE_S"
    )
    """How often the job's captured stdout/stderr go to its bucket as a new piece."""

    log_flush_s: Annotated[float, Field(gt=0)] = Field(
        10.0, validation_alias="KELPIE_WORKER_LOG_FLUSH_S"
    )
    """At the end of an attempt: how long the last log pieces may take to upload before the
    report goes without them (an S3 outage never holds a report longer)."""

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

    @field_validator("worker_name")
    @classmethod
    def _usable_name(cls, name: str | None) -> str | None:
        if name is not None and not WORKER_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a worker name: 1 to 63 letters, digits, '.', '_' or '-',"
                " starting with a letter or digit"
            )
        return name

    @field_validator("sync_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("input_dir", "checkpoint_dir", "output_dir", "sync_roots", "worker_home")
    @classmethod
    def _absolute(cls, value: Path | list[Path]) -> Path | list[Path]:
        for path in value if isinstance(value, list) else [value]:
            if not path.is_absolute():
                raise ValueError(f"{path} must be an absolute path")
        return value

    @model_validator(mode="after")
    def _defaults_off_saladcloud(self) -> WorkerSettings:
        """Off SaladCloud, the machine id and the folders not set come from the worker name."""
        self.machine_id = self.machine_id.strip()
        if self.machine_id:
            return self
        name = self.worker_name or FIRST_FREE_NAME.format(1)
        self.machine_id = machine_id_for(name)
        folder = self.worker_home / name
        for field, default in (
            ("input_dir", folder / "input"),
            ("checkpoint_dir", folder / "checkpoint"),
            ("output_dir", folder / "output"),
        ):
            if field not in self.model_fields_set:
                setattr(self, field, default)
        return self

    @model_validator(mode="after")
    def _default_roots(self) -> WorkerSettings:
        if not self.sync_roots:
            self.sync_roots = [self.input_dir, self.checkpoint_dir, self.output_dir]
        return self

    @property
    def job_dirs(self) -> tuple[Path, Path, Path]:
        return (self.input_dir, self.checkpoint_dir, self.output_dir)

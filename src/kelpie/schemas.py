"""The wire contract: request and response bodies shared by the API and the client.

Request models reject unknown fields and coerce nothing (`strict`), so a typo in a field
name or a number sent as a string is a 400, never a silently different job. Response models
are lenient, so an older client keeps working against a newer API.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

# The wire speaks the domain's words: a job's status and an attempt's outcome are the store's.
from kelpie.store.models import JOB_STATUSES as JOB_STATUSES
from kelpie.store.models import AttemptOutcome as AttemptOutcome
from kelpie.store.models import JobStatus as JobStatus
from kelpie.store.models import PendingReasonCode
from kelpie.webhooks.targets import webhook_url_problem

SyncDirection = Literal["download", "upload"]

MAX_BATCH = 1000
# The folder, under each checkpoint prefix, holding the objects of committed generations.
CHECKPOINT_AREA = ".kelpie/"
MAX_CHECKPOINT_FILES = 10_000
_SHA256_HEX = r"^[0-9a-f]{64}$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Bounds of one submission, so that a stored job stays small: a page of `GET /jobs` holds up
# to 1,000 of them, and every worker call returns one.
MAX_ENVIRONMENT_VARIABLES = 128
MAX_ENVIRONMENT_BYTES = 32 * 1024  # names and values, UTF-8
MAX_ARGUMENTS = 1000
MAX_ARGUMENTS_BYTES = 32 * 1024  # UTF-8
MAX_SYNC_ENTRIES = 32  # per phase
MAX_PATTERN_LENGTH = 1024
MAX_JOB_BYTES = 128 * 1024  # the whole submission, as JSON
# A job's priority: higher is claimed first within its container group.
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_NAME_LENGTH = 255
MAX_LABELS = 32
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 255
MAX_DURATION_SECONDS = 366 * 24 * 3600  # a year: an attempt longer than that is a mistake
MAX_RETRY_EXIT_CODES = 64  # per rule
# The header a kelpie worker sends its version in, on `GET /work`.
WORKER_VERSION_HEADER = "X-Kelpie-Worker-Version"
# What a job writes to $KELPIE_PROGRESS_FILE, as JSON: larger is ignored by the worker and
# refused by the API.
MAX_PROGRESS_BYTES = 4096
# A label key: letters, digits and `_ . / -`, starting and ending with a letter or digit (so
# that `key=value` in a `label` filter splits at the first `=`).
LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_./-]*[A-Za-z0-9])?$"
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)


def format_timestamp(value: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, as the reference service writes it."""
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]


def normalize_prefix(prefix: str) -> str:
    """A prefix always names a folder: `a/b` becomes `a/b/`; the empty prefix is the bucket root."""
    return prefix if prefix == "" or prefix.endswith("/") else prefix + "/"


def _check_pattern(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
    return pattern


def _check_environment(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENVIRONMENT_VARIABLES:
        raise ValueError(f"at most {MAX_ENVIRONMENT_VARIABLES} variables, not {len(env)}")
    size = sum(len(name.encode()) + len(value.encode()) for name, value in env.items())
    if size > MAX_ENVIRONMENT_BYTES:
        raise ValueError(
            f"names and values take {size} bytes, more than the {MAX_ENVIRONMENT_BYTES} allowed"
        )
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if "\x00" in value:
            raise ValueError(f"value of {name!r} contains a NUL byte")
    return env


def _check_arguments(arguments: list[str]) -> list[str]:
    size = sum(len(argument.encode()) for argument in arguments)
    if size > MAX_ARGUMENTS_BYTES:
        raise ValueError(f"{size} bytes in all, more than the {MAX_ARGUMENTS_BYTES} allowed")
    return arguments


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, not {len(labels)}")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY_LENGTH or not _LABEL_KEY.match(key):
            raise ValueError(
                f"{key!r} is not a label key (1-{MAX_LABEL_KEY_LENGTH} letters, digits and"
                " `_ . / -`, starting and ending with a letter or digit)"
            )
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            raise ValueError(
                f"the value of {key!r} is longer than {MAX_LABEL_VALUE_LENGTH} characters"
            )
    return labels


def parse_label_filter(text: str) -> tuple[str, str]:
    """`key=value` (a `label` filter of `GET /jobs`) → (key, value); ValueError if malformed."""
    key, sep, value = text.partition("=")
    if not sep or not _LABEL_KEY.match(key) or len(key) > MAX_LABEL_KEY_LENGTH:
        raise ValueError(f"{text!r} is not KEY=VALUE with a valid label key")
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise ValueError(
            f"the value in {text!r} is longer than {MAX_LABEL_VALUE_LENGTH} characters"
        )
    return key, value


def _check_webhook(url: str | None) -> str | None:
    problem = None if url is None else webhook_url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


def check_checkpoint_path(path: str) -> str:
    """A file's place inside a checkpoint folder: relative, normalized, `/`-separated, and
    outside the folder kelpie keeps its own objects in."""
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError("must be a normalized relative path (no leading '/', '.', '..' or '//')")
    if path + "/" == CHECKPOINT_AREA or path.startswith(CHECKPOINT_AREA):
        raise ValueError(f"must not lie under {CHECKPOINT_AREA!r}, which kelpie keeps for itself")
    return path


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` → (`bucket`, `some/prefix/`): the prefix names a folder (as
    every prefix of a job does); the empty prefix is the bucket's root."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket:
        raise ValueError("must be of the form s3://BUCKET/PREFIX")
    if len(bucket) > 255:
        raise ValueError("the bucket name is longer than 255 characters")
    if len(prefix) > 1024:
        raise ValueError("the prefix is longer than 1024 characters")
    return bucket, normalize_prefix(prefix)


def _check_s3_url(url: str | None) -> str | None:
    if url is None:
        return None
    bucket, prefix = parse_s3_url(url)
    return f"s3://{bucket}/{prefix}"


def _check_progress(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    if progress is not None:
        size = len(json.dumps(progress, separators=(",", ":")))
        if size > MAX_PROGRESS_BYTES:
            raise ValueError(f"takes {size} bytes as JSON, more than the {MAX_PROGRESS_BYTES}")
    return progress


def _check_local_path(path: str) -> str:
    if "\x00" in path:
        raise ValueError("contains a NUL byte")
    return path


def _find_nul(value: Any, path: str) -> str | None:
    """The path of the first string (or key) holding a NUL byte, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return where
            found = _find_nul(item, where)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_nul(item, f"{path}[{i}]")
            if found:
                return found
    return None


NO_NUL = r"^[^\x00]*$"  # for query and path parameters


class _Request(BaseModel):
    """Every request body: unknown fields rejected, nothing coerced, and no NUL byte in any
    string (PostgreSQL cannot store one; no job field has a use for it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul_bytes(cls, data: Any) -> Any:
        where = _find_nul(data, "")
        if where is not None:
            raise ValueError(f"{where or 'value'}: must not contain a NUL byte")
        return data


Prefix = Annotated[str, Field(max_length=1024), AfterValidator(normalize_prefix)]
Bucket = Annotated[str, Field(min_length=1, max_length=255)]


class SyncEntry(_Request):
    """One transfer between a bucket prefix and a local folder."""

    bucket: Bucket
    prefix: Prefix
    local_path: Annotated[
        str, Field(min_length=1, max_length=4096), AfterValidator(_check_local_path)
    ]
    direction: SyncDirection
    pattern: Annotated[
        str | None, Field(max_length=MAX_PATTERN_LENGTH), AfterValidator(_check_pattern)
    ] = None


class SyncConfig(_Request):
    """Transfers before the command runs (downloads), while it runs and after it exits (uploads)."""

    before: list[SyncEntry] = Field(default_factory=list, max_length=MAX_SYNC_ENTRIES)
    during: list[SyncEntry] = Field(default_factory=list, max_length=MAX_SYNC_ENTRIES)
    after: list[SyncEntry] = Field(default_factory=list, max_length=MAX_SYNC_ENTRIES)

    @model_validator(mode="after")
    def _directions_fit_phases(self) -> SyncConfig:
        for phase, entries, expected in (
            ("before", self.before, "download"),
            ("during", self.during, "upload"),
            ("after", self.after, "upload"),
        ):
            for i, entry in enumerate(entries):
                if entry.direction != expected:
                    raise ValueError(f"sync.{phase}[{i}].direction must be {expected!r}")
        return self


_LEGACY_PAIRS = (
    ("input_bucket", "input_prefix"),
    ("checkpoint_bucket", "checkpoint_prefix"),
    ("output_bucket", "output_prefix"),
)
LEGACY_FIELDS: tuple[str, ...] = tuple(name for pair in _LEGACY_PAIRS for name in pair)

ExitCode = Annotated[int, Field(ge=1, le=255)]


class RetryRules(_Request):
    """What an exit code of the job means, beyond "a failure": some fail the job at once,
    others count as an interruption (the job handled its own preemption)."""

    fail_exit_codes: Annotated[list[ExitCode], Field(max_length=MAX_RETRY_EXIT_CODES)] = Field(
        default_factory=list
    )
    interruption_exit_codes: Annotated[list[ExitCode], Field(max_length=MAX_RETRY_EXIT_CODES)] = (
        Field(default_factory=list)
    )

    @model_validator(mode="after")
    def _each_code_has_one_meaning(self) -> RetryRules:
        both = sorted(set(self.fail_exit_codes) & set(self.interruption_exit_codes))
        if both:
            raise ValueError(
                f"exit code {both[0]} is in both fail_exit_codes and interruption_exit_codes"
            )
        self.fail_exit_codes = sorted(set(self.fail_exit_codes))
        self.interruption_exit_codes = sorted(set(self.interruption_exit_codes))
        return self

    def meaning_of(self, exit_code: int | None) -> Literal["fail", "interruption"] | None:
        """What the rules say about a failure report's exit code; None: an ordinary failure."""
        if exit_code in self.fail_exit_codes:
            return "fail"
        if exit_code in self.interruption_exit_codes:
            return "interruption"
        return None


class JobCreate(_Request):
    """A job submission (`POST /jobs`, one item of `POST /jobs/batch`)."""

    command: Annotated[str, Field(min_length=1, max_length=4096)]
    arguments: Annotated[
        list[Annotated[str, Field(max_length=MAX_ARGUMENTS_BYTES)]],
        Field(max_length=MAX_ARGUMENTS),
        AfterValidator(_check_arguments),
    ] = Field(default_factory=list)
    environment: Annotated[dict[str, str], AfterValidator(_check_environment)] = Field(
        default_factory=dict
    )
    input_bucket: Bucket | None = None
    input_prefix: Prefix | None = None
    checkpoint_bucket: Bucket | None = None
    checkpoint_prefix: Prefix | None = None
    output_bucket: Bucket | None = None
    output_prefix: Prefix | None = None
    sync: SyncConfig | None = None
    max_failures: Annotated[int, Field(ge=1, le=1000)] = 3
    heartbeat_interval: Annotated[int, Field(ge=1, le=3600)] = 30
    webhook: Annotated[str | None, Field(max_length=2048), AfterValidator(_check_webhook)] = None
    container_group_id: Annotated[str, Field(min_length=1, max_length=255)]
    compression: bool = False
    checkpoint_keep: Annotated[int, Field(ge=1, le=1000)] = 3
    priority: Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)] = 0
    name: Annotated[str | None, Field(min_length=1, max_length=MAX_NAME_LENGTH)] = None
    labels: Annotated[dict[str, str], AfterValidator(_check_labels)] = Field(default_factory=dict)
    max_duration: Annotated[int | None, Field(ge=1, le=MAX_DURATION_SECONDS)] = None
    max_interruptions: Annotated[int | None, Field(ge=0, le=1_000_000)] = None
    retry: RetryRules | None = None
    logs_prefix: Annotated[str | None, Field(max_length=1300), AfterValidator(_check_s3_url)] = None
    """`s3://bucket/prefix` where the worker puts each attempt's logs (None: next to the
    output prefix)."""
    stall_timeout: Annotated[int | None, Field(ge=1, le=MAX_DURATION_SECONDS)] = None
    """Seconds a running attempt may go without its progress changing before it is stopped
    and counted as failed ("stalled")."""

    @model_validator(mode="after")
    def _stall_timeout_spans_heartbeats(self) -> JobCreate:
        if self.stall_timeout is not None and self.stall_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"stall_timeout ({self.stall_timeout}) must be at least twice heartbeat_interval"
                f" ({self.heartbeat_interval}): progress arrives with heartbeats"
            )
        return self

    @model_validator(mode="after")
    def _storage_form_is_consistent(self) -> JobCreate:
        given = [name for name in LEGACY_FIELDS if getattr(self, name) is not None]
        if self.sync is not None and given:
            raise ValueError(f"sync cannot be combined with legacy storage fields ({given[0]})")
        for bucket, prefix in _LEGACY_PAIRS:
            if (getattr(self, bucket) is None) != (getattr(self, prefix) is None):
                missing = prefix if getattr(self, prefix) is None else bucket
                raise ValueError(
                    f"{missing} is required when {bucket.split('_')[0]} storage is given"
                )
        return self

    @model_validator(mode="after")
    def _job_is_not_too_large(self) -> JobCreate:
        size = len(self.model_dump_json(exclude_defaults=True))
        if size > MAX_JOB_BYTES:
            raise ValueError(
                f"the job takes {size} bytes as JSON, more than the {MAX_JOB_BYTES} allowed"
            )
        return self


class PendingReasonOut(BaseModel):
    """Why a pending job waits. `reason`: `no_workers` (no machine of its group asked for
    work or held a job in the last `recent_seconds`), `blocked` (every such machine failed
    this job before and never receives it again) or `queued` (`jobs_ahead` of its owner's
    jobs of the group come first: higher priority, or submitted earlier)."""

    reason: PendingReasonCode
    message: str
    machines: int
    """Machines of its group seen within `recent_seconds` that may take it."""
    blocked_machines: int
    busy_machines: int
    """Of `machines`, those holding a job now."""
    jobs_ahead: int
    recent_seconds: int


class JobOut(BaseModel):
    """A job as every endpoint returns it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    user_id: str
    status: JobStatus
    created: Timestamp
    started: Timestamp | None = None
    completed: Timestamp | None = None
    canceled: Timestamp | None = None
    failed: Timestamp | None = None
    heartbeat: Timestamp | None = None
    num_failures: int = 0
    num_heartbeats: int = 0
    machine_id: str | None = None
    last_exit_code: int | None = None
    last_error: str | None = None
    command: str
    arguments: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    input_bucket: str | None = None
    input_prefix: str | None = None
    checkpoint_bucket: str | None = None
    checkpoint_prefix: str | None = None
    output_bucket: str | None = None
    output_prefix: str | None = None
    sync: SyncConfig | None = None
    max_failures: int = 3
    heartbeat_interval: int = 30
    webhook: str | None = None
    container_group_id: str
    compression: bool = False
    checkpoint_keep: int = 3
    priority: int = 0
    checkpoint_generation: int | None = None
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    max_duration: int | None = None
    max_interruptions: int | None = None
    num_interruptions: int = 0
    retry: RetryRules | None = None
    logs_prefix: str | None = None
    stall_timeout: int | None = None
    progress: dict[str, Any] | None = None
    """What the job last wrote to `$KELPIE_PROGRESS_FILE` (kept across attempts)."""
    progress_updated_at: Timestamp | None = None
    """When `progress` last changed."""
    pending_reason: PendingReasonOut | None = None
    """Why the job waits: set by `GET /jobs/{id}` while it is pending, null otherwise (and in
    lists)."""
    attempt_id: int | None = None
    """Set only in the answer of `GET /work`: the claim's fencing token."""

    def to_wire(self) -> dict[str, Any]:
        """JSON body: `sync` when the job used it, the legacy storage fields otherwise."""
        exclude = set(LEGACY_FIELDS) if self.sync is not None else {"sync"}
        return self.model_dump(mode="json", exclude=exclude)


class JobList(BaseModel):
    count: int = Field(alias="_count")
    jobs: list[JobOut]

    model_config = ConfigDict(populate_by_name=True)


class AttemptOut(BaseModel):
    id: int | None = None
    machine_id: str
    started: Timestamp
    ended: Timestamp | None = None
    outcome: AttemptOutcome
    exit_code: int | None = None
    warnings: list[str] = Field(default_factory=list)


MachineId = Annotated[str, Field(min_length=1, max_length=255)]
GroupId = Annotated[str, Field(min_length=1, max_length=255)]
AttemptId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class WorkerReport(_Request):
    """Body of heartbeat, completed and interrupted calls. With `attempt_id` (kelpie
    workers) the call is fenced by attempt; without it (the reference worker) by machine."""

    machine_id: MachineId
    container_group_id: GroupId
    attempt_id: AttemptId | None = None


class HeartbeatReport(WorkerReport):
    """Body of a heartbeat: a kelpie worker also sends what the job last wrote to
    `$KELPIE_PROGRESS_FILE` (the reference worker sends nothing more)."""

    progress: Annotated[dict[str, Any] | None, AfterValidator(_check_progress)] = None


class FailureReport(WorkerReport):
    # Exit statuses are small; the bound keeps any value storable in a 32-bit column.
    exit_code: Annotated[int | None, Field(ge=-(2**31), le=2**31 - 1)] = None
    error: Annotated[str | None, Field(max_length=8192)] = None


class CheckpointFile(_Request):
    """One file of a generation: where it lies in the checkpoint folder of `target` (the
    legacy checkpoint prefix is target 0; with `sync`, target i is `sync.during[i]`), the
    object holding it, and what it must read back as."""

    target: Annotated[int, Field(ge=0, le=1000)]
    path: Annotated[
        str, Field(min_length=1, max_length=1024), AfterValidator(check_checkpoint_path)
    ]
    key: Annotated[str, Field(min_length=1, max_length=2048)]
    size: Annotated[int, Field(ge=0, le=2**63 - 1)]
    sha256: Annotated[str, Field(pattern=_SHA256_HEX)]
    """Of the file's bytes as the job wrote them (before any gzip)."""


class CheckpointCommit(_Request):
    """`POST /jobs/{id}/checkpoints`: the holding attempt commits generation `generation`."""

    machine_id: MachineId
    container_group_id: GroupId
    attempt_id: AttemptId
    generation: Annotated[int, Field(ge=1, le=2**63 - 1)]
    files: Annotated[list[CheckpointFile], Field(max_length=MAX_CHECKPOINT_FILES)]
    upload_seconds: Annotated[float | None, Field(ge=0, le=MAX_DURATION_SECONDS)] = None
    """How long the generation took from its files being complete to this commit (the
    checkpoint's cost, in the goodput report)."""

    @model_validator(mode="after")
    def _one_entry_per_file(self) -> CheckpointCommit:
        seen: set[tuple[int, str]] = set()
        for i, item in enumerate(self.files):
            if (item.target, item.path) in seen:
                raise ValueError(
                    f"files[{i}]: {item.path!r} of target {item.target} is listed twice"
                )
            seen.add((item.target, item.path))
        return self


class CheckpointOut(BaseModel):
    """A committed generation."""

    generation: int
    attempt_id: int
    machine_id: str
    created: Timestamp
    files: int
    bytes: int
    kept: bool
    """False once newer generations pushed it out of `checkpoint_keep`: its objects may be gone."""


class CheckpointFileOut(BaseModel):
    target: int
    path: str
    bucket: str
    key: str
    size: int
    sha256: str


class CheckpointManifestOut(CheckpointOut):
    """A kept generation with its files (`GET /jobs/{id}/checkpoints/{generation}`)."""

    compressed: bool = False
    """Objects are gzipped (the job's `compression`); sizes and hashes are of the plain bytes."""
    manifest: list[CheckpointFileOut] = Field(default_factory=list)


class ObjectRef(BaseModel):
    bucket: str
    key: str


class CheckpointCommitted(BaseModel):
    """Answer of a commit: the generation, and the objects no kept generation needs any more
    (the committing worker deletes them)."""

    checkpoint: CheckpointOut
    expired: list[ObjectRef] = Field(default_factory=list)


EventDataKey = Annotated[str, Field(min_length=1, max_length=64)]
EventDataValue = int | float | bool | Annotated[str, Field(max_length=1000)] | None
WorkerEventKind = Literal[
    "inputs_downloaded",
    "checkpoint_restored",
    "checkpoint_fallback",
    "started",
    "outputs_uploaded",
    "warning",
]


class JobEventIn(_Request):
    """`POST /jobs/{id}/events`: something the holding worker saw (downloads, restores,
    warnings). Only the holding attempt may post."""

    machine_id: MachineId
    container_group_id: GroupId
    attempt_id: AttemptId
    kind: WorkerEventKind
    message: Annotated[str, Field(min_length=1, max_length=2000)]
    data: Annotated[dict[EventDataKey, EventDataValue] | None, Field(max_length=20)] = None


class JobEventOut(BaseModel):
    """One thing that happened to a job (`GET /jobs/{id}/events`)."""

    id: int
    time: Timestamp
    kind: str
    message: str
    attempt_id: int | None = None
    machine_id: str | None = None
    data: dict[str, Any] | None = None


class HeartbeatOut(BaseModel):
    status: JobStatus


class Message(BaseModel):
    message: str


class PurgeOut(BaseModel):
    count: int


class ErrorOut(BaseModel):
    error: str
    message: str


class UserCreate(_Request):
    username: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@-]+$")]


class UserOut(BaseModel):
    id: str
    username: str
    created: Timestamp


class MeOut(UserOut):
    is_admin: bool
    webhook_secret: str
    webhook_token: str


class TokenCreate(_Request):
    org_name: Annotated[str | None, Field(min_length=1, max_length=255)] = None
    project_name: Annotated[str | None, Field(min_length=1, max_length=255)] = None


class TokenOut(BaseModel):
    token: str
    id: str | None = None  # the key's id, to list or revoke it (None from older servers)


class ApiKeyOut(BaseModel):
    """An API key as listed: never the key itself, which is shown only when created."""

    id: str
    created: Timestamp
    org_name: str | None = None
    project_name: str | None = None
    revoked: bool
    bootstrap: bool = False  # the key came from KELPIE_ADMIN_KEY


class ApiKeyList(BaseModel):
    count: int = Field(alias="_count")
    tokens: list[ApiKeyOut]

    model_config = ConfigDict(populate_by_name=True)


Replicas = Annotated[int, Field(ge=0, le=500)]
IdleSeconds = Annotated[int, Field(ge=0, le=3600)]


class ScalingRuleCreate(_Request):
    container_group_id: GroupId
    min_replicas: Replicas
    max_replicas: Replicas
    idle_threshold_seconds: IdleSeconds

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ScalingRuleCreate:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not be greater than max_replicas")
        return self


class ScalingRuleUpdate(_Request):
    min_replicas: Replicas | None = None
    max_replicas: Replicas | None = None
    idle_threshold_seconds: IdleSeconds | None = None


class ScalingRuleOut(BaseModel):
    container_group_id: str
    user_id: str
    min_replicas: int
    max_replicas: int
    idle_threshold_seconds: int
    created: Timestamp
    updated: Timestamp


class ScalingRuleList(BaseModel):
    count: int = Field(alias="_count")
    rules: list[ScalingRuleOut]

    model_config = ConfigDict(populate_by_name=True)


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str


# -- operator views: container groups (the dashboard's group pages) ----------------------------


class JobCounts(BaseModel):
    """Jobs of a container group by status."""

    pending: int = 0
    running: int = 0
    completed: int = 0
    canceled: int = 0
    failed: int = 0


class GroupOut(BaseModel):
    container_group_id: str
    jobs: JobCounts


class GroupList(BaseModel):
    count: int = Field(alias="_count")
    groups: list[GroupOut]

    model_config = ConfigDict(populate_by_name=True)


class BlockedMachineOut(BaseModel):
    machine_id: str
    jobs: int
    last_blocked: Timestamp
    reallocated: bool


class ActivityBucketOut(BaseModel):
    start: Timestamp
    pending: int
    running: int
    interrupted: int = 0
    lost: int = 0
    failed: int = 0
    completed: int = 0
    canceled: int = 0


class GroupActivityOut(BaseModel):
    since: Timestamp
    bucket_seconds: float
    buckets: list[ActivityBucketOut]


class GroupDetailOut(GroupOut):
    blocked_machines: list[BlockedMachineOut]
    activity: GroupActivityOut


# -- workers: the machines seen asking for work (`GET /workers`) -----------------------------


class WorkerOut(BaseModel):
    machine_id: str
    container_group_id: str
    user_id: str
    """The user whose key the machine uses."""
    first_seen: Timestamp
    last_seen: Timestamp
    """Its last poll for work or heartbeat (kept to within ~10 s)."""
    last_poll: Timestamp | None = None
    current_job_id: str | None = None
    blocked_jobs: int = 0
    """Jobs of its key's user it failed, which it never receives again."""
    version: str | None = None
    """The kelpie version the worker sent (`X-Kelpie-Worker-Version`); null for others."""


class WorkerList(BaseModel):
    count: int = Field(alias="_count")
    workers: list[WorkerOut]

    model_config = ConfigDict(populate_by_name=True)


# -- goodput: where each attempt's time went (`/jobs/{id}/goodput`, group reports) -----------


class AttemptGoodputOut(BaseModel):
    """One attempt's time: downloading (claim to command start), running, uploading (final
    outputs), and what an interruption or failure cost."""

    id: int
    machine_id: str
    outcome: AttemptOutcome
    started: Timestamp
    ended: Timestamp | None = None
    end: Timestamp
    downloading_s: float
    running_s: float
    uploading_s: float
    checkpoints: int
    last_checkpoint: Timestamp | None = None
    work_lost_s: float | None = None
    detection_delay_s: float | None = None


class GoodputTotalsOut(BaseModel):
    attempts: int
    interruptions: int
    failures: int
    downloading_s: float
    running_s: float
    uploading_s: float
    work_lost_s: float
    detection_delay_s: float
    useful_running_s: float
    goodput: float | None = None


class JobGoodputOut(BaseModel):
    job_id: str
    status: JobStatus
    attempts: list[AttemptGoodputOut]
    totals: GoodputTotalsOut


class YoungDalyOut(BaseModel):
    """The checkpoint interval that loses least, τ* ≈ √(2·C·M), with its inputs."""

    interval_s: float
    checkpoint_cost_s: float
    mean_time_between_interruptions_s: float
    formula: str = "sqrt(2 * checkpoint_cost_s * mean_time_between_interruptions_s)"


class GroupGoodputOut(BaseModel):
    container_group_id: str
    since: Timestamp
    until: Timestamp
    attempts: int
    interruptions: int
    failures: int
    downloading_s: float
    running_s: float
    uploading_s: float
    interruptions_per_hour: float | None = None
    mean_time_between_interruptions_s: float | None = None
    checkpoints: int
    mean_checkpoint_interval_s: float | None = None
    mean_checkpoint_cost_s: float | None = None
    gpu_time_lost_s: float
    mean_detection_delay_s: float | None = None
    young_daly: YoungDalyOut | None = None

"""Every API endpoint as a `Call`: the request, its retry policy, and how its answer is read.

Both clients execute these specs; only the transport call (sync or async) differs. Each
builder's docstring says why its retry policy is safe.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from kelpie import __version__
from kelpie.client.errors import ApiUnavailable, KelpieError, error_from_response
from kelpie.client.retry import NOT_SENT_ERRORS, Outcome, RetryPolicy
from kelpie.schemas import (
    WORKER_VERSION_HEADER,
    ApiKeyList,
    ApiKeyOut,
    AttemptOut,
    CheckpointCommit,
    CheckpointCommitted,
    CheckpointManifestOut,
    CheckpointOut,
    GroupGoodputOut,
    HealthOut,
    HeartbeatOut,
    JobCreate,
    JobEventIn,
    JobEventOut,
    JobGoodputOut,
    JobList,
    JobOut,
    JobStatus,
    MeOut,
    Message,
    PurgeOut,
    ScalingRuleOut,
    TokenOut,
    UserOut,
    WorkerList,
    WorkerOut,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

JobSubmission = JobCreate | Mapping[str, Any]
QueryValue = str | int | float | bool
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Extra seconds a long poll's read timeout allows beyond the server-side wait.
LONG_POLL_MARGIN_S = 10.0


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to send, how safe it is to repeat, and how to turn its answer into `T`."""

    method: str
    path: str
    retry: RetryPolicy
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, QueryValue | Sequence[str]] = field(default_factory=dict)
    body: Any = None
    read_timeout: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"

    def request_args(self, default_timeout: float) -> dict[str, Any]:
        """Keyword arguments for `httpx.Client.request` / `httpx.AsyncClient.request`."""
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.params:
            args["params"] = dict(self.params)
        if self.body is not None:
            args["json"] = self.body
        if self.headers:
            args["headers"] = dict(self.headers)
        if self.read_timeout is not None:
            args["timeout"] = httpx.Timeout(default_timeout, read=self.read_timeout)
        return args

    def conclude(self, outcome: Outcome, base_url: str) -> T:
        """The parsed answer, or the error it stands for (after retrying has given up)."""
        if isinstance(outcome, httpx.RequestError):
            raise self._unavailable(outcome, base_url) from outcome
        if not outcome.is_success:
            raise error_from_response(outcome)
        try:
            return self.parse(outcome)
        except ValueError as exc:  # not JSON, or JSON of the wrong shape
            raise KelpieError(
                outcome.status_code,
                "Invalid response",
                f"unexpected answer to {self.what} from {base_url}: {_first_line(exc)}",
            ) from exc

    def _unavailable(self, exc: httpx.RequestError, base_url: str) -> ApiUnavailable:
        detail = _first_line(exc) or type(exc).__name__
        if isinstance(exc, NOT_SENT_ERRORS):
            message = f"cannot reach the kelpie API at {base_url}: {detail}"
            return ApiUnavailable(None, type(exc).__name__, message)
        message = f"no answer from the kelpie API at {base_url} to {self.what}: {detail}"
        if self.retry is RetryPolicy.UNSENT_ONLY:
            message += " (the server may have processed the request)"
        return ApiUnavailable(None, type(exc).__name__, message)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _segment(value: str) -> str:
    """A path segment with `/` and everything unsafe percent-encoded."""
    if not value:
        raise ValueError("an id in a request path must not be empty")
    return quote(value, safe="")


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _models(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    def parse(response: httpx.Response) -> list[M]:
        body = response.json()
        if not isinstance(body, list):
            raise ValueError(f"expected a JSON array, got {type(body).__name__}")
        return [model.model_validate(item) for item in body]

    return parse


def _nothing(response: httpx.Response) -> None:
    return None


def _submission_body(job: JobSubmission) -> dict[str, Any]:
    """A JobCreate as JSON without unset optional fields; a mapping is sent as given and the
    server validates it (so every validation error reads the same, as a 400)."""
    if isinstance(job, JobCreate):
        return job.model_dump(mode="json", exclude_none=True)
    return dict(job)


def _worker_body(
    machine_id: str, container_group_id: str, attempt_id: int | None = None
) -> dict[str, Any]:
    # (the reference worker's body, plus the attempt when known)
    body: dict[str, Any] = {"machine_id": machine_id, "container_group_id": container_group_id}
    if attempt_id is not None:
        body["attempt_id"] = attempt_id
    return body


# -- jobs -----------------------------------------------------------------------------------


def new_idempotency_key() -> str:
    """A fresh `Idempotency-Key`: random, so no two submissions ever share one by chance."""
    return str(uuid.uuid4())


def submit_job(job: JobSubmission, idempotency_key: str | None = None) -> Call[JobOut]:
    """`POST /jobs` with an `Idempotency-Key` (a new one unless given), so it is retried like
    an idempotent call: the key goes with every send of this call, and the server answers a
    repeat of a request it already took with the job that request created (even from
    another API process, or after a restart) instead of creating a second one. A request
    whose answer was lost (read timeout, dropped connection, 502/503/504) is therefore safe
    to send again."""
    return Call(
        "POST",
        "/jobs",
        RetryPolicy.IDEMPOTENT,
        _model(JobOut),
        body=_submission_body(job),
        headers={IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()},
    )


def submit_batch(
    jobs: Sequence[JobSubmission], idempotency_key: str | None = None
) -> Call[list[JobOut]]:
    """`POST /jobs/batch`, all-or-nothing, with an `Idempotency-Key`: retried like
    `submit_job`, and a repeat answers the jobs of the first request."""
    body = [_submission_body(job) for job in jobs]
    return Call(
        "POST",
        "/jobs/batch",
        RetryPolicy.IDEMPOTENT,
        _models(JobOut),
        body=body,
        headers={IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()},
    )


def get_job(job_id: str) -> Call[JobOut]:
    """`GET /jobs/{id}`: a read, always safe to repeat."""
    return Call("GET", f"/jobs/{_segment(job_id)}", RetryPolicy.IDEMPOTENT, _model(JobOut))


def list_jobs(
    status: JobStatus | None = None,
    container_group_id: str | None = None,
    page: int = 1,
    page_size: int = 100,
    asc: bool = False,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Call[JobList]:
    """`GET /jobs`: one page of the caller's jobs, newest first unless `asc`, only those
    with `name` and carrying every one of `labels` when given. A read."""
    params: dict[str, QueryValue | Sequence[str]] = {
        "page": page,
        "page_size": page_size,
        "asc": asc,
    }
    if status is not None:
        params["status"] = status
    if container_group_id is not None:
        params["container_group_id"] = container_group_id
    if name is not None:
        params["name"] = name
    if labels:
        params["label"] = [f"{key}={value}" for key, value in labels.items()]
    return Call("GET", "/jobs", RetryPolicy.IDEMPOTENT, _model(JobList), params=params)


def is_last_page(page: JobList, page_size: int) -> bool:
    """A page shorter than asked for is the last one."""
    return len(page.jobs) < page_size


def cancel_job(job_id: str) -> Call[str]:
    """`DELETE /jobs/{id}` → the API's message. Idempotent: cancelling a canceled job is a
    no-op 202, so a repeat after a lost answer is harmless."""
    return Call(
        "DELETE",
        f"/jobs/{_segment(job_id)}",
        RetryPolicy.IDEMPOTENT,
        lambda response: Message.model_validate_json(response.content).message,
    )


def purge_group(container_group_id: str) -> Call[int]:
    """`DELETE /jobs/container-groups/{group}` → how many jobs were deleted or canceled.
    Idempotent in effect; a repeat after a lost answer counts only what was left (often 0)."""
    return Call(
        "DELETE",
        f"/jobs/container-groups/{_segment(container_group_id)}",
        RetryPolicy.IDEMPOTENT,
        lambda response: PurgeOut.model_validate_json(response.content).count,
    )


def list_attempts(job_id: str) -> Call[list[AttemptOut]]:
    """`GET /jobs/{id}/attempts`: a read."""
    return Call(
        "GET", f"/jobs/{_segment(job_id)}/attempts", RetryPolicy.IDEMPOTENT, _models(AttemptOut)
    )


def job_goodput(job_id: str) -> Call[JobGoodputOut]:
    """`GET /jobs/{id}/goodput`: where each attempt's time went. A read."""
    return Call(
        "GET", f"/jobs/{_segment(job_id)}/goodput", RetryPolicy.IDEMPOTENT, _model(JobGoodputOut)
    )


def group_goodput(container_group_id: str, window_seconds: int) -> Call[GroupGoodputOut]:
    """`GET /container-groups/{group}/goodput`: what interruptions cost the group's attempts
    that started within the last `window_seconds`. A read."""
    return Call(
        "GET",
        f"/container-groups/{_segment(container_group_id)}/goodput",
        RetryPolicy.IDEMPOTENT,
        _model(GroupGoodputOut),
        params={"window": window_seconds},
    )


def delete_all_jobs() -> Call[None]:
    """`DELETE /jobs` (admin): removes every job; repeating removes nothing more."""
    return Call("DELETE", "/jobs", RetryPolicy.IDEMPOTENT, _nothing)


# -- worker protocol ------------------------------------------------------------------------


def poll_work(machine_id: str, container_group_id: str, wait: float = 0) -> Call[JobOut | None]:
    """`GET /work`: claim the next job of the group, or None. A claim is not a read: a repeat
    after the server claimed a job whose answer was lost would claim a second one. So it is
    retried only when never sent; on any other failure the caller simply polls again later,
    and a job whose claim answer was lost goes stale and is handed out again by the server.
    With `wait` > 0 the server long-polls, so the read timeout is `wait` + 10 s."""
    params: dict[str, QueryValue] = {
        "machine_id": machine_id,
        "container_group_id": container_group_id,
    }
    read_timeout = None
    if wait > 0:
        params["wait"] = wait
        read_timeout = wait + LONG_POLL_MARGIN_S

    def first_job(response: httpx.Response) -> JobOut | None:
        jobs = _models(JobOut)(response)
        return jobs[0] if jobs else None

    return Call(
        "GET",
        "/work",
        RetryPolicy.UNSENT_ONLY,
        first_job,
        params=params,
        read_timeout=read_timeout,
        headers={WORKER_VERSION_HEADER: __version__},
    )


def heartbeat(
    job_id: str,
    machine_id: str,
    container_group_id: str,
    attempt_id: int | None = None,
    progress: Mapping[str, Any] | None = None,
) -> Call[str]:
    """`POST /jobs/{id}/heartbeat` → the job's status as this machine should act on it
    (`running`: keep going; anything else: stop), with the progress the job last wrote.
    Safe to repeat: an extra beat only refreshes the lease once more."""
    body = _worker_body(machine_id, container_group_id, attempt_id)
    if progress is not None:
        body["progress"] = dict(progress)
    return Call(
        "POST",
        f"/jobs/{_segment(job_id)}/heartbeat",
        RetryPolicy.IDEMPOTENT,
        lambda response: HeartbeatOut.model_validate_json(response.content).status,
        body=body,
    )


def report_completed(
    job_id: str, machine_id: str, container_group_id: str, attempt_id: int | None = None
) -> Call[None]:
    """`POST /jobs/{id}/completed`. Retried on every transient failure, even after the server
    may have acted: it fences reports by holder, so a repeat after a success is refused with
    409, raised as `Conflict` for the caller to judge (the job may have completed already)."""
    return Call(
        "POST",
        f"/jobs/{_segment(job_id)}/completed",
        RetryPolicy.IDEMPOTENT,
        _nothing,
        body=_worker_body(machine_id, container_group_id, attempt_id),
    )


def report_failed(
    job_id: str,
    machine_id: str,
    container_group_id: str,
    exit_code: int | None,
    error: str | None,
    attempt_id: int | None = None,
) -> Call[None]:
    """`POST /jobs/{id}/failed`. Retried like `report_completed`: fenced by holder, and the
    failure also releases the hold, so a repeat after a success answers 409 (`Conflict`)
    rather than counting a second failure."""
    body = {
        **_worker_body(machine_id, container_group_id, attempt_id),
        "exit_code": exit_code,
        "error": error,
    }
    return Call(
        "POST", f"/jobs/{_segment(job_id)}/failed", RetryPolicy.IDEMPOTENT, _nothing, body=body
    )


def report_interrupted(
    job_id: str, machine_id: str, container_group_id: str, attempt_id: int | None = None
) -> Call[None]:
    """`POST /jobs/{id}/interrupted`. Retried like `report_completed` (fenced; repeat → 409)."""
    return Call(
        "POST",
        f"/jobs/{_segment(job_id)}/interrupted",
        RetryPolicy.IDEMPOTENT,
        _nothing,
        body=_worker_body(machine_id, container_group_id, attempt_id),
    )


def commit_checkpoint(job_id: str, commit: CheckpointCommit) -> Call[CheckpointCommitted]:
    """`POST /jobs/{id}/checkpoints`: the holding attempt commits a generation. Safe to repeat:
    the server answers a repeat of a commit it already took (same attempt, same generation,
    same files) with that commit; anything else from a non-holder is a 409 (`Conflict`)."""
    return Call(
        "POST",
        f"/jobs/{_segment(job_id)}/checkpoints",
        RetryPolicy.IDEMPOTENT,
        _model(CheckpointCommitted),
        body=commit.model_dump(mode="json"),
    )


def add_job_event(job_id: str, event: JobEventIn) -> Call[None]:
    """`POST /jobs/{id}/events`: the holding attempt reports something it saw. Retried only
    when never sent: a repeat would record the event twice."""
    return Call(
        "POST",
        f"/jobs/{_segment(job_id)}/events",
        RetryPolicy.UNSENT_ONLY,
        _nothing,
        body=event.model_dump(mode="json", exclude_none=True),
    )


def list_job_events(job_id: str, after: int = 0) -> Call[list[JobEventOut]]:
    """`GET /jobs/{id}/events`: the job's events after id `after`, oldest first. A read."""
    params: dict[str, QueryValue] = {"after": after} if after else {}
    return Call(
        "GET",
        f"/jobs/{_segment(job_id)}/events",
        RetryPolicy.IDEMPOTENT,
        _models(JobEventOut),
        params=params,
    )


def list_workers(container_group_id: str | None = None) -> Call[list[WorkerOut]]:
    """`GET /workers`: the machines seen in the last 24 hours (of one group, if given). A
    read."""
    params: dict[str, QueryValue] = {}
    if container_group_id is not None:
        params["container_group_id"] = container_group_id
    return Call(
        "GET",
        "/workers",
        RetryPolicy.IDEMPOTENT,
        lambda response: WorkerList.model_validate_json(response.content).workers,
        params=params,
    )


def list_checkpoints(job_id: str) -> Call[list[CheckpointOut]]:
    """`GET /jobs/{id}/checkpoints`: every committed generation, oldest first. A read."""
    return Call(
        "GET",
        f"/jobs/{_segment(job_id)}/checkpoints",
        RetryPolicy.IDEMPOTENT,
        _models(CheckpointOut),
    )


def get_checkpoint(job_id: str, generation: int) -> Call[CheckpointManifestOut]:
    """`GET /jobs/{id}/checkpoints/{generation}`: a kept generation with its files. A read."""
    return Call(
        "GET",
        f"/jobs/{_segment(job_id)}/checkpoints/{int(generation)}",
        RetryPolicy.IDEMPOTENT,
        _model(CheckpointManifestOut),
    )


# -- users ----------------------------------------------------------------------------------


def create_user(username: str) -> Call[UserOut]:
    """`POST /users` (admin). Retried only when never sent: a repeat after success answers 409."""
    return Call(
        "POST", "/users", RetryPolicy.UNSENT_ONLY, _model(UserOut), body={"username": username}
    )


def create_token(
    user_id: str, org_name: str | None = None, project_name: str | None = None
) -> Call[str]:
    """`POST /users/{id}/token` (admin) → the new API key, shown only now. Retried only when
    never sent: a repeat would mint a second key."""
    body = {
        name: value
        for name, value in (("org_name", org_name), ("project_name", project_name))
        if value is not None
    }
    return Call(
        "POST",
        f"/users/{_segment(user_id)}/token",
        RetryPolicy.UNSENT_ONLY,
        lambda response: TokenOut.model_validate_json(response.content).token,
        body=body,
    )


def list_tokens(user_id: str) -> Call[list[ApiKeyOut]]:
    """`GET /users/{id}/tokens` (admin, or the user itself): every key of the user, revoked
    ones included, never the keys themselves. A read."""
    return Call(
        "GET",
        f"/users/{_segment(user_id)}/tokens",
        RetryPolicy.IDEMPOTENT,
        lambda response: ApiKeyList.model_validate_json(response.content).tokens,
    )


def revoke_token(user_id: str, token_id: str) -> Call[None]:
    """`DELETE /users/{id}/tokens/{token_id}` (admin, or the user itself): the key stops
    working. Idempotent: revoking a revoked key is a no-op 204."""
    path = f"/users/{_segment(user_id)}/tokens/{_segment(token_id)}"
    return Call("DELETE", path, RetryPolicy.IDEMPOTENT, _nothing)


def delete_users() -> Call[None]:
    """`DELETE /users` (admin): every non-admin user and their keys. Idempotent."""
    return Call("DELETE", "/users", RetryPolicy.IDEMPOTENT, _nothing)


def me() -> Call[MeOut]:
    """`GET /users/me`: who the key belongs to, with the webhook secret. A read."""
    return Call("GET", "/users/me", RetryPolicy.IDEMPOTENT, _model(MeOut))


# -- scaling rules --------------------------------------------------------------------------


def create_scaling_rule(
    container_group_id: str, *, min_replicas: int, max_replicas: int, idle_threshold_seconds: int
) -> Call[ScalingRuleOut]:
    """`POST /scaling-rules`. Retried only when never sent: a repeat after success is a 409."""
    body = {
        "container_group_id": container_group_id,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "idle_threshold_seconds": idle_threshold_seconds,
    }
    return Call(
        "POST", "/scaling-rules", RetryPolicy.UNSENT_ONLY, _model(ScalingRuleOut), body=body
    )


def _rule_list(response: httpx.Response) -> list[ScalingRuleOut]:
    body = response.json()
    items = body.get("rules") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ValueError("expected a list of scaling rules")
    return [ScalingRuleOut.model_validate(item) for item in items]


def list_scaling_rules() -> Call[list[ScalingRuleOut]]:
    """`GET /scaling-rules`: reads `{"_count", "rules"}` (the reference shape) or a bare list."""
    return Call("GET", "/scaling-rules", RetryPolicy.IDEMPOTENT, _rule_list)


def get_scaling_rule(container_group_id: str) -> Call[ScalingRuleOut]:
    """`GET /scaling-rules/{group}`: a read."""
    path = f"/scaling-rules/{_segment(container_group_id)}"
    return Call("GET", path, RetryPolicy.IDEMPOTENT, _model(ScalingRuleOut))


def update_scaling_rule(
    container_group_id: str,
    *,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    idle_threshold_seconds: int | None = None,
) -> Call[ScalingRuleOut]:
    """`PATCH /scaling-rules/{group}` with only the fields given. Idempotent: the same
    changes applied twice leave the same rule."""
    changes = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "idle_threshold_seconds": idle_threshold_seconds,
    }
    body = {name: value for name, value in changes.items() if value is not None}
    path = f"/scaling-rules/{_segment(container_group_id)}"
    return Call("PATCH", path, RetryPolicy.IDEMPOTENT, _model(ScalingRuleOut), body=body)


def delete_scaling_rule(container_group_id: str) -> Call[None]:
    """`DELETE /scaling-rules/{group}`. Retried as idempotent; should a repeat follow a lost
    success, the server may answer 404, raised as `NotFoundError`."""
    path = f"/scaling-rules/{_segment(container_group_id)}"
    return Call("DELETE", path, RetryPolicy.IDEMPOTENT, _nothing)


def delete_all_scaling_rules() -> Call[None]:
    """`DELETE /scaling-rules` (admin). Idempotent."""
    return Call("DELETE", "/scaling-rules", RetryPolicy.IDEMPOTENT, _nothing)


# -- health ---------------------------------------------------------------------------------


def health() -> Call[bool]:
    """`GET /health` (no key needed): True when the API answers `{"status": "ok"}`."""
    return Call(
        "GET",
        "/health",
        RetryPolicy.IDEMPOTENT,
        lambda response: HealthOut.model_validate_json(response.content).status == "ok",
    )

"""`kelpie jobs …` and `kelpie groups …`: submit, list, inspect, watch and cancel jobs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import click

from kelpie.cli.base import (
    JOB_STATUSES,
    Api,
    emit_fields,
    emit_json,
    emit_table,
    fail,
    main,
    parse_duration,
    when,
    with_api,
)

if TYPE_CHECKING:
    from kelpie.schemas import AttemptOut, JobEventOut, JobOut, SyncEntry


class WatchExit:
    """Exit codes of `kelpie jobs watch`: how the job ended (2 stays click's usage error)."""

    COMPLETED = 0
    FAILED = 1
    CANCELED = 3
    NOT_FOUND = 4
    API_ERROR = 5


_WATCH_EXIT_BY_STATUS = {
    "completed": WatchExit.COMPLETED,
    "failed": WatchExit.FAILED,
    "canceled": WatchExit.CANCELED,
}


# -- job files and flags ----------------------------------------------------------------------


def load_document(stream: IO[str]) -> Any:
    """A JSON or YAML document, as plain JSON values (YAML dates become strings)."""
    import yaml

    text = stream.read()
    name = getattr(stream, "name", "<stdin>")
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0]
            raise click.BadParameter(f"{name} is neither JSON nor YAML: {reason}") from exc
    return json.loads(json.dumps(document, default=str))


def parse_s3_url(url: str, option: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` → (`bucket`, `some/prefix`)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket:
        raise click.BadParameter(
            f"{url!r} is not of the form s3://BUCKET/PREFIX", param_hint=option
        )
    return bucket, prefix


def parse_env(pairs: Sequence[str], option: str = "--env") -> dict[str, str]:
    """`NAME=VALUE` pairs; the value may itself contain `=`."""
    environment = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint=option)
        environment[name] = value
    return environment


def environment_as_strings(job: Mapping[str, Any]) -> dict[str, Any]:
    """The job with its `environment` numbers and booleans written as strings.

    YAML reads `STEPS: 40` as a number and `DEBUG: true` as a boolean, while an environment
    holds strings only; the API stays strict, so the CLI writes them as a shell would see
    them (`"40"`, `"true"`). Anything else (null, a list) goes to the API, which names it.
    """
    environment = job.get("environment")
    if not isinstance(environment, dict):
        return dict(job)
    return {**job, "environment": {name: _as_string(v) for name, v in environment.items()}}


def _as_string(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


@dataclass(frozen=True)
class JobFlags:
    """Job fields given on the command line; they override a job file's, item by item."""

    command: str | None = None
    arguments: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    container_group_id: str | None = None
    input_url: str | None = None
    checkpoint_url: str | None = None
    output_url: str | None = None
    max_failures: int | None = None
    heartbeat_interval: int | None = None
    webhook: str | None = None
    compression: bool | None = None
    priority: int | None = None
    name: str | None = None
    labels: tuple[str, ...] = ()
    max_duration: int | None = None
    max_interruptions: int | None = None
    fail_exit_codes: tuple[int, ...] = ()
    interruption_exit_codes: tuple[int, ...] = ()
    stall_timeout: int | None = None
    logs_prefix: str | None = None

    def is_empty(self) -> bool:
        return self == JobFlags()

    def apply(self, job: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(job)
        scalars = {
            "command": self.command,
            "container_group_id": self.container_group_id,
            "max_failures": self.max_failures,
            "heartbeat_interval": self.heartbeat_interval,
            "webhook": self.webhook,
            "compression": self.compression,
            "priority": self.priority,
            "name": self.name,
            "max_duration": self.max_duration,
            "max_interruptions": self.max_interruptions,
            "stall_timeout": self.stall_timeout,
            "logs_prefix": self.logs_prefix,
        }
        merged.update({name: value for name, value in scalars.items() if value is not None})
        if self.arguments:
            merged["arguments"] = list(self.arguments)
        for field, pairs, option in (
            ("environment", self.environment, "--env"),
            ("labels", self.labels, "--label"),
        ):
            if pairs:
                base = merged.get(field)
                merged[field] = {
                    **(base if isinstance(base, dict) else {}),
                    **parse_env(pairs, option),
                }
        for rule, codes in (
            ("fail_exit_codes", self.fail_exit_codes),
            ("interruption_exit_codes", self.interruption_exit_codes),
        ):
            if codes:
                base = merged.get("retry")
                merged["retry"] = {**(base if isinstance(base, dict) else {}), rule: list(codes)}
        for kind, url in (
            ("input", self.input_url),
            ("checkpoint", self.checkpoint_url),
            ("output", self.output_url),
        ):
            if url is not None:
                merged[f"{kind}_bucket"], merged[f"{kind}_prefix"] = parse_s3_url(url, f"--{kind}")
        return merged


def submissions(
    file: IO[str] | None, batch_file: IO[str] | None, flags: JobFlags
) -> list[dict[str, Any]]:
    """The jobs to submit: one from FILE or flags alone, or the list in `--batch`."""
    if file is not None and batch_file is not None:
        raise click.UsageError("give either a job FILE or --batch FILE, not both")
    if batch_file is not None:
        items = load_document(batch_file)
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise click.BadParameter("must hold a non-empty list of jobs", param_hint="--batch")
        return [flags.apply(environment_as_strings(item)) for item in items]
    if file is None and flags.is_empty():
        raise click.UsageError(
            "give a job FILE, --batch FILE, or the job as flags (--command, --group, ...)"
        )
    document = {} if file is None else load_document(file)
    if not isinstance(document, dict):
        raise click.BadParameter(
            "must hold one job (a mapping); use --batch for a list", param_hint="FILE"
        )
    return [flags.apply(environment_as_strings(document))]


# -- jobs -------------------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """Submit, list, inspect, watch and cancel jobs."""


def _s3_option(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        f"--{kind}",
        f"{kind}_url",
        metavar="s3://BUCKET/PREFIX",
        help=f"{kind.capitalize()} storage (sets {kind}_bucket and {kind}_prefix).",
    )


@jobs.command("submit")
@click.argument("file", required=False, type=click.File("r"))
@click.option(
    "--batch",
    "batch_file",
    type=click.File("r"),
    help="JSON/YAML list of jobs, queued all or none.",
)
@click.option("--command", help="Program to run.")
@click.option("--arg", "arguments", multiple=True, help="One argument of the command (repeat).")
@click.option(
    "--env", "environment", multiple=True, metavar="NAME=VALUE", help="Job environment (repeat)."
)
@click.option(
    "--group", "container_group_id", help="Container group (the queue) that runs the job."
)
@_s3_option("input")
@_s3_option("checkpoint")
@_s3_option("output")
@click.option(
    "--max-failures", type=int, help="Failures before the job is failed [API default: 3]."
)
@click.option(
    "--heartbeat-interval", type=int, help="Seconds between heartbeats [API default: 30]."
)
@click.option("--webhook", help="URL notified when the job runs, completes or fails.")
@click.option("--compression/--no-compression", default=None, help="Gzip uploads.")
@click.option(
    "--priority",
    type=int,
    help="Higher is handed out first within the group, -1000 to 1000 [API default: 0].",
)
@click.option("--name", help="A name for the job (a filter of `jobs list`).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeat).")
@click.option(
    "--max-duration",
    metavar="DURATION",
    callback=parse_duration,
    help="Longest an attempt may run before it is stopped and failed (`timed out`).",
)
@click.option(
    "--max-interruptions",
    type=click.IntRange(min=0),
    help="Interruptions after which the job fails [API default: no limit].",
)
@click.option(
    "--fail-exit-code",
    "fail_exit_codes",
    type=click.IntRange(1, 255),
    multiple=True,
    help="An exit code that fails the job at once (repeat).",
)
@click.option(
    "--interruption-exit-code",
    "interruption_exit_codes",
    type=click.IntRange(1, 255),
    multiple=True,
    help="An exit code that counts as an interruption, not a failure (repeat).",
)
@click.option(
    "--stall-timeout",
    metavar="DURATION",
    callback=parse_duration,
    help="Stop and fail an attempt whose progress ($KELPIE_PROGRESS_FILE) has not changed for"
    " this long (`stalled`).",
)
@click.option(
    "--logs-prefix",
    metavar="s3://BUCKET/PREFIX",
    help="Where the worker puts each attempt's logs [default: next to the output prefix].",
)
@click.option(
    "--idempotency-key",
    help="Submitting again with the same key (and job) within 24 h queues nothing and prints"
    " the first submission's job(s). Default: a new key, so only retries are deduplicated.",
)
@with_api
def submit_jobs(
    api: Api,
    file: IO[str] | None,
    batch_file: IO[str] | None,
    idempotency_key: str | None,
    **fields: Any,
) -> None:
    """Queue a job from FILE (JSON or YAML; `-` for stdin), from flags, or both (flags win).

    With --batch, queue every job in the file at once; the flags apply to each. Prints the
    id of each job, or the jobs themselves with --json.
    """
    items = submissions(file, batch_file, JobFlags(**fields))
    if batch_file is None:
        submitted = [api.client.submit_job(items[0], idempotency_key=idempotency_key)]
    else:
        submitted = api.client.submit_batch(items, idempotency_key=idempotency_key)
    if api.as_json:
        wire = [job.to_wire() for job in submitted]
        emit_json(wire if batch_file is not None else wire[0])
    else:
        for job in submitted:
            click.echo(job.id)


@jobs.command("list")
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this status.")
@click.option("--group", "container_group_id", help="Only jobs of this container group.")
@click.option("--page", type=int, default=1)
@click.option("--page-size", type=int, default=100)
@click.option("--asc", is_flag=True, help="Oldest first.")
@click.option("--name", help="Only jobs with this name.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only jobs with this label (repeat: all must match).",
)
@with_api
def list_jobs(
    api: Api,
    status: Any,
    container_group_id: str | None,
    page: int,
    page_size: int,
    asc: bool,
    name: str | None,
    labels: tuple[str, ...],
) -> None:
    """List your jobs, newest first."""
    listing = api.client.list_jobs(
        status,
        container_group_id,
        page,
        page_size,
        asc,
        name=name,
        labels=parse_env(labels, "--label"),
    )
    if api.as_json:
        emit_json({"_count": listing.count, "jobs": [job.to_wire() for job in listing.jobs]})
        return
    emit_table(
        ("ID", "STATUS", "GROUP", "CREATED", "FAILURES", "MACHINE"),
        (
            (
                job.id,
                job.status,
                job.container_group_id,
                when(job.created),
                f"{job.num_failures}/{job.max_failures}",
                job.machine_id or "-",
            )
            for job in listing.jobs
        ),
    )


def _sync_line(entry: SyncEntry) -> str:
    arrow = "->" if entry.direction == "download" else "<-"
    pattern = f" (pattern {entry.pattern})" if entry.pattern else ""
    return f"s3://{entry.bucket}/{entry.prefix} {arrow} {entry.local_path}{pattern}"


def _storage_lines(job: JobOut) -> list[tuple[str, object]]:
    if job.sync is not None:
        phases = (
            ("before", job.sync.before),
            ("during", job.sync.during),
            ("after", job.sync.after),
        )
        return [(f"sync {phase}", _sync_line(e)) for phase, entries in phases for e in entries]
    pairs = (
        ("input", job.input_bucket, job.input_prefix),
        ("checkpoint", job.checkpoint_bucket, job.checkpoint_prefix),
        ("output", job.output_bucket, job.output_prefix),
    )
    return [(kind, f"s3://{bucket}/{prefix}") for kind, bucket, prefix in pairs if bucket]


def show_job(job: JobOut) -> None:
    emit_fields(
        [
            ("id", job.id),
            ("name", job.name),
            ("labels", " ".join(f"{k}={v}" for k, v in job.labels.items())),
            ("status", job.status),
            ("group", job.container_group_id),
            ("command", " ".join([job.command, *job.arguments])),
            ("environment", " ".join(f"{k}={v}" for k, v in job.environment.items())),
            *_storage_lines(job),
            ("compression", "on" if job.compression else None),
            ("webhook", job.webhook),
            ("created", when(job.created)),
            ("started", job.started and when(job.started)),
            ("completed", job.completed and when(job.completed)),
            ("canceled", job.canceled and when(job.canceled)),
            ("failed", job.failed and when(job.failed)),
            ("machine", job.machine_id),
            ("heartbeat", job.heartbeat and f"{when(job.heartbeat)} ({job.num_heartbeats} in all)"),
            ("heartbeat interval", f"{job.heartbeat_interval} s"),
            ("failures", f"{job.num_failures} of at most {job.max_failures}"),
            ("interruptions", _interruptions_line(job)),
            ("max duration", job.max_duration and f"{job.max_duration} s per attempt"),
            *_retry_lines(job),
            ("last exit code", job.last_exit_code),
            ("last error", job.last_error),
            ("progress", progress_text(job.progress)),
            ("progress updated", job.progress_updated_at and when(job.progress_updated_at)),
            ("stall timeout", job.stall_timeout and f"{job.stall_timeout} s without progress"),
            ("logs prefix", job.logs_prefix),
            ("waiting because", job.pending_reason and job.pending_reason.message),
        ]
    )


def progress_text(progress: Mapping[str, Any] | None) -> str | None:
    """`1200/5000 (24 %) epoch 3`, from what the job wrote to $KELPIE_PROGRESS_FILE (its
    other fields as JSON)."""
    if not progress:
        return None
    step, message = progress.get("step"), progress.get("message")
    parts: list[str] = []
    fraction = _fraction(progress)
    if fraction is not None:
        parts.append(f"{step}/{progress['total']} ({100 * fraction:.0f} %)")
    elif step is not None:
        parts.append(f"step {step}")
    if isinstance(message, str) and message:
        parts.append(message)
    rest = {k: v for k, v in progress.items() if k not in ("step", "total", "message")}
    if rest or not parts:
        parts.append(json.dumps(rest if parts else dict(progress), separators=(",", ":")))
    return " ".join(parts)


def _fraction(progress: Mapping[str, Any]) -> float | None:
    step, total = _number(progress.get("step")), _number(progress.get("total"))
    if step is None or total is None or total <= 0:
        return None
    return min(max(step / total, 0.0), 1.0)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _interruptions_line(job: JobOut) -> str | None:
    if job.max_interruptions is not None:
        return f"{job.num_interruptions} of at most {job.max_interruptions}"
    return str(job.num_interruptions) if job.num_interruptions else None


def _retry_lines(job: JobOut) -> list[tuple[str, object]]:
    if job.retry is None:
        return []
    return [
        ("fail at once on", " ".join(map(str, job.retry.fail_exit_codes))),
        ("interruption on", " ".join(map(str, job.retry.interruption_exit_codes))),
    ]


@jobs.command("get")
@click.argument("job_id")
@with_api
def get_job(api: Api, job_id: str) -> None:
    """Show one job."""
    job = api.client.get_job(job_id)
    api.emit(job.to_wire(), lambda: show_job(job))


@jobs.command("cancel")
@click.argument("job_id")
@with_api
def cancel_job(api: Api, job_id: str) -> None:
    """Cancel a job; a running job's worker stops it at its next heartbeat."""
    message = api.client.cancel_job(job_id)
    api.emit({"message": message}, message)


@jobs.command("attempts")
@click.argument("job_id")
@with_api
def job_attempts(api: Api, job_id: str) -> None:
    """Every time a machine held the job, and how it ended (the ATTEMPT column is what
    `kelpie jobs logs --attempt` takes)."""
    attempts = api.client.list_attempts(job_id)
    if api.as_json:
        emit_json([attempt.model_dump(mode="json") for attempt in attempts])
        return
    emit_table(
        ("ATTEMPT", "MACHINE", "STARTED", "ENDED", "OUTCOME", "EXIT CODE"),
        (
            (
                "-" if a.id is None else str(a.id),
                a.machine_id,
                when(a.started),
                when(a.ended),
                a.outcome,
                "-" if a.exit_code is None else str(a.exit_code),
            )
            for a in attempts
        ),
    )


def status_line(job: JobOut, attempts: Sequence[AttemptOut]) -> str:
    """The job's state as `jobs watch` prints it at each change (no heartbeat count)."""
    parts = [
        job.id,
        job.status,
        f"machine {job.machine_id or '-'}",
        f"attempts {len(attempts)}",
        f"failures {job.num_failures}/{job.max_failures}",
    ]
    if job.pending_reason is not None:
        parts.append(f"waiting: {job.pending_reason.message}")
    return "  ".join(parts)


def watch_line(job: JobOut, attempts: Sequence[AttemptOut], now: datetime | None = None) -> str:
    """The live status line (on a terminal); with `now`, also how long ago the last
    heartbeat came."""
    parts = [
        job.id,
        job.status,
        f"machine {job.machine_id or '-'}",
        f"attempts {len(attempts)}",
        f"heartbeats {job.num_heartbeats}",
        f"failures {job.num_failures}/{job.max_failures}",
    ]
    if job.progress:
        parts.append(f"progress {progress_text(job.progress)}")
    if now is not None and job.status == "running" and job.heartbeat is not None:
        parts.append(f"last beat {max(0, round((now - job.heartbeat).total_seconds()))} s ago")
    return "  ".join(parts)


def event_line(event: JobEventOut) -> str:
    """One thing that happened to the job, as `jobs watch` prints it."""
    attempt = f"  (attempt {event.attempt_id})" if event.attempt_id is not None else ""
    return f"{when(event.time)}  {event.kind}  {event.message}{attempt}"


@jobs.command("watch")
@click.argument("job_id")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, help="Seconds between refreshes."
)
@with_api
def watch_job(api: Api, job_id: str, interval: float) -> None:
    """Follow a job until it ends, checking every --interval: one line per change (each
    event: claims, downloads, progress milestones, checkpoints, failures, hand-backs; and the
    job's status when it changes), never one per heartbeat. On a terminal a live status line
    (heartbeats, progress) is kept below them.

    Exit code: 0 completed, 1 failed, 3 canceled, 4 no such job, 5 other API error (2 is a
    usage error). With --json, prints the final job.
    """
    from kelpie.client import KelpieError, NotFoundError

    live = sys.stdout.isatty() and not api.as_json
    shown = ""
    after = 0
    while True:
        try:
            job = api.client.get_job(job_id)
            attempts = api.client.list_attempts(job_id)
            events = api.client.list_job_events(job_id, after)
        except NotFoundError as exc:
            fail(str(exc), WatchExit.NOT_FOUND)
        except KelpieError as exc:
            fail(str(exc), WatchExit.API_ERROR)
        line = status_line(job, attempts)
        # the job's state first (which job this is), then what happened, then each new state
        changes = [event_line(event) for event in events]
        after = events[-1].id if events else after
        code = _WATCH_EXIT_BY_STATUS.get(job.status)
        if not shown:
            changes.insert(0, line)
        if (shown and line != shown) or (code is not None and changes and changes[-1] != line):
            changes.append(line)  # an ended job's last line is its final state
        shown = line
        if not api.as_json:
            prefix = "\r\x1b[2K" if live else ""
            for change in changes:
                click.echo(prefix + change)
            if live:
                click.echo("\r\x1b[2K" + watch_line(job, attempts, datetime.now(UTC)), nl=False)
        if code is not None:
            break
        time.sleep(interval)
    if live:
        click.echo()
    if api.as_json:
        emit_json(job.to_wire())
    raise click.exceptions.Exit(code)


# -- container groups -------------------------------------------------------------------------


@main.group()
def groups() -> None:
    """Act on all of a container group's jobs."""


@groups.command("purge")
@click.argument("group")
@with_api
def purge_group(api: Api, group: str) -> None:
    """Delete the group's pending jobs and cancel its running ones."""
    count = api.client.purge_group(group)
    api.emit({"count": count}, f"purged {count} job(s) of {group}")

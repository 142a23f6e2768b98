"""The `kelpie` command: server, worker, and the user's tools for jobs.

Every command that talks to the API takes `--api-url` (`KELPIE_API_URL`), `--api-key`
(`KELPIE_API_KEY`) and `--json` (machine-readable output on stdout).

Exit codes:
    0  success
    1  the API refused the call or could not be reached; one line `error: <why>` on stderr
    2  usage error: bad option or argument, unreadable job file, no API key

`kelpie jobs watch` ends when the job does, so its code says how:
    0 completed, 1 failed, 2 usage error, 3 canceled, 4 no such job, 5 any other API error.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, NoReturn

import click
import yaml
from pydantic import ValidationError

from kelpie.client import KelpieClient, KelpieError, NotFoundError
from kelpie.client.config import KEY_ENV, URL_ENV
from kelpie.config import ServerSettings
from kelpie.schemas import JOB_STATUSES, AttemptOut, JobOut, ScalingRuleOut, SyncEntry

DEFAULT_API_URL = "http://127.0.0.1:8787"

EXIT_API_ERROR = 1
EXIT_USAGE = 2


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="kelpie")
def main() -> None:
    """kelpie shepherds long-running jobs to completion on interruptible nodes."""


@main.command()
@click.option("--host", envvar="KELPIE_HOST", show_envvar=True, default="127.0.0.1")
@click.option("--port", envvar="KELPIE_PORT", show_envvar=True, default=8787, type=int)
@click.option(
    "--workers",
    envvar="KELPIE_WORKERS",
    show_envvar=True,
    default=1,
    type=click.IntRange(1, 64),
    help="API processes sharing the port.",
)
@click.option(
    "--database-url",
    envvar="KELPIE_DATABASE_URL",
    show_envvar=True,
    default="sqlite:///./kelpie.db",
    help="sqlite:///path or postgresql://user@host:port/db; migrated on start.",
)
@click.option(
    "--admin-key",
    envvar="KELPIE_ADMIN_KEY",
    show_envvar=True,
    default=None,
    help="An admin user holding this key exists after start (prefer the variable: "
    "flags show in process lists).",
)
@click.option(
    "--max-blocked-jobs",
    envvar="KELPIE_MAX_BLOCKED_JOBS",
    show_envvar=True,
    default=5,
    type=click.IntRange(min=1),
    help="A machine blocked from this many jobs is reallocated.",
)
@click.option(
    "--autoscale-interval",
    envvar="KELPIE_AUTOSCALE_INTERVAL_S",
    show_envvar=True,
    default=300.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between evaluations of the scaling rules.",
)
@click.option(
    "--log-level",
    envvar="KELPIE_LOG_LEVEL",
    show_envvar=True,
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    host: str,
    port: int,
    workers: int,
    database_url: str,
    admin_key: str | None,
    max_blocked_jobs: int,
    autoscale_interval: float,
    log_level: str,
) -> None:
    """Run the coordination API. SaladCloud fleet actions need SALAD_API_KEY (and
    KELPIE_SALAD_API_URL for another endpoint); without it they are only logged."""
    from kelpie.api.server import serve as run_server

    try:
        settings = ServerSettings(
            host=host,
            port=port,
            workers=workers,
            database_url=database_url,
            admin_key=admin_key,
            max_blocked_jobs=max_blocked_jobs,
            autoscale_interval_s=autoscale_interval,
            log_level=log_level,
        )
    except ValidationError as exc:
        raise click.UsageError(describe_settings_error(exc)) from None
    run_server(settings)


def describe_settings_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return f"{field}: {first['msg'].removeprefix('Value error, ')}"


# -- plumbing shared by the API commands ----------------------------------------------------


@dataclass
class Api:
    """What an API command runs with: where the API is, the key, and the output mode."""

    url: str
    key: str | None
    as_json: bool
    _client: KelpieClient | None = field(default=None, repr=False)

    def emit(self, data: Any, human: str | Callable[[], None]) -> None:
        """Print `data` as JSON with --json; otherwise the human text, or call what prints it."""
        if self.as_json:
            emit_json(data)
        elif isinstance(human, str):
            click.echo(human)
        else:
            human()

    @property
    def client(self) -> KelpieClient:
        if self._client is None:
            if not self.key:
                raise click.UsageError(f"no API key: pass --api-key or set {KEY_ENV}")
            try:
                self._client = KelpieClient(self.url, self.key)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--api-url") from exc
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def fail(message: str, code: int = EXIT_API_ERROR) -> NoReturn:
    """One clean line on stderr and a non-zero exit: never a traceback."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def with_api(func: Callable[..., None]) -> Callable[..., None]:
    """Add the connection and output options to a command, hand it an `Api`, and turn every
    `KelpieError` into `error: <message>` with exit code 1."""

    @click.option("--verbose", "-v", is_flag=True, help="Log retries and warnings on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    @click.option(
        "--api-key",
        envvar=KEY_ENV,
        show_envvar=True,
        show_default=False,
        help="API key, sent as X-Kelpie-Key.",
    )
    @click.option(
        "--api-url",
        envvar=URL_ENV,
        show_envvar=True,
        default=DEFAULT_API_URL,
        help="Base URL of the kelpie API (no scheme means https://).",
    )
    @functools.wraps(func)
    def run(api_url: str, api_key: str | None, as_json: bool, verbose: bool, **kwargs: Any) -> None:
        # Without --verbose, stderr carries only the one `error:` line of a failure.
        level = logging.INFO if verbose else logging.CRITICAL
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        api = Api(api_url, api_key, as_json)
        try:
            func(api, **kwargs)
        except KelpieError as exc:
            fail(str(exc))
        finally:
            api.close()

    return run


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def emit_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Left-aligned columns as wide as their widest cell."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def emit_fields(pairs: Iterable[tuple[str, object]]) -> None:
    """`name  value` lines, skipping empty values."""
    shown = [(name, value) for name, value in pairs if value not in (None, "", [], {})]
    width = max((len(name) for name, _ in shown), default=0)
    for name, value in shown:
        click.echo(f"{name.ljust(width)}  {value}")


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- job files and flags ----------------------------------------------------------------------


def load_document(stream: IO[str]) -> Any:
    """A JSON or YAML document, as plain JSON values (YAML dates become strings)."""
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


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """`NAME=VALUE` pairs; the value may itself contain `=`."""
    environment = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--env")
        environment[name] = value
    return environment


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
        }
        merged.update({name: value for name, value in scalars.items() if value is not None})
        if self.arguments:
            merged["arguments"] = list(self.arguments)
        if self.environment:
            base = merged.get("environment")
            merged["environment"] = {
                **(base if isinstance(base, dict) else {}),
                **parse_env(self.environment),
            }
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
        return [flags.apply(item) for item in items]
    if file is None and flags.is_empty():
        raise click.UsageError(
            "give a job FILE, --batch FILE, or the job as flags (--command, --group, ...)"
        )
    document = {} if file is None else load_document(file)
    if not isinstance(document, dict):
        raise click.BadParameter(
            "must hold one job (a mapping); use --batch for a list", param_hint="FILE"
        )
    return [flags.apply(document)]


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
@with_api
def submit_jobs(api: Api, file: IO[str] | None, batch_file: IO[str] | None, **fields: Any) -> None:
    """Queue a job from FILE (JSON or YAML; `-` for stdin), from flags, or both (flags win).

    With --batch, queue every job in the file at once; the flags apply to each. Prints the
    id of each job, or the jobs themselves with --json.
    """
    items = submissions(file, batch_file, JobFlags(**fields))
    if batch_file is None:
        submitted = [api.client.submit_job(items[0])]
    else:
        submitted = api.client.submit_batch(items)
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
@with_api
def list_jobs(
    api: Api, status: Any, container_group_id: str | None, page: int, page_size: int, asc: bool
) -> None:
    """List your jobs, newest first."""
    listing = api.client.list_jobs(status, container_group_id, page, page_size, asc)
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
            ("last exit code", job.last_exit_code),
            ("last error", job.last_error),
        ]
    )


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
    """Every time a machine held the job, and how it ended."""
    attempts = api.client.list_attempts(job_id)
    if api.as_json:
        emit_json([attempt.model_dump(mode="json") for attempt in attempts])
        return
    emit_table(
        ("MACHINE", "STARTED", "ENDED", "OUTCOME", "EXIT CODE"),
        (
            (
                a.machine_id,
                when(a.started),
                when(a.ended),
                a.outcome,
                "-" if a.exit_code is None else str(a.exit_code),
            )
            for a in attempts
        ),
    )


def watch_line(job: JobOut, attempts: Sequence[AttemptOut], now: datetime | None = None) -> str:
    """One status line; with `now`, also how long ago the last heartbeat came."""
    parts = [
        job.id,
        job.status,
        f"machine {job.machine_id or '-'}",
        f"attempts {len(attempts)}",
        f"heartbeats {job.num_heartbeats}",
        f"failures {job.num_failures}/{job.max_failures}",
    ]
    if now is not None and job.status == "running" and job.heartbeat is not None:
        parts.append(f"last beat {max(0, round((now - job.heartbeat).total_seconds()))} s ago")
    return "  ".join(parts)


@jobs.command("watch")
@click.argument("job_id")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, help="Seconds between refreshes."
)
@with_api
def watch_job(api: Api, job_id: str, interval: float) -> None:
    """Follow a job until it ends: status, attempts and heartbeats, refreshed every --interval.

    Exit code: 0 completed, 1 failed, 3 canceled, 4 no such job, 5 other API error (2 is a
    usage error). With --json, prints the final job.
    """
    live = sys.stdout.isatty() and not api.as_json
    shown = ""
    while True:
        try:
            job = api.client.get_job(job_id)
            attempts = api.client.list_attempts(job_id)
        except NotFoundError as exc:
            fail(str(exc), WatchExit.NOT_FOUND)
        except KelpieError as exc:
            fail(str(exc), WatchExit.API_ERROR)
        if live:
            click.echo("\r\x1b[2K" + watch_line(job, attempts, datetime.now(UTC)), nl=False)
        elif not api.as_json and (line := watch_line(job, attempts)) != shown:
            click.echo(line)
            shown = line
        code = _WATCH_EXIT_BY_STATUS.get(job.status)
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


# -- users and keys (admin) -------------------------------------------------------------------


@main.group()
def users() -> None:
    """Manage users (admin key)."""


@users.command("create")
@click.argument("name")
@with_api
def create_user(api: Api, name: str) -> None:
    """Create a user; prints its id (give it a key with `kelpie keys create ID`)."""
    user = api.client.create_user(name)
    api.emit(user.model_dump(mode="json"), user.id)


@users.command("delete-all")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_api
def delete_users(api: Api, yes: bool) -> None:
    """Delete every non-admin user and their keys."""
    if not yes:
        click.confirm("Delete every non-admin user and their API keys?", abort=True, err=True)
    api.client.delete_users()
    message = "deleted every non-admin user"
    api.emit({"message": message}, message)


@main.group()
def keys() -> None:
    """Manage API keys (admin key; a user may list and revoke its own)."""


@keys.command("create")
@click.argument("user_id")
@click.option("--org", "org_name", help="SaladCloud organization the key acts for.")
@click.option("--project", "project_name", help="SaladCloud project the key acts for.")
@with_api
def create_key(api: Api, user_id: str, org_name: str | None, project_name: str | None) -> None:
    """Create an API key for a user. It is printed once and cannot be shown again."""
    token = api.client.create_token(user_id, org_name, project_name)
    api.emit({"token": token}, token)


@keys.command("list")
@click.argument("user_id")
@with_api
def list_keys(api: Api, user_id: str) -> None:
    """List a user's API keys: ids and where they act, never the keys themselves.

    An admin key lists anyone's; any key lists its own user's."""
    tokens = api.client.list_tokens(user_id)
    if api.as_json:
        emit_json([token.model_dump(mode="json") for token in tokens])
        return
    emit_table(
        ("ID", "CREATED", "ORG", "PROJECT", "STATE"),
        (
            (
                t.id,
                when(t.created),
                t.org_name or "-",
                t.project_name or "-",
                ("revoked" if t.revoked else "live")
                + (" (KELPIE_ADMIN_KEY)" if t.bootstrap else ""),
            )
            for t in tokens
        ),
    )


@keys.command("revoke")
@click.argument("user_id")
@click.argument("token_id")
@with_api
def revoke_key(api: Api, user_id: str, token_id: str) -> None:
    """Revoke one of a user's API keys (TOKEN_ID from `kelpie keys list`); it stops working at
    once on the API process that answers, within 5 s on the others."""
    api.client.revoke_token(user_id, token_id)
    message = f"revoked key {token_id}"
    api.emit({"message": message}, message)


@main.command()
@with_api
def whoami(api: Api) -> None:
    """Show the user the API key belongs to (--json adds the webhook secret and token)."""
    me = api.client.me()
    if api.as_json:
        emit_json(me.model_dump(mode="json"))
    else:
        emit_fields(
            [("user", me.username), ("id", me.id), ("admin", "yes" if me.is_admin else "no")]
        )


# -- scaling rules ----------------------------------------------------------------------------


@main.group("scaling-rules")
def scaling_rules() -> None:
    """Scale a container group with the size of its queue."""


def show_rule(rule: ScalingRuleOut) -> None:
    emit_fields(
        [
            ("group", rule.container_group_id),
            ("min replicas", rule.min_replicas),
            ("max replicas", rule.max_replicas),
            ("idle threshold", f"{rule.idle_threshold_seconds} s"),
            ("created", when(rule.created)),
            ("updated", when(rule.updated)),
        ]
    )


def emit_rule(api: Api, rule: ScalingRuleOut) -> None:
    api.emit(rule.model_dump(mode="json"), lambda: show_rule(rule))


@scaling_rules.command("create")
@click.argument("group")
@click.option("--min-replicas", type=int, required=True)
@click.option("--max-replicas", type=int, required=True)
@click.option(
    "--idle-threshold-seconds", type=int, required=True, help="How long ended jobs still count."
)
@with_api
def create_rule(
    api: Api, group: str, min_replicas: int, max_replicas: int, idle_threshold_seconds: int
) -> None:
    """Create the scaling rule of a container group."""
    emit_rule(
        api,
        api.client.create_scaling_rule(
            group,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            idle_threshold_seconds=idle_threshold_seconds,
        ),
    )


@scaling_rules.command("list")
@with_api
def list_rules(api: Api) -> None:
    """List your scaling rules."""
    rules = api.client.list_scaling_rules()
    if api.as_json:
        emit_json([rule.model_dump(mode="json") for rule in rules])
        return
    emit_table(
        ("GROUP", "MIN", "MAX", "IDLE S", "UPDATED"),
        (
            (
                r.container_group_id,
                str(r.min_replicas),
                str(r.max_replicas),
                str(r.idle_threshold_seconds),
                when(r.updated),
            )
            for r in rules
        ),
    )


@scaling_rules.command("get")
@click.argument("group")
@with_api
def get_rule(api: Api, group: str) -> None:
    """Show the scaling rule of a container group."""
    emit_rule(api, api.client.get_scaling_rule(group))


@scaling_rules.command("update")
@click.argument("group")
@click.option("--min-replicas", type=int)
@click.option("--max-replicas", type=int)
@click.option("--idle-threshold-seconds", type=int)
@with_api
def update_rule(
    api: Api,
    group: str,
    min_replicas: int | None,
    max_replicas: int | None,
    idle_threshold_seconds: int | None,
) -> None:
    """Change some fields of a scaling rule."""
    if min_replicas is None and max_replicas is None and idle_threshold_seconds is None:
        raise click.UsageError(
            "nothing to change: give --min-replicas, --max-replicas or --idle-threshold-seconds"
        )
    emit_rule(
        api,
        api.client.update_scaling_rule(
            group,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            idle_threshold_seconds=idle_threshold_seconds,
        ),
    )


@scaling_rules.command("delete")
@click.argument("group")
@with_api
def delete_rule(api: Api, group: str) -> None:
    """Delete the scaling rule of a container group."""
    api.client.delete_scaling_rule(group)
    message = f"deleted the scaling rule of {group}"
    api.emit({"message": message}, message)


# -- the worker and the demo: imported only when run, to keep other commands fast ---------


@main.command()
def worker() -> None:
    """Run the worker agent: poll for jobs of this container group and run them.

    Configured from the environment: KELPIE_API_URL, KELPIE_API_KEY, SALAD_MACHINE_ID,
    SALAD_CONTAINER_GROUP_ID, INPUT_DIR, CHECKPOINT_DIR, OUTPUT_DIR, MAX_TIME_WITH_NO_WORK_S
    (the README lists every setting).
    """
    from kelpie.worker.main import main as run_worker

    raise SystemExit(run_worker())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON at the end.")
def demo(as_json: bool) -> None:
    """Watch a job survive the node running it: API, S3 and two workers on this machine.

    Needs nothing else running and no credentials; cleans up everything it started.
    """
    from kelpie.demo import run_demo

    raise SystemExit(run_demo(as_json=as_json))

"""`kelpie serve`, `kelpie worker`, `kelpie demo` and `kelpie dev`: each imports what it runs
only when run."""

from __future__ import annotations

from pathlib import Path

import click

from kelpie.cli.base import fail, main

# Exit code of a usage or configuration error, as click's own.
EXIT_USAGE = 2


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
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from kelpie.api.server import serve as run_server
    from kelpie.config import ServerSettings
    from kelpie.settings_errors import describe_settings_errors

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
        for line in describe_settings_errors(exc, ServerSettings):
            click.echo(f"error: {line}", err=True)
        raise click.exceptions.Exit(EXIT_USAGE) from None
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)
    run_server(settings)


@main.command()
def worker() -> None:
    """Run the worker agent: poll for jobs of this container group and run them.

    Configured from the environment: KELPIE_API_URL, KELPIE_API_KEY, SALAD_MACHINE_ID,
    SALAD_CONTAINER_GROUP_ID, INPUT_DIR, CHECKPOINT_DIR, OUTPUT_DIR, MAX_TIME_WITH_NO_WORK_S
    (the README lists every setting). Off SaladCloud (no SALAD_MACHINE_ID) only the first
    two are needed: the worker takes a name on this host (KELPIE_WORKER_NAME, default the
    first free w1, w2, ...), its machine id <host>-<name>, its own folders under
    KELPIE_WORKER_HOME/<name>, and the container group `local`.
    """
    from kelpie.worker.main import main as run_worker

    raise SystemExit(run_worker())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the timeline as JSON at the end.")
def demo(as_json: bool) -> None:
    """Watch a job survive the node running it: API, S3 and two workers on this machine.

    Needs nothing else running and no credentials; cleans up everything it started.
    """
    require_local_s3()
    from kelpie.demo import run_demo

    raise SystemExit(run_demo(as_json=as_json))


@main.command()
@click.option(
    "--workers",
    default=2,
    type=click.IntRange(1, 32),
    help="Workers to start, each with its own name, machine id and folders.",
)
@click.option(
    "--port",
    envvar="KELPIE_PORT",
    show_envvar=True,
    default=8787,
    type=click.IntRange(0, 65535),
    help="Port of the API (0: any free port).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep everything in this folder, and find it there next time [a temporary folder, "
    "removed at the end].",
)
@click.option(
    "--group",
    help="The container group the workers take jobs from [the workers' default: local].",
)
def dev(workers: int, port: int, directory: Path | None, group: str | None) -> None:
    """Run kelpie on this machine to try your own jobs: the API (SQLite), a local S3 server
    with the bucket `kelpie-dev`, and --workers workers in container group `local`.

    Prints the environment to use in another terminal, then the workers' output. Ctrl-C
    stops everything it started. Needs kelpie's `local` extra (the S3 server).
    """
    require_local_s3()
    from dataclasses import replace

    from kelpie.demo.dev import DevError, DevSettings, run_dev
    from kelpie.storage.local_server import LocalServerError

    try:
        settings = DevSettings(workers, port, directory)
        code = run_dev(replace(settings, group=group) if group else settings)
    except (DevError, LocalServerError) as exc:
        fail(str(exc))
    raise SystemExit(code)


def require_local_s3() -> None:
    """Stop at once, with how to install it, when the local S3 server's binary is missing."""
    from kelpie.storage.local_server import LocalServerError, find_weed_binary

    try:
        find_weed_binary()
    except LocalServerError as exc:
        fail(str(exc))

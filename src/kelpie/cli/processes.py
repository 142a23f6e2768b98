"""`kelpie serve`, `kelpie worker` and `kelpie demo`: each imports what it runs only when run."""

from __future__ import annotations

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

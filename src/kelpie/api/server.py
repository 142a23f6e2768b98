"""`kelpie serve`: runs the API under uvicorn, in one or several processes."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

import uvicorn
from fastapi import FastAPI

from kelpie.api.app import create_app
from kelpie.api.http_protocol import DeadlineHttpProtocol
from kelpie.api.metrics import MULTIPROCESS_DIR_ENV
from kelpie.config import ServerSettings

HTTP_PROTOCOL = f"{DeadlineHttpProtocol.__module__}:{DeadlineHttpProtocol.__name__}"


def app_from_env() -> FastAPI:
    """Factory for uvicorn's worker processes: settings come from KELPIE_* variables."""
    settings = ServerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # uvicorn builds the app before it accepts connections, so every connection of this
    # process gets these deadlines.
    DeadlineHttpProtocol.configure(settings.header_timeout_s, settings.idle_timeout_s)
    return create_app(settings)


def serve(settings: ServerSettings) -> None:
    """Run the API. Settings travel to uvicorn's processes through the environment, so a flag
    given on the command line reaches every one of them."""
    for name, value in settings.model_dump().items():
        variable = f"KELPIE_{name.upper()}"
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = str(value)
    # Several processes pool their per-process metrics in one fresh directory, so a scrape
    # answered by any of them sums all (prometheus_client's multiprocess mode).
    metrics_dir = tempfile.mkdtemp(prefix="kelpie-metrics-") if settings.workers > 1 else None
    if metrics_dir is not None:
        os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
    try:
        _run_uvicorn(settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_uvicorn(settings: ServerSettings) -> None:
    uvicorn.run("kelpie.api.server:app_from_env", **uvicorn_options(settings))


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """How kelpie runs uvicorn on an app factory: event loop, HTTP protocol, processes.
    bench/bench_api.py serves its no-op ceiling with exactly these, to compare like for like."""
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "loop": "uvloop",
        "http": HTTP_PROTOCOL,
        "timeout_keep_alive": settings.idle_timeout_s,
        "access_log": False,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": 5,
    }

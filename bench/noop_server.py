"""The ceiling `bench_api.py` compares kelpie with: a FastAPI app with one no-op endpoint, served
by uvicorn with exactly the options, HTTP protocol and process model of `kelpie serve`.

    .venv/bin/python -m bench.noop_server --port PORT

`GET /noop` answers a small JSON object and does nothing else: no middleware, no dependency, no
store. Whatever kelpie answers slower than this on the same machine, in the same run, is the cost
of kelpie's own request path (its middlewares, authentication, validation and store).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kelpie.api.http_protocol import DeadlineHttpProtocol  # noqa: E402
from kelpie.api.server import uvicorn_options  # noqa: E402
from kelpie.config import ServerSettings  # noqa: E402

NOOP_PATH = "/noop"


def noop_app() -> FastAPI:
    """The app factory uvicorn calls in each process (as `kelpie serve` calls its own)."""
    settings = ServerSettings()
    DeadlineHttpProtocol.configure(settings.header_timeout_s, settings.idle_timeout_s)
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get(NOOP_PATH)
    async def noop() -> JSONResponse:
        return JSONResponse({"status": "running"})

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = ServerSettings(
        host="127.0.0.1", port=args.port, workers=args.workers, log_level="warning"
    )
    uvicorn.run("bench.noop_server:noop_app", **uvicorn_options(settings))


if __name__ == "__main__":
    main()

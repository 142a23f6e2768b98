"""A real webhook receiver process, written as docs/webhooks.md tells users to write one.

    python -m tests.support.webhook_receiver --port P --secret whsec_... --out FILE
        [--token kwh_...] [--fail-until EPOCH | --status 500]

Every POST is verified with the `standardwebhooks` reference library (signature and a 5 min
timestamp tolerance) and, with `--token`, its `X-Kelpie-Key`: a delivery that fails answers
401. A verified one answers 204, or 500 until `--fail-until` (unix seconds), or `--status`.
Every request, whatever the answer, is appended to FILE as one JSON line: `received_at`
(unix seconds), `answered`, `verified`, `error`, `webhook_id`, `headers`, `body`, `payload`.
`GET` answers 200, so a starter can tell the receiver is up.

`ReceiverProcess` starts and stops it from tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import standardwebhooks

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ReceiverConfig:
    secret: str
    token: str | None
    fail_until: float | None
    status: int | None


def answer_for(config: ReceiverConfig, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
    """The documented receiver: 401 unless authentic and fresh, else 2xx (or a forced error)."""
    try:
        standardwebhooks.Webhook(config.secret).verify(body, dict(headers))
    except standardwebhooks.WebhookVerificationError as exc:
        return 401, str(exc)
    if config.token is not None and headers.get("x-kelpie-key") != config.token:
        return 401, "X-Kelpie-Key is not the user's webhook token"
    if config.status is not None:
        return config.status, ""
    if config.fail_until is not None and time.time() < config.fail_until:
        return 500, ""
    return 204, ""


_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized"}


def _response(status: int) -> bytes:
    reason = _REASONS.get(status, "Error")
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n".encode()


class Receiver:
    """A single-threaded asyncio HTTP/1.1 server (keep-alive) that answers and records."""

    def __init__(self, config: ReceiverConfig, out: BinaryIO) -> None:
        self._config = config
        self._out = out

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while await self._serve_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the sender went away or spoke nonsense: drop the connection
        except asyncio.CancelledError:
            pass  # shutting down: the connection ends with the process
        finally:
            writer.close()

    async def _serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """One request; False when the sender closed the connection."""
        head = await reader.readuntil(b"\r\n\r\n")
        received_at = time.time()
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method = request_line.split(" ", 1)[0]
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        if method != "POST":
            writer.write(_response(200))
        else:
            status, error = answer_for(self._config, headers, body)
            writer.write(_response(status))
            self._record(received_at, status, error, headers, body)
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    def _record(
        self, received_at: float, status: int, error: str, headers: dict[str, str], body: bytes
    ) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        line = {
            "received_at": received_at,
            "answered": status,
            "verified": status != 401,
            "error": error or None,
            "webhook_id": headers.get("webhook-id"),
            "headers": headers,
            "body": body.decode(errors="replace"),
            "payload": payload,
        }
        self._out.write((json.dumps(line) + "\n").encode())
        self._out.flush()


async def serve(port: int, config: ReceiverConfig, out: BinaryIO) -> None:
    receiver = Receiver(config, out)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(receiver.serve_connection, "127.0.0.1", port, backlog=256)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="the user's whsec_... webhook secret")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per request")
    parser.add_argument("--token", help="the user's webhook token expected in X-Kelpie-Key")
    faults = parser.add_mutually_exclusive_group()
    faults.add_argument("--fail-until", type=float, help="answer 500 until this unix time")
    faults.add_argument("--status", type=int, help="answer this status to every delivery")
    args = parser.parse_args(argv)
    config = ReceiverConfig(args.secret, args.token, args.fail_until, args.status)
    with args.out.open("ab") as out:
        asyncio.run(serve(args.port, config, out))


# -- for tests and benchmarks -----------------------------------------------------------------


@dataclass
class ReceiverProcess:
    """A running receiver: its URL and what it has recorded so far."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def records(self) -> list[dict[str, Any]]:
        """Every request recorded so far (a trailing half-written line is left for later)."""
        if not self.out.exists():
            return []
        lines = self.out.read_bytes().split(b"\n")[:-1]
        return [json.loads(line) for line in lines]

    def accepted(self) -> list[dict[str, Any]]:
        """The deliveries it verified and acknowledged with 2xx."""
        return [r for r in self.records() if r["verified"] and 200 <= r["answered"] < 300]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_receiver(
    port: int,
    secret: str,
    out: Path,
    *,
    token: str | None = None,
    fail_until: float | None = None,
    status: int | None = None,
    timeout: float = 20.0,
) -> ReceiverProcess:
    """Start the receiver process and wait until it answers."""
    command = [sys.executable, "-m", "tests.support.webhook_receiver"]
    command += ["--port", str(port), "--secret", secret, "--out", str(out)]
    if token is not None:
        command += ["--token", token]
    if fail_until is not None:
        command += ["--fail-until", str(fail_until)]
    if status is not None:
        command += ["--status", str(status)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True)
    receiver = ReceiverProcess(proc, port, out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"webhook receiver exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0).status_code == 200:
                return receiver
        except httpx.TransportError:
            time.sleep(0.05)
    receiver.stop()
    raise TimeoutError(f"webhook receiver on port {port} did not start within {timeout} s")


if __name__ == "__main__":
    main()

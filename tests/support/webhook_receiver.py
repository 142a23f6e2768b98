"""A real webhook receiver process, written as docs/webhooks.md tells users to write one.

    python -m tests.support.webhook_receiver --port P --secret whsec_... --out FILE
        [--host 127.0.0.1] [--token kwh_...]
        [--fail-until EPOCH | --status 500 | --never-answer | --hang-up
         | --huge-body BYTES | --redirect URL]

Every POST is verified with the `standardwebhooks` reference library (signature and a 5 min
timestamp tolerance) and, with `--token`, its `X-Kelpie-Key`: a delivery that fails answers
401. A verified one answers 204, or 500 until `--fail-until` (unix seconds), or `--status`.
Misbehaving receivers, whatever the delivery: `--never-answer` reads it and then keeps the
connection open without a word; `--hang-up` closes the connection without answering;
`--huge-body` answers 200 with a body of BYTES, streamed, and appends to FILE.answers how much
of it went out before the sender hung up; `--redirect` answers 302 to URL.
Every request, whatever the answer, is appended to FILE as one JSON line: `received_at`
(unix seconds), `answered` (0: not answered), `verified`, `error`, `webhook_id`, `headers`,
`body`, `payload`. `GET` answers 200, so a starter can tell the receiver is up.

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
    never_answer: bool = False
    hang_up: bool = False
    huge_body: int | None = None
    redirect: str | None = None


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


_REASONS = {200: "OK", 204: "No Content", 302: "Found", 400: "Bad Request", 401: "Unauthorized"}
_CHUNK = b"\0" * 65536


def _response(status: int, headers: str = "", length: int = 0) -> bytes:
    reason = _REASONS.get(status, "Error")
    return f"HTTP/1.1 {status} {reason}\r\n{headers}Content-Length: {length}\r\n\r\n".encode()


class Receiver:
    """A single-threaded asyncio HTTP/1.1 server (keep-alive) that answers and records."""

    def __init__(self, config: ReceiverConfig, out: BinaryIO, answers: Path) -> None:
        self._config = config
        self._out = out
        self._answers = answers

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
        config = self._config
        if method != "POST":
            writer.write(_response(200))
        elif config.never_answer or config.hang_up:
            self._record(received_at, 0, "not answered", headers, body)
            if config.never_answer:
                await reader.read()  # until the sender gives up
            return False
        elif config.redirect is not None:
            writer.write(_response(302, f"Location: {config.redirect}\r\n"))
            self._record(received_at, 302, "", headers, body)
        elif config.huge_body is not None:
            self._record(received_at, 200, "", headers, body)
            await self._stream_huge_body(writer, headers.get("webhook-id"), config.huge_body)
            return False
        else:
            status, error = answer_for(config, headers, body)
            writer.write(_response(status))
            self._record(received_at, status, error, headers, body)
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    async def _stream_huge_body(
        self, writer: asyncio.StreamWriter, webhook_id: str | None, size: int
    ) -> None:
        writer.write(_response(200, "Content-Type: application/octet-stream\r\n", size))
        sent, complete = 0, False
        try:
            while sent < size:
                chunk = _CHUNK[: size - sent]
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            complete = True
        except ConnectionError:
            pass  # the sender hung up
        finally:
            line = {"webhook_id": webhook_id, "body_bytes_sent": sent, "complete": complete}
            with self._answers.open("a") as answers:
                answers.write(json.dumps(line) + "\n")

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


async def serve(host: str, port: int, config: ReceiverConfig, out: BinaryIO, answers: Path) -> None:
    receiver = Receiver(config, out, answers)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(receiver.serve_connection, host, port, backlog=256)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="the user's whsec_... webhook secret")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per request")
    parser.add_argument("--token", help="the user's webhook token expected in X-Kelpie-Key")
    faults = parser.add_mutually_exclusive_group()
    faults.add_argument("--fail-until", type=float, help="answer 500 until this unix time")
    faults.add_argument("--status", type=int, help="answer this status to every delivery")
    faults.add_argument("--never-answer", action="store_true", help="read, never answer")
    faults.add_argument("--hang-up", action="store_true", help="read, close without answer")
    faults.add_argument("--huge-body", type=int, metavar="BYTES", help="answer this much body")
    faults.add_argument("--redirect", metavar="URL", help="answer 302 to this URL")
    args = parser.parse_args(argv)
    config = ReceiverConfig(
        args.secret,
        args.token,
        args.fail_until,
        args.status,
        never_answer=args.never_answer,
        hang_up=args.hang_up,
        huge_body=args.huge_body,
        redirect=args.redirect,
    )
    with args.out.open("ab") as out:
        asyncio.run(serve(args.host, args.port, config, out, answers_path(args.out)))


def answers_path(out: Path) -> Path:
    """Where `--huge-body` notes how much of each answer went out."""
    return out.with_name(out.name + ".answers")


# -- for tests and benchmarks -----------------------------------------------------------------


@dataclass
class ReceiverProcess:
    """A running receiver: its URL and what it has recorded so far."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/hook"

    def answers(self) -> list[dict[str, Any]]:
        """`--huge-body`: for each answer, how much of its body went out."""
        path = answers_path(self.out)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

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
    never_answer: bool = False,
    hang_up: bool = False,
    huge_body: int | None = None,
    redirect: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 20.0,
) -> ReceiverProcess:
    """Start the receiver process and wait until it answers."""
    command = [sys.executable, "-m", "tests.support.webhook_receiver"]
    command += ["--host", host, "--port", str(port), "--secret", secret, "--out", str(out)]
    if token is not None:
        command += ["--token", token]
    if fail_until is not None:
        command += ["--fail-until", str(fail_until)]
    if status is not None:
        command += ["--status", str(status)]
    if never_answer:
        command += ["--never-answer"]
    if hang_up:
        command += ["--hang-up"]
    if huge_body is not None:
        command += ["--huge-body", str(huge_body)]
    if redirect is not None:
        command += ["--redirect", redirect]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True)
    receiver = ReceiverProcess(proc, port, out, host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"webhook receiver exited with {proc.returncode}")
        try:
            if httpx.get(receiver.url.removesuffix("hook"), timeout=1.0).status_code == 200:
                return receiver
        except httpx.TransportError:
            time.sleep(0.05)
    receiver.stop()
    raise TimeoutError(f"webhook receiver on port {port} did not start within {timeout} s")


if __name__ == "__main__":
    main()

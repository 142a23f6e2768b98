"""Request limits of a real `kelpie serve`: the body cap is answered 413 before the body is
read, a full batch of ordinary jobs still fits, and clients too slow to send a request are
disconnected."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kelpie.schemas import MAX_BATCH
from tests.support.api import Api, ApiUser, new_admin_key
from tests.support.processes import ServerProcess, start_server

MiB = 1024 * 1024
HEADER_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 1
# Far beyond either deadline: a connection still open then was never going to be closed.
CLOSE_DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def server(
    fresh_database_url: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server of its own: its memory is measured, and its deadlines are short."""
    process = start_server(
        fresh_database_url("sqlite"),
        new_admin_key(),
        tmp_path_factory.mktemp("limits") / "logs",
        extra_env={
            "KELPIE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "KELPIE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        },
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def limits_api(server: ServerProcess) -> Iterator[Api]:
    api = Api(server, "sqlite")
    yield api
    api.close()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak_memory(pid: int) -> None:
    """From now on VmHWM (the peak resident size) counts from the current size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _hundred_mib_of_json() -> bytes:
    return b"[" + b" " * (100 * MiB) + b"]"


def _chunks(body: bytes, size: int = MiB) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_hundred_mib_body_is_refused_without_growing_the_server(
    server: ServerProcess, limits_api: Api, framing: str
) -> None:
    user = limits_api.new_user()
    pid = server.proc.pid
    body = _hundred_mib_of_json()
    content: bytes | Iterator[bytes] = body if framing == "content-length" else _chunks(body)
    _reset_peak_memory(pid)
    before_kib = _status_kib(pid, "VmRSS")

    response = user.http.post(
        "/jobs/batch", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413, response.text
    error = response.json()
    assert error["error"] == "Payload Too Large"
    assert "KELPIE_MAX_BODY_BYTES" in error["message"]
    assert _status_kib(pid, "VmHWM") - before_kib < 20 * 1024
    assert user.http.get("/jobs").json()["_count"] == 0
    assert user.http.get("/health").status_code == 200


def _ordinary_job(group: str, n: int) -> dict[str, Any]:
    return {
        "command": "python",
        "arguments": ["train.py", "--config", f"configs/run-{n}.yaml", "--epochs", "90"],
        "environment": {"SEED": str(n), "WANDB_PROJECT": "render-farm", "LOG_LEVEL": "info"},
        "checkpoint_bucket": "acme-training",
        "checkpoint_prefix": f"runs/2026-11/run-{n}/checkpoints",
        "output_bucket": "acme-training",
        "output_prefix": f"runs/2026-11/run-{n}/outputs",
        "container_group_id": group,
        "max_failures": 5,
        "heartbeat_interval": 30,
    }


def test_a_full_batch_of_ordinary_jobs_fits(user: ApiUser, group: str) -> None:
    batch = [_ordinary_job(group, n) for n in range(MAX_BATCH)]

    response = user.http.post("/jobs/batch", json=batch)

    assert response.status_code == 202, response.text[:500]
    assert len(response.json()) == MAX_BATCH


def _connect(server: ServerProcess) -> socket.socket:
    url = httpx.URL(server.url)
    assert url.port is not None
    sock = socket.create_connection((url.host, url.port), timeout=CLOSE_DEADLINE_S)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Waits (up to the socket's timeout) for the server to close the connection."""
    try:
        while data := sock.recv(4096):
            assert not data.startswith(b"HTTP/1.1 2"), data  # no request should succeed
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_headers_sent_a_line_at_a_time_are_cut_off(server: ServerProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: kelpie\r\n")
        started = time.monotonic()
        closed = False
        sock.settimeout(HEADER_TIMEOUT_S / 4)  # a slow client's pace, one header at a time
        while not closed and time.monotonic() - started < CLOSE_DEADLINE_S:
            try:
                sock.sendall(b"X-Still-Coming: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = _closed_by_server(sock)

        assert closed, "a client trickling headers kept its connection"


def test_a_connection_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    with _connect(server) as sock:
        assert _closed_by_server(sock)


def test_a_stalled_body_is_cut_off(server: ServerProcess, limits_api: Api) -> None:
    user = limits_api.new_user()
    with _connect(server) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: kelpie\r\nContent-Type: application/json\r\n"
            + f"X-Kelpie-Key: {user.key}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"command": '
        )

        assert _closed_by_server(sock)
    assert user.http.get("/jobs").json()["_count"] == 0


def test_a_prompt_client_is_served_after_the_deadlines(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/health").status_code == 200  # the same connection, kept alive

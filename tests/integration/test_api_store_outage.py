"""A real `kelpie serve` living through a PostgreSQL outage, on a PostgreSQL server the test
starts and stops itself (never the shared one): 503s in the one error shape while the
database is down, recovery by itself when it is back, in every API process (also one
restarted during the outage), and nothing acknowledged is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import Api, ApiUser, new_admin_key
from tests.support.processes import ServerProcess, descendants, start_server
from tests.support.throwaway_postgres import ThrowawayPostgres, postgres_bin
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(postgres_bin() is None, reason="no PostgreSQL binaries to run one"),
]

# Time for a restarted API process to start, or for the API to notice the database is back.
DEADLINE_S = 60.0


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def _fresh(url: str, path: str, key: str | None = None, timeout: float = 10.0) -> httpx.Response:
    """One request on a connection of its own, so each may land on any API process."""
    headers = {"Connection": "close", **({"X-Kelpie-Key": key} if key else {})}
    return httpx.get(f"{url}{path}", headers=headers, timeout=timeout)


def _assert_store_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == "Service Unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def _worker_processes(server: ServerProcess) -> set[int]:
    """The API processes uvicorn's supervisor runs (children it spawned; not the resource
    tracker multiprocessing starts beside them)."""
    processes = set()
    for pid in descendants(server.proc.pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                processes.add(pid)
    return processes


def _two_processes(server: ServerProcess) -> set[int] | None:
    processes = _worker_processes(server)
    return processes if len(processes) == 2 else None


def _submit_until_refused(user: ApiUser, group: str, acknowledged: list[str]) -> httpx.Response:
    """Submits until one answer is not a 202; every 202 is recorded as acknowledged."""
    while True:
        response = user.http.post("/jobs", json={"command": "x", "container_group_id": group})
        if response.status_code != 202:
            return response
        acknowledged.append(response.json()["id"])


def _answer_from(
    process: int, others: set[int], url: str, path: str, key: str | None = None
) -> httpx.Response | None:
    """`process`'s answer to one request, or None if it gave none in time (still starting).

    The other API processes are paused meanwhile, so they accept no connection; briefly,
    since uvicorn's supervisor restarts a process that does not answer its pings for 5 s."""
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        return _fresh(url, path, key, timeout=1.5)
    except httpx.TimeoutException:
        return None
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def test_outage_answers_503_then_every_process_recovers_and_nothing_is_lost(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    server = start_server(
        postgres.create_database("kelpie"), new_admin_key(), tmp_path / "logs", workers=2
    )
    api = Api(server, "postgres")
    try:
        user, group = api.new_user(), f"group-{uuid.uuid4().hex[:8]}"
        acknowledged: list[str] = []
        for _ in range(20):
            acknowledged.append(user.submit(container_group_id=group)["id"])
        survivor, doomed = sorted(
            wait_for(lambda: _two_processes(server), "two API processes", timeout=DEADLINE_S)
        )
        log_lines_before = len(server.log().splitlines())

        postgres.stop()

        _assert_store_unavailable(_submit_until_refused(user, group, acknowledged))
        failures = [user.http.get(f"/jobs/{acknowledged[0]}") for _ in range(40)]
        for response in failures:
            _assert_store_unavailable(response)
        wait_for(lambda: _fresh(server.url, "/health").status_code == 503, "health to say 503")

        # A process killed now is restarted by uvicorn's supervisor while the database is
        # down: it must start (and serve 503s) instead of failing and taking the API down.
        os.kill(doomed, signal.SIGKILL)
        restarted = wait_for(
            lambda: next(iter(_worker_processes(server) - {survivor, doomed}), None),
            "uvicorn to restart the killed process",
            timeout=DEADLINE_S,
        )
        _assert_store_unavailable(
            wait_for(
                lambda: _answer_from(restarted, {survivor}, server.url, "/jobs", user.key),
                "the restarted process to serve",
                timeout=DEADLINE_S,
                interval=0.5,
            )
        )
        assert server.proc.poll() is None, "the supervisor gave up"

        postgres.start()

        wait_for(
            lambda: _fresh(server.url, "/health").status_code == 200,
            "the API to notice the database is back",
            timeout=DEADLINE_S,
        )
        for process, others in ((survivor, {restarted}), (restarted, {survivor})):

            def recovered(process: int = process, others: set[int] = others) -> bool:
                path = f"/jobs/{acknowledged[-1]}"
                answer = _answer_from(process, others, server.url, path, user.key)
                return answer is not None and answer.status_code == 200

            wait_for(recovered, f"process {process} to recover", timeout=DEADLINE_S, interval=0.5)
        for job_id in acknowledged:
            assert user.http.get(f"/jobs/{job_id}").status_code == 200, job_id
        assert user.submit(container_group_id=group)["status"] == "pending"

        # The outage is in the log a few times (its start and end, per process), not once
        # per refused request, and without a traceback.
        outage_log = server.log().splitlines()[log_lines_before:]
        assert len(outage_log) < len(failures) / 2, "\n".join(outage_log)
        assert not [line for line in outage_log if "Traceback" in line]
    finally:
        api.close()
        server.stop()


def test_a_process_started_while_the_database_is_down_waits_for_it(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    database = postgres.create_database("kelpie")
    postgres.stop()
    admin_key = new_admin_key()
    server = start_server(database, admin_key, tmp_path / "logs", wait_until_ready=False)
    try:

        def answer() -> httpx.Response | None:
            with contextlib.suppress(httpx.TransportError):
                return _fresh(server.url, "/health")
            return None

        _assert_store_unavailable(wait_for(answer, "the API to answer", timeout=DEADLINE_S))
        # Not 403: until the database is reached, no key (the admin's neither) is judged.
        _assert_store_unavailable(_fresh(server.url, "/users/me", admin_key))

        postgres.start()

        wait_for(
            lambda: _fresh(server.url, "/health").status_code == 200,
            "the API to reach the database",
            timeout=DEADLINE_S,
        )
        me = _fresh(server.url, "/users/me", admin_key)
        assert me.status_code == 200 and me.json()["is_admin"] is True
    finally:
        server.stop()

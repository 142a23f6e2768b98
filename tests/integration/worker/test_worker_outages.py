"""Outages of the API and of the bucket cost no job its holder and count no failure."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.api import Api
from tests.support.processes import ServerProcess, start_server
from tests.support.waiting import wait_for
from tests.support.worker import WorkerLab, new_user

pytestmark = pytest.mark.slow

INTERVAL = 2  # heartbeat_interval of the jobs: a holder is stalled after 4 s of silence


def own_server(
    lab: WorkerLab, database_url: str, tmp_path: Path, workers: int = 1
) -> ServerProcess:
    """Point the lab at a server of its own, which the test may stop and restart."""
    server = start_server(
        database_url, f"admin-{uuid.uuid4().hex}", tmp_path / "logs", workers=workers
    )
    lab.user.http.close()
    lab.api_url, lab.user = server.url, new_user(Api(server, "own"))
    return server


def restart(server: ServerProcess, tmp_path: Path, workers: int) -> ServerProcess:
    port = int(server.url.rsplit(":", 1)[1])
    return start_server(
        server.database_url, server.admin_key, tmp_path / "logs", port=port, workers=workers
    )


def holders(lab: WorkerLab, job_ids: list[str]) -> list[list[tuple[str, str]]]:
    """Each job's attempts as (machine, outcome)."""
    return [
        [(a["machine_id"], a["outcome"]) for a in lab.user.http.get(f"/jobs/{j}/attempts").json()]
        for j in job_ids
    ]


@pytest.mark.parametrize(("backend", "api_processes"), [("sqlite", 1), ("postgres", 2)])
def test_an_api_outage_longer_than_two_intervals_moves_no_job(
    lab: WorkerLab,
    tmp_path: Path,
    fresh_database_url: Callable[[str], str],
    backend: str,
    api_processes: int,
) -> None:
    server = own_server(lab, fresh_database_url(backend), tmp_path, api_processes)
    try:
        jobs = [
            lab.submit(
                "count.py",
                heartbeat_interval=INTERVAL,
                environment={"COUNT_TO": "100000", "STEP_S": "0.2"},
            )["id"]
            for _ in range(3)
        ]
        for name in ("holder-1", "holder-2", "holder-3"):
            lab.start_worker(name)
        wait_for(
            lambda: all(lab.job(j)["status"] == "running" for j in jobs) or None,
            "3 jobs running",
        )
        before = holders(lab, jobs)
        for name in ("idle-1", "idle-2"):
            lab.start_worker(name)

        beats = [lab.job(j)["num_heartbeats"] for j in jobs]
        server.stop()
        time.sleep(3 * INTERVAL)  # the outage itself: longer than a lease
        server = restart(server, tmp_path, api_processes)

        # Every holder beats again within an interval; the idle workers, polling all along,
        # must find nothing to take, now or once the extended leases have run out.
        wait_for(
            lambda: (
                all(lab.job(j)["num_heartbeats"] > b for j, b in zip(jobs, beats, strict=True))
                or None
            ),
            "holders beating again",
        )
        watch_until = time.monotonic() + 3 * INTERVAL
        while time.monotonic() < watch_until:
            assert holders(lab, jobs) == before
            time.sleep(0.25)
        assert [lab.job(j)["num_failures"] for j in jobs] == [0, 0, 0]
    finally:
        lab.stop_all()
        server.stop()

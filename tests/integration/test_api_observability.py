"""Observability over HTTP, against a real `kelpie serve` on each backend: the submission
fields `logs_prefix` and `stall_timeout`, progress sent with heartbeats, stall timeouts
enforced by the API's upkeep, why a pending job waits, and `GET /workers`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from kelpie.schemas import WORKER_VERSION_HEADER
from tests.support.api import Api, ApiUser
from tests.support.store_sql import set_columns
from tests.support.waiting import wait_for


def kelpie_worker(job: dict[str, Any]) -> dict[str, Any]:
    """What kelpie's worker adds to its reports: the claim's attempt id."""
    return {"attempt_id": job["attempt_id"]}


def events(user: ApiUser, job_id: str) -> list[dict[str, Any]]:
    response = user.http.get(f"/jobs/{job_id}/events")
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()
    return listed


def workers(user: ApiUser, **params: Any) -> list[dict[str, Any]]:
    response = user.http.get("/workers", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["_count"] == len(body["workers"])
    listed: list[dict[str, Any]] = body["workers"]
    return listed


def job_count(user: ApiUser, group: str) -> int:
    response = user.http.get("/jobs", params={"container_group_id": group})
    assert response.status_code == 200, response.text
    count: int = response.json()["_count"]
    return count


# -- submission fields ------------------------------------------------------------------------


def test_logs_prefix_and_stall_timeout_are_kept_and_shown(user: ApiUser, group: str) -> None:
    job = user.submit(
        container_group_id=group, logs_prefix="s3://my-logs/runs/1", stall_timeout=600
    )

    assert (job["logs_prefix"], job["stall_timeout"]) == ("s3://my-logs/runs/1/", 600)
    assert (job["progress"], job["progress_updated_at"]) == (None, None)
    fetched = user.job(job["id"])
    assert (fetched["logs_prefix"], fetched["stall_timeout"]) == ("s3://my-logs/runs/1/", 600)
    plain = user.submit(container_group_id=group)
    assert (plain["logs_prefix"], plain["stall_timeout"]) == (None, None)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"logs_prefix": "gs://bucket/prefix"}, "logs_prefix"),
        ({"logs_prefix": "s3:///prefix"}, "logs_prefix"),
        ({"logs_prefix": "my-logs/runs"}, "logs_prefix"),
        ({"logs_prefix": 7}, "logs_prefix"),
        ({"stall_timeout": 0}, "stall_timeout"),
        ({"stall_timeout": "60"}, "stall_timeout"),
        ({"stall_timeout": 40, "heartbeat_interval": 30}, "stall_timeout"),
    ],
)
def test_bad_observability_fields_are_a_400_naming_them_and_queue_nothing(
    user: ApiUser, group: str, fields: dict[str, Any], field: str
) -> None:
    response = user.http.post(
        "/jobs", json={"command": "python", "container_group_id": group, **fields}
    )

    assert response.status_code == 400, response.text
    assert field in response.json()["message"]
    assert job_count(user, group) == 0


# -- progress ---------------------------------------------------------------------------------


def test_progress_sent_with_heartbeats_is_shown_with_milestone_events(
    user: ApiUser, group: str
) -> None:
    job = user.submit(container_group_id=group)
    claimed = user.claim("m1", group)
    assert claimed is not None
    progress = {"step": 1200, "total": 5000, "message": "epoch 3"}

    beat = user.report(
        job["id"], "heartbeat", "m1", group, progress=progress, **kelpie_worker(claimed)
    )

    assert beat.status_code == 200, beat.text
    assert beat.json() == {"status": "running"}
    shown = user.job(job["id"])
    assert shown["progress"] == progress
    assert shown["progress_updated_at"] is not None
    [event] = [e for e in events(user, job["id"]) if e["kind"] == "progress"]
    assert (event["data"], event["machine_id"], event["attempt_id"]) == (
        progress,
        "m1",
        claimed["attempt_id"],
    )
    # a few more steps within the same tenth and message: progress moves, no new event
    for step in (1210, 1300, 1400):
        user.report(
            job["id"], "heartbeat", "m1", group, progress={**progress, "step": step}
        ).raise_for_status()
    assert user.job(job["id"])["progress"]["step"] == 1400
    assert [e["kind"] for e in events(user, job["id"])].count("progress") == 1


@pytest.mark.parametrize(
    "progress",
    [
        {"message": "x" * 5000},
        [1, 2, 3],
        "epoch 3",
    ],
)
def test_bad_progress_is_a_400_and_changes_nothing(
    user: ApiUser, group: str, progress: Any
) -> None:
    job = user.submit(container_group_id=group)
    claimed = user.claim("m1", group)
    assert claimed is not None
    beats = user.job(job["id"])["num_heartbeats"]

    response = user.report(
        job["id"], "heartbeat", "m1", group, progress=progress, **kelpie_worker(claimed)
    )

    assert response.status_code == 400, response.text
    assert "progress" in response.json()["message"]
    after = user.job(job["id"])
    assert (after["progress"], after["num_heartbeats"]) == (None, beats)


# -- stall_timeout ----------------------------------------------------------------------------


def test_the_api_stops_a_job_that_beats_without_progress(
    api: Api, user: ApiUser, group: str
) -> None:
    job = user.submit(container_group_id=group, stall_timeout=60, heartbeat_interval=1)
    claimed = user.claim("m1", group)
    assert claimed is not None
    assert user.report(job["id"], "heartbeat", "m1", group, **kelpie_worker(claimed)).is_success

    # a minute without progress, written straight into the database instead of waited for
    asyncio.run(
        set_columns(
            api.server.database_url, "jobs", {"id": job["id"]}, {"stall_deadline": time.time() - 1}
        )
    )
    stopped = wait_for(
        lambda: (j := user.job(job["id"]))["status"] == "pending" and j,
        "the upkeep loop to stop the stalled job",
        timeout=15,
    )

    assert stopped["last_error"].startswith("stalled")
    assert (stopped["num_failures"], stopped["machine_id"]) == (1, None)
    # the holder's next beat is refused, so it kills the command; the reference worker's
    # beat answers the status instead
    refused = user.report(job["id"], "heartbeat", "m1", group, **kelpie_worker(claimed))
    assert refused.status_code == 409, refused.text
    assert user.report(job["id"], "heartbeat", "m1", group).json() == {"status": "pending"}
    [stalled] = [e for e in events(user, job["id"]) if e["kind"] == "stalled"]
    assert stalled["data"]["error"] == stopped["last_error"]
    assert stalled["machine_id"] == "m1"


# -- why a pending job waits ------------------------------------------------------------------


def test_a_pending_job_says_why_it_waits(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, max_failures=3)
    assert user.job(job["id"])["pending_reason"]["reason"] == "no_workers"

    # m1 takes it and fails it: pending again, on no machine, and m1 never gets it again
    claimed = user.claim("m1", group)
    assert claimed is not None
    assert user.job(job["id"])["pending_reason"] is None  # running
    failed = user.report(job["id"], "failed", "m1", group, exit_code=3, error="boom")
    assert failed.status_code == 202, failed.text
    assert user.claim("m1", group) is None
    waiting = user.job(job["id"])
    assert (waiting["status"], waiting["machine_id"]) == ("pending", None)
    assert waiting["pending_reason"]["reason"] == "blocked"
    assert waiting["pending_reason"]["blocked_machines"] == 1

    # a second machine takes a more urgent job: the first waits for its turn, and a less
    # urgent one waits behind it
    urgent = user.submit(container_group_id=group, priority=5)
    later = user.submit(container_group_id=group, priority=-5)
    taken = user.claim("m2", group)
    assert taken is not None and taken["id"] == urgent["id"]
    first = user.job(job["id"])["pending_reason"]
    assert (first["reason"], first["jobs_ahead"], first["machines"]) == ("queued", 0, 2)
    assert (first["blocked_machines"], first["busy_machines"]) == (1, 1)
    behind = user.job(later["id"])["pending_reason"]
    assert (behind["reason"], behind["jobs_ahead"], behind["blocked_machines"]) == ("queued", 1, 0)
    assert "1 job" in behind["message"]


def test_an_interrupted_job_shows_no_machine_while_it_waits(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    claimed = user.claim("m1", group)
    assert claimed is not None

    handed_back = user.report(job["id"], "interrupted", "m1", group, **kelpie_worker(claimed))

    assert handed_back.status_code == 202, handed_back.text
    waiting = user.job(job["id"])
    assert (waiting["status"], waiting["machine_id"]) == ("pending", None)
    assert waiting["pending_reason"]["reason"] == "queued"


# -- GET /workers -----------------------------------------------------------------------------


def test_workers_are_listed_with_their_job_blocks_and_version(
    api: Api, user: ApiUser, group: str
) -> None:
    failing = user.submit(container_group_id=group, max_failures=3)
    response = user.http.get(
        "/work",
        params={"machine_id": "m1", "container_group_id": group},
        headers={WORKER_VERSION_HEADER: "9.8.7"},
    )
    assert response.status_code == 200 and response.json()[0]["id"] == failing["id"]
    user.report(failing["id"], "failed", "m1", group, exit_code=1).raise_for_status()
    running = user.submit(container_group_id=group)
    claimed = user.claim("m2", group)  # the reference worker sends no version
    assert claimed is not None and claimed["id"] in {failing["id"], running["id"]}

    listed = {w["machine_id"]: w for w in workers(user, container_group_id=group)}

    assert set(listed) == {"m1", "m2"}
    m1, m2 = listed["m1"], listed["m2"]
    assert (m1["version"], m1["blocked_jobs"], m1["current_job_id"]) == ("9.8.7", 1, None)
    assert (m2["version"], m2["blocked_jobs"], m2["current_job_id"]) == (None, 0, claimed["id"])
    assert m1["last_poll"] is not None and m1["container_group_id"] == group
    assert m1["user_id"] == user.id
    # tenant-scoped: another user sees none of them; the admin sees them all
    assert workers(api.new_user(), container_group_id=group) == []
    assert {w["machine_id"] for w in workers(api.admin(), container_group_id=group)} == {
        "m1",
        "m2",
    }


def test_bad_workers_queries_are_a_400(user: ApiUser) -> None:
    for params in ({"container_group_id": ""}, {"seen_within": 0}, {"seen_within": "soon"}):
        assert user.http.get("/workers", params=params).status_code == 400

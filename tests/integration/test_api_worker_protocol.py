"""The worker protocol (PROTOCOL §4) against a real server, on both stores."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.support.api import Api, ApiUser


def test_claim_hands_out_oldest_pending_job_and_marks_it_running(user: ApiUser, group: str) -> None:
    first = user.submit(container_group_id=group)
    user.submit(container_group_id=group)

    job = user.claim("m1", group)

    assert job is not None
    assert job["id"] == first["id"]
    assert job["status"] == "running"
    assert job["machine_id"] == "m1"
    assert job["started"] is not None
    assert job["heartbeat"] is not None


def test_claims_hand_out_higher_priority_first_and_the_oldest_within_a_priority(
    user: ApiUser, group: str
) -> None:
    low = user.submit(container_group_id=group, priority=-5)
    batch = user.http.post(
        "/jobs/batch",
        json=[{"command": "python", "container_group_id": group, "priority": p} for p in (7, 0, 7)],
    )
    assert batch.status_code == 202, batch.text
    first_seven, default, second_seven = batch.json()
    assert [job["priority"] for job in (low, first_seven, default, second_seven)] == [-5, 7, 0, 7]

    claimed = [user.claim(f"m{i}", group) for i in range(4)]

    assert [job["id"] if job else None for job in claimed] == [
        first_seven["id"],
        second_seven["id"],
        default["id"],
        low["id"],
    ]
    assert user.job(low["id"])["priority"] == -5


def test_empty_queue_answers_an_empty_list(user: ApiUser, group: str) -> None:
    assert user.claim("m1", group) is None


def test_jobs_only_go_to_machines_of_their_group(user: ApiUser, group: str) -> None:
    user.submit(container_group_id=group)

    assert user.claim("m1", f"{group}-other") is None
    assert user.claim("m1", group) is not None


def test_heartbeat_refreshes_and_counts(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    claimed = user.claim("m1", group)
    assert claimed is not None

    for _ in range(3):
        response = user.report(job["id"], "heartbeat", "m1", group)
        assert response.status_code == 200
        assert response.json() == {"status": "running"}

    after = user.job(job["id"])
    assert after["num_heartbeats"] == 3
    assert after["heartbeat"] >= claimed["heartbeat"]


def test_failed_job_is_pending_again_at_once_but_never_for_that_machine(
    user: ApiUser, group: str
) -> None:
    job = user.submit(container_group_id=group)
    user.claim("m1", group)

    response = user.report(job["id"], "failed", "m1", group, exit_code=3, error="exit 3")

    assert response.status_code == 202
    after = user.job(job["id"])
    assert after["status"] == "pending"
    assert after["num_failures"] == 1
    assert after["last_exit_code"] == 3
    assert after["last_error"] == "exit 3"
    assert user.claim("m1", group) is None
    retaken = user.claim("m2", group)
    assert retaken is not None and retaken["id"] == job["id"]


def test_job_fails_for_good_at_max_failures(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, max_failures=2)
    for machine in ("m1", "m2"):
        assert user.claim(machine, group) is not None
        user.report(job["id"], "failed", machine, group, exit_code=1)

    after = user.job(job["id"])
    assert after["status"] == "failed"
    assert after["failed"] is not None
    assert after["num_failures"] == 2
    assert user.claim("m3", group) is None


def test_interrupted_job_is_pending_again_with_no_failure(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    user.claim("m1", group)

    response = user.report(job["id"], "interrupted", "m1", group)

    assert response.status_code == 202
    after = user.job(job["id"])
    assert after["status"] == "pending"
    assert after["num_failures"] == 0
    retaken = user.claim("m1", group)
    assert retaken is not None and retaken["id"] == job["id"]


def test_a_non_holder_with_its_attempt_id_is_refused(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    holder = user.claim("m1", group)
    assert holder is not None and isinstance(holder["attempt_id"], int)
    intruder = {"attempt_id": holder["attempt_id"] + 1000}

    for what in ("heartbeat", "completed", "failed", "interrupted"):
        # the holder's machine id with another attempt's token: still not the holder
        response = user.report(job["id"], what, "m1", group, **intruder)
        assert response.status_code == 409, what
        assert response.json()["error"] == "Conflict"
    assert user.job(job["id"])["status"] == "running"
    assert user.job(job["id"])["machine_id"] == "m1"
    beat = user.report(job["id"], "heartbeat", "m1", group, attempt_id=holder["attempt_id"])
    assert beat.json() == {"status": "running"}


def test_a_non_holder_without_attempt_id_is_answered_but_ignored(user: ApiUser, group: str) -> None:
    # The reference worker sends no attempt id and crashes on any error answer.
    job = user.submit(container_group_id=group)
    user.claim("m1", group)

    for what, code in (("completed", 200), ("failed", 202), ("interrupted", 202)):
        response = user.report(job["id"], what, "intruder", group)
        assert response.status_code == code, what
        assert response.json()["message"].startswith("ignored: "), what
    assert user.report(job["id"], "heartbeat", "intruder", group).json() == {"status": "canceled"}
    after = user.job(job["id"])
    assert (after["status"], after["machine_id"], after["num_failures"]) == ("running", "m1", 0)


def test_stalled_job_is_handed_to_next_machine(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, heartbeat_interval=1)
    old = user.claim("old", group)
    assert old is not None

    # The lease stalls after 2 x 1 s without a heartbeat; long-polling picks it up then.
    retaken = user.claim("new", group, wait=10)

    assert retaken is not None and retaken["id"] == job["id"]
    assert retaken["machine_id"] == "new"
    stale = {"attempt_id": old["attempt_id"]}
    assert user.report(job["id"], "heartbeat", "old", group).json() == {"status": "canceled"}
    assert user.report(job["id"], "completed", "old", group, **stale).status_code == 409
    assert user.report(job["id"], "failed", "old", group, **stale).status_code == 409
    current = {"attempt_id": retaken["attempt_id"]}
    assert user.report(job["id"], "completed", "new", group, **current).status_code == 200
    outcomes = [a["outcome"] for a in user.http.get(f"/jobs/{job['id']}/attempts").json()]
    assert outcomes == ["lost", "completed"]


def test_beating_job_is_not_taken_over(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, heartbeat_interval=1)
    user.claim("holder", group)
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert user.report(job["id"], "heartbeat", "holder", group).json() == {"status": "running"}
        assert user.claim("other", group) is None
        time.sleep(0.5)


def test_worker_calls_need_machine_and_group(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    assert user.http.get("/work", params={"machine_id": "m1"}).status_code == 400
    assert user.http.get("/work", params={"container_group_id": group}).status_code == 400
    response = user.http.post(f"/jobs/{job['id']}/heartbeat", json={"machine_id": "m1"})
    assert response.status_code == 400
    assert "container_group_id" in response.json()["message"]
    too_long: dict[str, str | int] = {"machine_id": "m", "container_group_id": group, "wait": 31}
    assert user.http.get("/work", params=too_long).status_code == 400


def test_reports_on_unknown_job_are_404(user: ApiUser, group: str) -> None:
    unknown = str(uuid.uuid4())
    for what in ("heartbeat", "completed", "failed", "interrupted"):
        assert user.report(unknown, what, "m1", group).status_code == 404, what


def test_abandoned_long_poll_claims_nothing(api: Api, user: ApiUser, group: str) -> None:
    params: dict[str, str | int] = {"machine_id": "gone", "container_group_id": group, "wait": 20}
    with (
        httpx.Client(base_url=api.url, headers={"X-Kelpie-Key": user.key}, timeout=0.5) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.get("/work", params=params)  # the worker gives up on its poll, as at shutdown

    job = user.submit(container_group_id=group)

    taken = user.claim("present", group, wait=10)
    assert taken is not None and taken["id"] == job["id"]
    assert user.job(job["id"])["machine_id"] == "present"

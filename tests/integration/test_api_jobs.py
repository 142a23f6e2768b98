"""Users submit, read, list, cancel and purge jobs (PROTOCOL §3), on both stores."""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.support.api import Api, ApiUser

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

LEGACY = {
    "input_bucket": "bucket",
    "input_prefix": "inputs/job1",
    "checkpoint_bucket": "bucket",
    "checkpoint_prefix": "checkpoints/job1/",
    "output_bucket": "bucket",
    "output_prefix": "outputs/job1",
}


def test_submitted_job_has_every_field_with_defaults(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, **LEGACY)

    assert uuid.UUID(job["id"])
    assert job["user_id"] == user.id
    assert job["status"] == "pending"
    assert ISO_Z.match(job["created"])
    for name in ("started", "completed", "canceled", "failed", "heartbeat", "machine_id"):
        assert job[name] is None
    assert job["num_failures"] == 0
    assert job["num_heartbeats"] == 0
    assert job["last_exit_code"] is None
    assert job["last_error"] is None
    assert job["arguments"] == []
    assert job["environment"] == {}
    assert job["max_failures"] == 3
    assert job["heartbeat_interval"] == 30
    assert job["webhook"] is None
    assert job["compression"] is False
    assert job["priority"] == 0
    assert job["container_group_id"] == group
    assert "sync" not in job


def test_prefixes_are_normalized_to_end_in_a_slash(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, **LEGACY)

    assert job["input_prefix"] == "inputs/job1/"
    assert job["checkpoint_prefix"] == "checkpoints/job1/"
    assert job["output_prefix"] == "outputs/job1/"


def test_sync_job_shows_sync_and_no_legacy_fields(user: ApiUser, group: str) -> None:
    sync = {
        "before": [
            {"bucket": "b", "prefix": "in", "local_path": "/input", "direction": "download"}
        ],
        "during": [
            {
                "bucket": "b",
                "prefix": "ckpt/",
                "local_path": "/checkpoint",
                "direction": "upload",
                "pattern": r"\.pt$",
            }
        ],
        "after": [],
    }
    job = user.submit(container_group_id=group, sync=sync)

    assert job["sync"]["before"][0]["prefix"] == "in/"
    assert job["sync"]["during"][0]["pattern"] == r"\.pt$"
    assert not set(LEGACY) & set(job)
    assert user.job(job["id"])["sync"] == job["sync"]


def test_job_round_trips_through_get(user: ApiUser, group: str) -> None:
    job = user.submit(
        container_group_id=group,
        arguments=["/main.py", "--steps", "10"],
        environment={"SOME_VAR": "x"},
        max_failures=5,
        heartbeat_interval=7,
        webhook="https://example.com/hook",
        compression=True,
    )

    fetched = user.job(job["id"])
    # only GET /jobs/{id} says why a pending job waits (no machine of the group seen yet)
    assert job["pending_reason"] is None
    assert fetched.pop("pending_reason")["reason"] == "no_workers"
    assert fetched == {name: value for name, value in job.items() if name != "pending_reason"}


def test_unknown_job_is_404_in_the_error_shape_naming_the_id(user: ApiUser) -> None:
    job_id = uuid.uuid4()
    response = user.http.get(f"/jobs/{job_id}")

    assert response.status_code == 404
    assert response.json() == {"error": "Not Found", "message": f"Job {job_id} not found"}


def _list(user: ApiUser, **params: Any) -> dict[str, Any]:
    response = user.http.get("/jobs", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["_count"] == len(body["jobs"])
    return body


def test_listing_pages_newest_first_and_filters(user: ApiUser, group: str) -> None:
    other_group = f"{group}-other"
    ids = [user.submit(container_group_id=group)["id"] for _ in range(5)]
    user.submit(container_group_id=other_group)

    newest_first = _list(user, container_group_id=group)
    assert [job["id"] for job in newest_first["jobs"]] == ids[::-1]

    oldest_first = _list(user, container_group_id=group, asc="true")
    assert [job["id"] for job in oldest_first["jobs"]] == ids

    page2 = _list(user, container_group_id=group, page_size=2, page=2, asc="true")
    assert [job["id"] for job in page2["jobs"]] == ids[2:4]
    assert _list(user, container_group_id=group, page_size=2, page=4)["_count"] == 0

    user.http.delete(f"/jobs/{ids[0]}")
    canceled = _list(user, container_group_id=group, status="canceled")
    assert [job["id"] for job in canceled["jobs"]] == [ids[0]]
    assert _list(user, container_group_id=group, status="pending")["_count"] == 4


def test_cancel_pending_job_then_cancel_again_is_a_no_op(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)

    first = user.http.delete(f"/jobs/{job['id']}")
    assert first.status_code == 202
    assert first.json() == {"message": "Job canceled"}
    canceled = user.job(job["id"])
    assert canceled["status"] == "canceled"
    assert ISO_Z.match(canceled["canceled"])

    again = user.http.delete(f"/jobs/{job['id']}")
    assert again.status_code == 202
    assert user.job(job["id"])["canceled"] == canceled["canceled"]


def test_canceling_a_completed_job_is_a_conflict(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    user.claim("m1", group)
    assert user.report(job["id"], "completed", "m1", group).status_code == 200

    response = user.http.delete(f"/jobs/{job['id']}")

    assert response.status_code == 409
    assert response.json()["error"] == "Conflict"
    assert user.job(job["id"])["status"] == "completed"


def test_canceled_running_job_tells_its_holder_at_next_heartbeat(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    user.claim("m1", group)

    user.http.delete(f"/jobs/{job['id']}")

    heartbeat = user.report(job["id"], "heartbeat", "m1", group)
    assert heartbeat.json() == {"status": "canceled"}
    completed = user.report(job["id"], "completed", "m1", group)
    assert completed.json()["message"].startswith("ignored: ")
    assert user.job(job["id"])["status"] == "canceled"


def test_purging_a_group_deletes_pending_and_cancels_running(user: ApiUser, group: str) -> None:
    running = user.submit(container_group_id=group)
    user.claim("m1", group)
    pending = [user.submit(container_group_id=group)["id"] for _ in range(3)]
    elsewhere = user.submit(container_group_id=f"{group}-elsewhere")

    response = user.http.delete(f"/jobs/container-groups/{group}")

    assert response.status_code == 200
    assert response.json() == {"count": 4}
    assert user.job(running["id"])["status"] == "canceled"
    for job_id in pending:
        assert user.http.get(f"/jobs/{job_id}").status_code == 404
    assert user.job(elsewhere["id"])["status"] == "pending"


def test_batch_keeps_order_and_is_all_stored(user: ApiUser, group: str) -> None:
    items = [{"command": f"cmd-{i}", "container_group_id": group} for i in range(1000)]

    response = user.http.post("/jobs/batch", json=items)

    assert response.status_code == 202, response.text
    jobs = response.json()
    assert [job["command"] for job in jobs] == [f"cmd-{i}" for i in range(1000)]
    assert _list(user, container_group_id=group, page_size=1000)["_count"] == 1000


def test_attempts_record_every_hold(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, max_failures=3)
    user.claim("m1", group)
    user.report(job["id"], "failed", "m1", group, exit_code=3, error="boom")
    user.claim("m2", group)
    user.report(job["id"], "interrupted", "m2", group)
    user.claim("m2", group)
    user.report(job["id"], "completed", "m2", group)

    response = user.http.get(f"/jobs/{job['id']}/attempts")

    assert response.status_code == 200
    attempts = response.json()
    assert [(a["machine_id"], a["outcome"], a["exit_code"]) for a in attempts] == [
        ("m1", "failed", 3),
        ("m2", "interrupted", None),
        ("m2", "completed", None),
    ]
    assert all(ISO_Z.match(a["started"]) and ISO_Z.match(a["ended"]) for a in attempts)


def test_admin_deletes_every_job(api: Api) -> None:
    admin = api.admin()
    user = api.new_user()
    job = user.submit(container_group_id=f"g-{uuid.uuid4()}")

    assert user.http.delete("/jobs").status_code == 403
    assert user.job(job["id"])["status"] == "pending"
    assert admin.http.delete("/jobs").status_code == 204
    assert user.http.get(f"/jobs/{job['id']}").status_code == 404

"""The reference worker (0.7.1, TypeScript) against our API: its exact requests, replayed.

It sends `Content-Type: application/json` and `X-Kelpie-Key` on every call, bodies of
`JSON.stringify({machine_id, container_group_id})`, no attempt id, and it retries any answer
that is not 2xx three times and then dies. So every call it makes in a normal life, including
reports from a machine that no longer holds the job (after a cancel its job exits 130 and it
reports a failure; its lease may have been taken meanwhile), must answer 2xx.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.support.api import Api, ApiUser


class ReferenceWorker:
    """The requests of the reference worker's src/api.ts, byte for byte."""

    def __init__(self, api: Api, key: str, machine_id: str, group: str) -> None:
        self.http = httpx.Client(base_url=api.url, timeout=30.0)
        self.headers = {"Content-Type": "application/json", "X-Kelpie-Key": key}
        self.machine_id = machine_id
        self.group = group

    def _body(self) -> str:
        return json.dumps(
            {"machine_id": self.machine_id, "container_group_id": self.group},
            separators=(",", ":"),
        )

    def get_work(self) -> httpx.Response:
        query = {"machine_id": self.machine_id, "container_group_id": self.group}
        return self.http.get("/work", params=query, headers=self.headers)

    def post(self, job_id: str, what: str) -> httpx.Response:
        return self.http.post(f"/jobs/{job_id}/{what}", content=self._body(), headers=self.headers)

    def close(self) -> None:
        self.http.close()


def claimed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    work: list[dict[str, Any]] = response.json()
    assert len(work) == 1
    task = work[0]
    # the fields the reference worker reads from a Task
    for name in ("id", "command", "arguments", "environment", "heartbeat_interval", "status"):
        assert name in task, name
    return task


def test_reference_worker_completes_a_job(api: Api, user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    worker = ReferenceWorker(api, user.key, "ref-1", group)
    try:
        task = claimed(worker.get_work())
        beat = worker.post(task["id"], "heartbeat")
        done = worker.post(task["id"], "completed")
        empty = worker.get_work()
    finally:
        worker.close()

    assert task["id"] == job["id"]
    assert beat.status_code == 200 and beat.json() == {"status": "running"}
    assert done.status_code == 200 and "message" in done.json()
    assert empty.status_code == 200 and empty.json() == []
    assert user.job(job["id"])["status"] == "completed"


def test_reference_worker_reports_a_failure(api: Api, user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    worker = ReferenceWorker(api, user.key, "ref-1", group)
    try:
        task = claimed(worker.get_work())
        failed = worker.post(task["id"], "failed")
    finally:
        worker.close()

    assert failed.status_code == 202 and "message" in failed.json()
    after = user.job(job["id"])
    assert (after["status"], after["num_failures"]) == ("pending", 1)


def test_reference_worker_survives_a_cancel_and_its_job_exiting_130(
    api: Api, user: ApiUser, group: str
) -> None:
    job = user.submit(container_group_id=group)
    worker = ReferenceWorker(api, user.key, "ref-1", group)
    try:
        task = claimed(worker.get_work())
        assert user.http.delete(f"/jobs/{job['id']}").status_code == 202
        beat = worker.post(task["id"], "heartbeat")  # → canceled: it interrupts its command
        failed = worker.post(task["id"], "failed")  # the command exited 130
    finally:
        worker.close()

    assert beat.status_code == 200 and beat.json() == {"status": "canceled"}
    assert failed.status_code == 202 and failed.json()["message"].startswith("ignored: ")
    after = user.job(job["id"])
    assert (after["status"], after["num_failures"]) == ("canceled", 0)


def test_reference_worker_whose_lease_was_taken_is_answered_2xx(
    api: Api, user: ApiUser, group: str
) -> None:
    job = user.submit(container_group_id=group, heartbeat_interval=1)
    stale = ReferenceWorker(api, user.key, "ref-stale", group)
    fresh = ReferenceWorker(api, user.key, "ref-fresh", group)
    try:
        claimed(stale.get_work())
        # the stale worker goes quiet; once its lease stalls the other one takes the job
        taken = fresh.http.get(
            "/work",
            params={"machine_id": "ref-fresh", "container_group_id": group, "wait": 10},
            headers=fresh.headers,
        )
        assert claimed(taken)["id"] == job["id"]
        answers = {what: stale.post(job["id"], what) for what in ("heartbeat", "completed")}
        answers["failed"] = stale.post(job["id"], "failed")
        answers["interrupted"] = stale.post(job["id"], "interrupted")
        fresh_done = fresh.post(job["id"], "completed")
    finally:
        stale.close()
        fresh.close()

    assert answers["heartbeat"].json() == {"status": "canceled"}
    for what in ("completed", "failed", "interrupted"):
        assert answers[what].is_success, (what, answers[what].text)
        assert answers[what].json()["message"].startswith("ignored: ")
    assert fresh_done.status_code == 200
    after = user.job(job["id"])
    assert (after["status"], after["machine_id"], after["num_failures"]) == (
        "completed",
        "ref-fresh",
        0,
    )


def test_reference_worker_report_on_an_unknown_job_is_404(api: Api, user: ApiUser) -> None:
    worker = ReferenceWorker(api, user.key, "ref-1", f"group-{uuid.uuid4().hex[:8]}")
    try:
        assert worker.post(str(uuid.uuid4()), "heartbeat").status_code == 404
    finally:
        worker.close()

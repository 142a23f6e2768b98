"""A user sees and touches only its own jobs: another user's job answers 404, unchanged."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support.api import Api, ApiUser

WORKER = {"machine_id": "m1", "container_group_id": "shared-group"}

CALLS: dict[str, Callable[[httpx.Client, str], httpx.Response]] = {
    "get": lambda http, job_id: http.get(f"/jobs/{job_id}"),
    "cancel": lambda http, job_id: http.delete(f"/jobs/{job_id}"),
    "attempts": lambda http, job_id: http.get(f"/jobs/{job_id}/attempts"),
    "heartbeat": lambda http, job_id: http.post(f"/jobs/{job_id}/heartbeat", json=WORKER),
    "completed": lambda http, job_id: http.post(f"/jobs/{job_id}/completed", json=WORKER),
    "failed": lambda http, job_id: http.post(f"/jobs/{job_id}/failed", json=WORKER),
    "interrupted": lambda http, job_id: http.post(f"/jobs/{job_id}/interrupted", json=WORKER),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_other_users_job_is_not_found_and_unchanged(api: Api, call: str) -> None:
    owner, intruder = api.new_user(), api.new_user()
    job = owner.submit(container_group_id="shared-group")
    owner.claim("m1", "shared-group")
    before = owner.job(job["id"])

    response = CALLS[call](intruder.http, job["id"])

    assert response.status_code == 404
    assert response.json()["message"] == f"Job {job['id']} not found"
    assert owner.job(job["id"]) == before


def test_other_users_jobs_are_not_listed_claimed_or_purged(api: Api) -> None:
    owner, intruder = api.new_user(), api.new_user()
    job = owner.submit(container_group_id="shared-group")

    assert intruder.http.get("/jobs").json()["_count"] == 0
    assert intruder.claim("m9", "shared-group") is None
    assert intruder.http.delete("/jobs/container-groups/shared-group").json() == {"count": 0}
    assert owner.job(job["id"])["status"] == "pending"


def test_admin_sees_every_users_job(api: Api, user: ApiUser) -> None:
    job = user.submit(container_group_id="admin-sees")
    assert api.admin().job(job["id"])["id"] == job["id"]

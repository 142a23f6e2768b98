"""Scheduling over HTTP, against a real `kelpie serve` on each backend: the submission fields
in the job object and as filters, retry rules applied to failure reports (from kelpie's
worker and the reference worker alike), `Idempotency-Key` (also raced from two API processes
on one database), and the goodput endpoints."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import ApiUser, new_admin_key
from tests.support.api_fixtures import BACKENDS
from tests.support.processes import start_server
from tests.support.waiting import wait_for

SCHEDULED: dict[str, Any] = {
    "name": "resnet50-run1",
    "labels": {"team": "vision", "experiment": "lr-sweep"},
    "max_duration": 86400,
    "max_interruptions": 20,
    "retry": {"fail_exit_codes": [3, 2, 2], "interruption_exit_codes": [143]},
}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """What kelpie's worker adds to its reports: the claim's attempt id."""
    return {"attempt_id": job["attempt_id"]}


def test_the_scheduling_fields_are_kept_and_shown(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, **SCHEDULED)

    assert {field: job[field] for field in SCHEDULED} == {
        **SCHEDULED,
        "retry": {"fail_exit_codes": [2, 3], "interruption_exit_codes": [143]},
    }
    assert job["num_interruptions"] == 0
    assert {**user.job(job["id"]), "pending_reason": None} == job  # only GET says why it waits
    plain = user.submit(container_group_id=group)
    assert (plain["name"], plain["labels"], plain["retry"]) == (None, {}, None)
    assert (plain["max_duration"], plain["max_interruptions"]) == (None, None)


def test_jobs_are_listed_by_name_and_labels(user: ApiUser, group: str) -> None:
    vision = user.submit(container_group_id=group, name="a", labels={"team": "vision", "x": "1"})
    audio = user.submit(container_group_id=group, name="b", labels={"team": "audio", "x": "1"})

    def listed(**params: Any) -> list[str]:
        response = user.http.get("/jobs", params={"container_group_id": group, **params})
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["jobs"]]

    assert listed(label="team=vision") == [vision["id"]]
    assert listed(label="x=1") == [audio["id"], vision["id"]]
    assert listed(label=["x=1", "team=audio"]) == [audio["id"]]
    assert listed(name="a") == [vision["id"]]
    assert listed(name="a", label="team=audio") == []


def test_an_exit_code_in_fail_exit_codes_fails_the_job_at_once(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, max_failures=5, retry={"fail_exit_codes": [2]})
    claimed = user.claim("m1", group)
    assert claimed is not None

    response = user.report(
        job["id"],
        "failed",
        "m1",
        group,
        exit_code=2,
        error="bad flag",
        **worker(claimed),
    )

    assert response.status_code == 202, response.text
    failed = user.job(job["id"])
    assert (failed["status"], failed["num_failures"], failed["last_exit_code"]) == ("failed", 1, 2)
    assert user.claim("m2", group) is None


def test_other_exit_codes_are_ordinary_failures(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, retry={"fail_exit_codes": [2]})
    claimed = user.claim("m1", group)
    assert claimed is not None

    user.report(job["id"], "failed", "m1", group, exit_code=1, **worker(claimed))

    after = user.job(job["id"])
    assert (after["status"], after["num_failures"], after["num_interruptions"]) == ("pending", 1, 0)
    assert user.claim("m1", group) is None  # blocked from it, as after any failure


@pytest.mark.parametrize("reference_worker", [False, True])
def test_an_exit_code_in_interruption_exit_codes_is_an_interruption(
    user: ApiUser, group: str, reference_worker: bool
) -> None:
    job = user.submit(
        container_group_id=group, max_failures=1, retry={"interruption_exit_codes": [143]}
    )
    claimed = user.claim("m1", group)
    assert claimed is not None
    holder = {} if reference_worker else worker(claimed)

    response = user.report(job["id"], "failed", "m1", group, exit_code=143, **holder)

    assert response.status_code == 202, response.text
    after = user.job(job["id"])
    assert (after["status"], after["num_failures"], after["num_interruptions"]) == ("pending", 0, 1)
    attempts = user.http.get(f"/jobs/{job['id']}/attempts").json()
    assert [(a["outcome"], a["exit_code"]) for a in attempts] == [("interrupted", 143)]
    again = user.claim("m1", group)  # not blocked
    assert again is not None and again["id"] == job["id"]


def test_max_interruptions_ends_a_job(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, max_interruptions=2)
    for machine in ("m1", "m2"):
        claimed = user.claim(machine, group)
        assert claimed is not None
        response = user.report(job["id"], "interrupted", machine, group, **worker(claimed))
        assert response.status_code == 202, response.text

    ended = user.job(job["id"])
    assert (ended["status"], ended["num_interruptions"]) == ("failed", 2)
    assert ended["last_error"] == "interrupted 2 times; max_interruptions is 2"
    assert user.claim("m3", group) is None


def test_the_api_fails_a_stalled_job_at_its_last_interruption(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group, max_interruptions=1, heartbeat_interval=1)
    assert user.claim("m1", group) is not None  # m1 never beats: its lease runs out in 2 s

    def failed() -> dict[str, Any] | None:
        found = user.job(job["id"])
        return found if found["status"] == "failed" else None

    ended = wait_for(failed, "the stalled job to be failed", timeout=30)

    assert ended["last_error"] == "interrupted 1 times; max_interruptions is 1"
    attempts = user.http.get(f"/jobs/{job['id']}/attempts").json()
    assert [a["outcome"] for a in attempts] == ["lost"]
    assert user.claim("m2", group) is None


# -- Idempotency-Key ------------------------------------------------------------------------


def test_a_repeated_submission_with_its_key_answers_the_first_job(
    user: ApiUser, group: str
) -> None:
    body = {"command": "python", "container_group_id": group, "labels": {"a": "1", "b": "2"}}
    headers = {"Idempotency-Key": f"submit-{uuid.uuid4()}"}
    first = user.http.post("/jobs", json=body, headers=headers)
    # the same request, spelt differently: keys reordered, a default written out
    respelt = {"labels": {"b": "2", "a": "1"}, "max_failures": 3, **body}
    again = user.http.post("/jobs", json=respelt, headers=headers)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    listed = user.http.get("/jobs", params={"container_group_id": group}).json()
    assert listed["_count"] == 1

    other = user.http.post("/jobs", json={**body, "name": "other"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["message"].startswith("Idempotency-Key: ")
    as_batch = user.http.post("/jobs/batch", json=[body], headers=headers)
    assert as_batch.status_code == 409
    assert user.http.get("/jobs", params={"container_group_id": group}).json()["_count"] == 1


def test_a_repeated_batch_with_its_key_answers_the_first_jobs_in_order(
    user: ApiUser, group: str
) -> None:
    batch = [{"command": "python", "container_group_id": group, "name": n} for n in "abc"]
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = user.http.post("/jobs/batch", json=batch, headers=headers)
    again = user.http.post("/jobs/batch", json=batch, headers=headers)

    assert (first.status_code, again.status_code) == (202, 202)
    assert [job["id"] for job in again.json()] == [job["id"] for job in first.json()]
    assert [job["name"] for job in again.json()] == ["a", "b", "c"]


def test_keys_are_per_user(api_users: tuple[ApiUser, ApiUser], group: str) -> None:
    alice, bob = api_users
    body = {"command": "python", "container_group_id": group}
    headers = {"Idempotency-Key": "the-same-key"}
    mine = alice.http.post("/jobs", json=body, headers=headers)
    theirs = bob.http.post("/jobs", json=body, headers=headers)
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers


@pytest.mark.parametrize("key", [b"", b"with space", "é".encode(), b"k" * 256])
def test_a_bad_key_is_refused_and_queues_nothing(user: ApiUser, group: str, key: bytes) -> None:
    response = user.http.post(
        "/jobs",
        json={"command": "python", "container_group_id": group},
        headers={b"Idempotency-Key": key},
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["message"]
    assert user.http.get("/jobs", params={"container_group_id": group}).json()["_count"] == 0


@pytest.fixture
def api_users(user: ApiUser, api: Any) -> tuple[ApiUser, ApiUser]:
    return user, api.new_user()


async def _race(
    urls: list[str], key: str, body: dict[str, Any], sends: int
) -> list[httpx.Response]:
    clients = [
        httpx.AsyncClient(base_url=url, headers={"X-Kelpie-Key": key}, timeout=60) for url in urls
    ]
    try:
        headers = {"Idempotency-Key": "raced-key"}
        return await asyncio.gather(
            *(
                clients[i % len(clients)].post("/jobs", json=body, headers=headers)
                for i in range(sends)
            )
        )
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_key_raced_through_two_api_processes_makes_one_job(
    backend: str, fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = fresh_database_url(backend)
    admin_key = new_admin_key()
    servers = [start_server(url, admin_key, tmp_path / "logs") for _ in range(2)]
    try:
        body = {"command": "python", "container_group_id": "race"}
        answers = asyncio.run(_race([s.url for s in servers], admin_key, body, sends=40))

        assert {answer.status_code for answer in answers} == {202}
        assert len({answer.json()["id"] for answer in answers}) == 1
        fresh = [a for a in answers if "Idempotent-Replayed" not in a.headers]
        assert len(fresh) == 1
        with httpx.Client(base_url=servers[1].url, headers={"X-Kelpie-Key": admin_key}) as admin:
            assert admin.get("/jobs", params={"container_group_id": "race"}).json()["_count"] == 1
    finally:
        for server in servers:
            server.stop()


# -- goodput --------------------------------------------------------------------------------


def test_goodput_of_a_job_and_its_group(user: ApiUser, group: str) -> None:
    job = user.submit(container_group_id=group)
    first = user.claim("m1", group)
    assert first is not None
    event = {
        "machine_id": "m1",
        "container_group_id": group,
        **worker(first),
        "kind": "started",
        "message": "started",
    }
    assert user.http.post(f"/jobs/{job['id']}/events", json=event).status_code == 202
    user.report(job["id"], "interrupted", "m1", group, **worker(first))
    second = user.claim("m2", group)
    assert second is not None

    ledger = user.http.get(f"/jobs/{job['id']}/goodput")

    assert ledger.status_code == 200, ledger.text
    body = ledger.json()
    assert [(a["machine_id"], a["outcome"]) for a in body["attempts"]] == [
        ("m1", "interrupted"),
        ("m2", "running"),
    ]
    interrupted = body["attempts"][0]
    assert interrupted["work_lost_s"] is not None and interrupted["detection_delay_s"] is not None
    assert body["totals"]["interruptions"] == 1 and body["status"] == "running"

    report = user.http.get(f"/container-groups/{group}/goodput", params={"window": 3600})
    assert report.status_code == 200, report.text
    figures = report.json()
    assert (figures["attempts"], figures["interruptions"], figures["failures"]) == (2, 1, 0)
    assert figures["young_daly"] is None  # no checkpoint cost known yet

    assert user.http.get(f"/jobs/{uuid.uuid4()}/goodput").status_code == 404
    assert user.http.get("/container-groups/no-such-group/goodput").status_code == 404
    for window in (59, 31 * 24 * 3600, "a week"):
        bad = user.http.get(f"/container-groups/{group}/goodput", params={"window": window})
        assert bad.status_code == 400 and "window" in bad.json()["message"]

"""Checkpoint commits, attempt tokens and job events through a real server, on both stores."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support.api import Api, ApiUser

SHA = "0" * 64
JOB = "<job>"
"""In a key given to `file`, stands for the id of the job `commit` commits for."""


def checkpointed_job(user: ApiUser, group: str, **fields: Any) -> dict[str, Any]:
    return user.submit(
        container_group_id=group,
        checkpoint_bucket="bucket",
        checkpoint_prefix="runs/one",
        **fields,
    )


def commit(
    user: ApiUser,
    job: dict[str, Any],
    holder: dict[str, Any],
    generation: int,
    *files: dict[str, Any],
    machine: str = "m1",
) -> httpx.Response:
    body = {
        "machine_id": machine,
        "container_group_id": job["container_group_id"],
        "attempt_id": holder["attempt_id"],
        "generation": generation,
        "files": [{**f, "key": f["key"].replace(JOB, job["id"])} for f in files],
    }
    return user.http.post(f"/jobs/{job['id']}/checkpoints", json=body)


def file(path: str, key: str | None = None, size: int = 3, target: int = 0) -> dict[str, Any]:
    return {
        "target": target,
        "path": path,
        "key": key or f"runs/one/.kelpie/{JOB}/a1/g1/{path}",
        "size": size,
        "sha256": SHA,
    }


def test_claim_carries_the_attempt_token_listed_in_attempts(user: ApiUser, group: str) -> None:
    job = checkpointed_job(user, group)
    holder = user.claim("m1", group)
    assert holder is not None

    attempts = user.http.get(f"/jobs/{job['id']}/attempts").json()

    assert [a["id"] for a in attempts] == [holder["attempt_id"]]
    assert attempts[0]["warnings"] == []
    listed = user.job(job["id"])
    assert (listed["checkpoint_generation"], listed["checkpoint_keep"]) == (None, 3)


def test_holder_commits_and_everyone_sees_the_newest_generation(user: ApiUser, group: str) -> None:
    job = checkpointed_job(user, group, checkpoint_keep=1)
    holder = user.claim("m1", group)
    assert holder is not None

    first = commit(user, job, holder, 1, file("model.pt"), file("opt/state.bin", size=5))
    again = commit(user, job, holder, 1, file("model.pt"), file("opt/state.bin", size=5))
    second = commit(
        user, job, holder, 2, file("model.pt", f"runs/one/.kelpie/{JOB}/a1/g2/model.pt")
    )

    assert first.status_code == 201, first.text
    assert first.json()["checkpoint"]["generation"] == 1
    assert first.json()["checkpoint"]["bytes"] == 8 and first.json()["expired"] == []
    assert again.status_code == 200  # a repeat of a commit already taken
    assert second.status_code == 201
    # Only one generation is kept: the objects only generation 1 used are expired.
    expired = {(o["bucket"], o["key"]) for o in second.json()["expired"]}
    area = f"runs/one/.kelpie/{job['id']}"
    assert expired == {
        ("bucket", f"{area}/a1/g1/model.pt"),
        ("bucket", f"{area}/a1/g1/opt/state.bin"),
    }
    assert user.job(job["id"])["checkpoint_generation"] == 2
    listed = user.http.get(f"/jobs/{job['id']}/checkpoints").json()
    assert [(c["generation"], c["kept"], c["files"]) for c in listed] == [
        (1, False, 2),
        (2, True, 1),
    ]
    newest = user.http.get(f"/jobs/{job['id']}/checkpoints/2").json()
    assert newest["manifest"] == [
        {
            "target": 0,
            "path": "model.pt",
            "bucket": "bucket",
            "key": f"{area}/a1/g2/model.pt",
            "size": 3,
            "sha256": SHA,
        }
    ]
    assert user.http.get(f"/jobs/{job['id']}/checkpoints/1").status_code == 404
    events = user.http.get(f"/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events] == [
        "claimed",
        "checkpoint_committed",
        "checkpoint_committed",
    ]


def test_bad_commits_change_nothing(user: ApiUser, group: str) -> None:
    job = checkpointed_job(user, group)
    other = checkpointed_job(user, group)
    holder = user.claim("m1", group)
    other_holder = user.claim("m2", group)
    assert holder is not None and other_holder is not None
    assert commit(user, job, holder, 5, file("a")).status_code == 201

    bad: list[tuple[int, httpx.Response]] = [
        (409, commit(user, job, holder, 4, file("a"))),  # goes backwards
        (409, commit(user, job, holder, 5, file("b"))),  # same number, other files
        (409, commit(user, job, other_holder, 6, file("a"), machine="m2")),  # another job's token
        (400, commit(user, job, holder, 6, file("a", key="runs/one/a"))),  # outside .kelpie/
        (400, commit(user, job, holder, 6, file("a", key="elsewhere/.kelpie/a"))),
        (400, commit(user, job, holder, 6, file("a", key=f"runs/one/.kelpie/{JOB}/../../x"))),
        (400, commit(user, job, holder, 6, file("a", key=f"runs/one/.kelpie/{other['id']}/a"))),
        (400, commit(user, job, holder, 6, file("../escape"))),
        (400, commit(user, job, holder, 6, file("/abs"))),
        (400, commit(user, job, holder, 6, file(".kelpie/own"))),
        (400, commit(user, job, holder, 6, file("a", target=1))),  # the job has one target
        (400, commit(user, job, holder, 6, file("a"), file("a"))),  # listed twice
        (400, commit(user, job, holder, 0, file("a"))),
        (400, commit(user, job, holder, 6, {**file("a"), "sha256": "xyz"})),
    ]

    for expected, response in bad:
        assert response.status_code == expected, response.text
    assert user.job(job["id"])["checkpoint_generation"] == 5
    assert [c["generation"] for c in user.http.get(f"/jobs/{job['id']}/checkpoints").json()] == [5]
    assert user.job(other["id"])["checkpoint_generation"] is None


def test_a_key_outside_the_jobs_own_area_is_refused_and_nothing_is_stored(
    user: ApiUser, group: str
) -> None:
    # Two jobs of one user share a checkpoint prefix: each has its own area under it, and a
    # commit naming an object in the other's area (whose retention would then delete it, or
    # be deleted under it) is refused like any key outside the job's area.
    job = checkpointed_job(user, group)
    other = checkpointed_job(user, group)
    holder = user.claim("m1", group)
    assert holder is not None
    other_area = f"runs/one/.kelpie/{other['id']}/a1/g1"

    refused = [
        commit(user, job, holder, 1, file("model.pt", f"{other_area}/model.pt")),
        commit(user, job, holder, 1, file("a"), file("model.pt", f"{other_area}/model.pt")),
        commit(user, job, holder, 1, file("model.pt", "runs/one/.kelpie/a1/g1/model.pt")),
        commit(user, job, holder, 1, file("model.pt", f"runs/one/.kelpie/{JOB}model.pt")),
        commit(user, job, holder, 1, file("model.pt", f"runs/one/.kelpie/{JOB.upper()}/m")),
    ]

    for response in refused:
        assert response.status_code == 400, response.text
    assert [r.json()["index"] for r in refused] == [0, 1, 0, 0, 0]  # the file refused
    assert user.job(job["id"])["checkpoint_generation"] is None
    assert user.http.get(f"/jobs/{job['id']}/checkpoints").json() == []
    events = user.http.get(f"/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events] == ["claimed"]
    accepted = commit(user, job, holder, 1, file("model.pt"))
    assert accepted.status_code == 201, accepted.text


def test_another_users_checkpoints_are_not_found(api: Api) -> None:
    alice, bob = api.new_user(), api.new_user()
    group = f"group-{uuid.uuid4().hex[:8]}"
    job = checkpointed_job(alice, group)
    holder = alice.claim("m1", group)
    assert holder is not None

    assert commit(bob, job, holder, 1, file("a")).status_code == 404
    assert bob.http.get(f"/jobs/{job['id']}/checkpoints").status_code == 404
    assert bob.http.get(f"/jobs/{job['id']}/events").status_code == 404
    assert alice.http.get(f"/jobs/{job['id']}/checkpoints").json() == []


def test_worker_events_come_only_from_the_holding_attempt(user: ApiUser, group: str) -> None:
    job = checkpointed_job(user, group)
    holder = user.claim("m1", group)
    assert holder is not None
    event = {
        "machine_id": "m1",
        "container_group_id": group,
        "attempt_id": holder["attempt_id"],
        "kind": "warning",
        "message": "input prefix s3://b/in/ holds no objects",
        "data": {"bytes": 0},
    }

    accepted = user.http.post(f"/jobs/{job['id']}/events", json=event)
    refused = user.http.post(
        f"/jobs/{job['id']}/events", json={**event, "attempt_id": holder["attempt_id"] + 1}
    )
    unknown_kind = user.http.post(f"/jobs/{job['id']}/events", json={**event, "kind": "claimed"})

    assert accepted.status_code == 202
    assert refused.status_code == 409 and unknown_kind.status_code == 400
    [attempt] = user.http.get(f"/jobs/{job['id']}/attempts").json()
    assert attempt["warnings"] == [event["message"]]
    events = user.http.get(f"/jobs/{job['id']}/events").json()
    assert [(e["kind"], e["data"]) for e in events] == [
        ("claimed", None),
        ("warning", {"bytes": 0}),
    ]
    after = user.http.get(f"/jobs/{job['id']}/events", params={"after": events[0]["id"]}).json()
    assert [e["kind"] for e in after] == ["warning"]

"""Jobs sharing a checkpoint prefix, through real `kelpie serve`, `kelpie worker` and SeaweedFS:
a job resubmitted after its predecessor failed resumes where that one stopped, jobs never
delete each other's objects, and another user's job never inherits.

Judged by what each job finds in its own folder when it starts (its journal, outside the
synced folders; tests/support/jobs/checkpoint_sets.py) and by what the bucket holds.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Api, ApiUser
from tests.support.jobs.checkpoint_format import read_log, step_of
from tests.support.waiting import wait_for
from tests.support.worker import PYTHON, WorkerLab, job_script, new_user

pytestmark = pytest.mark.slow

SETTLE_S = "1.0"  # the folders quiet this long make a generation (a step every 1.2 s)
PREFIX = "shared/"


def submit(lab: WorkerLab, user: ApiUser | None = None, **env: str) -> tuple[dict[str, Any], Path]:
    """A checkpoint_sets job of `user` (default: the lab's) on `PREFIX`, and its journal."""
    journal = lab.tmp / f"journal-{uuid.uuid4().hex[:8]}.log"
    fields: dict[str, Any] = {
        "command": PYTHON,
        "arguments": [job_script("checkpoint_sets.py")],
        "heartbeat_interval": 1,
        "container_group_id": lab.group,
        "checkpoint_bucket": lab.bucket.name,
        "checkpoint_prefix": PREFIX,
        "max_failures": 1,  # a failure is for good
        "environment": {
            "LAYOUT": "overwrite",
            "CHECKPOINT_LOG": str(journal),
            "STEP_S": "1.2",
            "FILE_SIZE": str(64 * 1024),
            **env,
        },
    }
    job = (user or lab.user).submit(**fields)
    return job, journal


def starts(journal: Path) -> list[dict[str, Any]]:
    return [e for e in read_log(journal) if e["event"] == "start"] if journal.exists() else []


def area(job: dict[str, Any]) -> str:
    return f"{PREFIX}.kelpie/{job['id']}/"


def committed_step(lab: WorkerLab, job: dict[str, Any]) -> int | None:
    """The step of the job's newest committed generation, read back and verified."""
    files = lab.committed(job["id"])
    return step_of("step.json", files["step.json"]) if "step.json" in files else None


def kept_objects(lab: WorkerLab, job: dict[str, Any]) -> set[str]:
    """Every object a kept generation of the lab user's job names, each read back and
    checked against its SHA-256: what any resume of the job may need."""
    http = lab.user.http
    keys: set[str] = set()
    for generation in lab.checkpoints(job["id"]):
        if not generation["kept"]:
            continue
        got = http.get(f"/jobs/{job['id']}/checkpoints/{generation['generation']}")
        assert got.status_code == 200, got.text
        for entry in got.json()["manifest"]:
            data = lab.bucket.get(entry["key"])
            assert data is not None, f"{entry['key']} of job {job['id']} is gone"
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry
            keys.add(entry["key"])
    return keys


def events(lab: WorkerLab, job: dict[str, Any], user: ApiUser | None = None) -> list[Any]:
    got = (user or lab.user).http.get(f"/jobs/{job['id']}/events")
    assert got.status_code == 200, got.text
    found: list[Any] = got.json()
    return found


def failed_after_step_3(lab: WorkerLab) -> tuple[dict[str, Any], set[str]]:
    """Job A checkpoints steps 1 to 3 and then fails for good (a bug; no retries left). Its
    worker is stopped afterwards. Returns A and every object in its area."""
    job_a, journal_a = submit(lab, FAIL_AFTER_STEP="3", USE_COMMIT_FILE="1")
    node_a = lab.start_worker("node-a", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    lab.wait_status(job_a["id"], "failed", timeout=60)
    node_a.signal(15)
    assert node_a.proc.wait(timeout=30) == 0
    assert [e["step"] for e in read_log(journal_a) if e["event"] == "fail"] == [3]
    assert committed_step(lab, job_a) == 3
    kept = kept_objects(lab, job_a)
    objects = set(lab.bucket.keys(area(job_a)))
    assert kept and kept <= objects
    return job_a, objects


def test_a_new_job_on_the_prefix_of_a_failed_one_resumes_from_its_last_checkpoint(
    lab: WorkerLab,
) -> None:
    job_a, a_objects = failed_after_step_3(lab)
    # A leftover of A's own (an upload it never committed): A's to keep or clean, not B's.
    a_leftover = f"{area(job_a)}a1/g99/model.bin"
    lab.bucket.put(a_leftover, b"uncommitted upload of job A")

    job_b, journal_b = submit(lab, STEPS="6")
    b_leftover = f"{area(job_b)}a0/g1/model.bin"  # an earlier upload in B's own area
    lab.bucket.put(b_leftover, b"left by an earlier attempt of job B")
    lab.start_worker("node-b", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    done = lab.wait_status(job_b["id"], "completed", "failed", timeout=90)

    assert done["status"] == "completed", lab.logs()
    runs = starts(journal_b)
    assert [(r["resumed"], r["intact"]) for r in runs] == [(3, True)]  # where A stopped
    steps = [e["step"] for e in read_log(journal_b) if e["event"] == "complete"]
    assert steps == [4, 5, 6]
    # B cleaned its own area (its leftover is gone) and committed its own generations...
    wait_for(lambda: lab.bucket.get(b_leftover) is None, "B's leftover deleted", timeout=30)
    assert committed_step(lab, job_b) == 6
    b_kept = kept_objects(lab, job_b)
    assert b_kept and all(key.startswith(area(job_b)) for key in b_kept)
    # ...and every object of A is still there: A's checkpoints still restore.
    assert a_objects | {a_leftover} <= set(lab.bucket.keys(area(job_a)))
    assert committed_step(lab, job_a) == 3
    kept_objects(lab, job_a)
    # The user sees where B's checkpoint came from.
    [restored] = [e for e in events(lab, job_b) if e["kind"] == "checkpoint_restored"]
    a_newest = lab.job(job_a["id"])["checkpoint_generation"]
    assert restored["data"]["job"] == job_a["id"]
    assert restored["data"]["generation"] == a_newest


def test_a_damaged_object_of_the_earlier_job_falls_back_to_its_generation_before(
    lab: WorkerLab,
) -> None:
    job_a, _ = failed_after_step_3(lab)
    kept = sorted(g["generation"] for g in lab.checkpoints(job_a["id"]) if g["kept"])
    newest, before = kept[-1], kept[-2]
    manifest = lab.user.http.get(f"/jobs/{job_a['id']}/checkpoints/{newest}").json()
    model = next(e for e in manifest["manifest"] if e["path"] == "model.bin")
    lab.bucket.put(model["key"], b"damaged in the bucket")

    job_b, journal_b = submit(lab, STEPS="4")
    lab.start_worker("node-b", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    done = lab.wait_status(job_b["id"], "completed", "failed", timeout=90)

    assert done["status"] == "completed", lab.logs()
    assert [(r["resumed"], r["intact"]) for r in starts(journal_b)] == [(2, True)]
    seen = events(lab, job_b)
    [fallback] = [e for e in seen if e["kind"] == "checkpoint_fallback"]
    assert fallback["data"] == {"generation": newest, "job": job_a["id"]}
    [restored] = [e for e in seen if e["kind"] == "checkpoint_restored"]
    assert (restored["data"]["job"], restored["data"]["generation"]) == (job_a["id"], before)
    attempts = lab.user.http.get(f"/jobs/{job_b['id']}/attempts").json()
    assert any(job_a["id"] in w for w in attempts[0]["warnings"]), attempts


def test_two_jobs_at_once_on_one_prefix_each_resume_their_own_checkpoints(
    lab: WorkerLab,
) -> None:
    job_a, journal_a = submit(lab)
    nodes = {"node-a": lab.start_worker("node-a", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)}
    wait_for(lambda: (committed_step(lab, job_a) or 0) >= 3 or None, "A at step 3", timeout=60)
    job_b, journal_b = submit(lab)
    nodes["node-b"] = lab.start_worker("node-b", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    wait_for(lambda: (committed_step(lab, job_b) or 0) >= 2 or None, "B at step 2", timeout=60)
    # A job still running keeps its checkpoints: B started afresh rather than inherit them.
    assert [r["resumed"] for r in starts(journal_b)] == [None]

    for node in nodes.values():  # both nodes vanish; nothing more is committed
        node.kill_with_descendants()
    a_step, b_step = committed_step(lab, job_a), committed_step(lab, job_b)
    assert a_step is not None and b_step is not None and a_step > b_step
    before = {job["id"]: lab.job(job["id"])["checkpoint_generation"] for job in (job_a, job_b)}

    def resumed_and_committed() -> bool | None:
        """Both jobs started again, and each committed a generation since."""
        return (
            all(len(starts(journal)) >= 2 for journal in (journal_a, journal_b))
            and all(
                (lab.job(job_id)["checkpoint_generation"] or 0) > generation
                for job_id, generation in before.items()
            )
        ) or None

    lab.start_worker("node-c", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    lab.start_worker("node-d", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    wait_for(resumed_and_committed, "both jobs resumed and committing again", timeout=60)

    assert [(r["resumed"], r["intact"]) for r in starts(journal_a)][1] == (a_step, True)
    assert [(r["resumed"], r["intact"]) for r in starts(journal_b)][1] == (b_step, True)
    # Neither lost an object: every kept generation of both reads back whole.
    for job in (job_a, job_b):
        kept = kept_objects(lab, job)
        assert kept and all(key.startswith(area(job)) for key in kept)
        assert not [e for e in events(lab, job) if e["kind"] == "checkpoint_fallback"]
    lab.user.http.delete(f"/jobs/{job_a['id']}")
    lab.user.http.delete(f"/jobs/{job_b['id']}")


@pytest.mark.parametrize("worker_key", ["own", "admin"])
def test_another_users_job_on_the_same_prefix_never_inherits_nor_touches(
    lab: WorkerLab, worker_api: Api, worker_key: str
) -> None:
    job_a, a_objects = failed_after_step_3(lab)
    other = new_user(worker_api)
    try:
        # Another user, the same bucket and prefix; run by a worker with that user's key,
        # or by an admin's worker (which may read every user's jobs).
        job_c, journal_c = submit(lab, other, STEPS="2")
        key = other.key if worker_key == "own" else worker_api.server.admin_key
        lab.start_worker("node-c", key=key, KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
        done = wait_for(
            lambda: (
                job
                if (job := other.job(job_c["id"]))["status"] in ("completed", "failed")
                else None
            ),
            "the other user's job done",
            timeout=60,
        )
        assert done["status"] == "completed", lab.logs()
        assert [(r["resumed"], r["intact"]) for r in starts(journal_c)] == [(None, True)]
        c_events = events(lab, job_c, other)
        assert not [
            e for e in c_events if e["kind"] in ("checkpoint_restored", "checkpoint_fallback")
        ]
        assert done["checkpoint_generation"] is not None  # it did checkpoint, in its own area
        assert a_objects <= set(lab.bucket.keys(area(job_a)))
        assert committed_step(lab, job_a) == 3
        kept_objects(lab, job_a)
    finally:
        other.http.close()

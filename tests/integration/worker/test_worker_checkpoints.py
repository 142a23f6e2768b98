"""Checkpoint generations through real `kelpie serve`, `kelpie worker` and SeaweedFS, judged by
what the resumed job finds in its own folder (its journal, outside the synced folders).

The job (tests/support/jobs/checkpoint_sets.py) writes a set of files per step in one of
three layouts, logs each complete set, and on every start logs whether the set it found is
whole and of one step. Workers are killed with their whole process tree, as a node vanishing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from kelpie.storage.local_server import LocalS3Server
from tests.support.jobs.checkpoint_format import LAYOUTS, NAMES, content, read_log, step_of
from tests.support.processes import KelpieProcess
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for
from tests.support.worker import WorkerLab, pid_alive

pytestmark = pytest.mark.slow

# Kills per layout; KELPIE_CHECKPOINT_KILLS raises it for a longer soak.
KILLS_PER_LAYOUT = int(os.environ.get("KELPIE_CHECKPOINT_KILLS", "8"))
# A set complete this long before a kill must be what the next holder resumes from (or newer):
# the 1 s settle, the upload and the commit take ~1.5 s on an idle 2-core machine and up to
# ~4 s when it is loaded 3-4x.
COMMITTED_WITHIN_S = 5.0
# The folders quiet this long make a generation; these jobs pause at most 0.3 s within a set
# (so a set is never taken half written) and 1.2 s between sets.
SETTLE_S = "1.0"


def submit_sets(lab: WorkerLab, layout: str, **env: str) -> tuple[dict[str, Any], Path]:
    journal = lab.tmp / f"journal-{layout}-{uuid.uuid4().hex[:6]}.log"
    job = lab.submit(
        "checkpoint_sets.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix=f"{layout}/",
        max_failures=1,  # a torn restore makes the job exit 3: the test would see `failed`
        environment={
            "LAYOUT": layout,
            "CHECKPOINT_LOG": str(journal),
            "STEP_S": "1.2",
            "FILE_SIZE": str(256 * 1024),
            "PAUSE_BETWEEN_FILES_S": "0.3",  # a set is half written a fifth of the time
            **env,
        },
    )
    return job, journal


def completed_steps(journal: Path) -> list[tuple[float, int]]:
    """(time, step) of every set the job finished, in order."""
    return [
        (float(str(e["time"])), int(str(e["step"])))
        for e in read_log(journal)
        if e["event"] == "complete"
    ]


def starts(journal: Path) -> list[dict[str, Any]]:
    return [e for e in read_log(journal) if e["event"] == "start"]


def holder_of(lab: WorkerLab, job_id: str) -> str | None:
    job = lab.job(job_id)
    return str(job["machine_id"]) if job["status"] == "running" else None


def checkpointing_holder(lab: WorkerLab, job_id: str, journal: Path, kills: int) -> str | None:
    """The job's holder, once the job has started again after its `kills` kills and has
    finished a set since."""
    runs, done = starts(journal), completed_steps(journal)
    if len(runs) <= kills or not done or done[-1][0] <= float(runs[-1]["time"]):
        return None
    return holder_of(lab, job_id)


def test_every_resume_after_random_kills_finds_a_whole_recent_set(lab: WorkerLab) -> None:
    rng = random.Random(os.environ.get("KELPIE_TEST_SEED", "kelpie"))
    jobs = {layout: submit_sets(lab, layout) for layout in LAYOUTS}
    workers: dict[str, KelpieProcess] = {}
    names = iter(f"node-{i}" for i in range(1000))

    def add_node() -> None:
        name = next(names)
        workers[name] = lab.start_worker(name, KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)

    for _ in range(len(LAYOUTS) + 1):  # one spare node: a killed job's next holder
        add_node()
    kills: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    while any(len(k) < KILLS_PER_LAYOUT for k in kills.values()):
        for layout, (job, journal) in jobs.items():
            if len(kills[layout]) >= KILLS_PER_LAYOUT:
                continue
            holder = wait_for(
                partial(checkpointing_holder, lab, job["id"], journal, len(kills[layout])),
                f"the {layout} job running and checkpointing",
                timeout=60,
            )
            time.sleep(rng.uniform(0.0, 1.5))  # a random moment of its step
            kills[layout].append(time.time())
            workers.pop(holder).kill_with_descendants()
            add_node()

    for layout, (job, journal) in jobs.items():
        wait_for(
            partial(lambda j: len(starts(j)) > KILLS_PER_LAYOUT or None, journal),
            f"the {layout} job resumed after its last kill",
            timeout=60,
        )
        assert lab.job(job["id"])["num_failures"] == 0, lab.logs()
        runs = starts(journal)
        assert all(run["intact"] for run in runs), runs
        events = read_log(journal)
        for killed_at, killed, resumed in zip(kills[layout], runs, runs[1:], strict=False):
            # what the killed run had finished, and when
            done = [
                (float(str(e["time"])), int(str(e["step"])))
                for e in events
                if e["event"] == "complete" and e["pid"] == killed["pid"]
            ]
            before = killed["resumed"] or 0
            settled = max([s for at, s in done if at <= killed_at - COMMITTED_WITHIN_S] + [before])
            written = max([s for at, s in done if at <= killed_at] + [before])
            # never older than a set that had settled, never newer than one written
            assert settled <= (resumed["resumed"] or 0) <= written, (layout, killed, resumed)
        lab.user.http.delete(f"/jobs/{job['id']}")


def test_a_job_ignoring_sigterm_killed_mid_write_never_restores_torn(lab: WorkerLab) -> None:
    # The node goes away while the job is in the middle of a set (it marks each whole set
    # with the commit file, and pauses 5 s after a set's first file) and ignores the SIGTERM:
    # it is killed after the 3 s stop grace, its set half written. The folders as it left
    # them must not become a generation: the next holder finds the last whole set.
    job, journal = submit_sets(
        lab,
        "overwrite",
        IGNORE_SIGTERM="1",
        USE_COMMIT_FILE="1",
        KELPIE_CHECKPOINT_MODE="explicit",  # only marked sets, from the start
        PAUSE_BETWEEN_FILES_S="5",
        STEP_S="0.2",
    )
    first = lab.start_worker("node-a", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    wait_for(lambda: lab.checkpoints(job["id"]) or None, "a generation committed", timeout=30)
    first.signal(15)  # SIGTERM: the worker hands the job back; the job carries on writing
    assert first.proc.wait(timeout=60) == 0
    back = lab.wait_status(job["id"], "pending", timeout=10)
    assert back["num_failures"] == 0

    lab.start_worker("node-b", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    wait_for(lambda: len(starts(journal)) >= 2 or None, "the job resumed on node-b")
    runs = starts(journal)
    assert all(run["intact"] for run in runs), runs
    assert runs[1]["resumed"] == 1  # the one whole set marked before the kill
    lab.user.http.delete(f"/jobs/{job['id']}")


def test_a_damaged_object_falls_back_to_the_generation_before(lab: WorkerLab) -> None:
    job, journal = submit_sets(lab, "aside")
    first = lab.start_worker("node-a", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    wait_for(
        lambda: len([g for g in lab.checkpoints(job["id"]) if g["kept"]]) >= 2 or None,
        "two generations committed",
        timeout=60,
    )
    first.kill_with_descendants()  # the node vanishes; nothing more is committed
    kept = sorted(g["generation"] for g in lab.checkpoints(job["id"]) if g["kept"])
    newest, before = kept[-1], kept[-2]

    def step_in(generation: int) -> int | None:
        manifest = lab.user.http.get(f"/jobs/{job['id']}/checkpoints/{generation}").json()
        entry = next(e for e in manifest["manifest"] if e["path"] == "step.json")
        return step_of("step.json", lab.bucket.get(entry["key"]) or b"")

    expected = step_in(before)
    manifest = lab.user.http.get(f"/jobs/{job['id']}/checkpoints/{newest}").json()["manifest"]
    model = next(entry for entry in manifest if entry["path"] == "model.bin")
    lab.bucket.put(model["key"], b"damaged in the bucket")

    lab.start_worker("node-b", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    wait_for(lambda: len(starts(journal)) >= 2 or None, "the job resumed on node-b")
    runs = starts(journal)
    assert all(run["intact"] for run in runs), runs
    assert runs[1]["resumed"] == expected  # the generation before the damaged one
    attempts = lab.user.http.get(f"/jobs/{job['id']}/attempts").json()
    assert any(f"generation {newest}" in w for w in attempts[-1]["warnings"]), attempts
    events = [e["kind"] for e in lab.user.http.get(f"/jobs/{job['id']}/events").json()]
    assert "checkpoint_fallback" in events
    lab.user.http.delete(f"/jobs/{job['id']}")


def cli(lab: WorkerLab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **lab.s3_env,
        "KELPIE_API_URL": lab.api_url,
        "KELPIE_API_KEY": lab.user.key,
    }
    return subprocess.run(
        [sys.executable, "-m", "kelpie", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_cli_lists_and_downloads_committed_generations(lab: WorkerLab) -> None:
    job, _ = submit_sets(lab, "folder", STEPS="3")
    lab.start_worker("node-a", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S)
    lab.wait_status(job["id"], "completed", timeout=60)

    listed = cli(lab, "jobs", "checkpoints", job["id"], "--json")
    downloaded = cli(lab, "jobs", "checkpoints", "download", job["id"], str(lab.tmp / "dl"))
    events = cli(lab, "jobs", "events", job["id"], "--json")

    assert listed.returncode == 0, listed.stderr
    generations = json.loads(listed.stdout)
    assert generations and generations[-1]["kept"]
    assert downloaded.returncode == 0, downloaded.stderr
    folder = lab.tmp / "dl" / "step-3"
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
    assert (folder / "model.bin").read_bytes() == content("model.bin", 3, 256 * 1024)
    assert not any(p.name.startswith(".") for p in (lab.tmp / "dl").rglob("*"))
    kinds = [e["kind"] for e in json.loads(events.stdout)]
    assert kinds[0] == "claimed" and "checkpoint_committed" in kinds and kinds[-1] == "completed"


def test_a_partitioned_worker_on_the_same_machine_id_is_fenced_and_stops(
    lab: WorkerLab, seaweed: LocalS3Server
) -> None:
    # Two workers of one node (one machine id). The holder is cut off from the API for longer
    # than its lease; the other worker takes the job over. Fenced by attempt, the cut-off
    # one commits nothing more, and stops its job as soon as it hears the API again.
    host, port = lab.api_url.split("//", 1)[1].split(":")
    job, journal = submit_sets(lab, "overwrite")
    with TcpProxy(host, int(port)) as proxy:
        cut_off = lab.start_worker(
            "node-1", KELPIE_API_URL=proxy.url, KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S
        )
        wait_for(lambda: holder_of(lab, job["id"]) or None, "the job running")
        wait_for(lambda: lab.checkpoints(job["id"]) or None, "a generation committed")
        [first_attempt] = lab.user.http.get(f"/jobs/{job['id']}/attempts").json()
        proxy.block()
        cut_at = time.time()
        # the node's second worker: its own folders, the same machine id
        taker = lab.start_worker(
            "node-1-second", SALAD_MACHINE_ID="node-1", KELPIE_WORKER_CHECKPOINT_SETTLE_S=SETTLE_S
        )
        wait_for(lambda: len(starts(journal)) >= 2 or None, "the job resumed by the other worker")
        time.sleep(2)  # both copies run: the cut-off one keeps uploading under its attempt
        old_pid = int(starts(journal)[0]["pid"])
        assert pid_alive(old_pid)
        proxy.unblock()
        healed = time.monotonic()
        # one heartbeat interval (1 s) and the stop grace (3 s), and a little slack
        wait_for(lambda: not pid_alive(old_pid), "the cut-off worker's job to stop", timeout=10)
        assert time.monotonic() - healed <= 1 + 3 + 2
        assert cut_off.proc.poll() is None and taker.proc.poll() is None

    events = lab.user.http.get(f"/jobs/{job['id']}/events").json()
    taken = next(
        e for e in events if e["kind"] == "claimed" and e["attempt_id"] != first_attempt["id"]
    )
    late = [
        e
        for e in events
        if e["kind"] == "checkpoint_committed"
        and e["attempt_id"] == first_attempt["id"]
        and e["time"] > taken["time"]
    ]
    assert late == []  # nothing committed by the cut-off attempt after the takeover
    runs = starts(journal)
    assert all(run["intact"] for run in runs)
    before_cut = [
        step for at, step in completed_steps(journal) if at <= cut_at - COMMITTED_WITHIN_S
    ]
    assert (runs[1]["resumed"] or 0) >= (before_cut[-1] if before_cut else 0)
    # The cut-off attempt's uploads that no generation holds are cleaned away.
    stale = f"overwrite/.kelpie/{job['id']}/a{first_attempt['id']}/"
    kept = {
        entry["key"]
        for g in lab.checkpoints(job["id"])
        if g["kept"]
        for entry in lab.user.http.get(f"/jobs/{job['id']}/checkpoints/{g['generation']}").json()[
            "manifest"
        ]
    }
    wait_for(
        lambda: not [k for k in lab.bucket.keys(stale) if k not in kept] or None,
        "the cut-off attempt's leftovers deleted",
        timeout=30,
    )
    lab.user.http.delete(f"/jobs/{job['id']}")


def test_a_storage_outage_hands_the_job_back_and_fails_nothing(
    lab: WorkerLab, seaweed: LocalS3Server
) -> None:
    host, port = seaweed.endpoint_url.split("//", 1)[1].split(":")
    with TcpProxy(host, int(port)) as proxy:
        job = lab.submit(
            "count.py",
            checkpoint_bucket=lab.bucket.name,
            checkpoint_prefix="ck/",
            output_bucket=lab.bucket.name,
            output_prefix="out/",
            max_failures=1,
            environment={"COUNT_TO": "8", "STEP_S": "0.25"},
        )
        lab.bucket.put("ck/count.txt", "2")  # a plain checkpoint to restore: S3 is needed
        proxy.block()
        lab.start_worker(
            "node-a",
            AWS_ENDPOINT_URL=proxy.url,
            KELPIE_WORKER_STORAGE_RETRY_S="2",
        )
        wait_for(
            lambda: (
                any(
                    a["outcome"] == "interrupted"
                    for a in lab.user.http.get(f"/jobs/{job['id']}/attempts").json()
                )
                or None
            ),
            "the job handed back while the bucket is unreachable",
            timeout=60,
        )
        time.sleep(4)  # the rest of the outage: more claims fail the same way
        proxy.unblock()
        done = lab.wait_status(job["id"], "completed", "failed", timeout=90)
    assert (done["status"], done["num_failures"]) == ("completed", 0)
    result = json.loads(lab.bucket.get("out/result.json") or b"{}")
    assert result["starts"] == [2]  # resumed from the plain checkpoint once S3 was back

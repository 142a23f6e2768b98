"""No job is ever handed to two machines, however many claimers and processes race."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

import pytest

from kelpie.store import Store, open_store
from kelpie.store.models import Job, JobQuery, NewJob

pytestmark = pytest.mark.slow

GROUP = "race"
JOBS = 2000
CLAIMERS = 64
MAX_BATCH = 1000

Claim = tuple[str, str]  # (machine id, job id)


async def submit_jobs(store: Store, count: int) -> list[str]:
    user = await store.create_user("racer")
    spec = {"command": "true"}
    ids: list[str] = []
    for start in range(0, count, MAX_BATCH):
        batch = [NewJob(GROUP, 3, 30, None, spec) for _ in range(min(MAX_BATCH, count - start))]
        ids += [job.id for job in await store.create_jobs(user.id, batch)]
    return ids


async def claim_until_empty(store: Store, machine_id: str) -> list[Claim]:
    claims: list[Claim] = []
    while (job := await store.claim_job(machine_id, GROUP, None)) is not None:
        claims.append((machine_id, job.id))
    return claims


async def race(stores: Sequence[Store], claimers: int, prefix: str) -> list[Claim]:
    results = await asyncio.gather(
        *(claim_until_empty(stores[i % len(stores)], f"{prefix}-{i}") for i in range(claimers))
    )
    return [claim for claims in results for claim in claims]


async def all_jobs(store: Store) -> list[Job]:
    jobs: list[Job] = []
    page = 1
    while batch := await store.list_jobs(JobQuery(user_id=None, page=page, page_size=1000)):
        jobs += batch
        page += 1
    return jobs


async def assert_each_job_claimed_once(store: Store, ids: list[str], claims: list[Claim]) -> None:
    claimed = Counter(job_id for _, job_id in claims)
    assert [job_id for job_id, n in claimed.items() if n > 1] == []
    assert set(claimed) == set(ids) and len(claims) == len(ids)
    holders = {job.id: (job.status, job.machine_id) for job in await all_jobs(store)}
    assert all(holders[job_id] == ("running", machine) for machine, job_id in claims)
    attempts = await store.list_attempts(ids[0], None)
    assert attempts is not None and len(attempts) == 1


async def test_concurrent_claimers_on_two_stores_take_each_job_once(database_url: str) -> None:
    stores = [open_store(database_url), open_store(database_url)]
    for store in stores:
        await store.open()
    try:
        ids = await submit_jobs(stores[0], JOBS)

        claims = await race(stores, CLAIMERS, "m")

        await assert_each_job_claimed_once(stores[0], ids, claims)
    finally:
        for store in stores:
            await store.close()


def _claim_in_process(url: str, start: Barrier, results: multiprocessing.Queue[object]) -> None:
    """One OS process of claimers (run under multiprocessing spawn)."""

    async def main() -> list[Claim]:
        store = open_store(url)
        await store.open()
        try:
            await asyncio.to_thread(start.wait, 60)
            return await race([store], CLAIMERS // 2, multiprocessing.current_process().name)
        finally:
            await store.close()

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:
        results.put(repr(exc))
        raise


async def test_claimers_in_two_processes_on_one_sqlite_file_take_each_job_once(
    sqlite_url: str,
) -> None:
    store = open_store(sqlite_url)
    await store.open()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results: multiprocessing.Queue[object] = context.Queue()
    processes = [
        context.Process(
            target=_claim_in_process, args=(sqlite_url, start, results), name=f"proc{i}"
        )
        for i in range(2)
    ]
    try:
        ids = await submit_jobs(store, JOBS)
        for process in processes:
            process.start()
        claims: list[Claim] = []
        for _ in processes:
            try:
                result = await asyncio.to_thread(results.get, True, 120)
            except queue.Empty:
                pytest.fail("a claimer process gave no result within 120 s")
            assert isinstance(result, list), f"a claimer process failed: {result}"
            claims += result

        await assert_each_job_claimed_once(store, ids, claims)
        by_process = Counter(machine.split("-")[0] for machine, _ in claims)
        assert set(by_process) == {"proc0", "proc1"}  # both really raced
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
        results.close()
        await store.close()


PRIORITY_JOBS = 400
SPEC = {"command": "true"}
PRIORITY_CLAIMERS = 16


@dataclass(frozen=True)
class TimedClaim:
    started: float
    ended: float
    job_id: str


async def claim_timed_until_empty(store: Store, machine_id: str) -> list[TimedClaim]:
    claims: list[TimedClaim] = []
    while True:
        started = time.monotonic()
        job = await store.claim_job(machine_id, GROUP, None)
        if job is None:
            return claims
        claims.append(TimedClaim(started, time.monotonic(), job.id))


async def test_concurrent_claimers_hand_out_jobs_in_priority_order(database_url: str) -> None:
    """Claims racing on two stores: whenever one claim ended before another began, the first
    took a job that comes earlier in claim order (higher priority, then submitted earlier)."""
    stores = [open_store(database_url), open_store(database_url)]
    for store in stores:
        await store.open()
    try:
        user = await stores[0].create_user("prioritizer")
        order: list[tuple[int, int, str]] = []  # (-priority, submission position, id)
        for start in range(0, PRIORITY_JOBS, 100):
            priorities = [(i * 7919) % 11 - 5 for i in range(start, start + 100)]
            batch = [NewJob(GROUP, 3, 30, None, SPEC, priority=p) for p in priorities]
            jobs = await stores[0].create_jobs(user.id, batch)
            order += [(-job.priority, start + i, job.id) for i, job in enumerate(jobs)]
        rank = {job_id: position for position, (_, _, job_id) in enumerate(sorted(order))}

        results = await asyncio.gather(
            *(claim_timed_until_empty(stores[i % 2], f"m{i}") for i in range(PRIORITY_CLAIMERS))
        )

        claims = [claim for claimed in results for claim in claimed]
        assert sorted(claim.job_id for claim in claims) == sorted(rank)
        out_of_order = [
            (earlier.job_id, later.job_id)
            for earlier in claims
            for later in claims
            if earlier.ended < later.started and rank[earlier.job_id] > rank[later.job_id]
        ]
        assert out_of_order == []
        assert sum(1 for claimed in results if claimed) > 1  # the claimers really raced
    finally:
        for store in stores:
            await store.close()

"""A claim stays on the indexes it is written for, whatever shape the jobs take: a group whose
pending jobs are most of the table, a group of mostly finished jobs, a group with nothing in
it; for a user and for an admin; on PostgreSQL with the parameters' values and with the
generic plan a prepared statement may settle on; on SQLite with and without statistics.
The plans are the databases' own (EXPLAIN), for kelpie's own claim statement."""

from __future__ import annotations

import sqlite3

import pytest

from kelpie.store import open_store
from tests.support.bulk_jobs import JobsShape, load_jobs
from tests.support.claim_plan import ClaimPlan, claim_plans

pytestmark = pytest.mark.slow

QUEUE_JOBS = 30_000  # pending, in one group: most of the table
OTHER_JOBS = 20_000  # over ten groups, mostly completed, some running, pending, failed


async def _plans(database_url: str, user_id: str) -> dict[str, ClaimPlan]:
    plans = {}
    for group in ("queue-0", "mixed-3", "empty"):
        for caller, scope in (("user", user_id), ("admin", None)):
            for plan in await claim_plans(database_url, group, scope):
                plans[f"{plan.name}, group {group}, {caller}"] = plan
    return plans


async def test_claims_stay_on_the_claim_indexes_however_the_jobs_are_shaped(
    database_url: str,
) -> None:
    store = open_store(database_url)
    await store.open()
    user = await store.create_user("planner")
    await store.close()
    queue = JobsShape(
        user.id,
        QUEUE_JOBS,
        prefix="queue",
        running=0,
        pending=100,
        failed=0,
        canceled=0,
        priorities=3,
    )
    await load_jobs(database_url, queue)
    await load_jobs(database_url, JobsShape(user.id, OTHER_JOBS, prefix="mixed", groups=10))

    plans = await _plans(database_url, user.id)
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        conn.execute("ANALYZE")  # kelpie never does; an operator's tool might
        conn.close()
        analyzed = await _plans(database_url, user.id)
        plans.update({f"{name}, analyzed": plan for name, plan in analyzed.items()})

    assert len(plans) == 3 * 2 * 2  # groups, callers, plans (generic, or analyzed)
    problems = {name: plan.problems for name, plan in plans.items() if plan.problems}
    assert problems == {}, "\n\n".join(
        f"{name}: {plans[name].problems}\n{plans[name].text}" for name in problems
    )

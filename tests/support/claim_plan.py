"""The plan each database makes for kelpie's claim statement, and whether it stays on the
indexes the claim is written for: a group's pending jobs read in claim order from
`jobs_pending_by_group` (never sorted, never found by walking another index such as
`jobs_by_created`), its stalled running jobs from `jobs_running_by_group`.

SQLite plans each statement as it runs it: one plan. PostgreSQL plans a prepared statement
(asyncpg prepares every statement it sends) with the parameters' values for its first five
executions, then may settle on a generic plan made without them: both are shown and checked.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

import asyncpg

from kelpie.store import postgres, sqlite

PENDING_INDEX = "jobs_pending_by_group"
RUNNING_INDEX = "jobs_running_by_group"


@dataclass(frozen=True)
class ClaimPlan:
    name: str  # "sqlite", "postgresql custom", "postgresql generic"
    text: str
    problems: tuple[str, ...]


def _quote(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def sqlite_claim_plan(path: str, group: str, user_id: str | None) -> ClaimPlan:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN " + sqlite._CLAIM,
            {"machine_id": "plan-probe", "group": group, "user_id": user_id, "now": 0.0},
        ).fetchall()
    finally:
        conn.close()
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return ClaimPlan("sqlite", "\n".join(lines), tuple(sqlite_plan_problems(rows)))


def sqlite_plan_problems(rows: list[tuple[int, int, int, str]]) -> list[str]:
    problems = []
    pending = [row for row in rows if f"USING INDEX {PENDING_INDEX}" in row[3]]
    if not pending:
        problems.append(f"the pending jobs are not read through {PENDING_INDEX}")
    for _, parent, _, _ in pending:
        if any(p == parent and "TEMP B-TREE" in detail for _, p, _, detail in rows):
            problems.append(f"the pending jobs read from {PENDING_INDEX} are sorted again")
    if not any(f"USING INDEX {RUNNING_INDEX}" in row[3] for row in rows):
        problems.append(f"stalled jobs are not found through {RUNNING_INDEX}")
    problems += [
        f"a full scan of the jobs: {detail}"
        for _, _, _, detail in rows
        if re.match(r"SCAN (j|jobs)\b", detail)
    ]
    return problems


async def postgres_claim_plans(url: str, group: str, user_id: str | None) -> list[ClaimPlan]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"PREPARE kelpie_claim (text, text, text, text, text, timestamptz) AS {postgres._CLAIM}"
        )
        # now: NULL, the database clock, as in production
        values = ("plan-probe", group, user_id, "claimed", "lost", None)
        arguments = ", ".join(_quote(v) for v in values)
        plans = []
        for mode in ("custom", "generic"):
            await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
            rows = await conn.fetch(f"EXPLAIN EXECUTE kelpie_claim({arguments})")
            text = "\n".join(row[0] for row in rows)
            plans.append(ClaimPlan(f"postgresql {mode}", text, tuple(postgres_plan_problems(text))))
        return plans
    finally:
        await conn.close()


def _cte_sections(text: str) -> dict[str, str]:
    """The plan's lines under each `CTE name` heading."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    indent = 0
    for line in text.splitlines():
        heading = re.match(r"^(\s*)CTE (\w+)", line)
        if heading:
            indent = len(heading.group(1))
            current = sections.setdefault(heading.group(2), [])
            continue
        if current is not None and len(line) - len(line.lstrip()) > indent:
            current.append(line)
        else:
            current = None
    return {name: "\n".join(lines) for name, lines in sections.items()}


def postgres_plan_problems(text: str) -> list[str]:
    problems = []
    sections = _cte_sections(text)
    pending = sections.get("pending", "")
    if f"Index Scan using {PENDING_INDEX}" not in pending:
        problems.append(f"the pending jobs are not read through {PENDING_INDEX}")
    for node in ("Sort", "Bitmap", "Seq Scan"):
        if re.search(rf"->\s+{node}|^\s*{node}", pending, re.MULTILINE):
            problems.append(f"the pending scan has a {node} node")
    stalled = sections.get("stalled", "")
    if RUNNING_INDEX not in stalled:
        problems.append(f"stalled jobs are not found through {RUNNING_INDEX}")
    elif not re.search(r"Index Cond: .*lease_expires <", stalled):
        problems.append(f"the lease's end is not a condition of the {RUNNING_INDEX} scan")
    if "Seq Scan on jobs" in text:
        problems.append("a full scan of the jobs")
    if "jobs_by_created" in text:
        problems.append("a scan of jobs_by_created")
    return problems


async def claim_plans(database_url: str, group: str, user_id: str | None) -> list[ClaimPlan]:
    """The claim's plan(s) for a machine of `group` acting for `user_id` (None: an admin)."""
    if database_url.startswith("sqlite:///"):
        return [sqlite_claim_plan(database_url.removeprefix("sqlite:///"), group, user_id)]
    return await postgres_claim_plans(database_url, group, user_id)

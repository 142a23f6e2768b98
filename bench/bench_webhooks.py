"""Benchmark webhook delivery: one command, a table of the figures issue 4 asks for.

    .venv/bin/python bench/bench_webhooks.py [--backend sqlite|postgres|both]
        [--samples 200] [--drain 10000]

Latency: one `kelpie serve` and a healthy receiver process (tests/support/webhook_receiver.py,
verifying every signature); jobs are claimed and completed one at a time through the API, and
each event's latency runs from the moment the API acknowledged the change (and, as an upper
bound, from the moment the request was sent) to the moment the receiver read the delivery.

Drain: with no API process running, `--drain` jobs are claimed directly through the store,
which queues one `running` event each in the outbox; then `kelpie serve` starts and the rate is
the events delivered per second between the receiver's first and last delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.postgres import create_database, drop_database  # noqa: E402
from tests.support.processes import ServerProcess, free_port, start_server  # noqa: E402
from tests.support.webhook_receiver import ReceiverProcess, start_receiver  # noqa: E402

from kelpie.store import open_store  # noqa: E402
from kelpie.store.models import NewJob  # noqa: E402

LATENCY_TARGET_MS = 100.0
DRAIN_TARGET_PER_S = 500.0
WAIT_SECONDS = 30.0
CLAIM_BATCH = 1000


class Tail:
    """Reads the receiver's JSON lines as they are appended."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        if not self._path.exists():
            return []
        with self._path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(line) for line in lines]


def wait_for_record(tail: Tail, seen: dict[tuple[str, str], float], key: tuple[str, str]) -> float:
    """The receiver's `received_at` of the event `(job_id, status)`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while key not in seen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"event {key} was not delivered within {WAIT_SECONDS} s")
        for record in tail.read():
            if record["verified"] and 200 <= record["answered"] < 300:
                payload = record["payload"]
                seen.setdefault((payload["job_id"], payload["status"]), record["received_at"])
        time.sleep(0.0005)
    return seen[key]


@dataclass
class User:
    id: str
    key: str
    secret: str
    token: str


def new_user(server: ServerProcess) -> User:
    with httpx.Client(base_url=server.url, headers={"X-Kelpie-Key": server.admin_key}) as admin:
        created = admin.post("/users", json={"username": f"bench-{secrets.token_hex(4)}"})
        user_id = created.raise_for_status().json()["id"]
        key = admin.post(f"/users/{user_id}/token", json={}).raise_for_status().json()["token"]
    with httpx.Client(base_url=server.url, headers={"X-Kelpie-Key": key}) as http:
        me = http.get("/users/me").raise_for_status().json()
    return User(user_id, key, me["webhook_secret"], me["webhook_token"])


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure_latency(
    server: ServerProcess, receiver: ReceiverProcess, samples: int, user: User
) -> dict[str, float]:
    """Claim and complete `samples` jobs one at a time; two events each."""
    tail = Tail(receiver.out)
    seen: dict[tuple[str, str], float] = {}
    after_ack: list[float] = []
    from_send: list[float] = []
    worker = {"machine_id": "bench-m", "container_group_id": "bench-latency"}
    with httpx.Client(base_url=server.url, headers={"X-Kelpie-Key": user.key}) as http:
        for _ in range(samples):
            job = (
                http.post(
                    "/jobs",
                    json={
                        "command": "x",
                        "container_group_id": "bench-latency",
                        "webhook": receiver.url,
                    },
                )
                .raise_for_status()
                .json()
            )
            steps: list[tuple[str, str, str, dict[str, Any]]] = [
                ("running", "GET", "/work", {"params": worker}),
                ("completed", "POST", f"/jobs/{job['id']}/completed", {"json": worker}),
            ]
            for status, method, path, request in steps:
                sent = time.time()
                http.request(method, path, **request).raise_for_status()
                acknowledged = time.time()
                received = wait_for_record(tail, seen, (job["id"], status))
                after_ack.append(max(0.0, received - acknowledged) * 1000)
                from_send.append((received - sent) * 1000)
    return {
        "p50 after ack": statistics.median(after_ack),
        "p95 after ack": percentile(after_ack, 95),
        "p50 from send": statistics.median(from_send),
        "p95 from send": percentile(from_send, 95),
    }


async def queue_running_events(database_url: str, user_id: str, url: str, count: int) -> None:
    """`count` jobs claimed straight through the store: one queued `running` event each."""
    store = open_store(database_url)
    await store.open()
    try:
        spec = {"command": "x", "arguments": [], "environment": {}}
        job = NewJob("bench-drain", max_failures=3, heartbeat_interval=3600, webhook=url, spec=spec)
        for start in range(0, count, CLAIM_BATCH):
            await store.create_jobs(user_id, [job] * min(CLAIM_BATCH, count - start))
        for n in range(count):
            claimed = await store.claim_job(f"m-{n}", "bench-drain", user_id)
            assert claimed is not None
        queued = await store.pending_webhook_count()
        assert queued >= count, f"only {queued} events in the outbox"
    finally:
        await store.close()


async def outbox_left(database_url: str) -> int:
    store = open_store(database_url)
    await store.open()
    try:
        return await store.pending_webhook_count()
    finally:
        await store.close()


def measure_drain(
    database_url: str,
    server: ServerProcess,
    receiver: ReceiverProcess,
    count: int,
    user: User,
    logs: Path,
) -> dict[str, float]:
    server.stop()
    asyncio.run(queue_running_events(database_url, user.id, receiver.url, count))
    tail = Tail(receiver.out)
    tail.read()  # skip what the latency phase left
    started = time.time()
    restarted = start_server(database_url, server.admin_key, logs)
    try:
        received: list[float] = []
        deadline = time.monotonic() + 120
        while len(received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(received)} of {count} delivered within 120 s")
            received += [
                r["received_at"]
                for r in tail.read()
                if r["verified"]
                and 200 <= r["answered"] < 300
                and r["payload"]["status"] == "running"
            ]
            time.sleep(0.01)
    finally:
        restarted.stop()
    first, last = min(received), max(received)
    return {
        "rate": count / (last - first),
        "seconds": last - first,
        "from start": last - started,
        "left": asyncio.run(outbox_left(database_url)),
    }


def run_backend(backend: str, samples: int, drain: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        directory = Path(tmp)
        if backend == "sqlite":
            database_url = f"sqlite:///{directory / 'kelpie.db'}"
        else:
            database_url = asyncio.run(create_database())
        receiver: ReceiverProcess | None = None
        server = start_server(database_url, f"admin-{secrets.token_hex(16)}", directory / "logs")
        try:
            port = free_port()
            # The receiver checks signatures with the secret of the user the jobs belong to:
            # one user for the whole run, created before the receiver starts.
            owner = new_user(server)
            receiver = start_receiver(port, owner.secret, directory / "received.jsonl")
            print(f"{backend}: latency over {samples} jobs ...", flush=True)
            figures = measure_latency(server, receiver, samples, owner)
            print(f"{backend}: draining {drain} queued deliveries ...", flush=True)
            figures |= measure_drain(
                database_url, server, receiver, drain, owner, directory / "logs"
            )
            return figures
        finally:
            server.stop()
            if receiver is not None:
                receiver.stop()
            if backend == "postgres":
                asyncio.run(drop_database(database_url))


def render_table(results: dict[str, dict[str, float]], samples: int, drain: int) -> str:
    rows: list[tuple[str, Callable[[dict[str, float]], str], str]] = [
        (
            "delivery latency p50, after the API's ack",
            lambda f: f"{f['p50 after ack']:.1f} ms",
            f"<= {LATENCY_TARGET_MS:.0f} ms",
        ),
        ("delivery latency p95, after the API's ack", lambda f: f"{f['p95 after ack']:.1f} ms", ""),
        ("delivery latency p50, from request sent", lambda f: f"{f['p50 from send']:.1f} ms", ""),
        ("delivery latency p95, from request sent", lambda f: f"{f['p95 from send']:.1f} ms", ""),
        (
            f"drain {drain:,} queued deliveries",
            lambda f: f"{f['rate']:,.0f}/s",
            f">= {DRAIN_TARGET_PER_S:.0f}/s",
        ),
        ("  first to last delivery", lambda f: f"{f['seconds']:.1f} s", ""),
        ("  from `kelpie serve` start", lambda f: f"{f['from start']:.1f} s", ""),
        ("  left in the outbox after", lambda f: f"{f['left']:.0f}", "0"),
    ]
    backends = list(results)
    header = ["figure", *backends, "target"]
    table = [header] + [
        [name, *(show(results[backend]) for backend in backends), target]
        for name, show, target in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join([*lines, f"({samples} jobs, 2 events each, delivered one at a time)"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--samples", type=int, default=200, help="jobs for the latency figures")
    parser.add_argument("--drain", type=int, default=10_000, help="deliveries queued to drain")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {backend: run_backend(backend, args.samples, args.drain) for backend in backends}
    print()
    print(render_table(results, args.samples, args.drain))
    missed = [
        f"{backend} {name}"
        for backend, figures in results.items()
        for name, ok in (
            ("latency p50", figures["p50 after ack"] <= LATENCY_TARGET_MS),
            ("drain rate", figures["rate"] >= DRAIN_TARGET_PER_S),
        )
        if not ok
    ]
    print("\nmissed targets: " + (", ".join(missed) if missed else "none"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the operator view: one command, a table.

    .venv/bin/python bench/bench_ui.py [--backend sqlite|postgres|both] [--jobs N] [--json F]

For each backend it starts `kelpie serve` on a fresh database, submits 100,000 jobs through
the API (`POST /jobs/batch`) and runs 2,000 of them through claims, completions, failures and
hand-backs, so the store has an attempt history. Then:

- `/metrics` scrape: 5 warm-up then 30 `GET /metrics` (one keep-alive client); p50, p95, max.
- Dashboard job list, 100 of 100,000 jobs, in headless Chromium (Debian's, via Playwright):
  the key in session storage, `/ui/` opened 10 times in one tab, each time from navigation
  start to the 100-row table painted (Chromium's element timing of the last row); the first,
  cold load (nothing cached) is shown apart. Also the shell's first contentful paint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.postgres import create_database, drop_database  # noqa: E402
from tests.support.processes import ServerProcess, start_server  # noqa: E402

BATCH = 1000
HISTORY_JOBS = 2000
SCRAPES, SCRAPE_WARMUP = 30, 5
PAGE_LOADS = 10
PAINT_TIMEOUT_MS = 10_000
METRICS_TARGET_MS, PAINT_TARGET_MS = 50.0, 300.0

# Resolves with the render time of the element marked `jobs-rendered` (the table's last row),
# from Chromium's element timing, relative to navigation start.
_PAINTED_JS = """(timeout) => new Promise((resolve) => {
  const done = (value) => { observer.disconnect(); resolve(value); };
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (entry.identifier === "jobs-rendered") done(entry.renderTime || entry.loadTime);
    }
  });
  observer.observe({ type: "element", buffered: true });
  setTimeout(() => done(null), timeout);
})"""
_FCP_JS = """() => (performance.getEntriesByName("first-contentful-paint")[0] || {}).startTime"""


@dataclass
class Figures:
    backend: str
    jobs: int
    metrics_p50_ms: float
    metrics_p95_ms: float
    metrics_max_ms: float
    paint_p50_ms: float
    paint_max_ms: float
    paint_cold_ms: float
    shell_fcp_p50_ms: float
    rows: int


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    chromium = subprocess.run(
        [CHROMIUM, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": f"{len(os.sched_getaffinity(0))} usable",
        "cpu model": model,
        "memory": f"{int(meminfo[meminfo.index('MemTotal:') + 1]) / 1024 / 1024:.1f} GiB",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "chromium": chromium,
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def seed(server: ServerProcess, jobs: int) -> str:
    """A user owning `jobs` jobs in 20 groups, 2,000 of which ran (claims, completions,
    failures, hand-backs); returns the user's key."""
    with httpx.Client(
        base_url=server.url, headers={"X-Kelpie-Key": server.admin_key}, timeout=120
    ) as admin:
        user_id = admin.post("/users", json={"username": f"bench-{secrets.token_hex(4)}"}).json()[
            "id"
        ]
        key: str = admin.post(f"/users/{user_id}/token", json={}).json()["token"]
    with httpx.Client(base_url=server.url, headers={"X-Kelpie-Key": key}, timeout=120) as user:
        for start in range(0, jobs, BATCH):
            batch = [
                {
                    "command": "python",
                    "arguments": ["train.py", "--seed", str(i)],
                    "container_group_id": f"group-{i % 20}",
                    "checkpoint_bucket": "bench",
                    "checkpoint_prefix": f"runs/{i}/checkpoints",
                    "max_failures": 2,
                }
                for i in range(start, min(start + BATCH, jobs))
            ]
            answer = user.post("/jobs/batch", json=batch)
            answer.raise_for_status()
        for i in range(min(HISTORY_JOBS, jobs)):
            group, machine_id = f"group-{i % 20}", f"machine-{i % 50}"
            claimed = user.get(
                "/work", params={"machine_id": machine_id, "container_group_id": group}
            )
            found = claimed.json()
            if not found:
                continue
            outcome = ("completed", "failed", "interrupted", "completed")[i % 4]
            body: dict[str, Any] = {"machine_id": machine_id, "container_group_id": group}
            if outcome == "failed":
                body["exit_code"] = 1
            user.post(f"/jobs/{found[0]['id']}/{outcome}", json=body).raise_for_status()
    return key


def time_scrapes(url: str) -> list[float]:
    took = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(SCRAPE_WARMUP + SCRAPES):
            started = time.perf_counter()
            answer = client.get("/metrics")
            elapsed = (time.perf_counter() - started) * 1000
            answer.raise_for_status()
            if i >= SCRAPE_WARMUP:
                took.append(elapsed)
    return took


def time_page_loads(url: str, key: str) -> tuple[list[float], list[float], int]:
    """Milliseconds from navigation start to the job table painted, per load (the first one
    cold), the shell's first contentful paint per load, and the rows shown."""
    from playwright.sync_api import sync_playwright

    painted: list[float] = []
    shell: list[float] = []
    rows = 0
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(f"sessionStorage.setItem('kelpie.apiKey', {json.dumps(key)})")
        page = context.new_page()
        for _ in range(PAGE_LOADS):
            page.goto(f"{url}/ui/", wait_until="commit")
            at = page.evaluate(_PAINTED_JS, PAINT_TIMEOUT_MS)
            if at is None:
                raise RuntimeError("the job table was not painted within 10 s")
            painted.append(float(at))
            shell.append(float(page.evaluate(_FCP_JS) or 0.0))
            rows = page.locator("table.jobs tbody tr").count()
        browser.close()
    return painted, shell, rows


def run_backend(backend: str, jobs: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-ui-") as tmp:
        database = (
            f"sqlite:///{tmp}/kelpie.db"
            if backend == "sqlite"
            else asyncio.run(create_database()) + "?sslmode=disable"
        )
        server = start_server(database, f"admin-{secrets.token_hex(16)}", Path(tmp) / "logs")
        try:
            print(f"[{backend}] seeding {jobs:,} jobs ...", file=sys.stderr, flush=True)
            key = seed(server, jobs)
            print(f"[{backend}] measuring ...", file=sys.stderr, flush=True)
            scrapes = time_scrapes(server.url)
            painted, shell, rows = time_page_loads(server.url, key)
        finally:
            server.stop()
            if backend == "postgres":
                asyncio.run(drop_database(database.split("?", 1)[0]))
    warm = painted[1:]
    return Figures(
        backend=backend,
        jobs=jobs,
        metrics_p50_ms=statistics.median(scrapes),
        metrics_p95_ms=statistics.quantiles(scrapes, n=20)[-1],
        metrics_max_ms=max(scrapes),
        paint_p50_ms=statistics.median(warm),
        paint_max_ms=max(warm),
        paint_cold_ms=painted[0],
        shell_fcp_p50_ms=statistics.median(shell[1:]),
        rows=rows,
    )


def render(results: list[Figures]) -> str:
    def row(label: str, target: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + f" | {target} |"

    names = [r.backend for r in results]
    lines = [
        "| figure | " + " | ".join(names) + " | target |",
        "|---|" + "---|" * len(names) + "---|",
        row(
            f"`/metrics` scrape, {results[0].jobs:,} jobs: p50 / p95 / max",
            f"≤ {METRICS_TARGET_MS:.0f} ms",
            [
                f"{r.metrics_p50_ms:.1f} / {r.metrics_p95_ms:.1f} / {r.metrics_max_ms:.1f} ms"
                for r in results
            ],
        ),
        row(
            f"job list ({results[0].rows} of {results[0].jobs:,}) painted: p50 / max",
            f"≤ {PAINT_TARGET_MS:.0f} ms",
            [f"{r.paint_p50_ms:.0f} / {r.paint_max_ms:.0f} ms" for r in results],
        ),
        row(
            "job list painted, first (cold) load",
            "",
            [f"{r.paint_cold_ms:.0f} ms" for r in results],
        ),
        row(
            "shell first contentful paint: p50",
            "",
            [f"{r.shell_fcp_p50_ms:.0f} ms" for r in results],
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the figures and machine here")
    options = parser.parse_args()
    backends = ["sqlite", "postgres"] if options.backend == "both" else [options.backend]
    about = machine()
    results = [run_backend(backend, options.jobs) for backend in backends]
    for name, value in about.items():
        print(f"{name}: {value}")
    print()
    print(render(results))
    missed = [
        f"{r.backend}: {label}"
        for r in results
        for label, ok in (
            ("/metrics scrape p50", r.metrics_p50_ms <= METRICS_TARGET_MS),
            ("job list paint p50", r.paint_p50_ms <= PAINT_TARGET_MS),
        )
        if not ok
    ]
    if missed:
        print("\nmissed targets: " + ", ".join(missed))
    if options.json:
        options.json.write_text(
            json.dumps({"machine": about, "figures": [asdict(r) for r in results]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

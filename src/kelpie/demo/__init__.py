"""`kelpie demo`: watch a job survive the node running it.

Starts everything on this machine (the API on a temporary SQLite file, a local S3 server,
two workers), submits a job that counts and checkpoints, SIGKILLs the worker holding it
(and its job, as a node disappearing would), and shows the other worker resume from the
last checkpoint and finish. Everything it started is stopped and removed at the end, also
on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kelpie.client import KelpieClient
from kelpie.demo.count_job import RESUME_MARK
from kelpie.demo.processes import KelpieProcess, ServerProcess, start_server, start_worker
from kelpie.schemas import JobOut
from kelpie.storage import ObjectStorage, S3Settings
from kelpie.storage.local_server import LocalS3Server
from kelpie.worker.checkpoints import fetch_generation

BUCKET = "kelpie-demo"
GROUP = "demo-group"
NODES = ("node-a", "node-b")
CHECKPOINT_PREFIX = "demo/checkpoints/"
OUTPUT_PREFIX = "demo/outputs/"
TIMEOUT_S = 180.0


@dataclass
class Timeline:
    """Events as they happen, printed with the time since the job was submitted."""

    echo: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: str, detail: str, **data: Any) -> None:
        elapsed = time.monotonic() - self.started
        self.events.append({"t": round(elapsed, 2), "event": event, "detail": detail, **data})
        self.echo(f"  +{elapsed:6.2f}s  {event:<11} {detail}")


@dataclass
class DemoSettings:
    # A step takes longer than the worker's settle time (0.5 s), so each step's checkpoint is
    # committed as a generation while the next step works.
    steps: int = 20
    step_seconds: float = 0.7
    kill_at_step: int = 6
    heartbeat_interval: int = 1


@dataclass
class Demo:
    """What the demo started, so that all of it can be stopped."""

    workdir: Path
    s3: LocalS3Server
    server: ServerProcess
    admin_key: str
    workers: dict[str, KelpieProcess]
    client: KelpieClient
    storage: ObjectStorage
    runner: asyncio.Runner


@contextlib.contextmanager
def _demo_environment(echo: Callable[[str], None]) -> Iterator[Demo]:
    workdir = Path(tempfile.mkdtemp(prefix="kelpie-demo-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        s3 = LocalS3Server(workdir / "s3")
        s3.start()
        stack.callback(s3.stop)
        s3.create_bucket(BUCKET)
        admin_key = f"demo-{secrets.token_hex(16)}"
        server = start_server(f"sqlite:///{workdir / 'kelpie.db'}", admin_key, workdir / "logs")
        stack.callback(server.stop)
        workers: dict[str, KelpieProcess] = {}
        for node in NODES:
            worker = start_worker(
                server.url,
                admin_key,
                node,
                GROUP,
                workdir / node,
                workdir / "logs",
                extra_env=s3.env(),
            )
            workers[node] = worker
            stack.callback(worker.kill_with_descendants)
        client = stack.enter_context(KelpieClient(server.url, admin_key))
        runner = stack.enter_context(asyncio.Runner())
        storage = ObjectStorage(S3Settings.from_env(s3.env()))
        echo(f"  api      {server.url} (SQLite in {workdir})")
        echo(f"  s3       {s3.endpoint_url} bucket {BUCKET}")
        echo(f"  workers  {', '.join(NODES)} (container group {GROUP})")
        echo("")
        yield Demo(workdir, s3, server, admin_key, workers, client, storage, runner)


def _checkpoint_step(demo: Demo, job: JobOut) -> int | None:
    """The step in the job's newest committed checkpoint generation, if it has one yet."""
    if job.checkpoint_generation is None:
        return None
    local = demo.workdir / "peek" / str(job.checkpoint_generation)
    if not (local / "progress.json").exists():
        generation = demo.client.get_checkpoint(job.id, job.checkpoint_generation)
        demo.runner.run(fetch_generation(demo.storage, generation, local))
    step: int = json.loads((local / "progress.json").read_text())["step"]
    return step


def _resumed_from(worker: KelpieProcess) -> int | None:
    match = re.search(re.escape(RESUME_MARK) + r" (\d+)", worker.log())
    return int(match.group(1)) if match else None


def _submit(demo: Demo, settings: DemoSettings) -> JobOut:
    script = demo.workdir / "count_job.py"
    shutil.copy(Path(__file__).with_name("count_job.py"), script)
    return demo.client.submit_job(
        {
            "command": "python3",
            "arguments": [
                str(script),
                "--steps",
                str(settings.steps),
                "--step-seconds",
                str(settings.step_seconds),
            ],
            "checkpoint_bucket": BUCKET,
            "checkpoint_prefix": CHECKPOINT_PREFIX,
            "output_bucket": BUCKET,
            "output_prefix": OUTPUT_PREFIX,
            "container_group_id": GROUP,
            "heartbeat_interval": settings.heartbeat_interval,
        }
    )


def _follow(demo: Demo, job_id: str, settings: DemoSettings, timeline: Timeline) -> JobOut:
    """Watch the job to its end, killing its first node once it has checkpointed enough."""
    seen_attempts = 0
    last_step: int | None = None
    killed: str | None = None
    resumed_reported = False
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        job = demo.client.get_job(job_id)
        attempts = demo.client.list_attempts(job_id)
        for attempt in attempts[seen_attempts:]:
            timeline.add("claimed", f"by {attempt.machine_id}", machine_id=attempt.machine_id)
        seen_attempts = len(attempts)
        step = _checkpoint_step(demo, job)
        if step is not None and step != last_step:
            # Every fifth step, and the first one a new holder commits, keep the timeline short.
            if step % 5 == 0 or last_step is None or (killed and not resumed_reported):
                timeline.add(
                    "checkpoint",
                    f"step {step} committed as generation {job.checkpoint_generation}",
                    step=step,
                )
            last_step = step
        if killed is None and step is not None and step >= settings.kill_at_step and job.machine_id:
            killed = job.machine_id
            demo.workers[killed].kill_with_descendants()
            timeline.add(
                "killed",
                f"{killed}: worker and job SIGKILLed (the node is gone)",
                machine_id=killed,
                step=step,
            )
        if killed is not None and not resumed_reported and job.machine_id not in (None, killed):
            resumed = _resumed_from(demo.workers[job.machine_id])
            if resumed is not None:
                timeline.add(
                    "resumed",
                    f"on {job.machine_id} from step {resumed}, not from 0",
                    machine_id=job.machine_id,
                    step=resumed,
                )
                resumed_reported = True
        if job.status in ("completed", "failed", "canceled"):
            timeline.add(job.status, f"on {job.machine_id}", machine_id=job.machine_id)
            return job
        time.sleep(0.1)
    raise TimeoutError(f"the demo job did not finish within {TIMEOUT_S:.0f} s")


def _result(demo: Demo) -> dict[str, Any]:
    local = demo.workdir / "result"
    demo.runner.run(demo.storage.download_prefix(BUCKET, OUTPUT_PREFIX, local))
    result: dict[str, Any] = json.loads((local / "result.json").read_text())
    return result


def run_demo(settings: DemoSettings | None = None, *, as_json: bool = False) -> int:
    """Run the demo; 0 when the job completed after resuming from its checkpoint."""
    settings = settings or DemoSettings()
    echo: Callable[[str], None] = (lambda line: None) if as_json else print
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary: dict[str, Any] = {}
    try:
        echo("kelpie demo: a job survives the node running it\n")
        with _demo_environment(echo) as demo:
            summary["workdir"] = str(demo.workdir)
            timeline = Timeline(echo)
            job = _submit(demo, settings)
            timeline.add(
                "submitted",
                f"job {job.id} (count to {settings.steps}, a checkpoint per step)",
                job_id=job.id,
            )
            final = _follow(demo, job.id, settings, timeline)
            summary.update(job_id=job.id, status=final.status, events=timeline.events)
            if final.status == "completed":
                result = _result(demo)
                summary["result"] = result
                echo(f"\n  outputs  s3://{BUCKET}/{OUTPUT_PREFIX}result.json: {json.dumps(result)}")
                echo(
                    f"           runs started at steps {result['starts']}: the second run "
                    "picked up the checkpoint instead of starting over."
                )
        echo("\nEverything the demo started is stopped and removed.")
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped and removed.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        print(json.dumps(summary, indent=2))
    resumed = summary.get("result", {}).get("starts", [0])
    return 0 if summary.get("status") == "completed" and max(resumed) > 0 else 1

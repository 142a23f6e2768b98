"""The worker's final reports: a report the API refuses ends the attempt as dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kelpie.client import ApiUnavailable, AsyncKelpieClient, Conflict
from kelpie.schemas import JobEventIn, JobOut
from kelpie.worker.config import WorkerSettings
from kelpie.worker.imds import ImdsClient
from kelpie.worker.job import JobAttempt, Outcome
from kelpie.worker.node import Node
from kelpie.worker.plan import plan_transfers

JOB = JobOut.model_validate(
    {
        "id": "3f0c9a7e-5b1d-4c8e-9a51-2f7d6c1e8b40",
        "user_id": "u",
        "status": "running",
        "created": "2026-01-01T00:00:00.000Z",
        "command": "true",
        "container_group_id": "g",
        "attempt_id": 7,
    }
)


class RecordingClient(AsyncKelpieClient):
    """Answers the final reports as told, and records what was sent."""

    def __init__(self, answers: list[BaseException | None]) -> None:
        super().__init__("http://127.0.0.1:1", "key")
        self.answers = answers
        self.sent: list[tuple[str, int | None]] = []
        self.events: list[str] = []

    async def _answer(self, what: str, attempt_id: int | None) -> None:
        self.sent.append((what, attempt_id))
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer

    async def add_job_event(self, job_id: str, event: JobEventIn) -> None:
        # Events are sent in the background; answered here, none outlives the test.
        self.events.append(event.kind)

    async def report_completed(
        self, job_id: str, machine_id: str, container_group_id: str, attempt_id: int | None = None
    ) -> None:
        await self._answer("completed", attempt_id)

    async def report_failed(self, *args: Any, **kwargs: Any) -> None:
        await self._answer("failed", args[5] if len(args) > 5 else kwargs.get("attempt_id"))


def attempt(client: AsyncKelpieClient, tmp_path: Any) -> JobAttempt:
    settings = WorkerSettings(
        KELPIE_API_URL="http://127.0.0.1:1",
        KELPIE_API_KEY="key",
        SALAD_MACHINE_ID="m1",
        SALAD_CONTAINER_GROUP_ID="g",
        INPUT_DIR=str(tmp_path / "in"),
        CHECKPOINT_DIR=str(tmp_path / "ck"),
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    return JobAttempt(
        JOB, settings, client, None, Node(ImdsClient("http://127.0.0.1:1")), asyncio.Event()
    )


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([None], True),
        ([Conflict(409, "Conflict", "attempt 7 does not hold the job")], False),
        ([ApiUnavailable(None, "ConnectError", "down"), None], True),  # waits the API out
    ],
    ids=["taken", "refused", "unreachable then taken"],
)
async def test_a_report_counts_only_when_the_api_takes_it(
    answers: list[BaseException | None], expected: bool, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr("kelpie.worker.job.REPORT_BACKOFF_MAX_S", 0.01)
    client = RecordingClient(answers)
    job = attempt(client, tmp_path)

    taken = await job._report("completed", client.report_completed)

    assert taken is expected
    assert {attempt_id for _, attempt_id in client.sent} == {7}  # always with the token
    await client.aclose()


async def test_a_refused_failure_report_ends_the_attempt_as_dropped(
    tmp_path: Any,
) -> None:
    client = RecordingClient([Conflict(409, "Conflict", "attempt 7 does not hold the job")])
    job = attempt(client, tmp_path)

    outcome = await job._report_failed("exited with code 3", 3, local=True)

    assert outcome is Outcome.DROPPED  # not counted toward this node's failures
    await client.aclose()


async def test_a_refused_completed_report_is_not_counted_as_completed(tmp_path: Any) -> None:
    client = RecordingClient([Conflict(409, "Conflict", "attempt 7 does not hold the job")])
    job = attempt(client, tmp_path)

    outcome = await job._finish(plan_transfers(JOB, job._settings))

    assert outcome is Outcome.DROPPED
    assert client.sent == [("completed", 7)]
    await client.aclose()

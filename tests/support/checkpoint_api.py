"""A job's committed checkpoint generations, kept in process the way the kelpie API keeps
them, for testing the worker's checkpoint engine without a server.

`FakeCheckpointApi.claim(attempt_id)` makes that attempt the holder and returns its
`Committer`. Commits follow the API's rules: a repeat of a commit already taken (same
attempt, generation and files) gets the same answer; a non-holder, or a number that does
not go forward, gets 409 (`Conflict`); a key outside the job's own area
`<target prefix>.kelpie/<job id>/` gets 400. Other jobs are visible only when added with
`show_job` (the record the API would show, and that job's own fake API); others are 404.
The newest `keep` generations are kept; the answer lists the objects no kept generation
needs any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kelpie.client import ApiUnavailable, BadRequest, Conflict, NotFoundError
from kelpie.schemas import (
    CheckpointCommitted,
    CheckpointFile,
    CheckpointFileOut,
    CheckpointManifestOut,
    CheckpointOut,
    JobOut,
    ObjectRef,
)
from kelpie.worker.checkpoints.layout import job_area
from kelpie.worker.plan import CheckpointTarget

JOB_ID = "11111111-1111-4111-8111-111111111111"
USER_ID = "22222222-2222-4222-8222-222222222222"


@dataclass
class _Generation:
    number: int
    attempt_id: int
    files: list[CheckpointFile]
    answer: CheckpointCommitted | None = None


class FakeCheckpointApi:
    def __init__(
        self,
        targets: Sequence[CheckpointTarget],
        *,
        keep: int = 3,
        compressed: bool = False,
        job_id: str = JOB_ID,
    ) -> None:
        self.job_id = job_id
        self.others: dict[str, tuple[JobOut, FakeCheckpointApi]] = {}
        self._targets = {t.index: t for t in targets}
        self.keep = keep
        self.compressed = compressed
        self.holder: int | None = None
        self.generations: list[_Generation] = []
        self.refused = 0

    def show_job(self, job: JobOut, api: FakeCheckpointApi) -> None:
        """Make `job` (whose generations `api` keeps) visible to this job's worker."""
        self.others[job.id] = (job, api)

    def claim(self, attempt_id: int) -> FakeCommitter:
        self.holder = attempt_id
        return FakeCommitter(self, attempt_id)

    @property
    def newest(self) -> int | None:
        return self.generations[-1].number if self.generations else None

    def kept(self) -> list[_Generation]:
        return self.generations[-self.keep :]

    def kept_objects(self) -> set[tuple[str, str]]:
        return {(self._bucket(f), f.key) for g in self.kept() for f in g.files}

    def manifest(self, number: int) -> CheckpointManifestOut:
        found = next((g for g in self.kept() if g.number == number), None)
        if found is None:
            raise NotFoundError(404, "Not Found", f"no kept generation {number}")
        return CheckpointManifestOut(
            **self._out(found, kept=True).model_dump(),
            compressed=self.compressed,
            manifest=[
                CheckpointFileOut(
                    target=f.target,
                    path=f.path,
                    bucket=self._bucket(f),
                    key=f.key,
                    size=f.size,
                    sha256=f.sha256,
                )
                for f in found.files
            ],
        )

    def listing(self) -> list[CheckpointOut]:
        kept = {g.number for g in self.kept()}
        return [self._out(g, kept=g.number in kept) for g in self.generations]

    def commit(
        self, attempt_id: int, number: int, files: list[CheckpointFile]
    ) -> CheckpointCommitted:
        existing = next((g for g in self.generations if g.number == number), None)
        if existing is not None and existing.attempt_id == attempt_id and existing.files == files:
            assert existing.answer is not None
            return existing.answer
        if attempt_id != self.holder:
            self.refused += 1
            raise Conflict(409, "Conflict", "this attempt does not hold the job")
        if self.newest is not None and number <= self.newest:
            self.refused += 1
            raise Conflict(409, "Conflict", f"generation {number} does not go forward")
        for f in files:
            target = self._targets.get(f.target)
            if target is None or not f.key.startswith(job_area(target, self.job_id)):
                raise BadRequest(400, "Invalid request", f"key {f.key!r} is outside the area")
        before = self.kept_objects()
        generation = _Generation(number, attempt_id, list(files))
        self.generations.append(generation)
        expired = before - self.kept_objects()
        generation.answer = CheckpointCommitted(
            checkpoint=self._out(generation, kept=True),
            expired=[ObjectRef(bucket=b, key=k) for b, k in sorted(expired)],
        )
        return generation.answer

    def _bucket(self, f: CheckpointFile) -> str:
        return self._targets[f.target].bucket

    def _out(self, g: _Generation, *, kept: bool) -> CheckpointOut:
        return CheckpointOut(
            generation=g.number,
            attempt_id=g.attempt_id,
            machine_id="m",
            created=datetime.now(UTC),
            files=len(g.files),
            bytes=sum(f.size for f in g.files),
            kept=kept,
        )


class FakeCommitter:
    """The `Committer` of one attempt. `lease` and `reachable` play the heartbeat's view of
    the lease and an API that cannot be reached."""

    def __init__(self, api: FakeCheckpointApi, attempt_id: int) -> None:
        self._api = api
        self.attempt_id = attempt_id
        self.lease = True
        self.reachable = True
        self.commits_sent = 0
        self.looked_up: list[str] = []
        """Other jobs asked about (to restore a job without generations of its own)."""
        self.upload_seconds: list[float | None] = []

    def lease_ok(self) -> bool:
        return self.lease

    async def commit(
        self, generation: int, files: list[CheckpointFile], upload_seconds: float | None = None
    ) -> CheckpointCommitted:
        self._check_reachable()
        self.commits_sent += 1
        self.upload_seconds.append(upload_seconds)
        return self._api.commit(self.attempt_id, generation, files)

    async def generations(self) -> list[CheckpointOut]:
        self._check_reachable()
        return self._api.listing()

    async def manifest(self, generation: int) -> CheckpointManifestOut:
        self._check_reachable()
        return self._api.manifest(generation)

    async def other_job(self, job_id: str) -> JobOut:
        return self._other(job_id)[0]

    async def other_generations(self, job_id: str) -> list[CheckpointOut]:
        return self._other(job_id)[1].listing()

    async def other_manifest(self, job_id: str, generation: int) -> CheckpointManifestOut:
        return self._other(job_id)[1].manifest(generation)

    def _other(self, job_id: str) -> tuple[JobOut, FakeCheckpointApi]:
        self._check_reachable()
        self.looked_up.append(job_id)
        if job_id not in self._api.others:
            raise NotFoundError(404, "Not Found", f"Job {job_id} not found")
        return self._api.others[job_id]

    def _check_reachable(self) -> None:
        if not self.reachable:
            raise ApiUnavailable(None, "unavailable", "the API cannot be reached")

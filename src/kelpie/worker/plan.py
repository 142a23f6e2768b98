"""What moves where for one job: the transfers plan, built and checked before anything runs.

Both storage forms (legacy bucket/prefix pairs and `sync` blocks) become the same plan, so
the rest of the worker knows one shape. Every local folder a job names is checked here
against the allowed roots: the worker downloads into these folders and empties them after
the job, so a path like `/` or `/etc` must be refused before it is touched.

A relative folder means what it means to the reference worker, which hands it to Node's
`fs` as given: relative to the worker's working directory. The job's command runs in that
same directory, so `checkpoints/` names the same folder for the job and for the worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kelpie.schemas import CHECKPOINT_AREA, JobOut, SyncEntry, normalize_prefix
from kelpie.worker.config import WorkerSettings


class InvalidJob(Exception):
    """The job cannot run on this worker as submitted; the message goes into the failure report."""


@dataclass(frozen=True)
class JobDirs:
    """INPUT_DIR, CHECKPOINT_DIR and OUTPUT_DIR of a job: job env > container env > default."""

    input: Path
    checkpoint: Path
    output: Path

    def as_env(self) -> dict[str, str]:
        return {
            "INPUT_DIR": str(self.input),
            "CHECKPOINT_DIR": str(self.checkpoint),
            "OUTPUT_DIR": str(self.output),
        }


@dataclass(frozen=True)
class Download:
    """A bucket prefix copied into a local folder before the command starts."""

    bucket: str
    prefix: str
    local_dir: Path
    pattern: re.Pattern[str] | None
    warn_if_empty: bool
    """True for the legacy input prefix: the job runs without inputs (as on the reference
    worker), but naming inputs that are not there is likely a mistake worth a warning."""

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class UploadTarget:
    """A local folder whose matching files go to a bucket prefix (outputs: never deleted there)."""

    bucket: str
    prefix: str
    local_dir: Path
    pattern: re.Pattern[str] | None

    def key_for(self, path: Path) -> str | None:
        """The object key of `path`, or None when the file is outside this target or filtered."""
        try:
            relative = path.relative_to(self.local_dir)
        except ValueError:
            return None
        name = relative.as_posix()
        if name in ("", ".") or (self.pattern is not None and not self.pattern.search(name)):
            return None
        return self.prefix + name


@dataclass(frozen=True)
class CheckpointTarget:
    """A folder whose files belong to every checkpoint generation of the job.

    `index` is the number the API knows the target by: the legacy checkpoint prefix is 0,
    `sync.during[i]` is i. Generations keep their objects under `area`.
    """

    index: int
    bucket: str
    prefix: str
    """Normalized: empty (the bucket root) or ending in `/`."""
    local_dir: Path
    pattern: re.Pattern[str] | None
    plain_restore: Download | None
    """What restores the folder while the job has no generation yet: the legacy checkpoint
    prefix, or a `sync.before` entry naming the same bucket, prefix and folder."""

    @property
    def area(self) -> str:
        return self.prefix + CHECKPOINT_AREA

    def relative_path(self, path: Path) -> str | None:
        """`path` relative to the folder, when the file is part of generations: inside the
        folder, matching `pattern`, and not in a top-level `.kelpie/` (kelpie's own name)."""
        try:
            name = path.relative_to(self.local_dir).as_posix()
        except ValueError:
            return None
        if name in ("", ".") or f"{name}/".startswith(CHECKPOINT_AREA):
            return None
        if self.pattern is not None and not self.pattern.search(name):
            return None
        return name


@dataclass(frozen=True)
class TransferPlan:
    working_dir: Path
    """Where relative folders were resolved from, and where the job's command runs."""
    dirs: JobDirs
    downloads: tuple[Download, ...]
    """Inputs: copied into their folders before the command starts."""
    checkpoints: tuple[CheckpointTarget, ...]
    live_outputs: tuple[UploadTarget, ...]
    """Outputs uploaded while the job runs, each file once it is completely written."""
    after: tuple[UploadTarget, ...]
    compress: bool

    @property
    def local_dirs(self) -> tuple[Path, ...]:
        """Every folder the job uses: created before it runs, emptied before the next job."""
        seen: dict[Path, None] = dict.fromkeys(
            [self.dirs.input, self.dirs.checkpoint, self.dirs.output]
        )
        for download in self.downloads:
            seen.setdefault(download.local_dir)
        for checkpoint in self.checkpoints:
            seen.setdefault(checkpoint.local_dir)
        for target in (*self.live_outputs, *self.after):
            seen.setdefault(target.local_dir)
        return tuple(seen)


def plan_transfers(
    job: JobOut, settings: WorkerSettings, working_dir: Path | None = None
) -> TransferPlan:
    """The transfers of `job` on this worker; raises InvalidJob with a reason a user can act on.

    Relative folders are resolved from `working_dir` (default: the worker's own).
    """
    base = working_dir if working_dir is not None else Path.cwd()
    roots = allowed_roots(settings)
    dirs = job_dirs(job.environment, settings, roots, base)
    if job.sync is not None:
        before = [
            Download(
                e.bucket, e.prefix, _local(e, f"sync.before[{i}]", roots, base), _pattern(e), False
            )
            for i, e in enumerate(job.sync.before)
        ]
        during = _checkpoint_targets(job.sync.during, roots, base, before)
        restored = {target.plain_restore for target in during}
        return TransferPlan(
            working_dir=base,
            dirs=dirs,
            downloads=tuple(d for d in before if d not in restored),
            checkpoints=during,
            live_outputs=(),
            after=_targets(job.sync.after, "sync.after", roots, base),
            compress=job.compression,
        )
    downloads: list[Download] = []
    checkpoints: list[CheckpointTarget] = []
    outputs: list[UploadTarget] = []
    if job.input_bucket is not None and job.input_prefix is not None:
        downloads.append(Download(job.input_bucket, job.input_prefix, dirs.input, None, True))
    if job.checkpoint_bucket is not None and job.checkpoint_prefix is not None:
        bucket, prefix = job.checkpoint_bucket, job.checkpoint_prefix
        restore = Download(bucket, prefix, dirs.checkpoint, None, False)
        checkpoints.append(
            CheckpointTarget(0, bucket, normalize_prefix(prefix), dirs.checkpoint, None, restore)
        )
    if job.output_bucket is not None and job.output_prefix is not None:
        outputs.append(UploadTarget(job.output_bucket, job.output_prefix, dirs.output, None))
    return TransferPlan(
        base,
        dirs,
        tuple(downloads),
        tuple(checkpoints),
        tuple(outputs),
        tuple(outputs),
        job.compression,
    )


def allowed_roots(settings: WorkerSettings) -> tuple[Path, ...]:
    """KELPIE_SYNC_ROOTS plus the container's own job dirs (the operator chose those)."""
    return tuple(dict.fromkeys([*settings.sync_roots, *settings.job_dirs]))


def job_dirs(
    job_env: Mapping[str, str], settings: WorkerSettings, roots: Sequence[Path], base: Path
) -> JobDirs:
    """The three dirs with the job's `environment` winning; an override must stay in the roots."""

    def pick(name: str, container_value: Path) -> Path:
        raw = job_env.get(name)
        if raw is None or Path(raw) == container_value:
            return container_value
        return check_local_path(raw, roots, f"environment.{name}", base)

    return JobDirs(
        input=pick("INPUT_DIR", settings.input_dir),
        checkpoint=pick("CHECKPOINT_DIR", settings.checkpoint_dir),
        output=pick("OUTPUT_DIR", settings.output_dir),
    )


def check_local_path(raw: str, roots: Iterable[Path], what: str, base: Path) -> Path:
    """`raw` as an absolute, normalized path (a relative one is taken from `base`), if it
    lies inside one of `roots`; else InvalidJob.

    Inside means with symlinks resolved, both ways a `..` can be read: lexically (how the
    worker uses the path) and after the symlinks before it (how the kernel, and so the
    reference worker, would), so neither `..` nor a symlink leads out.
    """
    given = base / raw  # an absolute `raw` replaces `base`
    path = Path(os.path.normpath(given))
    roots = tuple(roots)
    real_roots = [root.resolve() for root in roots]
    for resolved in dict.fromkeys([path.resolve(), given.resolve()]):
        if not any(resolved == r or resolved.is_relative_to(r) for r in real_roots):
            shown = ", ".join(str(root) for root in roots)
            where = "" if str(resolved) == raw else f" (that is {resolved})"
            raise InvalidJob(
                f"{what} {raw!r}{where} is outside the folders this worker may use ({shown}); "
                "set KELPIE_SYNC_ROOTS on the worker to allow more"
            )
    return path


def _local(entry: SyncEntry, what: str, roots: Sequence[Path], base: Path) -> Path:
    return check_local_path(entry.local_path, roots, f"{what}.local_path", base)


def _pattern(entry: SyncEntry) -> re.Pattern[str] | None:
    return re.compile(entry.pattern) if entry.pattern is not None else None


def _targets(
    entries: Sequence[SyncEntry], phase: str, roots: Sequence[Path], base: Path
) -> tuple[UploadTarget, ...]:
    return tuple(
        UploadTarget(e.bucket, e.prefix, _local(e, f"{phase}[{i}]", roots, base), _pattern(e))
        for i, e in enumerate(entries)
    )


def _checkpoint_targets(
    entries: Sequence[SyncEntry], roots: Sequence[Path], base: Path, before: Sequence[Download]
) -> tuple[CheckpointTarget, ...]:
    """`sync.during` as checkpoint targets. Two entries on one bucket and prefix would store
    their files under the same keys, so that is refused."""
    targets: list[CheckpointTarget] = []
    for i, entry in enumerate(entries):
        local_dir = _local(entry, f"sync.during[{i}]", roots, base)
        prefix = normalize_prefix(entry.prefix)
        for other in targets:
            if (other.bucket, other.prefix) == (entry.bucket, prefix):
                raise InvalidJob(
                    f"sync.during[{i}] and sync.during[{other.index}] both upload to "
                    f"s3://{entry.bucket}/{prefix}; give each checkpoint folder its own prefix"
                )
        restore = next(
            (
                d
                for d in before
                if (d.bucket, normalize_prefix(d.prefix), d.local_dir)
                == (entry.bucket, prefix, local_dir)
            ),
            None,
        )
        targets.append(
            CheckpointTarget(i, entry.bucket, prefix, local_dir, _pattern(entry), restore)
        )
    return tuple(targets)

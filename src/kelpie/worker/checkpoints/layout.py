"""Where the objects of generations live in the user's bucket.

Every job has its own area under each checkpoint prefix: `<prefix>.kelpie/<job id>/`. A file
first uploaded for generation N by attempt A of job J lies at
`<prefix>.kelpie/<J>/a<A>/g<N>/<path>` (plus `.gz` when the job compresses). A job only
ever writes and deletes inside its own area, so jobs sharing a prefix (one after another,
or at once) never remove each other's objects. Keys carry the attempt, so a worker that lost
the job can never overwrite what a newer holder uploaded, and a leftover can be told apart
from a newer holder's work by its attempt number alone.

To find the newest checkpoint by hand: the job's `checkpoint_generation` is the newest
committed generation; `GET /jobs/{id}/checkpoints/{generation}` (or `kelpie jobs checkpoints
download`) names each of its objects, all under `<prefix>.kelpie/<job id>/`.
"""

from __future__ import annotations

import re
import uuid

from kelpie.worker.plan import CheckpointTarget

GZ_SUFFIX = ".gz"
_ATTEMPT = re.compile(r"a(\d+)/g\d+/.")


def job_area(target: CheckpointTarget, job_id: str) -> str:
    """The folder under which `job_id` keeps the objects of its generations of `target`."""
    return f"{target.area}{job_id}/"


def object_key(
    target: CheckpointTarget,
    job_id: str,
    attempt_id: int,
    generation: int,
    path: str,
    *,
    compress: bool,
) -> str:
    """The key `path` of `target` is uploaded to for `generation` by `attempt_id` of `job_id`."""
    key = f"{job_area(target, job_id)}a{attempt_id}/g{generation}/{path}"
    return key + GZ_SUFFIX if compress else key


def attempt_of(target: CheckpointTarget, job_id: str, key: str) -> int | None:
    """The attempt of `job_id` that uploaded `key`, or None for a key kelpie did not lay out
    there (outside the job's area, or not of the `a<A>/g<N>/` form)."""
    area = job_area(target, job_id)
    if not key.startswith(area):
        return None
    found = _ATTEMPT.match(key, len(area))
    return int(found.group(1)) if found else None


def is_job_id(name: str) -> bool:
    """True when a folder name under `<prefix>.kelpie/` can be a job's area (a job id)."""
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False

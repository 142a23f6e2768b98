"""The words and examples of the OpenAPI spec (`/openapi.json`, `/docs`): field and parameter
descriptions taken from the contract (docs in PROTOCOL terms), and a request and response
example for every operation. Examples are built from the wire models themselves, so an
example that no longer fits its model fails at import, and tests check that every field and
operation has its entry here.

A model's own `Field(description=...)` wins over the text here.
"""

from __future__ import annotations

from typing import Any

from kelpie.schemas import JobOut

JOB_ID = "3f0c9a7e-5b1d-4c8e-9a51-2f7d6c1e8b40"
USER_ID = "6a1e2c9b-0d3f-4e57-8c21-9b4f3a7d5e60"
GROUP = "97f504e8-6de6-4322-b5d5-1777a59a7ad3"
MACHINE = "d0c5a9b2-1e3f-4a6b-8c7d-9e0f1a2b3c4d"
OTHER_MACHINE = "5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170"
CREATED = "2025-03-14T09:26:53.589Z"
STARTED = "2025-03-14T09:27:01.204Z"
HEARTBEAT = "2025-03-14T11:02:44.017Z"

_PREFIX = "A folder in the bucket; normalized to end in `/` (the empty prefix is the bucket root)."
_TIME = "ISO-8601 UTC with milliseconds and a `Z`, or null."

FIELD_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "JobCreate": {
        "command": "The program to run inside the worker's container (non-empty).",
        "arguments": "Its arguments, passed as given (no shell).",
        "environment": "Variables merged over the container's environment; the job's value "
        "wins on conflict. Names must be valid shell names.",
        "input_bucket": "Legacy storage: bucket of the inputs, downloaded to `INPUT_DIR` "
        "before the command starts. Give it with `input_prefix`, or neither.",
        "input_prefix": "Legacy storage: " + _PREFIX,
        "checkpoint_bucket": "Legacy storage: bucket of the checkpoints; the newest committed "
        "generation is restored to `CHECKPOINT_DIR` before the command starts, and finished "
        "files there are uploaded while it runs.",
        "checkpoint_prefix": "Legacy storage: " + _PREFIX,
        "output_bucket": "Legacy storage: bucket the files of `OUTPUT_DIR` are uploaded to.",
        "output_prefix": "Legacy storage: " + _PREFIX,
        "sync": "Transfers before, during and after the command. Not combined with the "
        "legacy storage fields (400).",
        "max_failures": "Failures (non-zero exit, failed upload) after which the job is "
        "`failed`; before that it is pending again at once, and the failing machine never "
        "receives it again.",
        "heartbeat_interval": "Seconds between the worker's heartbeats. A running job whose "
        "holder has not beaten for twice this long is handed to the next machine that asks.",
        "webhook": "http(s) URL kelpie POSTs to when the job becomes running, completed or "
        "failed (signed, retried for 24 hours).",
        "container_group_id": "The queue: only workers of this container group receive the job.",
        "compression": "Gzip uploads (the key gets `.gz`); downloads of `.gz` keys are gunzipped.",
        "checkpoint_keep": "How many committed checkpoint generations are kept; older ones' "
        "objects are deleted.",
        "priority": "An integer from -1000 to 1000 (default 0). Within its container group "
        "a job of higher priority is handed out before any of lower priority, jobs of equal "
        "priority oldest first. A stalled running job is handed on before any pending one, "
        "whatever their priorities.",
        "name": "A name for people and filters (`GET /jobs?name=`); need not be unique. "
        "1-255 characters, or null.",
        "labels": "Up to 32 `key: value` strings for filters (`GET /jobs?label=key=value`). "
        "Keys: 1-63 letters, digits and `_ . / -`, starting and ending with a letter or "
        "digit; values up to 255 characters.",
        "max_duration": "Seconds an attempt's command may run (1 s to 366 days; null: no "
        "limit). Then the worker stops it (SIGTERM, the stop grace, SIGKILL), commits what "
        "its checkpoints allow, and reports a failure whose reason starts with `timed out`.",
        "max_interruptions": "Interruptions (the node going away, a lost heartbeat, an exit "
        "code in `retry.interruption_exit_codes`) after which the job is `failed`, its "
        "`last_error` saying so: a job that can never finish on this fleet ends. Null: no "
        "limit.",
        "retry": "What an exit code means beyond an ordinary failure: some fail the job at "
        "once, others count as an interruption. Null: every non-zero exit is a failure.",
        "logs_prefix": "`s3://bucket/prefix` where the worker puts each attempt's stdout and "
        "stderr (prefix normalized to end in `/`). Null: next to the output prefix.",
        "stall_timeout": "Seconds (at least twice `heartbeat_interval`) a running attempt may "
        "go without its progress (`$KELPIE_PROGRESS_FILE`) changing, counted from its claim "
        "while it never wrote any. Then it is stopped and counted as a failure whose "
        "`last_error` starts with `stalled` (the machine is blocked from the job, as after "
        "any failure). Null: never.",
    },
    "RetryRules": {
        "fail_exit_codes": "Exit codes (1-255) that fail the job at once, whatever "
        "`max_failures` allows: errors no retry fixes.",
        "interruption_exit_codes": "Exit codes (1-255) that count as an interruption instead "
        "of a failure, e.g. 143 from a job that handles SIGTERM from its own preemption "
        "notice: no failure counted, the machine not blocked, pending again at once.",
    },
    "JobOut": {
        "id": "The job's id (a UUID).",
        "user_id": "The user who submitted it.",
        "status": "`pending` (waiting for a machine), `running`, `completed`, `canceled` or "
        "`failed`.",
        "created": "When it was submitted (ISO-8601 UTC with milliseconds and a `Z`).",
        "started": "When a machine first started it. " + _TIME,
        "completed": "When it completed. " + _TIME,
        "canceled": "When it was canceled. " + _TIME,
        "failed": "When it failed for good. " + _TIME,
        "heartbeat": "The holder's last heartbeat (the claim counts as one). " + _TIME,
        "num_failures": "Failures so far; at `max_failures` the job is `failed`.",
        "num_heartbeats": "Heartbeats received, over every attempt.",
        "machine_id": "The machine holding the job (running), or that last held it once it "
        "ended; null while it is pending.",
        "last_exit_code": "Exit code of the last failure report, or null.",
        "last_error": "Reason given by the last failure report, or null. From a kelpie "
        "worker it ends with the last ~2 KB of the job's stderr.",
        "checkpoint_generation": "Newest committed checkpoint generation, or null.",
        "num_interruptions": "Interruptions so far (attempts handed back or lost, and "
        "failures `retry.interruption_exit_codes` counts as interruptions); at "
        "`max_interruptions` the job is `failed`.",
        "attempt_id": "Only in the answer of `GET /work`: the claim's attempt id, which the "
        "worker sends with every later call (its fencing token).",
        "logs_prefix": "Where the attempts' logs go (`s3://bucket/prefix/`), or null for the "
        "default next to the output prefix.",
        "stall_timeout": "Seconds without progress before a running attempt is stopped, or null.",
        "progress": "The JSON object the job last wrote to `$KELPIE_PROGRESS_FILE` (e.g. "
        '`{"step": 1200, "total": 5000, "message": "epoch 3"}`), kept across attempts; null '
        "before it wrote any.",
        "progress_updated_at": "When `progress` last changed (not when it was last sent). " + _TIME,
        "pending_reason": "Only in `GET /jobs/{id}` of a pending job (null otherwise, and in "
        "lists): why it waits.",
    },
    "PendingReasonOut": {
        "reason": "`no_workers`: no machine of its group asked for work or held a job within "
        "`recent_seconds`; `blocked`: every such machine failed this job before and never "
        "receives it again; `queued`: it waits its turn behind `jobs_ahead` jobs.",
        "message": "The reason in words.",
        "machines": "Machines of its group seen within `recent_seconds` through its owner's "
        "keys or an admin's.",
        "blocked_machines": "Of those, the ones blocked from this job.",
        "busy_machines": "Of those, the ones holding a job now.",
        "jobs_ahead": "Its owner's pending jobs of the group handed out before it (higher "
        "priority, or equal priority and submitted earlier).",
        "recent_seconds": "How recently a machine must have been seen to count.",
    },
    "HeartbeatReport": {
        "machine_id": "The holder's machine id.",
        "container_group_id": "Its container group.",
        "attempt_id": "The claim's attempt id (kelpie workers); absent for the reference worker.",
        "progress": "What the job last wrote to `$KELPIE_PROGRESS_FILE`: a JSON object of at "
        "most 4096 bytes. A beat bringing a different one records it, pushes the stall "
        "deadline back, and adds a `progress` event at a milestone (the first, a new "
        "`message`, or `step/total` entering another tenth). Absent: progress unchanged.",
    },
    "WorkerOut": {
        "machine_id": "The machine (`SALAD_MACHINE_ID`).",
        "container_group_id": "The group it asks work for.",
        "user_id": "The user whose key it uses.",
        "first_seen": "When it was first seen.",
        "last_seen": "Its last poll for work or heartbeat (recorded at most every ~10 s).",
        "last_poll": "Its last poll for work (`GET /work`). " + _TIME,
        "current_job_id": "The job of the group it holds now, or null.",
        "blocked_jobs": "Jobs of its key's user it failed, which it never receives again.",
        "version": "The kelpie version it sent in `X-Kelpie-Worker-Version`; null for other "
        "workers (the reference worker).",
    },
    "WorkerList": {
        "_count": "Machines listed (at most 1000).",
        "workers": "By container group, then machine id.",
    },
    "JobList": {
        "_count": "Jobs in this page (not the total).",
        "jobs": "The page, newest first unless `asc=true`.",
    },
    "SyncConfig": {
        "before": "Downloads before the command starts (`direction: download`).",
        "during": "Uploads while it runs, of every finished file (`direction: upload`); "
        "these are the job's checkpoint targets.",
        "after": "Uploads after it exits 0, before `completed` is reported (`direction: upload`).",
    },
    "SyncEntry": {
        "bucket": "The bucket (yours; kelpie never stores your data).",
        "prefix": _PREFIX,
        "local_path": "The folder in the container; a relative path is taken from the "
        "worker's working directory, inside the allowed roots.",
        "direction": "`download` (in `before`) or `upload` (in `during` and `after`).",
        "pattern": "Regular expression matched against each file's path relative to "
        "`local_path`; only matching files sync. Null: every file.",
    },
    "AttemptOut": {
        "id": "The attempt's id: the `attempt_id` its claim handed out.",
        "machine_id": "The machine that held the job.",
        "started": "When the machine claimed it.",
        "ended": "When the hold ended. " + _TIME,
        "outcome": "`running` (still held), `completed`, `failed`, `interrupted` (handed "
        "back by its node), `canceled`, or `lost` (stopped heartbeating; taken over).",
        "exit_code": "The command's exit code, when reported.",
        "warnings": "What the worker warned about during this attempt.",
    },
    "WorkerReport": {
        "machine_id": "The reporting machine (`SALAD_MACHINE_ID`).",
        "container_group_id": "Its container group (`SALAD_CONTAINER_GROUP_ID`).",
        "attempt_id": "The claim's attempt id. With it the call is fenced by attempt and a "
        "non-holder gets 409; without it (the reference worker), by machine.",
    },
    "FailureReport": {
        "exit_code": "The command's exit code, if it exited.",
        "error": "Why it failed, in a line.",
    },
    "HeartbeatOut": {
        "status": "`running` while the caller holds the job; anything else means drop it "
        "(`canceled` when another machine holds it).",
    },
    "Message": {"message": "What happened."},
    "PurgeOut": {"count": "Pending jobs deleted plus running jobs canceled."},
    "ErrorOut": {
        "error": "The kind of error (`Invalid request`, `Not Found`, `Conflict`, ...).",
        "message": "What was wrong, naming the field when a value was refused.",
    },
    "CheckpointCommit": {
        "machine_id": "The holding machine.",
        "container_group_id": "Its container group.",
        "attempt_id": "The holding attempt; another attempt's commit is refused (409).",
        "generation": "The generation number; must be newer than the newest committed one.",
        "files": "Every file of the generation (at most 10,000).",
        "upload_seconds": "Seconds from the generation's files being complete to this commit "
        "(its upload): the checkpoint's cost in the goodput report.",
    },
    "CheckpointFile": {
        "target": "Which checkpoint folder: 0 is the legacy checkpoint prefix; with `sync`, "
        "target i is `sync.during[i]`.",
        "path": "The file's place inside that folder: relative and normalized.",
        "key": "The object holding it, under the job's own area of that folder's prefix: "
        "`<prefix>.kelpie/<job id>/` (a key elsewhere, another job's area included, is "
        "refused).",
        "size": "Size in bytes of the file as the job wrote it.",
        "sha256": "SHA-256 (hex) of the file's bytes as the job wrote them (before gzip).",
    },
    "CheckpointOut": {
        "generation": "The generation number.",
        "attempt_id": "The attempt that committed it.",
        "machine_id": "The machine that committed it.",
        "created": "When it was committed.",
        "files": "Number of files.",
        "bytes": "Their total size.",
        "kept": "False once newer generations pushed it out of `checkpoint_keep`: its "
        "objects may be gone.",
    },
    "CheckpointFileOut": {
        "target": "The checkpoint folder (see `CheckpointFile.target`).",
        "path": "The file's place inside it.",
        "bucket": "The bucket holding the object.",
        "key": "The object's key.",
        "size": "Size in bytes (before gzip).",
        "sha256": "SHA-256 (hex) of the plain bytes.",
    },
    "CheckpointManifestOut": {
        "compressed": "Objects are gzipped (the job's `compression`); sizes and hashes are "
        "of the plain bytes.",
        "manifest": "The generation's files.",
    },
    "CheckpointCommitted": {
        "checkpoint": "The committed generation.",
        "expired": "Objects no kept generation needs any more; the committing worker deletes them.",
    },
    "ObjectRef": {"bucket": "The bucket.", "key": "The object's key."},
    "JobEventIn": {
        "machine_id": "The holding machine.",
        "container_group_id": "Its container group.",
        "attempt_id": "The holding attempt; only it may post (409 otherwise).",
        "kind": "What happened: `inputs_downloaded`, `checkpoint_restored` (`data.job` names "
        "the earlier job it came from, for a job without generations of its own), "
        "`checkpoint_fallback`, `started` (the command started), `outputs_uploaded` (the "
        "final uploads took `data.seconds`) or `warning`.",
        "message": "A line for people.",
        "data": "Up to 20 small values (numbers, booleans, short strings) for programs.",
    },
    "JobEventOut": {
        "id": "Increasing id; pass the last one seen as `after` to read only newer events.",
        "time": "When it happened.",
        "kind": "`claimed`, `lost`, `failed`, `interrupted`, `completed`, `canceled`, "
        "`checkpoint_committed` (written by the API), or a worker's kind "
        "(`inputs_downloaded`, `checkpoint_restored`, `checkpoint_fallback`, `started`, "
        "`outputs_uploaded`, `warning`).",
        "message": "A line for people.",
        "attempt_id": "The attempt it belongs to, if any.",
        "machine_id": "The machine involved, if any.",
        "data": "Values for programs, if any.",
    },
    "UserCreate": {"username": "Unique name: letters, digits and `_ . @ -`."},
    "UserOut": {
        "id": "The user's id.",
        "username": "The user's name.",
        "created": "When the user was created.",
    },
    "MeOut": {
        "is_admin": "Admins see every user's jobs and manage users.",
        "webhook_secret": "Signs this user's webhook deliveries (Standard Webhooks, `whsec_...`).",
        "webhook_token": "Sent as `X-Kelpie-Key` on this user's webhook deliveries (never an "
        "API key).",
    },
    "TokenCreate": {
        "org_name": "The SaladCloud organization the key acts for (autoscaling, reallocation).",
        "project_name": "The SaladCloud project the key acts for.",
    },
    "TokenOut": {
        "token": "The new API key, shown only this once (send it as `X-Kelpie-Key`).",
        "id": "The key's id, to list or revoke it later (never the key itself).",
    },
    "ApiKeyOut": {
        "id": "The key's id (`DELETE /users/{user_id}/tokens/{token_id}` revokes it).",
        "created": "When the key was made. " + _TIME,
        "org_name": "The SaladCloud organization the key acts for, if any.",
        "project_name": "The SaladCloud project the key acts for, if any.",
        "revoked": "True once the key was revoked: it no longer works.",
        "bootstrap": "True for the key `KELPIE_ADMIN_KEY` names; a start with another admin "
        "key revokes it.",
    },
    "ApiKeyList": {
        "_count": "How many keys the list holds.",
        "tokens": "The user's keys, revoked ones included, oldest first.",
    },
    "ScalingRuleCreate": {
        "container_group_id": "The SaladCloud container group the rule sizes.",
        "min_replicas": "Fewest replicas (0-500); 0 lets the group stop when idle.",
        "max_replicas": "Most replicas (0-500).",
        "idle_threshold_seconds": "Jobs that ended within this many seconds still count "
        "toward the target (0-3600).",
    },
    "ScalingRuleUpdate": {
        "min_replicas": "New fewest replicas, if given.",
        "max_replicas": "New most replicas, if given.",
        "idle_threshold_seconds": "New idle threshold, if given.",
    },
    "ScalingRuleOut": {
        "container_group_id": "The container group the rule sizes.",
        "user_id": "The rule's owner.",
        "min_replicas": "Fewest replicas.",
        "max_replicas": "Most replicas.",
        "idle_threshold_seconds": "Jobs ended within this many seconds still count.",
        "created": "When the rule was created.",
        "updated": "When it last changed.",
    },
    "ScalingRuleList": {"_count": "Number of rules.", "rules": "The caller's rules."},
    "HealthOut": {"status": "Always `ok` when the API answers.", "version": "kelpie's version."},
    "JobCounts": {
        "pending": "Waiting for a machine.",
        "running": "Held by a machine.",
        "completed": "Completed.",
        "canceled": "Canceled.",
        "failed": "Failed for good.",
    },
    "GroupOut": {
        "container_group_id": "The container group (the queue).",
        "jobs": "The caller's jobs in it, by status.",
    },
    "GroupList": {"_count": "Number of groups.", "groups": "Groups ordered by id."},
    "BlockedMachineOut": {
        "machine_id": "The machine.",
        "jobs": "Jobs of the group it failed, and so never receives again.",
        "last_blocked": "When it was last blocked.",
        "reallocated": "Whether it was handed to the fleet provider for replacement.",
    },
    "ActivityBucketOut": {
        "start": "Start of the bucket.",
        "pending": "Queue depth (pending jobs) at the bucket's end.",
        "running": "Running jobs at the bucket's end.",
        "interrupted": "Attempts handed back by their node within the bucket.",
        "lost": "Attempts whose machine stopped heartbeating (lease expired) within it.",
        "failed": "Attempts that failed within it.",
        "completed": "Attempts that completed within it.",
        "canceled": "Attempts canceled within it.",
    },
    "GroupActivityOut": {
        "since": "Start of the first bucket.",
        "bucket_seconds": "Length of each bucket.",
        "buckets": "Consecutive buckets up to now.",
    },
    "GroupDetailOut": {
        "blocked_machines": "Machines blocked from the caller's jobs of the group, most "
        "recently blocked first.",
        "activity": "Queue depth, running jobs and ended attempts over the window.",
    },
}

_SECONDS = " In seconds."
FIELD_DESCRIPTIONS.update(
    {
        "AttemptGoodputOut": {
            "id": "The attempt's id.",
            "machine_id": "The machine that held the job.",
            "outcome": "How the hold ended (as in `/attempts`).",
            "started": "When the machine claimed the job.",
            "ended": "When the hold ended. " + _TIME,
            "end": "When the attempt's work ended: `ended`; for a `lost` attempt the holder's "
            "last heartbeat (it died then; the takeover came later); now while it runs.",
            "downloading_s": "From the claim to the command's start: inputs and the "
            "checkpoint restore. A worker that never reports its command's start (the "
            "reference worker) counts as running from the claim." + _SECONDS,
            "running_s": "The command running." + _SECONDS,
            "uploading_s": "The final uploads after the command exited 0." + _SECONDS,
            "checkpoints": "Checkpoint generations this attempt committed.",
            "last_checkpoint": "When it last committed one. " + _TIME,
            "work_lost_s": "For an interrupted, lost or failed attempt: running time after "
            "the later of the command's start and its last committed checkpoint, which the "
            "next attempt must do again. Null otherwise." + _SECONDS,
            "detection_delay_s": "For an interrupted or lost attempt: from its end to the "
            "next attempt's claim (the job running again); null before that." + _SECONDS,
        },
        "GoodputTotalsOut": {
            "attempts": "Attempts so far.",
            "interruptions": "Attempts interrupted or lost.",
            "failures": "Attempts that failed.",
            "downloading_s": "All attempts' downloading." + _SECONDS,
            "running_s": "All attempts' running." + _SECONDS,
            "uploading_s": "All attempts' final uploads." + _SECONDS,
            "work_lost_s": "Work lost at interruptions and failures." + _SECONDS,
            "detection_delay_s": "All detection delays." + _SECONDS,
            "useful_running_s": "Running time whose work was kept: running minus work lost."
            + _SECONDS,
            "goodput": "Useful running time over the time machines held the job (0 to 1), "
            "or null before any attempt.",
        },
        "JobGoodputOut": {
            "job_id": "The job.",
            "status": "The job's status.",
            "attempts": "Every attempt, oldest first.",
            "totals": "The attempts summed.",
        },
        "YoungDalyOut": {
            "interval_s": "τ* ≈ √(2·C·M): the checkpoint interval that loses least to "
            "checkpoint cost and interruptions together (Young 1974, Daly 2006)." + _SECONDS,
            "checkpoint_cost_s": "C: the mean checkpoint cost (files complete to commit)."
            + _SECONDS,
            "mean_time_between_interruptions_s": "M: the mean running time between "
            "interruptions." + _SECONDS,
            "formula": "How `interval_s` follows from the other two.",
        },
        "GroupGoodputOut": {
            "container_group_id": "The container group.",
            "since": "Start of the window: attempts that started from then on count.",
            "until": "End of the window (now).",
            "attempts": "Attempts in the window.",
            "interruptions": "Of those, interrupted (node going away, or an exit code in "
            "`retry.interruption_exit_codes`) or lost (stopped heartbeating).",
            "failures": "Of those, failed.",
            "downloading_s": "Their downloading (claim to command start)." + _SECONDS,
            "running_s": "Their running." + _SECONDS,
            "uploading_s": "Their final uploads." + _SECONDS,
            "interruptions_per_hour": "Interruptions per hour of running, or null without "
            "running time.",
            "mean_time_between_interruptions_s": "Running time per interruption (M), or null "
            "without interruptions." + _SECONDS,
            "checkpoints": "Checkpoint generations committed by these attempts.",
            "mean_checkpoint_interval_s": "Mean time between consecutive commits of one "
            "attempt, or null." + _SECONDS,
            "mean_checkpoint_cost_s": "Mean time from a generation's files being complete to "
            "its commit (C), or null when no worker reported it." + _SECONDS,
            "gpu_time_lost_s": "Work lost at interruptions: running time since the last "
            "committed checkpoint, which had to be done again." + _SECONDS,
            "mean_detection_delay_s": "Mean time from an interruption to the job running "
            "again, or null." + _SECONDS,
            "young_daly": "The checkpoint interval that would lose least, with its inputs; "
            "null until both C and M are known.",
        },
    }
)

PARAMETER_DESCRIPTIONS: dict[str, str] = {
    "status": "Only jobs in this status.",
    "container_group_id": "The container group (the queue).",
    "page_size": "Jobs per page (1-1000).",
    "page": "Page number, from 1.",
    "asc": "Oldest first instead of newest first (by `created`).",
    "machine_id": "The asking machine (`SALAD_MACHINE_ID`).",
    "wait": "Seconds (0-30) to wait for a claimable job before answering `[]`.",
    "after": "Only events with a larger id (the last id seen).",
    "limit": "At most this many events (1-1000).",
    "user_id": "The user's id.",
    "window": "Seconds of history in the activity chart (60 s to 30 days).",
    "name": "Only jobs with this name.",
    "label": "Only jobs carrying this label, as `key=value` (repeat for several: all must match).",
    "buckets": "Number of steps the window is split into (1-500).",
    "seen_within": "Only machines seen within this many seconds (default 1 day, at most 30).",
}

PARAMETER_EXAMPLES: dict[str, Any] = {
    "job_id": JOB_ID,
    "container_group_id": GROUP,
    "machine_id": MACHINE,
    "status": "running",
    "user_id": USER_ID,
}


def _job(submission: dict[str, Any], **state: Any) -> dict[str, Any]:
    """A job object as the API answers it, checked against the model."""
    fields: dict[str, Any] = {"id": JOB_ID, "user_id": USER_ID, "created": CREATED}
    fields.update(submission)
    fields.update(state)
    body = JobOut.model_validate(fields).to_wire()
    if "attempt_id" not in state:  # only the answer of GET /work carries it
        del body["attempt_id"]
    return body


SYNC_SUBMISSION: dict[str, Any] = {
    "command": "python",
    "arguments": ["train.py", "--epochs", "100"],
    "environment": {"WANDB_MODE": "offline"},
    "sync": {
        "before": [
            {
                "bucket": "my-bucket",
                "prefix": "datasets/imagenet/",
                "local_path": "/input",
                "direction": "download",
            }
        ],
        "during": [
            {
                "bucket": "my-bucket",
                "prefix": "runs/run1/checkpoints/",
                "local_path": "/checkpoint",
                "direction": "upload",
                "pattern": "\\.pt$",
            }
        ],
        "after": [
            {
                "bucket": "my-bucket",
                "prefix": "runs/run1/output/",
                "local_path": "/output",
                "direction": "upload",
            }
        ],
    },
    "max_failures": 3,
    "heartbeat_interval": 30,
    "webhook": "https://example.com/kelpie-events",
    "container_group_id": GROUP,
    "compression": False,
    "checkpoint_keep": 3,
    "priority": 10,
    "name": "resnet50-run1",
    "labels": {"team": "vision", "experiment": "lr-sweep"},
    "max_duration": 86400,
    "max_interruptions": 20,
    "retry": {"fail_exit_codes": [2], "interruption_exit_codes": [143]},
}
LEGACY_SUBMISSION: dict[str, Any] = {
    "command": "python",
    "arguments": ["render.py", "--frames", "1-240"],
    "input_bucket": "my-bucket",
    "input_prefix": "scenes/city/",
    "checkpoint_bucket": "my-bucket",
    "checkpoint_prefix": "renders/city/checkpoints/",
    "output_bucket": "my-bucket",
    "output_prefix": "renders/city/frames/",
    "container_group_id": GROUP,
}
MINIMAL_SUBMISSION: dict[str, Any] = {
    "command": "python",
    "arguments": ["simulate.py"],
    "container_group_id": GROUP,
}

PENDING_JOB = _job(SYNC_SUBMISSION, status="pending")
RUNNING_JOB = _job(
    SYNC_SUBMISSION,
    status="running",
    started=STARTED,
    heartbeat=HEARTBEAT,
    num_heartbeats=190,
    num_failures=1,
    machine_id=MACHINE,
    last_exit_code=137,
    last_error="killed by signal 9 (out of memory?)",
    checkpoint_generation=12,
    stall_timeout=1800,
    progress={"step": 1200, "total": 5000, "message": "epoch 3"},
    progress_updated_at="2025-03-14T11:01:12.930Z",
)
WAITING_JOB = {
    **PENDING_JOB,
    "pending_reason": {
        "reason": "blocked",
        "message": "every machine of the group seen in the last 120 s (2) failed this job "
        "before and never receives it again",
        "machines": 2,
        "blocked_machines": 2,
        "busy_machines": 1,
        "jobs_ahead": 0,
        "recent_seconds": 120,
    },
}
LEGACY_JOB = _job(LEGACY_SUBMISSION, status="pending")
CLAIMED_JOB = _job(
    SYNC_SUBMISSION,
    status="running",
    started=STARTED,
    heartbeat=STARTED,
    machine_id=MACHINE,
    attempt_id=41,
)

_WORKER = {"machine_id": MACHINE, "container_group_id": GROUP, "attempt_id": 41}
_CHECKPOINT = {
    "generation": 12,
    "attempt_id": 41,
    "machine_id": MACHINE,
    "created": HEARTBEAT,
    "files": 2,
    "bytes": 734003200,
    "kept": True,
}
_RULE = {
    "container_group_id": GROUP,
    "min_replicas": 0,
    "max_replicas": 20,
    "idle_threshold_seconds": 600,
}
_RULE_OUT = {**_RULE, "user_id": USER_ID, "created": CREATED, "updated": HEARTBEAT}
_USER = {"id": USER_ID, "username": "alice", "created": CREATED}


def _examples(**named: Any) -> dict[str, dict[str, Any]]:
    return {
        name: {"summary": name.replace("_", " "), "value": value} for name, value in named.items()
    }


# Request bodies by operation id: {example name: value}.
REQUEST_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "submit_job": _examples(
        with_sync=SYNC_SUBMISSION, legacy_storage=LEGACY_SUBMISSION, no_storage=MINIMAL_SUBMISSION
    ),
    "submit_jobs_batch": _examples(two_jobs=[SYNC_SUBMISSION, LEGACY_SUBMISSION]),
    "commit_checkpoint": _examples(
        generation_12={
            **_WORKER,
            "generation": 12,
            "files": [
                {
                    "target": 0,
                    "path": "model.pt",
                    "key": f"runs/run1/checkpoints/.kelpie/{JOB_ID}/a7/g12/model.pt",
                    "size": 734000000,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                },
                {
                    "target": 0,
                    "path": "state/step.json",
                    "key": f"runs/run1/checkpoints/.kelpie/{JOB_ID}/a7/g12/state/step.json",
                    "size": 3200,
                    "sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
                },
            ],
        }
    ),
    "add_job_event": _examples(
        restored={
            **_WORKER,
            "kind": "checkpoint_restored",
            "message": "restored checkpoint generation 12 (2 files, 734003200 bytes)",
            "data": {"generation": 12, "files": 2, "bytes": 734003200},
        }
    ),
    "heartbeat_job": _examples(
        kelpie_worker=_WORKER,
        with_progress={**_WORKER, "progress": {"step": 1200, "total": 5000, "message": "epoch 3"}},
        reference_worker={"machine_id": MACHINE, "container_group_id": GROUP},
    ),
    "report_job_completed": _examples(done=_WORKER),
    "report_job_failed": _examples(
        exit_code={**_WORKER, "exit_code": 1, "error": "command exited with code 1"}
    ),
    "report_job_interrupted": _examples(node_going_away=_WORKER),
    "create_user": _examples(alice={"username": "alice"}),
    "create_token": _examples(
        for_salad_project={"org_name": "acme", "project_name": "training"}, plain={}
    ),
    "create_scaling_rule": _examples(scale_to_zero=_RULE),
    "update_scaling_rule": _examples(more_replicas={"max_replicas": 40}),
}

# Response bodies by operation id and status code.
RESPONSE_EXAMPLES: dict[str, dict[str, Any]] = {
    "health": {"200": {"status": "ok", "version": "0.1.0"}},
    "submit_job": {"202": PENDING_JOB},
    "submit_jobs_batch": {"202": [PENDING_JOB, LEGACY_JOB]},
    "list_jobs": {"200": {"_count": 2, "jobs": [RUNNING_JOB, LEGACY_JOB]}},
    "get_job": {"200": WAITING_JOB},
    "cancel_job": {"202": {"message": "Job canceled"}},
    "purge_container_group": {"200": {"count": 17}},
    "list_job_attempts": {
        "200": [
            {
                "id": 40,
                "machine_id": OTHER_MACHINE,
                "started": STARTED,
                "ended": "2025-03-14T10:12:30.551Z",
                "outcome": "lost",
                "exit_code": None,
                "warnings": [],
            },
            {
                "id": 41,
                "machine_id": MACHINE,
                "started": "2025-03-14T10:12:30.551Z",
                "ended": None,
                "outcome": "running",
                "exit_code": None,
                "warnings": ["checkpoint generation 12 unreadable; restored generation 11"],
            },
        ]
    },
    "commit_checkpoint": {
        "201": {
            "checkpoint": _CHECKPOINT,
            "expired": [
                {
                    "bucket": "my-bucket",
                    "key": f"runs/run1/checkpoints/.kelpie/{JOB_ID}/a7/g9/model.pt",
                }
            ],
        }
    },
    "list_checkpoints": {"200": [{**_CHECKPOINT, "generation": 11, "kept": True}, _CHECKPOINT]},
    "get_checkpoint": {
        "200": {
            **_CHECKPOINT,
            "compressed": False,
            "manifest": [
                {
                    "target": 0,
                    "path": "model.pt",
                    "bucket": "my-bucket",
                    "key": f"runs/run1/checkpoints/.kelpie/{JOB_ID}/a7/g12/model.pt",
                    "size": 734000000,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                }
            ],
        }
    },
    "list_job_events": {
        "200": [
            {
                "id": 311,
                "time": STARTED,
                "kind": "claimed",
                "message": f"claimed by {MACHINE}",
                "attempt_id": 41,
                "machine_id": MACHINE,
                "data": None,
            },
            {
                "id": 315,
                "time": HEARTBEAT,
                "kind": "checkpoint_committed",
                "message": "checkpoint generation 12 committed (2 files, 734003200 bytes)",
                "attempt_id": 41,
                "machine_id": MACHINE,
                "data": {"generation": 12},
            },
            {
                "id": 316,
                "time": "2025-03-14T11:01:12.930Z",
                "kind": "progress",
                "message": "progress 1200/5000 (24 %) epoch 3",
                "attempt_id": 41,
                "machine_id": MACHINE,
                "data": {"step": 1200, "total": 5000, "message": "epoch 3"},
            },
        ]
    },
    "list_workers": {
        "200": {
            "_count": 2,
            "workers": [
                {
                    "machine_id": OTHER_MACHINE,
                    "container_group_id": GROUP,
                    "user_id": USER_ID,
                    "first_seen": CREATED,
                    "last_seen": HEARTBEAT,
                    "last_poll": HEARTBEAT,
                    "current_job_id": None,
                    "blocked_jobs": 2,
                    "version": "0.1.0",
                },
                {
                    "machine_id": MACHINE,
                    "container_group_id": GROUP,
                    "user_id": USER_ID,
                    "first_seen": CREATED,
                    "last_seen": HEARTBEAT,
                    "last_poll": STARTED,
                    "current_job_id": JOB_ID,
                    "blocked_jobs": 0,
                    "version": None,
                },
            ],
        }
    },
    "add_job_event": {"202": {"message": "Event recorded"}},
    "claim_work": {"200": [CLAIMED_JOB]},
    "heartbeat_job": {"200": {"status": "running"}},
    "report_job_completed": {"200": {"message": "Job completed"}},
    "report_job_failed": {"202": {"message": "Job failure recorded"}},
    "report_job_interrupted": {"202": {"message": "Job interrupted"}},
    "create_user": {"201": _USER},
    "create_token": {
        "201": {
            "token": "kelpie_Zr3kU1n0QyJd9mW8b2xX0pE6hT4sV7aC5fG1iL3oN9q",
            "id": "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        }
    },
    "list_tokens": {
        "200": {
            "_count": 1,
            "tokens": [
                {
                    "id": "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
                    "created": CREATED,
                    "org_name": "acme",
                    "project_name": "training",
                    "revoked": False,
                    "bootstrap": False,
                }
            ],
        }
    },
    "get_me": {
        "200": {
            **_USER,
            "is_admin": False,
            "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "webhook_token": "kwh_Q0xWn7a9Yk2vHs3tE8pL1mB6cR4dF5gJ",
        }
    },
    "list_scaling_rules": {"200": {"_count": 1, "rules": [_RULE_OUT]}},
    "create_scaling_rule": {"201": _RULE_OUT},
    "get_scaling_rule": {"200": _RULE_OUT},
    "update_scaling_rule": {"200": {**_RULE_OUT, "max_replicas": 40}},
    "list_container_groups": {
        "200": {
            "_count": 1,
            "groups": [
                {
                    "container_group_id": GROUP,
                    "jobs": {
                        "pending": 12,
                        "running": 4,
                        "completed": 230,
                        "canceled": 3,
                        "failed": 1,
                    },
                }
            ],
        }
    },
    "get_job_goodput": {
        "200": {
            "job_id": JOB_ID,
            "status": "running",
            "attempts": [
                {
                    "id": 40,
                    "machine_id": OTHER_MACHINE,
                    "outcome": "lost",
                    "started": STARTED,
                    "ended": "2025-03-14T10:12:30.551Z",
                    "end": "2025-03-14T10:11:31.002Z",
                    "downloading_s": 95.3,
                    "running_s": 2574.498,
                    "uploading_s": 0.0,
                    "checkpoints": 4,
                    "last_checkpoint": "2025-03-14T10:02:12.410Z",
                    "work_lost_s": 558.592,
                    "detection_delay_s": 59.549,
                },
                {
                    "id": 41,
                    "machine_id": MACHINE,
                    "outcome": "running",
                    "started": "2025-03-14T10:12:30.551Z",
                    "ended": None,
                    "end": HEARTBEAT,
                    "downloading_s": 101.2,
                    "running_s": 2912.266,
                    "uploading_s": 0.0,
                    "checkpoints": 5,
                    "last_checkpoint": "2025-03-14T10:58:01.900Z",
                    "work_lost_s": None,
                    "detection_delay_s": None,
                },
            ],
            "totals": {
                "attempts": 2,
                "interruptions": 1,
                "failures": 0,
                "downloading_s": 196.5,
                "running_s": 5486.764,
                "uploading_s": 0.0,
                "work_lost_s": 558.592,
                "detection_delay_s": 59.549,
                "useful_running_s": 4928.172,
                "goodput": 0.8671,
            },
        }
    },
    "get_container_group_goodput": {
        "200": {
            "container_group_id": GROUP,
            "since": "2025-03-07T11:02:44.017Z",
            "until": HEARTBEAT,
            "attempts": 412,
            "interruptions": 37,
            "failures": 3,
            "downloading_s": 40233.1,
            "running_s": 1532210.4,
            "uploading_s": 5310.9,
            "interruptions_per_hour": 0.087,
            "mean_time_between_interruptions_s": 41411.092,
            "checkpoints": 9105,
            "mean_checkpoint_interval_s": 600.2,
            "mean_checkpoint_cost_s": 38.5,
            "gpu_time_lost_s": 11420.7,
            "mean_detection_delay_s": 71.3,
            "young_daly": {
                "interval_s": 1785.718,
                "checkpoint_cost_s": 38.5,
                "mean_time_between_interruptions_s": 41411.092,
                "formula": "sqrt(2 * checkpoint_cost_s * mean_time_between_interruptions_s)",
            },
        }
    },
    "get_container_group": {
        "200": {
            "container_group_id": GROUP,
            "jobs": {"pending": 12, "running": 4, "completed": 230, "canceled": 3, "failed": 1},
            "blocked_machines": [
                {
                    "machine_id": OTHER_MACHINE,
                    "jobs": 2,
                    "last_blocked": HEARTBEAT,
                    "reallocated": False,
                }
            ],
            "activity": {
                "since": "2025-03-13T11:02:44.017Z",
                "bucket_seconds": 1800.0,
                "buckets": [
                    {
                        "start": "2025-03-13T11:02:44.017Z",
                        "pending": 14,
                        "running": 4,
                        "interrupted": 1,
                        "lost": 0,
                        "failed": 0,
                        "completed": 3,
                        "canceled": 0,
                    }
                ],
            },
        }
    },
}

ERROR_EXAMPLES: dict[str, dict[str, str]] = {
    "400": {"error": "Invalid request", "message": "max_failures: Input should be greater than 0"},
    "401": {"error": "Unauthorized", "message": "missing X-Kelpie-Key header"},
    "403": {"error": "Forbidden", "message": "unknown or revoked API key"},
    "404": {"error": "Not Found", "message": f"Job {JOB_ID} not found"},
    "409": {
        "error": "Conflict",
        "message": "job has already ended (completed or failed) and cannot be canceled",
    },
    "413": {"error": "Payload Too Large", "message": "request body is larger than allowed"},
    "503": {"error": "Service Unavailable", "message": "the fleet provider could not be reached"},
}

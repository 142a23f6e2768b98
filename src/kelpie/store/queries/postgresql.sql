-- Every SQL statement of the PostgreSQL store, by name (see kelpie/store/queries/__init__.py).
--
-- Parameters are asyncpg's $1, $2, ...; every statement is prepared (and its plan cached) by
-- asyncpg.
--
-- A statement that reads the time takes it as its last parameter, written
-- `coalesce($n::timestamptz, now())` wherever the statement says now: the store passes its
-- clock's time when it was given one (tests that move time), else NULL, and the database
-- clock decides, as in production: now(), the start of the transaction, the one clock every
-- API process shares. Only note_migration keeps now() alone, as the migrations do.
--
-- A job is held by a machine while it is running there: `id = $1 AND status = 'running' AND
-- machine_id = $2 AND ($3::text IS NULL OR user_id = $3)`, and, when the caller gives its
-- attempt id, that attempt (`$n::bigint IS NULL OR attempt_id = $n::bigint`). A job whose
-- state changes queues the webhook event reporting it (its new status and holder) in the
-- same statement, when it has a webhook.
--
-- Every worker-side state change is one statement: the fenced UPDATE ... RETURNING of the
-- job, with the attempt, block, event and webhook outbox writes as data-modifying CTEs of the
-- same statement, so they commit or vanish together in one round trip.
--
-- A statement ends at its `;`; comments come under its name (or inside it, where they are
-- sent along), never after it. Every statement is sent as written, but list_jobs_newest_first
-- and list_jobs_oldest_first, whose {filters} the code fills in.


-- claim --
-- The job a machine takes ($1 machine, $2 group, $3 user or NULL for any user's job, $4 the
-- claimed event's message, $5 the lost one's, $6 now): a stalled job of the group first, else its
-- first pending one, each the first in claim order (highest priority, then oldest) that the
-- machine is not blocked from, locked. The pending scan runs (and locks a row) only when no
-- stalled job was found, so a claim never holds a second job that concurrent claimers would
-- then skip. The attempt id is drawn first so that the job and its attempt row carry it in
-- one statement; the attempt the stalled job had is lost.
--
-- Pending jobs come in claim order from jobs_pending_by_group, the only index that has it:
-- no plan can walk another index (`created`) filtering as it goes. The user's scope (true
-- when $3 is NULL) is spelt so that it is never an index condition: planning a group the
-- statistics do not know yet (a new group, a big batch since the last ANALYZE) with the user
-- known, PostgreSQL would otherwise pick jobs_by_user_group and sort every pending job of
-- the group, at every claim (tests/integration/test_claim_plan.py checks the plans).
--
-- lease_expires is a lower bound of the true deadline (see heartbeat): it finds the stalled
-- candidates through the index, the heartbeat decides. A stalled job at its last allowed
-- interruption is failed instead (end_stalled_out_of_interruptions), never handed out again.
WITH stalled AS (
    SELECT j.id FROM jobs AS j
    WHERE j.status = 'running' AND j.container_group_id = $2
      AND j.lease_expires < coalesce($6::timestamptz, now())
      AND j.heartbeat < coalesce($6::timestamptz, now()) - j.heartbeat_interval * interval '2 s'
      AND (j.max_interruptions IS NULL OR j.num_interruptions + 1 < j.max_interruptions)
      AND (j.user_id = $3::text) IS NOT FALSE
      AND NOT EXISTS (
          SELECT 1 FROM job_blocks AS b WHERE b.job_id = j.id AND b.machine_id = $1)
    ORDER BY j.priority DESC, j.created, j.seq
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
), pending AS (
    -- the gate is a condition on nothing in the row: when false, the scan never runs and
    -- locks nothing
    SELECT j.id FROM jobs AS j
    WHERE NOT EXISTS (SELECT 1 FROM stalled) AND j.status = 'pending'
      AND j.container_group_id = $2
      AND (j.user_id = $3::text) IS NOT FALSE
      AND NOT EXISTS (
          SELECT 1 FROM job_blocks AS b WHERE b.job_id = j.id AND b.machine_id = $1)
    ORDER BY j.priority DESC, j.created, j.seq
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
), chosen AS (
    SELECT id FROM stalled UNION ALL SELECT id FROM pending
), claimed AS (
    UPDATE jobs AS j
    SET status = 'running', machine_id = $1, heartbeat = coalesce($6::timestamptz, now()),
        lease_expires = coalesce($6::timestamptz, now()) + j.heartbeat_interval * interval '2 s',
        started = coalesce(j.started, $6::timestamptz, now()),
        attempt_id = nextval(pg_get_serial_sequence('attempts', 'id')),
        stall_deadline = coalesce($6::timestamptz, now()) + j.stall_timeout * interval '1 s',
        num_interruptions = j.num_interruptions + CASE WHEN j.status = 'running' THEN 1 ELSE 0 END
    FROM chosen WHERE j.id = chosen.id
    RETURNING j.id, j.user_id, j.status, j.container_group_id, j.created, j.started,
              j.completed, j.canceled, j.failed, j.heartbeat, j.num_failures,
              j.num_heartbeats, j.machine_id, j.last_exit_code, j.last_error,
              j.max_failures, j.heartbeat_interval, j.webhook, j.spec, j.org_name,
              j.project_name, j.attempt_id, j.checkpoint_generation, j.checkpoint_keep,
              j.priority, j.name, j.max_interruptions, j.num_interruptions, j.logs_prefix,
              j.stall_timeout, j.progress, j.progress_updated_at
), lost_attempt AS (
    UPDATE attempts SET outcome = 'lost', ended = coalesce($6::timestamptz, now())
    FROM claimed WHERE attempts.job_id = claimed.id AND attempts.outcome = 'running'
    RETURNING attempts.job_id AS id, attempts.id AS attempt_id, attempts.machine_id
), new_attempt AS (
    INSERT INTO attempts (id, job_id, machine_id, started, outcome) OVERRIDING SYSTEM VALUE
    SELECT attempt_id, id, machine_id, coalesce($6::timestamptz, now()), 'running' FROM claimed
), job_events AS (
    -- one INSERT, so the lost attempt's event comes before the claim's, in id order
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, created)
    SELECT id, attempt_id, machine_id, kind, message, coalesce($6::timestamptz, now()) FROM (
        SELECT 1 AS position, id, attempt_id, machine_id, 'lost' AS kind, $5 AS message
        FROM lost_attempt
        UNION ALL
        SELECT 2, id, attempt_id, machine_id, 'claimed', $4 FROM claimed
    ) AS happened
    ORDER BY position
), event AS (
    INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)
    SELECT user_id, webhook,
           jsonb_build_object('status', status, 'job_id', id, 'machine_id', machine_id,
                              'container_group_id', container_group_id),
           coalesce($6::timestamptz, now()), coalesce($6::timestamptz, now())
    FROM claimed WHERE webhook IS NOT NULL
)
SELECT * FROM claimed;

-- heartbeat --
-- The holder's beat ($1 job, $2 machine, $3 user or NULL, $4 attempt id or NULL, $5 now): true when
-- it holds the job.
--
-- A job is stalled when its heartbeat is older than two intervals. lease_expires (indexed,
-- so that a claim finds stalled jobs without walking the running ones) is moved only when
-- less than half an interval of it is left: a heartbeat that leaves it alone touches no
-- indexed column, so PostgreSQL updates the row in place (HOT) instead of writing an entry
-- into every index of `jobs`. It stays at most the true deadline; the claim checks the
-- heartbeat itself.
UPDATE jobs SET heartbeat = coalesce($5::timestamptz, now()), num_heartbeats = num_heartbeats + 1,
    lease_expires = CASE
        WHEN lease_expires
             < coalesce($5::timestamptz, now()) + heartbeat_interval * interval '500 ms'
        THEN coalesce($5::timestamptz, now()) + heartbeat_interval * interval '2 s'
        ELSE lease_expires END
WHERE id = $1 AND status = 'running' AND machine_id = $2 AND ($3::text IS NULL OR user_id = $3)
  AND ($4::bigint IS NULL OR attempt_id = $4::bigint)
RETURNING true;

-- heartbeat_with_progress --
-- The holder's beat that brings a progress (as heartbeat, the same row change and HOT
-- update, the same parameters), answering the progress recorded before it and the attempt,
-- for the caller to compare.
UPDATE jobs SET heartbeat = coalesce($5::timestamptz, now()), num_heartbeats = num_heartbeats + 1,
    lease_expires = CASE
        WHEN lease_expires
             < coalesce($5::timestamptz, now()) + heartbeat_interval * interval '500 ms'
        THEN coalesce($5::timestamptz, now()) + heartbeat_interval * interval '2 s'
        ELSE lease_expires END
WHERE id = $1 AND status = 'running' AND machine_id = $2 AND ($3::text IS NULL OR user_id = $3)
  AND ($4::bigint IS NULL OR attempt_id = $4::bigint)
RETURNING id, attempt_id, progress;

-- record_progress --
-- A changed progress ($1 job, $2 the progress, $3 now): recorded, with the attempt's new stall
-- deadline. Runs in the transaction of heartbeat_with_progress.
UPDATE jobs SET progress = $2::jsonb, progress_updated_at = coalesce($3::timestamptz, now()),
    stall_deadline = coalesce($3::timestamptz, now()) + stall_timeout * interval '1 s'
WHERE id = $1;

-- add_progress_event --
-- The `progress` event of a milestone ($1 job, $2 attempt, $3 machine, $4 message, $5 data,
-- $6 now).
INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
VALUES ($1, $2, $3, 'progress', $4, $5::jsonb, coalesce($6::timestamptz, now()));

-- complete --
-- The holder completes the job ($1 job, $2 machine, $3 user or NULL, $4 attempt id or NULL,
-- $5 the event's message, $6 now); its attempt ends `completed`. No row: not held.
WITH completed_job AS (
    UPDATE jobs SET status = 'completed', completed = coalesce($6::timestamptz, now())
    WHERE id = $1 AND status = 'running' AND machine_id = $2
      AND ($3::text IS NULL OR user_id = $3) AND ($4::bigint IS NULL OR attempt_id = $4::bigint)
    RETURNING id, user_id, status, machine_id, container_group_id, webhook, attempt_id
), ended_attempt AS (
    UPDATE attempts
    SET outcome = 'completed', ended = coalesce($6::timestamptz, now()), exit_code = NULL
    FROM completed_job
    WHERE attempts.job_id = completed_job.id AND attempts.outcome = 'running'
), job_event AS (
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
    SELECT id, attempt_id, machine_id, 'completed', $5, NULL, coalesce($6::timestamptz, now())
    FROM completed_job
), event AS (
    INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)
    SELECT user_id, webhook,
           jsonb_build_object('status', status, 'job_id', id, 'machine_id', machine_id,
                              'container_group_id', container_group_id),
           coalesce($6::timestamptz, now()), coalesce($6::timestamptz, now())
    FROM completed_job WHERE webhook IS NOT NULL
)
SELECT id FROM completed_job;

-- fail --
-- The holder reports a failure ($1 job, $2 machine, $3 user or NULL, $4 exit code, $5 error,
-- $6 attempt id or NULL, $7/$8 the event's message when the job failed for good / is pending
-- again, $9 the event's data, $10 fail it now (retry rules), $11 now): pending again until its
-- max_failures, failed then (webhook queued). The machine is blocked from the job; the row
-- answered is the job, with how many of its user's jobs the machine is blocked from now.
WITH failed_job AS (
    UPDATE jobs SET
        num_failures = num_failures + 1,
        last_exit_code = $4, last_error = $5,
        status = CASE WHEN $10::boolean OR num_failures + 1 >= max_failures
                 THEN 'failed' ELSE 'pending' END,
        failed = CASE WHEN $10::boolean OR num_failures + 1 >= max_failures
                 THEN coalesce($11::timestamptz, now()) ELSE failed END
    WHERE id = $1 AND status = 'running' AND machine_id = $2
      AND ($3::text IS NULL OR user_id = $3) AND ($6::bigint IS NULL OR attempt_id = $6::bigint)
    RETURNING id, user_id, status, container_group_id, created, started, completed, canceled,
              failed, heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code,
              last_error, max_failures, heartbeat_interval, webhook, spec, org_name,
              project_name, attempt_id, checkpoint_generation, checkpoint_keep, priority,
              name, max_interruptions, num_interruptions, logs_prefix, stall_timeout,
              progress, progress_updated_at
), job_event AS (
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
    SELECT id, attempt_id, machine_id, 'failed',
           CASE WHEN status = 'failed' THEN $7 ELSE $8 END, $9::jsonb,
           coalesce($11::timestamptz, now())
    FROM failed_job
), block AS (
    INSERT INTO job_blocks (job_id, machine_id, blocked_at)
    SELECT id, machine_id, coalesce($11::timestamptz, now()) FROM failed_job
    ON CONFLICT DO NOTHING
    RETURNING job_id
), ended_attempt AS (
    UPDATE attempts
    SET outcome = 'failed', ended = coalesce($11::timestamptz, now()), exit_code = $4::integer
    FROM failed_job WHERE attempts.job_id = failed_job.id AND attempts.outcome = 'running'
), event AS (
    INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)
    SELECT user_id, webhook,
           jsonb_build_object('status', status, 'job_id', id, 'machine_id', machine_id,
                              'container_group_id', container_group_id),
           coalesce($11::timestamptz, now()), coalesce($11::timestamptz, now())
    FROM failed_job WHERE webhook IS NOT NULL AND status = 'failed'
)
SELECT failed_job.*,
       (SELECT count(*) FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
        WHERE b.machine_id = $2 AND j.user_id = failed_job.user_id)
       + (SELECT count(*) FROM block) AS machine_blocked_jobs
FROM failed_job;

-- interrupt --
-- The holder hands the job back ($1 job, $2 machine, $3 user or NULL, $4 attempt id or NULL,
-- $5 the event's message, $6 the exit code that made the failure report an interruption
-- (retry rules) or NULL, $7 the event's data, $8 now): pending again, its attempt `interrupted`. At
-- the job's last allowed interruption (max_interruptions IS NOT NULL AND num_interruptions +
-- 1 >= max_interruptions) it fails instead, with the reason in last_error and the event
-- (`interrupted N times; max_interruptions is M`, the same text in
-- both dialects; kelpie.store._common.ended_by_interruptions writes the event's in Python), and a `failed` webhook queued.
WITH interrupted_job AS (
    UPDATE jobs SET
        num_interruptions = num_interruptions + 1,
        status = CASE
            WHEN max_interruptions IS NOT NULL AND num_interruptions + 1 >= max_interruptions
            THEN 'failed' ELSE 'pending' END,
        failed = CASE
            WHEN max_interruptions IS NOT NULL AND num_interruptions + 1 >= max_interruptions
            THEN coalesce($8::timestamptz, now()) ELSE failed END,
        last_error = CASE
            WHEN max_interruptions IS NOT NULL AND num_interruptions + 1 >= max_interruptions
            THEN 'interrupted ' || (num_interruptions + 1) || ' times; max_interruptions is '
                 || max_interruptions
            ELSE last_error END
    WHERE id = $1 AND status = 'running' AND machine_id = $2
      AND ($3::text IS NULL OR user_id = $3) AND ($4::bigint IS NULL OR attempt_id = $4::bigint)
    RETURNING id, user_id, status, attempt_id, machine_id, container_group_id, webhook,
              last_error
), ended_attempt AS (
    UPDATE attempts
    SET outcome = 'interrupted', ended = coalesce($8::timestamptz, now()), exit_code = $6::integer
    FROM interrupted_job
    WHERE attempts.job_id = interrupted_job.id AND attempts.outcome = 'running'
), job_event AS (
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
    SELECT id, attempt_id, machine_id, 'interrupted',
           CASE WHEN status = 'failed' THEN $5 || '; ' || last_error || ', so the job failed'
                ELSE $5 END,
           $7::jsonb, coalesce($8::timestamptz, now())
    FROM interrupted_job
), event AS (
    INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)
    SELECT user_id, webhook,
           jsonb_build_object('status', status, 'job_id', id, 'machine_id', machine_id,
                              'container_group_id', container_group_id),
           coalesce($8::timestamptz, now()), coalesce($8::timestamptz, now())
    FROM interrupted_job WHERE webhook IS NOT NULL AND status = 'failed'
)
SELECT id FROM interrupted_job;

-- end_stalled_out_of_interruptions --
-- Stalled running jobs at their last allowed interruption fail ($1 the event's message, $2
-- now):
-- their attempt is lost (its last heartbeat kept) and a `failed` webhook queued. The reason
-- and the event read as in interrupt.
WITH out_of_budget AS (
    SELECT id FROM jobs
    WHERE status = 'running' AND max_interruptions IS NOT NULL
      AND lease_expires < coalesce($2::timestamptz, now())
      AND heartbeat < coalesce($2::timestamptz, now()) - heartbeat_interval * interval '2 s'
      AND num_interruptions + 1 >= max_interruptions
    FOR UPDATE SKIP LOCKED
), failed_job AS (
    UPDATE jobs SET status = 'failed', failed = coalesce($2::timestamptz, now()),
        num_interruptions = jobs.num_interruptions + 1,
        last_error = 'interrupted ' || (jobs.num_interruptions + 1)
                     || ' times; max_interruptions is ' || max_interruptions
    FROM out_of_budget WHERE jobs.id = out_of_budget.id
    RETURNING jobs.id, jobs.user_id, jobs.status, jobs.container_group_id, jobs.created,
              jobs.started, jobs.completed, jobs.canceled, jobs.failed, jobs.heartbeat,
              jobs.num_failures, jobs.num_heartbeats, jobs.machine_id, jobs.last_exit_code,
              jobs.last_error, jobs.max_failures, jobs.heartbeat_interval, jobs.webhook,
              jobs.spec, jobs.org_name, jobs.project_name, jobs.attempt_id,
              jobs.checkpoint_generation, jobs.checkpoint_keep, jobs.priority, jobs.name,
              jobs.max_interruptions, jobs.num_interruptions, jobs.logs_prefix,
              jobs.stall_timeout, jobs.progress, jobs.progress_updated_at
), lost_attempt AS (
    UPDATE attempts SET outcome = 'lost', ended = coalesce($2::timestamptz, now()),
        last_heartbeat = failed_job.heartbeat
    FROM failed_job WHERE attempts.job_id = failed_job.id AND attempts.outcome = 'running'
), job_event AS (
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
    SELECT id, attempt_id, machine_id, 'lost', $1 || '; ' || last_error || ', so the job failed',
           NULL, coalesce($2::timestamptz, now())
    FROM failed_job
), event AS (
    INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)
    SELECT user_id, webhook,
           jsonb_build_object('status', status, 'job_id', id, 'machine_id', machine_id,
                              'container_group_id', container_group_id),
           coalesce($2::timestamptz, now()), coalesce($2::timestamptz, now())
    FROM failed_job WHERE webhook IS NOT NULL
)
SELECT * FROM failed_job;

-- any_stalled_job --
-- Whether any running job is past its stall deadline ($1 now) (a cheap look before end_stalled_jobs
-- takes a transaction).
SELECT true FROM jobs
WHERE status = 'running' AND stall_deadline IS NOT NULL
  AND stall_deadline < coalesce($1::timestamptz, now())
LIMIT 1;

-- lock_stalled_jobs --
-- The running jobs past their stall deadline ($1 now) that no one else has locked, locked for the
-- rest of the transaction, with their holder and stall timeout.
SELECT id, machine_id, stall_timeout FROM jobs
WHERE status = 'running' AND stall_deadline IS NOT NULL
  AND stall_deadline < coalesce($1::timestamptz, now())
FOR UPDATE SKIP LOCKED;

-- fail_stalled --
-- A stalled job's holder fails it ($1 job, $2 the last_error, $3 now): pending again until its
-- max_failures, failed then; its stall deadline cleared.
UPDATE jobs SET num_failures = num_failures + 1, last_exit_code = NULL, last_error = $2,
    stall_deadline = NULL,
    status = CASE WHEN num_failures + 1 >= max_failures THEN 'failed' ELSE 'pending' END,
    failed = CASE WHEN num_failures + 1 >= max_failures
             THEN coalesce($3::timestamptz, now()) ELSE failed END
WHERE id = $1 AND status = 'running'
RETURNING id, user_id, status, container_group_id, created, started, completed, canceled,
          failed, heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code,
          last_error, max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
          attempt_id, checkpoint_generation, checkpoint_keep, priority, name,
          max_interruptions, num_interruptions, logs_prefix, stall_timeout, progress,
          progress_updated_at;

-- block_machine --
-- The machine ($2) may not take the job ($1) again, from now ($3).
INSERT INTO job_blocks (job_id, machine_id, blocked_at)
VALUES ($1, $2, coalesce($3::timestamptz, now()))
ON CONFLICT DO NOTHING;

-- fail_running_attempt --
-- The job's ($1) running attempt ends `failed` now ($2).
UPDATE attempts SET outcome = 'failed', ended = coalesce($2::timestamptz, now())
WHERE job_id = $1 AND outcome = 'running';

-- add_stalled_event --
-- The `stalled` event of a job ($1 job, $2 attempt, $3 machine, $4 message, $5 data, $6 now).
INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
VALUES ($1, $2, $3, 'stalled', $4, $5::jsonb, coalesce($6::timestamptz, now()));

-- queue_webhook_event --
-- A webhook event to deliver now ($1 user, $2 url, $3 payload, $4 now).
INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)
VALUES ($1, $2, $3::jsonb, coalesce($4::timestamptz, now()), coalesce($4::timestamptz, now()));

-- add_worker_event --
-- An event the holder reports on its attempt ($1 job, $2 machine, $3 user or NULL, $4 attempt id,
-- $5 kind, $6 message, $7 data, $8 how many events an attempt may keep, $9 the seconds of an
-- `outputs_uploaded` event or NULL, $10 now): kept while the attempt has room. A worker event that
-- marks a phase of its attempt is kept on the attempt too (the goodput ledger reads it there),
-- whether or not the event itself is kept: `started` (when the command started), `outputs_uploaded`
-- ($9: its seconds, added up). True when the caller holds the job.
WITH held AS (
    SELECT id, attempt_id, machine_id FROM jobs
    WHERE id = $1 AND status = 'running' AND machine_id = $2
      AND ($3::text IS NULL OR user_id = $3) AND ($4::bigint IS NULL OR attempt_id = $4::bigint)
), room AS (
    SELECT count(*) < $8 AS ok FROM job_events WHERE job_id = $1 AND attempt_id = $4
), added AS (
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
    SELECT id, attempt_id, machine_id, $5, $6, $7::jsonb, coalesce($10::timestamptz, now())
    FROM held, room WHERE room.ok
), phase AS (
    UPDATE attempts SET
        command_started = CASE WHEN $5 = 'started'
                          THEN coalesce(command_started, $10::timestamptz, now())
                          ELSE command_started END,
        upload_seconds = CASE WHEN $5 = 'outputs_uploaded' AND $9::float8 IS NOT NULL
                         THEN coalesce(upload_seconds, 0) + $9::float8 ELSE upload_seconds END
    FROM held WHERE attempts.id = $4 AND $5 IN ('started', 'outputs_uploaded')
)
SELECT true FROM held;

-- job_status --
-- The status of a job ($1 id) of the user ($2, NULL: anyone's), when there is one.
SELECT status FROM jobs WHERE id = $1 AND ($2::text IS NULL OR user_id = $2);

-- job_exists --
-- True when the job ($1 id) of the user ($2, NULL: anyone's) exists.
SELECT true FROM jobs WHERE id = $1 AND ($2::text IS NULL OR user_id = $2);

-- claim_reallocation --
-- The machine ($2) blocked from at least $3 of its user's ($1) jobs is marked for
-- reallocation ($4 now), once: the row (how many jobs, and the group and org/project of the latest
-- block) only for the call that marked it.
WITH tenant_blocks AS (
    SELECT b.blocked_at, j.container_group_id, j.org_name, j.project_name
    FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
    WHERE b.machine_id = $2 AND j.user_id = $1
), blocked AS (
    SELECT count(*) AS jobs FROM tenant_blocks
), marked AS (
    INSERT INTO machine_reallocations (user_id, machine_id, at)
    SELECT $1, $2, coalesce($4::timestamptz, now())
    FROM blocked WHERE blocked.jobs >= $3 AND blocked.jobs > 0
    ON CONFLICT DO NOTHING
    RETURNING machine_id
)
SELECT blocked.jobs, latest.container_group_id, latest.org_name, latest.project_name
FROM marked, blocked, LATERAL (
    SELECT container_group_id, org_name, project_name FROM tenant_blocks
    ORDER BY blocked_at DESC
    LIMIT 1
) AS latest;

-- note_worker --
-- A machine heard from ($1 user, $2 group, $3 machine, $4 any user, $5 version or NULL, $6
-- whether it polled for a job, $7 now).
INSERT INTO workers (user_id, container_group_id, machine_id, any_user, version, first_seen,
                     last_poll, last_seen)
VALUES ($1, $2, $3, $4, $5, coalesce($7::timestamptz, now()),
        CASE WHEN $6::boolean THEN coalesce($7::timestamptz, now()) END,
        coalesce($7::timestamptz, now()))
ON CONFLICT (container_group_id, machine_id, user_id) DO UPDATE
SET last_seen = excluded.last_seen, any_user = excluded.any_user,
    last_poll = coalesce(excluded.last_poll, workers.last_poll),
    version = coalesce(excluded.version, workers.version);


-- lock_job_for_commit --
-- The job ($1 id, $2 user or NULL) locked: its row lock orders commits (and claims) of one
-- job. Its newest generation, how many it keeps and who holds it.
SELECT checkpoint_generation, checkpoint_keep, status, machine_id, attempt_id
FROM jobs WHERE id = $1 AND ($2::text IS NULL OR user_id = $2)
FOR UPDATE;

-- get_checkpoint --
-- One generation ($2) of a job's ($1) checkpoints, with its manifest (NULL once dropped).
SELECT job_id, generation, attempt_id, machine_id, created, files, bytes, manifest
FROM checkpoints WHERE job_id = $1 AND generation = $2;

-- add_checkpoint --
-- A committed generation ($1 job, $2 generation, $3 attempt, $4 machine, $5 files, $6 bytes,
-- $7 manifest, $8 its upload seconds or NULL, $9 now); answers its time.
INSERT INTO checkpoints (job_id, generation, attempt_id, machine_id, created, files, bytes,
                         manifest, upload_seconds)
VALUES ($1, $2, $3, $4, coalesce($9::timestamptz, now()), $5, $6, $7, $8)
RETURNING created;

-- set_checkpoint_generation --
-- The job's ($1) newest committed generation ($2).
UPDATE jobs SET checkpoint_generation = $2 WHERE id = $1;

-- count_commit --
-- A committed generation counted on its attempt (the goodput ledger reads it there): $1 the
-- attempt, $2 its upload seconds or NULL, $3 now.
UPDATE attempts SET commits = commits + 1,
    first_commit = coalesce(first_commit, $3::timestamptz, now()),
    last_commit = coalesce($3::timestamptz, now()),
    commit_seconds = commit_seconds + coalesce($2::float8, 0),
    timed_commits = timed_commits + CASE WHEN $2::float8 IS NULL THEN 0 ELSE 1 END
WHERE id = $1;

-- kept_manifests --
-- The job's ($1) generations that still have their manifest, newest first.
SELECT generation, manifest FROM checkpoints
WHERE job_id = $1 AND manifest IS NOT NULL
ORDER BY generation DESC;

-- drop_manifests --
-- The manifests of the job's ($1) generations $2 dropped (no longer kept).
UPDATE checkpoints SET manifest = NULL
WHERE job_id = $1 AND generation = ANY($2::bigint[]);

-- add_checkpoint_event --
-- The `checkpoint_committed` event ($1 job, $2 attempt, $3 machine, $4 message, $5 data, $6
-- now).
INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
VALUES ($1, $2, $3, 'checkpoint_committed', $4, $5, coalesce($6::timestamptz, now()));

-- create_jobs --
-- A batch of jobs of one user ($1), all or none: $2.. one array per column, in order (seq
-- follows `position`): $2 ids, $3 groups, $4 max_failures, $5 heartbeat intervals, $6
-- webhooks, $7 specs (JSON text), $8 orgs, $9 projects, $10 checkpoint_keep, $11 names, $12
-- max_interruptions, $13 priorities, $14 logs prefixes, $15 stall timeouts; $16/$17/$18 the
-- labels' job ids, keys and values. Answers the jobs created.
WITH created_job AS (
    INSERT INTO jobs (id, user_id, status, container_group_id, created, max_failures,
                      heartbeat_interval, webhook, spec, org_name, project_name, checkpoint_keep,
                      name, max_interruptions, priority, logs_prefix, stall_timeout)
    SELECT id, $1, 'pending', grp, coalesce($19::timestamptz, now()), mf, hi, wh, sp::jsonb, org,
           prj, ck, nm, mi, pr, lp, st
    FROM unnest($2::text[], $3::text[], $4::int[], $5::int[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::int[], $11::text[], $12::int[],
                $13::int[], $14::text[], $15::int[])
         WITH ORDINALITY AS t(id, grp, mf, hi, wh, sp, org, prj, ck, nm, mi, pr, lp, st, position)
    ORDER BY position
    RETURNING id, user_id, status, container_group_id, created, started, completed, canceled,
              failed, heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code,
              last_error, max_failures, heartbeat_interval, webhook, spec, org_name,
              project_name, attempt_id, checkpoint_generation, checkpoint_keep, priority,
              name, max_interruptions, num_interruptions, logs_prefix, stall_timeout,
              progress, progress_updated_at
), labels AS (
    INSERT INTO job_labels (job_id, key, value)
    SELECT * FROM unnest($16::text[], $17::text[], $18::text[])
)
SELECT * FROM created_job;

-- take_idempotency_key --
-- Takes the user's idempotency key for this request, unless it is in use (within its
-- lifetime, $6 seconds): true when taken. $1 user, $2 key, $3 fingerprint, $4 status code,
-- $5 the job ids, $7 now. A concurrent request with the same key waits here for this one's outcome.
INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, job_ids, created)
VALUES ($1, $2, $3, $4, $5, coalesce($7::timestamptz, now()))
ON CONFLICT (user_id, key) DO UPDATE
SET fingerprint = excluded.fingerprint, status_code = excluded.status_code,
    job_ids = excluded.job_ids, created = excluded.created
WHERE idempotency_keys.created < coalesce($7::timestamptz, now()) - $6::float8 * interval '1 s'
RETURNING true;

-- get_idempotency_key --
-- The request that holds the user's ($1) idempotency key ($2): its fingerprint, answer and
-- jobs.
SELECT fingerprint, status_code, job_ids FROM idempotency_keys
WHERE user_id = $1 AND key = $2;

-- jobs_by_ids --
-- The jobs among the ids $1 that still exist (in no particular order).
SELECT id, user_id, status, container_group_id, created, started, completed, canceled,
       failed, heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code,
       last_error, max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority, name, max_interruptions,
       num_interruptions, logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs WHERE id = ANY($1::text[]);

-- purge_idempotency_keys --
-- Idempotency keys older than their lifetime ($1 seconds, $2 now) go.
DELETE FROM idempotency_keys
WHERE created < coalesce($2::timestamptz, now()) - $1::float8 * interval '1 s';

-- announce_new_jobs --
-- Wakes the long polls of every API process for these groups ($1 channel, $2 groups). Sent
-- after the submissions commit, alone in its transaction: a transaction that writes nothing
-- but notifications commits without waiting for a WAL flush.
SELECT pg_notify($1, grp) FROM unnest($2::text[]) AS grp;

-- cancel --
-- The user's ($2, NULL: anyone's) pending or running job ($1) is canceled ($3 the event's
-- message, $4 now); a running attempt ends `canceled`. No row: not found, or ended already.
WITH canceled_job AS (
    UPDATE jobs SET status = 'canceled', canceled = coalesce($4::timestamptz, now())
    WHERE id = $1 AND status IN ('pending', 'running') AND ($2::text IS NULL OR user_id = $2)
    RETURNING id, NULL::bigint AS attempt_id, NULL::text AS machine_id
), ended_attempt AS (
    UPDATE attempts
    SET outcome = 'canceled', ended = coalesce($4::timestamptz, now()), exit_code = NULL
    FROM canceled_job
    WHERE attempts.job_id = canceled_job.id AND attempts.outcome = 'running'
), job_event AS (
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
    SELECT id, attempt_id, machine_id, 'canceled', $3, NULL, coalesce($4::timestamptz, now())
    FROM canceled_job
)
SELECT id FROM canceled_job;

-- lock_live_jobs_of_group --
-- The user's ($1) pending and running jobs of the group ($2) locked, first in purge_group's
-- transaction: claims skip them and workers' reports wait, so no job slips from pending to
-- running (or back) between delete and cancel.
SELECT count(*) FROM (
    SELECT 1 FROM jobs
    WHERE user_id = $1 AND container_group_id = $2 AND status IN ('pending', 'running')
    FOR UPDATE
) AS live;

-- purge_group --
-- The user's ($1) group ($2) emptied, once its live jobs are locked (lock_live_jobs_of_group):
-- running jobs canceled ($3 the event's message, $4 now), pending ones deleted. Answers how many.
WITH canceled_job AS (
    UPDATE jobs SET status = 'canceled', canceled = coalesce($4::timestamptz, now())
    WHERE user_id = $1 AND container_group_id = $2 AND status = 'running'
    RETURNING id, NULL::bigint AS attempt_id, NULL::text AS machine_id
), ended_attempt AS (
    UPDATE attempts
    SET outcome = 'canceled', ended = coalesce($4::timestamptz, now()), exit_code = NULL
    FROM canceled_job
    WHERE attempts.job_id = canceled_job.id AND attempts.outcome = 'running'
), job_event AS (
    INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
    SELECT id, attempt_id, machine_id, 'canceled', $3, NULL, coalesce($4::timestamptz, now())
    FROM canceled_job
), deleted_job AS (
    DELETE FROM jobs WHERE user_id = $1 AND container_group_id = $2 AND status = 'pending'
    RETURNING id
)
SELECT (SELECT count(*) FROM canceled_job) + (SELECT count(*) FROM deleted_job);

-- delete_all_jobs --
-- Every job goes, and the rows that belong to a job with it (ON DELETE CASCADE).
DELETE FROM jobs;

-- get_job --
-- The job ($1 id) of the user ($2, NULL: anyone's).
SELECT id, user_id, status, container_group_id, created, started, completed, canceled,
       failed, heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code,
       last_error, max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority, name, max_interruptions,
       num_interruptions, logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs WHERE id = $1 AND ($2::text IS NULL OR user_id = $2);

-- list_jobs_newest_first --
-- A page of jobs, newest first ($1 page size, $2 offset), filtered.
--
-- With list_jobs_oldest_first, the only statements of this file completed at run time:
-- list_jobs puts the filters the query gives in place of {filters}, from a fixed set of
-- texts, never from the query's values (they are parameters): nothing, or `WHERE` and,
-- joined by AND, `<column> = $n` for each of user_id, status, container_group_id and name
-- given, then for each label `id IN (SELECT job_id FROM job_labels WHERE key = $n AND
-- value = $n+1)`, numbered from $3 in that order. Only the filters given, so that the
-- planner picks the index that fits them (jobs_by_user, jobs_by_user_status,
-- jobs_by_user_group, jobs_by_name, jobs_by_created): `($n IS NULL OR column = $n)` would
-- let a prepared statement's generic plan settle on one index for every combination.
SELECT id, user_id, status, container_group_id, created, started, completed, canceled,
       failed, heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code,
       last_error, max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority, name, max_interruptions,
       num_interruptions, logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs {filters}
ORDER BY created DESC, seq DESC
LIMIT $1 OFFSET $2;

-- list_jobs_oldest_first --
-- As list_jobs_newest_first (the same {filters}), oldest first.
SELECT id, user_id, status, container_group_id, created, started, completed, canceled,
       failed, heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code,
       last_error, max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority, name, max_interruptions,
       num_interruptions, logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs {filters}
ORDER BY created ASC, seq ASC
LIMIT $1 OFFSET $2;

-- list_attempts --
-- The job's ($1) attempts, oldest first.
SELECT id, job_id, machine_id, started, ended, outcome, exit_code FROM attempts
WHERE job_id = $1
ORDER BY id;

-- attempt_warnings --
-- The messages of the job's ($1) events of the warning kinds ($2), by attempt, in order.
SELECT attempt_id, message FROM job_events
WHERE job_id = $1 AND kind = ANY($2::text[]) AND attempt_id IS NOT NULL
ORDER BY id;

-- list_checkpoints --
-- The job's ($1) committed generations, oldest first; `manifest` an empty array while the
-- generation keeps its manifest, NULL once dropped (the manifests themselves are not read).
SELECT job_id, generation, attempt_id, machine_id, created, files, bytes,
       CASE WHEN manifest IS NULL THEN NULL ELSE '[]'::jsonb END AS manifest
FROM checkpoints WHERE job_id = $1
ORDER BY generation;

-- list_job_events --
-- The job's ($1) events after the id $2, oldest first, at most $3.
SELECT id, job_id, attempt_id, machine_id, kind, message, data, created FROM job_events
WHERE job_id = $1 AND id > $2
ORDER BY id
LIMIT $3;

-- purge_workers --
-- The machines not heard from for $1 seconds ($2 now) are forgotten (workers_by_last_seen).
DELETE FROM workers
WHERE last_seen < coalesce($2::timestamptz, now()) - $1::float8 * interval '1 s';

-- list_workers --
-- Machines seen within $3 seconds of now ($4) through $1's keys (NULL: anyone's), in $2 (NULL:
-- all), with the job each holds in its group and how many of its user's jobs it is blocked from.
SELECT w.user_id, w.container_group_id, w.machine_id, w.first_seen, w.last_seen, w.last_poll,
       w.version,
       (SELECT j.id FROM jobs AS j
        WHERE j.status = 'running' AND j.container_group_id = w.container_group_id
          AND j.machine_id = w.machine_id AND (w.any_user OR j.user_id = w.user_id)
        LIMIT 1) AS current_job_id,
       (SELECT count(*) FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
        WHERE b.machine_id = w.machine_id AND j.user_id = w.user_id)::int AS blocked_jobs
FROM workers AS w
WHERE w.last_seen >= coalesce($4::timestamptz, now()) - $3::float8 * interval '1 s'
  AND ($1::text IS NULL OR w.user_id = $1) AND ($2::text IS NULL OR w.container_group_id = $2)
ORDER BY w.container_group_id, w.machine_id, w.user_id
LIMIT 1000;

-- pending_reason --
-- For a pending job ($1 id, $2 owner, $3 group, $4 seconds, $5 now): the machines of its group
-- heard from recently that may take it (through its owner's keys or an admin's), how many are
-- blocked from it and how many hold a job; and its owner's pending jobs of the group that come
-- before it in claim order. `found` false: the job is gone.
WITH m AS (
    SELECT DISTINCT machine_id FROM workers
    WHERE container_group_id = $3
      AND last_seen >= coalesce($5::timestamptz, now()) - $4::float8 * interval '1 s'
      AND (user_id = $2 OR any_user)
), me AS (
    SELECT priority, created, seq FROM jobs WHERE id = $1
)
SELECT (SELECT count(*) FROM m)::int AS machines,
       (SELECT count(*) FROM m WHERE EXISTS (
            SELECT 1 FROM job_blocks AS b WHERE b.job_id = $1 AND b.machine_id = m.machine_id
       ))::int AS blocked,
       (SELECT count(*) FROM m WHERE EXISTS (
            SELECT 1 FROM jobs AS j WHERE j.status = 'running' AND j.container_group_id = $3
              AND j.machine_id = m.machine_id
       ))::int AS busy,
       (SELECT count(*) FROM jobs AS j, me
        WHERE j.status = 'pending' AND j.container_group_id = $3 AND j.user_id = $2
          AND (j.priority > me.priority
               OR (j.priority = me.priority
                   AND (j.created < me.created
                        OR (j.created = me.created AND j.seq < me.seq)))))::int AS ahead,
       EXISTS (SELECT 1 FROM me) AS found;

-- ensure_admin_user --
-- The admin's user row ($1 id, $2 username, $3 webhook secret, $4 webhook token, $5 now),
-- unless the
-- username is taken (ensure_admin then makes that user an admin).
INSERT INTO users (id, username, created, is_admin, webhook_secret, webhook_token)
VALUES ($1, $2, coalesce($5::timestamptz, now()), true, $3, $4)
ON CONFLICT (username) DO NOTHING;

-- make_admin --
-- The user named $1 becomes an admin; answers the user.
UPDATE users SET is_admin = true WHERE username = $1
RETURNING id, username, created, is_admin, webhook_secret, webhook_token;

-- add_bootstrap_key --
-- The admin's key from the configuration ($1 id, $2 key hash, $3 user, $4 now): added, or given
-- back to that user and unrevoked when it exists.
INSERT INTO api_keys (id, key_hash, user_id, created, bootstrap)
VALUES ($1, $2, $3, coalesce($4::timestamptz, now()), true)
ON CONFLICT (key_hash) DO UPDATE
SET user_id = excluded.user_id, revoked = false, bootstrap = true;

-- revoke_other_bootstrap_keys --
-- The keys an earlier configuration gave (every bootstrap key but $1's hash) are revoked.
UPDATE api_keys SET revoked = true
WHERE bootstrap AND NOT revoked AND key_hash <> $1;

-- create_user --
-- A user ($1 id, $2 username, $3 admin, $4 webhook secret, $5 webhook token, $6 now).
INSERT INTO users (id, username, created, is_admin, webhook_secret, webhook_token)
VALUES ($1, $2, coalesce($6::timestamptz, now()), $3, $4, $5)
RETURNING id, username, created, is_admin, webhook_secret, webhook_token;

-- get_user --
-- The user $1.
SELECT id, username, created, is_admin, webhook_secret, webhook_token FROM users
WHERE id = $1;

-- add_api_key --
-- An API key of the user $3 ($1 id, $2 key hash, $4/$5 the org and project it is scoped to,
-- or NULL, $6 now).
INSERT INTO api_keys (id, key_hash, user_id, org_name, project_name, created)
VALUES ($1, $2, $3, $4, $5, coalesce($6::timestamptz, now()))
RETURNING id, user_id, created, org_name, project_name, revoked, bootstrap;

-- list_api_keys --
-- The user's ($1) API keys, oldest first.
SELECT id, user_id, created, org_name, project_name, revoked, bootstrap FROM api_keys
WHERE user_id = $1
ORDER BY created, id;

-- revoke_api_key --
-- The user's ($2) key $1 is revoked; a row when it is the user's.
UPDATE api_keys SET revoked = true WHERE id = $1 AND user_id = $2 RETURNING 1;

-- principal_for_key --
-- Who a key that is not revoked ($1 its hash) speaks for: its user, and the org and project
-- it is scoped to.
SELECT k.org_name, k.project_name,
       u.id, u.username, u.created, u.is_admin, u.webhook_secret, u.webhook_token
FROM api_keys AS k JOIN users AS u ON u.id = k.user_id
WHERE k.key_hash = $1 AND NOT k.revoked;

-- delete_non_admin_users --
-- Every user but the admins goes.
DELETE FROM users WHERE NOT is_admin;

-- claim_webhook_events --
-- Due webhook events, a fair share of each receiver: a walk over the distinct receivers with
-- pending events (one index probe each), then, per receiver, its soonest due events up to its
-- allowance ($4/$5: receivers and their allowances, else $6); the batch takes every
-- receiver's first event before any one's second. $1 limit, $2 lease seconds, $3 token, $7
-- now.
WITH RECURSIVE receivers AS (
    (SELECT receiver FROM webhook_outbox
     WHERE delivered_at IS NULL AND dead_at IS NULL
     ORDER BY receiver LIMIT 1)
    UNION ALL
    SELECT (SELECT o.receiver FROM webhook_outbox AS o
            WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.receiver > r.receiver
            ORDER BY o.receiver LIMIT 1)
    FROM receivers AS r WHERE r.receiver IS NOT NULL
),
allowed AS (
    SELECT r.receiver, coalesce(a.allowance, $6) AS allowance
    FROM receivers AS r
    LEFT JOIN unnest($4::text[], $5::int[]) AS a(receiver, allowance) USING (receiver)
    WHERE r.receiver IS NOT NULL
),
picked AS (
    SELECT d.id, d.next_attempt_at,
           row_number() OVER (PARTITION BY a.receiver ORDER BY d.next_attempt_at, d.id) AS rank
    FROM allowed AS a CROSS JOIN LATERAL (
        SELECT o.id, o.next_attempt_at FROM webhook_outbox AS o
        WHERE o.receiver = a.receiver AND o.delivered_at IS NULL AND o.dead_at IS NULL
          AND o.next_attempt_at <= coalesce($7::timestamptz, now())
          AND (o.leased_until IS NULL OR o.leased_until <= coalesce($7::timestamptz, now()))
        ORDER BY o.next_attempt_at, o.id
        LIMIT greatest(a.allowance, 0)
    ) AS d
),
due AS (
    -- Rechecked once locked, as another claim may have taken an event meanwhile. Spelt so
    -- that only the primary key fits (not the due index, whose scan a table with stale
    -- statistics can make look cheap).
    SELECT o.id FROM webhook_outbox AS o
    WHERE o.id = ANY(ARRAY(SELECT id FROM picked ORDER BY rank, next_attempt_at, id LIMIT $1))
      AND coalesce(o.delivered_at, o.dead_at) IS NULL
      AND (o.leased_until IS NULL OR o.leased_until <= coalesce($7::timestamptz, now()))
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_outbox AS o
SET leased_until = coalesce($7::timestamptz, now()) + $2::float8 * interval '1 s', lease_token = $3
WHERE o.id = ANY(ARRAY(SELECT id FROM due))
RETURNING o.id, o.user_id, o.url, o.payload, o.attempts, o.created, o.lease_token, o.receiver;

-- webhook_delivered --
-- The event ($1 id) was delivered ($3 now), written only while its claim ($2 lease token)
-- holds the lease: a row changed when it does.
UPDATE webhook_outbox SET delivered_at = coalesce($3::timestamptz, now()), attempts = attempts + 1,
    leased_until = NULL, lease_token = NULL
WHERE id = $1 AND lease_token = $2 AND leased_until IS NOT NULL;

-- webhook_retry_later --
-- The event's delivery failed ($1 id, $2 lease token as in webhook_delivered): tried again
-- in $3 seconds, $4 the error, $5 now.
UPDATE webhook_outbox
SET next_attempt_at = coalesce($5::timestamptz, now()) + $3::float8 * interval '1 s',
    last_error = $4, attempts = attempts + 1, leased_until = NULL, lease_token = NULL
WHERE id = $1 AND lease_token = $2 AND leased_until IS NOT NULL;

-- webhook_give_up --
-- The event is given up ($1 id, $2 lease token as in webhook_delivered, $3 the error, $4 now).
UPDATE webhook_outbox
SET dead_at = coalesce($4::timestamptz, now()), last_error = $3, attempts = attempts + 1,
    leased_until = NULL, lease_token = NULL
WHERE id = $1 AND lease_token = $2 AND leased_until IS NOT NULL;

-- webhook_postpone --
-- The event is tried again in $3 seconds without counting an attempt ($1 id, $2 lease token
-- as in webhook_delivered, $4 now).
UPDATE webhook_outbox
SET next_attempt_at = coalesce($4::timestamptz, now()) + $3::float8 * interval '1 s',
    leased_until = NULL, lease_token = NULL
WHERE id = $1 AND lease_token = $2 AND leased_until IS NOT NULL;

-- postpone_receiver_webhooks --
-- The receiver's ($1) pending events that nobody holds are due in $2 seconds from now ($3)
-- at the earliest.
UPDATE webhook_outbox
SET next_attempt_at = coalesce($3::timestamptz, now()) + $2::float8 * interval '1 s'
WHERE receiver = $1 AND delivered_at IS NULL AND dead_at IS NULL
  AND next_attempt_at < coalesce($3::timestamptz, now()) + $2::float8 * interval '1 s'
  AND (leased_until IS NULL OR leased_until <= coalesce($3::timestamptz, now()));

-- purge_finished_webhooks --
-- Events delivered or given up more than $1 seconds before now ($2) go.
DELETE FROM webhook_outbox
WHERE coalesce(delivered_at, dead_at)
      < coalesce($2::timestamptz, now()) - $1::float8 * interval '1 s';

-- pending_webhook_count --
-- How many events are neither delivered nor given up.
SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL;

-- create_scaling_rule --
-- A scaling rule ($1 user, $2 group, $3 min replicas, $4 max replicas, $5 idle threshold
-- seconds, $6 org, $7 project, $8 now).
INSERT INTO scaling_rules (user_id, container_group_id, min_replicas, max_replicas,
                           idle_threshold_seconds, created, updated, org_name, project_name)
VALUES ($1, $2, $3, $4, $5, coalesce($8::timestamptz, now()), coalesce($8::timestamptz, now()),
        $6, $7)
RETURNING user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
          created, updated, org_name, project_name;

-- list_scaling_rules --
-- The user's ($1, NULL: everyone's) scaling rules, oldest first.
SELECT user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
       created, updated, org_name, project_name
FROM scaling_rules WHERE ($1::text IS NULL OR user_id = $1)
ORDER BY created, user_id, container_group_id;

-- get_scaling_rule --
-- The user's ($1, NULL: anyone's, then the oldest) scaling rule of the group $2.
SELECT user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
       created, updated, org_name, project_name
FROM scaling_rules
WHERE container_group_id = $2 AND ($1::text IS NULL OR user_id = $1)
ORDER BY created, user_id
LIMIT 1;

-- update_scaling_rule --
-- The user's ($1, NULL: anyone's) scaling rule of the group $2 changed: $3 min replicas, $4 max
-- replicas, $5 idle threshold seconds, each NULL to keep it; $6 now. The bound is checked in the
-- WHERE clause: a concurrent update of the row makes PostgreSQL evaluate it again on the row that
-- update left. No row: no such rule, or the bound does not hold.
UPDATE scaling_rules SET
    min_replicas = coalesce($3, min_replicas),
    max_replicas = coalesce($4, max_replicas),
    idle_threshold_seconds = coalesce($5, idle_threshold_seconds),
    updated = coalesce($6::timestamptz, now())
WHERE container_group_id = $2 AND ($1::text IS NULL OR user_id = $1)
  AND coalesce($3, min_replicas) <= coalesce($4, max_replicas)
RETURNING user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
          created, updated, org_name, project_name;

-- scaling_rule_exists --
-- True when the user ($1, NULL: anyone) has a scaling rule for the group $2.
SELECT true FROM scaling_rules
WHERE container_group_id = $2 AND ($1::text IS NULL OR user_id = $1);

-- delete_scaling_rule --
-- The user's ($1, NULL: anyone's) scaling rules of the group $2 go; a row for each.
DELETE FROM scaling_rules
WHERE container_group_id = $2 AND ($1::text IS NULL OR user_id = $1)
RETURNING 1;

-- delete_all_scaling_rules --
-- Every scaling rule goes.
DELETE FROM scaling_rules;

-- count_active_jobs --
-- How many of the user's ($1) jobs of the group ($2) are pending or running, or ended within
-- the last $3 seconds before now ($4).
SELECT count(*) FROM jobs
WHERE user_id = $1 AND container_group_id = $2
  AND (status IN ('pending', 'running')
       OR coalesce(completed, failed, canceled)
          >= coalesce($4::timestamptz, now()) - $3::float8 * interval '1 s');

-- try_lease --
-- The lease $1 taken or renewed by $2 for $3 seconds from now ($4), when free, expired or already
-- theirs: a row when it is.
INSERT INTO leases (name, holder, expires_at)
VALUES ($1, $2, coalesce($4::timestamptz, now()) + $3::float8 * interval '1 s')
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE leases.expires_at <= coalesce($4::timestamptz, now()) OR leases.holder = excluded.holder
RETURNING holder;

-- job_goodput --
-- The goodput ledger (kelpie.store.goodput) of the job $1 of the user $2 (NULL: anyone's), as of
-- now ($3; a running attempt ends there): one row per attempt, oldest first. The facts of each
-- attempt are read in unix seconds, once (MATERIALIZED: inlined, PostgreSQL would convert them
-- again at every use) with date_part, whose float costs a fraction of extract's numeric; `spans`
-- and `ledger` are the ledger of kelpie.store.goodput's docstring (the same SQL in both dialects).
WITH facts AS MATERIALIZED (
    SELECT a.id, a.machine_id, date_part('epoch', a.ended) AS ended,
           a.outcome, date_part('epoch', a.started) AS started,
           date_part('epoch', coalesce(a.last_heartbeat, a.ended, $3::timestamptz, now()))
               AS finish,
           date_part('epoch', a.command_started) AS command_started,
           coalesce(a.upload_seconds, 0) AS upload_seconds,
           date_part('epoch', a.next_started) AS next_started, a.commits,
           date_part('epoch', a.first_commit) AS first_commit,
           date_part('epoch', a.last_commit) AS last_commit, a.commit_seconds, a.timed_commits
    FROM attempts AS a JOIN jobs AS j ON j.id = a.job_id
    WHERE j.id = $1 AND ($2::text IS NULL OR j.user_id = $2)
), spans AS (
    SELECT f.*,
           greatest(f.started, least(coalesce(f.command_started, f.started), f.finish))
               AS run_from
    FROM facts AS f
), ledger AS (
    SELECT s.*,
           s.run_from - s.started AS downloading_s,
           least(s.upload_seconds, s.finish - s.run_from) AS uploading_s,
           s.finish - s.run_from - least(s.upload_seconds, s.finish - s.run_from)
               AS running_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost', 'failed')
                THEN greatest(0, s.finish
                                 - greatest(s.run_from, coalesce(s.last_commit, s.run_from)))
           END AS work_lost_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost') AND s.next_started IS NOT NULL
                THEN greatest(0, s.next_started - s.finish)
           END AS detection_delay_s
    FROM spans AS s
)
SELECT id, machine_id, outcome, started, ended, finish, downloading_s, running_s, uploading_s,
       commits, last_commit, work_lost_s, detection_delay_s
FROM ledger ORDER BY id;

-- group_goodput --
-- The sums behind the goodput report of the group $1 for the user $2 (NULL: everyone's), over the
-- attempts that started within [$3, $4) (unix seconds), as of now ($5): one row. The facts and the
-- ledger as in job_goodput; the final SELECT sums it. Run with custom_plan first: the plan a
-- prepared statement settles on after five runs, made for any group, is several times slower.
WITH facts AS MATERIALIZED (
    SELECT a.outcome, date_part('epoch', a.started) AS started,
           date_part('epoch', coalesce(a.last_heartbeat, a.ended, $5::timestamptz, now()))
               AS finish,
           date_part('epoch', a.command_started) AS command_started,
           coalesce(a.upload_seconds, 0) AS upload_seconds,
           date_part('epoch', a.next_started) AS next_started, a.commits,
           date_part('epoch', a.first_commit) AS first_commit,
           date_part('epoch', a.last_commit) AS last_commit, a.commit_seconds, a.timed_commits
    FROM attempts AS a JOIN jobs AS j ON j.id = a.job_id
    WHERE j.container_group_id = $1 AND ($2::text IS NULL OR j.user_id = $2)
      AND a.started >= to_timestamp($3::float8) AND a.started < to_timestamp($4::float8)
), spans AS (
    SELECT f.*,
           greatest(f.started, least(coalesce(f.command_started, f.started), f.finish))
               AS run_from
    FROM facts AS f
), ledger AS (
    SELECT s.*,
           s.run_from - s.started AS downloading_s,
           least(s.upload_seconds, s.finish - s.run_from) AS uploading_s,
           s.finish - s.run_from - least(s.upload_seconds, s.finish - s.run_from)
               AS running_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost', 'failed')
                THEN greatest(0, s.finish
                                 - greatest(s.run_from, coalesce(s.last_commit, s.run_from)))
           END AS work_lost_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost') AND s.next_started IS NOT NULL
                THEN greatest(0, s.next_started - s.finish)
           END AS detection_delay_s
    FROM spans AS s
)
SELECT count(*) AS attempts,
       coalesce(sum(CASE WHEN outcome IN ('interrupted', 'lost') THEN 1 ELSE 0 END), 0)
           AS interruptions,
       coalesce(sum(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END), 0) AS failures,
       coalesce(sum(downloading_s), 0) AS downloading_s,
       coalesce(sum(running_s), 0) AS running_s,
       coalesce(sum(uploading_s), 0) AS uploading_s,
       coalesce(sum(CASE WHEN outcome IN ('interrupted', 'lost') THEN work_lost_s ELSE 0 END),
                0) AS work_lost_s,
       coalesce(sum(detection_delay_s), 0) AS detection_delay_s,
       count(detection_delay_s) AS detections,
       coalesce(sum(commits), 0) AS checkpoints,
       coalesce(sum(CASE WHEN commits >= 2 THEN last_commit - first_commit ELSE 0 END), 0)
           AS interval_sum,
       coalesce(sum(CASE WHEN commits >= 2 THEN commits - 1 ELSE 0 END), 0) AS intervals,
       coalesce(sum(commit_seconds), 0) AS cost_sum,
       coalesce(sum(timed_commits), 0) AS costs
FROM ledger;

-- custom_plan --
-- For the rest of the transaction, statements are planned for their parameters each time,
-- never with the generic plan a prepared statement otherwise settles on after five runs.
SET LOCAL plan_cache_mode = force_custom_plan;

-- metrics --
-- Every figure /metrics reads, in one statement so that they come from one snapshot. Jobs
-- are counted from the jobs_by_group_status index alone.
SELECT 'jobs' AS kind, container_group_id AS name, status AS detail, count(*) AS n,
       NULL::timestamptz AS at
FROM jobs GROUP BY container_group_id, status
UNION ALL
SELECT 'attempts', outcome, NULL, count(*), NULL FROM attempts GROUP BY outcome
UNION ALL
SELECT 'reallocations', NULL, NULL, count(*), NULL FROM machine_reallocations
UNION ALL
SELECT 'blocked_machines', NULL, NULL, count(DISTINCT machine_id), NULL FROM job_blocks
UNION ALL
SELECT 'webhook_backlog', NULL, NULL, count(*), min(created) FROM webhook_outbox
WHERE delivered_at IS NULL AND dead_at IS NULL;

-- group_counts --
-- How many jobs each group has in each status, every user's.
--
-- group_counts and the three statements after it are one question with and without the
-- user's and the group's filters: a statement for each, so that the planner picks the index
-- that fits the filters given.
SELECT container_group_id, status, count(*) FROM jobs
GROUP BY container_group_id, status
ORDER BY container_group_id;

-- group_counts_of_user --
-- As group_counts, the user's ($1) jobs.
SELECT container_group_id, status, count(*) FROM jobs
WHERE jobs.user_id = $1
GROUP BY container_group_id, status
ORDER BY container_group_id;

-- group_counts_of_group --
-- As group_counts, the group's ($1) jobs, every user's.
SELECT container_group_id, status, count(*) FROM jobs
WHERE jobs.container_group_id = $1
GROUP BY container_group_id, status
ORDER BY container_group_id;

-- group_counts_of_user_in_group --
-- As group_counts, the user's ($1) jobs of the group ($2).
SELECT container_group_id, status, count(*) FROM jobs
WHERE jobs.user_id = $1 AND jobs.container_group_id = $2
GROUP BY container_group_id, status
ORDER BY container_group_id;

-- blocked_machines --
-- The machines blocked from jobs of the group $1 (every user's), at most $2, the latest
-- blocked first: how many jobs, when last, and whether marked for reallocation.
SELECT b.machine_id, count(*) AS jobs, max(b.blocked_at) AS last_blocked,
       bool_or(EXISTS (SELECT 1 FROM machine_reallocations AS r
                       WHERE r.machine_id = b.machine_id AND r.user_id = j.user_id))
FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
WHERE j.container_group_id = $1
GROUP BY b.machine_id
ORDER BY last_blocked DESC, b.machine_id
LIMIT $2;

-- blocked_machines_of_user --
-- As blocked_machines, for the user's ($1) jobs of the group ($2), at most $3 (a statement
-- of its own, so that the planner picks the index that fits the user's filter).
SELECT b.machine_id, count(*) AS jobs, max(b.blocked_at) AS last_blocked,
       bool_or(EXISTS (SELECT 1 FROM machine_reallocations AS r
                       WHERE r.machine_id = b.machine_id AND r.user_id = j.user_id))
FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
WHERE j.user_id = $1 AND j.container_group_id = $2
GROUP BY b.machine_id
ORDER BY last_blocked DESC, b.machine_id
LIMIT $3;

-- group_activity --
-- Counts behind a group's activity chart (see kelpie.store.overview.activity_series): the
-- jobs of the group $1 (every user's) and their attempts that overlap the window [$2, $3),
-- alive before it, and created, started and ended in each bucket of $4 seconds.
WITH g AS (
    SELECT id, created, coalesce(completed, failed, canceled) AS ended FROM jobs
    WHERE jobs.container_group_id = $1 AND created < $3::timestamptz
      AND (coalesce(completed, failed, canceled) IS NULL
           OR coalesce(completed, failed, canceled) >= $2::timestamptz)
), a AS (
    SELECT attempts.started, attempts.ended, attempts.outcome
    FROM attempts JOIN g ON g.id = attempts.job_id
    WHERE attempts.started < $3::timestamptz
      AND (attempts.ended IS NULL OR attempts.ended >= $2::timestamptz)
)
SELECT 'alive' AS kind, -1 AS bucket, count(*) AS n FROM g WHERE created < $2::timestamptz
UNION ALL
SELECT 'created', floor(extract(epoch FROM created - $2::timestamptz) / $4::float8)::int AS bucket,
       count(*)
FROM g WHERE created >= $2::timestamptz GROUP BY bucket
UNION ALL
SELECT 'ended', floor(extract(epoch FROM ended - $2::timestamptz) / $4::float8)::int AS bucket,
       count(*)
FROM g WHERE ended < $3::timestamptz GROUP BY bucket
UNION ALL
SELECT 'held', -1, count(*) FROM a WHERE started < $2::timestamptz
UNION ALL
SELECT 'started', floor(extract(epoch FROM started - $2::timestamptz) / $4::float8)::int AS bucket,
       count(*)
FROM a WHERE started >= $2::timestamptz GROUP BY bucket
UNION ALL
SELECT 'ended:' || outcome,
       floor(extract(epoch FROM ended - $2::timestamptz) / $4::float8)::int AS bucket, count(*)
FROM a WHERE ended < $3::timestamptz GROUP BY outcome, bucket;

-- group_activity_of_user --
-- As group_activity, for the user's ($1) jobs of the group ($2), the window [$3, $4) and
-- buckets of $5 seconds (a statement of its own, so that the planner picks the index that
-- fits the user's filter).
WITH g AS (
    SELECT id, created, coalesce(completed, failed, canceled) AS ended FROM jobs
    WHERE jobs.user_id = $1 AND jobs.container_group_id = $2 AND created < $4::timestamptz
      AND (coalesce(completed, failed, canceled) IS NULL
           OR coalesce(completed, failed, canceled) >= $3::timestamptz)
), a AS (
    SELECT attempts.started, attempts.ended, attempts.outcome
    FROM attempts JOIN g ON g.id = attempts.job_id
    WHERE attempts.started < $4::timestamptz
      AND (attempts.ended IS NULL OR attempts.ended >= $3::timestamptz)
)
SELECT 'alive' AS kind, -1 AS bucket, count(*) AS n FROM g WHERE created < $3::timestamptz
UNION ALL
SELECT 'created', floor(extract(epoch FROM created - $3::timestamptz) / $5::float8)::int AS bucket,
       count(*)
FROM g WHERE created >= $3::timestamptz GROUP BY bucket
UNION ALL
SELECT 'ended', floor(extract(epoch FROM ended - $3::timestamptz) / $5::float8)::int AS bucket,
       count(*)
FROM g WHERE ended < $4::timestamptz GROUP BY bucket
UNION ALL
SELECT 'held', -1, count(*) FROM a WHERE started < $3::timestamptz
UNION ALL
SELECT 'started', floor(extract(epoch FROM started - $3::timestamptz) / $5::float8)::int AS bucket,
       count(*)
FROM a WHERE started >= $3::timestamptz GROUP BY bucket
UNION ALL
SELECT 'ended:' || outcome,
       floor(extract(epoch FROM ended - $3::timestamptz) / $5::float8)::int AS bucket, count(*)
FROM a WHERE ended < $4::timestamptz GROUP BY outcome, bucket;

-- ping --
-- The database answers.
SELECT 1;

-- lock_migrations --
-- Serializes the migrations of one database across processes, to the end of the
-- transaction ($1 the lock's key): several processes may start at once against a fresh
-- database.
SELECT pg_advisory_xact_lock($1);

-- create_schema_migrations --
-- The table of the migrations applied, on a fresh database.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL
);

-- applied_migrations --
-- The versions of the migrations applied.
SELECT version FROM schema_migrations;

-- note_migration --
-- The migration $1 is applied.
INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now());

-- lock_api_liveness --
-- When an API process was last alive, the row locked: processes that come back together
-- credit one outage once.
SELECT last_seen FROM api_liveness WHERE id = 1 FOR UPDATE;

-- newest_heartbeat --
-- The newest heartbeat of a running job (now, $1, when none): the last sign of life on a first
-- start on this database (or after an upgrade).
SELECT coalesce(max(heartbeat), $1::timestamptz, now()) FROM jobs WHERE status = 'running';

-- seconds_since --
-- How many seconds before now ($2) $1 was.
SELECT extract(epoch FROM coalesce($2::timestamptz, now()) - $1::timestamptz)::float8;

-- extend_leases_after_outage --
-- Nobody could hear heartbeats since $1: a running job whose lease was still good then gets a
-- full lease from now ($3), and $2 seconds of grace, to beat again.
UPDATE jobs SET lease_expires = greatest(lease_expires,
    coalesce($3::timestamptz, now()) + heartbeat_interval * interval '2 s'
    + $2::float8 * interval '1 s')
WHERE status = 'running'
  AND heartbeat >= $1::timestamptz - heartbeat_interval * interval '2 s';

-- note_api_alive --
-- An API process is alive now ($1).
INSERT INTO api_liveness (id, last_seen) VALUES (1, coalesce($1::timestamptz, now()))
ON CONFLICT (id) DO UPDATE
SET last_seen = greatest(api_liveness.last_seen, excluded.last_seen);

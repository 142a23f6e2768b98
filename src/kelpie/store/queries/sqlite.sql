-- Every SQL statement of the SQLite store, by name (see kelpie/store/queries/__init__.py).
--
-- Parameters are SQLite's: `?` in order, or `:name` from a mapping. Times are REAL unix epoch
-- seconds (UTC). Statements the store runs in its write connection see one `BEGIN IMMEDIATE`
-- transaction and their own savepoint (kelpie.store._group_commit), which runs its own
-- transaction control statements. The statements come in the order of the store's methods:
-- users and keys, jobs (user side), a job's history, jobs (worker side), workers,
-- checkpoints and events, goodput, API liveness and machine reallocations, webhooks, scaling
-- rules, leases, operator views, the new-jobs watch, schema migrations.
--
-- A statement's comments go under its name or inside it: a comment after a statement, before
-- the next name, would be read as part of that statement.

-- insert_admin --
-- The bootstrap admin (? id, ? username, ? created, ? webhook secret, ? webhook token), unless
-- the username is taken (make_admin then makes that user an admin).
INSERT INTO users (id, username, created, is_admin, webhook_secret, webhook_token)
VALUES (?, ?, ?, 1, ?, ?)
ON CONFLICT (username) DO NOTHING;

-- make_admin --
-- The user named ? made an admin, returned.
UPDATE users SET is_admin = 1 WHERE username = ?
RETURNING id, username, created, is_admin, webhook_secret, webhook_token;

-- bootstrap_key --
-- The bootstrap admin's key (? id, ? key hash, ? user id, ? created), made or given back to the
-- admin, unrevoked.
INSERT INTO api_keys (id, key_hash, user_id, created, bootstrap)
VALUES (?, ?, ?, ?, 1)
ON CONFLICT (key_hash) DO UPDATE
SET user_id = excluded.user_id, revoked = 0, bootstrap = 1;

-- revoke_other_bootstrap_keys --
-- Every earlier bootstrap key but the one of hash ? revoked.
UPDATE api_keys SET revoked = 1
WHERE bootstrap = 1 AND revoked = 0 AND key_hash <> ?;

-- create_user --
-- A new user (? id, ? username, ? created, ? is_admin, ? webhook secret, ? webhook token).
INSERT INTO users (id, username, created, is_admin, webhook_secret, webhook_token)
VALUES (?, ?, ?, ?, ?, ?)
RETURNING id, username, created, is_admin, webhook_secret, webhook_token;

-- get_user --
-- The user of id ?.
SELECT id, username, created, is_admin, webhook_secret, webhook_token FROM users WHERE id = ?;

-- user_exists --
-- A row if the user of id ? exists.
SELECT 1 FROM users WHERE id = ?;

-- add_api_key --
-- A new key (? id, ? key hash, ? user id, ? org name, ? project name, ? created).
INSERT INTO api_keys (id, key_hash, user_id, org_name, project_name, created)
VALUES (?, ?, ?, ?, ?, ?)
RETURNING id, user_id, created, org_name, project_name, revoked, bootstrap;

-- list_api_keys --
-- The keys of the user of id ?, oldest first.
SELECT id, user_id, created, org_name, project_name, revoked, bootstrap
FROM api_keys WHERE user_id = ? ORDER BY created, id;

-- revoke_api_key --
-- The key of id ? revoked if it is the user's (? user id); a row if so.
UPDATE api_keys SET revoked = 1 WHERE id = ? AND user_id = ? RETURNING 1;

-- principal_for_key --
-- Who calls with the unrevoked key of hash ?: the key's org and project, and its user.
SELECT k.org_name, k.project_name,
       u.id, u.username, u.created, u.is_admin, u.webhook_secret, u.webhook_token
FROM api_keys AS k JOIN users AS u ON u.id = k.user_id
WHERE k.key_hash = ? AND k.revoked = 0;

-- delete_non_admin_users --
-- Every user but the admins.
DELETE FROM users WHERE is_admin = 0;

-- insert_job --
-- A new job, pending (? id, ? user id, ? container group, ? created, ? max_failures,
-- ? heartbeat_interval, ? webhook, ? spec (JSON), ? org name, ? project name,
-- ? checkpoint_keep, ? name, ? max_interruptions, ? priority, ? logs_prefix, ? stall_timeout).
INSERT INTO jobs (id, user_id, status, container_group_id, created,
                  max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
                  checkpoint_keep, name, max_interruptions, priority, logs_prefix, stall_timeout)
VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- insert_job_label --
-- A label of a new job (? job id, ? key, ? value).
INSERT INTO job_labels (job_id, key, value) VALUES (?, ?, ?);

-- idempotency_key --
-- The earlier submission under the user's (? user id) idempotency key (? key).
SELECT fingerprint, status_code, job_ids, created FROM idempotency_keys
WHERE user_id = ? AND key = ?;

-- jobs_by_ids --
-- The jobs whose ids are in the JSON array ?, in no particular order.
SELECT id, user_id, status, container_group_id, created, started, completed, canceled, failed,
       heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
       max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority,
       name, max_interruptions, num_interruptions,
       logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs WHERE id IN (SELECT value FROM json_each(?));

-- save_idempotency_key --
-- A submission under the user's idempotency key (? user id, ? key, ? fingerprint of the
-- request, ? status code of the answer, ? job ids as a JSON array, ? created); it replaces an
-- expired one.
INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, job_ids, created)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, key) DO UPDATE
SET fingerprint = excluded.fingerprint, status_code = excluded.status_code,
    job_ids = excluded.job_ids, created = excluded.created;

-- purge_idempotency_keys --
-- The idempotency keys made before ?.
DELETE FROM idempotency_keys WHERE created < ?;

-- get_job --
-- The job :job_id, if :user_id (NULL: anyone) may see it.
SELECT id, user_id, status, container_group_id, created, started, completed, canceled, failed,
       heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
       max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority,
       name, max_interruptions, num_interruptions,
       logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs WHERE id = :job_id AND (:user_id IS NULL OR user_id = :user_id);

-- list_jobs_newest_first --
-- A page of jobs, newest first (:limit jobs from :offset on), under the filters of the query.
-- VARIES AT RUN TIME: {filters} is replaced by nothing (no filter) or by `WHERE` and the
-- query's conditions joined by AND, each one of a closed set (`_job_filters` in
-- kelpie/store/sqlite.py; values are always parameters, never written in):
--   user_id = :user_id, status = :status, container_group_id = :container_group_id,
--   name = :name, and for the query's i-th label (rarest first, i = 0, 1, ...) either
--   id IN (SELECT job_id FROM job_labels WHERE key = :label_key_0 AND value = :label_value_0)
--   (i = 0, when few jobs carry that label: found through the label's index, then sorted), or
--   EXISTS (SELECT 1 FROM job_labels
--           WHERE key = :label_key_i AND value = :label_value_i AND job_id = jobs.id)
--   (each job checked, walking the jobs in order).
-- Only the filters given are written, so that SQLite plans the page on the index that fits
-- them (jobs_by_user, jobs_by_user_status, jobs_by_user_group, jobs_by_name, the label's
-- primary key, or jobs_by_created); a parameter that may be NULL would lose that.
SELECT id, user_id, status, container_group_id, created, started, completed, canceled, failed,
       heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
       max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority,
       name, max_interruptions, num_interruptions,
       logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs {filters}
ORDER BY created DESC, seq DESC LIMIT :limit OFFSET :offset;

-- list_jobs_oldest_first --
-- As list_jobs_newest_first, oldest first; {filters} VARIES AT RUN TIME in the same way.
SELECT id, user_id, status, container_group_id, created, started, completed, canceled, failed,
       heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
       max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
       attempt_id, checkpoint_generation, checkpoint_keep, priority,
       name, max_interruptions, num_interruptions,
       logs_prefix, stall_timeout, progress, progress_updated_at
FROM jobs {filters}
ORDER BY created ASC, seq ASC LIMIT :limit OFFSET :offset;

-- label_count --
-- Jobs carrying a label (? key, ? value), counted up to a cap (? the cap): an index range,
-- cheap, and bounded.
SELECT count(*) FROM (SELECT 1 FROM job_labels WHERE key = ? AND value = ? LIMIT ?);

-- job_status --
-- The status of the job :job_id, if :user_id (NULL: anyone) may see it.
SELECT status FROM jobs WHERE id = :job_id AND (:user_id IS NULL OR user_id = :user_id);

-- job_visible --
-- A row if the job :job_id exists and :user_id (NULL: anyone) may see it.
SELECT 1 FROM jobs WHERE id = :job_id AND (:user_id IS NULL OR user_id = :user_id);

-- cancel_job --
-- The job :job_id canceled at :now if it is pending or running and :user_id (NULL: anyone) may
-- see it.
UPDATE jobs SET status = 'canceled', canceled = :now
WHERE id = :job_id AND status IN ('pending', 'running')
  AND (:user_id IS NULL OR user_id = :user_id)
RETURNING id, status, attempt_id, machine_id;

-- cancel_running_of_group --
-- The running jobs of the user's (:user_id) group (:group) canceled at :now.
UPDATE jobs SET status = 'canceled', canceled = :now
WHERE user_id = :user_id AND container_group_id = :group AND status = 'running'
RETURNING id;

-- cancel_attempt --
-- The job's running attempt ended, canceled (? ended, ? job id).
UPDATE attempts SET outcome = 'canceled', ended = ?
WHERE job_id = ? AND outcome = 'running';

-- delete_pending_of_group --
-- The pending jobs of the user's (:user_id) group (:group).
DELETE FROM jobs
WHERE user_id = :user_id AND container_group_id = :group AND status = 'pending'
RETURNING id;

-- delete_all_jobs --
-- Every job (with what hangs on it, by foreign key).
DELETE FROM jobs;

-- list_attempts --
-- The attempts of the job ?, oldest first.
SELECT id, job_id, machine_id, started, ended, outcome, exit_code FROM attempts
WHERE job_id = ? ORDER BY id;

-- attempt_warnings --
-- The warnings of the job's (? job id) attempts, oldest first: its events of the kinds
-- WARNING_EVENT_KINDS (kelpie.store._common) names, written out here.
SELECT attempt_id, message FROM job_events
WHERE job_id = ? AND kind IN ('warning', 'checkpoint_fallback')
  AND attempt_id IS NOT NULL ORDER BY id;

-- queue_webhook_event --
-- A webhook event for the job's webhook (? user id, ? url, ? payload (JSON),
-- ? next_attempt_at, ? created), sent by the webhook dispatcher.
INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)
VALUES (?, ?, ?, ?, ?);

-- end_running_attempt --
-- The job's running attempt ended (? outcome, ? ended, ? exit code, ? job id).
UPDATE attempts SET outcome = ?, ended = ?, exit_code = ?
WHERE job_id = ? AND outcome = 'running';

-- add_event --
-- An event of the job (? job id, ? attempt id, ? machine, ? kind, ? message, ? data (JSON),
-- ? created).
INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, data, created)
VALUES (?, ?, ?, ?, ?, ?, ?);

-- attempt_command_started --
-- The attempt's (? id) command started at ? (the worker's `started` event; the first counts).
UPDATE attempts SET command_started = coalesce(command_started, ?) WHERE id = ?;

-- attempt_upload_seconds --
-- ? more seconds of final uploads on the attempt ? (the worker's `outputs_uploaded` events).
UPDATE attempts SET upload_seconds = coalesce(upload_seconds, 0) + ? WHERE id = ?;

-- record_progress --
-- The job's progress (? JSON) as of ?, with a new stall deadline from ? (the same time),
-- on the job of id ?.
UPDATE jobs SET progress = ?, progress_updated_at = ?,
    stall_deadline = ? + stall_timeout
WHERE id = ?;

-- claim --
-- A stalled job of the group first, else the first pending one, taken for :machine_id (:now
-- the time, :user_id the owner whose jobs it may take, NULL for anyone's). The new attempt's
-- id is drawn here (the writer holds the file's lock: nobody else adds an attempt meanwhile),
-- so that the job carries it from this statement on.
--
-- Each branch finds the first job of the group in its status that the machine may take
-- (stalled, when running), in claim order (highest priority, then oldest), as (seq, rank).
-- Pending jobs come in this order from jobs_pending_by_group, without sorting. The indexes are
-- named: with statistics (after an ANALYZE) SQLite would rather sort a big group's pending
-- jobs found through jobs_by_group_status, at every claim. A stalled job at its last allowed
-- interruption is failed instead (see end_out_of_interruptions), never handed out again.
UPDATE jobs
SET status = 'running', machine_id = :machine_id, heartbeat = :now,
    lease_expires = :now + 2 * heartbeat_interval, started = coalesce(started, :now),
    attempt_id = (SELECT coalesce(max(id), 0) + 1 FROM attempts),
    stall_deadline = :now + stall_timeout,
    num_interruptions = num_interruptions + (status = 'running')
WHERE seq = (
    SELECT seq FROM (
        SELECT seq, 0 AS rank FROM (
            SELECT j.seq FROM jobs AS j INDEXED BY jobs_running_by_group
            WHERE j.status = 'running' AND j.container_group_id = :group
              AND j.lease_expires < :now
              AND (j.max_interruptions IS NULL OR j.num_interruptions + 1 < j.max_interruptions)
              AND (:user_id IS NULL OR j.user_id = :user_id)
              AND NOT EXISTS (
                  SELECT 1 FROM job_blocks AS b
                  WHERE b.job_id = j.id AND b.machine_id = :machine_id)
            ORDER BY j.priority DESC, j.created, j.seq
            LIMIT 1
        ) UNION ALL
        SELECT seq, 1 AS rank FROM (
            SELECT j.seq FROM jobs AS j INDEXED BY jobs_pending_by_group
            WHERE j.status = 'pending' AND j.container_group_id = :group
              AND (:user_id IS NULL OR j.user_id = :user_id)
              AND NOT EXISTS (
                  SELECT 1 FROM job_blocks AS b
                  WHERE b.job_id = j.id AND b.machine_id = :machine_id)
            ORDER BY j.priority DESC, j.created, j.seq
            LIMIT 1
        ))
    ORDER BY rank
    LIMIT 1
)
RETURNING id, user_id, status, container_group_id, created, started, completed, canceled, failed,
          heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
          max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
          attempt_id, checkpoint_generation, checkpoint_keep, priority,
          name, max_interruptions, num_interruptions,
          logs_prefix, stall_timeout, progress, progress_updated_at;

-- lose_running_attempts --
-- A running attempt left on the claimed job belongs to the stalled previous holder: lost
-- (? ended, ? job id), with its id and machine returned.
UPDATE attempts SET outcome = 'lost', ended = ?
WHERE job_id = ? AND outcome = 'running' RETURNING id, machine_id;

-- insert_attempt --
-- The claim's attempt (? id, drawn by the claim; ? job id, ? machine, ? started).
INSERT INTO attempts (id, job_id, machine_id, started, outcome)
VALUES (?, ?, ?, ?, 'running');

-- heartbeat --
-- The holder's beat at :now. The caller holds the job :job_id: fenced by attempt when it sent
-- its claim's token (:attempt_id), else by machine (:machine_id); :user_id (NULL: anyone)
-- may see it.
UPDATE jobs SET heartbeat = :now, num_heartbeats = num_heartbeats + 1,
    lease_expires = :now + 2 * heartbeat_interval
WHERE id = :job_id AND status = 'running' AND machine_id = :machine_id
  AND (:attempt_id IS NULL OR attempt_id = :attempt_id)
  AND (:user_id IS NULL OR user_id = :user_id)
RETURNING id, attempt_id, progress;

-- is_held --
-- A row if the caller holds the job (as in heartbeat: :job_id, :machine_id, :attempt_id,
-- :user_id).
SELECT 1 FROM jobs
WHERE id = :job_id AND status = 'running' AND machine_id = :machine_id
  AND (:attempt_id IS NULL OR attempt_id = :attempt_id)
  AND (:user_id IS NULL OR user_id = :user_id);

-- complete_held --
-- The job completed at :now, if the caller holds it (as in heartbeat).
UPDATE jobs SET status = 'completed', completed = :now
WHERE id = :job_id AND status = 'running' AND machine_id = :machine_id
  AND (:attempt_id IS NULL OR attempt_id = :attempt_id)
  AND (:user_id IS NULL OR user_id = :user_id)
RETURNING id, user_id, status, container_group_id, created, started, completed, canceled, failed,
          heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
          max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
          attempt_id, checkpoint_generation, checkpoint_keep, priority,
          name, max_interruptions, num_interruptions,
          logs_prefix, stall_timeout, progress, progress_updated_at;

-- fail_held --
-- The holder's failure (:exit_code, :error) at :now, if the caller holds the job (as in
-- heartbeat): the job fails for good at its last allowed failure or when :fail_now, else it
-- is pending again.
UPDATE jobs SET num_failures = num_failures + 1,
    last_exit_code = :exit_code, last_error = :error,
    status = CASE WHEN :fail_now OR num_failures + 1 >= max_failures
             THEN 'failed' ELSE 'pending' END,
    failed = CASE WHEN :fail_now OR num_failures + 1 >= max_failures
             THEN :now ELSE failed END
WHERE id = :job_id AND status = 'running' AND machine_id = :machine_id
  AND (:attempt_id IS NULL OR attempt_id = :attempt_id)
  AND (:user_id IS NULL OR user_id = :user_id)
RETURNING id, user_id, status, container_group_id, created, started, completed, canceled, failed,
          heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
          max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
          attempt_id, checkpoint_generation, checkpoint_keep, priority,
          name, max_interruptions, num_interruptions,
          logs_prefix, stall_timeout, progress, progress_updated_at;

-- block_machine --
-- The machine (? machine) never receives the job (? job id) again, from ? on.
INSERT INTO job_blocks (job_id, machine_id, blocked_at) VALUES (?, ?, ?)
ON CONFLICT DO NOTHING;

-- tenant_blocked_jobs --
-- How many jobs of one user (a tenant, :user_id) the machine :machine_id is blocked from.
SELECT count(*)
FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
WHERE b.machine_id = :machine_id AND j.user_id = :user_id;

-- interrupt_held --
-- The holder hands the job back at :now, if the caller holds it (as in heartbeat): pending
-- again, or failed at its last allowed interruption, with the reason as last_error (`interrupted
-- N times; max_interruptions is M`, the same text in both dialects).
UPDATE jobs SET num_interruptions = num_interruptions + 1,
    status = CASE WHEN max_interruptions IS NOT NULL
                       AND num_interruptions + 1 >= max_interruptions
             THEN 'failed' ELSE 'pending' END,
    failed = CASE WHEN max_interruptions IS NOT NULL
                       AND num_interruptions + 1 >= max_interruptions
             THEN :now ELSE failed END,
    last_error = CASE WHEN max_interruptions IS NOT NULL
                           AND num_interruptions + 1 >= max_interruptions
                 THEN 'interrupted ' || (num_interruptions + 1)
                      || ' times; max_interruptions is ' || max_interruptions
                 ELSE last_error END
WHERE id = :job_id AND status = 'running' AND machine_id = :machine_id
  AND (:attempt_id IS NULL OR attempt_id = :attempt_id)
  AND (:user_id IS NULL OR user_id = :user_id)
RETURNING id, user_id, status, container_group_id, created, started, completed, canceled, failed,
          heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
          max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
          attempt_id, checkpoint_generation, checkpoint_keep, priority,
          name, max_interruptions, num_interruptions,
          logs_prefix, stall_timeout, progress, progress_updated_at;

-- any_out_of_interruptions --
-- A row if a running job stalled (lease expired before :now) at its last allowed
-- interruption. Asked every second by every API process: the common answer, none, is read
-- without taking the file's write lock.
SELECT 1 FROM jobs
WHERE status = 'running' AND max_interruptions IS NOT NULL AND lease_expires < :now
  AND num_interruptions + 1 >= max_interruptions
LIMIT 1;

-- end_out_of_interruptions --
-- The running jobs stalled (lease expired before :now) at their last allowed interruption,
-- failed at :now, with the reason as last_error (as in interrupt_held).
UPDATE jobs SET status = 'failed', failed = :now,
    num_interruptions = num_interruptions + 1,
    last_error = 'interrupted ' || (num_interruptions + 1)
                 || ' times; max_interruptions is ' || max_interruptions
WHERE status = 'running' AND max_interruptions IS NOT NULL AND lease_expires < :now
  AND num_interruptions + 1 >= max_interruptions
RETURNING id, user_id, status, container_group_id, created, started, completed, canceled, failed,
          heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
          max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
          attempt_id, checkpoint_generation, checkpoint_keep, priority,
          name, max_interruptions, num_interruptions,
          logs_prefix, stall_timeout, progress, progress_updated_at;

-- lose_attempt --
-- The job's running attempt lost (? ended, ? its holder's last heartbeat, ? job id).
UPDATE attempts SET outcome = 'lost', ended = ?, last_heartbeat = ?
WHERE job_id = ? AND outcome = 'running';

-- any_stalled --
-- A row if a running job's progress stalled (its stall deadline passed before :now). Asked
-- every second by every API process: the common answer, none, is read without taking the
-- file's write lock.
SELECT 1 FROM jobs INDEXED BY jobs_running_by_stall_deadline
WHERE status = 'running' AND stall_deadline IS NOT NULL AND stall_deadline < :now
LIMIT 1;

-- stalled_jobs --
-- The running jobs whose progress stalled (stall deadline passed before :now).
SELECT id, machine_id, stall_timeout FROM jobs
WHERE status = 'running' AND stall_deadline IS NOT NULL AND stall_deadline < :now;

-- fail_stalled_job --
-- The stalled job :id failed at :now with :error: failed for good at its last allowed
-- failure, else pending again.
UPDATE jobs SET num_failures = num_failures + 1,
    last_exit_code = NULL, last_error = :error, stall_deadline = NULL,
    status = CASE WHEN num_failures + 1 >= max_failures
             THEN 'failed' ELSE 'pending' END,
    failed = CASE WHEN num_failures + 1 >= max_failures
             THEN :now ELSE failed END
WHERE id = :id AND status = 'running'
RETURNING id, user_id, status, container_group_id, created, started, completed, canceled, failed,
          heartbeat, num_failures, num_heartbeats, machine_id, last_exit_code, last_error,
          max_failures, heartbeat_interval, webhook, spec, org_name, project_name,
          attempt_id, checkpoint_generation, checkpoint_keep, priority,
          name, max_interruptions, num_interruptions,
          logs_prefix, stall_timeout, progress, progress_updated_at;

-- note_worker --
-- A machine heard from: first seen, last seen, last poll, version (a version sent replaces
-- it). :user_id, :group, :machine_id, :any_user (seen through an admin's key), :version (or
-- NULL), :polled (it asked for work), :now.
INSERT INTO workers (user_id, container_group_id, machine_id, any_user, version, first_seen,
                     last_poll, last_seen)
VALUES (:user_id, :group, :machine_id, :any_user, :version, :now,
        CASE WHEN :polled THEN :now END, :now)
ON CONFLICT (container_group_id, machine_id, user_id) DO UPDATE
SET last_seen = excluded.last_seen, any_user = excluded.any_user,
    last_poll = coalesce(excluded.last_poll, workers.last_poll),
    version = coalesce(excluded.version, workers.version);

-- purge_workers --
-- The machines not heard from since ? are forgotten (workers_by_last_seen).
DELETE FROM workers WHERE last_seen < ?;

-- list_workers --
-- Machines seen since :since through :user_id's keys (NULL: anyone's), in :group (NULL: all),
-- with the job each holds in its group and how many of its user's jobs it is blocked from.
SELECT w.user_id, w.container_group_id, w.machine_id, w.first_seen, w.last_seen, w.last_poll,
       w.version,
       (SELECT j.id FROM jobs AS j INDEXED BY jobs_running_by_group
        WHERE j.status = 'running' AND j.container_group_id = w.container_group_id
          AND j.machine_id = w.machine_id AND (w.any_user OR j.user_id = w.user_id)
        LIMIT 1) AS current_job_id,
       (SELECT count(*) FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
        WHERE b.machine_id = w.machine_id AND j.user_id = w.user_id) AS blocked_jobs
FROM workers AS w
WHERE w.last_seen >= :since AND (:user_id IS NULL OR w.user_id = :user_id)
  AND (:group IS NULL OR w.container_group_id = :group)
ORDER BY w.container_group_id, w.machine_id, w.user_id
LIMIT 1000;

-- recent_machines --
-- The machines of the job's group (:job_id, :group) heard from since :since that may take it
-- (through its owner :user_id's keys or an admin's): how many, how many are blocked from it,
-- how many hold a job.
SELECT count(*) AS machines,
       coalesce(sum(EXISTS (SELECT 1 FROM job_blocks AS b
                            WHERE b.job_id = :job_id AND b.machine_id = m.machine_id)), 0)
           AS blocked,
       coalesce(sum(EXISTS (SELECT 1 FROM jobs AS j INDEXED BY jobs_running_by_group
                            WHERE j.status = 'running' AND j.container_group_id = :group
                              AND j.machine_id = m.machine_id)), 0) AS busy
FROM (SELECT DISTINCT machine_id FROM workers
      WHERE container_group_id = :group AND last_seen >= :since
        AND (user_id = :user_id OR any_user)) AS m;

-- jobs_ahead --
-- The owner's (:user_id) pending jobs of the group (:group) that come before the job
-- (:job_id) in claim order.
SELECT count(*) FROM jobs AS j INDEXED BY jobs_pending_by_group,
     (SELECT priority, created, seq FROM jobs WHERE id = :job_id) AS me
WHERE j.status = 'pending' AND j.container_group_id = :group AND j.user_id = :user_id
  AND (j.priority > me.priority
       OR (j.priority = me.priority
           AND (j.created < me.created OR (j.created = me.created AND j.seq < me.seq))));

-- checkpoint_state --
-- The job's (:job_id, if :user_id, NULL for anyone, may see it) newest committed generation
-- and how many generations' manifests it keeps.
SELECT checkpoint_generation, checkpoint_keep FROM jobs
WHERE id = :job_id AND (:user_id IS NULL OR user_id = :user_id);

-- get_checkpoint --
-- The job's (? job id) checkpoint of generation ?, with its manifest (NULL once dropped).
SELECT job_id, generation, attempt_id, machine_id, created, files, bytes, manifest
FROM checkpoints WHERE job_id = ? AND generation = ?;

-- insert_checkpoint --
-- A committed generation (? job id, ? generation, ? attempt id, ? machine, ? created, ? files,
-- ? bytes, ? manifest (JSON), ? upload seconds or NULL).
INSERT INTO checkpoints (job_id, generation, attempt_id, machine_id, created, files, bytes,
                         manifest, upload_seconds)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?);

-- set_checkpoint_generation --
-- The job's newest committed generation (? generation, ? job id).
UPDATE jobs SET checkpoint_generation = ? WHERE id = ?;

-- count_commit --
-- A committed generation counted on its attempt (:attempt_id) at :now, with its upload's
-- seconds :s (NULL when not timed); the goodput ledger reads it there.
UPDATE attempts SET commits = commits + 1, first_commit = coalesce(first_commit, :now),
    last_commit = :now, commit_seconds = commit_seconds + coalesce(:s, 0),
    timed_commits = timed_commits + (:s IS NOT NULL)
WHERE id = :attempt_id;

-- kept_manifests --
-- The job's (? job id) generations whose manifests are kept, newest first.
SELECT generation, manifest FROM checkpoints
WHERE job_id = ? AND manifest IS NOT NULL ORDER BY generation DESC;

-- drop_manifest --
-- The manifest of the job's (? job id) generation ? dropped (beyond checkpoint_keep).
UPDATE checkpoints SET manifest = NULL WHERE job_id = ? AND generation = ?;

-- list_checkpoints --
-- The job's (? job id) checkpoints, oldest first, with '[]' for a kept manifest (its entries
-- are not read here) and NULL for a dropped one.
SELECT job_id, generation, attempt_id, machine_id, created, files, bytes,
       CASE WHEN manifest IS NULL THEN NULL ELSE '[]' END AS manifest
FROM checkpoints WHERE job_id = ? ORDER BY generation;

-- attempt_event_count --
-- How many events the job's (? job id) attempt ? has.
SELECT count(*) FROM job_events WHERE job_id = ? AND attempt_id = ?;

-- list_job_events --
-- The job's (? job id) events after id ?, oldest first, at most ?.
SELECT id, job_id, attempt_id, machine_id, kind, message, data, created
FROM job_events WHERE job_id = ? AND id > ?
ORDER BY id LIMIT ?;

-- job_goodput --
-- The goodput ledger (rules in kelpie.store.goodput's docstring; SQLite's max/min for
-- greatest/least)
-- over `facts`: the attempts chosen, in unix seconds, as the ledger needs them.
-- One ledger row per attempt of the job :job_id (if :user_id, NULL for anyone, may see it),
-- oldest first; :now ends the running attempt.
WITH facts AS (
    SELECT a.id, a.machine_id, a.ended, a.outcome, a.started,
           coalesce(a.last_heartbeat, a.ended, :now) AS finish, a.command_started,
           coalesce(a.upload_seconds, 0) AS upload_seconds, a.next_started, a.commits,
           a.first_commit, a.last_commit, a.commit_seconds, a.timed_commits
    FROM attempts AS a JOIN jobs AS j ON j.id = a.job_id
    WHERE j.id = :job_id AND (:user_id IS NULL OR j.user_id = :user_id)
),
spans AS (
    SELECT f.*,
           max(f.started, min(coalesce(f.command_started, f.started), f.finish))
               AS run_from
    FROM facts AS f
), ledger AS (
    SELECT s.*,
           s.run_from - s.started AS downloading_s,
           min(s.upload_seconds, s.finish - s.run_from) AS uploading_s,
           s.finish - s.run_from - min(s.upload_seconds, s.finish - s.run_from)
               AS running_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost', 'failed')
                THEN max(0, s.finish
                            - max(s.run_from, coalesce(s.last_commit, s.run_from)))
           END AS work_lost_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost') AND s.next_started IS NOT NULL
                THEN max(0, s.next_started - s.finish)
           END AS detection_delay_s
    FROM spans AS s
)
SELECT id, machine_id, outcome, started, ended, finish, downloading_s, running_s, uploading_s,
       commits, last_commit, work_lost_s, detection_delay_s
FROM ledger ORDER BY id;

-- group_goodput --
-- The goodput ledger as in job_goodput.
-- The sums behind a group report, one row: the attempts of :group's jobs
-- (those :user_id may see, NULL for anyone's) that started within [:since, :until); :now ends
-- the running ones.
WITH facts AS (
    SELECT a.outcome, a.started,
           coalesce(a.last_heartbeat, a.ended, :now) AS finish, a.command_started,
           coalesce(a.upload_seconds, 0) AS upload_seconds, a.next_started, a.commits,
           a.first_commit, a.last_commit, a.commit_seconds, a.timed_commits
    FROM attempts AS a JOIN jobs AS j ON j.id = a.job_id
    WHERE j.container_group_id = :group AND (:user_id IS NULL OR j.user_id = :user_id)
      AND a.started >= :since AND a.started < :until
),
spans AS (
    SELECT f.*,
           max(f.started, min(coalesce(f.command_started, f.started), f.finish))
               AS run_from
    FROM facts AS f
), ledger AS (
    SELECT s.*,
           s.run_from - s.started AS downloading_s,
           min(s.upload_seconds, s.finish - s.run_from) AS uploading_s,
           s.finish - s.run_from - min(s.upload_seconds, s.finish - s.run_from)
               AS running_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost', 'failed')
                THEN max(0, s.finish
                            - max(s.run_from, coalesce(s.last_commit, s.run_from)))
           END AS work_lost_s,
           CASE WHEN s.outcome IN ('interrupted', 'lost') AND s.next_started IS NOT NULL
                THEN max(0, s.next_started - s.finish)
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

-- api_last_seen --
-- When an API process last reached the store.
SELECT last_seen FROM api_liveness WHERE id = 1;

-- newest_running_heartbeat --
-- The newest heartbeat of a running job: the last sign of life on the first start on this
-- database (or after an upgrade).
SELECT max(heartbeat) FROM jobs WHERE status = 'running';

-- extend_leases_after_outage --
-- Nobody could hear heartbeats since :last_seen: a job whose lease was still good then gets a
-- full lease from :now, plus :grace, to beat again.
UPDATE jobs SET lease_expires = max(lease_expires,
    :now + 2 * heartbeat_interval + :grace)
WHERE status = 'running' AND lease_expires > :last_seen;

-- note_api_alive --
-- An API process reached the store at :now.
INSERT INTO api_liveness (id, last_seen) VALUES (1, :now)
ON CONFLICT (id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen);

-- insert_reallocation --
-- The machine :machine_id handed to the fleet provider for replacement for the user
-- :user_id at :now, at most once; a row if this is the first time.
INSERT INTO machine_reallocations (user_id, machine_id, at)
VALUES (:user_id, :machine_id, :now) ON CONFLICT DO NOTHING RETURNING 1;

-- last_blocked_job --
-- Where the machine :machine_id was last blocked from a job of the user :user_id.
SELECT j.container_group_id, j.org_name, j.project_name
FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
WHERE b.machine_id = :machine_id AND j.user_id = :user_id
ORDER BY b.blocked_at DESC LIMIT 1;

-- claim_webhook_events --
-- Due webhook events, a fair share of each receiver, leased until :until under :token (:now
-- the time, at most :limit): a walk over the distinct receivers with pending events (one index
-- probe each), then, per receiver, its soonest due events one index step at a time, up to its
-- allowance (:allowances, a JSON object of receiver to allowance, or :per_receiver); the batch
-- takes every receiver's first event before any one's second.
WITH RECURSIVE receivers(receiver) AS (
    SELECT min(receiver) FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL
    UNION ALL
    SELECT (SELECT min(o.receiver) FROM webhook_outbox AS o
            WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.receiver > r.receiver)
    FROM receivers AS r WHERE r.receiver IS NOT NULL
),
allowed(receiver, allowance) AS (
    SELECT r.receiver, coalesce(
        (SELECT a.value FROM json_each(:allowances) AS a WHERE a.key = r.receiver), :per_receiver)
    FROM receivers AS r WHERE r.receiver IS NOT NULL
),
picked(receiver, allowance, id, next_attempt_at, rank) AS (
    SELECT a.receiver, a.allowance, o.id, o.next_attempt_at, 1
    FROM allowed AS a JOIN webhook_outbox AS o ON o.id = (
        SELECT d.id FROM webhook_outbox AS d
        WHERE d.receiver = a.receiver AND d.delivered_at IS NULL AND d.dead_at IS NULL
          AND d.next_attempt_at <= :now AND (d.leased_until IS NULL OR d.leased_until <= :now)
        ORDER BY d.next_attempt_at, d.id LIMIT 1)
    WHERE a.allowance > 0
    UNION ALL
    SELECT p.receiver, p.allowance, o.id, o.next_attempt_at, p.rank + 1
    FROM picked AS p JOIN webhook_outbox AS o ON o.id = (
        SELECT d.id FROM webhook_outbox AS d
        WHERE d.receiver = p.receiver AND d.delivered_at IS NULL AND d.dead_at IS NULL
          AND d.next_attempt_at <= :now AND (d.leased_until IS NULL OR d.leased_until <= :now)
          AND (d.next_attempt_at, d.id) > (p.next_attempt_at, p.id)
        ORDER BY d.next_attempt_at, d.id LIMIT 1)
    WHERE p.rank < p.allowance
)
UPDATE webhook_outbox SET leased_until = :until, lease_token = :token
WHERE id IN (SELECT id FROM picked ORDER BY rank, next_attempt_at, id LIMIT :limit)
RETURNING id, user_id, url, payload, attempts, created, receiver;

-- webhook_delivered --
-- The event :id delivered at :now, written only while its claim (:token) holds the lease.
UPDATE webhook_outbox SET delivered_at = :now, attempts = attempts + 1,
    leased_until = NULL, lease_token = NULL
WHERE id = :id AND lease_token = :token AND leased_until IS NOT NULL;

-- webhook_retry_later --
-- The event :id failed with :error at :now, to be tried again :delay seconds later; written
-- only while its claim (:token) holds the lease.
UPDATE webhook_outbox SET next_attempt_at = :now + :delay, last_error = :error,
    attempts = attempts + 1,
    leased_until = NULL, lease_token = NULL
WHERE id = :id AND lease_token = :token AND leased_until IS NOT NULL;

-- webhook_give_up --
-- The event :id given up at :now after :error; written only while its claim (:token) holds
-- the lease.
UPDATE webhook_outbox SET dead_at = :now, last_error = :error, attempts = attempts + 1,
    leased_until = NULL, lease_token = NULL
WHERE id = :id AND lease_token = :token AND leased_until IS NOT NULL;

-- webhook_postpone --
-- The event :id released unsent, due :delay seconds after :now (no attempt counted); only
-- while its claim (:token) holds the lease.
UPDATE webhook_outbox SET next_attempt_at = :now + :delay,
    leased_until = NULL, lease_token = NULL
WHERE id = :id AND lease_token = :token AND leased_until IS NOT NULL;

-- postpone_receiver_webhooks --
-- The receiver's (:receiver) pending events not leased at :now, due no sooner than :until.
UPDATE webhook_outbox SET next_attempt_at = :until
WHERE receiver = :receiver AND delivered_at IS NULL AND dead_at IS NULL
  AND next_attempt_at < :until
  AND (leased_until IS NULL OR leased_until <= :now);

-- purge_finished_webhooks --
-- The events delivered or given up before ?.
DELETE FROM webhook_outbox WHERE coalesce(delivered_at, dead_at) < ?;

-- pending_webhook_count --
-- How many events are neither delivered nor given up.
SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL;

-- create_scaling_rule --
-- A new scaling rule (? user id, ? container group, ? min_replicas, ? max_replicas,
-- ? idle_threshold_seconds, ? created, ? updated, ? org name, ? project name).
INSERT INTO scaling_rules (user_id, container_group_id, min_replicas, max_replicas,
                           idle_threshold_seconds, created, updated, org_name, project_name)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
RETURNING user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
          created, updated, org_name, project_name;

-- list_scaling_rules --
-- The scaling rules :user_id (NULL: anyone) may see, oldest first.
SELECT user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
       created, updated, org_name, project_name
FROM scaling_rules WHERE (:user_id IS NULL OR user_id = :user_id)
ORDER BY created, user_id, container_group_id;

-- get_scaling_rule --
-- The oldest scaling rule of the group :group that :user_id (NULL: anyone) may see.
SELECT user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
       created, updated, org_name, project_name
FROM scaling_rules
WHERE container_group_id = :group AND (:user_id IS NULL OR user_id = :user_id)
ORDER BY created, user_id LIMIT 1;

-- update_scaling_rule --
-- The group's (:group) scaling rules that :user_id (NULL: anyone) may see, with the values
-- given (:min, :max, :idle; NULL keeps one), updated at :now, unless min would exceed max.
UPDATE scaling_rules SET
    min_replicas = coalesce(:min, min_replicas),
    max_replicas = coalesce(:max, max_replicas),
    idle_threshold_seconds = coalesce(:idle, idle_threshold_seconds),
    updated = :now
WHERE container_group_id = :group AND (:user_id IS NULL OR user_id = :user_id)
  AND coalesce(:min, min_replicas) <= coalesce(:max, max_replicas)
RETURNING user_id, container_group_id, min_replicas, max_replicas, idle_threshold_seconds,
          created, updated, org_name, project_name;

-- scaling_rule_exists --
-- A row if the group :group has a scaling rule :user_id (NULL: anyone) may see.
SELECT 1 FROM scaling_rules
WHERE container_group_id = :group AND (:user_id IS NULL OR user_id = :user_id);

-- delete_scaling_rule --
-- The group's (:group) scaling rules that :user_id (NULL: anyone) may see; a row each.
DELETE FROM scaling_rules
WHERE container_group_id = :group AND (:user_id IS NULL OR user_id = :user_id) RETURNING 1;

-- delete_all_scaling_rules --
-- Every scaling rule.
DELETE FROM scaling_rules;

-- count_active_jobs --
-- How many of the user's (:user_id) jobs of the group (:group) are pending or running, or
-- ended at or after :since.
SELECT count(*) FROM jobs WHERE user_id = :user_id AND container_group_id = :group
  AND (status IN ('pending', 'running')
       OR coalesce(completed, failed, canceled) >= :since);

-- try_lease --
-- The lease :name taken (or kept) by :holder until :until, if it expired by :now or is
-- already theirs; a row if so.
INSERT INTO leases (name, holder, expires_at)
VALUES (:name, :holder, :until)
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE leases.expires_at <= :now OR leases.holder = excluded.holder
RETURNING holder;

-- metrics --
-- Every figure /metrics reads, in one statement so that they come from one snapshot. Jobs are
-- counted from the jobs_by_group_status index alone.
SELECT 'jobs' AS kind, container_group_id AS name, status AS detail, count(*) AS n, NULL AS at
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
-- Jobs by container group and status, every group's and every user's (an admin's view).
-- This and the three group_counts_* below are one count under each combination of filters,
-- written out whole so that each is planned on the index that fits it (a parameter that may
-- be NULL, `(:user_id IS NULL OR ...)`, would scan every job).
SELECT container_group_id, status, count(*) FROM jobs
GROUP BY container_group_id, status ORDER BY container_group_id;

-- group_counts_of_user --
-- Jobs by container group and status, of the user :user_id.
SELECT container_group_id, status, count(*) FROM jobs
WHERE jobs.user_id = :user_id
GROUP BY container_group_id, status ORDER BY container_group_id;

-- group_counts_of_group --
-- Jobs by status in the group :container_group_id, every user's.
SELECT container_group_id, status, count(*) FROM jobs
WHERE jobs.container_group_id = :container_group_id
GROUP BY container_group_id, status ORDER BY container_group_id;

-- group_counts_of_user_in_group --
-- Jobs by status in the group :container_group_id, of the user :user_id.
SELECT container_group_id, status, count(*) FROM jobs
WHERE jobs.user_id = :user_id AND jobs.container_group_id = :container_group_id
GROUP BY container_group_id, status ORDER BY container_group_id;

-- blocked_machines --
-- The machines blocked from jobs of the group :container_group_id, every user's, most
-- recently blocked first, at most :limit: how many jobs, when last, whether it was handed
-- over for replacement. (blocked_machines_of_user is the same for one user's jobs, written
-- out so that it is found through jobs_by_user_group.)
SELECT b.machine_id, count(*) AS jobs, max(b.blocked_at) AS last_blocked,
       max(EXISTS (SELECT 1 FROM machine_reallocations AS r
                  WHERE r.machine_id = b.machine_id AND r.user_id = j.user_id))
  FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
 WHERE j.container_group_id = :container_group_id
 GROUP BY b.machine_id
 ORDER BY last_blocked DESC, b.machine_id
 LIMIT :limit;

-- blocked_machines_of_user --
-- As blocked_machines, for the jobs of the user :user_id in the group.
SELECT b.machine_id, count(*) AS jobs, max(b.blocked_at) AS last_blocked,
       max(EXISTS (SELECT 1 FROM machine_reallocations AS r
                  WHERE r.machine_id = b.machine_id AND r.user_id = j.user_id))
  FROM job_blocks AS b JOIN jobs AS j ON j.id = b.job_id
 WHERE j.user_id = :user_id AND j.container_group_id = :container_group_id
 GROUP BY b.machine_id
 ORDER BY last_blocked DESC, b.machine_id
 LIMIT :limit;

-- group_activity --
-- Counts behind a group's activity chart (see kelpie.store.overview.activity_series): the
-- group's (:container_group_id, every user's) jobs and attempts that overlap the window
-- [:since, :until), alive before it, and created, started and ended in each bucket of :width
-- seconds. (group_activity_of_user is the same for one user's jobs, written out so that they
-- are found through jobs_by_user_group.)
WITH g AS (
    SELECT id, created, coalesce(completed, failed, canceled) AS ended FROM jobs
     WHERE jobs.container_group_id = :container_group_id AND created < :until
       AND (coalesce(completed, failed, canceled) IS NULL
            OR coalesce(completed, failed, canceled) >= :since)
), a AS (
    SELECT attempts.started, attempts.ended, attempts.outcome
      FROM attempts JOIN g ON g.id = attempts.job_id
     WHERE attempts.started < :until AND (attempts.ended IS NULL OR attempts.ended >= :since)
)
SELECT 'alive' AS kind, -1 AS bucket, count(*) AS n FROM g WHERE created < :since
UNION ALL
SELECT 'created', CAST((created - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM g WHERE created >= :since GROUP BY bucket
UNION ALL
SELECT 'ended', CAST((ended - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM g WHERE ended < :until GROUP BY bucket
UNION ALL
SELECT 'held', -1, count(*) FROM a WHERE started < :since
UNION ALL
SELECT 'started', CAST((started - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM a WHERE started >= :since GROUP BY bucket
UNION ALL
SELECT 'ended:' || outcome, CAST((ended - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM a WHERE ended < :until GROUP BY outcome, bucket;

-- group_activity_of_user --
-- As group_activity, for the jobs of the user :user_id in the group.
WITH g AS (
    SELECT id, created, coalesce(completed, failed, canceled) AS ended FROM jobs
     WHERE jobs.user_id = :user_id AND jobs.container_group_id = :container_group_id
       AND created < :until
       AND (coalesce(completed, failed, canceled) IS NULL
            OR coalesce(completed, failed, canceled) >= :since)
), a AS (
    SELECT attempts.started, attempts.ended, attempts.outcome
      FROM attempts JOIN g ON g.id = attempts.job_id
     WHERE attempts.started < :until AND (attempts.ended IS NULL OR attempts.ended >= :since)
)
SELECT 'alive' AS kind, -1 AS bucket, count(*) AS n FROM g WHERE created < :since
UNION ALL
SELECT 'created', CAST((created - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM g WHERE created >= :since GROUP BY bucket
UNION ALL
SELECT 'ended', CAST((ended - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM g WHERE ended < :until GROUP BY bucket
UNION ALL
SELECT 'held', -1, count(*) FROM a WHERE started < :since
UNION ALL
SELECT 'started', CAST((started - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM a WHERE started >= :since GROUP BY bucket
UNION ALL
SELECT 'ended:' || outcome, CAST((ended - :since) / :width AS INTEGER) AS bucket, count(*)
  FROM a WHERE ended < :until GROUP BY outcome, bucket;

-- data_version --
-- A number that changes when another connection commits (shared memory, no I/O).
PRAGMA data_version;

-- newest_job_seq --
-- The newest job's seq, where the watcher starts.
SELECT coalesce(max(seq), 0) FROM jobs;

-- jobs_added_since --
-- The jobs added after seq ?, in order.
SELECT seq, container_group_id, status FROM jobs WHERE seq > ? ORDER BY seq;

-- create_schema_migrations --
-- The table of the migrations applied, made before the first. (The migrations' own
-- statements are in kelpie/store/migrations/sqlite.)
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
);

-- applied_migrations --
-- The versions of the migrations applied.
SELECT version FROM schema_migrations;

-- record_migration --
-- A migration (? version) applied at ?.
INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?);

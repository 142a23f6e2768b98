-- Every SQL statement of the SQLite store, by name (see kelpie/store/queries/__init__.py).
--
-- Parameters are SQLite's: `?` in order, or `:name` from a mapping. Times are REAL unix epoch
-- seconds (UTC). Statements the store runs in its write connection see one `BEGIN IMMEDIATE`
-- transaction and their own savepoint (kelpie.store._group_commit), which runs its own
-- transaction control statements. The statements come in the order of the store's methods:
-- users and keys, jobs (user side), a job's history, jobs (worker side), workers,
-- checkpoints, goodput, webhooks, operator views, the new-jobs watch, schema migrations.
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

-- count_commit --
-- A committed generation counted on its attempt (:attempt_id) at :now, with its upload's
-- seconds :s (NULL when not timed); the goodput ledger reads it there.
UPDATE attempts SET commits = commits + 1, first_commit = coalesce(first_commit, :now),
    last_commit = :now, commit_seconds = commit_seconds + coalesce(:s, 0),
    timed_commits = timed_commits + (:s IS NOT NULL)
WHERE id = :attempt_id;

-- job_goodput --
-- The goodput ledger (kelpie.store.goodput.LEDGER, with SQLite's max/min for greatest/least)
-- over `facts`: the attempts chosen, in unix seconds, as the ledger needs them.
-- One ledger row per attempt of the job :job_id (if :user_id, NULL for anyone, may see it),
-- oldest first; :now ends the running attempt (goodput.ATTEMPT_ROWS).
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
-- The sums behind a group report, one row (goodput.REPORT_SUMS): the attempts of :group's jobs
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

-- label_count --
-- Jobs carrying a label (? key, ? value), counted up to a cap (? the cap): an index range,
-- cheap, and bounded.
SELECT count(*) FROM (SELECT 1 FROM job_labels WHERE key = ? AND value = ? LIMIT ?);

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

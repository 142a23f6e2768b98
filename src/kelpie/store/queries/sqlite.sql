-- Every SQL statement of the SQLite store, by name (see kelpie/store/queries/__init__.py).
--
-- Parameters are SQLite's: `?` in order, or `:name` from a mapping. Times are REAL unix epoch
-- seconds (UTC). Statements the store runs in its write connection see one `BEGIN IMMEDIATE`
-- transaction and their own savepoint (kelpie.store._group_commit), which runs its own
-- transaction control statements.

-- ============================================================================================
-- Jobs, worker side
-- ============================================================================================

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

-- ============================================================================================
-- Workers
-- ============================================================================================

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

-- ============================================================================================
-- Checkpoints
-- ============================================================================================

-- count_commit --
-- A committed generation counted on its attempt (:attempt_id) at :now, with its upload's
-- seconds :s (NULL when not timed); the goodput ledger reads it there.
UPDATE attempts SET commits = commits + 1, first_commit = coalesce(first_commit, :now),
    last_commit = :now, commit_seconds = commit_seconds + coalesce(:s, 0),
    timed_commits = timed_commits + (:s IS NOT NULL)
WHERE id = :attempt_id;

-- ============================================================================================
-- Goodput
-- ============================================================================================
-- The goodput ledger (kelpie.store.goodput.LEDGER, with SQLite's max/min for greatest/least)
-- over `facts`: the attempts chosen, in unix seconds, as the ledger needs them.

-- job_goodput --
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

-- ============================================================================================
-- Webhook outbox
-- ============================================================================================

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

-- ============================================================================================
-- Operator views: the dashboard and /metrics (read-only)
-- ============================================================================================

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

-- ============================================================================================
-- Label filters of list_jobs
-- ============================================================================================

-- label_count --
-- Jobs carrying a label (? key, ? value), counted up to a cap (? the cap): an index range,
-- cheap, and bounded.
SELECT count(*) FROM (SELECT 1 FROM job_labels WHERE key = ? AND value = ? LIMIT ?);

-- ============================================================================================
-- Schema migrations (the migrations' own statements are in kelpie/store/migrations/sqlite)
-- ============================================================================================

-- create_schema_migrations --
-- The table of the migrations applied, made before the first.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
);

-- Scheduling and goodput: job names and labels, interruption budgets, idempotent
-- submissions, and where each attempt's time went.

-- A job's name; how many interruptions it may have (NULL: any number) and has had.
ALTER TABLE jobs ADD COLUMN name TEXT;
ALTER TABLE jobs ADD COLUMN max_interruptions INTEGER;
ALTER TABLE jobs ADD COLUMN num_interruptions INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET num_interruptions = (
    SELECT count(*) FROM attempts
    WHERE attempts.job_id = jobs.id AND attempts.outcome IN ('interrupted', 'lost'));
-- list_jobs by name
CREATE INDEX jobs_by_name ON jobs (name, created) WHERE name IS NOT NULL;
-- running jobs with an interruption budget, by lease: those stalled at their last allowed
-- interruption are failed instead of being handed out again
CREATE INDEX jobs_running_with_budget ON jobs (lease_expires)
    WHERE status = 'running' AND max_interruptions IS NOT NULL;

-- A job's labels (also kept in its spec), for list_jobs filters.
CREATE TABLE job_labels (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (key, value, job_id)
) WITHOUT ROWID;
CREATE INDEX job_labels_by_job ON job_labels (job_id);

-- Where an attempt's time went, kept on the attempt as it happens so that a report over a
-- group's attempts reads one row each: the holder's last heartbeat (kept when the attempt is
-- lost), when its command started (the worker's `started` event), how long its final
-- uploads took (`outputs_uploaded` events), when the job's next attempt started, and the
-- checkpoint generations it committed (how many, the first and last, and the seconds of
-- those whose cost the worker reported, and how many did).
ALTER TABLE attempts ADD COLUMN last_heartbeat REAL;
ALTER TABLE attempts ADD COLUMN command_started REAL;
ALTER TABLE attempts ADD COLUMN upload_seconds REAL;
ALTER TABLE attempts ADD COLUMN next_started REAL;
ALTER TABLE attempts ADD COLUMN commits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN first_commit REAL;
ALTER TABLE attempts ADD COLUMN last_commit REAL;
ALTER TABLE attempts ADD COLUMN commit_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN timed_commits INTEGER NOT NULL DEFAULT 0;
UPDATE attempts SET
    command_started = (
        SELECT min(e.created) FROM job_events AS e
        WHERE e.job_id = attempts.job_id AND e.attempt_id = attempts.id AND e.kind = 'started'),
    next_started = (
        SELECT min(n.started) FROM attempts AS n
        WHERE n.job_id = attempts.job_id AND n.id > attempts.id),
    (commits, first_commit, last_commit) = (
        SELECT count(*), min(c.created), max(c.created) FROM checkpoints AS c
        WHERE c.job_id = attempts.job_id AND c.attempt_id = attempts.id);
-- How long a generation took from its files being complete to its commit (its cost).
ALTER TABLE checkpoints ADD COLUMN upload_seconds REAL;

-- A claim that takes over a stalled running job keeps the previous holder's last heartbeat on
-- its (lost) attempt: the moment its work really ended.
CREATE TRIGGER jobs_taken_over AFTER UPDATE OF machine_id ON jobs
WHEN OLD.status = 'running' AND NEW.status = 'running'
BEGIN
    UPDATE attempts SET last_heartbeat = OLD.heartbeat WHERE id = OLD.attempt_id;
END;
-- A claim's new attempt tells the job's previous one when the job ran again.
CREATE TRIGGER jobs_attempt_followed AFTER UPDATE OF attempt_id ON jobs
WHEN OLD.attempt_id IS NOT NULL AND NEW.attempt_id IS NOT OLD.attempt_id
BEGIN
    -- the claim stamps the job's heartbeat with the new attempt's start, in the statement
    -- that also draws its id (the attempt row is written just after)
    UPDATE attempts SET next_started = NEW.heartbeat WHERE id = OLD.attempt_id;
END;

-- Idempotency keys of submissions, per user: a repeat with the same key and request within
-- 24 hours answers the jobs it created. job_ids: JSON array, in submission order.
CREATE TABLE idempotency_keys (
    user_id     TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    job_ids     TEXT NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created);

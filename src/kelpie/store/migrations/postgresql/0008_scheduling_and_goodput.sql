-- Scheduling and goodput: job names and labels, interruption budgets, idempotent
-- submissions, and where each attempt's time went.

-- A job's name; how many interruptions it may have (NULL: any number) and has had.
ALTER TABLE jobs ADD COLUMN name text;
ALTER TABLE jobs ADD COLUMN max_interruptions integer;
ALTER TABLE jobs ADD COLUMN num_interruptions integer NOT NULL DEFAULT 0;
UPDATE jobs SET num_interruptions = counted.n
FROM (SELECT job_id, count(*) AS n FROM attempts
      WHERE outcome IN ('interrupted', 'lost') GROUP BY job_id) AS counted
WHERE jobs.id = counted.job_id;
-- list_jobs by name
CREATE INDEX jobs_by_name ON jobs (name, created, seq) WHERE name IS NOT NULL;
-- running jobs with an interruption budget, by lease: those stalled at their last allowed
-- interruption are failed instead of being handed out again
CREATE INDEX jobs_running_with_budget ON jobs (lease_expires)
    WHERE status = 'running' AND max_interruptions IS NOT NULL;

-- A job's labels (also kept in its spec), for list_jobs filters.
CREATE TABLE job_labels (
    job_id text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key    text NOT NULL,
    value  text NOT NULL,
    PRIMARY KEY (key, value, job_id)
);
CREATE INDEX job_labels_by_job ON job_labels (job_id);

-- Where an attempt's time went, kept on the attempt as it happens so that a report over a
-- group's attempts reads one row each: the holder's last heartbeat (kept when the attempt is
-- lost), when its command started (the worker's `started` event), how long its final
-- uploads took (`outputs_uploaded` events), when the job's next attempt started, and the
-- checkpoint generations it committed (how many, the first and last, and the seconds of
-- those whose cost the worker reported, and how many did).
ALTER TABLE attempts ADD COLUMN last_heartbeat timestamptz;
ALTER TABLE attempts ADD COLUMN command_started timestamptz;
ALTER TABLE attempts ADD COLUMN upload_seconds double precision;
ALTER TABLE attempts ADD COLUMN next_started timestamptz;
ALTER TABLE attempts ADD COLUMN commits integer NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN first_commit timestamptz;
ALTER TABLE attempts ADD COLUMN last_commit timestamptz;
ALTER TABLE attempts ADD COLUMN commit_seconds double precision NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN timed_commits integer NOT NULL DEFAULT 0;
UPDATE attempts SET command_started = started_event.at
FROM (SELECT attempt_id, min(created) AS at FROM job_events
      WHERE kind = 'started' AND attempt_id IS NOT NULL GROUP BY attempt_id) AS started_event
WHERE attempts.id = started_event.attempt_id;
UPDATE attempts SET next_started = following.started
FROM (SELECT id, lead(started) OVER (PARTITION BY job_id ORDER BY id) AS started
      FROM attempts) AS following
WHERE attempts.id = following.id AND following.started IS NOT NULL;
UPDATE attempts SET commits = committed.n, first_commit = committed.first,
    last_commit = committed.last
FROM (SELECT attempt_id, count(*) AS n, min(created) AS first, max(created) AS last
      FROM checkpoints GROUP BY attempt_id) AS committed
WHERE attempts.id = committed.attempt_id;
-- How long a generation took from its files being complete to its commit (its cost).
ALTER TABLE checkpoints ADD COLUMN upload_seconds double precision;

-- A claim that takes over a stalled running job keeps the previous holder's last heartbeat on
-- its (lost) attempt: the moment its work really ended.
CREATE FUNCTION kelpie_keep_last_heartbeat() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE attempts SET last_heartbeat = OLD.heartbeat WHERE id = OLD.attempt_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_taken_over AFTER UPDATE OF machine_id ON jobs
FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status = 'running')
EXECUTE FUNCTION kelpie_keep_last_heartbeat();
-- A claim's new attempt tells the job's previous one when the job ran again.
CREATE FUNCTION kelpie_note_next_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE attempts SET next_started = (SELECT started FROM attempts WHERE id = NEW.attempt_id)
    WHERE id = OLD.attempt_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_attempt_followed AFTER UPDATE OF attempt_id ON jobs
FOR EACH ROW WHEN (OLD.attempt_id IS NOT NULL AND NEW.attempt_id IS DISTINCT FROM OLD.attempt_id)
EXECUTE FUNCTION kelpie_note_next_attempt();

-- Idempotency keys of submissions, per user: a repeat with the same key and request within
-- 24 hours answers the jobs it created, in submission order.
CREATE TABLE idempotency_keys (
    user_id     text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    status_code integer NOT NULL,
    job_ids     text[] NOT NULL,
    created     timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created);

-- Observability: where a job's logs go, the progress a job reports and stall detection, and
-- the machines seen asking for work.

-- Where the worker uploads each attempt's logs (s3://bucket/prefix; NULL: next to the job's
-- output prefix).
ALTER TABLE jobs ADD COLUMN logs_prefix TEXT;
-- A running job whose progress has not changed for stall_timeout seconds is stopped.
-- progress: the JSON object the job last wrote (kept across attempts); progress_updated_at:
-- when it last changed; stall_deadline: when the running attempt stalls (its claim, or its
-- last progress change, plus stall_timeout).
ALTER TABLE jobs ADD COLUMN stall_timeout INTEGER;
ALTER TABLE jobs ADD COLUMN progress TEXT;
ALTER TABLE jobs ADD COLUMN progress_updated_at REAL;
ALTER TABLE jobs ADD COLUMN stall_deadline REAL;
CREATE INDEX jobs_running_by_stall_deadline ON jobs (stall_deadline)
    WHERE status = 'running' AND stall_deadline IS NOT NULL;

-- Machines seen asking for work (polls) or holding a job (heartbeats), per user of the key
-- they use and container group. any_user: the key is an admin's (it may take anyone's jobs).
CREATE TABLE workers (
    user_id            TEXT NOT NULL,
    container_group_id TEXT NOT NULL,
    machine_id         TEXT NOT NULL,
    any_user           INTEGER NOT NULL DEFAULT 0 CHECK (any_user IN (0, 1)),
    version            TEXT,
    first_seen         REAL NOT NULL,
    last_poll          REAL,
    last_seen          REAL NOT NULL,
    PRIMARY KEY (container_group_id, machine_id, user_id)
) WITHOUT ROWID;
CREATE INDEX workers_by_user ON workers (user_id, container_group_id);
CREATE INDEX workers_by_last_seen ON workers (last_seen);

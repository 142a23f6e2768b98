-- Observability: where a job's logs go, the progress a job reports and stall detection, and
-- the machines seen asking for work.

-- Where the worker uploads each attempt's logs (s3://bucket/prefix; NULL: next to the job's
-- output prefix).
ALTER TABLE jobs ADD COLUMN logs_prefix text;
-- A running job whose progress has not changed for stall_timeout seconds is stopped.
-- progress: the JSON object the job last wrote (kept across attempts); progress_updated_at:
-- when it last changed; stall_deadline: when the running attempt stalls (its claim, or its
-- last progress change, plus stall_timeout).
ALTER TABLE jobs ADD COLUMN stall_timeout integer;
ALTER TABLE jobs ADD COLUMN progress jsonb;
ALTER TABLE jobs ADD COLUMN progress_updated_at timestamptz;
ALTER TABLE jobs ADD COLUMN stall_deadline timestamptz;
CREATE INDEX jobs_running_by_stall_deadline ON jobs (stall_deadline)
    WHERE status = 'running' AND stall_deadline IS NOT NULL;

-- Machines seen asking for work (polls) or holding a job (heartbeats), per user of the key
-- they use and container group. any_user: the key is an admin's (it may take anyone's jobs).
CREATE TABLE workers (
    user_id            text NOT NULL,
    container_group_id text NOT NULL,
    machine_id         text NOT NULL,
    any_user           boolean NOT NULL DEFAULT false,
    version            text,
    first_seen         timestamptz NOT NULL,
    last_poll          timestamptz,
    last_seen          timestamptz NOT NULL,
    PRIMARY KEY (container_group_id, machine_id, user_id)
);
CREATE INDEX workers_by_user ON workers (user_id, container_group_id);
CREATE INDEX workers_by_last_seen ON workers (last_seen);

-- Snapshot of the kelpie schema after migration 0009 (postgresql). Not applied by kelpie:
-- the migrations are. tests/integration/test_migrations.py proves both agree.

-- Applied migrations, written by the migration runner.
CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL
);

CREATE TABLE users (
    id             text PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    created        timestamptz NOT NULL,
    is_admin       boolean NOT NULL DEFAULT false,
    webhook_secret text NOT NULL,
    webhook_token  text NOT NULL
);

-- Keys are stored only as hashes. `bootstrap`: the key came from KELPIE_ADMIN_KEY (a start
-- with another admin key revokes it).
CREATE TABLE api_keys (
    key_hash     text NOT NULL UNIQUE,
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    org_name     text,
    project_name text,
    created      timestamptz NOT NULL,
    revoked      boolean NOT NULL DEFAULT false,
    id           text PRIMARY KEY,
    bootstrap    boolean NOT NULL DEFAULT false
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- Jobs outlive their user (they stay until purged): no foreign key on user_id.
-- seq orders jobs created at the same instant, one batch, as submitted.
CREATE TABLE jobs (
    id                 text PRIMARY KEY,
    seq                bigint NOT NULL GENERATED ALWAYS AS IDENTITY,
    user_id            text NOT NULL,
    status             text NOT NULL
                       CHECK (status IN ('pending', 'running', 'completed', 'canceled', 'failed')),
    container_group_id text NOT NULL,
    created            timestamptz NOT NULL,
    started            timestamptz,
    completed          timestamptz,
    canceled           timestamptz,
    failed             timestamptz,
    heartbeat          timestamptz,
    lease_expires      timestamptz,
    num_failures       integer NOT NULL DEFAULT 0,
    num_heartbeats     integer NOT NULL DEFAULT 0,
    machine_id         text,
    last_exit_code     integer,
    last_error         text,
    max_failures       integer NOT NULL CHECK (max_failures >= 1),
    heartbeat_interval integer NOT NULL CHECK (heartbeat_interval >= 1),
    webhook            text,
    spec               jsonb NOT NULL,
    org_name           text,
    project_name       text,
    attempt_id         bigint,               -- the running attempt (attempts.id): its fencing token
    checkpoint_generation bigint,            -- newest committed checkpoint generation
    checkpoint_keep    integer NOT NULL DEFAULT 3,
    priority           integer NOT NULL DEFAULT 0,  -- higher is claimed first within a group
    name               text,
    max_interruptions  integer,              -- NULL: any number of interruptions
    num_interruptions  integer NOT NULL DEFAULT 0,
    logs_prefix        text,                 -- s3://bucket/prefix of its logs; NULL: default
    stall_timeout      integer,              -- seconds without progress before it is stopped
    progress           jsonb,                -- JSON object the job last wrote
    progress_updated_at timestamptz,         -- when progress last changed
    stall_deadline     timestamptz           -- when the running attempt stalls
);
-- claim_job: a group's pending jobs in claim order (highest priority, then oldest), and its
-- stalled running jobs
-- (lease_expires: heartbeat + 2 x heartbeat_interval, kept while running)
CREATE INDEX jobs_pending_by_group ON jobs (container_group_id, priority DESC, created, seq)
    WHERE status = 'pending';
CREATE INDEX jobs_running_by_group ON jobs (container_group_id, lease_expires)
    WHERE status = 'running';
-- list_jobs pages, count_active_jobs, purge_group
CREATE INDEX jobs_by_user ON jobs (user_id, created, seq);
CREATE INDEX jobs_by_user_status ON jobs (user_id, status, created, seq);
CREATE INDEX jobs_by_user_group ON jobs (user_id, container_group_id, created, seq);
CREATE INDEX jobs_by_created ON jobs (created, seq);
-- jobs counted by group and status (dashboard, /metrics), from the index alone
CREATE INDEX jobs_by_group_status ON jobs (container_group_id, status);
-- list_jobs by name
CREATE INDEX jobs_by_name ON jobs (name, created, seq) WHERE name IS NOT NULL;
-- running jobs with an interruption budget, by lease: those stalled at their last allowed
-- interruption are failed instead of being handed out again
CREATE INDEX jobs_running_with_budget ON jobs (lease_expires)
    WHERE status = 'running' AND max_interruptions IS NOT NULL;
-- running jobs with a stall_timeout, by when they stall
CREATE INDEX jobs_running_by_stall_deadline ON jobs (stall_deadline)
    WHERE status = 'running' AND stall_deadline IS NOT NULL;

-- A job's labels (also kept in its spec), for list_jobs filters.
CREATE TABLE job_labels (
    job_id text not null references jobs (id) on delete cascade,
    key    text not null,
    value  text not null,
    PRIMARY KEY (key, value, job_id)
);
CREATE INDEX job_labels_by_job ON job_labels (job_id);

-- Every hold of a job by a machine; at most one 'running' attempt per job.
CREATE TABLE attempts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    machine_id text NOT NULL,
    started    timestamptz NOT NULL,
    ended      timestamptz,
    outcome    text NOT NULL
               CHECK (outcome IN ('running', 'completed', 'failed', 'interrupted', 'canceled', 'lost')),
    exit_code  integer,
    last_heartbeat  timestamptz,          -- the holder's last heartbeat, kept when lost
    command_started timestamptz,          -- the worker's `started` event
    upload_seconds  double precision,     -- final uploads (`outputs_uploaded` events)
    next_started    timestamptz,          -- when the job's next attempt started
    commits         integer NOT NULL DEFAULT 0,           -- checkpoint generations it committed,
    first_commit    timestamptz,                          -- the first and the last,
    last_commit     timestamptz,
    commit_seconds  double precision NOT NULL DEFAULT 0,  -- and the upload seconds reported,
    timed_commits   integer NOT NULL DEFAULT 0            -- by this many of them
);
CREATE INDEX attempts_by_job ON attempts (job_id);

-- A machine that failed a job never receives it again.
CREATE TABLE job_blocks (
    job_id     text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    machine_id text NOT NULL,
    blocked_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, machine_id)
);
CREATE INDEX job_blocks_by_machine ON job_blocks (machine_id, blocked_at);

-- Machines already handed to the fleet provider for replacement: at most once per tenant
-- (failures count per user and machine).
CREATE TABLE machine_reallocations (
    machine_id text NOT NULL,
    at         timestamptz NOT NULL,
    user_id    text NOT NULL,
    PRIMARY KEY (user_id, machine_id)
);

-- Durable webhook outbox, written in the transaction of the state change it reports.
CREATE TABLE webhook_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         text NOT NULL,
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    leased_until    timestamptz,
    delivered_at    timestamptz,
    dead_at         timestamptz,
    last_error      text,
    created         timestamptz NOT NULL,
    lease_token     text,       -- the current lease holder's claim
    -- scheme://host:port as written in the URL, lowercased: the unit of fair delivery
    receiver        text GENERATED ALWAYS AS (lower(
        CASE WHEN strpos(url, '://') = 0 THEN url
        ELSE substr(url, 1, strpos(url, '://') + 1 + strpos(
            replace(replace(substr(url, strpos(url, '://') + 3), '?', '/'), '#', '/') || '/', '/'))
        END)) STORED
);
-- Claims walk the receivers, then each one's events in due order.
CREATE INDEX webhook_outbox_receiver_due ON webhook_outbox (receiver, next_attempt_at, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;

-- Rules outlive their user, like jobs: no foreign key on user_id.
CREATE TABLE scaling_rules (
    user_id                text NOT NULL,
    container_group_id     text NOT NULL,
    min_replicas           integer NOT NULL CHECK (min_replicas >= 0),
    max_replicas           integer NOT NULL CHECK (max_replicas >= 0),
    idle_threshold_seconds integer NOT NULL CHECK (idle_threshold_seconds >= 0),
    created                timestamptz NOT NULL,
    updated                timestamptz NOT NULL,
    org_name               text,
    project_name           text,
    PRIMARY KEY (user_id, container_group_id)
);

-- Named leases for leader election of periodic tasks.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Committed checkpoint generations. The manifest lists the files (never their contents):
-- [[target, path, key, size, sha256], ...]; NULL once the generation is no longer kept.
CREATE TABLE checkpoints (
    job_id     text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    generation bigint NOT NULL,
    attempt_id bigint NOT NULL,
    machine_id text NOT NULL,
    created    timestamptz NOT NULL,
    files      integer NOT NULL,
    bytes      bigint NOT NULL,
    manifest   jsonb,
    upload_seconds double precision,  -- files complete to commit: the generation's cost
    PRIMARY KEY (job_id, generation)
);

-- What happened to a job, in order: written by the API with each state change, and by the
-- holding worker (downloads, restores, warnings).
CREATE TABLE job_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt_id bigint,
    machine_id text,
    kind       text NOT NULL,
    message    text NOT NULL,
    data       jsonb,
    created    timestamptz NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);

-- When any API process last reached the store. A gap means nobody could hear heartbeats:
-- the leases of jobs running then are extended instead of being counted as stalled.
CREATE TABLE api_liveness (
    id        integer PRIMARY KEY CHECK (id = 1),
    last_seen timestamptz NOT NULL
);

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

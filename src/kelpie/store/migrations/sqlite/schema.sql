-- Snapshot of the kelpie schema after migration 0009 (sqlite). Not applied by kelpie:
-- the migrations are. tests/integration/test_migrations.py proves both agree.

-- Applied migrations, written by the migration runner.
CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
);

-- Times are REAL unix epoch seconds (UTC), taken from the server process at each call.

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    created        REAL NOT NULL,
    is_admin       INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    webhook_secret TEXT NOT NULL,
    webhook_token  TEXT NOT NULL
);

-- Keys are stored only as hashes. `bootstrap`: the key came from KELPIE_ADMIN_KEY (a start
-- with another admin key revokes it).
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    org_name     TEXT,
    project_name TEXT,
    created      REAL NOT NULL,
    revoked      INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    bootstrap    INTEGER NOT NULL DEFAULT 0 CHECK (bootstrap IN (0, 1))
) WITHOUT ROWID;
CREATE INDEX api_keys_user ON api_keys (user_id);

-- Jobs outlive their user (they stay until purged): no foreign key on user_id.
-- seq (the rowid) orders jobs created at the same instant, one batch, as submitted; being
-- the rowid, it is the implicit last column of every index below.
CREATE TABLE jobs (
    seq                INTEGER PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    user_id            TEXT NOT NULL,
    status             TEXT NOT NULL
                       CHECK (status IN ('pending', 'running', 'completed', 'canceled', 'failed')),
    container_group_id TEXT NOT NULL,
    created            REAL NOT NULL,
    started            REAL,
    completed          REAL,
    canceled           REAL,
    failed             REAL,
    heartbeat          REAL,
    lease_expires      REAL,
    num_failures       INTEGER NOT NULL DEFAULT 0,
    num_heartbeats     INTEGER NOT NULL DEFAULT 0,
    machine_id         TEXT,
    last_exit_code     INTEGER,
    last_error         TEXT,
    max_failures       INTEGER NOT NULL CHECK (max_failures >= 1),
    heartbeat_interval INTEGER NOT NULL CHECK (heartbeat_interval >= 1),
    webhook            TEXT,
    spec               TEXT NOT NULL,
    org_name           TEXT,
    project_name       TEXT,
    attempt_id         INTEGER,               -- the running attempt (attempts.id): its fencing token
    checkpoint_generation INTEGER,            -- newest committed checkpoint generation
    checkpoint_keep    INTEGER NOT NULL DEFAULT 3,
    priority           INTEGER NOT NULL DEFAULT 0,  -- higher is claimed first within a group
    name               TEXT,
    max_interruptions  INTEGER,              -- NULL: any number of interruptions
    num_interruptions  INTEGER NOT NULL DEFAULT 0,
    logs_prefix        TEXT,                 -- s3://bucket/prefix of its logs; NULL: default
    stall_timeout      INTEGER,              -- seconds without progress before it is stopped
    progress           TEXT,                 -- JSON object the job last wrote
    progress_updated_at REAL,                -- when progress last changed
    stall_deadline     REAL                  -- when the running attempt stalls
);
-- claim_job: a group's pending jobs in claim order (highest priority, then oldest), and its
-- stalled running jobs
-- (lease_expires: heartbeat + 2 x heartbeat_interval, kept while running)
CREATE INDEX jobs_pending_by_group ON jobs (container_group_id, priority DESC, created)
    WHERE status = 'pending';
CREATE INDEX jobs_running_by_group ON jobs (container_group_id, lease_expires)
    WHERE status = 'running';
-- list_jobs pages, count_active_jobs, purge_group
CREATE INDEX jobs_by_user ON jobs (user_id, created);
CREATE INDEX jobs_by_user_status ON jobs (user_id, status, created);
CREATE INDEX jobs_by_user_group ON jobs (user_id, container_group_id, created);
CREATE INDEX jobs_by_created ON jobs (created);
-- jobs counted by group and status (dashboard, /metrics), from the index alone
CREATE INDEX jobs_by_group_status ON jobs (container_group_id, status);
-- list_jobs by name
CREATE INDEX jobs_by_name ON jobs (name, created) WHERE name IS NOT NULL;
-- running jobs with an interruption budget, by lease: those stalled at their last allowed
-- interruption are failed instead of being handed out again
CREATE INDEX jobs_running_with_budget ON jobs (lease_expires)
    WHERE status = 'running' AND max_interruptions IS NOT NULL;
-- running jobs with a stall_timeout, by when they stall
CREATE INDEX jobs_running_by_stall_deadline ON jobs (stall_deadline)
    WHERE status = 'running' AND stall_deadline IS NOT NULL;

-- A job's labels (also kept in its spec), for list_jobs filters.
CREATE TABLE job_labels (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (key, value, job_id)
) WITHOUT ROWID;
CREATE INDEX job_labels_by_job ON job_labels (job_id);

-- Every hold of a job by a machine; at most one 'running' attempt per job.
CREATE TABLE attempts (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    machine_id TEXT NOT NULL,
    started    REAL NOT NULL,
    ended      REAL,
    outcome    TEXT NOT NULL
               CHECK (outcome IN ('running', 'completed', 'failed', 'interrupted', 'canceled', 'lost')),
    exit_code  INTEGER,
    last_heartbeat  REAL,                 -- the holder's last heartbeat, kept when lost
    command_started REAL,                 -- the worker's `started` event
    upload_seconds  REAL,                 -- final uploads (`outputs_uploaded` events)
    next_started    REAL,                 -- when the job's next attempt started
    commits         INTEGER NOT NULL DEFAULT 0,   -- checkpoint generations it committed,
    first_commit    REAL,                         -- the first and the last,
    last_commit     REAL,
    commit_seconds  REAL NOT NULL DEFAULT 0,      -- and the upload seconds reported,
    timed_commits   INTEGER NOT NULL DEFAULT 0    -- by this many of them
);
CREATE INDEX attempts_by_job ON attempts (job_id);

-- A machine that failed a job never receives it again.
CREATE TABLE job_blocks (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    machine_id TEXT NOT NULL,
    blocked_at REAL NOT NULL,
    PRIMARY KEY (job_id, machine_id)
) WITHOUT ROWID;
CREATE INDEX job_blocks_by_machine ON job_blocks (machine_id, blocked_at);

-- Machines already handed to the fleet provider for replacement: at most once per tenant
-- (failures count per user and machine).
CREATE TABLE machine_reallocations (
    user_id    TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (user_id, machine_id)
) WITHOUT ROWID;

-- Durable webhook outbox, written in the transaction of the state change it reports.
-- AUTOINCREMENT: an id is never reused, receivers deduplicate on it.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    leased_until    REAL,
    delivered_at    REAL,
    dead_at         REAL,
    last_error      TEXT,
    created         REAL NOT NULL,
    lease_token     TEXT,       -- the current lease holder's claim
    -- scheme://host:port as written in the URL, lowercased: the unit of fair delivery
    receiver        TEXT GENERATED ALWAYS AS (lower(
        CASE WHEN instr(url, '://') = 0 THEN url
        ELSE substr(url, 1, instr(url, '://') + 1 + instr(
            replace(replace(substr(url, instr(url, '://') + 3), '?', '/'), '#', '/') || '/', '/'))
        END)) VIRTUAL
);
-- Claims walk the receivers, then each one's events in due order.
CREATE INDEX webhook_outbox_receiver_due ON webhook_outbox (receiver, next_attempt_at, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;

-- Rules outlive their user, like jobs: no foreign key on user_id.
CREATE TABLE scaling_rules (
    user_id                TEXT NOT NULL,
    container_group_id     TEXT NOT NULL,
    min_replicas           INTEGER NOT NULL CHECK (min_replicas >= 0),
    max_replicas           INTEGER NOT NULL CHECK (max_replicas >= 0),
    idle_threshold_seconds INTEGER NOT NULL CHECK (idle_threshold_seconds >= 0),
    created                REAL NOT NULL,
    updated                REAL NOT NULL,
    org_name               TEXT,
    project_name           TEXT,
    PRIMARY KEY (user_id, container_group_id)
) WITHOUT ROWID;

-- Named leases for leader election of periodic tasks.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Committed checkpoint generations. The manifest lists the files (never their contents):
-- JSON [[target, path, key, size, sha256], ...]; NULL once the generation is no longer kept.
CREATE TABLE checkpoints (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    generation INTEGER NOT NULL,
    attempt_id INTEGER NOT NULL,
    machine_id TEXT NOT NULL,
    created    REAL NOT NULL,
    files      INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    manifest   TEXT,
    upload_seconds REAL,  -- files complete to commit: the generation's cost
    PRIMARY KEY (job_id, generation)
) WITHOUT ROWID;

-- What happened to a job, in order: written by the API with each state change, and by the
-- holding worker (downloads, restores, warnings).
CREATE TABLE job_events (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt_id INTEGER,
    machine_id TEXT,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT,
    created    REAL NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);

-- When any API process last reached the store. A gap means nobody could hear heartbeats:
-- the leases of jobs running then are extended instead of being counted as stalled.
CREATE TABLE api_liveness (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seen REAL NOT NULL
);

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

-- Attempt tokens, checkpoint generations, job events, and the API's own liveness.

-- The running attempt's id (attempts.id): the claim's fencing token, sent by kelpie workers.
ALTER TABLE jobs ADD COLUMN attempt_id INTEGER;
-- The newest committed checkpoint generation, and how many generations are kept.
ALTER TABLE jobs ADD COLUMN checkpoint_generation INTEGER;
ALTER TABLE jobs ADD COLUMN checkpoint_keep INTEGER NOT NULL DEFAULT 3;

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

-- Attempt tokens, checkpoint generations, job events, and the API's own liveness.

-- The running attempt's id (attempts.id): the claim's fencing token, sent by kelpie workers.
ALTER TABLE jobs ADD COLUMN attempt_id bigint;
-- The newest committed checkpoint generation, and how many generations are kept.
ALTER TABLE jobs ADD COLUMN checkpoint_generation bigint;
ALTER TABLE jobs ADD COLUMN checkpoint_keep integer NOT NULL DEFAULT 3;

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

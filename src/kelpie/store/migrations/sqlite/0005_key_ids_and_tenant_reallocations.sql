-- API keys get an id, so that one key can be listed and revoked without knowing it, and
-- remember whether they came from KELPIE_ADMIN_KEY (`bootstrap`): a start with another
-- admin key revokes them. Keys of the `admin` user that name no SaladCloud project were
-- created that way before this version, and are marked so.
ALTER TABLE api_keys RENAME TO api_keys_before_ids;
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
INSERT INTO api_keys (id, key_hash, user_id, org_name, project_name, created, revoked, bootstrap)
SELECT lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4'
           || substr(lower(hex(randomblob(2))), 2) || '-'
           || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2)
           || '-' || lower(hex(randomblob(6))),
       k.key_hash, k.user_id, k.org_name, k.project_name, k.created, k.revoked,
       u.username = 'admin' AND u.is_admin = 1 AND k.org_name IS NULL AND k.project_name IS NULL
FROM api_keys_before_ids AS k JOIN users AS u ON u.id = k.user_id;
DROP TABLE api_keys_before_ids;
CREATE INDEX api_keys_user ON api_keys (user_id);

-- A machine is reallocated at most once per tenant: failures are counted per user and
-- machine, so one tenant reporting failures under another's machine id spends only its
-- own reallocation. A machine reallocated before counts as reallocated for every tenant
-- whose jobs it was blocked from.
ALTER TABLE machine_reallocations RENAME TO machine_reallocations_before_tenants;
CREATE TABLE machine_reallocations (
    user_id    TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    at         REAL NOT NULL,
    PRIMARY KEY (user_id, machine_id)
) WITHOUT ROWID;
INSERT INTO machine_reallocations (user_id, machine_id, at)
SELECT DISTINCT j.user_id, r.machine_id, r.at
FROM machine_reallocations_before_tenants AS r
JOIN job_blocks AS b ON b.machine_id = r.machine_id
JOIN jobs AS j ON j.id = b.job_id;
DROP TABLE machine_reallocations_before_tenants;

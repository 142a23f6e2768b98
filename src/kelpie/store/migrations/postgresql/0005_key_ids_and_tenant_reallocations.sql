-- API keys get an id, so that one key can be listed and revoked without knowing it, and
-- remember whether they came from KELPIE_ADMIN_KEY (`bootstrap`): a start with another
-- admin key revokes them. Keys of the `admin` user that name no SaladCloud project were
-- created that way before this version, and are marked so.
ALTER TABLE api_keys ADD COLUMN id text;
UPDATE api_keys SET id = gen_random_uuid()::text;
ALTER TABLE api_keys ALTER COLUMN id SET NOT NULL;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_pkey;
ALTER TABLE api_keys ALTER COLUMN key_hash SET NOT NULL;
ALTER TABLE api_keys ADD PRIMARY KEY (id);
ALTER TABLE api_keys ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);
ALTER TABLE api_keys ADD COLUMN bootstrap boolean NOT NULL DEFAULT false;
UPDATE api_keys AS k SET bootstrap = true
FROM users AS u
WHERE u.id = k.user_id AND u.username = 'admin' AND u.is_admin
  AND k.org_name IS NULL AND k.project_name IS NULL;

-- A machine is reallocated at most once per tenant: failures are counted per user and
-- machine, so one tenant reporting failures under another's machine id spends only its
-- own reallocation. A machine reallocated before counts as reallocated for every tenant
-- whose jobs it was blocked from.
ALTER TABLE machine_reallocations DROP CONSTRAINT machine_reallocations_pkey;
ALTER TABLE machine_reallocations ADD COLUMN user_id text;
INSERT INTO machine_reallocations (machine_id, at, user_id)
SELECT DISTINCT r.machine_id, r.at, j.user_id
FROM machine_reallocations AS r
JOIN job_blocks AS b ON b.machine_id = r.machine_id
JOIN jobs AS j ON j.id = b.job_id
WHERE r.user_id IS NULL;
DELETE FROM machine_reallocations WHERE user_id IS NULL;
ALTER TABLE machine_reallocations ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE machine_reallocations ADD PRIMARY KEY (user_id, machine_id);

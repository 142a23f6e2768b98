-- Job priorities: within a container group a claim takes the pending job with the highest
-- priority first, and among equal priorities the oldest (created, then submission order).
ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;

-- The claim's scan of a group's pending jobs, in the order they are handed out.
DROP INDEX jobs_pending_by_group;
CREATE INDEX jobs_pending_by_group ON jobs (container_group_id, priority DESC, created, seq)
    WHERE status = 'pending';

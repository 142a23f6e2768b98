-- Jobs counted by container group and status (the dashboard's groups, `/metrics`) from this
-- index alone, without reading the jobs: a scrape stays fast with 100,000 jobs.
CREATE INDEX jobs_by_group_status ON jobs (container_group_id, status);

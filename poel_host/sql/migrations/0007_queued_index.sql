-- Queue depths for /metrics (queue_depths in queries.sql): the queued jobs by queue, job
-- type and run_at, so that counting them per queue and type is an index-only scan of the
-- backlog, whatever the number of finished or running rows.
CREATE INDEX jobs_queued_idx ON {schema}.jobs (queue, job_type, run_at) WHERE state = 'queued';

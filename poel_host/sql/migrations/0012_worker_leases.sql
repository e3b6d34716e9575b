-- A running job is held while its worker lives (issue 18): claims no longer give each job
-- a lease that its worker rewrites every third of POEL_LEASE_MS. The worker's heartbeat in
-- the registry (one row, whatever it runs) is the lease of every job it holds, so a worker
-- running 1,000 long jobs writes one row a renewal interval instead of 1,000.
-- `lease_expires_at` is NULL on such a job. It is set only where a job's own lease still
-- expires: a worker gave the job up (past its timeout), a claimer without a heartbeat (the
-- test kit's run_job), and workers of earlier versions, which renew as they always did.
-- The rescuer takes back the jobs whose lease expired and the held jobs of workers whose
-- heartbeat stopped (see recover_expired in queries.sql).
-- The running jobs are found by their owner; lease_expires_at is indexed no more, so
-- that writing it (a give-up, an earlier version's renewal) can be a HOT update. Running
-- jobs are as many as the fleet runs at once: reading them all is cheap.
-- poel: no-transaction
DROP INDEX CONCURRENTLY IF EXISTS {schema}.jobs_running_idx;
CREATE INDEX CONCURRENTLY jobs_running_idx ON {schema}.jobs (lease_owner) WHERE state = 'running';
DROP INDEX CONCURRENTLY IF EXISTS {schema}.jobs_lease_idx;

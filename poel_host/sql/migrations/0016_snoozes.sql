-- Snoozes (issue 19): a handler may put its job back to run later (ctx.snooze(seconds), a
-- Snooze raised) without its attempt counting. `snoozes` counts how many times a job did:
-- what a user sees of it (Queue.get, poel-host jobs show), what the handler reads as
-- ctx.snoozes, and what Job(max_snoozes=...) bounds. Its error history is left to errors.
-- Adding a column with a constant default rewrites no row (PostgreSQL 11 and later): the
-- lock on each table is as brief as a catalog change, and the migration runner's
-- lock_timeout keeps it from queueing behind a long transaction. The history's partitions
-- gain the column with their parent.
ALTER TABLE {schema}.jobs ADD COLUMN snoozes integer NOT NULL DEFAULT 0;
ALTER TABLE {schema}.jobs_history ADD COLUMN snoozes integer NOT NULL DEFAULT 0;

-- all_jobs (migration 0013) gains the column, last: CREATE OR REPLACE keeps the view's
-- existing columns, their names and order, and its readers' privileges.
CREATE OR REPLACE VIEW {schema}.all_jobs AS
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, lease_owner, lease_expires_at, created_at,
       started_at, finished_at, updated_at, lease_token, handbacks, ready, snoozes
FROM {schema}.jobs
UNION ALL
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, NULL::text, NULL::timestamptz, created_at,
       started_at, finished_at, updated_at, NULL::uuid, handbacks, NULL::boolean, snoozes
FROM {schema}.jobs_history;

-- A job's result and progress (issue 19): `result` is a handler's JSON return value,
-- written with its success; `progress` (a fraction 0..1) and `progress_message` are what
-- the handler last reported with ctx.progress, written about once a second by its worker
-- while it runs. Nullable columns without a default: adding them changes the catalog
-- only (no rewrite, no scan), in the jobs table, in jobs_history and (through it) in
-- every partition, present and future. None of them is in an index, so writing progress
-- to a running row can be a HOT update. The lock each ALTER takes is brief, and
-- lock_timeout keeps it from queueing behind a long transaction while every claim queues
-- behind it: the migration fails instead, and is retried (as 0009).
SET LOCAL lock_timeout = '5s';
ALTER TABLE {schema}.jobs
    ADD COLUMN result jsonb,
    ADD COLUMN progress double precision,
    ADD COLUMN progress_message text;
ALTER TABLE {schema}.jobs_history
    ADD COLUMN result jsonb,
    ADD COLUMN progress double precision,
    ADD COLUMN progress_message text;

-- The view gains them at its end (CREATE OR REPLACE VIEW may only add columns there).
CREATE OR REPLACE VIEW {schema}.all_jobs AS
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, lease_owner, lease_expires_at, created_at,
       started_at, finished_at, updated_at, lease_token, handbacks, ready,
       result, progress, progress_message
FROM {schema}.jobs
UNION ALL
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, NULL::text, NULL::timestamptz, created_at,
       started_at, finished_at, updated_at, NULL::uuid, handbacks, NULL::boolean,
       result, progress, progress_message
FROM {schema}.jobs_history;

-- Who waits for a result (Queue.result): a row a waiter, removed when it stops waiting.
-- The outcome statements send their NOTIFY only when one of the jobs they write has a
-- waiter here, so that a fleet nobody waits on pays nothing for it (a NOTIFY wakes every
-- listening backend at commit, and commits that notify are serialised). A waiter that died
-- leaves its row: the next waiter's registration deletes rows older than a day.
CREATE TABLE {schema}.result_waiters (
    job_id bigint NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX result_waiters_job_idx ON {schema}.result_waiters (job_id);

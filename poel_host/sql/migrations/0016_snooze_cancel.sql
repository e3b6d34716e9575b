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

-- all_jobs (migrations 0013 and 0014) gains the column, last: CREATE OR REPLACE keeps the view's
-- existing columns, their names and order, and its readers' privileges.
CREATE OR REPLACE VIEW {schema}.all_jobs AS
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, lease_owner, lease_expires_at, created_at,
       started_at, finished_at, updated_at, lease_token, handbacks, ready, result, progress,
       progress_message, snoozes
FROM {schema}.jobs
UNION ALL
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, NULL::text, NULL::timestamptz, created_at,
       started_at, finished_at, updated_at, NULL::uuid, handbacks, NULL::boolean, result,
       progress, progress_message, snoozes
FROM {schema}.jobs_history;

-- Cancelling a running job (issue 19): Queue.cancel(id) on a running job sets
-- `cancel_requested` and notifies poel_cancel (see cancel_job in queries.sql); the worker
-- holding it stops its handler. Whatever ends that attempt (an outcome, a hand-back at
-- shutdown, a snooze, a rescue after its worker died), the job does not go back to the
-- queue: the trigger below makes a requested cancel win over every path that would queue
-- it again, Poel's own statements and an application's alike. (retry_job clears the flag.)
ALTER TABLE {schema}.jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

CREATE FUNCTION {schema}.jobs_cancel_requested() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.state := 'cancelled';
    NEW.finished_at := now();
    RETURN NEW;
END
$$;

-- Named to run before jobs_ready (triggers run in name order), which then has nothing to do.
CREATE TRIGGER jobs_cancel_requested BEFORE UPDATE OF state ON {schema}.jobs
    FOR EACH ROW
    WHEN (NEW.state = 'queued' AND NEW.cancel_requested)
    EXECUTE FUNCTION {schema}.jobs_cancel_requested();

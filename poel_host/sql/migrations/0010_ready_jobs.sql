-- Claims whose cost does not depend on the shape of the backlog (issue 16). The claim used
-- to walk every distinct priority of the queued jobs, future ones included (100,000 future
-- jobs of distinct priorities: 300 ms a claim instead of 1 ms), and to read through the
-- due jobs of types it does not handle. Now a queued job is `ready` once it is due: the
-- claim reads one index of ready jobs per job type it handles, in claim order, merged,
-- and reads no future job at all. A future job waits, not ready, in an index of its own
-- until the promoter (every worker, every poll interval) marks it ready once due.
SET LOCAL lock_timeout = '5s';

ALTER TABLE {schema}.jobs ADD COLUMN ready boolean NOT NULL DEFAULT true;
UPDATE {schema}.jobs SET ready = false WHERE state = 'queued' AND run_at > now();

-- Whoever writes a queued job (Poel, the SQL function, an application's own INSERT or
-- UPDATE of run_at), `ready` says whether it is due: a future job is not. The WHEN clause
-- is checked without calling the function, which runs only for a row that needs it.
CREATE FUNCTION {schema}.jobs_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.ready := NEW.run_at <= now();
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_ready BEFORE INSERT OR UPDATE OF run_at, state, ready ON {schema}.jobs
    FOR EACH ROW
    WHEN (NEW.state = 'queued' AND NEW.ready IS DISTINCT FROM (NEW.run_at <= now()))
    EXECUTE FUNCTION {schema}.jobs_ready();

-- The claim: ready jobs of one type in claim order (see claim_jobs in queries.sql).
CREATE INDEX jobs_ready_idx ON {schema}.jobs (job_type, priority DESC, run_at, id)
    WHERE state = 'queued' AND ready;
-- The promoter: future jobs by when they become due.
CREATE INDEX jobs_waiting_idx ON {schema}.jobs (run_at) WHERE state = 'queued' AND NOT ready;
DROP INDEX {schema}.jobs_claim_idx;

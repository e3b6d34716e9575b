-- The indexes of steering (0017), built without stopping a claim.
-- poel: no-transaction
-- The queued jobs of each key of a type, in claim order: what a per-key or fair claim
-- reads a few of for each key. Only jobs with a key have an entry.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_keyed_idx
    ON {schema}.jobs (job_type, key, priority DESC, run_at, id)
    WHERE state = 'queued' AND ready AND key IS NOT NULL;
-- The running jobs a gate counts (only those claim_steered took: slots is set).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_gated_idx
    ON {schema}.jobs (job_type, key) WHERE state = 'running' AND slots IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_gated_queue_idx
    ON {schema}.jobs (queue) WHERE state = 'running' AND slots IS NOT NULL;

-- Finished jobs leave the hot table (issue 18). The jobs table holds what claims, leases
-- and the promoter look at: queued and running jobs, and the jobs finished in the last
-- POEL_ARCHIVE_AFTER_S, until each worker's archiver moves them, in batches, into
-- jobs_history. There, retention costs nothing: succeeded and cancelled jobs are kept in
-- partitions by finish time (a minute to a day each), and a partition past the retention
-- is dropped whole, not deleted row by row, so it leaves no dead rows to vacuum and writes
-- no WAL a row. Failed jobs (the dead letter) are kept in a table of their own, pruned by
-- POEL_RETAIN_FAILED_HOURS when it is set. Nothing on the job path (claim, lease,
-- outcome) touches jobs_history, so creating and dropping its partitions, which lock it
-- briefly, never stops a claim or an outcome.
-- Read any job, wherever it is, through the view all_jobs.

CREATE TABLE {schema}.jobs_history (
    id           bigint NOT NULL,
    queue        text NOT NULL,
    job_type     text NOT NULL,
    payload      jsonb NOT NULL,
    state        {schema}.job_state NOT NULL,
    priority     integer NOT NULL,
    run_at       timestamptz NOT NULL,
    attempts     integer NOT NULL,
    max_attempts integer NOT NULL,
    last_error   text,
    errors       jsonb NOT NULL,
    unique_key   text,
    handbacks    integer NOT NULL,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
) PARTITION BY LIST (state);

COMMENT ON TABLE {schema}.jobs_history IS
    'Finished Poel jobs, moved out of the jobs table. Read any job through all_jobs.';

CREATE TABLE {schema}.jobs_done PARTITION OF {schema}.jobs_history
    FOR VALUES IN ('succeeded', 'cancelled') PARTITION BY RANGE (finished_at);
-- A row no partition covers (a clock far off) lands here; it is pruned row by row.
CREATE TABLE {schema}.jobs_done_default PARTITION OF {schema}.jobs_done DEFAULT;
CREATE TABLE {schema}.jobs_dead PARTITION OF {schema}.jobs_history FOR VALUES IN ('failed');

-- A job by id (the dashboard, the CLI, Queue.get, retry): one probe a partition.
CREATE INDEX jobs_history_id_idx ON {schema}.jobs_history (id);
-- The last hour's outcomes, and the row-by-row retention of the default and dead tables.
CREATE INDEX jobs_history_finished_idx ON {schema}.jobs_history (finished_at);
-- The dead letter by type (counts, retry of a type), as jobs_failed_idx on the jobs table.
CREATE INDEX jobs_dead_type_idx ON {schema}.jobs_dead (job_type, id);

-- Every job, live or finished, with the jobs table's columns (NULL where a finished job
-- has none: its lease, `ready`).
CREATE VIEW {schema}.all_jobs AS
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, lease_owner, lease_expires_at, created_at,
       started_at, finished_at, updated_at, lease_token, handbacks, ready
FROM {schema}.jobs
UNION ALL
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, NULL::text, NULL::timestamptz, created_at,
       started_at, finished_at, updated_at, NULL::uuid, handbacks, NULL::boolean
FROM {schema}.jobs_history;

COMMENT ON VIEW {schema}.all_jobs IS
    'Every Poel job: the jobs table (queued, running, just finished) and jobs_history.';

-- The partitions of jobs_done from `since` to `ahead` widths past now, each `width` wide
-- (from a minute to a day; their bounds are multiples of it since 2000-01-01 UTC), named
-- by their start in UTC; made by every worker's archiver. A partition another worker made
-- meanwhile is no error. Returns how many it made. A short lock_timeout: attaching a
-- partition locks jobs_history, and waiting behind a long read of it would hold every
-- archiver behind this; the next pass tries again.
CREATE FUNCTION {schema}.make_done_partitions(since timestamptz, width interval, ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    origin constant timestamptz := '2000-01-01 00:00:00+00';
    -- date_bin(width, t, origin), which PostgreSQL 13 has not
    lo timestamptz := origin + width * floor(extract(epoch FROM since - origin)
                                             / extract(epoch FROM width));
    last timestamptz := origin + width * floor(extract(epoch FROM now() - origin)
                                               / extract(epoch FROM width)) + ahead * width;
    made integer := 0;
    name text;
BEGIN
    PERFORM set_config('lock_timeout', '2s', true);
    WHILE lo <= last LOOP
        name := 'jobs_done_' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MI');
        IF to_regclass(format('%s.%I', '{schema}', name)) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %s.%I PARTITION OF %s.jobs_done'
                               ' FOR VALUES FROM (%L) TO (%L)',
                               '{schema}', name, '{schema}', lo, lo + width);
                made := made + 1;
            EXCEPTION WHEN duplicate_table OR invalid_object_definition THEN
                NULL;  -- made by another worker meanwhile, or overlapping one of another width
            END;
        END IF;
        lo := lo + width;
    END LOOP;
    RETURN made;
END
$$;

-- Drop the partitions of jobs_done wholly older than `before`; their names.
CREATE FUNCTION {schema}.drop_done_partitions(before timestamptz)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    PERFORM set_config('lock_timeout', '2s', true);
    FOR part IN
        SELECT c.relname AS name,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
        FROM pg_inherits AS i
        JOIN pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(format('%s.jobs_done', '{schema}'))
          AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    LOOP
        IF part.upper <= before THEN
            EXECUTE format('DROP TABLE %s.%I', '{schema}', part.name);
            RETURN NEXT part.name;
        END IF;
    END LOOP;
END
$$;

-- Retention of workflows (issue 20): a finished workflow is deleted past its retention,
-- with its dependencies (job_dependencies), by the pruner (prune_workflows in
-- queries.sql). Its steps are jobs and go by the jobs' own retention, most of them with
-- the history's partitions, dropped whole: by the time a workflow is pruned they are gone
-- or about to go, so a dependency cannot be found through its steps. Each dependency
-- carries its workflow's id instead, written by enqueue_workflow(), and the workflows past
-- their retention are found by their finish time.
--
-- Outside a transaction, for the indexes (CONCURRENTLY: they stop no outcome and no
-- enqueue); each statement can run again from the start after a failure part way.
-- poel: no-transaction

-- A catalog change (nullable, no default): no rewrite, no scan.
ALTER TABLE {schema}.job_dependencies ADD COLUMN IF NOT EXISTS workflow_id bigint;

-- enqueue_workflow() as 0023 made it, but for its workflow's id on each dependency it
-- inserts (the last INSERT); nothing else changes.
CREATE OR REPLACE FUNCTION {schema}.enqueue_workflow(name text, steps jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wf bigint;
    total integer;
    bad text;
    placed text[] := ARRAY[]::text[];
    layer text[];
    at text;
    path text[];
    detail text;
BEGIN
    IF jsonb_typeof(steps) IS DISTINCT FROM 'array' OR jsonb_array_length(steps) = 0 THEN
        RAISE EXCEPTION 'workflow %: steps must be a non-empty JSON array of objects', name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    total := jsonb_array_length(steps);
    SELECT string_agg(format('#%s', e.n), ', ') INTO bad
    FROM jsonb_array_elements(steps) WITH ORDINALITY AS e(s, n)
    WHERE jsonb_typeof(e.s) IS DISTINCT FROM 'object'
       OR jsonb_typeof(e.s -> 'step') IS DISTINCT FROM 'string' OR e.s ->> 'step' = ''
       OR jsonb_typeof(e.s -> 'job_type') IS DISTINCT FROM 'string'
       OR (e.s ? 'after' AND jsonb_typeof(e.s -> 'after') NOT IN ('array', 'null'))
       OR (e.s ? 'payload' AND jsonb_typeof(e.s -> 'payload') NOT IN ('object', 'null'));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'workflow %: step % must be an object with a "step" name, a "job_type", "after" a list of step names and "payload" an object', name, bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('%I', d.step), ', ') INTO bad FROM (
        SELECT e.s ->> 'step' AS step FROM jsonb_array_elements(steps) AS e(s)
        GROUP BY 1 HAVING count(*) > 1 ORDER BY 1) AS d;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'workflow %: step names must be unique: % used more than once', name, bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('%s (after %s)', e.s ->> 'step', a.value::text), ', ') INTO bad
    FROM jsonb_array_elements(steps) AS e(s)
    CROSS JOIN LATERAL jsonb_array_elements(coalesce(nullif(e.s -> 'after', 'null'), '[]'))
        AS a(value)
    WHERE jsonb_typeof(a.value) IS DISTINCT FROM 'string'
       OR NOT EXISTS (SELECT FROM jsonb_array_elements(steps) AS o(s)
                      WHERE o.s ->> 'step' = a.value #>> ARRAY[]::text[]);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'workflow %: a step waits for a step the workflow does not have: %', name, bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(e.s ->> 'step', ', ') INTO bad
    FROM jsonb_array_elements(steps) AS e(s)
    WHERE e.s ? 'run_at' AND jsonb_typeof(e.s -> 'run_at') <> 'null'
      AND jsonb_array_length(coalesce(nullif(e.s -> 'after', 'null'), '[]')) > 0;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'workflow %: run_at is for steps without dependencies (a waiting step runs when released): %', name, bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- No cycles: place the steps layer by layer, each after all it waits for; steps left
    -- unplaced are on a cycle or after one, and a walk among them finds the cycle.
    -- (NOT IN a subquery of the placed names is hashed once a layer: a chain of 1,000
    -- steps, a layer each, is checked in about half a second; a fan-in of 2,000 in 0.04 s.)
    LOOP
        SELECT array_agg(e.s ->> 'step') INTO layer
        FROM jsonb_array_elements(steps) AS e(s)
        WHERE (e.s ->> 'step') NOT IN (SELECT unnest(placed))
          AND NOT EXISTS (
              SELECT FROM jsonb_array_elements_text(coalesce(nullif(e.s -> 'after', 'null'), '[]'))
                  AS a(dep)
              WHERE a.dep NOT IN (SELECT unnest(placed)));
        EXIT WHEN layer IS NULL;
        placed := placed || layer;
    END LOOP;
    IF cardinality(placed) < total THEN
        SELECT e.s ->> 'step' INTO at FROM jsonb_array_elements(steps) AS e(s)
        WHERE NOT (e.s ->> 'step') = ANY(placed) ORDER BY 1 LIMIT 1;
        path := ARRAY[at];
        LOOP
            SELECT d INTO at
            FROM jsonb_array_elements(steps) AS e(s)
            CROSS JOIN LATERAL jsonb_array_elements_text(e.s -> 'after') AS d
            WHERE e.s ->> 'step' = at AND NOT d = ANY(placed)
            ORDER BY 1 LIMIT 1;
            EXIT WHEN at = ANY(path);
            path := path || at;
        END LOOP;
        path := path[array_position(path, at):] || at;
        RAISE EXCEPTION 'workflow %: its steps wait for each other in a cycle: %', name,
            array_to_string(path, ' waits for ')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO {schema}.workflows (name, steps, steps_left)
    VALUES (enqueue_workflow.name, total, total) RETURNING id INTO wf;

    BEGIN
        WITH input AS (
            SELECT e.s, e.s ->> 'step' AS step,
                   CASE WHEN jsonb_typeof(e.s -> 'payload') = 'object'
                        THEN e.s -> 'payload' ELSE jsonb_build_object() END AS payload,
                   (SELECT count(DISTINCT a)::integer
                    FROM jsonb_array_elements_text(coalesce(nullif(e.s -> 'after', 'null'), '[]'))
                         AS a) AS waits
            FROM jsonb_array_elements(steps) AS e(s)
        ), inserted AS (
            INSERT INTO {schema}.jobs AS j
                (job_type, payload, run_at, ready, priority, queue, max_attempts, unique_key,
                 key, workflow_id, step, waiting_on, run_anyway)
            SELECT i.s ->> 'job_type', i.payload,
                   CASE WHEN i.waits > 0 THEN '9999-01-01 00:00:00+00'::timestamptz
                        ELSE coalesce((i.s ->> 'run_at')::timestamptz, now()) END,
                   i.waits = 0 AND coalesce((i.s ->> 'run_at')::timestamptz, now()) <= now(),
                   coalesce((i.s ->> 'priority')::integer, 0),
                   coalesce(i.s ->> 'queue', 'default'),
                   coalesce((i.s ->> 'max_attempts')::integer, 3),
                   i.s ->> 'unique_key',
                   coalesce(i.s ->> 'key',
                            i.payload ->> (SELECT st.key_field FROM {schema}.steering AS st
                                           WHERE st.kind = 'type'
                                             AND st.name = i.s ->> 'job_type')),
                   wf, i.step, i.waits, coalesce((i.s ->> 'run_anyway')::boolean, false)
            FROM input AS i
            RETURNING j.id, j.step
        )
        INSERT INTO {schema}.job_dependencies (job_id, depends_on, workflow_id)
        SELECT DISTINCT waiting.id, dependency.id, wf
        FROM input AS i
        JOIN inserted AS waiting ON waiting.step = i.step
        CROSS JOIN LATERAL jsonb_array_elements_text(coalesce(nullif(i.s -> 'after', 'null'), '[]'))
            AS a(name)
        JOIN inserted AS dependency ON dependency.step = a.name;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION 'workflow %: a step''s unique_key is held by a live job (%)', name, detail
            USING ERRCODE = 'unique_violation';
    END;
    RETURN wf;
END
$$;

-- The dependencies enqueued before, given their workflow's id from the step that waits
-- (live or archived), under a lock that waits for the enqueues still under way (with the
-- function above: whatever they insert has committed once it is ours) and holds back
-- those to come until this is done; no outcome waits (it only reads the dependencies).
-- Those whose waiting step was deleted past its retention already are deleted: nothing
-- reads them (every reader starts from a step), and nothing would ever find them again.
DO $$
BEGIN
    LOCK TABLE {schema}.job_dependencies IN SHARE ROW EXCLUSIVE MODE;
    UPDATE {schema}.job_dependencies AS d
    SET workflow_id = j.workflow_id
    FROM {schema}.all_jobs AS j
    WHERE j.id = d.job_id AND d.workflow_id IS NULL;
    DELETE FROM {schema}.job_dependencies AS d WHERE d.workflow_id IS NULL;
END
$$;

-- A workflow's dependencies, deleted with it. A failed build leaves an INVALID index:
-- dropped first, so that a re-run builds it again (as 0024).
DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_dependencies_workflow_idx;
CREATE INDEX CONCURRENTLY job_dependencies_workflow_idx
    ON {schema}.job_dependencies (workflow_id);

-- The finished workflows by finish time: those that ended without a failure (kept as
-- succeeded jobs are) and those with one (kept as the dead letter is). Two indexes, so
-- that failed workflows kept for good (POEL_RETAIN_FAILED_HOURS unset) are never read
-- by a prune. A running workflow has no finish time: in neither.
DROP INDEX CONCURRENTLY IF EXISTS {schema}.workflows_ended_idx;
CREATE INDEX CONCURRENTLY workflows_ended_idx ON {schema}.workflows (finished_at)
    WHERE finished_at IS NOT NULL AND failed_step IS NULL;
DROP INDEX CONCURRENTLY IF EXISTS {schema}.workflows_failed_idx;
CREATE INDEX CONCURRENTLY workflows_failed_idx ON {schema}.workflows (finished_at)
    WHERE finished_at IS NOT NULL AND failed_step IS NOT NULL;

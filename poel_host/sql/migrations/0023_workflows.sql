-- Workflows (issue 20): jobs that wait for other jobs, enqueued together, released by the
-- statement that ends their last dependency, and failing as a whole.
--
-- A workflow is a row of `workflows` and its steps are ordinary jobs carrying its id and
-- their step name. A step that waits on dependencies is queued with ready = false and
-- run_at = 9999-01-01 UTC ("never"): no claim sees it (claims read ready jobs only) and
-- neither does the promoter (it looks for run_at <= now()). Not 'infinity': psycopg (and
-- Python's datetime) cannot read it, so every Python reader of the row (Queue.get, the
-- CLI, the dashboard, an application's own) would fail on a waiting step. `waiting_on` counts its dependencies not yet
-- satisfied; when a dependency ends, the statement that ended it calls steps_ended(),
-- which counts it down and makes the step due (ready, run_at = now()) at zero. Nothing
-- polls, and a job outside a workflow pays nothing: no trigger on the jobs table, no
-- statement more on its path (the outcome statements call steps_ended only when one of
-- their rows is a step).
--
-- The jobs table gains nullable columns without a default: a catalog change only (no
-- rewrite, no scan). The indexes of steps (in the jobs table and in the history) are built
-- by 0024, outside this transaction, which holds the jobs table's lock until it commits.
SET LOCAL lock_timeout = '5s';

CREATE TABLE {schema}.workflows (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL CONSTRAINT workflows_name_valid
                     CHECK (char_length(name) BETWEEN 1 AND 200),
    state        text NOT NULL DEFAULT 'running' CONSTRAINT workflows_state_valid
                     CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    steps        integer NOT NULL,
    steps_left   integer NOT NULL,
    failed_step  text,
    failed_error text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

COMMENT ON TABLE {schema}.workflows IS
    'Poel workflows: steps (jobs) that wait for each other. Enqueue with enqueue_workflow().';

CREATE INDEX workflows_created_idx ON {schema}.workflows (created_at);

ALTER TABLE {schema}.jobs
    ADD COLUMN workflow_id bigint,
    ADD COLUMN step text,
    ADD COLUMN waiting_on integer,
    ADD COLUMN run_anyway boolean;
ALTER TABLE {schema}.jobs_history
    ADD COLUMN workflow_id bigint,
    ADD COLUMN step text;

-- job_id waits on depends_on. Looked up by dependency (the steps an ended step releases)
-- and by dependent (the results a step reads).
CREATE TABLE {schema}.job_dependencies (
    job_id     bigint NOT NULL,
    depends_on bigint NOT NULL,
    CONSTRAINT job_dependencies_pkey PRIMARY KEY (depends_on, job_id)
);
CREATE INDEX job_dependencies_job_idx ON {schema}.job_dependencies (job_id);

-- all_jobs gains the step's workflow and name, and the dependencies it still waits for
-- (NULL once finished), last (CREATE OR REPLACE keeps the rest). Readers granted only the
-- view (Queue.result's role in the README) see whether a step waits through it.
CREATE OR REPLACE VIEW {schema}.all_jobs AS
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, lease_owner, lease_expires_at, created_at,
       started_at, finished_at, updated_at, lease_token, handbacks, ready, result, progress,
       progress_message, snoozes, key, workflow_id, step, waiting_on
FROM {schema}.jobs
UNION ALL
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, NULL::text, NULL::timestamptz, created_at,
       started_at, finished_at, updated_at, NULL::uuid, handbacks, NULL::boolean, result,
       progress, progress_message, snoozes, key, workflow_id, step, NULL::integer
FROM {schema}.jobs_history;

-- Enqueue a workflow from SQL, inside the caller's transaction: the workflow row, every
-- step and every dependency, or nothing (any error rolls the whole call back). `steps`
-- is a JSON array of objects:
--   step         the step's name, unique in the workflow (required)
--   job_type     its job type (required); payload (an object, default empty)
--   after        the names of the steps it waits for (default none)
--   run_anyway   run even when a dependency failed or was cancelled (default false)
--   queue, priority, max_attempts, unique_key, key: as poel.enqueue takes them
--   run_at       for a step with no dependencies only (a waiting step runs when released)
-- Steps with no dependencies are due at once (or at their run_at). Returns the workflow's
-- id. Payloads are not validated against the plugins' models (the database does not know
-- them): Queue.enqueue_workflow validates before calling this.
CREATE FUNCTION {schema}.enqueue_workflow(name text, steps jsonb) RETURNS bigint
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
        INSERT INTO {schema}.job_dependencies (job_id, depends_on)
        SELECT DISTINCT waiting.id, dependency.id
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

-- What ends a step (an outcome, a failed hand-back or rescue, an operator's cancel) calls
-- this in the same statement, with the ids of the steps it ended (succeeded, failed for
-- good, cancelled). It counts each ended step off its workflow (`succeeded` when the last
-- ends and none failed), and then, for each step waiting on it:
--   succeeded, or the waiting step runs anyway: one dependency fewer to wait for; at
--   none, the step is due now (and the idle workers are told, as an insert tells them);
--   failed or cancelled: the waiting step is cancelled, saying which step failed, and so
--   in turn are the steps waiting on it; the workflow is `failed` naming the first step
--   that failed (the steps cancelled for it do not replace it).
-- Locks: every workflow the ended steps belong to is locked first, in id order, and its
-- waiting steps only under that lock (a step waits only on steps of its own workflow).
-- So two batches ending steps of one workflow (a fan-in finished by several workers)
-- take turns on its row, and no two lock its waiting steps in different orders.
CREATE FUNCTION {schema}.steps_ended(ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ended bigint[] := ids;
    released integer := 0;
    count_released integer;
BEGIN
    PERFORM FROM {schema}.workflows AS w
    WHERE w.id IN (SELECT j.workflow_id FROM {schema}.jobs AS j
                   WHERE j.id = ANY(ids) AND j.workflow_id IS NOT NULL)
    ORDER BY w.id
    FOR UPDATE OF w;

    WHILE cardinality(ended) > 0 LOOP
        -- The workflows: their count of steps left, their first failure, their end.
        UPDATE {schema}.workflows AS w
        SET steps_left = w.steps_left - e.steps,
            state = CASE WHEN w.state = 'running' AND e.failed_step IS NOT NULL THEN 'failed'
                         WHEN w.state = 'running' AND w.steps_left - e.steps <= 0
                         THEN 'succeeded' ELSE w.state END,
            failed_step = CASE WHEN w.state = 'running' THEN e.failed_step
                               ELSE w.failed_step END,
            failed_error = CASE WHEN w.state = 'running' THEN e.failed_error
                                ELSE w.failed_error END,
            finished_at = CASE WHEN w.steps_left - e.steps <= 0 THEN now()
                               ELSE w.finished_at END
        FROM (SELECT j.workflow_id, count(*)::integer AS steps,
                     (array_agg(j.step ORDER BY j.finished_at, j.id)
                          FILTER (WHERE j.state <> 'succeeded'))[1] AS failed_step,
                     (array_agg(coalesce(j.last_error, j.state::text) ORDER BY j.finished_at, j.id)
                          FILTER (WHERE j.state <> 'succeeded'))[1] AS failed_error
              FROM {schema}.jobs AS j
              WHERE j.id = ANY(ended) AND j.workflow_id IS NOT NULL
                AND j.state IN ('succeeded', 'failed', 'cancelled')
              GROUP BY j.workflow_id) AS e
        WHERE w.id = e.workflow_id;

        -- The steps waiting on them, locked in id order, then counted down or cancelled.
        WITH edges AS (
            SELECT d.job_id, p.state = 'succeeded' AS satisfied, p.step
            FROM {schema}.job_dependencies AS d
            JOIN {schema}.jobs AS p ON p.id = d.depends_on
            WHERE d.depends_on = ANY(ended) AND p.state IN ('succeeded', 'failed', 'cancelled')
        ), waiting AS (
            SELECT j.id, j.run_anyway
            FROM {schema}.jobs AS j
            WHERE j.id IN (SELECT job_id FROM edges) AND j.state = 'queued'
              AND j.workflow_id IS NOT NULL
            ORDER BY j.id
            FOR UPDATE OF j
        ), counted AS (
            SELECT w.id, count(*)::integer AS satisfied,
                   bool_or(NOT e.satisfied AND NOT coalesce(w.run_anyway, false)) AS cancel,
                   min(e.step) FILTER (WHERE NOT e.satisfied) AS failed_step
            FROM waiting AS w JOIN edges AS e ON e.job_id = w.id
            GROUP BY w.id
        ), changed AS (
            UPDATE {schema}.jobs AS j
            SET waiting_on = CASE WHEN c.cancel THEN j.waiting_on
                                  ELSE j.waiting_on - c.satisfied END,
                state = CASE WHEN c.cancel THEN 'cancelled'::{schema}.job_state
                             ELSE j.state END,
                finished_at = CASE WHEN c.cancel THEN now() ELSE j.finished_at END,
                last_error = CASE WHEN c.cancel
                                  THEN format('cancelled: step %s of workflow %s did not succeed',
                                              c.failed_step, j.workflow_id)
                                  ELSE j.last_error END,
                ready = CASE WHEN NOT c.cancel AND j.waiting_on - c.satisfied <= 0 THEN true
                             ELSE j.ready END,
                run_at = CASE WHEN NOT c.cancel AND j.waiting_on - c.satisfied <= 0 THEN now()
                              ELSE j.run_at END,
                updated_at = now()
            FROM counted AS c
            WHERE j.id = c.id
            RETURNING j.id, j.state, j.ready
        )
        SELECT coalesce(array_agg(ch.id) FILTER (WHERE ch.state = 'cancelled'),
                        ARRAY[]::bigint[]),
               count(*) FILTER (WHERE ch.state = 'queued' AND ch.ready)
        INTO ended, count_released
        FROM changed AS ch;
        released := released + count_released;
    END LOOP;

    IF released > 0 THEN  -- with the schema's name, unquoted, as notify_jobs() sends it
        PERFORM pg_notify('poel_jobs', (parse_ident('{schema}'))[1]);
    END IF;
END
$$;

-- Cancelling and retrying a workflow as a whole (issue 20): poel.cancel_workflow(id) and
-- poel.retry_workflow(id), which Queue.cancel_workflow, Queue.retry_workflow and
-- `poel-host workflows cancel|retry` call; and an operator's retry of single steps
-- (retry_job, the dashboard's retry of a type) re-opening the step in its workflow, so
-- that its end is counted off once, not twice (steps_left went below zero).
--
-- Locks. steps_ended (0023) locks a workflow's row, then its waiting steps in id order;
-- every function here waits for locks in that order only: the workflow first, then its
-- steps in id order. But the statement that ends a running step (an outcome, a rescue)
-- holds that step's row before it reaches steps_ended and the workflow's row: a cancel
-- that held the workflow and waited for such a row would wait for a statement waiting for
-- it. So a cancel never waits for a running step's row: it tries them all at once
-- (NOWAIT), and when one is busy it gives back everything it took (its attempt is a
-- subtransaction), sleeps a moment, and begins again; whatever held the row (an outcome,
-- a progress report, a hand-back) has then finished. Nothing here is on a job's way
-- through a worker: a job outside a workflow pays nothing for it.
SET LOCAL lock_timeout = '5s';

-- When an operator cancelled the workflow (NULL: never, or retried since). A cancelled
-- workflow whose finished_at is NULL still has running steps being stopped.
ALTER TABLE {schema}.workflows ADD COLUMN cancelled_at timestamptz;

-- A step archived before it is retried keeps whether it runs anyway (a catalog change;
-- the archiver writes it from now on).
ALTER TABLE {schema}.jobs_history ADD COLUMN run_anyway boolean;

-- Queue the failed and cancelled steps among `ids` again, with fresh attempts and their
-- error history kept (as retry_job does a job's), in place or moved back from the
-- history. With `wait`, each waits again for its dependencies that have not succeeded
-- (its waiting_on recounted from job_dependencies; none: due now); without, it is due
-- now (an operator's retry of a step runs it, as the README says). Each workflow
-- concerned gets its count of steps left recounted (not incremented: a count that went
-- wrong is put right) and is not finished any more; its state is its caller's business.
-- Returns the ids queued again. Internal: called by retry_workflow and by the retry
-- statements of queries.sql (retry_job, dashboard_retry_failed_type).
CREATE FUNCTION {schema}.requeue_steps(ids bigint[], wait boolean) RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    flows bigint[];
    chosen bigint[];
    waits_of integer[];
    requeued bigint[];
    moved bigint[];
BEGIN
    -- The workflows first, in id order, as steps_ended locks them; then their steps.
    SELECT coalesce(array_agg(DISTINCT j.workflow_id), ARRAY[]::bigint[]) INTO flows
    FROM {schema}.all_jobs AS j
    WHERE j.id = ANY(ids) AND j.workflow_id IS NOT NULL AND j.state IN ('failed', 'cancelled');
    IF cardinality(flows) = 0 THEN
        RETURN ARRAY[]::bigint[];
    END IF;
    PERFORM FROM {schema}.workflows AS w WHERE w.id = ANY(flows) ORDER BY w.id FOR UPDATE OF w;
    PERFORM FROM {schema}.jobs AS j
    WHERE j.id = ANY(ids) AND j.workflow_id IS NOT NULL AND j.state IN ('failed', 'cancelled')
    ORDER BY j.id FOR UPDATE OF j;

    -- What each waits for: its dependencies that did not succeed (live or archived). A
    -- statement after the locks: it sees every step as the locks left it.
    SELECT coalesce(array_agg(s.id ORDER BY s.id), ARRAY[]::bigint[]),
           coalesce(array_agg(
               CASE WHEN wait THEN (SELECT count(*)::integer
                                    FROM {schema}.job_dependencies AS d
                                    JOIN {schema}.all_jobs AS p ON p.id = d.depends_on
                                    WHERE d.job_id = s.id AND p.state <> 'succeeded')
                    ELSE 0 END ORDER BY s.id), ARRAY[]::integer[])
    INTO chosen, waits_of
    FROM {schema}.all_jobs AS s
    WHERE s.id = ANY(ids) AND s.workflow_id = ANY(flows) AND s.state IN ('failed', 'cancelled');

    BEGIN
        WITH in_place AS (
            UPDATE {schema}.jobs AS j
            SET state = 'queued', attempts = 0, finished_at = NULL, cancel_requested = false,
                waiting_on = r.waits,
                run_at = CASE WHEN r.waits > 0 THEN '9999-01-01 00:00:00+00'::timestamptz
                              ELSE now() END,
                updated_at = now()
            FROM unnest(chosen, waits_of) AS r(id, waits)
            WHERE j.id = r.id AND j.state IN ('failed', 'cancelled')
            RETURNING j.id
        )
        SELECT coalesce(array_agg(in_place.id), ARRAY[]::bigint[]) INTO requeued
        FROM in_place;

        WITH back AS (
            INSERT INTO {schema}.jobs
                (id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
                 last_error, errors, unique_key, handbacks, created_at, updated_at, result,
                 progress, progress_message, key, workflow_id, step, waiting_on, run_anyway)
            SELECT h.id, h.queue, h.job_type, h.payload, 'queued', h.priority,
                   CASE WHEN r.waits > 0 THEN '9999-01-01 00:00:00+00'::timestamptz
                        ELSE now() END,
                   0, h.max_attempts, h.last_error, h.errors, h.unique_key, h.handbacks,
                   h.created_at, now(), h.result, h.progress, h.progress_message, h.key,
                   h.workflow_id, h.step, r.waits, coalesce(h.run_anyway, false)
            FROM {schema}.jobs_history AS h
            JOIN unnest(chosen, waits_of) AS r(id, waits) ON r.id = h.id
            WHERE h.id = ANY(chosen) AND h.state IN ('failed', 'cancelled')
            RETURNING id
        ), gone AS (
            DELETE FROM {schema}.jobs_history AS h WHERE h.id IN (SELECT back.id FROM back)
        )
        SELECT coalesce(array_agg(back.id), ARRAY[]::bigint[]) INTO moved FROM back;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a step cannot be queued again: a live job holds its unique_key (%)',
            SQLERRM USING ERRCODE = 'unique_violation';
    END;
    requeued := requeued || moved;

    -- Each workflow's steps left, recounted under its lock (a statement of its own, so it
    -- sees the steps just queued and every outcome committed before the lock was ours).
    UPDATE {schema}.workflows AS w
    SET steps_left = c.live,
        finished_at = CASE WHEN c.live > 0 THEN NULL ELSE w.finished_at END
    FROM (SELECT f.id, (SELECT count(*)::integer FROM {schema}.jobs AS j
                        WHERE j.workflow_id = f.id AND j.state IN ('queued', 'running')) AS live
          FROM unnest(flows) AS f(id)) AS c
    WHERE w.id = c.id;

    IF EXISTS (SELECT FROM unnest(chosen, waits_of) AS r(id, waits)
               WHERE r.id = ANY(requeued) AND r.waits = 0) THEN
        PERFORM pg_notify('poel_jobs', (parse_ident('{schema}'))[1]);  -- as an insert does
    END IF;
    RETURN requeued;
END
$$;

-- Cancel a workflow: its queued steps (waiting or due) are cancelled at once; its running
-- steps are asked to stop as Queue.cancel asks a running job (cancel_requested, and a
-- NOTIFY poel_cancel that every worker LISTENs to: the worker holding one stops it within
-- a second and records it cancelled, or succeeded if it returned first); the workflow is
-- `cancelled` from now on (cancelled_at), with any failure it had kept, and finished
-- (finished_at) when its last step ended: at once when none was running. Cancelling it
-- again changes nothing (it asks its steps still running to stop again); cancelling a
-- finished workflow changes nothing. An unknown id is an error (no_data_found).
-- Returns a JSON object: workflow_id, name, state, cancelled (steps cancelled now),
-- stopping (running steps asked to stop, now or before), finished, changed.
CREATE FUNCTION {schema}.cancel_workflow(id bigint) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wf {schema}.workflows;
    ended bigint[];
    running bigint[];
    asked integer;
    live integer;
    tries integer := 0;
BEGIN
    LOOP
        BEGIN
            SELECT * INTO wf FROM {schema}.workflows AS w
            WHERE w.id = cancel_workflow.id FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'workflow % does not exist', cancel_workflow.id
                    USING ERRCODE = 'no_data_found';
            END IF;
            IF wf.finished_at IS NOT NULL THEN
                RETURN jsonb_build_object(
                    'workflow_id', wf.id, 'name', wf.name, 'state', wf.state, 'cancelled', 0,
                    'stopping', 0, 'finished', true, 'changed', false);
            END IF;

            -- Its queued steps, in id order, then its running steps; again while one of
            -- them changed meanwhile (a claim made a queued step running, a hand-back or a
            -- retry put a running one back in the queue before it was asked to stop).
            ended := ARRAY[]::bigint[];
            asked := 0;
            LOOP
                WITH queued AS (
                    SELECT j.id FROM {schema}.jobs AS j
                    WHERE j.workflow_id = wf.id AND j.state = 'queued'
                    ORDER BY j.id
                    FOR UPDATE OF j
                ), done AS (
                    UPDATE {schema}.jobs AS j
                    SET state = 'cancelled', finished_at = now(), updated_at = now(),
                        last_error = format('cancelled: workflow %s was cancelled', wf.id)
                    FROM queued AS q
                    WHERE j.id = q.id
                    RETURNING j.id
                )
                SELECT ended || coalesce(array_agg(done.id), ARRAY[]::bigint[]) INTO ended
                FROM done;

                -- Never waited for (see the top of this file): NOWAIT.
                WITH busy AS (
                    SELECT j.id FROM {schema}.jobs AS j
                    WHERE j.workflow_id = wf.id AND j.state = 'running'
                      AND NOT j.cancel_requested
                    ORDER BY j.id
                    FOR NO KEY UPDATE OF j NOWAIT
                ), requested AS (
                    UPDATE {schema}.jobs AS j
                    SET cancel_requested = true, updated_at = now()
                    FROM busy AS b
                    WHERE j.id = b.id
                    RETURNING j.id
                )
                SELECT asked + count(*)::integer INTO asked FROM requested;

                EXIT WHEN NOT EXISTS (
                    SELECT FROM {schema}.jobs AS j
                    WHERE j.workflow_id = wf.id
                      AND (j.state = 'queued' OR (j.state = 'running' AND NOT j.cancel_requested)));
            END LOOP;
            SELECT coalesce(array_agg(j.id ORDER BY j.id), ARRAY[]::bigint[]) INTO running
            FROM {schema}.jobs AS j
            WHERE j.workflow_id = wf.id AND j.state = 'running';

            -- The steps left are those running, recounted under the workflow's lock: each
            -- of them is counted off when the statement ending it reaches steps_ended.
            live := cardinality(running);
            UPDATE {schema}.workflows AS w
            SET state = 'cancelled', cancelled_at = coalesce(w.cancelled_at, now()),
                steps_left = live,
                finished_at = CASE WHEN live = 0 THEN now() END
            WHERE w.id = wf.id;

            PERFORM pg_notify('poel_cancel', (parse_ident('{schema}'))[1] || ' ' || r.id)
            FROM unnest(running) AS r(id);
            RETURN jsonb_build_object(
                'workflow_id', wf.id, 'name', wf.name, 'state', 'cancelled',
                'cancelled', cardinality(ended), 'stopping', live, 'finished', live = 0,
                'changed', wf.state <> 'cancelled' OR cardinality(ended) > 0 OR asked > 0);
        EXCEPTION WHEN lock_not_available THEN
            -- A running step's row is being written (its outcome, which may be waiting for
            -- this workflow's row, or a progress report): everything taken is given back.
            tries := tries + 1;
            IF tries >= 100 THEN
                RAISE EXCEPTION 'workflow %: its running steps are being written without pause; nothing was cancelled, try again', cancel_workflow.id
                    USING ERRCODE = 'lock_not_available';
            END IF;
            PERFORM pg_sleep(0.01 * least(tries, 10));
        END;
    END LOOP;
END
$$;

-- Retry a failed or cancelled workflow: its failed and cancelled steps are queued again
-- with fresh attempts (their error history kept), each waiting again for its dependencies
-- being retried with it (a step whose dependencies all succeeded is due at once); its
-- succeeded steps are not run again and keep their results, which the steps run again
-- read. The workflow is `running` again, its failure and cancel forgotten. Refused
-- (object_not_in_prerequisite_state) while it is running, or while steps of a failed or
-- cancelled workflow are still running (a step that runs anyway, a step being stopped),
-- and when some of its steps were deleted past their retention. A workflow that
-- succeeded has nothing to retry: nothing changes. An unknown id is an error
-- (no_data_found). Returns a JSON object: workflow_id, name, state, retried (the names
-- of the steps queued again, in id order), due (how many of them are due now), changed.
CREATE FUNCTION {schema}.retry_workflow(id bigint) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wf {schema}.workflows;
    live integer;
    kept integer;
    again bigint[];
    names text[];
    due integer;
BEGIN
    SELECT * INTO wf FROM {schema}.workflows AS w WHERE w.id = retry_workflow.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % does not exist', retry_workflow.id
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT count(*) INTO live FROM {schema}.jobs AS j
    WHERE j.workflow_id = wf.id AND j.state IN ('queued', 'running');
    IF wf.state = 'running' THEN
        RAISE EXCEPTION 'workflow % is running (% of its % steps not ended): only a failed or cancelled workflow is retried', wf.id, live, wf.steps
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'wait for it to end, or cancel it first';
    END IF;
    IF live > 0 THEN
        RAISE EXCEPTION 'workflow % is % but % of its steps have not ended yet: retry it once they have', wf.id, wf.state, live
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'steps that run anyway, or running steps asked to stop, end by themselves';
    END IF;
    IF wf.state = 'succeeded' THEN
        RETURN jsonb_build_object(
            'workflow_id', wf.id, 'name', wf.name, 'state', wf.state,
            'retried', jsonb_build_array(), 'due', 0, 'changed', false);
    END IF;
    SELECT count(*) INTO kept FROM {schema}.all_jobs AS j WHERE j.workflow_id = wf.id;
    IF kept < wf.steps THEN
        RAISE EXCEPTION 'workflow %: % of its % steps were deleted past their retention; it cannot be retried', wf.id, wf.steps - kept, wf.steps
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    again := {schema}.requeue_steps(ARRAY(
        SELECT j.id FROM {schema}.all_jobs AS j
        WHERE j.workflow_id = wf.id AND j.state IN ('failed', 'cancelled')), true);
    SELECT coalesce(array_agg(j.step ORDER BY j.id), ARRAY[]::text[]),
           count(*) FILTER (WHERE j.ready)
    INTO names, due
    FROM {schema}.jobs AS j WHERE j.id = ANY(again);
    UPDATE {schema}.workflows AS w
    SET state = 'running', failed_step = NULL, failed_error = NULL, cancelled_at = NULL,
        finished_at = NULL
    WHERE w.id = wf.id;
    RETURN jsonb_build_object(
        'workflow_id', wf.id, 'name', wf.name, 'state', 'running',
        'retried', to_jsonb(names), 'due', due, 'changed', true);
END
$$;

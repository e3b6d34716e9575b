-- steps_ended (0023) in time linear in the steps a statement ends (issue 20's benchmark).
--
-- 0023's version found the steps waiting on the ended ones with `depends_on = ANY(ended)`
-- and joined two materialised CTEs (the waiting steps and the edges) to count them. Both
-- are quadratic in the batch: the join compared every waiting step with every edge (its
-- CTEs' estimates made it a nested loop), and PL/pgSQL's generic plan, used after five
-- calls, walked the finished jobs by jobs_finished_idx and checked each against the whole
-- array. An outcome statement ending 750 steps (a completer's batch while 10,000
-- workflows drain) spent 171 ms there, so the next batch was larger still, and a busy
-- machine turned a 25 s drain into two minutes. Here the edges are read from the ended
-- ids (unnest, one probe of job_dependencies' primary key each), counted by waiting step
-- first, and that count joined to the step's row by its primary key as it is locked: no
-- step of the batch meets another. Same results, same locks in the same order (the
-- workflows first, then the waiting steps in id order).
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE FUNCTION {schema}.steps_ended(ids bigint[]) RETURNS void
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
        -- Read from the ended ids (each a probe of job_dependencies' primary key), and
        -- counted before they are locked, so that no step of the batch meets another.
        WITH edges AS (
            SELECT d.job_id, count(*)::integer AS satisfied,
                   bool_or(p.state <> 'succeeded') AS unsatisfied,
                   min(p.step) FILTER (WHERE p.state <> 'succeeded') AS failed_step
            FROM (SELECT DISTINCT e.id FROM unnest(ended) AS e(id)) AS e
            JOIN {schema}.job_dependencies AS d ON d.depends_on = e.id
            JOIN {schema}.jobs AS p ON p.id = d.depends_on
            WHERE p.state IN ('succeeded', 'failed', 'cancelled')
            GROUP BY d.job_id
        ), counted AS (
            SELECT j.id, e.satisfied,
                   e.unsatisfied AND NOT coalesce(j.run_anyway, false) AS cancel,
                   e.failed_step
            FROM edges AS e
            JOIN {schema}.jobs AS j ON j.id = e.job_id
            WHERE j.state = 'queued' AND j.workflow_id IS NOT NULL
            ORDER BY j.id
            FOR UPDATE OF j
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

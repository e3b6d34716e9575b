-- steps_ended (0023) in time linear in the steps a statement ends (issue 20's benchmark).
--
-- 0023's version read the ended steps with `id = ANY(ended)` and `state IN (finished
-- states)`, found the steps waiting on them with `depends_on = ANY(ended)`, and joined two
-- materialised CTEs (the waiting steps and the edges) to count them. PL/pgSQL plans its
-- statements generically after five calls, and with statistics taken before the jobs
-- finished (a queue's are always stale), the generic plans read every finished job still
-- in the table through jobs_finished_idx (whose predicate the state test implies) and
-- tested each against the whole array; and the join compared every waiting step with
-- every edge. So an outcome statement ending 750 steps spent 171 ms there while 10,000
-- workflows drained, the completer's next batch grew, and a busy machine made the drain
-- 4.8 times the independent jobs'; with 30,000 finished jobs not yet archived, the
-- workflows' update alone took 71 ms for 100 steps. Here every statement is driven from
-- the ids: each job and each dependency is read by its primary key in a LATERAL subquery
-- (OFFSET 0 keeps it one, so no plan, custom or generic, turns it into a scan of the table
-- or of a partial index), and the edges are counted by waiting step before each waiting
-- step is locked.
-- Same results, same locks in the same order (the workflows first, then the waiting
-- steps in id order).
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE FUNCTION {schema}.steps_ended(ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ended bigint[] := ids;
    released integer := 0;
    count_released integer;
BEGIN
    PERFORM FROM {schema}.workflows AS w
    WHERE w.id IN (SELECT j.workflow_id
                   FROM (SELECT DISTINCT unnest(ids)) AS e(id)
                   CROSS JOIN LATERAL (SELECT workflow_id FROM {schema}.jobs
                                       WHERE id = e.id OFFSET 0) AS j
                   WHERE j.workflow_id IS NOT NULL)
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
              FROM (SELECT DISTINCT unnest(ended)) AS e(id)
              CROSS JOIN LATERAL (SELECT id, workflow_id, step, state, finished_at, last_error
                                  FROM {schema}.jobs WHERE id = e.id OFFSET 0) AS j
              WHERE j.workflow_id IS NOT NULL
                AND j.state IN ('succeeded', 'failed', 'cancelled')
              GROUP BY j.workflow_id) AS e
        WHERE w.id = e.workflow_id;

        -- The steps waiting on them, locked in id order, then counted down or cancelled.
        -- Read from the ended ids, each row by its primary key (a LATERAL subquery that
        -- OFFSET 0 keeps from being flattened into a join the planner may turn into a
        -- scan), counted by waiting step, then each waiting step locked by its primary
        -- key in id order (as the claim locks its rows).
        WITH edges AS (
            SELECT d.job_id, count(*)::integer AS satisfied,
                   bool_or(p.state <> 'succeeded') AS unsatisfied,
                   min(p.step) FILTER (WHERE p.state <> 'succeeded') AS failed_step
            FROM (SELECT DISTINCT unnest(ended)) AS e(id)
            CROSS JOIN LATERAL (SELECT state, step FROM {schema}.jobs
                                WHERE id = e.id OFFSET 0) AS p
            CROSS JOIN LATERAL (SELECT job_id FROM {schema}.job_dependencies
                                WHERE depends_on = e.id OFFSET 0) AS d
            WHERE p.state IN ('succeeded', 'failed', 'cancelled')
            GROUP BY d.job_id
        ), counted AS (
            SELECT j.id, e.satisfied,
                   e.unsatisfied AND NOT coalesce(j.run_anyway, false) AS cancel,
                   e.failed_step
            FROM (SELECT * FROM edges ORDER BY job_id) AS e
            CROSS JOIN LATERAL (
                SELECT id, run_anyway FROM {schema}.jobs
                WHERE id = e.job_id AND state = 'queued' AND workflow_id IS NOT NULL
                FOR UPDATE
            ) AS j
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

-- The claim of steered jobs (issue 19): the jobs of a type with a steering row, and the
-- jobs of a queue with one, which the plain claim (claim_jobs in queries.sql) skips.
-- Called by a worker after its plain claim when its lane has steered types or a queue is
-- steered (see poel_host/store/jobs.py); returns the rows claimed, as claim_jobs does, and
-- one more row with a NULL id whose reopens_at is the earliest time a rate window this
-- claim found full opens again (NULL when none): the worker sleeps until then, without
-- polling a closed window.
--
-- Exact across workers: each gate (a type's limit, a key's, a queue's) is taken with a
-- transaction-scoped advisory lock before its running jobs and window are counted, and
-- held until the claim commits, so no two claims count the same gate at once. The lock is
-- tried, not waited for (pg_try_advisory_xact_lock): a claim that finds a gate taken
-- leaves that gate's jobs to the claim holding it, and no two claims can deadlock on two
-- gates taken in opposite orders. Counting after the lock, in a statement of its own,
-- sees every claim that held it before (their commit came before their unlock).
--
-- Per type, set by set (the claim's cost is a few statements a type, not a job): the
-- candidates in claim order (fair types: each key's queued jobs ranked, by rank over the
-- key's weight, so every key with jobs gets its turn in the first rounds whatever another
-- key's backlog); the gates they need, locked and counted; then the candidates taken in
-- order while every gate they need has the slots and starts left (a candidate refused by
-- one gate takes nothing from the others).
CREATE FUNCTION {schema}.claim_steered(
    job_types text[], queues text[], lim integer, owner text, token uuid, lease_ms bigint)
RETURNS TABLE (id bigint, queue text, job_type text, payload text, attempts integer,
               max_attempts integer, created_at timestamptz, snoozes integer,
               reopens_at timestamptz)
LANGUAGE plpgsql AS $fn$
DECLARE
    t text;
    s {schema}.steering;
    steered_queues text[];
    paused_queues text[];
    taken integer := 0;
    reopen timestamptz;
    ts timestamptz;
    c_ids bigint[]; c_queues text[]; c_keys text[];
    g_names text[]; g_conc integer[]; g_rate integer[]; g_per integer[];
    g_kind text[]; g_key text[]; g_queue text[];
    locked text[];
    slots_left jsonb; starts_left jsonb;
    accepted bigint[]; acc_gates text[];
    i integer; g1 text; g2 text; w integer; ok boolean;
    per_key_limit integer;
BEGIN
    steered_queues := ARRAY(SELECT st.name FROM {schema}.steering AS st
                            WHERE st.kind = 'queue'
                              AND (queues IS NULL OR st.name = ANY(queues)));
    paused_queues := ARRAY(SELECT p.name FROM {schema}.pauses AS p WHERE p.kind = 'queue');
    FOR t IN SELECT u.t FROM unnest(job_types) AS u(t) ORDER BY random() LOOP
        EXIT WHEN taken >= lim;
        SELECT * INTO s FROM {schema}.steering AS st WHERE st.kind = 'type' AND st.name = t;
        CONTINUE WHEN s.name IS NULL AND cardinality(steered_queues) = 0;
        CONTINUE WHEN EXISTS (SELECT FROM {schema}.pauses AS p
                              WHERE p.kind = 'type' AND p.name = t);
        w := coalesce(s.weight, 1);

        -- The candidates, in the order they are to be taken.
        IF s.per_key OR s.fair THEN
            per_key_limit := lim;
            IF s.per_key AND s.concurrency IS NOT NULL THEN
                per_key_limit := least(per_key_limit, s.concurrency / w);
            END IF;
            IF s.per_key AND s.rate IS NOT NULL THEN
                per_key_limit := least(per_key_limit, s.rate);
            END IF;
            WITH RECURSIVE keys(k) AS (
                (SELECT j.key FROM {schema}.jobs AS j
                 WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL AND j.job_type = t
                 ORDER BY j.key LIMIT 1)
                UNION ALL
                SELECT (SELECT j.key FROM {schema}.jobs AS j
                        WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                          AND j.job_type = t AND j.key > keys.k
                        ORDER BY j.key LIMIT 1)
                FROM keys WHERE keys.k IS NOT NULL
            ), some_keys AS (
                SELECT keys.k FROM keys WHERE keys.k IS NOT NULL LIMIT 1000
            ), cands AS (
                SELECT h.id, h.queue, h.key, h.priority, h.run_at,
                       (h.rank - 1) / coalesce((s.key_weights ->> h.key)::float8, 1) AS turn
                FROM some_keys CROSS JOIN LATERAL (
                    SELECT j.id, j.queue, j.key, j.priority, j.run_at,
                           row_number() OVER (ORDER BY j.priority DESC, j.run_at, j.id) AS rank
                    FROM {schema}.jobs AS j
                    WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                      AND j.job_type = t AND j.key = some_keys.k AND j.run_at <= now()
                      AND (queues IS NULL OR j.queue = ANY(queues))
                      AND j.queue <> ALL(paused_queues)
                    ORDER BY j.priority DESC, j.run_at, j.id
                    LIMIT per_key_limit) AS h
                UNION ALL
                -- Jobs without a key are one more key; looked for among the type's first
                -- 200 queued jobs only, so that a keyed backlog is not read whole for them.
                SELECT n.id, n.queue, n.key, n.priority, n.run_at,
                       (row_number() OVER (ORDER BY n.priority DESC, n.run_at, n.id) - 1)::float8
                FROM (SELECT j.id, j.queue, j.key, j.priority, j.run_at
                      FROM {schema}.jobs AS j
                      WHERE j.state = 'queued' AND j.ready AND j.job_type = t
                        AND j.run_at <= now()
                        AND (queues IS NULL OR j.queue = ANY(queues))
                        AND j.queue <> ALL(paused_queues)
                      ORDER BY j.priority DESC, j.run_at, j.id
                      LIMIT 200) AS n
                WHERE n.key IS NULL
            )
            SELECT array_agg(x.id ORDER BY x.turn, x.priority DESC, x.run_at, x.id),
                   array_agg(x.queue ORDER BY x.turn, x.priority DESC, x.run_at, x.id),
                   array_agg(x.key ORDER BY x.turn, x.priority DESC, x.run_at, x.id)
            INTO c_ids, c_queues, c_keys
            FROM (SELECT * FROM cands
                  ORDER BY cands.turn, cands.priority DESC, cands.run_at, cands.id
                  LIMIT lim * 4) AS x;
        ELSE
            SELECT array_agg(x.id ORDER BY x.priority DESC, x.run_at, x.id),
                   array_agg(x.queue ORDER BY x.priority DESC, x.run_at, x.id),
                   array_agg(x.key ORDER BY x.priority DESC, x.run_at, x.id)
            INTO c_ids, c_queues, c_keys
            FROM (SELECT j.id, j.queue, j.key, j.priority, j.run_at
                  FROM {schema}.jobs AS j
                  WHERE j.state = 'queued' AND j.ready AND j.job_type = t AND j.run_at <= now()
                    AND (queues IS NULL OR j.queue = ANY(queues))
                    AND j.queue <> ALL(paused_queues)
                    AND (s.name IS NOT NULL OR j.queue = ANY(steered_queues))
                  ORDER BY j.priority DESC, j.run_at, j.id
                  LIMIT lim * 4) AS x;
        END IF;
        CONTINUE WHEN c_ids IS NULL;

        -- The gates they need: the type's (or each key's), and each steered queue's.
        SELECT coalesce(array_agg(g.name), ARRAY[]::text[]), array_agg(g.conc),
               array_agg(g.rate), array_agg(g.per), array_agg(g.kind), array_agg(g.k),
               array_agg(g.q)
        INTO g_names, g_conc, g_rate, g_per, g_kind, g_key, g_queue
        FROM (
            SELECT DISTINCT ON (name) name, conc, rate, per, kind, k, q FROM (
                SELECT CASE WHEN s.per_key THEN 'key:' || t || ':' || coalesce(c.k, '')
                            ELSE 'type:' || t END AS name,
                       s.concurrency AS conc, s.rate, s.per_ms AS per,
                       CASE WHEN s.per_key THEN 'key' ELSE 'type' END AS kind, c.k, NULL AS q
                FROM unnest(c_keys) AS c(k)
                WHERE s.concurrency IS NOT NULL OR s.rate IS NOT NULL
                UNION ALL
                SELECT 'queue:' || st.name, st.concurrency, st.rate, st.per_ms, 'queue', NULL,
                       st.name
                FROM {schema}.steering AS st
                WHERE st.kind = 'queue' AND st.name = ANY(c_queues)
            ) AS all_gates
        ) AS g;

        -- Lock them (a gate another claim holds is left to it) ...
        locked := ARRAY(SELECT gn FROM unnest(g_names) AS gn
                        WHERE pg_try_advisory_xact_lock(
                            hashtextextended('poel.gate:{schema}:' || gn, 0)));
        -- ... then count, after the lock: what is running and what started in the window.
        ts := clock_timestamp();
        SELECT coalesce(jsonb_object_agg(g.name, g.conc - g.running)
                            FILTER (WHERE g.conc IS NOT NULL), jsonb_build_object()),
               coalesce(jsonb_object_agg(g.name, g.rate - g.started)
                            FILTER (WHERE g.rate IS NOT NULL), jsonb_build_object()),
               min(g.first_start + g.per * interval '1 millisecond')
                   FILTER (WHERE g.rate IS NOT NULL AND g.started >= g.rate)
        INTO slots_left, starts_left, reopen
        FROM (
            SELECT gg.name, gg.conc, gg.rate, gg.per,
                   CASE WHEN gg.conc IS NULL THEN 0
                        WHEN gg.kind = 'queue' THEN
                            (SELECT coalesce(sum(j.slots), 0) FROM {schema}.jobs AS j
                             WHERE j.state = 'running' AND j.slots IS NOT NULL
                               AND j.queue = gg.q)
                        WHEN gg.kind = 'key' AND gg.k IS NULL THEN
                            (SELECT coalesce(sum(j.slots), 0) FROM {schema}.jobs AS j
                             WHERE j.state = 'running' AND j.slots IS NOT NULL
                               AND j.job_type = t AND j.key IS NULL)
                        WHEN gg.kind = 'key' THEN
                            (SELECT coalesce(sum(j.slots), 0) FROM {schema}.jobs AS j
                             WHERE j.state = 'running' AND j.slots IS NOT NULL
                               AND j.job_type = t AND j.key = gg.k)
                        ELSE
                            (SELECT coalesce(sum(j.slots), 0) FROM {schema}.jobs AS j
                             WHERE j.state = 'running' AND j.slots IS NOT NULL
                               AND j.job_type = t)
                   END AS running,
                   w_started.n AS started, w_started.first AS first_start
            FROM unnest(g_names, g_conc, g_rate, g_per, g_kind, g_key, g_queue)
                 AS gg(name, conc, rate, per, kind, k, q)
            CROSS JOIN LATERAL (
                SELECT count(*) AS n, min(ss.started_at) AS first
                FROM {schema}.steering_starts AS ss
                WHERE gg.rate IS NOT NULL AND ss.gate = gg.name
                  AND ss.started_at > ts - gg.per * interval '1 millisecond'
            ) AS w_started
            WHERE gg.name = ANY(locked)
        ) AS g;

        -- Take the candidates in order while their gates have room.
        accepted := ARRAY[]::bigint[];
        acc_gates := ARRAY[]::text[];
        FOR i IN 1 .. cardinality(c_ids) LOOP
            EXIT WHEN taken + cardinality(accepted) >= lim;
            g1 := NULL;
            IF s.concurrency IS NOT NULL OR s.rate IS NOT NULL THEN
                g1 := CASE WHEN s.per_key THEN 'key:' || t || ':' || coalesce(c_keys[i], '')
                           ELSE 'type:' || t END;
            END IF;
            g2 := CASE WHEN c_queues[i] = ANY(steered_queues) THEN 'queue:' || c_queues[i] END;
            ok := (g1 IS NULL OR g1 = ANY(locked)) AND (g2 IS NULL OR g2 = ANY(locked));
            IF ok THEN
                ok := coalesce((slots_left ->> g1)::integer >= w, true)
                      AND coalesce((starts_left ->> g1)::integer >= 1, true)
                      AND coalesce((slots_left ->> g2)::integer >= w, true)
                      AND coalesce((starts_left ->> g2)::integer >= 1, true);
            END IF;
            CONTINUE WHEN NOT ok;
            accepted := accepted || c_ids[i];
            IF g1 IS NOT NULL THEN
                acc_gates := acc_gates || g1;
                IF slots_left ? g1 THEN
                    slots_left := jsonb_set(slots_left, ARRAY[g1], to_jsonb((slots_left ->> g1)::integer - w));
                END IF;
                IF starts_left ? g1 THEN
                    starts_left := jsonb_set(starts_left, ARRAY[g1], to_jsonb((starts_left ->> g1)::integer - 1));
                END IF;
            END IF;
            IF g2 IS NOT NULL THEN
                acc_gates := acc_gates || g2;
                IF slots_left ? g2 THEN
                    slots_left := jsonb_set(slots_left, ARRAY[g2], to_jsonb((slots_left ->> g2)::integer - w));
                END IF;
                IF starts_left ? g2 THEN
                    starts_left := jsonb_set(starts_left, ARRAY[g2], to_jsonb((starts_left ->> g2)::integer - 1));
                END IF;
            END IF;
        END LOOP;
        CONTINUE WHEN cardinality(accepted) = 0;

        RETURN QUERY
        WITH claimed AS (
        UPDATE {schema}.jobs AS j
        SET state = 'running', attempts = j.attempts + 1, lease_owner = owner,
            lease_token = token,
            lease_expires_at = now() + lease_ms * interval '1 millisecond',
            started_at = ts, updated_at = now(), slots = w
        WHERE j.id IN (SELECT l.id FROM {schema}.jobs AS l
                       WHERE l.id = ANY(accepted) AND l.state = 'queued' AND l.ready
                       FOR UPDATE SKIP LOCKED)
        RETURNING j.id, j.queue, j.job_type, j.payload::text, j.attempts, j.max_attempts,
                  j.created_at, j.snoozes, NULL::timestamptz)
        SELECT * FROM claimed;
        GET DIAGNOSTICS i = ROW_COUNT;
        taken := taken + i;

        -- Each start enters its rate gates' windows (a claimed job's gates: it was
        -- accepted whole, and a row lost to SKIP LOCKED is rare enough to count anyway:
        -- a window then holds one start too many, never one too few).
        INSERT INTO {schema}.steering_starts (gate, started_at)
        SELECT ag, ts FROM unnest(acc_gates) AS ag WHERE starts_left ? ag;
        DELETE FROM {schema}.steering_starts AS ss
        USING unnest(g_names, g_per) AS gg(name, per)
        WHERE gg.per IS NOT NULL AND ss.gate = gg.name
          AND ss.started_at <= ts - gg.per * interval '1 millisecond';
        -- A window this claim filled opens again when its oldest start leaves it.
        reopen := least(reopen, (
            SELECT min(f.first + gg.per * interval '1 millisecond')
            FROM unnest(g_names, g_rate, g_per) AS gg(name, rate, per)
            CROSS JOIN LATERAL (SELECT min(ss.started_at) AS first, count(*) AS n
                                FROM {schema}.steering_starts AS ss
                                WHERE ss.gate = gg.name) AS f
            WHERE gg.rate IS NOT NULL AND f.n >= gg.rate));
    END LOOP;
    IF reopen IS NOT NULL THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::integer,
                            NULL::integer, NULL::timestamptz, NULL::integer, reopen;
    END IF;
END
$fn$;

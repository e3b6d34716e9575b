-- The claim of steered jobs (issue 19): the jobs of a type with a steering row, and the
-- jobs of a queue with one, which the plain claim (claim_jobs in queries.sql) skips.
-- Called by a worker before its plain claim when its lane has steered types or a queue is
-- steered (see poel_host/worker/producer.py); returns the rows claimed, as claim_jobs
-- does, and one more row with a NULL id whose reopens_at is when the worker should claim
-- again: the earliest time a rate window this claim found full opens, or now when the
-- claim took some jobs but fewer than asked (no row: at its next wake-up or poll). The
-- worker sleeps until then, without polling a closed window.
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
    i integer; w integer; g1 text; room integer;
    per_key_limit integer;
    cursor_key text; have_cursor boolean; key_list text[]; total_weight float8;
    last_pos integer;
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
        key_list := ARRAY[]::text[];

        -- The candidates, in the order they are to be taken.
        IF s.per_key OR s.fair THEN
            per_key_limit := lim;
            IF s.per_key AND s.concurrency IS NOT NULL THEN
                per_key_limit := least(per_key_limit, s.concurrency / w);
            END IF;
            IF s.per_key AND s.rate IS NOT NULL THEN
                per_key_limit := least(per_key_limit, s.rate);
            END IF;
            -- The keys with jobs due, in key order from where the last claim of the type
            -- stopped (steering_cursors), wrapping round: `lim` keys at most, so that a
            -- claim reads a few index entries a key it can serve, however many keys wait,
            -- and the keys past those get their turn in the next claims.
            SELECT sc.after_key INTO cursor_key
            FROM {schema}.steering_cursors AS sc WHERE sc.job_type = t;
            have_cursor := FOUND;
            key_list := ARRAY(
                WITH RECURSIVE keys(k) AS (
                    (SELECT j.key FROM {schema}.jobs AS j
                     WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                       AND j.job_type = t AND (cursor_key IS NULL OR j.key > cursor_key)
                     ORDER BY j.key LIMIT 1)
                    UNION ALL
                    SELECT (SELECT j.key FROM {schema}.jobs AS j
                            WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                              AND j.job_type = t AND j.key > keys.k
                            ORDER BY j.key LIMIT 1)
                    FROM keys WHERE keys.k IS NOT NULL
                )
                SELECT keys.k FROM keys WHERE keys.k IS NOT NULL LIMIT lim);
            IF cardinality(key_list) < lim AND cursor_key IS NOT NULL THEN
                key_list := key_list || ARRAY(
                    WITH RECURSIVE keys(k) AS (
                        (SELECT j.key FROM {schema}.jobs AS j
                         WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                           AND j.job_type = t
                         ORDER BY j.key LIMIT 1)
                        UNION ALL
                        SELECT (SELECT j.key FROM {schema}.jobs AS j
                                WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                                  AND j.job_type = t AND j.key > keys.k
                                ORDER BY j.key LIMIT 1)
                        FROM keys WHERE keys.k IS NOT NULL AND keys.k < cursor_key
                    )
                    SELECT keys.k FROM keys WHERE keys.k IS NOT NULL AND keys.k <= cursor_key
                    LIMIT lim - cardinality(key_list));
            END IF;
            -- Each key's share of the claim, by weight, is what it needs of candidates
            -- (twice an even share at least, so that keys with fewer jobs than their
            -- share leave the others enough); a claim left short by it is followed by
            -- another at once (see the end).
            SELECT coalesce(sum(coalesce((s.key_weights ->> kl)::float8, 1)), 1)
            INTO total_weight FROM unnest(key_list) AS kl;
            -- The candidates are locked as they are read (SKIP LOCKED): two claims of a
            -- fair type that no gate serialises read the same keys in the same order, and
            -- each takes the next rows instead of colliding on the first.
            WITH heads AS (
                SELECT h.id, h.queue, h.key, h.priority, h.run_at
                FROM unnest(key_list) AS kl(k) CROSS JOIN LATERAL (
                    SELECT j.id, j.queue, j.key, j.priority, j.run_at
                    FROM {schema}.jobs AS j
                    WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                      AND j.job_type = t AND j.key = kl.k AND j.run_at <= now()
                      AND (queues IS NULL OR j.queue = ANY(queues))
                      AND j.queue <> ALL(paused_queues)
                    ORDER BY j.priority DESC, j.run_at, j.id
                    LIMIT least(per_key_limit, greatest(
                        ceil(lim * coalesce((s.key_weights ->> kl.k)::float8, 1) / total_weight),
                        ceil(2.0 * lim / greatest(cardinality(key_list), 1)))::integer)
                    FOR UPDATE SKIP LOCKED
                    ) AS h
                UNION ALL
                -- Jobs without a key (enqueued without one) are one more key; looked for
                -- among the type's first `lim` queued jobs only, so that a keyed backlog is
                -- not read whole for them.
                SELECT n.id, n.queue, n.key, n.priority, n.run_at
                FROM (SELECT j.id FROM {schema}.jobs AS j
                      WHERE j.state = 'queued' AND j.ready AND j.job_type = t
                        AND j.run_at <= now()
                      ORDER BY j.priority DESC, j.run_at, j.id
                      LIMIT lim) AS first_ones
                CROSS JOIN LATERAL (
                    SELECT j.id, j.queue, j.key, j.priority, j.run_at
                    FROM {schema}.jobs AS j
                    WHERE j.id = first_ones.id AND j.key IS NULL
                      AND j.state = 'queued' AND j.ready
                      AND (queues IS NULL OR j.queue = ANY(queues))
                      AND j.queue <> ALL(paused_queues)
                    FOR UPDATE SKIP LOCKED) AS n
            ), cands AS (
                SELECT heads.*,
                       (row_number() OVER (PARTITION BY heads.key
                                           ORDER BY heads.priority DESC, heads.run_at, heads.id)
                        - 1) / coalesce((s.key_weights ->> heads.key)::float8, 1) AS turn
                FROM heads
            )
            -- (Aggregated in the order of the subquery: one sort, not one an array.)
            SELECT array_agg(x.id), array_agg(x.queue), array_agg(x.key)
            INTO c_ids, c_queues, c_keys
            FROM (SELECT * FROM cands
                  ORDER BY cands.turn, cands.priority DESC, cands.run_at, cands.id
                  LIMIT lim * 2) AS x;
        ELSE
            SELECT array_agg(x.id), array_agg(x.queue), array_agg(x.key)
            INTO c_ids, c_queues, c_keys
            FROM (SELECT j.id, j.queue, j.key, j.priority, j.run_at
                  FROM {schema}.jobs AS j
                  WHERE j.state = 'queued' AND j.ready AND j.job_type = t AND j.run_at <= now()
                    AND (queues IS NULL OR j.queue = ANY(queues))
                    AND j.queue <> ALL(paused_queues)
                    AND (s.name IS NOT NULL OR j.queue = ANY(steered_queues))
                  ORDER BY j.priority DESC, j.run_at, j.id
                  LIMIT lim * 2) AS x;
        END IF;
        CONTINUE WHEN c_ids IS NULL;

        -- The gates they need (the type's or each key's, and each steered queue's), each
        -- locked as it is listed (a gate another claim holds is left to it) ...
        SELECT coalesce(array_agg(g.name), ARRAY[]::text[]), array_agg(g.conc),
               array_agg(g.rate), array_agg(g.per), array_agg(g.kind), array_agg(g.k),
               array_agg(g.q),
               coalesce(array_agg(g.name) FILTER (WHERE pg_try_advisory_xact_lock(
                            hashtextextended('poel.gate:{schema}:' || g.name, 0))),
                        ARRAY[]::text[])
        INTO g_names, g_conc, g_rate, g_per, g_kind, g_key, g_queue, locked
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

        -- ... then counted, in a statement after the lock: what is running and what
        -- started in the window.
        slots_left := jsonb_build_object();
        starts_left := jsonb_build_object();
        IF cardinality(locked) > 0 THEN
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
                      AND ss.started_at > clock_timestamp() - gg.per * interval '1 millisecond'
                ) AS w_started
                WHERE gg.name = ANY(locked)
            ) AS g;
        END IF;
        -- The jobs start now, after the count: a job whose end committed just before the
        -- count (so that its slot was free) ended before this start, on the database's
        -- clock too, and the window this start enters was counted up to before it.
        ts := clock_timestamp();

        -- Take the candidates in order while their gates have room: a candidate is
        -- taken when, counting it and every candidate before it at the same gate, each of
        -- its gates (its type's or key's, its queue's) has the slots and the starts left.
        -- One statement, set by set; a candidate refused by one gate still counts at the
        -- other, so a claim may take fewer than would fit (the next claim takes them),
        -- never more.
        IF NOT coalesce(s.per_key, false) AND cardinality(steered_queues) = 0 THEN
            -- One gate for all (the type's) or none: the first candidates, as many as it
            -- has room for.
            g1 := CASE WHEN s.concurrency IS NOT NULL OR s.rate IS NOT NULL
                       THEN 'type:' || t END;
            room := lim - taken;
            IF g1 IS NOT NULL THEN
                room := CASE WHEN g1 = ANY(locked) THEN least(
                            room,
                            coalesce((slots_left ->> g1)::integer / w, room),
                            coalesce((starts_left ->> g1)::integer, room))
                        ELSE 0 END;
            END IF;
            room := greatest(room, 0);
            accepted := c_ids[1:room];
            acc_gates := CASE WHEN g1 IS NULL THEN ARRAY[]::text[]
                              ELSE array_fill(g1, ARRAY[cardinality(accepted)]) END;
            SELECT coalesce(max(array_position(key_list, ck)), 0) INTO last_pos
            FROM unnest(c_keys[1:room]) AS ck;
        ELSE
            SELECT coalesce(array_agg(x.id ORDER BY x.ord), ARRAY[]::bigint[]),
                   coalesce(array_agg(x.g1) FILTER (WHERE x.g1 IS NOT NULL), ARRAY[]::text[])
                       || coalesce(array_agg(x.g2) FILTER (WHERE x.g2 IS NOT NULL), ARRAY[]::text[]),
                   coalesce(max(array_position(key_list, x.key)), 0)
            INTO accepted, acc_gates, last_pos
            FROM (
                SELECT y.* FROM (
                    SELECT c.*,
                           sum(w) OVER (PARTITION BY c.g1 ORDER BY c.ord) AS used1,
                           count(*) OVER (PARTITION BY c.g1 ORDER BY c.ord) AS n1,
                           sum(w) OVER (PARTITION BY c.g2 ORDER BY c.ord) AS used2,
                           count(*) OVER (PARTITION BY c.g2 ORDER BY c.ord) AS n2
                    FROM (
                        SELECT u.ord, u.id, u.key,
                               CASE WHEN s.concurrency IS NOT NULL OR s.rate IS NOT NULL THEN
                                   CASE WHEN s.per_key THEN 'key:' || t || ':' || coalesce(u.key, '')
                                        ELSE 'type:' || t END
                               END AS g1,
                               CASE WHEN u.queue = ANY(steered_queues) THEN 'queue:' || u.queue
                               END AS g2
                        FROM unnest(c_ids, c_queues, c_keys) WITH ORDINALITY
                             AS u(id, queue, key, ord)
                    ) AS c
                    WHERE (c.g1 IS NULL OR c.g1 = ANY(locked))
                      AND (c.g2 IS NULL OR c.g2 = ANY(locked))
                ) AS y
                WHERE (y.g1 IS NULL OR (coalesce(y.used1 <= (slots_left ->> y.g1)::integer, true)
                                        AND coalesce(y.n1 <= (starts_left ->> y.g1)::integer, true)))
                  AND (y.g2 IS NULL OR (coalesce(y.used2 <= (slots_left ->> y.g2)::integer, true)
                                        AND coalesce(y.n2 <= (starts_left ->> y.g2)::integer, true)))
                ORDER BY y.ord
                LIMIT lim - taken
            ) AS x;
        END IF;
        IF NOT coalesce(s.per_key OR s.fair, false) THEN
            last_pos := 0;
        END IF;
        CONTINUE WHEN cardinality(accepted) = 0;

        -- The next claim of the type starts after the last key this one served (left as
        -- it is when another claim holds the cursor: no claim waits for it).
        IF last_pos > 0 THEN
            IF have_cursor THEN
                UPDATE {schema}.steering_cursors AS sc SET after_key = key_list[last_pos]
                WHERE sc.job_type IN (SELECT x.job_type FROM {schema}.steering_cursors AS x
                                      WHERE x.job_type = t FOR UPDATE SKIP LOCKED);
            ELSIF pg_try_advisory_xact_lock(hashtextextended('poel.cursor:{schema}:' || t, 0))
            THEN
                -- The first claim of the type makes its cursor; a claim racing it leaves
                -- it (an insert of the same key would wait for the other's commit).
                INSERT INTO {schema}.steering_cursors (job_type, after_key)
                VALUES (t, key_list[last_pos]) ON CONFLICT DO NOTHING;
            END IF;
        END IF;

        RETURN QUERY
        WITH claimed AS (
        UPDATE {schema}.jobs AS j
        SET state = 'running', attempts = j.attempts + 1, lease_owner = owner,
            lease_token = token,
            lease_expires_at = now() + lease_ms * interval '1 millisecond',
            started_at = ts, updated_at = now(), slots = w
        -- (An array, so that each row is found by its primary key: as a subquery the
        -- planner joined it to a scan of the whole table.)
        WHERE j.id = ANY(ARRAY(SELECT l.id FROM {schema}.jobs AS l
                               WHERE l.id = ANY(accepted) AND l.state = 'queued' AND l.ready
                               FOR UPDATE SKIP LOCKED))
        RETURNING j.id, j.queue, j.job_type, j.payload::text, j.attempts, j.max_attempts,
                  j.created_at, j.snoozes, NULL::timestamptz)
        SELECT * FROM claimed;
        GET DIAGNOSTICS i = ROW_COUNT;
        taken := taken + i;

        -- Each start enters its rate gates' windows (a claimed job's gates: it was
        -- accepted whole, and a row lost to SKIP LOCKED is rare enough to count anyway:
        -- a window then holds one start too many, never one too few).
        CONTINUE WHEN starts_left = jsonb_build_object();
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
    -- A claim that took jobs but fewer than asked may have been held back by the keys'
    -- shares, not by a lack of jobs: the worker claims again at once (reopens now), and
    -- stops when a claim takes none.
    IF taken > 0 AND taken < lim THEN
        reopen := least(reopen, clock_timestamp());
    END IF;
    IF reopen IS NOT NULL THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::integer,
                            NULL::integer, NULL::timestamptz, NULL::integer, reopen;
    END IF;
END
$fn$;

-- The per-key claim, cheaper and never stuck behind keys at their limit (issue 19). What
-- changes from migration 0021's claim_steered, whose contract (arguments, rows,
-- reopens_at) is not:
--
-- 1. A per-key type is claimed by one claim at a time (a lock of the type's keys, tried:
--    the other claims pass the type over, as they pass over a type's own gate). Each
--    key's gate is then counted where the walk of the keys reaches it, in one statement
--    that walks, counts and locks the candidates, and the next takes them: two
--    statements where there were four (walk and lock the keys' gates, count and accept,
--    move the cursor, take).
-- 2. A key at its limit (or with its rate window full) gives no candidate and the walk
--    goes on past it: a claim whose next keys are all at their limit once took nothing
--    and left the cursor where it was, so the keys after them waited for those keys'
--    jobs to end. The cursor now moves past every key the claim saw, and a full key's
--    window still says when it opens.
-- 3. A per-key type whose queue is steered is claimed as before (each gate locked as it
--    is listed), under the same lock of the type's keys.
CREATE OR REPLACE FUNCTION {schema}.claim_steered(
    job_types text[], queues text[], lim integer, owner text, token uuid, lease_ms bigint)
RETURNS TABLE (id bigint, queue text, job_type text, payload text, attempts integer,
               max_attempts integer, created_at timestamptz, snoozes integer,
               reopens_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $fn$
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
    slots_left jsonb; starts_left jsonb; firsts jsonb;
    running integer; started integer; first_start timestamptz;
    accepted bigint[]; acc_gates text[];
    i integer; w integer; g1 text; room integer;
    per_key_limit integer;
    cursor_key text; have_cursor boolean; key_list text[]; total_weight float8;
    last_pos integer;
    key_cap integer := 10;
    keyed boolean;
    walk_cap integer := 1000;
    window_len interval;
    k_keys text[]; k_room integer[]; k_started integer[]; k_first timestamptz[];
    last_key text; walked integer; open_keys integer;
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
        keyed := coalesce(s.per_key, false) AND cardinality(steered_queues) = 0
                 AND (s.concurrency IS NOT NULL OR s.rate IS NOT NULL);
        window_len := s.per_ms * interval '1 millisecond';

        -- One gate for all of the type's jobs (its limit, its rate), and no queue of
        -- theirs steered: the gate is known before any job is read, so it is locked and
        -- counted first; then the jobs are taken, as many as it has room for. A type
        -- with no key is claimed as the plain claim claims, in the statement that writes
        -- the starts; a fair type's keys are walked for as many (below).
        g1 := NULL;
        room := lim - taken;
        started := NULL;
        first_start := NULL;
        running := 0;
        IF NOT coalesce(s.per_key, false) AND cardinality(steered_queues) = 0
           AND (s.concurrency IS NOT NULL OR s.rate IS NOT NULL) THEN
            g1 := 'type:' || t;
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(
                hashtextextended('poel.gate:{schema}:' || g1, 0));
            -- Counted in a statement after the lock (see the top).
            SELECT (SELECT coalesce(sum(j.slots), 0) FROM {schema}.jobs AS j
                    WHERE s.concurrency IS NOT NULL AND j.state = 'running'
                      AND j.slots IS NOT NULL AND j.job_type = t),
                   ws.n, ws.first
            INTO running, started, first_start
            FROM (SELECT coalesce(sum(ss.n), 0)::integer AS n, min(ss.started_at) AS first
                  FROM {schema}.steering_starts AS ss
                  WHERE s.rate IS NOT NULL AND ss.gate = g1
                    AND ss.started_at > clock_timestamp() - s.per_ms * interval '1 millisecond'
                 ) AS ws;
            IF s.concurrency IS NOT NULL THEN
                room := least(room, (s.concurrency - running) / w);
            END IF;
            IF s.rate IS NOT NULL THEN
                room := least(room, s.rate - started);
                IF started >= s.rate THEN
                    reopen := least(reopen, first_start + s.per_ms * interval '1 millisecond');
                END IF;
            END IF;
            CONTINUE WHEN room <= 0;
        END IF;
        IF NOT coalesce(s.per_key OR s.fair, false) AND cardinality(steered_queues) = 0 THEN
            ts := clock_timestamp();  -- after the count (see below)
            RETURN QUERY
            WITH claimed AS (
                UPDATE {schema}.jobs AS j
                SET state = 'running', attempts = j.attempts + 1, lease_owner = owner,
                    lease_token = token,
                    lease_expires_at = now() + lease_ms * interval '1 millisecond',
                    started_at = ts, updated_at = now(), slots = w
                -- (An array, so that each row is found by its primary key: joined to the
                -- generic plan's guess of a LIMIT's rows, a hash of the whole table.)
                WHERE j.id = ANY(ARRAY(
                    SELECT locked.id
                    FROM (SELECT c.id FROM {schema}.jobs AS c
                          WHERE c.state = 'queued' AND c.ready AND c.job_type = t
                          ORDER BY c.priority DESC, c.run_at, c.id) AS c
                    CROSS JOIN LATERAL (
                        SELECT l.id FROM {schema}.jobs AS l
                        WHERE l.id = c.id AND l.state::text = 'queued' AND l.ready
                          AND l.run_at <= now()
                          AND (queues IS NULL OR l.queue = ANY(queues))
                          AND l.queue <> ALL(paused_queues)
                        FOR UPDATE SKIP LOCKED) AS locked
                    LIMIT room))
                RETURNING j.id, j.queue, j.job_type, j.payload::text, j.attempts,
                          j.max_attempts, j.created_at, j.snoozes
            ), entered AS (
                -- The claim's starts enter the window as one row (n of them) ...
                INSERT INTO {schema}.steering_starts (gate, started_at, n)
                SELECT g1, ts, count(*) FROM claimed
                WHERE s.rate IS NOT NULL HAVING count(*) > 0
            ), left_window AS (
                -- ... and the starts that left it are trimmed.
                DELETE FROM {schema}.steering_starts AS ss
                WHERE s.rate IS NOT NULL AND ss.gate = g1
                  AND ss.started_at <= ts - s.per_ms * interval '1 millisecond'
            )
            SELECT claimed.*, NULL::timestamptz FROM claimed;
            GET DIAGNOSTICS i = ROW_COUNT;
            taken := taken + i;
            -- A window this claim filled opens again when its oldest start leaves it.
            IF s.rate IS NOT NULL AND i > 0 AND started + i >= s.rate THEN
                reopen := least(reopen, coalesce(first_start, ts)
                                        + s.per_ms * interval '1 millisecond');
            END IF;
            CONTINUE;
        END IF;

        -- A per-key type: one claim of it at a time (the other claims pass it over), so
        -- that each key's gate is counted where the walk reaches it, in the statement
        -- after this lock (a count in the statement that takes a key's lock would miss a
        -- claim that committed after the statement began).
        IF coalesce(s.per_key, false) THEN
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(
                hashtextextended('poel.gate:{schema}:keys:' || t, 0));
        END IF;
        IF keyed THEN
            -- The keys with jobs due are walked in key order from where the last claim of
            -- the type stopped (steering_cursors), wrapping round once. Each key's gate is
            -- counted as the walk reaches it, then its candidates are locked: its share
            -- of a claim of `key_cap` keys (by weight), no more than its gate has room
            -- for. A key at its limit gives none and the walk goes on past it, until the
            -- claim is full, every key is seen, or `walk_cap` keys are. Jobs without a key
            -- come first, as one more key, looked for among the type's first `key_cap`
            -- queued jobs only (a keyed backlog is not read whole for them).
            room := lim - taken;
            cursor_key := (SELECT sc.after_key FROM {schema}.steering_cursors AS sc
                           WHERE sc.job_type = t);
            WITH RECURSIVE walk(pos, k, wrapped, ids, total, room_k, started, first) AS (
                SELECT 0, NULL::text, false, c.ids[1:greatest(g.room_k, 0)],
                       least(cardinality(c.ids), greatest(g.room_k, 0)),
                       g.room_k, g.started, g.first
                FROM (SELECT ARRAY(
                          SELECT n.id
                          FROM (SELECT j.id FROM {schema}.jobs AS j
                                WHERE j.state = 'queued' AND j.ready AND j.job_type = t
                                  AND j.run_at <= now()
                                ORDER BY j.priority DESC, j.run_at, j.id
                                LIMIT key_cap) AS first_ones
                          CROSS JOIN LATERAL (
                              SELECT j.id FROM {schema}.jobs AS j
                              WHERE j.id = first_ones.id AND j.key IS NULL
                                AND j.state = 'queued' AND j.ready
                                AND (queues IS NULL OR j.queue = ANY(queues))
                                AND j.queue <> ALL(paused_queues)
                              FOR UPDATE SKIP LOCKED) AS n
                          LIMIT least(room, ceil(1.0 * room / key_cap)::integer)) AS ids
                      OFFSET 0) AS c
                -- (The keyless gate is counted only when there are such jobs.)
                LEFT JOIN LATERAL (
                    SELECT least(CASE WHEN s.concurrency IS NOT NULL THEN
                                     (s.concurrency - (SELECT coalesce(sum(j.slots), 0)
                                                       FROM {schema}.jobs AS j
                                                       WHERE j.state = 'running'
                                                         AND j.slots IS NOT NULL
                                                         AND j.job_type = t
                                                         AND j.key IS NULL)) / w END,
                                 s.rate - r.n)::integer AS room_k,
                           r.n AS started, r.first
                    FROM (SELECT coalesce(sum(ss.n), 0)::integer AS n,
                                 min(ss.started_at) AS first
                          FROM {schema}.steering_starts AS ss
                          WHERE s.rate IS NOT NULL AND ss.gate = 'key:' || t || ':'
                            AND ss.started_at > clock_timestamp() - window_len) AS r
                    WHERE cardinality(c.ids) > 0
                ) AS g ON true
                UNION ALL
                SELECT wk.pos + 1, nk.k, nk.wrapped, c.ids, wk.total + cardinality(c.ids),
                       g.room_k, g.started, g.first
                FROM walk AS wk
                -- The next key: after the cursor (first), after the last key, or, at the
                -- end of the keys, the first key once (wrapped); no further than the
                -- cursor once wrapped. (Each lateral ends in OFFSET 0: pulled up into the
                -- statement, its subqueries ran again at each use of its columns.)
                CROSS JOIN LATERAL (
                    SELECT coalesce(succ.k, CASE WHEN NOT wk.wrapped THEN
                               (SELECT j.key FROM {schema}.jobs AS j
                                WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                                  AND j.job_type = t
                                ORDER BY j.key LIMIT 1) END) AS k,
                           wk.wrapped OR succ.k IS NULL AS wrapped
                    FROM (SELECT CASE WHEN after.k IS NOT NULL THEN
                                     (SELECT j.key FROM {schema}.jobs AS j
                                      WHERE j.state = 'queued' AND j.ready
                                        AND j.key IS NOT NULL AND j.job_type = t
                                        AND j.key > after.k
                                      ORDER BY j.key LIMIT 1) END AS k
                          FROM (SELECT CASE WHEN wk.pos = 0 THEN cursor_key ELSE wk.k END AS k
                                OFFSET 0) AS after
                          OFFSET 0) AS succ
                    OFFSET 0
                ) AS nk
                CROSS JOIN LATERAL (
                    SELECT least(CASE WHEN s.concurrency IS NOT NULL THEN
                                     (s.concurrency - (SELECT coalesce(sum(j.slots), 0)
                                                       FROM {schema}.jobs AS j
                                                       WHERE j.state = 'running'
                                                         AND j.slots IS NOT NULL
                                                         AND j.job_type = t
                                                         AND j.key = nk.k)) / w END,
                                 s.rate - r.n)::integer AS room_k,
                           r.n AS started, r.first
                    FROM (SELECT coalesce(sum(ss.n), 0)::integer AS n,
                                 min(ss.started_at) AS first
                          FROM {schema}.steering_starts AS ss
                          WHERE s.rate IS NOT NULL AND ss.gate = 'key:' || t || ':' || nk.k
                            AND ss.started_at > clock_timestamp() - window_len) AS r
                    OFFSET 0
                ) AS g
                CROSS JOIN LATERAL (
                    SELECT ARRAY(
                        SELECT j.id FROM {schema}.jobs AS j
                        WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                          AND j.job_type = t AND j.key = nk.k AND j.run_at <= now()
                          AND (queues IS NULL OR j.queue = ANY(queues))
                          AND j.queue <> ALL(paused_queues)
                        ORDER BY j.priority DESC, j.run_at, j.id
                        LIMIT greatest(0, least(
                            g.room_k, room - wk.total,
                            ceil(1.0 * room / key_cap
                                 * coalesce((s.key_weights ->> nk.k)::float8, 1))::integer))
                        FOR UPDATE SKIP LOCKED) AS ids
                    OFFSET 0
                ) AS c
                WHERE wk.total < room AND wk.pos < walk_cap AND nk.k IS NOT NULL
                  AND NOT (nk.wrapped AND cursor_key IS NOT NULL AND nk.k > cursor_key)
            )
            SELECT coalesce((SELECT array_agg(u.id ORDER BY w2.pos, u.o)
                             FROM walk AS w2, unnest(w2.ids) WITH ORDINALITY AS u(id, o)),
                            ARRAY[]::bigint[]),
                   (SELECT array_agg(w2.k ORDER BY w2.pos, u.o)
                    FROM walk AS w2, unnest(w2.ids) WITH ORDINALITY AS u(id, o)),
                   array_agg(wk.k ORDER BY wk.pos), array_agg(wk.room_k ORDER BY wk.pos),
                   array_agg(wk.started ORDER BY wk.pos), array_agg(wk.first ORDER BY wk.pos),
                   (array_agg(wk.k ORDER BY wk.pos DESC))[1], max(wk.pos), max(wk.total)
            INTO c_ids, c_keys, k_keys, k_room, k_started, k_first, last_key, walked, i
            FROM walk AS wk;
            -- The walk saw every key, fewer than `key_cap`, and the claim is not full:
            -- each key with room gets its share of the whole claim instead (twice an
            -- even share at least, so that keys with fewer jobs than their share leave
            -- the others enough), read again (the rows this claim locked are read
            -- again, not skipped), and the candidates are taken in turn.
            IF i < room AND walked < key_cap THEN
                SELECT coalesce(sum(coalesce((s.key_weights ->> kk.k)::float8, 1)), 1),
                       count(*)
                INTO total_weight, open_keys
                FROM unnest(k_keys, k_room) AS kk(k, gate_room) WHERE kk.gate_room > 0;
                WITH heads AS (
                    SELECT h.id, kk.k AS key, h.priority, h.run_at
                    FROM unnest(k_keys, k_room) AS kk(k, gate_room) CROSS JOIN LATERAL (
                        SELECT j.id, j.priority, j.run_at FROM {schema}.jobs AS j
                        WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                          AND j.job_type = t AND j.key = kk.k AND j.run_at <= now()
                          AND (queues IS NULL OR j.queue = ANY(queues))
                          AND j.queue <> ALL(paused_queues)
                        ORDER BY j.priority DESC, j.run_at, j.id
                        LIMIT least(kk.gate_room, greatest(
                            ceil(room * coalesce((s.key_weights ->> kk.k)::float8, 1)
                                 / total_weight),
                            ceil(2.0 * room / open_keys))::integer)
                        FOR UPDATE SKIP LOCKED) AS h
                    WHERE kk.k IS NOT NULL AND kk.gate_room > 0
                    UNION ALL
                    SELECT n.id, NULL, n.priority, n.run_at
                    FROM (SELECT j.id FROM {schema}.jobs AS j
                          WHERE k_room[1] > 0 AND j.state = 'queued' AND j.ready
                            AND j.job_type = t AND j.run_at <= now()
                          ORDER BY j.priority DESC, j.run_at, j.id
                          LIMIT key_cap) AS first_ones
                    CROSS JOIN LATERAL (
                        SELECT j.id, j.priority, j.run_at FROM {schema}.jobs AS j
                        WHERE j.id = first_ones.id AND j.key IS NULL
                          AND j.state = 'queued' AND j.ready
                          AND (queues IS NULL OR j.queue = ANY(queues))
                          AND j.queue <> ALL(paused_queues)
                        FOR UPDATE SKIP LOCKED) AS n
                ), cands AS (
                    SELECT heads.*,
                           (row_number() OVER (PARTITION BY heads.key
                                               ORDER BY heads.priority DESC, heads.run_at,
                                                        heads.id)
                            - 1) / coalesce((s.key_weights ->> heads.key)::float8, 1) AS turn,
                           row_number() OVER (PARTITION BY heads.key
                                              ORDER BY heads.priority DESC, heads.run_at,
                                                       heads.id) AS nth
                    FROM heads
                )
                SELECT coalesce(array_agg(x.id), ARRAY[]::bigint[]), array_agg(x.key)
                INTO c_ids, c_keys
                FROM (SELECT * FROM cands
                      WHERE cands.key IS NOT NULL OR cands.nth <= k_room[1]
                      ORDER BY cands.turn, cands.priority DESC, cands.run_at, cands.id
                      LIMIT room) AS x;
            END IF;
            -- A walk cut short by `walk_cap` that found nothing still moves the cursor
            -- past the keys it read, so that the next claim (at the next wake or poll,
            -- not at once: that would walk every second's worth of keys in a loop)
            -- reads the keys after them. (One that took jobs is followed at once: the
            -- end.)
            IF cardinality(c_ids) = 0 AND walked >= walk_cap THEN
                INSERT INTO {schema}.steering_cursors (job_type, after_key)
                VALUES (t, last_key)
                ON CONFLICT ON CONSTRAINT steering_cursors_pkey
                DO UPDATE SET after_key = excluded.after_key;
            END IF;
            ts := clock_timestamp();  -- after the count (see below)
            IF cardinality(c_ids) > 0 THEN
                RETURN QUERY
                WITH claimed AS (
                    UPDATE {schema}.jobs AS j
                    SET state = 'running', attempts = j.attempts + 1, lease_owner = owner,
                        lease_token = token,
                        lease_expires_at = now() + lease_ms * interval '1 millisecond',
                        started_at = ts, updated_at = now(), slots = w
                    WHERE j.id = ANY(c_ids)  -- locked as the walk read them
                    RETURNING j.id, j.queue, j.job_type, j.payload::text, j.attempts,
                              j.max_attempts, j.created_at, j.snoozes, j.key
                ), entered AS (
                    -- Each key's starts enter its window as one row (n of them) ...
                    INSERT INTO {schema}.steering_starts (gate, started_at, n)
                    SELECT 'key:' || t || ':' || coalesce(claimed.key, ''), ts, count(*)
                    FROM claimed WHERE s.rate IS NOT NULL GROUP BY claimed.key
                ), left_window AS (
                    -- ... and the starts that left the windows of the keys walked are
                    -- trimmed.
                    DELETE FROM {schema}.steering_starts AS ss
                    WHERE s.rate IS NOT NULL
                      AND ss.gate = ANY(ARRAY(SELECT 'key:' || t || ':' || coalesce(kk, '')
                                              FROM unnest(k_keys) AS kk))
                      AND ss.started_at <= ts - window_len
                ), moved AS (
                    -- The next claim of the type starts after the last key this one saw
                    -- (keys at their limit included: they had their turn).
                    INSERT INTO {schema}.steering_cursors (job_type, after_key)
                    SELECT t, last_key WHERE last_key IS NOT NULL
                    ON CONFLICT ON CONSTRAINT steering_cursors_pkey
                    DO UPDATE SET after_key = excluded.after_key
                )
                SELECT claimed.id, claimed.queue, claimed.job_type, claimed.payload,
                       claimed.attempts, claimed.max_attempts, claimed.created_at,
                       claimed.snoozes, NULL::timestamptz
                FROM claimed;
                GET DIAGNOSTICS i = ROW_COUNT;
                taken := taken + i;
            END IF;
            -- A key's window that is full (before this claim, or by it) opens again when
            -- its oldest start leaves it.
            IF s.rate IS NOT NULL THEN
                reopen := least(reopen, (
                    SELECT min(coalesce(kk.first, ts) + window_len)
                    FROM unnest(k_keys, k_started, k_first) AS kk(k, started, first)
                    WHERE kk.started + (SELECT count(*) FROM unnest(c_keys) AS ck
                                        WHERE ck IS NOT DISTINCT FROM kk.k) >= s.rate));
            END IF;
            CONTINUE;
        END IF;

        -- The candidates, in the order they are to be taken.
        IF s.per_key OR s.fair THEN
            per_key_limit := lim;
            IF s.per_key AND s.concurrency IS NOT NULL THEN
                per_key_limit := least(per_key_limit, s.concurrency / w);
            END IF;
            IF s.per_key AND s.rate IS NOT NULL THEN
                per_key_limit := least(per_key_limit, s.rate);
            END IF;
            -- The keys with jobs due are walked in key order from where the last claim
            -- of the type stopped (steering_cursors), wrapping round, each key's
            -- candidates (its share of a claim of `key_cap` keys, by weight) locked as
            -- the walk reaches it, until the claim has `lim`: ten keys of five jobs, or
            -- fifty of one. A claim reads a few index entries for each key it serves,
            -- however many keys wait (the walk stops with its last candidate), and the
            -- keys past those get their turn in the next claims.
            SELECT sc.after_key INTO cursor_key
            FROM {schema}.steering_cursors AS sc WHERE sc.job_type = t;
            have_cursor := FOUND;
            WITH RECURSIVE after_cursor(k) AS (
                (SELECT j.key FROM {schema}.jobs AS j
                 WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                   AND j.job_type = t AND (cursor_key IS NULL OR j.key > cursor_key)
                 ORDER BY j.key LIMIT 1)
                UNION ALL
                SELECT (SELECT j.key FROM {schema}.jobs AS j
                        WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                          AND j.job_type = t AND j.key > a.k
                        ORDER BY j.key LIMIT 1)
                FROM after_cursor AS a WHERE a.k IS NOT NULL
            ), from_start(k) AS (
                (SELECT j.key FROM {schema}.jobs AS j
                 WHERE cursor_key IS NOT NULL AND j.state = 'queued' AND j.ready
                   AND j.key IS NOT NULL AND j.job_type = t
                 ORDER BY j.key LIMIT 1)
                UNION ALL
                SELECT (SELECT j.key FROM {schema}.jobs AS j
                        WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                          AND j.job_type = t AND j.key > f.k
                        ORDER BY j.key LIMIT 1)
                FROM from_start AS f WHERE f.k IS NOT NULL AND f.k < cursor_key
            ), walk(k) AS (
                SELECT a.k FROM after_cursor AS a WHERE a.k IS NOT NULL
                UNION ALL
                SELECT f.k FROM from_start AS f WHERE f.k IS NOT NULL AND f.k <= cursor_key
            ), got AS (
                SELECT x.*, row_number() OVER () AS rn FROM (
                    -- Jobs without a key first: one more key (see below).
                    SELECT n.id, n.queue, n.key, n.priority, n.run_at
                    FROM (SELECT j.id FROM {schema}.jobs AS j
                          WHERE j.state = 'queued' AND j.ready AND j.job_type = t
                            AND j.run_at <= now()
                          ORDER BY j.priority DESC, j.run_at, j.id
                          LIMIT key_cap) AS first_ones
                    CROSS JOIN LATERAL (
                        SELECT j.id, j.queue, j.key, j.priority, j.run_at
                        FROM {schema}.jobs AS j
                        WHERE j.id = first_ones.id AND j.key IS NULL
                          AND j.state = 'queued' AND j.ready
                          AND (queues IS NULL OR j.queue = ANY(queues))
                          AND j.queue <> ALL(paused_queues)
                        FOR UPDATE SKIP LOCKED) AS n
                    UNION ALL
                    SELECT h.id, h.queue, h.key, h.priority, h.run_at
                    FROM walk CROSS JOIN LATERAL (
                        SELECT j.id, j.queue, j.key, j.priority, j.run_at
                        FROM {schema}.jobs AS j
                        WHERE j.state = 'queued' AND j.ready AND j.key IS NOT NULL
                          AND j.job_type = t AND j.key = walk.k AND j.run_at <= now()
                          AND (queues IS NULL OR j.queue = ANY(queues))
                          AND j.queue <> ALL(paused_queues)
                        ORDER BY j.priority DESC, j.run_at, j.id
                        LIMIT least(per_key_limit, ceil(
                            1.0 * lim / key_cap
                            * coalesce((s.key_weights ->> walk.k)::float8, 1))::integer)
                        FOR UPDATE SKIP LOCKED) AS h
                    LIMIT room) AS x
            ), ranked AS (
                SELECT got.*,
                       (row_number() OVER (PARTITION BY got.key
                                           ORDER BY got.priority DESC, got.run_at, got.id)
                        - 1) / coalesce((s.key_weights ->> got.key)::float8, 1) AS turn
                FROM got
            )
            -- (Aggregated in the order of the subquery: one sort, not one an array.)
            SELECT array_agg(r.id), array_agg(r.queue), array_agg(r.key),
                   (SELECT coalesce(array_agg(g.key ORDER BY g.pos), ARRAY[]::text[])
                    FROM (SELECT got.key, min(got.rn) AS pos FROM got
                          WHERE got.key IS NOT NULL GROUP BY got.key) AS g)
            INTO c_ids, c_queues, c_keys, key_list
            FROM (SELECT * FROM ranked
                  ORDER BY ranked.turn, ranked.priority DESC, ranked.run_at, ranked.id) AS r;
          -- Fewer keys than that, and fewer jobs than the claim: the walk saw every key
          -- with jobs due, so their shares of the whole claim are known, and each key's
          -- candidates are read again up to its share (the rows this claim locked are
          -- read again, not skipped).
          IF cardinality(key_list) < key_cap AND coalesce(cardinality(c_ids), 0) < room THEN
            -- Each key's share of the claim, by weight, is what it needs of candidates
            -- (twice an even share at least, so that keys with fewer jobs than their share
            -- leave the others enough: fewer than ten keys lock at most about twice the
            -- claim); a claim left short by it is followed by another at once (the end).
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
                -- among the type's first `key_cap` queued jobs only, so that a keyed
                -- backlog is not read whole for them.
                SELECT n.id, n.queue, n.key, n.priority, n.run_at
                FROM (SELECT j.id FROM {schema}.jobs AS j
                      WHERE j.state = 'queued' AND j.ready AND j.job_type = t
                        AND j.run_at <= now()
                      ORDER BY j.priority DESC, j.run_at, j.id
                      LIMIT key_cap) AS first_ones
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
          END IF;
        ELSE
            -- In claim order from the type's index, each row then checked alone (one
            -- statement with every test: its generic plan sorted the type's backlog).
            SELECT array_agg(x.id), array_agg(x.queue), array_agg(x.key)
            INTO c_ids, c_queues, c_keys
            FROM (SELECT f.id, f.queue, f.key
                  FROM (SELECT j.id FROM {schema}.jobs AS j
                        WHERE j.state = 'queued' AND j.ready AND j.job_type = t
                        ORDER BY j.priority DESC, j.run_at, j.id) AS c
                  CROSS JOIN LATERAL (
                      SELECT l.id, l.queue, l.key FROM {schema}.jobs AS l
                      WHERE l.id = c.id AND l.run_at <= now()
                        AND (queues IS NULL OR l.queue = ANY(queues))
                        AND l.queue <> ALL(paused_queues)
                        AND (s.name IS NOT NULL OR l.queue = ANY(steered_queues))) AS f
                  LIMIT lim * 2) AS x;
        END IF;
        CONTINUE WHEN c_ids IS NULL;

        -- The gates they need (the type's or each key's, and each steered queue's), each
        -- locked as it is listed (a gate another claim holds is left to it) ...
        IF g1 IS NOT NULL THEN
            g_names := ARRAY[g1];
            g_per := ARRAY[s.per_ms];
            locked := ARRAY[g1];
        ELSE
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
        END IF;

        IF g1 IS NOT NULL THEN
            -- The type's gate, counted before its keys were walked.
            slots_left := CASE WHEN s.concurrency IS NULL THEN jsonb_build_object()
                               ELSE jsonb_build_object(g1, s.concurrency - running) END;
            starts_left := CASE WHEN s.rate IS NULL THEN jsonb_build_object()
                                ELSE jsonb_build_object(g1, s.rate - started) END;
            firsts := CASE WHEN first_start IS NULL THEN jsonb_build_object()
                           ELSE jsonb_build_object(g1, first_start) END;
        ELSE
            -- ... then counted, in a statement after the lock: what is running and what
            -- started in the window.
            slots_left := jsonb_build_object();
            starts_left := jsonb_build_object();
            IF cardinality(locked) > 0 THEN
                SELECT coalesce(jsonb_object_agg(g.name, g.conc - g.running)
                                    FILTER (WHERE g.conc IS NOT NULL), jsonb_build_object()),
                       coalesce(jsonb_object_agg(g.name, g.rate - g.started)
                                    FILTER (WHERE g.rate IS NOT NULL), jsonb_build_object()),
                       coalesce(jsonb_object_agg(g.name, g.first_start)
                                    FILTER (WHERE g.first_start IS NOT NULL), jsonb_build_object()),
                       min(g.first_start + g.per * interval '1 millisecond')
                           FILTER (WHERE g.rate IS NOT NULL AND g.started >= g.rate)
                INTO slots_left, starts_left, firsts, first_start
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
                        SELECT coalesce(sum(ss.n), 0) AS n, min(ss.started_at) AS first
                        FROM {schema}.steering_starts AS ss
                        WHERE gg.rate IS NOT NULL AND ss.gate = gg.name
                          AND ss.started_at > clock_timestamp() - gg.per * interval '1 millisecond'
                    ) AS w_started
                    WHERE gg.name = ANY(locked)
                ) AS g;
                reopen := least(reopen, first_start);  -- a full window's opening
            END IF;
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
            -- planner joined it to a scan of the whole table.) A fair or per-key type's
            -- candidates are this claim's already: they were locked as they were read.
            WHERE j.id = ANY(CASE WHEN s.per_key OR s.fair THEN accepted
                                  ELSE ARRAY(SELECT l.id FROM {schema}.jobs AS l
                                             WHERE l.id = ANY(accepted) AND l.state = 'queued'
                                               AND l.ready
                                             FOR UPDATE SKIP LOCKED) END)
            RETURNING j.id, j.queue, j.job_type, j.payload::text, j.attempts, j.max_attempts,
                      j.created_at, j.snoozes
        ), entered AS (
            -- Each start enters its rate gates' windows, one row a gate (n starts): a
            -- claimed job's gates, as it was accepted whole; a row lost to SKIP LOCKED is
            -- rare enough to count anyway (a window then holds one start too many, never
            -- one too few).
            INSERT INTO {schema}.steering_starts (gate, started_at, n)
            SELECT ag, ts, count(*) FROM unnest(acc_gates) AS ag
            WHERE starts_left ? ag GROUP BY ag
        ), left_window AS (
            DELETE FROM {schema}.steering_starts AS ss
            USING unnest(g_names, g_per) AS gg(name, per)
            WHERE gg.per IS NOT NULL AND ss.gate = gg.name
              AND ss.started_at <= ts - gg.per * interval '1 millisecond'
        )
        SELECT claimed.*, NULL::timestamptz FROM claimed;
        GET DIAGNOSTICS i = ROW_COUNT;
        taken := taken + i;

        -- A window this claim filled opens again when its oldest start leaves it.
        CONTINUE WHEN starts_left = jsonb_build_object();
        reopen := least(reopen, (
            SELECT min(coalesce((firsts ->> a.gate)::timestamptz, ts)
                       + gg.per * interval '1 millisecond')
            FROM (SELECT ag AS gate, count(*) AS n FROM unnest(acc_gates) AS ag
                  GROUP BY ag) AS a
            JOIN unnest(g_names, g_per) AS gg(name, per) ON gg.name = a.gate
            WHERE starts_left ? a.gate AND (starts_left ->> a.gate)::integer <= a.n));
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

-- Steering by hand (issue 19): poel.steer() sets a job type's or a queue's limits, rate
-- limit and fair shares as an operator's row (source 'operator'), which no serve
-- overwrites with its Jobs' options; poel.unsteer() removes the row, whoever set it (a
-- type whose Job declares steering gets its code row back when a serve next starts).
-- Queue.steer and poel-host steer call the same statements. Like poel.pause(), these run
-- with the caller's rights: INSERT, UPDATE and DELETE on the steering table are what
-- they need. The table's constraints check every value (a weight over the concurrency, a
-- rate without a window, per_key or fair for a queue): a bad call is a check violation.

-- Set (or replace) the steering of a queue (kind 'queue') or a job type (kind 'type'):
-- at most `concurrency` slots running (each job takes `weight`), at most `rate` starts
-- in any `per_ms` milliseconds, per_key to hold them for each job key apart, fair for
-- weighted turns between keys (key_weights: a JSON object of key to weight), key_field
-- the payload field that gives a job its key at enqueue. What is left out is unset: the
-- row is replaced whole, not merged.
CREATE FUNCTION {schema}.steer(
    kind        text,
    name        text,
    concurrency integer DEFAULT NULL,
    rate        integer DEFAULT NULL,
    per_ms      integer DEFAULT NULL,
    per_key     boolean DEFAULT false,
    fair        boolean DEFAULT false,
    weight      integer DEFAULT 1,
    key_weights jsonb DEFAULT NULL,
    key_field   text DEFAULT NULL
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO {schema}.steering AS st
        (kind, name, concurrency, weight, rate, per_ms, per_key, fair, key_weights,
         key_field, source, set_at, set_by)
    VALUES (steer.kind, steer.name, steer.concurrency, coalesce(steer.weight, 1),
            steer.rate, steer.per_ms, coalesce(steer.per_key, false),
            coalesce(steer.fair, false), coalesce(steer.key_weights, jsonb_build_object()),
            steer.key_field, 'operator', now(), session_user)
    ON CONFLICT ON CONSTRAINT steering_pkey DO UPDATE
    SET concurrency = excluded.concurrency, weight = excluded.weight, rate = excluded.rate,
        per_ms = excluded.per_ms, per_key = excluded.per_key, fair = excluded.fair,
        key_weights = excluded.key_weights, key_field = excluded.key_field,
        source = 'operator', set_at = now(), set_by = session_user
$$;

-- Remove the steering of a queue or a job type: true if it was steered, false if not.
-- Its queued jobs go back to the plain claim (the steering table's trigger wakes the
-- idle workers); its running jobs finish as they are.
CREATE FUNCTION {schema}.unsteer(kind text, name text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.steering AS st WHERE st.kind = unsteer.kind AND st.name = unsteer.name;
    RETURN FOUND;
END
$$;

-- One job lifecycle (issue 16): each claimed attempt carries a lease token, new for each
-- claim, and renewal, outcome, hand-back and rescue match on it, so that no stale worker,
-- thread or child can write over another attempt's fate. `handbacks` counts the times a
-- started attempt was handed back at a shutdown (POEL_MAX_HANDBACKS caps the free ones).
-- Both columns are added without a table rewrite (a constant default is metadata only);
-- the lock is brief, and lock_timeout keeps it from queueing behind a long transaction
-- while every claim queues behind it: the migration fails instead, and is retried.
SET LOCAL lock_timeout = '5s';
ALTER TABLE {schema}.jobs
    ADD COLUMN lease_token uuid,
    ADD COLUMN handbacks integer NOT NULL DEFAULT 0;

-- The texts the rescuer and the hand-back record, in one place each.
CREATE FUNCTION {schema}.lost_error(owner text, attempts integer, max_attempts integer)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'worker lost: lease held by ' || coalesce(owner, '?') || ' expired'
        || CASE WHEN attempts >= max_attempts
                THEN ' on attempt ' || attempts || ' of ' || max_attempts
                     || ': failed (a job whose worker is lost on every attempt may be'
                     || ' crashing it: out of memory, a segfault, os._exit)'
                ELSE ' (attempt ' || attempts || ' of ' || max_attempts || ')' END
$$;

CREATE FUNCTION {schema}.handback_error(handbacks integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'interrupted by a shutdown ' || handbacks || ' times: from now on each hand-back'
        || ' counts as an attempt (POEL_MAX_HANDBACKS; a job that runs longer than the time'
        || ' between deploys never finishes)'
$$;

-- What steering cost the plain job path (issue 19: the drain of jobs nothing steers
-- must not change), taken off it.
--
-- 1. A steered job's end is told to the idle workers by the statements that end running
--    attempts (finish, snooze, hand-back, rescue: see queries.sql), each once a statement
--    when one of its jobs had slots. The row trigger of migration 0017 did it for every
--    update of a job's state, steered or not: its WHEN was evaluated on each (about
--    0.4 µs a row).
DROP TRIGGER jobs_steered_done ON {schema}.jobs;

-- 2. The plain claim passes over paused types and queues (migration 0015) and steered
--    ones (0017, claimed by claim_steered). It read the two tables apart, four subqueries
--    a claim that PostgreSQL plans at every claim (the claim's plan is made for the
--    values of each call): about 25 µs more a claim than pauses alone, ten a job for a
--    claim of five. It reads this one table instead, kept by the two tables' triggers in
--    the same transaction as their writes, so that a pause or a steering row still holds
--    for every claim from its commit. `why`: paused or steered (a type may be both).
CREATE TABLE {schema}.claim_skips (
    kind text NOT NULL CONSTRAINT claim_skips_kind_valid CHECK (kind IN ('queue', 'type')),
    name text NOT NULL,
    why  text NOT NULL CONSTRAINT claim_skips_why_valid CHECK (why IN ('paused', 'steered')),
    CONSTRAINT claim_skips_pkey PRIMARY KEY (kind, name, why)
);
COMMENT ON TABLE {schema}.claim_skips IS
    'What the plain claim passes over: paused and steered queues and types. Kept by the '
    'triggers of the pauses and steering tables; never written by hand.';

INSERT INTO {schema}.claim_skips (kind, name, why)
SELECT kind, name, 'paused' FROM {schema}.pauses
UNION ALL
SELECT kind, name, 'steered' FROM {schema}.steering;

-- The owner's rights (SECURITY DEFINER), so that whoever may pause or steer keeps the
-- table, without rights on it of their own. TG_ARGV[0] is `why`.
CREATE FUNCTION {schema}.keep_claim_skips() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM {schema}.claim_skips AS s WHERE s.why = TG_ARGV[0];
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM {schema}.claim_skips AS s
        WHERE s.kind = OLD.kind AND s.name = OLD.name AND s.why = TG_ARGV[0];
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO {schema}.claim_skips (kind, name, why)
        VALUES (NEW.kind, NEW.name, TG_ARGV[0]) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER pauses_claim_skips AFTER INSERT OR DELETE OR UPDATE OF kind, name
    ON {schema}.pauses FOR EACH ROW EXECUTE FUNCTION {schema}.keep_claim_skips('paused');
CREATE TRIGGER pauses_claim_skips_truncate AFTER TRUNCATE ON {schema}.pauses
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.keep_claim_skips('paused');
CREATE TRIGGER steering_claim_skips AFTER INSERT OR DELETE OR UPDATE OF kind, name
    ON {schema}.steering FOR EACH ROW EXECUTE FUNCTION {schema}.keep_claim_skips('steered');
CREATE TRIGGER steering_claim_skips_truncate AFTER TRUNCATE ON {schema}.steering
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.keep_claim_skips('steered');

-- A steered type's name is a name a job could have, as a paused type's is (pauses_name_
-- valid); poel.steer() from SQL took any. NOT VALID: rows written before are not read
-- again (a name no job has steers nothing), new and changed ones are checked.
ALTER TABLE {schema}.steering ADD CONSTRAINT steering_type_name_valid
    CHECK (kind <> 'type' OR name ~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$') NOT VALID;

-- Pausing a queue or a job type (issue 19): a paused queue's or type's queued jobs wait,
-- unclaimed, until it is resumed; its running jobs finish as usual, enqueueing, schedules
-- and the promoter go on. A pause is a row here, read by every claim itself (see
-- claim_jobs in queries.sql), so it holds for every worker from the moment it commits,
-- whether it came from Python, the CLI, the dashboard, poel.pause() or a plain INSERT.
-- (Workers of earlier versions do not read it: during a rolling upgrade they still
-- claim paused jobs.) Nothing here touches an existing table: no claim waits on it.
-- A name needs no job or plugin behind it (a type not deployed yet can be paused ahead),
-- but it must be a name a job could have: a job type's pattern, a queue of 1-200
-- characters (as Queue.enqueue checks them).
CREATE TABLE {schema}.pauses (
    kind      text NOT NULL CONSTRAINT pauses_kind_valid CHECK (kind IN ('queue', 'type')),
    name      text NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL DEFAULT session_user
        CONSTRAINT pauses_by_valid CHECK (char_length(paused_by) BETWEEN 1 AND 200),
    reason    text CONSTRAINT pauses_reason_valid CHECK (char_length(reason) <= 1000),
    CONSTRAINT pauses_pkey PRIMARY KEY (kind, name),
    CONSTRAINT pauses_name_valid CHECK (CASE kind
        WHEN 'type' THEN name ~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$'
        ELSE true END AND char_length(name) BETWEEN 1 AND 200)
);

COMMENT ON TABLE {schema}.pauses IS
    'Paused Poel queues and job types: their queued jobs are not claimed. See poel.pause().';

-- A resume wakes the idle workers at once, as an insert of jobs does (one NOTIFY a
-- statement), however the row was deleted.
CREATE TRIGGER pauses_notify_resume AFTER DELETE ON {schema}.pauses
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_jobs();

-- Pause a queue (kind 'queue') or a job type (kind 'type'). True if it is paused now,
-- false if it was paused already (the first pause's time, author and reason are kept).
-- Runs with the caller's rights: INSERT on the pauses table is what it needs.
CREATE FUNCTION {schema}.pause(kind text, name text, reason text DEFAULT NULL,
                               paused_by text DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.pauses (kind, name, reason, paused_by)
    VALUES (pause.kind, pause.name, pause.reason, coalesce(pause.paused_by, session_user))
    ON CONFLICT ON CONSTRAINT pauses_pkey DO NOTHING;
    RETURN FOUND;
END
$$;

-- Resume a paused queue or job type: true if it was paused, false if it was not.
CREATE FUNCTION {schema}.resume(kind text, name text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.pauses AS p WHERE p.kind = resume.kind AND p.name = resume.name;
    RETURN FOUND;
END
$$;

-- Steering (issue 19): concurrency limits, rate limits and fair shares, enforced by the
-- database so that they hold across every serve at once.
--
-- A row of `steering` steers a job type (kind 'type') or a queue (kind 'queue'):
--   concurrency  at most this many slots running (each job takes `weight` slots);
--   rate, per_ms at most `rate` starts in any window of `per_ms` milliseconds;
--   per_key      a type's concurrency and rate hold for each job key apart;
--   fair         a type's queued jobs are claimed in weighted turn between their keys
--                (key_weights: a JSON object of key to weight, 1 for a key not named);
--   key_field    the payload field whose value is a job's key when its producer gave
--                none (read at enqueue).
-- A job's key (jobs.key: a tenant, a record, a user) is what per-key limits and fair
-- shares group by. The jobs of a steered type or of a steered queue are claimed by
-- claim_steered below, one at a time under a lock per gate; every other job by the
-- claim of queries.sql, which skips them and is otherwise unchanged.
-- `source` says who set a row: 'code' (a Job's options, written by every serve that
-- loads it) or 'operator' (Queue.steer, the CLI, poel.steer): a serve never overwrites an
-- operator's row, so a limit set by hand holds until it is removed by hand.
CREATE TABLE {schema}.steering (
    kind        text NOT NULL CONSTRAINT steering_kind_valid CHECK (kind IN ('queue', 'type')),
    name        text NOT NULL CONSTRAINT steering_name_valid
                    CHECK (char_length(name) BETWEEN 1 AND 200),
    concurrency integer CONSTRAINT steering_concurrency_valid CHECK (concurrency >= 1),
    weight      integer NOT NULL DEFAULT 1 CONSTRAINT steering_weight_valid
                    CHECK (weight >= 1 AND (concurrency IS NULL OR weight <= concurrency)),
    rate        integer CONSTRAINT steering_rate_valid CHECK (rate >= 1),
    per_ms      integer CONSTRAINT steering_per_valid CHECK (per_ms >= 1),
    per_key     boolean NOT NULL DEFAULT false,
    fair        boolean NOT NULL DEFAULT false,
    key_weights jsonb NOT NULL DEFAULT jsonb_build_object()
                    CONSTRAINT steering_key_weights_valid CHECK (jsonb_typeof(key_weights) = 'object'),
    key_field   text CONSTRAINT steering_key_field_valid CHECK (char_length(key_field) BETWEEN 1 AND 200),
    source      text NOT NULL DEFAULT 'operator'
                    CONSTRAINT steering_source_valid CHECK (source IN ('code', 'operator')),
    set_at      timestamptz NOT NULL DEFAULT now(),
    set_by      text NOT NULL DEFAULT session_user,
    CONSTRAINT steering_pkey PRIMARY KEY (kind, name),
    CONSTRAINT steering_rate_needs_window CHECK ((rate IS NULL) = (per_ms IS NULL)),
    CONSTRAINT steering_queue_whole CHECK (kind = 'type' OR NOT (per_key OR fair))
);

COMMENT ON TABLE {schema}.steering IS
    'Concurrency limits, rate limits and fair shares of Poel job types and queues.';

-- A change wakes the idle workers (as a resume does): a raised limit is used at once.
CREATE TRIGGER steering_notify AFTER INSERT OR UPDATE OR DELETE ON {schema}.steering
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_jobs();

-- The starts of the last window of each rate-limited gate ('type:T', 'key:T:K',
-- 'queue:Q'): a sliding log, at most `rate` rows a gate, trimmed as it is written.
CREATE TABLE {schema}.steering_starts (
    gate       text NOT NULL,
    started_at timestamptz NOT NULL
);
CREATE INDEX steering_starts_gate_idx ON {schema}.steering_starts (gate, started_at);

-- Where the next claim of a fair or per-key type starts among its keys (claim_steered
-- serves the keys in turn, from there): one row a type, written by the claims.
CREATE TABLE {schema}.steering_cursors (
    job_type  text PRIMARY KEY,
    after_key text NOT NULL
);

-- A job's key, and the slots a running job takes of its gates (set by claim_steered;
-- NULL for a job the plain claim took, which no gate counts). Nullable columns without a
-- default: a catalog change only. The history keeps the key (a retried job keeps it).
ALTER TABLE {schema}.jobs
    ADD COLUMN key text,
    ADD COLUMN slots integer;
ALTER TABLE {schema}.jobs_history ADD COLUMN key text;

-- A steered job leaving `running` frees its slots: the idle workers look again at once,
-- instead of at their next poll. Only steered rows fire it (slots is NULL for the rest),
-- and NOTIFY sends one message a transaction however many rows.
CREATE TRIGGER jobs_steered_done AFTER UPDATE OF state ON {schema}.jobs
    FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state <> 'running' AND OLD.slots IS NOT NULL)
    EXECUTE FUNCTION {schema}.notify_jobs();

CREATE OR REPLACE VIEW {schema}.all_jobs AS
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, lease_owner, lease_expires_at, created_at,
       started_at, finished_at, updated_at, lease_token, handbacks, ready, result, progress,
       progress_message, snoozes, key
FROM {schema}.jobs
UNION ALL
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, NULL::text, NULL::timestamptz, created_at,
       started_at, finished_at, updated_at, NULL::uuid, handbacks, NULL::boolean, result,
       progress, progress_message, snoozes, key
FROM {schema}.jobs_history;

-- poel.enqueue gives a job its key from its type's key_field (a Job's `key` option), as
-- Queue.enqueue does from the Job itself. The signature, owner rights and grants stay.
CREATE OR REPLACE FUNCTION {schema}.enqueue(
    job_type     text,
    payload      jsonb DEFAULT jsonb_build_object(),
    run_at       timestamptz DEFAULT now(),
    priority     integer DEFAULT 0,
    queue        text DEFAULT 'default',
    max_attempts integer DEFAULT 3,
    unique_key   text DEFAULT NULL
) RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO {schema}.jobs AS j
        (job_type, payload, run_at, priority, queue, max_attempts, unique_key, key)
    VALUES (enqueue.job_type, enqueue.payload, coalesce(enqueue.run_at, now()),
            coalesce(enqueue.priority, 0), coalesce(enqueue.queue, 'default'),
            coalesce(enqueue.max_attempts, 3), enqueue.unique_key,
            enqueue.payload ->> (SELECT s.key_field FROM {schema}.steering AS s
                                 WHERE s.kind = 'type' AND s.name = enqueue.job_type))
    ON CONFLICT (job_type, unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING j.id
$$;

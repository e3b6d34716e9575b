-- The dashboard's audit trail: every action an operator took (retry, cancel, delete), who
-- (the name given at sign-in, and the address), what and when.
CREATE TABLE {schema}.audit (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    address  text,
    action   text NOT NULL,           -- retry | cancel | delete | retry_failed_type
    job_id   bigint,                  -- the job acted on (NULL for a whole job type)
    job_type text,
    detail   jsonb NOT NULL DEFAULT jsonb_build_object()
);

-- The dead letter by job type, newest first: the dashboard's failure counts and lists, and
-- "retry every failed job of a type". Touched only when a job fails or leaves `failed`.
CREATE INDEX jobs_failed_idx ON {schema}.jobs (job_type, id) WHERE state = 'failed';

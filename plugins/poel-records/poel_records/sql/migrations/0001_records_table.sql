-- The default records table (POEL_RECORDS_TABLE unset), created only where it is missing:
-- an application that already has a records table keeps it. A table configured with
-- POEL_RECORDS_TABLE is the application's own and needs the columns id, record_type,
-- metadata, processed_at and updated_at.
CREATE TABLE IF NOT EXISTS public.records (
    id           bigint PRIMARY KEY,
    record_type  text,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    processed_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

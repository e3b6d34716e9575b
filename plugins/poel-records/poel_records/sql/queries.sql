-- The queries of process_new_record, as named blocks: "-- name --", a comment saying what
-- it is for, then the SQL. {table} is the configured records table (a quoted identifier,
-- possibly schema-qualified); %(x)s are parameters. Loaded by poel_records.queries.

-- lock_record --
-- Load the record and lock it until the job's transaction ends, so that two jobs for one
-- record apply their merges one after the other instead of losing one.
SELECT id, record_type, metadata, processed_at
FROM {table}
WHERE id = %(id)s
FOR UPDATE

-- apply --
-- Merge the payload's metadata into the record's (payload keys win; a shallow merge), set
-- the type when one is given, and stamp processed_at. A run that would change nothing
-- (the same job delivered twice) leaves the row as it is, processed_at and updated_at
-- included, so the job is idempotent. Returns the row only when it was changed.
UPDATE {table}
SET metadata = coalesce(metadata, jsonb_build_object()) || %(metadata)s::jsonb,
    record_type = coalesce(%(record_type)s::text, record_type),
    processed_at = now(),
    updated_at = now()
WHERE id = %(id)s
  AND (processed_at IS NULL
       OR metadata IS DISTINCT FROM coalesce(metadata, jsonb_build_object()) || %(metadata)s::jsonb
       OR record_type IS DISTINCT FROM coalesce(%(record_type)s::text, record_type))
RETURNING id, record_type, metadata, processed_at

-- The queries of cleanup_auth_tokens, as named blocks: "-- name --", a comment saying what
-- it is for, then the SQL. {table} is the configured tokens table (a quoted identifier,
-- possibly schema-qualified) and {expiry} its expiry column; %(x)s are parameters. Loaded
-- by poel_auth_cleanup.queries.

-- cutoff --
-- The moment before which a token counts as expired for this run, fixed once at its start
-- so that the batches converge even while new tokens keep expiring.
SELECT now() - %(older_than)s::interval AS cutoff

-- delete_batch --
-- Delete up to `batch_size` expired rows in one short transaction. Rows another
-- transaction holds (a concurrent cleanup, the application touching a token) are skipped,
-- never waited for. Rows are addressed by (tableoid, ctid), so no primary key is assumed
-- and a partitioned table works too (a ctid alone is unique only within one partition).
DELETE FROM {table}
WHERE (tableoid, ctid) IN (
    SELECT tableoid, ctid
    FROM {table}
    WHERE {expiry} < %(cutoff)s
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)

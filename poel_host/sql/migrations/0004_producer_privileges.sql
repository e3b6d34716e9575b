-- Least privilege for producers: an application role can be allowed to enqueue without
-- being able to read (or change) any job's payload. The SQL function runs with its owner's
-- rights, so EXECUTE on it is all a producer needs; PUBLIC loses the default EXECUTE.
-- (Python producers insert directly and need INSERT on the table plus SELECT on the
-- columns the insert returns; see the README's "Security" section.)
ALTER FUNCTION {schema}.enqueue(text, jsonb, timestamptz, integer, text, integer, text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION {schema}.enqueue(text, jsonb, timestamptz, integer, text, integer, text)
    FROM PUBLIC;

-- Timestamps inside the errors history (jsonb) in one fixed ISO 8601 form: UTC, six
-- fractional digits, "+00:00". PostgreSQL's own JSON form trims trailing zeros
-- ("…40.36905+00:00"), which datetime.fromisoformat() rejects before Python 3.11.
CREATE FUNCTION {schema}.iso_utc(ts timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"');

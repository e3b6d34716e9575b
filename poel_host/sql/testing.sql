-- Queries used only by poel_host.testing (the pytest plugin for plugin authors), as named
-- blocks like queries.sql. {schema} is the configured schema; %(x)s are parameters.

-- make_due --
-- Make a queued job (a retry waiting out its backoff) due now, so that a test runs its
-- next attempt at once instead of sleeping.
UPDATE {schema}.jobs SET run_at = now(), updated_at = now()
WHERE id = %(id)s AND state = 'queued'
RETURNING id

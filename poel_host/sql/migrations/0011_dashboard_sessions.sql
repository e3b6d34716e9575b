-- The dashboard's sign-ins, kept on the server (issue 17). A session's cookie holds only a
-- random id; the row holds a SHA-256 hash of it (a copy of this table opens no session),
-- who signed in, from where and when, and when it ends. A session counts while it is
-- neither expired nor revoked (signed out) and its token_mac, an HMAC of its id keyed
-- with POEL_DASHBOARD_TOKEN, matches the current token: changing the token ends them all.
-- Each sign-in and sign-out is also written to the audit table (actions sign_in, sign_out).
CREATE TABLE {schema}.dashboard_sessions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id_hash    bytea NOT NULL UNIQUE,     -- SHA-256 of the cookie's random id
    token_mac  bytea NOT NULL,            -- HMAC-SHA-256 of that id, keyed with the token
    actor      text NOT NULL,             -- the name given at sign-in
    address    text,                      -- the address it signed in from
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz                -- set on sign-out
);
-- Deleting sessions long expired, at each sign-in.
CREATE INDEX dashboard_sessions_expires_idx ON {schema}.dashboard_sessions (expires_at);

-- Sign-in attempts an address (an IPv6 client by its /64) in the current window: one row
-- an address, counted up in one atomic upsert, so that the limit holds across dashboard
-- processes and restarts.
CREATE TABLE {schema}.dashboard_signins (
    address      text PRIMARY KEY,
    window_start timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 1
);

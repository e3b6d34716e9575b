-- The registry of live workers: one row per `poel-host serve`, written at start-up,
-- refreshed by its lease keeper's heartbeat (in the renewal statement it makes anyway),
-- marked draining on SIGTERM and deleted on a clean shutdown. A row whose heartbeat is
-- older than its own stale_after_ms is a worker that died: the rescuer of any live worker
-- marks it gone, then deletes it once it has been gone POEL_GONE_WORKERS_KEEP_S.
CREATE TABLE {schema}.workers (
    owner          text PRIMARY KEY,          -- the lease owner its jobs carry
    host           text NOT NULL,
    pid            integer NOT NULL,
    version        text NOT NULL,             -- poel-host's version
    plugins        jsonb NOT NULL DEFAULT jsonb_build_array(),  -- [{{name, distribution, version}}]
    job_types      text[] NOT NULL DEFAULT '{{}}',
    queues         text[],                    -- NULL: every queue
    concurrency    integer NOT NULL,          -- greenlet slots (WORKER_CONCURRENCY)
    threads        integer,                   -- POEL_THREADS, when a loaded type runs on threads
    processes      integer,                   -- POEL_PROCESSES, when one runs in processes
    stale_after_ms integer NOT NULL,          -- its lease: no heartbeat for this long, it died
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    draining       boolean NOT NULL DEFAULT false,
    gone_at        timestamptz                -- set when found dead
);

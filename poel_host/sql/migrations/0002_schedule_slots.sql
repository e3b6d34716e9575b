-- Periodic jobs: one row per (job type, cron slot) that has been enqueued. The primary key
-- is what makes "once per slot, however many workers run" hold: the slot row and its job
-- are inserted in one statement, and a second worker's insert of the same slot does nothing.
CREATE TABLE {schema}.schedule_slots (
    job_type   text NOT NULL,
    slot       timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_type, slot)
);

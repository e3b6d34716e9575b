-- Every query Poel runs, as named blocks: "-- name --", a comment saying what it is for,
-- then the SQL. {schema} is the configured schema (quoted identifier); %(x)s are
-- parameters. Loaded by poel_host.queries.

-- enqueue_jobs --
-- Insert jobs in one statement. A job whose (job_type, unique_key) matches a live job is
-- skipped. Each request is numbered (WITH ORDINALITY) and given its id before the insert,
-- so that the answer is one row per request, in request order, with a NULL id for a
-- request that was skipped: PostgreSQL does not promise that RETURNING follows the input.
WITH input AS MATERIALIZED (
    SELECT nextval((SELECT pg_get_serial_sequence(quote_ident(%(schema)s) || '.jobs', 'id')))
               AS id,
           t.*
    FROM unnest(%(job_types)s::text[], %(payloads)s::jsonb[], %(run_ats)s::timestamptz[],
                %(delays_ms)s::bigint[], %(priorities)s::integer[], %(queues)s::text[],
                %(max_attempts)s::integer[], %(unique_keys)s::text[], %(keys)s::text[])
         WITH ORDINALITY
         AS t(job_type, payload, run_at, delay_ms, priority, queue, max_attempts, unique_key,
              key, n)
), inserted AS (
    INSERT INTO {schema}.jobs AS j
        (id, job_type, payload, run_at, priority, queue, max_attempts, unique_key, key)
    SELECT i.id, i.job_type, i.payload,
           coalesce(i.run_at, now() + i.delay_ms * interval '1 millisecond'),
           i.priority, i.queue, i.max_attempts, i.unique_key, i.key
    FROM input AS i
    ORDER BY i.n
    ON CONFLICT (job_type, unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING j.id
)
SELECT input.n, inserted.id
FROM input LEFT JOIN inserted ON inserted.id = input.id
ORDER BY input.n

-- find_live_unique --
-- The live job holding a unique key, to name it in the duplicate error.
SELECT id FROM {schema}.jobs
WHERE job_type = %(job_type)s AND unique_key = %(unique_key)s AND state IN ('queued', 'running')

-- claim_jobs --
-- Take up to `limit` due jobs of the types this worker handles, highest priority first,
-- then oldest run_at, skipping rows other workers are claiming; each is held by this
-- worker (`owner`) under the claim's token (`token`: new for each claim, so new for each
-- attempt), which every later statement about the attempt matches on. A worker in the
-- registry passes no `lease_ms`: its heartbeat is the lease of all its jobs (see
-- recover_expired). A claimer without a heartbeat (the test kit) passes one: its jobs'
-- leases expire on their own. The payload comes
-- back as text, parsed by the worker for each job: one that Python cannot parse (nested
-- thousands deep, a 5,000-digit number) then fails that job alone instead of the whole
-- claim.
-- The due jobs of each type are read from jobs_ready_idx in claim order (ready_jobs,
-- one branch per type: the store writes in as many as the lane has types), and the
-- branches are merged in that order as they are read (a Merge Append), so a claim reads
-- about `limit` index entries in all, plus one per type, whatever the priorities, the
-- future jobs, the finished ones or the other types' backlog.
-- Rows are locked one at a time in merged order, each by its primary key, SKIP LOCKED,
-- until `limit` are: a claim locks only the rows it claims (locking `limit` per type
-- and keeping `limit` hid the others from every other worker for nothing), and takes
-- the next rows when other claims hold the first ones. The lock is taken by the scan of
-- one row (a LATERAL subquery), so a row another claim changed meanwhile is checked
-- again alone: a lock taken through the merged scans made each such row re-read them
-- all, seconds a claim under load. That scan can only be the primary key's: the state is
-- compared as text, which implies the predicate of no partial index. (On statistics that
-- say the table is empty, as an autovacuum can leave them once finished jobs are moved
-- out, the planner found each row through jobs_queued_idx: the whole backlog, a row.)
-- Pauses (migration 0015) and steering (0017) are read by the claim itself, so that a
-- pause or a steering row holds for every worker from its commit, with no cache to go
-- stale: both through claim_skips (migration 0022), which their tables' triggers keep,
-- one table for the claim to read (each subquery costs a claim's planning). Neither test depends
-- on the row being read: PostgreSQL looks each up once a claim (an InitPlan on the small
-- table's primary key). A paused type switches its branch off whole (a One-Time Filter in
-- ready_jobs): its backlog is not read, and so is a steered type's (claim_steered takes
-- it). A paused or steered queue is checked on the row the lateral
-- scan reads anyway to lock it: with none paused that costs nothing, and a paused queue
-- costs a claim only its due jobs that come first in claim order of a type the claim
-- takes, passed over one primary-key probe each (about 3 microseconds: 50,000 ahead, a
-- tenth of a second). Checking the queue in ready_jobs instead would need the heap in
-- those scans (the index is by type), which makes the planner sort each type's whole
-- backlog on every claim while any queue is paused, even one with no job at all.
WITH due AS (
    SELECT locked.id
    FROM (SELECT * FROM ({ready_jobs}) AS ready ORDER BY priority DESC, run_at, id) AS c
    CROSS JOIN LATERAL (
        SELECT id FROM {schema}.jobs
        WHERE id = c.id AND state::text = 'queued' AND ready
          AND queue <> ALL (ARRAY(SELECT name FROM {schema}.claim_skips WHERE kind = 'queue'))
        FOR UPDATE SKIP LOCKED
    ) AS locked
    LIMIT %(limit)s
)
UPDATE {schema}.jobs AS j
SET state = 'running', attempts = j.attempts + 1, lease_owner = %(owner)s,
    lease_token = %(token)s::uuid,
    lease_expires_at = now() + %(lease_ms)s::bigint * interval '1 millisecond',
    started_at = now(), updated_at = now()
FROM due
WHERE j.id = due.id
RETURNING j.id, j.queue, j.job_type, j.payload::text AS payload, j.attempts, j.max_attempts,
          j.created_at, j.snoozes

-- ready_jobs --
-- One branch of claim_jobs: the due jobs of one of the lane's job types (the store
-- numbers the branches), in claim order. A paused type's branch is switched off whole (see
-- claim_jobs): its backlog is not read. So is a steered type's, and a steered queue's jobs
-- are passed over as a paused queue's are: claim_steered (migration 0020) takes them.
(SELECT id, priority, run_at FROM {schema}.jobs
 WHERE state = 'queued' AND ready AND job_type = (%(job_types)s::text[])[{type_number}]
   AND run_at <= now()
   AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
   AND NOT EXISTS (SELECT FROM {schema}.claim_skips AS s
                   WHERE s.kind = 'type' AND s.name = (%(job_types)s::text[])[{type_number}])
 ORDER BY priority DESC, run_at, id)

-- claim_steered --
-- The jobs of steered types and queues, under their limits (claim_steered in migration
-- 0020); a row with a NULL id carries when a full rate window opens again, in seconds
-- from now on the server's clock (the worker's may differ from it).
SELECT c.id, c.queue, c.job_type, c.payload, c.attempts, c.max_attempts, c.created_at,
       c.snoozes, extract(epoch FROM c.reopens_at - clock_timestamp())::float8 AS reopens_in
FROM {schema}.claim_steered(%(job_types)s::text[], %(queues)s::text[], %(limit)s,
                            %(owner)s, %(token)s::uuid, %(lease_ms)s::bigint) AS c

-- declare_steering --
-- A serve's plugins' steering (their Jobs' options), written as it starts: each steered
-- type's code row is written or replaced, a type this serve loads but no longer steers
-- loses its code row, and an operator's row (source 'operator') is never touched. A row
-- already as declared is not rewritten (each serve of a fleet writes the same).
WITH declared AS (
    SELECT * FROM unnest(%(types)s::text[], %(concurrency)s::integer[], %(weight)s::integer[],
                         %(rate)s::integer[], %(per_ms)s::integer[], %(per_key)s::boolean[],
                         %(fair)s::boolean[], %(key_weights)s::jsonb[], %(key_field)s::text[])
        AS d(name, concurrency, weight, rate, per_ms, per_key, fair, key_weights, key_field)
), gone AS (
    DELETE FROM {schema}.steering AS st
    WHERE st.kind = 'type' AND st.source = 'code' AND st.name = ANY(%(loaded)s::text[])
      AND st.name <> ALL(%(types)s::text[])
)
INSERT INTO {schema}.steering AS st
    (kind, name, concurrency, weight, rate, per_ms, per_key, fair, key_weights, key_field,
     source)
SELECT 'type', d.name, d.concurrency, d.weight, d.rate, d.per_ms, d.per_key, d.fair,
       d.key_weights, d.key_field, 'code'
FROM declared AS d
ON CONFLICT ON CONSTRAINT steering_pkey DO UPDATE
SET concurrency = excluded.concurrency, weight = excluded.weight, rate = excluded.rate,
    per_ms = excluded.per_ms, per_key = excluded.per_key, fair = excluded.fair,
    key_weights = excluded.key_weights, key_field = excluded.key_field,
    set_at = now(), set_by = session_user
WHERE st.source = 'code'
  AND (st.concurrency, st.weight, st.rate, st.per_ms, st.per_key, st.fair, st.key_weights,
       st.key_field)
      IS DISTINCT FROM
      (excluded.concurrency, excluded.weight, excluded.rate, excluded.per_ms,
       excluded.per_key, excluded.fair, excluded.key_weights, excluded.key_field)

-- steered_names --
-- What is steered (the workers' cache of which lanes need claim_steered).
SELECT kind, name FROM {schema}.steering

-- promote_due --
-- Mark ready the future jobs that have become due (up to `limit`, oldest first), so that
-- claims see them. Run by every worker's promoter; SKIP LOCKED keeps two from doing it
-- twice. Returns the ids promoted.
UPDATE {schema}.jobs AS j
SET ready = true
FROM (SELECT id FROM {schema}.jobs
      WHERE state = 'queued' AND NOT ready AND run_at <= now()
      ORDER BY run_at
      LIMIT %(limit)s
      FOR UPDATE SKIP LOCKED) AS w
WHERE j.id = w.id
RETURNING j.id
-- finish_jobs --
-- (A lease token is set by a claim and cleared by whatever ends its attempt: finish,
-- hand-back, rescue. Matching one is matching a running attempt, so these statements
-- name no state: the rows are found by primary key, whatever the statistics say of the
-- running rows' index.)
-- Record outcomes in one statement: succeeded, failed, cancelled (asked to stop while
-- running), or queued again with a delay for a retry; an error (with its traceback, when the worker has one) joins the history.
-- Only the attempt each outcome belongs to is touched (its id and lease token), so a
-- worker, thread or child whose attempt was rescued or handed back never overwrites the
-- fate of the next one; an attempt whose lease expired but that nobody took meanwhile (a
-- database blip) is still this worker's to record. A success's result (JSON text, or
-- NULL) is stored with it, and the last progress the handler reported, when the worker's
-- progress writer had not written it yet (NULL: the row's is kept). Returns the ids
-- written, and tells Queue.result's waiters that outcomes were written: one NOTIFY a
-- statement (the InitPlan below runs once), not one a job, and only when one of its jobs
-- has a waiter (result_waiters: usually empty, one index probe). When one of its jobs was
-- steered (slots set by claim_steered), its slots are free: the idle workers are told at
-- once (poel_jobs, as an insert tells them), here and in every statement that ends a
-- running attempt (snooze, hand-back, rescue), instead of by a row trigger whose test
-- every update of a job's state paid (migration 0022).
WITH done AS (
UPDATE {schema}.jobs AS j
SET state = o.state::{schema}.job_state,
    run_at = CASE WHEN o.state = 'queued'
                  THEN now() + o.delay_ms * interval '1 millisecond' ELSE j.run_at END,
    ready = o.delay_ms <= 0,
    last_error = coalesce(o.error, j.last_error),
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(jsonb_build_object(
                      'attempt', j.attempts, 'error', o.error, 'at', {schema}.iso_utc(now()),
                      'retry_at', CASE WHEN o.state = 'queued' THEN {schema}.iso_utc(
                                      now() + o.delay_ms * interval '1 millisecond') END)
                      || CASE WHEN o.traceback IS NULL THEN '{{}}'::jsonb
                              ELSE jsonb_build_object('traceback', o.traceback) END)
             END,
    finished_at = CASE WHEN o.state IN ('succeeded', 'failed', 'cancelled') THEN now() END,
    result = o.result::jsonb,
    progress = coalesce(o.progress, j.progress),
    progress_message = CASE WHEN o.progress IS NULL THEN j.progress_message
                            ELSE o.progress_message END,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now()
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(states)s::text[], %(errors)s::text[],
            %(delays_ms)s::bigint[], %(tracebacks)s::text[], %(results)s::text[],
            %(progresses)s::float8[], %(progress_messages)s::text[])
     AS o(id, token, state, error, delay_ms, traceback, result, progress, progress_message)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = o.id AND j.lease_token = o.token
RETURNING j.id, j.slots, j.workflow_id, j.state
), flows AS (
    -- Workflow steps the statement ended: steps_ended (migration 0023) releases or cancels
    -- the steps waiting on them. A batch without a step does not call it at all.
    SELECT {schema}.steps_ended(array_agg(id)) FROM done
    WHERE workflow_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
    HAVING count(*) > 0
)
SELECT id FROM done
WHERE (SELECT count(*) FROM (SELECT pg_notify('poel_outcomes', %(schema)s)
                             WHERE EXISTS (SELECT FROM {schema}.result_waiters AS w
                                           WHERE w.job_id = ANY(%(ids)s::bigint[])))
       AS told) >= 0
  AND (SELECT count(*) FROM (SELECT pg_notify('poel_jobs', %(schema)s)
                             WHERE EXISTS (SELECT FROM done WHERE done.slots IS NOT NULL))
       AS freed) >= 0
  AND (SELECT count(*) FROM flows) >= 0

-- finish_succeeded --
-- The common case of finish_jobs, cheaper to send: attempts that succeeded returning
-- nothing (no result), with no progress left to write. Notifies as finish_jobs does
-- (both the result waiters and, for steered jobs, the idle workers).
WITH done AS (
UPDATE {schema}.jobs AS j
SET state = 'succeeded', finished_at = now(), lease_owner = NULL, lease_token = NULL,
    lease_expires_at = NULL, updated_at = now()
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS o(id, token)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = o.id AND j.lease_token = o.token
RETURNING j.id, j.slots, j.workflow_id, j.state
), flows AS (
    -- Workflow steps the statement ended: steps_ended (migration 0023) releases or cancels
    -- the steps waiting on them. A batch without a step does not call it at all.
    SELECT {schema}.steps_ended(array_agg(id)) FROM done
    WHERE workflow_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
    HAVING count(*) > 0
)
SELECT id FROM done
WHERE (SELECT count(*) FROM (SELECT pg_notify('poel_outcomes', %(schema)s)
                             WHERE EXISTS (SELECT FROM {schema}.result_waiters AS w
                                           WHERE w.job_id = ANY(%(ids)s::bigint[])))
       AS told) >= 0
  AND (SELECT count(*) FROM (SELECT pg_notify('poel_jobs', %(schema)s)
                             WHERE EXISTS (SELECT FROM done WHERE done.slots IS NOT NULL))
       AS freed) >= 0
  AND (SELECT count(*) FROM flows) >= 0

-- write_progress --
-- The progress writer's pass: the latest fraction and message each running attempt
-- reported, for many jobs in one statement. Token-matched, so a progress reported by an
-- attempt that was lost meanwhile is written nowhere; the columns are in no index, so
-- the update can be HOT. Returns the ids written.
UPDATE {schema}.jobs AS j
SET progress = o.progress, progress_message = o.message
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(progresses)s::float8[],
            %(messages)s::text[]) AS o(id, token, progress, message)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = o.id AND j.lease_token = o.token
RETURNING j.id

-- snooze_jobs --
-- Handlers that snoozed (ctx.snooze, a Snooze raised): each job queued again to run
-- `delays_ms` from now, its attempt not counted and its snoozes counted, no error
-- recorded. A future run_at is not ready until the promoter finds it due (as a retry's).
-- Matched on each attempt's lease token, as every outcome: a snooze from an attempt that
-- was rescued or handed back meanwhile never touches the next attempt. Returns the ids.
-- A steered job's slots are free: the idle workers are told (as by finish_jobs).
-- (A job asked to stop ends cancelled instead: the trigger jobs_cancel_requested; a
-- workflow step's end then reaches its workflow through `flows`.)
WITH done AS (
UPDATE {schema}.jobs AS j
SET state = 'queued', attempts = greatest(j.attempts - 1, 0), snoozes = j.snoozes + 1,
    run_at = now() + o.delay_ms * interval '1 millisecond', ready = o.delay_ms <= 0,
    started_at = NULL, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(delays_ms)s::bigint[])
     AS o(id, token, delay_ms)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = o.id AND j.lease_token = o.token
RETURNING j.id, j.slots, j.workflow_id, j.state
), flows AS (
    -- Workflow steps the statement ended: steps_ended (migration 0023) releases or cancels
    -- the steps waiting on them. A batch without a step does not call it at all.
    SELECT {schema}.steps_ended(array_agg(id)) FROM done
    WHERE workflow_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
    HAVING count(*) > 0
)
SELECT id FROM done WHERE (SELECT count(*) FROM (SELECT pg_notify('poel_jobs', %(schema)s)
                             WHERE EXISTS (SELECT FROM done WHERE done.slots IS NOT NULL))
       AS freed) >= 0
  AND (SELECT count(*) FROM flows) >= 0

-- release_jobs --
-- Hand attempts back to the queue (a shutdown, a job claimed ahead that no child took): the
-- attempt does not count, unless the attempt had started (`started`) and the job was
-- handed back `max_handbacks` times already: a job longer than the time between two
-- deploys would otherwise be handed back at every deploy and never end. Such a hand-back
-- counts as an attempt, is recorded in the error history, and fails the job on its last.
WITH released AS (
    SELECT j.id,
           %(started)s AND j.handbacks >= %(max_handbacks)s AS counted
    FROM {schema}.jobs AS j
    JOIN unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS o(id, token)
      ON j.id = o.id AND j.lease_token = o.token
    WHERE j.id = ANY(%(ids)s::bigint[])
    FOR UPDATE OF j
), done AS (
UPDATE {schema}.jobs AS j
SET state = CASE WHEN r.counted AND j.attempts >= j.max_attempts
                 THEN 'failed'::{schema}.job_state ELSE 'queued'::{schema}.job_state END,
    attempts = CASE WHEN r.counted THEN j.attempts ELSE greatest(j.attempts - 1, 0) END,
    handbacks = j.handbacks + CASE WHEN %(started)s THEN 1 ELSE 0 END,
    last_error = CASE WHEN r.counted THEN {schema}.handback_error(j.handbacks + 1)
                      ELSE j.last_error END,
    errors = CASE WHEN r.counted THEN j.errors || jsonb_build_array(jsonb_build_object(
                      'attempt', j.attempts, 'at', {schema}.iso_utc(now()),
                      'error', {schema}.handback_error(j.handbacks + 1)))
                  ELSE j.errors END,
    finished_at = CASE WHEN r.counted AND j.attempts >= j.max_attempts THEN now() END,
    run_at = now(), lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    started_at = CASE WHEN r.counted THEN j.started_at END, updated_at = now()
FROM released AS r
WHERE j.id = r.id
RETURNING j.id, j.slots, r.counted, j.workflow_id, j.state
), flows AS (
    -- Workflow steps the statement ended: steps_ended (migration 0023) releases or cancels
    -- the steps waiting on them. A batch without a step does not call it at all.
    SELECT {schema}.steps_ended(array_agg(id)) FROM done
    WHERE workflow_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
    HAVING count(*) > 0
)
SELECT id, counted FROM done WHERE (SELECT count(*) FROM (SELECT pg_notify('poel_jobs', %(schema)s)
                             WHERE EXISTS (SELECT FROM done WHERE done.slots IS NOT NULL))
       AS freed) >= 0
  AND (SELECT count(*) FROM flows) >= 0

-- release_claims --
-- Hand back every attempt of claims whose answer never reached this worker (the
-- connection broke after the claim committed): their handlers never ran, so their
-- attempts do not count. Matched by the claims' tokens, which only this worker knew. (A
-- job asked to stop meanwhile ends cancelled instead, as in snooze_jobs.)
WITH done AS (
UPDATE {schema}.jobs
SET state = 'queued', attempts = greatest(attempts - 1, 0), run_at = now(),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, started_at = NULL,
    updated_at = now()
WHERE state = 'running' AND lease_token = ANY(%(tokens)s::uuid[])
RETURNING id, slots, workflow_id, state
), flows AS (
    -- Workflow steps the statement ended: steps_ended (migration 0023) releases or cancels
    -- the steps waiting on them. A batch without a step does not call it at all.
    SELECT {schema}.steps_ended(array_agg(id)) FROM done
    WHERE workflow_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
    HAVING count(*) > 0
)
SELECT id FROM done WHERE (SELECT count(*) FROM (SELECT pg_notify('poel_jobs', %(schema)s)
                             WHERE EXISTS (SELECT FROM done WHERE done.slots IS NOT NULL))
       AS freed) >= 0
  AND (SELECT count(*) FROM flows) >= 0

-- heartbeat --
-- The lease keeper's pass, in one statement: this worker's heartbeat in the registry, which
-- is the lease of every job it holds, and which of its attempts (`ids` with their
-- `tokens`) are still its own: read, not written. An attempt is kept while its token is
-- still the job's, even if the heartbeat was late (a database blip longer than the lease)
-- as long as no rescue took the job meanwhile (that changes the token). `kept` lists the
-- ids kept; the others are lost. `registered` is false when the worker's row is missing
-- (it was found dead while frozen or cut off, and cleaned up): the keeper then registers
-- it again. `cancel` lists the kept attempts whose job was asked to stop (cancel_job), for
-- a worker that missed the notification.
WITH beat AS (
    UPDATE {schema}.workers
    SET heartbeat_at = now(), draining = %(draining)s, gone_at = NULL
    WHERE owner = %(owner)s
    RETURNING owner
)
SELECT EXISTS (SELECT FROM beat) AS registered,
       ARRAY(SELECT j.id
             FROM {schema}.jobs AS j
             JOIN unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS o(id, token)
               ON j.id = o.id AND j.lease_token = o.token
             WHERE j.id = ANY(%(ids)s::bigint[])) AS kept,
       ARRAY(SELECT j.id
             FROM {schema}.jobs AS j
             JOIN unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS o(id, token)
               ON j.id = o.id AND j.lease_token = o.token
             WHERE j.id = ANY(%(ids)s::bigint[]) AND j.cancel_requested) AS cancel

-- give_up_leases --
-- A worker gives up attempts past their timeout (a handler it cannot interrupt): their
-- leases expire now, and any worker's rescuer queues the jobs again, while the worker
-- itself lives on. lease_expires_at is in no index: the write can be a HOT update.
-- Returns the ids given up (an attempt already rescued is not).
UPDATE {schema}.jobs AS j
SET lease_expires_at = now(), updated_at = now()
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS o(id, token)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = o.id AND j.lease_token = o.token
RETURNING j.id

-- recover_expired --
-- Jobs whose worker was lost (killed, frozen, cut off): queue them again after a backoff,
-- or fail them if that was their last attempt. The lost attempt is recorded.
-- A job is lost when its own lease expired (given up, or claimed with a lease of its
-- own), or when it is held by its worker's heartbeat (no lease of its own) and that
-- worker's heartbeat is older than its stale_after_ms, or the worker is not in the
-- registry at all. The owners of running jobs are found one index probe each (a loose
-- scan of jobs_running_idx); a stale worker's row is locked (SKIP LOCKED: one whose
-- heartbeat is being written is alive), so that its heartbeat waits for the rescue to
-- commit and then finds its attempts gone. A job claimed less than a lease ago is not
-- taken for its worker's late heartbeat: the claim was the worker's sign of life (a
-- loaded worker's heartbeat a second late would otherwise cost every job it just took). The backoff (`base_ms` doubled each attempt up to `max_ms`, with a quarter of
-- jitter either way) is what keeps a job that kills its worker (a segfault in a C
-- extension, memory exhausted) from taking down the next worker at once, and the next: it
-- ends in the dead letter after max_attempts, with a message that says so.
WITH RECURSIVE owners AS (
    (SELECT lease_owner FROM {schema}.jobs WHERE state = 'running' AND lease_owner IS NOT NULL
     ORDER BY lease_owner LIMIT 1)
    UNION ALL
    SELECT next.lease_owner
    FROM owners AS o
    CROSS JOIN LATERAL (
        SELECT j.lease_owner FROM {schema}.jobs AS j
        WHERE j.state = 'running' AND j.lease_owner > o.lease_owner
        ORDER BY j.lease_owner
        LIMIT 1
    ) AS next
), stale AS (
    SELECT w.owner FROM {schema}.workers AS w
    WHERE w.owner IN (SELECT lease_owner FROM owners)
      AND (w.gone_at IS NOT NULL
           OR w.heartbeat_at < now() - w.stale_after_ms * interval '1 millisecond')
    FOR UPDATE SKIP LOCKED
), lost AS (
    SELECT s.owner, w.stale_after_ms
    FROM stale AS s JOIN {schema}.workers AS w ON w.owner = s.owner
    UNION ALL
    SELECT o.lease_owner, 0 FROM owners AS o
    WHERE NOT EXISTS (SELECT FROM {schema}.workers AS w WHERE w.owner = o.lease_owner)
), expired AS (
    SELECT id FROM {schema}.jobs AS j
    WHERE state = 'running'
      AND (lease_expires_at < now()
           OR (lease_expires_at IS NULL
               AND EXISTS (SELECT FROM lost AS l
                           WHERE l.owner = j.lease_owner
                             AND j.started_at
                                 < now() - l.stale_after_ms * interval '1 millisecond')))
    ORDER BY id
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), done AS (
UPDATE {schema}.jobs AS j
SET state = CASE WHEN j.attempts >= j.max_attempts
                 THEN 'failed'::{schema}.job_state ELSE 'queued'::{schema}.job_state END,
    ready = false,  -- a backoff; the promoter makes it ready
    run_at = CASE WHEN j.attempts >= j.max_attempts THEN j.run_at
                  ELSE now() + least(%(max_ms)s::float8,
                                     %(base_ms)s::float8 * 2 ^ least(greatest(j.attempts - 1, 0), 40))
                               * (0.75 + random() * 0.5) * interval '1 millisecond' END,
    last_error = {schema}.lost_error(j.lease_owner, j.attempts, j.max_attempts),
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempts, 'at', {schema}.iso_utc(now()),
        'error', {schema}.lost_error(j.lease_owner, j.attempts, j.max_attempts))),
    finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now()
FROM expired
WHERE j.id = expired.id
RETURNING j.id, j.slots, j.state, j.workflow_id
), flows AS (
    -- Workflow steps the statement ended: steps_ended (migration 0023) releases or cancels
    -- the steps waiting on them. A batch without a step does not call it at all.
    SELECT {schema}.steps_ended(array_agg(id)) FROM done
    WHERE workflow_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
    HAVING count(*) > 0
)
SELECT id, state::text AS state FROM done WHERE (SELECT count(*) FROM (SELECT pg_notify('poel_jobs', %(schema)s)
                             WHERE EXISTS (SELECT FROM done WHERE done.slots IS NOT NULL))
       AS freed) >= 0
  AND (SELECT count(*) FROM flows) >= 0

-- register_worker --
-- A serve process enters the registry (at start-up, or again after it was cleaned up while
-- frozen): the row is written whole, whatever an earlier life of the same owner left.
INSERT INTO {schema}.workers
    (owner, host, pid, version, plugins, job_types, queues, concurrency, threads, processes,
     stale_after_ms, draining)
VALUES (%(owner)s, %(host)s, %(pid)s, %(version)s, %(plugins)s, %(job_types)s, %(queues)s,
        %(concurrency)s, %(threads)s, %(processes)s, %(stale_after_ms)s, %(draining)s)
ON CONFLICT (owner) DO UPDATE
SET host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,
    plugins = EXCLUDED.plugins, job_types = EXCLUDED.job_types, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, threads = EXCLUDED.threads,
    processes = EXCLUDED.processes, stale_after_ms = EXCLUDED.stale_after_ms,
    draining = EXCLUDED.draining, heartbeat_at = now(), gone_at = NULL

-- set_worker_draining --
-- SIGTERM: the worker stops claiming and drains (its heartbeat says so too).
UPDATE {schema}.workers SET draining = true WHERE owner = %(owner)s

-- unregister_worker --
-- A clean shutdown: the worker leaves the registry.
DELETE FROM {schema}.workers WHERE owner = %(owner)s

-- expire_workers --
-- Workers whose heartbeat stopped (killed, frozen, cut off) for longer than their lease
-- are marked gone; rows gone for longer than `keep_s` seconds are deleted. Run by every
-- worker's rescuer: the row lock makes each change happen once, however many run it.
WITH gone AS (
    UPDATE {schema}.workers SET gone_at = now()
    WHERE gone_at IS NULL AND heartbeat_at < now() - stale_after_ms * interval '1 millisecond'
    RETURNING owner, host, pid, heartbeat_at
), removed AS (
    DELETE FROM {schema}.workers
    WHERE gone_at < now() - %(keep_s)s * interval '1 second'
    RETURNING owner, host, pid, heartbeat_at
)
SELECT 'gone' AS change, * FROM gone
UNION ALL
SELECT 'removed' AS change, * FROM removed

-- list_workers --
-- The registry, for `poel-host workers` and the dashboard. `status` is computed here too,
-- so that a worker found dead by nobody yet (every worker is down) shows as gone.
SELECT owner, host, pid, version, plugins, job_types, queues, concurrency, threads,
       processes, started_at, heartbeat_at, draining, gone_at,
       CASE WHEN gone_at IS NOT NULL
                 OR heartbeat_at < now() - stale_after_ms * interval '1 millisecond'
            THEN 'gone'
            WHEN draining THEN 'draining'
            ELSE 'alive' END AS status,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s
FROM {schema}.workers
ORDER BY host, started_at, owner

-- queue_depths --
-- For /metrics, every few seconds: by queue and job type, the jobs queued and due, counted
-- up to `cap` (a count of `cap` means at least that many), and how long the oldest has
-- waited. Index-only reads of jobs_queued_idx, whatever the size of the table or of the
-- backlog: a loose index scan finds each (queue, job type) with queued jobs (one probe
-- each), then each group's count reads at most `cap` index entries and its oldest one.
-- (A plain count(*) ... GROUP BY reads the whole backlog: 170 ms with a million queued.)
WITH RECURSIVE groups AS (
    (SELECT queue, job_type FROM {schema}.jobs WHERE state = 'queued'
     ORDER BY queue, job_type LIMIT 1)
    UNION ALL
    SELECT next.queue, next.job_type
    FROM groups AS g
    CROSS JOIN LATERAL (
        SELECT j.queue, j.job_type FROM {schema}.jobs AS j
        WHERE j.state = 'queued' AND (j.queue, j.job_type) > (g.queue, g.job_type)
        ORDER BY j.queue, j.job_type
        LIMIT 1
    ) AS next
)
SELECT g.queue, g.job_type, d.depth, extract(epoch FROM now() - o.oldest)::float8 AS oldest_s
FROM groups AS g
CROSS JOIN LATERAL (
    SELECT count(*) AS depth FROM (
        SELECT FROM {schema}.jobs AS j
        WHERE j.state = 'queued' AND j.queue = g.queue AND j.job_type = g.job_type
          AND j.run_at <= now()
        LIMIT %(cap)s
    ) AS capped
) AS d
CROSS JOIN LATERAL (
    SELECT min(j.run_at) AS oldest FROM {schema}.jobs AS j
    WHERE j.state = 'queued' AND j.queue = g.queue AND j.job_type = g.job_type
      AND j.run_at <= now()
) AS o
WHERE d.depth > 0

-- jobs_table_stats --
-- For /metrics, after queue_depths on the same connection: how the server sees the jobs
-- table. Row versions live and dead (the statistics system's estimates, flushed by each
-- backend within a second or so), seconds since its last vacuum by hand or by autovacuum
-- (NULL if never since the statistics were reset), how many times autovacuum ran on it,
-- and the size on disk of the table and of each of its indexes. Reads statistics views
-- and file sizes, no row of the table. No row at all if the table is not there.
SELECT t.n_live_tup AS live_tuples,
       t.n_dead_tup AS dead_tuples,
       extract(epoch FROM now() - greatest(t.last_vacuum, t.last_autovacuum))::float8
           AS last_vacuum_age_s,
       t.autovacuum_count AS autovacuums,
       pg_catalog.pg_relation_size(t.relid) AS table_bytes,
       (SELECT coalesce(
                   jsonb_object_agg(i.indexrelname, pg_catalog.pg_relation_size(i.indexrelid)),
                   jsonb_build_object())
        FROM pg_catalog.pg_stat_user_indexes AS i
        WHERE i.relid = t.relid) AS index_bytes
FROM pg_catalog.pg_stat_user_tables AS t
WHERE t.schemaname = %(schema)s AND t.relname = 'jobs'

-- autovacuum_settings --
-- At serve's start: whether autovacuum can clean the jobs table. The server's switches
-- (autovacuum, and track_counts, without which autovacuum never knows a table needs it)
-- and the table's own storage parameter autovacuum_enabled (NULL when the table does not
-- set it). All three are readable by any role. No row if the table is not there.
SELECT current_setting('autovacuum')::boolean AS server_autovacuum,
       current_setting('track_counts')::boolean AS track_counts,
       (SELECT o.option_value::boolean
        FROM pg_catalog.pg_options_to_table(c.reloptions) AS o
        WHERE o.option_name = 'autovacuum_enabled') AS table_autovacuum
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = 'jobs' AND c.relkind IN ('r', 'p')

-- get_job --
-- One job by id, live or finished (all_jobs: the jobs table, then one probe of each
-- history partition's id index). A workflow step's workflow and name; `waiting` when it
-- is queued with dependencies not ended yet.
SELECT id, queue, job_type, payload, state::text AS state, priority, run_at, attempts,
       max_attempts, last_error, errors, unique_key, lease_owner, lease_expires_at,
       created_at, started_at, finished_at, result, progress, progress_message, snoozes,
       key, workflow_id, step, waiting_on,
       coalesce(state = 'queued' AND waiting_on > 0, false) AS waiting
FROM {schema}.all_jobs WHERE id = %(id)s
LIMIT 1

-- list_jobs --
-- Recent jobs, newest first, optionally of one state and/or type, live or finished;
-- `waiting`: a queued workflow step with dependencies not ended yet.
SELECT id, queue, job_type, state::text AS state, priority, run_at, attempts, max_attempts,
       last_error, created_at, finished_at,
       coalesce(state = 'queued' AND waiting_on > 0, false) AS waiting
FROM {schema}.all_jobs
WHERE (%(state)s::text IS NULL OR state::text = %(state)s)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
ORDER BY id DESC
LIMIT %(limit)s

-- count_by_state --
-- Job counts per state, live and finished, for `poel-host jobs stats`. Counts every row
-- of the history: seconds with hundreds of millions kept.
SELECT state::text AS state, count(*) AS count FROM {schema}.all_jobs
GROUP BY state ORDER BY state

-- ping --
-- The health check, and the LISTEN connection's keep-alive: is the database answering?
SELECT 1

-- listen --
-- Be told of inserted jobs (the jobs table's trigger notifies with the schema's name).
LISTEN poel_jobs

-- listen_outcomes --
-- Be told when outcomes are written (finish_jobs and finish_succeeded notify with the
-- schema's name when a job they write has a waiter): Queue.result's wait.
LISTEN poel_outcomes

-- add_result_waiter --
-- Queue.result waits for this job: its outcome statement will notify. Rows of waiters
-- that died without removing theirs (older than a day) go at the same time.
WITH stale AS (
    DELETE FROM {schema}.result_waiters WHERE since < now() - interval '1 day'
)
INSERT INTO {schema}.result_waiters (job_id) VALUES (%(id)s)

-- remove_result_waiter --
-- Queue.result stopped waiting for this job (one row: another waiter may wait too).
DELETE FROM {schema}.result_waiters
WHERE ctid = (SELECT ctid FROM {schema}.result_waiters WHERE job_id = %(id)s LIMIT 1)

-- listen_cancel --
-- Be told of running jobs asked to stop (cancel_job notifies "<schema> <job id>").
LISTEN poel_cancel

-- set_statement_timeout --
-- Bound every query a handler runs by the time its job has left (milliseconds as text).
-- `local` is true behind a transaction pooler, where a session setting would stay on a
-- server connection that other clients get next: there it binds the handler's first
-- transaction only (the worker's own timer still bounds the whole job).
SELECT set_config('statement_timeout', %(ms)s, %(local)s)

-- find_jobs --
-- Jobs oldest first, optionally of one type and/or state, live or finished
-- (poel_host.testing's `enqueued`).
SELECT id, job_type, payload, state::text AS state, run_at, priority, queue, attempts,
       max_attempts, unique_key, last_error, errors
FROM {schema}.all_jobs
WHERE (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
  AND (%(state)s::text IS NULL OR state::text = %(state)s)
ORDER BY id

-- enqueue_slot --
-- Enqueue a periodic job for one cron slot, unless some worker already did: the slot row
-- gates the job in the same statement. Returns the job id, or nothing if the slot was taken.
WITH taken AS (
    INSERT INTO {schema}.schedule_slots (job_type, slot)
    VALUES (%(job_type)s, %(slot)s)
    ON CONFLICT (job_type, slot) DO NOTHING
    RETURNING job_type, slot
)
INSERT INTO {schema}.jobs (job_type, payload, run_at, priority, queue, max_attempts)
SELECT taken.job_type, '{{}}'::jsonb, taken.slot, %(priority)s, %(queue)s, %(max_attempts)s
FROM taken
RETURNING id

-- prune_slots --
-- Forget slots older than a week, keeping each job type's latest (it stops a worker that was
-- down from enqueueing that slot again).
DELETE FROM {schema}.schedule_slots AS s
WHERE s.slot < now() - interval '7 days'
  AND s.slot < (SELECT max(slot) FROM {schema}.schedule_slots WHERE job_type = s.job_type)

-- archive_finished --
-- Move up to `batch` jobs finished more than `after_s` seconds ago from the jobs table
-- into jobs_history (succeeded and cancelled into the partition of their finish time,
-- failed into jobs_dead), in one statement: a job is in one table or the other,
-- never both, never neither. A step keeps whether it runs anyway (its workflow's retry
-- may queue it again). Rows another archiver is moving are skipped, and succeeded
-- or cancelled ones past their retention are left to prune_finished (moving them would be
-- deleting them twice). Returns the ids.
WITH moved AS (
    DELETE FROM {schema}.jobs
    WHERE id IN (
        SELECT id FROM {schema}.jobs
        WHERE state IN ('succeeded', 'failed', 'cancelled')
          AND (finished_at < now() - %(after_s)s * interval '1 second' OR finished_at IS NULL)
          AND (state = 'failed'
               OR finished_at >= now() - %(succeeded_hours)s * interval '1 hour')
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
)
INSERT INTO {schema}.jobs_history
    (id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
     last_error, errors, unique_key, handbacks, created_at, started_at, finished_at,
     updated_at, result, progress, progress_message, snoozes, key, workflow_id, step,
     run_anyway)
SELECT id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
       last_error, errors, unique_key, handbacks, created_at, started_at,
       coalesce(finished_at, updated_at), updated_at, result, progress, progress_message,
       snoozes, key, workflow_id, step, run_anyway
FROM moved
RETURNING id

-- make_done_partitions --
-- The history's partitions for finished jobs, from `back_s` seconds ago to `ahead`
-- partitions past now (make_done_partitions in migration 0013).
SELECT {schema}.make_done_partitions(
    now() - %(back_s)s * interval '1 second',
    %(width_s)s * interval '1 second',
    %(ahead)s) AS made

-- drop_done_partitions --
-- Drop the history's partitions of finished jobs wholly past their retention; the names.
SELECT {schema}.drop_done_partitions(now() - %(succeeded_hours)s * interval '1 hour') AS name

-- prune_history --
-- What retention deletes row by row in the history: the default partition's jobs (a
-- finish time no partition covered) past succeeded_hours, and the dead letter's past
-- failed_hours (NULL keeps them). Up to `batch` of each; returns how many.
WITH done AS (
    DELETE FROM {schema}.jobs_done_default
    WHERE id IN (SELECT id FROM {schema}.jobs_done_default
                 WHERE finished_at < now() - %(succeeded_hours)s * interval '1 hour'
                 LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
    RETURNING 1
), dead AS (
    DELETE FROM {schema}.jobs_dead
    WHERE id IN (SELECT id FROM {schema}.jobs_dead
                 WHERE %(failed_hours)s::float8 IS NOT NULL
                   AND finished_at < now() - %(failed_hours)s::float8 * interval '1 hour'
                 LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT (SELECT count(*) FROM done) + (SELECT count(*) FROM dead) AS deleted

-- prune_finished --
-- Delete up to `batch` finished jobs older than their retention from the jobs table
-- (those the archiver has not moved: finished before an upgrade, or with archiving held
-- back): succeeded and cancelled after succeeded_hours, failed (the dead letter) after
-- failed_hours (NULL keeps them).
DELETE FROM {schema}.jobs
WHERE id IN (
    SELECT id FROM {schema}.jobs
    WHERE (state IN ('succeeded', 'cancelled')
           AND finished_at < now() - %(succeeded_hours)s * interval '1 hour')
       OR (state = 'failed' AND %(failed_hours)s::float8 IS NOT NULL
           AND finished_at < now() - %(failed_hours)s::float8 * interval '1 hour')
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id

-- prune_workflows --
-- Delete finished workflows past their retention, with their dependencies (migration
-- 0027). A workflow that ended without a failure goes succeeded_hours after it finished,
-- as its steps did; one with a failure (failed, or cancelled after one) is kept as the
-- dead letter is, and never less than its succeeded steps: the longer of failed_hours and
-- succeeded_hours (failed_hours NULL keeps it). A workflow without a finish time (running,
-- being cancelled, a step of it retried) is never deleted, however old its steps. Its
-- steps are not touched: each goes by its own retention, which has passed (a workflow
-- finishes with its last step). Bounded by steps, which its dependencies follow: up to
-- `batch` workflows are taken, oldest finish first, and deleted while the steps before
-- each come to less than `batch` (the first always is). Rows another pruner, or a retry
-- of one of its steps, holds are skipped. Returns how many workflows, and how many steps
-- they had (as many as `batch` or more: there may be more to prune).
WITH ended AS (
    SELECT id, steps, finished_at FROM {schema}.workflows
    WHERE finished_at IS NOT NULL AND failed_step IS NULL AND state <> 'running'
      AND finished_at < now() - %(succeeded_hours)s * interval '1 hour'
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), failed AS (
    SELECT id, steps, finished_at FROM {schema}.workflows
    WHERE finished_at IS NOT NULL AND failed_step IS NOT NULL AND state <> 'running'
      AND %(failed_hours)s::float8 IS NOT NULL
      AND finished_at < now() - greatest(%(failed_hours)s::float8, %(succeeded_hours)s)
                                * interval '1 hour'
    ORDER BY finished_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), chosen AS (
    SELECT id FROM (
        SELECT id, sum(steps) OVER (ORDER BY finished_at, id) - steps AS steps_before
        FROM (SELECT * FROM ended UNION ALL SELECT * FROM failed
              ORDER BY finished_at, id LIMIT %(batch)s) AS c
    ) AS w
    WHERE steps_before < %(batch)s
), gone AS (
    DELETE FROM {schema}.workflows AS w
    WHERE w.id IN (SELECT id FROM chosen)
    RETURNING w.id, w.steps
), dependencies AS (
    DELETE FROM {schema}.job_dependencies AS d
    WHERE d.workflow_id IN (SELECT id FROM gone)
)
SELECT count(*) AS workflows, coalesce(sum(steps), 0)::bigint AS steps FROM gone

-- make_due --
-- Make a queued job (a retry waiting out its backoff, or a job scheduled for later) due
-- now: the test kit's run_job.retry(), and an operator's "run now".
UPDATE {schema}.jobs SET run_at = now(), updated_at = now()
WHERE id = %(id)s AND state = 'queued'
RETURNING id

-- cancel_job --
-- Cancel a job: a queued one at once (`cancelled`); a running one is asked to stop
-- (`requested`): its cancel_requested is set and poel_cancel notified with the schema's
-- name and the job's id, so that the worker holding it (LISTENing) stops its handler
-- within a second; the heartbeat tells a worker that missed the notification. The trigger
-- jobs_cancel_requested keeps such a job from being queued again. No row: the job is
-- unknown or finished.
WITH workflow AS (
    -- A queued step's workflow is locked before the step is, in the order steps_ended
    -- takes them (the other way round, this cancel and an outcome releasing the step could
    -- each wait for the other). Not a running step's: the outcome statement ending it
    -- holds it while it waits for the workflow. No row for a job outside a workflow.
    SELECT w.id FROM {schema}.workflows AS w
    WHERE w.id = (SELECT j.workflow_id FROM {schema}.jobs AS j
                  WHERE j.id = %(id)s AND j.state = 'queued')
    FOR UPDATE
), done AS (
    UPDATE {schema}.jobs
    SET state = 'cancelled', finished_at = now(), updated_at = now()
    WHERE id = %(id)s AND state = 'queued'
      AND (SELECT count(*) FROM workflow) >= 0
    RETURNING id, workflow_id, state
), flows AS (
    -- A workflow step cancelled: steps_ended (migration 0023) cancels the steps waiting
    -- on it and fails its workflow. Not called for a job outside a workflow.
    SELECT {schema}.steps_ended(array_agg(id)) FROM done
    WHERE workflow_id IS NOT NULL
    HAVING count(*) > 0
), running AS (
    UPDATE {schema}.jobs
    SET cancel_requested = true, updated_at = now()
    WHERE id = %(id)s AND state = 'running'
    RETURNING id
)
SELECT id, 'cancelled' AS outcome FROM done WHERE (SELECT count(*) FROM flows) >= 0
UNION ALL
SELECT r.id, 'requested' FROM running AS r
CROSS JOIN LATERAL (SELECT pg_notify('poel_cancel', %(schema_name)s || ' ' || r.id)) AS n

-- retry_job --
-- Put a failed (dead-lettered) or cancelled job back in the queue with fresh attempts; its
-- error history is kept. In the jobs table it is queued again in place; in the history it
-- is moved back, in one statement (a live job holding its unique key makes the statement
-- fail, and the job stays where it is). A workflow's step is queued again by
-- requeue_steps (migration 0025), which locks its workflow first and recounts the
-- workflow's steps left (the step's end is then counted off once); it runs now, whatever
-- its dependencies did.
WITH step AS (
    SELECT unnest({schema}.requeue_steps(ARRAY[%(id)s::bigint], false)) AS id
    WHERE EXISTS (SELECT FROM {schema}.all_jobs
                  WHERE id = %(id)s AND workflow_id IS NOT NULL
                    AND state IN ('failed', 'cancelled'))
), in_place AS (
    UPDATE {schema}.jobs
    SET state = 'queued', run_at = now(), attempts = 0, finished_at = NULL,
        cancel_requested = false, updated_at = now()
    WHERE id = %(id)s AND state IN ('failed', 'cancelled') AND workflow_id IS NULL
    RETURNING id
), back AS (
    INSERT INTO {schema}.jobs
        (id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
         last_error, errors, unique_key, handbacks, created_at, updated_at, result,
         progress, progress_message, key, workflow_id, step)
    SELECT id, queue, job_type, payload, 'queued', priority, now(), 0, max_attempts,
           last_error, errors, unique_key, handbacks, created_at, now(), result, progress,
           progress_message, key, workflow_id, step
    FROM {schema}.jobs_history
    WHERE id = %(id)s AND state IN ('failed', 'cancelled') AND workflow_id IS NULL
    RETURNING id
), gone AS (
    DELETE FROM {schema}.jobs_history WHERE id IN (SELECT id FROM back)
)
SELECT id FROM in_place UNION ALL SELECT id FROM back UNION ALL SELECT id FROM step


-- close_schema --
-- Run at the end of every migration: nothing in Poel's schema is anyone's but its owner's
-- and the roles granted it by name. PostgreSQL gives EXECUTE on every new function to
-- PUBLIC, so on Supabase (whose API roles anon and authenticated get USAGE on a schema
-- exposed to its API) any function a migration adds would be theirs to call: revoked
-- here after each migration, whichever role ran it, and by default for the next ones.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC

-- lock_migrations --
-- Serialise migrations of one schema across processes, for the whole run (a migration
-- outside a transaction commits part way). Tried, not waited on: a session waiting in
-- pg_advisory_lock holds a snapshot, which CREATE INDEX CONCURRENTLY in the session
-- holding the lock waits to end. The caller polls instead. A migrator of an older
-- version waiting in pg_advisory_xact_lock on the same key is still kept out.
SELECT pg_try_advisory_lock(%(key)s) AS locked

-- unlock_migrations --
-- The end of a run (the session's end releases the lock too).
SELECT pg_advisory_unlock(%(key)s) AS unlocked

-- migration_timeouts --
-- The session's timeouts before a run, restored after it.
SELECT current_setting('lock_timeout') AS lock_timeout,
       current_setting('statement_timeout') AS statement_timeout

-- set_migration_timeouts --
-- Session-wide, so that they hold inside the run's transactions and outside them.
SELECT set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('statement_timeout', %(statement_timeout)s, false)

-- long_transactions --
-- The oldest transactions open longer than a migration waited for its lock: what to look
-- at when it could not take the lock.
SELECT pid, usename AS role, application_name,
       extract(epoch FROM now() - xact_start)::int AS seconds, state
FROM pg_stat_activity
WHERE xact_start < now() - %(ms)s * interval '1 millisecond' AND pid <> pg_backend_pid()
ORDER BY xact_start
LIMIT 3

-- migrations_table_exists --
-- Whether the schema's migrations table exists yet (a fresh database has none).
SELECT to_regclass(quote_ident(%(schema)s) || '.migrations') IS NOT NULL AS ok

-- applied_migrations --
-- Every migration applied, by owner (poel-host or a plugin's name) and version.
SELECT plugin, version FROM {schema}.migrations

-- record_migration --
-- Record one applied migration, in the transaction that applied it.
INSERT INTO {schema}.migrations (plugin, version, name)
VALUES (%(plugin)s, %(version)s, %(name)s)

-- dashboard_running_counts --
-- The dashboard's overview: running jobs by queue and type (the running jobs' partial
-- index: as many rows as run now).
SELECT queue, job_type, count(*) AS count
FROM {schema}.jobs
WHERE state = 'running'
GROUP BY queue, job_type

-- dashboard_failed_counts --
-- The dead letter by job type (index-only scans of jobs_failed_idx and jobs_dead_type_idx).
SELECT job_type, count(*) AS count
FROM {schema}.all_jobs
WHERE state = 'failed'
GROUP BY job_type

-- dashboard_last_hour --
-- Jobs finished in the last hour, by queue, type, state and minute: the overview's table
-- and chart (the finished jobs' index, read for the last hour only).
SELECT queue, job_type, state::text AS state,
       date_trunc('minute', finished_at) AS minute, count(*) AS count
FROM {schema}.all_jobs
WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at > now() - interval '1 hour'
GROUP BY queue, job_type, state, date_trunc('minute', finished_at)

-- dashboard_jobs --
-- The jobs page: newest first below id `before`, filtered. Bounded whatever the filters:
-- it looks at the `window` newest jobs below `before` (the primary key walked backwards)
-- and keeps the first `limit` that match; `lowest` and `scanned` say where the window
-- ended, so the next page goes on from there. (Without an index on every filter, a rare
-- type or error text would otherwise mean reading the whole table for one page.) One row
-- even when nothing matched: its job columns are NULL.
WITH scanned AS MATERIALIZED (
    SELECT id, queue, job_type, state, priority, run_at, attempts, max_attempts, last_error,
           created_at, started_at, finished_at, waiting_on
    FROM {schema}.all_jobs
    WHERE id < %(before)s
    ORDER BY id DESC
    LIMIT %(window)s
), matched AS (
    SELECT * FROM scanned
    WHERE (%(state)s::text IS NULL OR state::text = %(state)s)
      AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(error)s::text IS NULL OR strpos(lower(last_error), lower(%(error)s)) > 0)
    ORDER BY id DESC
    LIMIT %(limit)s
)
SELECT m.id, m.queue, m.job_type, m.state::text AS state, m.priority, m.run_at, m.attempts,
       m.max_attempts, left(m.last_error, 300) AS last_error, m.created_at, m.started_at,
       m.finished_at, w.lowest, w.scanned,
       coalesce(m.state = 'queued' AND m.waiting_on > 0, false) AS waiting
FROM (SELECT min(id) AS lowest, count(*) AS scanned FROM scanned) AS w
LEFT JOIN matched AS m ON true
ORDER BY m.id DESC

-- dashboard_failed_jobs --
-- The jobs page filtered to the dead letter: jobs_failed_idx and jobs_dead's ids, newest
-- first.
SELECT id, queue, job_type, state::text AS state, priority, run_at, attempts, max_attempts,
       left(last_error, 300) AS last_error, created_at, started_at, finished_at
FROM {schema}.all_jobs
WHERE state = 'failed' AND id < %(before)s
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(error)s::text IS NULL OR strpos(lower(last_error), lower(%(error)s)) > 0)
ORDER BY id DESC
LIMIT %(limit)s

-- dashboard_running --
-- What runs now: each running job, the worker holding it, how long ago that worker's
-- heartbeat (the lease of the jobs it holds) was written, and how long the lease has left:
-- the job's own expiry where it has one (given up, or an earlier version's worker), else
-- the heartbeat's.
SELECT j.id, j.queue, j.job_type, j.attempts, j.max_attempts, j.lease_owner,
       w.host, w.pid,
       extract(epoch FROM now() - j.started_at)::float8 AS running_s,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS lease_age_s,
       extract(epoch FROM coalesce(j.lease_expires_at,
                                   w.heartbeat_at + w.stale_after_ms * interval '1 millisecond')
                          - now())::float8 AS lease_left_s
FROM {schema}.jobs AS j
LEFT JOIN {schema}.workers AS w ON w.owner = j.lease_owner
WHERE j.state = 'running'
ORDER BY j.started_at
LIMIT %(limit)s

-- dashboard_last_slots --
-- Each periodic job type's latest enqueued slot.
SELECT job_type, max(slot) AS slot FROM {schema}.schedule_slots GROUP BY job_type

-- dashboard_delete_job --
-- An operator deletes one finished job, wherever it is.
WITH live AS (
    DELETE FROM {schema}.jobs
    WHERE id = %(id)s AND state IN ('succeeded', 'failed', 'cancelled')
    RETURNING id, job_type
), kept AS (
    DELETE FROM {schema}.jobs_history WHERE id = %(id)s RETURNING id, job_type
)
SELECT * FROM live UNION ALL SELECT * FROM kept

-- dashboard_retry_failed_type --
-- An operator queues every failed job of one type again with fresh attempts (error
-- histories kept), in the jobs table or moved back from the dead letter (as retry_job;
-- workflow steps by requeue_steps, which recounts their workflows' steps left).
-- Returns the ids.
WITH steps AS (
    SELECT unnest({schema}.requeue_steps(ARRAY(
               SELECT id FROM {schema}.all_jobs
               WHERE state = 'failed' AND job_type = %(job_type)s
                 AND workflow_id IS NOT NULL), false)) AS id
), in_place AS (
    UPDATE {schema}.jobs
    SET state = 'queued', run_at = now(), attempts = 0, finished_at = NULL,
        cancel_requested = false, updated_at = now()
    WHERE state = 'failed' AND job_type = %(job_type)s AND workflow_id IS NULL
    RETURNING id
), back AS (
    INSERT INTO {schema}.jobs
        (id, queue, job_type, payload, state, priority, run_at, attempts, max_attempts,
         last_error, errors, unique_key, handbacks, created_at, updated_at, result,
         progress, progress_message, key, workflow_id, step)
    SELECT id, queue, job_type, payload, 'queued', priority, now(), 0, max_attempts,
           last_error, errors, unique_key, handbacks, created_at, now(), result, progress,
           progress_message, key, workflow_id, step
    FROM {schema}.jobs_dead
    WHERE job_type = %(job_type)s AND workflow_id IS NULL
    ON CONFLICT DO NOTHING
    RETURNING id
), gone AS (
    DELETE FROM {schema}.jobs_history WHERE id IN (SELECT id FROM back)
)
SELECT id FROM in_place UNION ALL SELECT id FROM back UNION ALL SELECT id FROM steps

-- dashboard_audit --
-- Record one operator action.
INSERT INTO {schema}.audit (actor, address, action, job_id, job_type, detail)
VALUES (%(actor)s, %(address)s, %(action)s, %(job_id)s, %(job_type)s, %(detail)s)

-- dashboard_audit_log --
-- The latest operator actions.
SELECT id, at, actor, address, action, job_id, job_type, detail
FROM {schema}.audit ORDER BY id DESC LIMIT %(limit)s

-- dashboard_session_start --
-- A new signed-in session: the hash of its cookie's id, the token's MAC of that id, who
-- and from where, ending lifetime_s seconds from now (the server's clock, like every check).
INSERT INTO {schema}.dashboard_sessions (id_hash, token_mac, actor, address, expires_at)
VALUES (%(id_hash)s, %(token_mac)s, %(actor)s, %(address)s,
        now() + make_interval(secs => %(lifetime_s)s))
RETURNING id, issued_at, expires_at

-- dashboard_session --
-- The live session a cookie's hashed id names: not expired, not signed out. The caller
-- checks token_mac against the current token.
SELECT id, token_mac, actor, address, issued_at, expires_at
FROM {schema}.dashboard_sessions
WHERE id_hash = %(id_hash)s AND revoked_at IS NULL AND expires_at > now()

-- dashboard_session_end --
-- Sign-out: the session is revoked on the server, whatever the browser keeps.
UPDATE {schema}.dashboard_sessions SET revoked_at = now()
WHERE id_hash = %(id_hash)s AND revoked_at IS NULL
RETURNING id

-- dashboard_signin_attempt --
-- Count one sign-in attempt of an address in a fixed window of window_s seconds, in one
-- atomic upsert (the row lock orders concurrent attempts): the attempts of the window so
-- far, this one included, and the seconds until the window ends.
INSERT INTO {schema}.dashboard_signins AS s (address) VALUES (%(address)s)
ON CONFLICT (address) DO UPDATE SET
    window_start = CASE WHEN s.window_start <= now() - make_interval(secs => %(window_s)s)
                        THEN now() ELSE s.window_start END,
    attempts = CASE WHEN s.window_start <= now() - make_interval(secs => %(window_s)s)
                    THEN 1 ELSE s.attempts + 1 END
RETURNING attempts,
    ceil(extract(epoch FROM s.window_start + make_interval(secs => %(window_s)s) - now()))::int
        AS retry_after_s

-- dashboard_sessions_prune --
-- Forget sessions a day past their end and the counts of windows long over; run at each
-- sign-in, which the limit above keeps rare.
WITH sessions AS (
    DELETE FROM {schema}.dashboard_sessions WHERE expires_at < now() - interval '1 day'
)
DELETE FROM {schema}.dashboard_signins WHERE window_start < now() - interval '1 hour'

-- pause --
-- Pause a queue or a job type (see migration 0015): one row, if it was not paused yet.
-- True if this call paused it, false if it was paused already.
SELECT {schema}.pause(%(kind)s, %(name)s, %(reason)s, %(paused_by)s) AS paused

-- resume --
-- Resume a paused queue or job type (the pauses table's trigger wakes the idle workers).
-- True if it was paused, false if it was not.
SELECT {schema}.resume(%(kind)s, %(name)s) AS resumed

-- list_pauses --
-- What is paused, oldest first.
SELECT kind, name, paused_at, paused_by, reason FROM {schema}.pauses ORDER BY paused_at, kind, name

-- steer --
-- Set a queue's or a job type's steering by hand (see migration 0019): the row is
-- replaced whole and marked an operator's, which no serve overwrites.
SELECT {schema}.steer(%(kind)s, %(name)s, %(concurrency)s::integer, %(rate)s::integer,
                      %(per_ms)s::integer, %(per_key)s::boolean, %(fair)s::boolean,
                      %(weight)s::integer, %(key_weights)s::jsonb, %(key_field)s::text)

-- unsteer --
-- Remove a queue's or a job type's steering: true if it was steered, false if not.
SELECT {schema}.unsteer(%(kind)s, %(name)s) AS unsteered

-- list_steering --
-- Every steering row with what its gates hold now: the slots its running steered jobs
-- take (a type's, or a queue's), how many keys have running jobs and the busiest key's
-- slots (what a per_key limit holds each key to), and, for a rate, the starts in the
-- current window (a per_key rate: the busiest key's window). Only steered jobs count
-- (slots set), as the claim counts them; a gate's window is its steering_starts rows.
SELECT st.kind, st.name, st.concurrency, st.weight, st.rate, st.per_ms, st.per_key,
       st.fair, st.key_weights, st.key_field, st.source, st.set_at, st.set_by,
       u.running, u.running_keys, u.busiest_key, w.window_starts
FROM {schema}.steering AS st
CROSS JOIN LATERAL (
    SELECT coalesce(sum(r.slots), 0)::integer AS running, count(*)::integer AS running_keys,
           coalesce(max(r.slots), 0)::integer AS busiest_key
    FROM (
        SELECT sum(j.slots) AS slots
        FROM (SELECT j.key, j.slots FROM {schema}.jobs AS j
              WHERE st.kind = 'type' AND j.state = 'running' AND j.slots IS NOT NULL
                AND j.job_type = st.name
              UNION ALL
              SELECT NULL, j.slots FROM {schema}.jobs AS j
              WHERE st.kind = 'queue' AND j.state = 'running' AND j.slots IS NOT NULL
                AND j.queue = st.name) AS j
        GROUP BY j.key
    ) AS r
) AS u
CROSS JOIN LATERAL (
    SELECT coalesce(max(c.n), 0)::integer AS window_starts
    FROM (SELECT sum(ss.n) AS n FROM {schema}.steering_starts AS ss
          WHERE st.rate IS NOT NULL
            AND ss.started_at > now() - st.per_ms * interval '1 millisecond'
            AND CASE WHEN st.per_key THEN starts_with(ss.gate, 'key:' || st.name || ':')
                     ELSE ss.gate = st.kind || ':' || st.name END
          GROUP BY ss.gate) AS c
) AS w
ORDER BY st.kind, st.name

-- enqueue_workflow --
-- A workflow from Queue.enqueue_workflow: its steps as columns (checked, validated and
-- completed with their Jobs' defaults by the queue client), made into the JSON array
-- enqueue_workflow() takes (migration 0023), which stores it whole or not at all. A
-- step's delay becomes its run_at here, on the server's clock (as enqueue_jobs does).
SELECT {schema}.enqueue_workflow(%(name)s, (
    SELECT jsonb_agg(jsonb_build_object(
               'step', t.step, 'job_type', t.job_type, 'payload', t.payload::jsonb,
               'after', t.after::jsonb, 'run_anyway', t.run_anyway, 'queue', t.queue,
               'priority', t.priority, 'max_attempts', t.max_attempts,
               'unique_key', t.unique_key, 'key', t.key,
               'run_at', coalesce(t.run_at, CASE WHEN t.delay_ms > 0
                                                 THEN now() + t.delay_ms * interval '1 millisecond'
                                            END))
               ORDER BY t.n)
    FROM unnest(%(steps)s::text[], %(job_types)s::text[], %(payloads)s::text[],
                %(afters)s::text[], %(run_anyway)s::boolean[], %(run_ats)s::timestamptz[],
                %(delays_ms)s::bigint[], %(priorities)s::integer[], %(queues)s::text[],
                %(max_attempts)s::integer[], %(unique_keys)s::text[], %(keys)s::text[])
         WITH ORDINALITY
         AS t(step, job_type, payload, after, run_anyway, run_at, delay_ms, priority, queue,
              max_attempts, unique_key, key, n)
)) AS id

-- get_workflow --
-- One workflow's row (Queue.workflow).
SELECT id, name, state, steps, steps_left, failed_step, failed_error, created_at,
       finished_at, cancelled_at
FROM {schema}.workflows WHERE id = %(id)s

-- dashboard_workflows --
-- The dashboard's workflows page: newest first below id `before`, optionally in one state.
-- Bounded as the jobs page (dashboard_jobs): it looks at the `window` newest workflows below
-- `before` (the primary key walked backwards) and keeps the first `limit` in the state;
-- `lowest` and `scanned` say where the window ended, so the next page goes on from there.
-- One row even when nothing matched: its workflow columns are NULL.
WITH scanned AS MATERIALIZED (
    SELECT id, name, state, steps, steps_left, failed_step, failed_error, created_at,
           finished_at
    FROM {schema}.workflows
    WHERE id < %(before)s
    ORDER BY id DESC
    LIMIT %(window)s
), matched AS (
    SELECT * FROM scanned
    WHERE (%(state)s::text IS NULL OR state = %(state)s)
    ORDER BY id DESC
    LIMIT %(limit)s
)
SELECT m.id, m.name, m.state, m.steps, m.steps_left, m.failed_step,
       left(m.failed_error, 300) AS failed_error, m.created_at, m.finished_at, w.lowest,
       w.scanned
FROM (SELECT min(id) AS lowest, count(*) AS scanned FROM scanned) AS w
LEFT JOIN matched AS m ON true
ORDER BY m.id DESC

-- workflow_steps --
-- A workflow's steps, live or archived (all_jobs: one probe of each table's partial index
-- of steps), each with the steps it waits for (in the order the workflow added them, so
-- part[2] comes before part[10]) and how many of them have not ended yet (waiting_on;
-- NULL once it is archived).
WITH steps AS (
    SELECT id, step, job_type, state::text AS state, attempts, max_attempts, last_error,
           created_at, started_at, finished_at, waiting_on
    FROM {schema}.all_jobs WHERE workflow_id = %(id)s
)
SELECT s.*,
       ARRAY(SELECT p.step FROM {schema}.job_dependencies AS d
             JOIN steps AS p ON p.id = d.depends_on
             WHERE d.job_id = s.id ORDER BY p.id) AS after
FROM steps AS s
ORDER BY s.id

-- dependency_results --
-- What a step's handler reads of the steps it waits for (ctx.dependency_results): each
-- one's name, state and result, live or archived.
SELECT p.step, p.state::text AS state, p.result
FROM {schema}.job_dependencies AS d
JOIN {schema}.all_jobs AS p ON p.id = d.depends_on
WHERE d.job_id = %(id)s
ORDER BY p.id

-- list_workflows --
-- The newest workflows first, optionally in one state (poel-host workflows list).
SELECT id, name, state, steps, steps_left, failed_step, failed_error, created_at,
       finished_at, cancelled_at
FROM {schema}.workflows
WHERE (%(state)s::text IS NULL OR state = %(state)s)
ORDER BY id DESC
LIMIT %(limit)s

-- cancel_workflow --
-- Cancel a workflow's steps that have not ended (queued ones at once, running ones asked
-- to stop) and the workflow (cancel_workflow in migration 0025); a JSON object says what
-- changed. An unknown id raises no_data_found.
SELECT {schema}.cancel_workflow(%(id)s) AS outcome

-- retry_workflow --
-- Queue a failed or cancelled workflow's failed and cancelled steps again, and the
-- workflow running (retry_workflow in migration 0025); a JSON object says which steps.
-- Refused (object_not_in_prerequisite_state) while any of its steps runs.
SELECT {schema}.retry_workflow(%(id)s) AS outcome

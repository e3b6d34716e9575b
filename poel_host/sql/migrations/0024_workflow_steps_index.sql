-- The indexes of workflow steps (0023), built outside a transaction, so that no lock on
-- the jobs table is held while they are built. Only steps have an entry: a job outside a
-- workflow pays the predicate's check on insert, not an entry.
-- poel: no-transaction
-- A workflow's steps in the jobs table, one step name each: it finds a workflow's steps
-- (Queue.workflow) and keeps a step name from being used twice among the live steps.
DROP INDEX CONCURRENTLY IF EXISTS {schema}.jobs_workflow_step_idx;
CREATE UNIQUE INDEX CONCURRENTLY jobs_workflow_step_idx
    ON {schema}.jobs (workflow_id, step) WHERE workflow_id IS NOT NULL;
-- A workflow's steps in the history (Queue.workflow, and the results a step reads once
-- its dependencies were archived). A partitioned table's index cannot be built without a
-- lock: this one holds back the archiver's inserts (and an operator's retry from the
-- history) while it is built, never a claim or an outcome, which do not touch the history.
CREATE INDEX IF NOT EXISTS jobs_history_workflow_idx
    ON {schema}.jobs_history (workflow_id, step) WHERE workflow_id IS NOT NULL;

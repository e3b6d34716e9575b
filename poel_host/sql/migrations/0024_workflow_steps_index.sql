-- A workflow's steps in the jobs table, one step name each (0023), built without stopping
-- a claim. Only steps have an entry: a job outside a workflow pays the predicate's check
-- on insert, not an index entry. It finds a workflow's steps (Queue.workflow) and keeps a
-- step name from being used twice among the live steps.
-- poel: no-transaction
DROP INDEX CONCURRENTLY IF EXISTS {schema}.jobs_workflow_step_idx;
CREATE UNIQUE INDEX CONCURRENTLY jobs_workflow_step_idx
    ON {schema}.jobs (workflow_id, step) WHERE workflow_id IS NOT NULL;

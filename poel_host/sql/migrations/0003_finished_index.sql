-- Retention deletes finished jobs by age; this keeps that from scanning the table.
CREATE INDEX jobs_finished_idx ON {schema}.jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');

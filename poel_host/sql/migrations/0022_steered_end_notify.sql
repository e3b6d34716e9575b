-- A steered job's end is told to the idle workers by the statements that end running
-- attempts (finish, snooze, hand-back, rescue: see queries.sql), each once a statement
-- when one of its jobs had slots. The row trigger of migration 0017 did it for every
-- update of a job's state, steered or not: its WHEN was evaluated on each (about 0.4 µs
-- a row), a cost of the plain job path that steering must not add.
DROP TRIGGER jobs_steered_done ON {schema}.jobs;

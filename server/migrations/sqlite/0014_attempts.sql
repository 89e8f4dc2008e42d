-- Best-of-N attempts (issue 16). Keep this file in step with the other database's
-- 0014_attempts.sql.

-- The parent of an attempt: the id `run_in_sandbox` with `attempts: N` returned, shared by its N
-- runs. The parent has no row of its own: its status, usage and result are derived from these
-- children, so quotas, recovery and retention see only ordinary runs. NULL for a single run.
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
CREATE INDEX runs_parent ON runs (parent_run_id);

-- Admission across servers (issue 14). Keep this file in step with the other database's
-- 0013_admission.sql.

-- When the run was let in under its workspace's quota (still `queued` for a moment, then
-- `starting`); NULL while it waits. Every server on the database counts a workspace's admitted,
-- unfinished runs against max_concurrent_runs, and orders the waiting ones by (created_at, id).
ALTER TABLE runs ADD COLUMN admitted_at BIGINT;
CREATE INDEX runs_workspace_status ON runs (workspace_id, status);

-- Several `delegate serve` processes on one database: a run executes in the process that started it,
-- so a cancel asked of another process is recorded here and the owner picks it up (it polls for its
-- live runs). Keep this file in step with the other database's 0004_run_cancel.sql.
ALTER TABLE runs ADD COLUMN cancel_requested_at BIGINT;

-- The list endpoints order by (created_at DESC, id DESC) within a workspace (or sandbox): indexes
-- that end in `id` let both databases walk the index backwards and stop at the LIMIT, with no sort.
CREATE INDEX runs_workspace_listing ON runs (workspace_id, created_at, id);
CREATE INDEX runs_sandbox_listing ON runs (sandbox_id, created_at, id);
CREATE INDEX sandboxes_workspace_listing ON sandboxes (workspace_id, created_at, id);
DROP INDEX runs_workspace_created;
DROP INDEX runs_sandbox_created;
DROP INDEX sandboxes_workspace;

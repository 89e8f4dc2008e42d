-- Budgets and quotas (issue 14). Keep this file in step with the other database's 0010_budgets.sql.

-- A run's budget in US dollars (its max_cost_usd, or the default it got); NULL: none. The proxy
-- refuses the run's next model call once its usage costs this much.
ALTER TABLE runs ADD COLUMN max_cost_usd DOUBLE PRECISION;

-- A workspace's own limits, set by its maintainers; a NULL column falls back to the server's
-- DELEGATE_* default. Today's spend is not stored: it is a sum over `usage`, so it cannot drift.
CREATE TABLE workspace_limits (
    workspace_id        TEXT PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    max_run_cost_usd    DOUBLE PRECISION,
    daily_budget_usd    DOUBLE PRECISION,
    max_concurrent_runs BIGINT,
    max_warm_sandboxes  BIGINT,
    updated_at          BIGINT NOT NULL,
    updated_by          TEXT
);

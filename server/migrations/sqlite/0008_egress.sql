-- Egress (issue 12): a run's totals through the egress proxy, and a workspace's choice of the
-- egress policies its members may use. Both JSON text; NULL when there is nothing to say (no
-- egress, or the workspace has not chosen: every configured policy, the server's default).
-- Keep this file in step with the other database's 0008_egress.sql.
ALTER TABLE runs ADD COLUMN egress TEXT;
ALTER TABLE workspaces ADD COLUMN egress TEXT;

-- Retention (issue 14): the background pruner finds runs that ended before a cut-off, and usage
-- rows of no run made before one, without scanning whole tables.
-- Keep this file in step with the other database's 0011_retention.sql.
CREATE INDEX runs_finished ON runs (finished_at);
CREATE INDEX usage_created ON usage (created_at);

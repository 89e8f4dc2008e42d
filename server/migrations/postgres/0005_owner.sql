-- Which `delegate serve` process (its instance id, kept in its data dir) executes a run or holds a
-- process sandbox, so a restarted server reconciles only its own and leaves its peers' alone.
-- Keep this file in step with the other database's 0005_owner.sql.
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE sandboxes ADD COLUMN owner TEXT;

-- Repositories in, changes out: the repository a sandbox started from (RepoBase as JSON: repo,
-- commit, branch, dirty), copied onto each run in it, and the commit a run's change became (its
-- patch and bundle are files under the data dir, runs/<run id>/). NULL: no repository / no change.
-- Keep this file in step with the other database's 0006_repos.sql.
ALTER TABLE sandboxes ADD COLUMN base TEXT;
ALTER TABLE runs ADD COLUMN base TEXT;
ALTER TABLE runs ADD COLUMN commit_sha TEXT;

-- Issue 14 (hardening). Keep this file in step with the other database's 0007_hardening.sql.

-- Whether an account's email is known to belong to it: a password sign-up is not; an account made
-- by an administrator or by single sign-on with a verified email is. Single sign-on links a
-- verified identity to an existing account only when that account's email is verified too, so a
-- sign-up with someone else's address cannot be taken over by (or take over) their identity.
ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT FALSE;
-- Existing accounts: those with a verified identity, and those without a password (made by
-- `delegate user create` or single sign-on), are verified; password sign-ups stay unverified.
UPDATE users SET email_verified = TRUE
 WHERE password_hash IS NULL
    OR id IN (SELECT user_id FROM identities WHERE email_verified);

-- The client (hash of its IP address) that started a sign-in in progress, so one client can hold
-- only a few of the pending sign-ins.
ALTER TABLE sso_logins ADD COLUMN client_hash TEXT NOT NULL DEFAULT '';
CREATE INDEX sso_logins_client ON sso_logins (client_hash);

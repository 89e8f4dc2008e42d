-- Accounts: password sign-in (argon2id PHC strings; NULL for users without a password) and
-- one-time workspace invites, stored as SHA-256 hashes of their codes. Same file for SQLite and
-- PostgreSQL.

ALTER TABLE users ADD COLUMN password_hash TEXT;

CREATE TABLE invites (
    id           TEXT PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    role         TEXT NOT NULL,
    created_by   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    used_by      TEXT REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX invites_workspace ON invites (workspace_id);

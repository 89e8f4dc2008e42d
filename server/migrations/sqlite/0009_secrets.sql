-- Workspace secrets (issue 12): set by a workspace's maintainers, injected into the sandboxes
-- that name them. `sealed` is base64 of a random 24-byte nonce followed by the XChaCha20-Poly1305
-- ciphertext under DELEGATE_SECRET_KEY, with the workspace id and the name as associated data, so
-- a row copied to another workspace or name does not open. Values are never stored in the clear.
-- Keep this file in step with the other database's 0009_secrets.sql.
CREATE TABLE workspace_secrets (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    sealed       TEXT NOT NULL,
    updated_at   BIGINT NOT NULL,
    updated_by   TEXT,
    PRIMARY KEY (workspace_id, name)
);

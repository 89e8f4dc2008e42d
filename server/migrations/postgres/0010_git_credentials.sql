-- Workspace git credentials (issue 11): a username and token per git host (`host` or
-- `host:port`, port omitted when 443), used by the server's own clones of `https://` repos and
-- never handed to a sandbox. `sealed` is base64 of a random 24-byte nonce and the
-- XChaCha20-Poly1305 ciphertext of the token under DELEGATE_SECRET_KEY, with the workspace, the
-- host and the username as associated data. Tokens are never stored in the clear.
-- Keep this file in step with the other database's 0010_git_credentials.sql.
CREATE TABLE workspace_git_credentials (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    host         TEXT NOT NULL,
    username     TEXT NOT NULL,
    sealed       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    updated_by   TEXT,
    PRIMARY KEY (workspace_id, host)
);

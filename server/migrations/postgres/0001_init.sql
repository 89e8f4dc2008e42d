-- delegate's schema. Timestamps are BIGINT milliseconds since the Unix epoch; JSON is TEXT so that
-- SQLite and PostgreSQL share one code path. Keep this file in step with ../sqlite/0001_init.sql.

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE workspaces (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE members (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX members_user ON members (user_id);

CREATE TABLE sandboxes (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces (id),
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    backend        TEXT NOT NULL,
    status         TEXT NOT NULL,
    status_reason  TEXT,
    idle_timeout_s BIGINT,
    meta           TEXT NOT NULL DEFAULT '{}',
    created_by     TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX sandboxes_workspace ON sandboxes (workspace_id, created_at);
CREATE INDEX sandboxes_status ON sandboxes (status);

CREATE TABLE runs (
    id                 TEXT PRIMARY KEY,
    sandbox_id         TEXT NOT NULL REFERENCES sandboxes (id),
    workspace_id       TEXT NOT NULL REFERENCES workspaces (id),
    task               TEXT NOT NULL,
    model              TEXT,
    agent              TEXT,
    status             TEXT NOT NULL,
    timeout_s          BIGINT NOT NULL,
    created_by         TEXT,
    created_at         BIGINT NOT NULL,
    started_at         BIGINT,
    finished_at        BIGINT,
    final_message      TEXT NOT NULL DEFAULT '',
    changed_files      TEXT NOT NULL DEFAULT '[]',
    diff               TEXT NOT NULL DEFAULT '',
    diff_truncated     BOOLEAN NOT NULL DEFAULT FALSE,
    input_tokens       BIGINT NOT NULL DEFAULT 0,
    output_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    error_kind         TEXT,
    error_message      TEXT,
    ttft_ms            BIGINT
);
CREATE INDEX runs_workspace_created ON runs (workspace_id, created_at);
CREATE INDEX runs_sandbox_created ON runs (sandbox_id, created_at);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE run_events (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    ts     BIGINT NOT NULL,
    type   TEXT NOT NULL,
    data   TEXT NOT NULL,
    raw    TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    name         TEXT,
    user_id      TEXT REFERENCES users (id) ON DELETE CASCADE,
    sandbox_id   TEXT REFERENCES sandboxes (id),
    workspace_id TEXT REFERENCES workspaces (id),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT
);
-- The UNIQUE constraint already indexes hash; these serve revocation by owner.
CREATE INDEX tokens_user ON tokens (user_id);
CREATE INDEX tokens_sandbox ON tokens (sandbox_id);

CREATE TABLE usage (
    id                 TEXT PRIMARY KEY,
    sandbox_id         TEXT NOT NULL REFERENCES sandboxes (id),
    run_id             TEXT REFERENCES runs (id) ON DELETE CASCADE,
    workspace_id       TEXT NOT NULL REFERENCES workspaces (id),
    model              TEXT,
    input_tokens       BIGINT NOT NULL DEFAULT 0,
    output_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    status_code        BIGINT NOT NULL,
    ttft_ms            BIGINT,
    duration_ms        BIGINT NOT NULL,
    created_at         BIGINT NOT NULL
);
CREATE INDEX usage_run ON usage (run_id, created_at);
CREATE INDEX usage_workspace_created ON usage (workspace_id, created_at);
CREATE INDEX usage_sandbox ON usage (sandbox_id);

//! What the SQLite and PostgreSQL stores share: the SQL text (written once, with `$N` placeholders,
//! which both drivers accept), the row shapes as they come out of the database, their conversion to
//! the domain types of [`super`], and the translation of driver errors into [`StoreError`].
//!
//! The schemas of the two databases are the same on purpose (JSON as TEXT, timestamps as BIGINT
//! milliseconds, u64 counters as BIGINT), so every statement here runs unchanged on both.

use delegate_mcp::types::{
    ChangedFile, ErrorKind, Event, RepoBase, RunError, RunStatus, SandboxStatus, Usage,
};
use serde_json::Value;

use super::{
    Millis, Result, Role, Run, RunOutcome, Sandbox, SandboxKind, StoreError, TokenKind,
    TokenRecord, User, Workspace,
};

// ---- Users, workspaces, members -------------------------------------------------------------

pub(super) const INSERT_USER: &str =
    "INSERT INTO users (id, email, name, created_at) VALUES ($1, $2, $3, $4)";
pub(super) const USER_BY_ID: &str = "SELECT id, email, name, created_at FROM users WHERE id = $1";
pub(super) const USER_BY_EMAIL: &str =
    "SELECT id, email, name, created_at FROM users WHERE email = $1";

pub(super) const INSERT_WORKSPACE: &str =
    "INSERT INTO workspaces (id, slug, name, created_at) VALUES ($1, $2, $3, $4)";
pub(super) const WORKSPACE_BY_ID: &str =
    "SELECT id, slug, name, created_at FROM workspaces WHERE id = $1";
pub(super) const WORKSPACE_BY_SLUG: &str =
    "SELECT id, slug, name, created_at FROM workspaces WHERE slug = $1";

pub(super) const UPSERT_MEMBER: &str = "INSERT INTO members (workspace_id, user_id, role) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = excluded.role";
pub(super) const WORKSPACES_OF_USER: &str = "SELECT w.id, w.slug, w.name, w.created_at, m.role \
     FROM workspaces w JOIN members m ON m.workspace_id = w.id WHERE m.user_id = $1 \
     ORDER BY w.created_at, w.id";

pub(super) const MEMBER_ROLE: &str =
    "SELECT role FROM members WHERE workspace_id = $1 AND user_id = $2";

// ---- Sandboxes --------------------------------------------------------------------------------

const SANDBOX_COLUMNS: &str = "id, workspace_id, name, kind, backend, status, status_reason, \
     idle_timeout_s, meta, created_by, created_at, updated_at, base";

pub(super) const INSERT_SANDBOX: &str = "INSERT INTO sandboxes (id, workspace_id, name, kind, \
     backend, status, status_reason, idle_timeout_s, meta, created_by, created_at, updated_at, \
     base) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

pub(super) fn sandbox_by_id() -> String {
    format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1")
}

pub(super) fn list_sandboxes() -> String {
    format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE workspace_id = $1 AND status <> 'deleted' \
         ORDER BY created_at DESC, id DESC"
    )
}

/// Sandboxes whose status is one of `n` values bound as `$1..$n`.
pub(super) fn sandboxes_with_status(n: usize) -> String {
    format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE status IN ({}) ORDER BY created_at, id",
        placeholders(1, n)
    )
}

pub(super) const CAS_SANDBOX_STATUS: &str = "UPDATE sandboxes \
     SET status = $1, status_reason = $2, updated_at = $3 WHERE id = $4 AND status = $5";
pub(super) const SANDBOX_STATUS: &str = "SELECT status FROM sandboxes WHERE id = $1";
pub(super) const WORKSPACE_EGRESS: &str = "SELECT egress FROM workspaces WHERE id = $1";
pub(super) const SET_WORKSPACE_EGRESS: &str = "UPDATE workspaces SET egress = $1 WHERE id = $2";
pub(super) const PUT_WORKSPACE_SECRET: &str = "INSERT INTO workspace_secrets \
     (workspace_id, name, sealed, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (workspace_id, name) DO UPDATE SET sealed = excluded.sealed, \
     updated_at = excluded.updated_at, updated_by = excluded.updated_by";
pub(super) const WORKSPACE_SECRET: &str =
    "SELECT sealed FROM workspace_secrets WHERE workspace_id = $1 AND name = $2";
pub(super) const WORKSPACE_SECRET_NAMES: &str =
    "SELECT name, updated_at FROM workspace_secrets WHERE workspace_id = $1 ORDER BY name";
pub(super) const DELETE_WORKSPACE_SECRET: &str =
    "DELETE FROM workspace_secrets WHERE workspace_id = $1 AND name = $2";
pub(super) const PUT_GIT_CREDENTIAL: &str = "INSERT INTO workspace_git_credentials \
     (workspace_id, host, username, sealed, created_at, updated_at, updated_by) \
     VALUES ($1, $2, $3, $4, $5, $5, $6) \
     ON CONFLICT (workspace_id, host) DO UPDATE SET username = excluded.username, \
     sealed = excluded.sealed, updated_at = excluded.updated_at, updated_by = excluded.updated_by";
pub(super) const GIT_CREDENTIAL: &str = "SELECT username, sealed FROM workspace_git_credentials \
     WHERE workspace_id = $1 AND host = $2";
pub(super) const GIT_CREDENTIALS: &str = "SELECT host, username, created_at, updated_at \
     FROM workspace_git_credentials WHERE workspace_id = $1 ORDER BY host";
pub(super) const DELETE_GIT_CREDENTIAL: &str =
    "DELETE FROM workspace_git_credentials WHERE workspace_id = $1 AND host = $2";
// ---- Retention --------------------------------------------------------------------------------

/// Runs that ended before `$1`, oldest first, at most `$2`: never one still going, nor the
/// latest run of a warm sandbox that still exists (its next run starts from that one's work).
pub(super) const EXPIRED_RUNS: &str = "SELECT r.id FROM runs r \
     WHERE r.finished_at IS NOT NULL AND r.finished_at < $1 \
     AND r.status NOT IN ('queued', 'starting', 'running') \
     AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.id = r.sandbox_id AND s.kind = 'warm' \
         AND s.status <> 'deleted' AND NOT EXISTS (SELECT 1 FROM runs n \
             WHERE n.sandbox_id = s.id AND (n.created_at > r.created_at \
                 OR (n.created_at = r.created_at AND n.id > r.id)))) \
     ORDER BY r.finished_at, r.id LIMIT $2";
pub(super) const PRUNE_RUN_EVENTS: &str = "DELETE FROM run_events WHERE run_id = $1 AND seq IN \
     (SELECT seq FROM run_events WHERE run_id = $1 ORDER BY seq LIMIT $2)";
pub(super) const DELETE_RUN_USAGE: &str = "DELETE FROM usage WHERE run_id = $1";
pub(super) const DELETE_ENDED_RUN: &str =
    "DELETE FROM runs WHERE id = $1 AND finished_at IS NOT NULL";
pub(super) const PRUNE_USAGE: &str = "DELETE FROM usage WHERE id IN (SELECT id FROM usage \
     WHERE run_id IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2)";

pub(super) const SET_SANDBOX_META: &str =
    "UPDATE sandboxes SET meta = $1, updated_at = $2 WHERE id = $3";

// ---- Runs -------------------------------------------------------------------------------------

const RUN_COLUMNS: &str = "id, sandbox_id, workspace_id, task, model, agent, status, timeout_s, \
     created_by, created_at, started_at, finished_at, final_message, changed_files, diff, \
     diff_truncated, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, \
     error_kind, error_message, ttft_ms, base, commit_sha, egress, max_cost_usd, parent_run_id";

pub(super) const INSERT_RUN: &str = "INSERT INTO runs (id, sandbox_id, workspace_id, task, model, \
     agent, status, timeout_s, created_by, created_at, started_at, finished_at, final_message, \
     changed_files, diff, diff_truncated, input_tokens, output_tokens, cache_read_tokens, \
     cache_write_tokens, cost_usd, error_kind, error_message, ttft_ms, base, commit_sha, \
     max_cost_usd, parent_run_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)";

pub(super) fn run_by_id() -> String {
    format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1")
}

/// `$1` workspace, `$2` limit.
pub(super) fn list_runs() -> String {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE workspace_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    )
}

/// `$1` workspace, `$2` sandbox, `$3` limit.
pub(super) fn list_sandbox_runs() -> String {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE workspace_id = $1 AND sandbox_id = $2 \
         ORDER BY created_at DESC, id DESC LIMIT $3"
    )
}

/// Runs whose status is one of `n` values bound as `$1..$n`.
pub(super) fn runs_with_status(n: usize) -> String {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ({}) ORDER BY created_at, id",
        placeholders(1, n)
    )
}

/// `$2` is `now` when the run moves to `running` and NULL otherwise, so the first start sticks.
pub(super) const CAS_RUN_STATUS: &str = "UPDATE runs \
     SET status = $1, started_at = COALESCE(started_at, $2) WHERE id = $3 AND status = $4";
pub(super) const RUN_STATUS: &str = "SELECT status FROM runs WHERE id = $1";

pub(super) const FINISH_RUN: &str = "UPDATE runs SET status = $1, finished_at = $2, \
     final_message = $3, changed_files = $4, diff = $5, diff_truncated = $6, input_tokens = $7, \
     output_tokens = $8, cache_read_tokens = $9, cache_write_tokens = $10, cost_usd = $11, \
     error_kind = $12, error_message = $13, ttft_ms = $14, commit_sha = $15, egress = $18 \
     WHERE id = $16 AND status = $17";

// ---- Events -----------------------------------------------------------------------------------

pub(super) const INSERT_EVENT: &str =
    "INSERT INTO run_events (run_id, seq, ts, type, data, raw) VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const EVENTS_AFTER: &str = "SELECT seq, ts, type, data, raw FROM run_events \
     WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
pub(super) const EVENT_COUNT: &str = "SELECT COUNT(*) FROM run_events WHERE run_id = $1";

// ---- Tokens -----------------------------------------------------------------------------------

pub(super) const INSERT_TOKEN: &str = "INSERT INTO tokens (id, kind, hash, name, user_id, \
     sandbox_id, workspace_id, created_at, expires_at, revoked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(super) const TOKEN_BY_HASH: &str = "SELECT id, kind, hash, name, user_id, sandbox_id, \
     workspace_id, created_at, expires_at, revoked_at FROM tokens WHERE hash = $1";
/// Keeps the first revocation time when a token is revoked twice.
pub(super) const REVOKE_TOKEN: &str =
    "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
pub(super) const TOKEN_EXISTS: &str = "SELECT COUNT(*) FROM tokens WHERE id = $1";
pub(super) const REVOKE_SANDBOX_TOKENS: &str =
    "UPDATE tokens SET revoked_at = $1 WHERE sandbox_id = $2 AND revoked_at IS NULL";

/// `$1` now, `$2` hash, `$3` kind: revokes a live one-time token and returns it, in one statement.
pub(super) const CLAIM_TOKEN: &str = "UPDATE tokens SET revoked_at = $1 \
     WHERE hash = $2 AND kind = $3 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
     RETURNING id, kind, hash, name, user_id, sandbox_id, workspace_id, created_at, expires_at, revoked_at";

/// A user's API tokens, newest first (never session or sandbox tokens).
pub(super) const TOKENS_OF_USER: &str = "SELECT id, kind, hash, name, user_id, sandbox_id, \
     workspace_id, created_at, expires_at, revoked_at FROM tokens \
     WHERE user_id = $1 AND kind = 'api' ORDER BY created_at DESC, id DESC";

// ---- Usage ------------------------------------------------------------------------------------

pub(super) const INSERT_USAGE: &str = "INSERT INTO usage (id, sandbox_id, run_id, workspace_id, \
     model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, \
     status_code, ttft_ms, duration_ms, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// The casts keep the result types identical across databases (PostgreSQL sums BIGINT as NUMERIC;
/// SQLite's SUM of no rows is NULL).
pub(super) const RUN_USAGE: &str = "SELECT \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION), \
     (SELECT u2.ttft_ms FROM usage u2 WHERE u2.run_id = $1 AND u2.ttft_ms IS NOT NULL \
      ORDER BY u2.created_at, u2.id LIMIT 1) \
     FROM usage WHERE run_id = $1";

/// `$1` workspace, `$2` since (ms): the dollars of its calls since then.
pub(super) const WORKSPACE_SPEND_SINCE: &str = "SELECT \
     CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) \
     FROM usage WHERE workspace_id = $1 AND created_at >= $2";

pub(super) const WORKSPACE_LIMITS: &str = "SELECT max_run_cost_usd, daily_budget_usd, \
     max_concurrent_runs, max_warm_sandboxes FROM workspace_limits WHERE workspace_id = $1";
pub(super) const PUT_WORKSPACE_LIMITS: &str = "INSERT INTO workspace_limits (workspace_id, \
     max_run_cost_usd, daily_budget_usd, max_concurrent_runs, max_warm_sandboxes, updated_at, \
     updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (workspace_id) DO UPDATE SET max_run_cost_usd = excluded.max_run_cost_usd, \
     daily_budget_usd = excluded.daily_budget_usd, \
     max_concurrent_runs = excluded.max_concurrent_runs, \
     max_warm_sandboxes = excluded.max_warm_sandboxes, updated_at = excluded.updated_at, \
     updated_by = excluded.updated_by";

// ---- Admission: quotas that hold across servers sharing the database -------------------------

/// The first statement of an admission transaction: it takes the workspace row's lock on
/// PostgreSQL and the database's write lock on SQLite, so two servers (or two tasks) admitting into
/// one workspace at once take turns, and the count that follows cannot be stale when acted on. A
/// column that is no key is "changed", so PostgreSQL's lock (FOR NO KEY UPDATE) does not hold up
/// rows being written that refer to the workspace.
pub(super) const LOCK_WORKSPACE: &str = "UPDATE workspaces SET name = name WHERE id = $1";

/// `$1` workspace: its runs holding a slot (admitted, or started before admission was recorded)
/// and not finished.
pub(super) const WORKSPACE_ADMITTED_RUNS: &str = "SELECT COUNT(*) FROM runs \
     WHERE workspace_id = $1 AND (status IN ('starting', 'running') \
     OR (status = 'queued' AND admitted_at IS NOT NULL))";

/// `$1` run: its workspace, creation time and whether it still waits.
pub(super) const RUN_WAITING: &str = "SELECT workspace_id, created_at, \
     (status = 'queued' AND admitted_at IS NULL) FROM runs WHERE id = $1";

/// `$1` workspace, `$2` created_at, `$3` id: its waiting runs ahead of that one (the line's order
/// is (created_at, id), the same on every server).
pub(super) const WAITING_AHEAD: &str = "SELECT COUNT(*) FROM runs \
     WHERE workspace_id = $1 AND status = 'queued' AND admitted_at IS NULL \
     AND (created_at < $2 OR (created_at = $2 AND id < $3))";

/// `$1` now, `$2` run: lets a waiting run in.
pub(super) const ADMIT_RUN: &str = "UPDATE runs SET admitted_at = $1 \
     WHERE id = $2 AND status = 'queued' AND admitted_at IS NULL";

/// `$1` workspace: its warm sandboxes counted by `max_warm_sandboxes` (paused ones too).
pub(super) const WORKSPACE_WARM_SANDBOXES: &str = "SELECT COUNT(*) FROM sandboxes \
     WHERE workspace_id = $1 AND kind = 'warm' AND status NOT IN ('deleted', 'failed')";

/// Like [`RUN_USAGE`] over a workspace's calls; the last column is its number of runs.
pub(super) const WORKSPACE_USAGE: &str = "SELECT \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION), \
     (SELECT CAST(COUNT(*) AS BIGINT) FROM runs r WHERE r.workspace_id = $1) \
     FROM usage WHERE workspace_id = $1";

// ---- Operations -------------------------------------------------------------------------------

pub(super) const PING: &str = "SELECT CAST(1 AS BIGINT)";
pub(super) const RUN_STATUS_COUNTS: &str =
    "SELECT status, CAST(COUNT(*) AS BIGINT) FROM runs GROUP BY status";
pub(super) const SANDBOX_STATUS_COUNTS: &str =
    "SELECT status, CAST(COUNT(*) AS BIGINT) FROM sandboxes GROUP BY status";
pub(super) const USAGE_COUNT: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM usage";

/// `$first, $first+1, ...`, `n` of them.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- Value conversions ------------------------------------------------------------------------

/// u64 counters are stored as BIGINT; values past `i64::MAX` (never reached by real counters) are
/// clamped rather than wrapped into negatives.
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The inverse of [`to_i64`]; a negative number could only come from a corrupt row and reads as 0.
pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("corrupt {what} in database: {detail}"))
}

fn parse_json(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

pub(super) fn json_text(v: &Value) -> String {
    v.to_string()
}

/// A repository base as stored (JSON text), `None` for none.
pub(super) fn base_text(base: Option<&RepoBase>) -> Result<Option<String>> {
    base.map(|b| {
        serde_json::to_string(b).map_err(|e| StoreError::Database(format!("encoding base: {e}")))
    })
    .transpose()
}

fn parse_base(what: &str, text: Option<&str>) -> Result<Option<RepoBase>> {
    text.map(|t| serde_json::from_str(t).map_err(|e| corrupt(what, e)))
        .transpose()
}

pub(super) fn changed_files_text(files: &[ChangedFile]) -> Result<String> {
    serde_json::to_string(files).map_err(|e| StoreError::Database(format!("encoding files: {e}")))
}

pub(super) fn parse_role(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| corrupt("member role", s))
}

pub(super) fn parse_run_status(s: &str) -> Result<RunStatus> {
    RunStatus::parse(s).ok_or_else(|| corrupt("run status", s))
}

pub(super) fn parse_sandbox_status(s: &str) -> Result<SandboxStatus> {
    SandboxStatus::parse(s).ok_or_else(|| corrupt("sandbox status", s))
}

fn parse_error_kind(s: &str) -> Result<ErrorKind> {
    // ErrorKind has no `parse`; its serde names are the same strings as `as_str`.
    serde_json::from_value(Value::String(s.to_owned())).map_err(|_| corrupt("run error kind", s))
}

/// Turns a driver error into a [`StoreError`]; `entity` names what a missing row is.
pub(super) fn db_error(entity: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match e {
        sqlx::Error::RowNotFound => StoreError::NotFound(entity),
        sqlx::Error::Database(db) => match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                StoreError::Conflict(format!("{entity} already exists ({})", db.message()))
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => StoreError::Conflict(format!(
                "{entity} refers to a row that does not exist ({})",
                db.message()
            )),
            _ => StoreError::Database(db.message().to_owned()),
        },
        other => StoreError::Database(other.to_string()),
    }
}

/// The error of a compare-and-set that changed nothing: the row is in another status, or absent.
pub(super) fn stale_or_missing(
    entity: &'static str,
    id: &str,
    expected: &str,
    actual: Option<String>,
) -> StoreError {
    match actual {
        Some(actual) => StoreError::StaleStatus {
            entity,
            id: id.to_owned(),
            expected: expected.to_owned(),
            actual,
        },
        None => StoreError::NotFound(entity),
    }
}

// ---- Rows ---------------------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: String,
    email: String,
    name: String,
    created_at: Millis,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            email: r.email,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct MembershipRow {
    id: String,
    slug: String,
    name: String,
    created_at: Millis,
    role: String,
}

impl MembershipRow {
    pub(super) fn into_membership(self) -> Result<(Workspace, Role)> {
        let role = parse_role(&self.role)?;
        Ok((
            Workspace {
                id: self.id,
                slug: self.slug,
                name: self.name,
                created_at: self.created_at,
            },
            role,
        ))
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct WorkspaceRow {
    id: String,
    slug: String,
    name: String,
    created_at: Millis,
}

impl From<WorkspaceRow> for Workspace {
    fn from(r: WorkspaceRow) -> Self {
        Workspace {
            id: r.id,
            slug: r.slug,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SandboxRow {
    id: String,
    workspace_id: String,
    name: String,
    kind: String,
    backend: String,
    status: String,
    status_reason: Option<String>,
    idle_timeout_s: Option<i64>,
    meta: String,
    created_by: Option<String>,
    created_at: Millis,
    updated_at: Millis,
    base: Option<String>,
}

impl SandboxRow {
    pub(super) fn into_sandbox(self) -> Result<Sandbox> {
        Ok(Sandbox {
            kind: SandboxKind::parse(&self.kind)
                .ok_or_else(|| corrupt("sandbox kind", &self.kind))?,
            status: parse_sandbox_status(&self.status)?,
            meta: parse_json("sandbox meta", &self.meta)?,
            base: parse_base("sandbox base", self.base.as_deref())?,
            id: self.id,
            workspace_id: self.workspace_id,
            name: self.name,
            backend: self.backend,
            status_reason: self.status_reason,
            idle_timeout_s: self.idle_timeout_s,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
    id: String,
    sandbox_id: String,
    workspace_id: String,
    task: String,
    model: Option<String>,
    agent: Option<String>,
    status: String,
    timeout_s: i64,
    created_by: Option<String>,
    created_at: Millis,
    started_at: Option<Millis>,
    finished_at: Option<Millis>,
    final_message: String,
    changed_files: String,
    diff: String,
    diff_truncated: bool,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_write_tokens: i64,
    cost_usd: f64,
    error_kind: Option<String>,
    error_message: Option<String>,
    ttft_ms: Option<i64>,
    base: Option<String>,
    commit_sha: Option<String>,
    egress: Option<String>,
    max_cost_usd: Option<f64>,
    parent_run_id: Option<String>,
}

impl RunRow {
    pub(super) fn into_run(self) -> Result<Run> {
        let changed_files: Vec<ChangedFile> = serde_json::from_str(&self.changed_files)
            .map_err(|e| corrupt("run changed_files", e))?;
        let error = match self.error_kind {
            Some(kind) => Some(RunError {
                kind: parse_error_kind(&kind)?,
                message: self.error_message.unwrap_or_default(),
            }),
            None => None,
        };
        Ok(Run {
            status: parse_run_status(&self.status)?,
            id: self.id,
            sandbox_id: self.sandbox_id,
            workspace_id: self.workspace_id,
            task: self.task,
            model: self.model,
            agent: self.agent,
            timeout_s: self.timeout_s,
            created_by: self.created_by,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            parent_run_id: self.parent_run_id,
            outcome: RunOutcome {
                final_message: self.final_message,
                changed_files,
                diff: self.diff,
                diff_truncated: self.diff_truncated,
                usage: Usage {
                    input_tokens: to_u64(self.input_tokens),
                    output_tokens: to_u64(self.output_tokens),
                    cache_read_tokens: to_u64(self.cache_read_tokens),
                    cache_write_tokens: to_u64(self.cache_write_tokens),
                    cost_usd: self.cost_usd,
                },
                error,
                ttft_ms: self.ttft_ms,
                base: parse_base("run base", self.base.as_deref())?,
                commit: self.commit_sha,
                egress: match &self.egress {
                    Some(text) => {
                        Some(serde_json::from_str(text).map_err(|e| corrupt("run egress", e))?)
                    }
                    None => None,
                },
                max_cost_usd: self.max_cost_usd,
            },
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    seq: i64,
    ts: Millis,
    #[sqlx(rename = "type")]
    kind: String,
    data: String,
    raw: Option<String>,
}

impl EventRow {
    pub(super) fn into_event(self) -> Result<Event> {
        Ok(Event {
            seq: to_u64(self.seq),
            ts: self.ts,
            kind: self.kind,
            data: parse_json("event data", &self.data)?,
            raw: self
                .raw
                .as_deref()
                .map(|raw| parse_json("raw event", raw))
                .transpose()?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    id: String,
    kind: String,
    hash: String,
    name: Option<String>,
    user_id: Option<String>,
    sandbox_id: Option<String>,
    workspace_id: Option<String>,
    created_at: Millis,
    expires_at: Option<Millis>,
    revoked_at: Option<Millis>,
}

impl TokenRow {
    pub(super) fn into_token(self) -> Result<TokenRecord> {
        Ok(TokenRecord {
            kind: TokenKind::parse(&self.kind).ok_or_else(|| corrupt("token kind", &self.kind))?,
            id: self.id,
            hash: self.hash,
            name: self.name,
            user_id: self.user_id,
            sandbox_id: self.sandbox_id,
            workspace_id: self.workspace_id,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        })
    }
}

/// The result row of [`RUN_USAGE`].
pub(super) type UsageSumRow = (i64, i64, i64, i64, f64, Option<i64>);

pub(super) fn usage_from_sums(row: UsageSumRow) -> (Usage, Option<i64>) {
    let (input, output, cache_read, cache_write, cost_usd, ttft_ms) = row;
    (
        Usage {
            input_tokens: to_u64(input),
            output_tokens: to_u64(output),
            cache_read_tokens: to_u64(cache_read),
            cache_write_tokens: to_u64(cache_write),
            cost_usd,
        },
        ttft_ms,
    )
}

// ---- Accounts ---------------------------------------------------------------------------------

pub(super) const SET_PASSWORD_HASH: &str = "UPDATE users SET password_hash = $1 WHERE id = $2";
pub(super) const PASSWORD_HASH: &str = "SELECT password_hash FROM users WHERE id = $1";

/// `$1` workspace; highest role first, then by email.
pub(super) const WORKSPACE_MEMBERS: &str = "SELECT u.id, u.email, u.name, u.created_at, m.role \
     FROM members m JOIN users u ON u.id = m.user_id WHERE m.workspace_id = $1 \
     ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'maintainer' THEN 1 WHEN 'developer' THEN 2 \
     ELSE 3 END, u.email";

/// `$1` workspace, `$2` user, `$3` new role. Demoting an owner needs another owner, checked in the
/// same statement.
pub(super) const CHANGE_MEMBER_ROLE: &str = "UPDATE members SET role = $3 \
     WHERE workspace_id = $1 AND user_id = $2 AND (role <> 'owner' OR $3 = 'owner' OR \
     (SELECT COUNT(*) FROM members o WHERE o.workspace_id = $1 AND o.role = 'owner') > 1)";

/// `$1` workspace, `$2` user; the last owner stays.
pub(super) const REMOVE_MEMBER: &str = "DELETE FROM members \
     WHERE workspace_id = $1 AND user_id = $2 AND (role <> 'owner' OR \
     (SELECT COUNT(*) FROM members o WHERE o.workspace_id = $1 AND o.role = 'owner') > 1)";

pub(super) const INSERT_INVITE: &str = "INSERT INTO invites (id, hash, workspace_id, role, \
     created_by, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// `$1` now, `$2` hash: claims the invite if unused and unexpired, in one statement.
pub(super) const CLAIM_INVITE: &str = "UPDATE invites SET used_at = $1 \
     WHERE hash = $2 AND used_at IS NULL AND expires_at > $1 \
     RETURNING id, hash, workspace_id, role, created_by, created_at, expires_at, used_at";

/// A user's browser sessions, newest first.
pub(super) const SESSIONS_OF_USER: &str = "SELECT id, kind, hash, name, user_id, sandbox_id, \
     workspace_id, created_at, expires_at, revoked_at FROM tokens \
     WHERE user_id = $1 AND kind = 'session' ORDER BY created_at DESC, id DESC";

#[derive(sqlx::FromRow)]
pub(super) struct MemberRow {
    id: String,
    email: String,
    name: String,
    created_at: Millis,
    role: String,
}

impl MemberRow {
    pub(super) fn into_member(self) -> Result<(User, Role)> {
        let role = parse_role(&self.role)?;
        Ok((
            User {
                id: self.id,
                email: self.email,
                name: self.name,
                created_at: self.created_at,
            },
            role,
        ))
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct InviteRow {
    id: String,
    hash: String,
    workspace_id: String,
    role: String,
    created_by: String,
    created_at: Millis,
    expires_at: Millis,
    used_at: Option<Millis>,
}

impl InviteRow {
    pub(super) fn into_invite(self) -> Result<super::Invite> {
        Ok(super::Invite {
            role: parse_role(&self.role)?,
            id: self.id,
            hash: self.hash,
            workspace_id: self.workspace_id,
            created_by: self.created_by,
            created_at: self.created_at,
            expires_at: self.expires_at,
            used_at: self.used_at,
        })
    }
}

// ---- Multi-server -------------------------------------------------------------------------------

/// `$1` now, `$2` run id; only an active run takes a request, and the first request's time stays.
pub(super) const REQUEST_CANCEL: &str = "UPDATE runs \
     SET cancel_requested_at = COALESCE(cancel_requested_at, $1) \
     WHERE id = $2 AND status IN ('queued', 'starting', 'running')";

/// Which of `n` run ids (`$1..$n`) have a cancel request.
pub(super) fn cancel_requested(n: usize) -> String {
    format!(
        "SELECT id FROM runs WHERE id IN ({}) AND cancel_requested_at IS NOT NULL",
        placeholders(1, n)
    )
}

/// Event counts of `n` runs (`$1..$n`), one row per run that has events.
pub(super) fn event_counts(n: usize) -> String {
    format!(
        "SELECT run_id, CAST(COUNT(*) AS BIGINT) FROM run_events WHERE run_id IN ({}) \
         GROUP BY run_id",
        placeholders(1, n)
    )
}

// ---- Attempts ---------------------------------------------------------------------------------

/// The attempts of `n` parents (`$1..$n`), oldest first.
pub(super) fn runs_of_parents(n: usize) -> String {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id IN ({}) ORDER BY created_at, id",
        placeholders(1, n)
    )
}

// ---- Identities -------------------------------------------------------------------------------

pub(super) const IDENTITY: &str = "SELECT provider, subject, user_id, email, email_verified, \
     created_at FROM identities WHERE provider = $1 AND subject = $2";
pub(super) const INSERT_IDENTITY: &str = "INSERT INTO identities (provider, subject, user_id, \
     email, email_verified, created_at) VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const IDENTITIES_OF_USER: &str = "SELECT provider, subject, user_id, email, \
     email_verified, created_at FROM identities WHERE user_id = $1 ORDER BY created_at, provider, subject";

#[derive(sqlx::FromRow)]
pub(super) struct IdentityRow {
    provider: String,
    subject: String,
    user_id: String,
    email: Option<String>,
    email_verified: bool,
    created_at: Millis,
}

impl From<IdentityRow> for super::Identity {
    fn from(r: IdentityRow) -> Self {
        super::Identity {
            provider: r.provider,
            subject: r.subject,
            user_id: r.user_id,
            email: r.email,
            email_verified: r.email_verified,
            created_at: r.created_at,
        }
    }
}

pub(super) const PRUNE_SSO_LOGINS: &str = "DELETE FROM sso_logins WHERE created_at < $1";
pub(super) const COUNT_SSO_LOGINS: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM sso_logins";
pub(super) const COUNT_SSO_LOGINS_OF_CLIENT: &str =
    "SELECT CAST(COUNT(*) AS BIGINT) FROM sso_logins WHERE client_hash = $1";
pub(super) const INSERT_SSO_LOGIN: &str = "INSERT INTO sso_logins (state_hash, provider, \
     browser_hash, return_to, created_at, client_hash) VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const TAKE_SSO_LOGIN: &str = "DELETE FROM sso_logins WHERE state_hash = $1 \
     RETURNING state_hash, provider, browser_hash, return_to, created_at, client_hash";

#[derive(sqlx::FromRow)]
pub(super) struct SsoLoginRow {
    state_hash: String,
    provider: String,
    browser_hash: String,
    return_to: String,
    created_at: Millis,
    client_hash: String,
}

impl From<SsoLoginRow> for super::SsoLogin {
    fn from(r: SsoLoginRow) -> Self {
        super::SsoLogin {
            state_hash: r.state_hash,
            provider: r.provider,
            browser_hash: r.browser_hash,
            return_to: r.return_to,
            created_at: r.created_at,
            client_hash: r.client_hash,
        }
    }
}

// ---- Ownership --------------------------------------------------------------------------------

pub(super) const SET_RUN_OWNER: &str = "UPDATE runs SET owner = $1 WHERE id = $2";
pub(super) const SET_SANDBOX_OWNER: &str = "UPDATE sandboxes SET owner = $1 WHERE id = $2";
pub(super) const SANDBOX_OWNER: &str = "SELECT owner FROM sandboxes WHERE id = $1";

/// Rows of `owner` (or of nobody: written before ownership was recorded) in one of the statuses.
pub(super) fn runs_owned_with_status(n: usize) -> String {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE (owner = $1 OR owner IS NULL) AND status IN ({}) \
         ORDER BY created_at, id",
        placeholders(2, n)
    )
}

pub(super) fn sandboxes_owned_with_status(n: usize) -> String {
    format!(
        "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE (owner = $1 OR owner IS NULL) \
         AND status IN ({}) ORDER BY created_at, id",
        placeholders(2, n)
    )
}

// ---- Hardening (issue 14) -----------------------------------------------------------------------

pub(super) const SET_EMAIL_VERIFIED: &str = "UPDATE users SET email_verified = $1 WHERE id = $2";
pub(super) const EMAIL_VERIFIED: &str = "SELECT email_verified FROM users WHERE id = $1";

/// A workspace's invites, newest first, used and expired ones included.
pub(super) const INVITES_OF_WORKSPACE: &str = "SELECT id, hash, workspace_id, role, created_by, \
     created_at, expires_at, used_at FROM invites WHERE workspace_id = $1 \
     ORDER BY created_at DESC, id DESC";
/// `$1` workspace, `$2` invite id: only an unused invite can be revoked (a used one is history).
pub(super) const DELETE_INVITE: &str =
    "DELETE FROM invites WHERE workspace_id = $1 AND id = $2 AND used_at IS NULL";

/// `$1` now, `$2` workspace, `$3` user: the credentials a member holds for one workspace (tunnel
/// tokens, agent codes, API tokens scoped to it), revoked when they leave it.
pub(super) const REVOKE_MEMBER_TOKENS: &str = "UPDATE tokens SET revoked_at = $1 \
     WHERE workspace_id = $2 AND user_id = $3 AND revoked_at IS NULL \
     AND kind IN ('tunnel', 'agent_code', 'api')";
pub(super) const SSO_BROWSER_PENDING: &str =
    "SELECT CAST(COUNT(*) AS BIGINT) FROM sso_logins WHERE browser_hash = $1 AND created_at >= $2";

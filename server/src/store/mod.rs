//! Storage: one [`Store`] trait with domain-shaped methods, implemented for SQLite (the embedded
//! default, WAL mode, in the data dir) and PostgreSQL. Nothing above this module names sqlx: driver
//! errors become [`StoreError`].
//!
//! Status columns are written only through compare-and-set methods (`expected` current status), so
//! two writers cannot both move one run or sandbox; which transitions are legal is decided by
//! `crate::state`, in one place, before the store is called.

mod methods;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use delegate_mcp::types::{
    ChangedFile, Event, RepoBase, RunError, RunStatus, SandboxStatus, Usage,
};
use serde_json::Value;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Why a store call failed, in domain terms; callers never see a driver error type.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No row matched; the value names the entity (`"run"`, `"sandbox"`, ...).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule or an invariant refused the write (duplicate email, last owner, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A compare-and-set found another status than the caller expected.
    #[error("{entity} {id} is {actual}, not {expected}")]
    StaleStatus {
        /// The kind of row: `"run"` or `"sandbox"`.
        entity: &'static str,
        /// The row's id.
        id: String,
        /// The status the caller expected.
        expected: String,
        /// The status the row actually has.
        actual: String,
    },
    /// The database URL is neither `sqlite:` nor `postgres://`; the message never repeats
    /// credentials.
    #[error("bad database url: {0}")]
    BadUrl(String),
    /// Any other driver failure, as text (connection lost, constraint the store does not
    /// translate).
    #[error("database error: {0}")]
    Database(String),
    /// Applying the embedded migrations failed at start-up.
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Results of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch; every timestamp column holds one.
pub type Millis = i64;

/// An account: a person who signs in (password, SSO) or holds API tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// `usr_...`, assigned at creation.
    pub id: String,
    /// Unique and normalised (see `names::Email`); the key password sign-in and SSO linking use.
    pub email: String,
    /// Display name; the email's local part unless one was given.
    pub name: String,
    /// When the account was created.
    pub created_at: Millis,
}

/// A tenant: sandboxes, runs, tokens and members all belong to exactly one workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    /// `wsp_...`, assigned at creation.
    pub id: String,
    /// Unique, URL-safe short name that clients use to pick a workspace (`workspace` in MCP and
    /// REST).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// When the workspace was created.
    pub created_at: Millis,
}

/// A member's role in a workspace, lowest first, so `Ord` compares rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// May read the workspace: members, sandboxes, runs, events, usage.
    Guest,
    /// May also start and cancel runs and manage sandboxes.
    Developer,
    /// May also add, change and remove members below maintainer, and create invites.
    Maintainer,
    /// May do anything, to any member; every workspace keeps at least one owner.
    Owner,
}

impl Role {
    /// The name stored in the database and shown on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Owner => "owner",
        }
    }
    /// The inverse of [`Role::as_str`]; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        [Role::Guest, Role::Developer, Role::Maintainer, Role::Owner]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// How long a sandbox lives and where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxKind {
    /// Created for one run and destroyed after it.
    Ephemeral,
    /// Kept running (`opencode serve`) for several runs and for people.
    Warm,
    /// A developer's own machine, joined through the tunnel (`delegate agent connect`).
    Local,
}

impl SandboxKind {
    /// The name stored in the database and shown on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Ephemeral => "ephemeral",
            SandboxKind::Warm => "warm",
            SandboxKind::Local => "local",
        }
    }
    /// The inverse of [`SandboxKind::as_str`]; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ephemeral" => Some(SandboxKind::Ephemeral),
            "warm" => Some(SandboxKind::Warm),
            "local" => Some(SandboxKind::Local),
            _ => None,
        }
    }
}

/// A sandbox row: one isolated work dir (and, when warm, an opencode server) that runs execute in.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// `sbx_...`, assigned at creation.
    pub id: String,
    /// The workspace the sandbox belongs to.
    pub workspace_id: String,
    /// Display name, unique only by convention.
    pub name: String,
    /// Ephemeral, warm or local; fixed at creation.
    pub kind: SandboxKind,
    /// `process`, `docker`, `kubernetes` or `local`.
    pub backend: String,
    /// Current lifecycle status; changed only through [`Store::set_sandbox_status`].
    pub status: SandboxStatus,
    /// Why the sandbox is `failed` (or other human-readable context for its status).
    pub status_reason: Option<String>,
    /// Seconds without activity before a warm sandbox is paused; `None` uses the server's default.
    pub idle_timeout_s: Option<i64>,
    /// Backend-specific facts (work dir, container id, ...); never secrets.
    pub meta: Value,
    /// Who created it, in the same `user:<id>` / `token:<id>` / `mcp:<client>` form as
    /// [`Run::created_by`].
    pub created_by: Option<String>,
    /// When the sandbox was created.
    pub created_at: Millis,
    /// When its status or meta last changed.
    pub updated_at: Millis,
    /// The repository its work dir started from; `None` for an empty sandbox.
    pub base: Option<RepoBase>,
}

/// A run row: one delegated task in one sandbox, from queueing to its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// `run_...`, assigned at creation.
    pub id: String,
    /// The sandbox the run executes in.
    pub sandbox_id: String,
    /// The sandbox's workspace, denormalised for listing and authorization.
    pub workspace_id: String,
    /// The task text as the caller gave it.
    pub task: String,
    /// The model opencode was told to use (the caller's choice or the server's default).
    pub model: Option<String>,
    /// The opencode agent to run with; `None` for opencode's default.
    pub agent: Option<String>,
    /// Current status; changed only through [`Store::set_run_status`] and [`Store::finish_run`].
    pub status: RunStatus,
    /// The run's time limit in seconds; past it the run ends `timed_out`.
    pub timeout_s: i64,
    /// Who delegated it: `user:<id>`, `token:<id>`, `mcp:<client name>`, `cli`.
    pub created_by: Option<String>,
    /// When the run was queued.
    pub created_at: Millis,
    /// When it moved to `running`; `None` before.
    pub started_at: Option<Millis>,
    /// When it reached a terminal status; `None` while active.
    pub finished_at: Option<Millis>,
    /// The best-of-N parent this run is an attempt of (`run_in_sandbox` with `attempts`), written
    /// with the row so an attempt is never seen without it; `None` for a single run.
    pub parent_run_id: Option<String>,
    /// What it produced; empty ([`RunOutcome::default`]) until it ends.
    pub outcome: RunOutcome,
}

/// What a run produced; filled when it ends (but for `base`, known from the start).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutcome {
    /// opencode's last assistant text.
    pub final_message: String,
    /// Files the run added, modified or deleted in the work dir.
    pub changed_files: Vec<ChangedFile>,
    /// Unified diff of the changes, capped at `DELEGATE_DIFF_MAX_BYTES`.
    pub diff: String,
    /// Whether [`RunOutcome::diff`] was cut at the cap.
    pub diff_truncated: bool,
    /// Tokens and cost, summed over the run's model calls through the proxy.
    pub usage: Usage,
    /// Why the run did not succeed; `None` when it did.
    pub error: Option<RunError>,
    /// Time to the first token of the first model call, as the proxy measured it.
    pub ttft_ms: Option<i64>,
    /// The repository the run's sandbox started from; written when the run is recorded
    /// ([`Store::insert_run`]), never changed after.
    pub base: Option<RepoBase>,
    /// The commit the run's change became (its patch and bundle are kept under the data dir);
    /// `None` when nothing was collected.
    pub commit: Option<String>,
    /// Connections through the egress proxy; `None` when the sandbox had no egress.
    pub egress: Option<delegate_mcp::types::EgressSummary>,
    /// The run's budget in dollars (its `max_cost_usd` or the default it got); written when the
    /// run is recorded, never changed after. `None`: no per-run budget.
    pub max_cost_usd: Option<f64>,
}

/// A workspace's own limits, set by its maintainers; `None` falls back to the server default.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkspaceLimits {
    /// A run's `max_cost_usd` when its caller gives none.
    pub max_run_cost_usd: Option<f64>,
    /// What the workspace's model calls may cost per UTC day.
    pub daily_budget_usd: Option<f64>,
    /// The workspace's runs at once; more wait in `queued`.
    pub max_concurrent_runs: Option<u64>,
    /// The workspace's warm sandboxes, paused ones included.
    pub max_warm_sandboxes: Option<u64>,
}

/// A workspace git credential as listed: never its token.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    sqlx::FromRow,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub struct GitCredentialInfo {
    /// The git host it is sent to: `host`, or `host:port` when the port is not 443.
    pub host: String,
    /// The user name sent with the token.
    pub username: String,
    /// When it was first set (ms since the epoch).
    pub created_at: Millis,
    /// When it was last set (ms since the epoch).
    pub updated_at: Millis,
}

/// What kind of secret a token row stands for. Only the SHA-256 of the secret is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `dlg_...` API tokens of users.
    Api,
    /// A sandbox's credential for the Anthropic proxy.
    Sandbox,
    /// A browser session.
    Session,
    /// A local agent's credential for its tunnel (`dlt_...`), bound to one sandbox.
    Tunnel,
    /// A one-time, expiring code that registers a local agent in a workspace.
    AgentCode,
}

impl TokenKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Sandbox => "sandbox",
            TokenKind::Session => "session",
            TokenKind::Tunnel => "tunnel",
            TokenKind::AgentCode => "agent_code",
        }
    }
    /// The inverse of [`TokenKind::as_str`]; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "api" => Some(TokenKind::Api),
            "sandbox" => Some(TokenKind::Sandbox),
            "session" => Some(TokenKind::Session),
            "tunnel" => Some(TokenKind::Tunnel),
            "agent_code" => Some(TokenKind::AgentCode),
            _ => None,
        }
    }
}

/// A stored credential: the hash of a secret and what it grants. See `credentials` for the
/// prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    /// `tok_...`, or `ses_...` for browser sessions; what lists and revocation refer to.
    pub id: String,
    /// Which kind of secret this is; a secret is only accepted as its own kind.
    pub kind: TokenKind,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// A label the holder chose (API tokens) or the sandbox's name (tunnel tokens); `None`
    /// otherwise.
    pub name: Option<String>,
    /// The user the token acts for (API, session, agent code, tunnel); `None` for sandbox tokens.
    pub user_id: Option<String>,
    /// The sandbox the token is bound to (sandbox and tunnel tokens).
    pub sandbox_id: Option<String>,
    /// The workspace the token is limited to; `None` for an unscoped API token or a session.
    pub workspace_id: Option<String>,
    /// When it was issued.
    pub created_at: Millis,
    /// When it stops being accepted; `None` never expires.
    pub expires_at: Option<Millis>,
    /// When it was revoked (or, for a one-time code, used); `None` while live.
    pub revoked_at: Option<Millis>,
}

/// One model call through the Anthropic proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// `use_...`, assigned when the call ends.
    pub id: String,
    /// The sandbox whose proxy token made the call.
    pub sandbox_id: String,
    /// The run that was active in the sandbox at the time; `None` for calls outside a run.
    pub run_id: Option<String>,
    /// The sandbox's workspace.
    pub workspace_id: String,
    /// The model the response named, else the one requested; `None` if neither was readable.
    pub model: Option<String>,
    /// Tokens and cost scanned from the upstream response.
    pub usage: Usage,
    /// The upstream HTTP status.
    pub status_code: i64,
    /// Milliseconds from sending the request to the first content chunk; `None` if none came.
    pub ttft_ms: Option<i64>,
    /// Milliseconds from sending the request to the end of the response body.
    pub duration_ms: i64,
    /// When the call ended.
    pub created_at: Millis,
}

/// An event about to be appended; the orchestrator assigns `seq` (one writer per run).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The run the event belongs to.
    pub run_id: String,
    /// Position in the run's log, from 1, without gaps.
    pub seq: u64,
    /// When the event happened (or was observed).
    pub ts: Millis,
    /// The normalised event type (`text`, `tool`, `step`, `error`, ...; unknown types kept as is).
    pub kind: String,
    /// The normalised payload that clients read.
    pub data: Value,
    /// opencode's original event, kept for debugging and replay; `None` for server-made events.
    pub raw: Option<Value>,
}

/// How many runs and sandboxes are in each status, and how many model calls the proxy recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusCounts {
    /// Run count per run status, statuses with no runs left out.
    pub runs: Vec<(RunStatus, u64)>,
    /// Sandbox count per sandbox status, statuses with no sandboxes left out.
    pub sandboxes: Vec<(SandboxStatus, u64)>,
    /// How many model calls the proxy has recorded in total.
    pub proxy_requests: u64,
}

/// Everything delegate persists, behind one object-safe trait so handlers and the orchestrator do
/// not depend on the database. Each method is one domain operation, atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    // Users, workspaces, members.
    /// Inserts a user; `Conflict` if the email is taken.
    async fn create_user(&self, user: &User) -> Result<()>;
    /// The user with this id.
    async fn user_by_id(&self, id: &str) -> Result<User>;
    /// The user with this (normalised) email.
    async fn user_by_email(&self, email: &str) -> Result<User>;
    /// Inserts a workspace and makes `owner_user_id` its owner, in one transaction; `Conflict` if
    /// the slug is taken.
    async fn create_workspace(&self, ws: &Workspace, owner_user_id: &str) -> Result<()>;
    /// The workspace with this id.
    async fn workspace_by_id(&self, id: &str) -> Result<Workspace>;
    /// The workspace with this slug.
    async fn workspace_by_slug(&self, slug: &str) -> Result<Workspace>;
    /// The workspaces a user is a member of, oldest first, with the user's role in each.
    async fn workspaces_of_user(&self, user_id: &str) -> Result<Vec<(Workspace, Role)>>;
    /// Adds a member with `role`, or changes the role of an existing one (no last-owner check; see
    /// [`Store::change_member_role`]).
    async fn set_member(&self, workspace_id: &str, user_id: &str, role: Role) -> Result<()>;
    /// A user's role in a workspace; `None` if they are not a member.
    async fn member_role(&self, workspace_id: &str, user_id: &str) -> Result<Option<Role>>;
    /// The workspace's egress choice (`{"allowed": [...], "default": ...}`) as its admins set
    /// it; `None` when they have not.
    async fn workspace_egress(&self, workspace_id: &str) -> Result<Option<Value>>;
    /// Sets (or with `None` clears) the workspace's egress choice.
    async fn set_workspace_egress(&self, workspace_id: &str, egress: Option<&Value>) -> Result<()>;
    /// Sets (or replaces) a workspace secret, already sealed (encrypted) by the caller.
    async fn put_workspace_secret(
        &self,
        workspace_id: &str,
        name: &str,
        sealed: &str,
        updated_by: Option<&str>,
        now: Millis,
    ) -> Result<()>;
    /// A workspace secret's sealed value; `None` when there is none of that name.
    async fn workspace_secret(&self, workspace_id: &str, name: &str) -> Result<Option<String>>;
    /// The names of a workspace's secrets with when each was last set, by name.
    async fn workspace_secret_names(&self, workspace_id: &str) -> Result<Vec<(String, Millis)>>;
    /// Removes a workspace secret; whether there was one.
    async fn delete_workspace_secret(&self, workspace_id: &str, name: &str) -> Result<bool>;

    /// Sets (or replaces) the workspace's git credential for `host`, its token already sealed.
    async fn put_git_credential(
        &self,
        workspace_id: &str,
        host: &str,
        username: &str,
        sealed: &str,
        updated_by: Option<&str>,
        now: Millis,
    ) -> Result<()>;
    /// The workspace's git credential for `host` as (username, sealed token); `None` if unset.
    async fn git_credential(
        &self,
        workspace_id: &str,
        host: &str,
    ) -> Result<Option<(String, String)>>;
    /// The workspace's git credentials, by host, without their tokens.
    async fn git_credentials(&self, workspace_id: &str) -> Result<Vec<GitCredentialInfo>>;
    /// Removes the workspace's git credential for `host`; whether there was one.
    async fn delete_git_credential(&self, workspace_id: &str, host: &str) -> Result<bool>;

    // Retention: each call is one short statement, so pruning never holds a long transaction.
    /// Up to `limit` runs that ended before `ended_before`, oldest first, that may be pruned: not
    /// one still going, nor the latest run of a warm sandbox that still exists.
    async fn expired_runs(&self, ended_before: Millis, limit: i64) -> Result<Vec<String>>;
    /// Deletes up to `limit` of a run's events (the first ones); how many went.
    async fn prune_run_events(&self, run_id: &str, limit: i64) -> Result<u64>;
    /// Deletes a run that ended, with its usage rows (its events should be pruned first);
    /// returns (runs, usage rows) deleted.
    async fn delete_ended_run(&self, run_id: &str) -> Result<(u64, u64)>;
    /// Deletes up to `limit` usage rows of no run recorded before `before`; how many went.
    async fn prune_usage(&self, before: Millis, limit: i64) -> Result<u64>;

    // Sandboxes.
    /// Inserts a new sandbox row.
    async fn insert_sandbox(&self, sandbox: &Sandbox) -> Result<()>;
    /// The sandbox with this id, whatever its status.
    async fn sandbox(&self, id: &str) -> Result<Sandbox>;
    /// Sandboxes of a workspace, newest first, without `deleted` ones.
    async fn list_sandboxes(&self, workspace_id: &str) -> Result<Vec<Sandbox>>;
    /// Sandboxes in any of `statuses`, across workspaces (start-up reconciliation, idle sweeps).
    async fn sandboxes_with_status(&self, statuses: &[SandboxStatus]) -> Result<Vec<Sandbox>>;
    /// Compare-and-set: fails with `StaleStatus` unless the sandbox is `expected` now.
    async fn set_sandbox_status(
        &self,
        id: &str,
        expected: SandboxStatus,
        next: SandboxStatus,
        reason: Option<&str>,
        now: Millis,
    ) -> Result<()>;
    /// Replaces a sandbox's backend facts ([`Sandbox::meta`]).
    async fn set_sandbox_meta(&self, id: &str, meta: &Value, now: Millis) -> Result<()>;

    // Runs.
    /// Inserts a new run row.
    async fn insert_run(&self, run: &Run) -> Result<()>;
    /// The run with this id.
    async fn run(&self, id: &str) -> Result<Run>;
    /// Runs of a workspace (optionally of one sandbox), newest first.
    async fn list_runs(
        &self,
        workspace_id: &str,
        sandbox_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Run>>;
    /// Runs in any of `statuses`, across workspaces.
    async fn runs_with_status(&self, statuses: &[RunStatus]) -> Result<Vec<Run>>;
    /// Compare-and-set of a run's status; sets `started_at` when moving to `running`.
    async fn set_run_status(
        &self,
        id: &str,
        expected: RunStatus,
        next: RunStatus,
        now: Millis,
    ) -> Result<()>;
    /// Compare-and-set to a terminal status, writing the outcome and `finished_at` in one statement.
    async fn finish_run(
        &self,
        id: &str,
        expected: RunStatus,
        next: RunStatus,
        outcome: &RunOutcome,
        now: Millis,
    ) -> Result<()>;

    // The run event log.
    /// Appends events in one transaction; a duplicate `(run_id, seq)` is a `Conflict`.
    async fn append_events(&self, events: &[NewEvent]) -> Result<()>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn events_after(&self, run_id: &str, after: u64, limit: i64) -> Result<Vec<Event>>;
    /// How many events a run has logged.
    async fn event_count(&self, run_id: &str) -> Result<u64>;

    // Tokens (hashed).
    /// Inserts a token record (the hash only).
    async fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    /// The token record with this secret hash, live or not; the caller checks expiry and
    /// revocation.
    async fn token_by_hash(&self, hash: &str) -> Result<TokenRecord>;
    /// Revokes a token; revoking it again keeps the first time, an unknown id is `NotFound`.
    async fn revoke_token(&self, id: &str, now: Millis) -> Result<()>;
    /// Revokes every token of a sandbox (when it is deleted).
    async fn revoke_sandbox_tokens(&self, sandbox_id: &str, now: Millis) -> Result<()>;

    /// Uses up a one-time token of `kind` (an agent registration code): revokes it and returns it
    /// if it was neither revoked nor expired; `NotFound` otherwise. One statement, so it works once.
    async fn claim_token(&self, hash: &str, kind: TokenKind, now: Millis) -> Result<TokenRecord>;

    /// A user's API tokens, newest first, revoked and expired ones included.
    async fn tokens_of_user(&self, user_id: &str) -> Result<Vec<TokenRecord>>;

    // Usage.
    /// Records one proxied model call.
    async fn record_usage(&self, record: &UsageRecord) -> Result<()>;
    /// Sum of a run's proxied model calls, and the first call's time to first token.
    async fn run_usage(&self, run_id: &str) -> Result<(Usage, Option<i64>)>;
    /// Sum of a workspace's proxied model calls, and how many runs the workspace has.
    async fn workspace_usage(&self, workspace_id: &str) -> Result<(Usage, u64)>;
    /// What a workspace's proxied model calls since `since` cost, in dollars (a sum over the
    /// usage rows, so it always agrees with them).
    async fn workspace_spend_since(&self, workspace_id: &str, since: Millis) -> Result<f64>;
    /// A workspace's own limits; all `None` when its maintainers set none.
    async fn workspace_limits(&self, workspace_id: &str) -> Result<WorkspaceLimits>;
    /// Replaces a workspace's own limits.
    async fn set_workspace_limits(
        &self,
        workspace_id: &str,
        limits: &WorkspaceLimits,
        updated_by: Option<&str>,
        now: Millis,
    ) -> Result<()>;

    // Admission: decided in the database so that it holds across servers sharing it.
    /// Lets the waiting run `run_id` in if its workspace has room: fewer than `max_running` of
    /// its runs admitted and unfinished (`None`: no limit), counting the runs waiting ahead of it
    /// (oldest first by `(created_at, id)`) as taking the places before it. One transaction that
    /// holds the workspace's lock, so servers racing cannot pass the limit together. `false` when
    /// it must wait, or is not waiting any more.
    async fn admit_run(&self, run_id: &str, max_running: Option<u64>, now: Millis) -> Result<bool>;
    /// A waiting run's place among its workspace's waiting runs on every server (1: next);
    /// `None` once it is admitted, or when it is not waiting.
    async fn queue_position(&self, run_id: &str) -> Result<Option<u64>>;
    /// Inserts a warm sandbox unless its workspace already has `max_warm` of them (paused ones
    /// count, deleted and failed ones do not); one transaction holding the workspace's lock.
    /// `Some(count)` when refused.
    async fn insert_warm_sandbox(&self, sandbox: &Sandbox, max_warm: u64) -> Result<Option<u64>>;

    // Operations.
    /// A trivial query: does the database answer?
    async fn ping(&self) -> Result<()>;
    /// Rows per status, across workspaces, for `/metrics`.
    async fn status_counts(&self) -> Result<StatusCounts>;

    // ---- Accounts
    /// Sets (or replaces) a user's argon2id password hash (a PHC string).
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<()>;
    /// A user's password hash; `None` when the user has no password (SSO-only, API-only).
    async fn password_hash(&self, user_id: &str) -> Result<Option<String>>;
    /// The members of a workspace with their roles, highest role first.
    async fn workspace_members(&self, workspace_id: &str) -> Result<Vec<(User, Role)>>;
    /// Changes a member's role, atomically refusing (`Conflict`) to demote the last owner;
    /// `NotFound` if the user is not a member.
    async fn change_member_role(&self, workspace_id: &str, user_id: &str, role: Role)
    -> Result<()>;
    /// Removes a member, atomically refusing (`Conflict`) to remove the last owner.
    async fn remove_member(&self, workspace_id: &str, user_id: &str) -> Result<()>;
    /// Inserts a new invite record (the hash only).
    async fn insert_invite(&self, invite: &Invite) -> Result<()>;
    /// Marks an unused, unexpired invite used and returns it; `NotFound` otherwise
    /// (unknown, used or expired look the same). One statement, so a code works once.
    async fn claim_invite(&self, hash: &str, now: Millis) -> Result<Invite>;
    /// A user's browser sessions, newest first, revoked and expired ones included.
    async fn sessions_of_user(&self, user_id: &str) -> Result<Vec<TokenRecord>>;

    // ---- Multi-server
    /// Records a request to cancel an active run, for the process executing it; `false` (nothing
    /// written) when the run is not active. The first request's time is kept.
    async fn request_cancel(&self, run_id: &str, now: Millis) -> Result<bool>;
    /// Which of `run_ids` have a cancel request (one query, by primary key).
    async fn cancel_requested(&self, run_ids: &[String]) -> Result<Vec<String>>;
    /// How many events each of `run_ids` has, in one query; runs without events are left out.
    async fn event_counts(&self, run_ids: &[String]) -> Result<Vec<(String, u64)>>;

    // ---- Attempts
    /// The attempts of each of `parents`, oldest first, in one query; none for an id that is
    /// no parent.
    async fn runs_of_parents(&self, parents: &[String]) -> Result<Vec<Run>>;

    // ---- Identities
    /// The account a provider's subject is linked to.
    async fn identity(&self, provider: &str, subject: &str) -> Result<Identity>;
    /// Links a provider's subject to an account; `Conflict` if the subject is already linked.
    async fn insert_identity(&self, identity: &Identity) -> Result<()>;
    /// The identities linked to an account, oldest first.
    async fn identities_of_user(&self, user_id: &str) -> Result<Vec<Identity>>;
    /// Records a sign-in in progress after deleting those created before `expired_before`;
    /// `false` (nothing written) when `max_pending` are already in progress, or `max_per_client`
    /// of the same [`SsoLogin::client_hash`].
    async fn insert_sso_login(
        &self,
        login: &SsoLogin,
        expired_before: Millis,
        max_pending: u64,
        max_per_client: u64,
    ) -> Result<bool>;
    /// Deletes and returns the sign-in with this state hash: one statement, so it works once.
    async fn take_sso_login(&self, state_hash: &str) -> Result<SsoLogin>;

    // ---- Ownership
    /// Records which server process executes a run (see `Orchestrator::instance_id`).
    async fn set_run_owner(&self, run_id: &str, owner: &str) -> Result<()>;
    /// Records which server process holds a sandbox.
    async fn set_sandbox_owner(&self, sandbox_id: &str, owner: &str) -> Result<()>;
    /// The server (instance id) that runs a sandbox, if recorded.
    async fn sandbox_owner(&self, sandbox_id: &str) -> Result<Option<String>>;
    /// Runs of `owner` (or of no recorded owner) in any of `statuses`.
    async fn runs_owned_with_status(&self, owner: &str, statuses: &[RunStatus])
    -> Result<Vec<Run>>;
    /// Sandboxes of `owner` (or of no recorded owner) in any of `statuses`.
    async fn sandboxes_owned_with_status(
        &self,
        owner: &str,
        statuses: &[SandboxStatus],
    ) -> Result<Vec<Sandbox>>;

    // ---- Hardening (issue 14)
    /// Marks whether a user's email is known to be theirs (see `auth::oidc::link_identity`).
    async fn set_email_verified(&self, user_id: &str, verified: bool) -> Result<()>;
    /// Whether a user's email is known to be theirs; password sign-ups are not until proven.
    async fn email_verified(&self, user_id: &str) -> Result<bool>;
    /// A workspace's invites, newest first, used and expired ones included.
    async fn invites_of_workspace(&self, workspace_id: &str) -> Result<Vec<Invite>>;
    /// Deletes an unused invite of the workspace; `NotFound` for an unknown or used one.
    async fn delete_invite(&self, workspace_id: &str, id: &str) -> Result<()>;
    /// Revokes the tunnel tokens, agent codes and scoped API tokens `user_id` holds for
    /// `workspace_id` (they left it); returns how many.
    async fn revoke_member_tokens(
        &self,
        workspace_id: &str,
        user_id: &str,
        now: Millis,
    ) -> Result<u64>;
    /// Whether a sign-in started at or after `since` is pending for this browser cookie hash (so
    /// the cookie is one the server issued, not one a client made up).
    async fn sso_browser_pending(&self, browser_hash: &str, since: Millis) -> Result<bool>;
}

/// A single sign-on in progress, keyed by the SHA-256 of its `state`.
#[derive(Debug, Clone, PartialEq)]
pub struct SsoLogin {
    /// Hex SHA-256 of the `state` sent to the provider.
    pub state_hash: String,
    /// The configured provider's name (`oidc`, `github`).
    pub provider: String,
    /// SHA-256 of the cookie that binds the sign-in to the browser that started it.
    pub browser_hash: String,
    /// The same-origin path to send the browser to after signing in.
    pub return_to: String,
    /// When the sign-in started; old ones are swept.
    pub created_at: Millis,
    /// SHA-256 of the client's IP address, so one client can hold only a few sign-ins in progress.
    pub client_hash: String,
}

/// A single sign-on identity: `subject` at `provider` (`oidc`, `github`) signs in as `user_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The provider's name (`oidc`, `github`).
    pub provider: String,
    /// The provider's stable id for the person (`sub` claim, GitHub user id).
    pub subject: String,
    /// The account this identity signs in as.
    pub user_id: String,
    /// The email the provider gave when the identity was linked.
    pub email: Option<String>,
    /// Whether the provider said it verified [`Identity::email`]; unverified emails are never used
    /// to link accounts.
    pub email_verified: bool,
    /// When the identity was linked.
    pub created_at: Millis,
}

/// A one-time code that lets someone sign up into a workspace with a role; only its SHA-256 is
/// stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Invite {
    /// `inv_...`, assigned at creation.
    pub id: String,
    /// Hex SHA-256 of the code.
    pub hash: String,
    /// The workspace the code joins.
    pub workspace_id: String,
    /// The role the new member gets.
    pub role: Role,
    /// The user who created the invite.
    pub created_by: String,
    /// When the invite was created.
    pub created_at: Millis,
    /// After this time the code is refused.
    pub expires_at: Millis,
    /// When the code was used; `None` while unused.
    pub used_at: Option<Millis>,
}

/// Opens the store a URL names (`sqlite://PATH` or `postgres://...`) and runs its migrations.
pub async fn connect(database_url: &str) -> Result<Arc<dyn Store>> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(database_url).await?))
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(database_url).await?))
    } else {
        Err(StoreError::BadUrl(
            "expected sqlite://PATH or postgres://... (credentials are not shown)".into(),
        ))
    }
}

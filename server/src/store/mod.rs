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
use delegate_mcp::types::{ChangedFile, Event, RunError, RunStatus, SandboxStatus, Usage};
use serde_json::Value;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    /// A compare-and-set found another status than the caller expected.
    #[error("{entity} {id} is {actual}, not {expected}")]
    StaleStatus {
        entity: &'static str,
        id: String,
        expected: String,
        actual: String,
    },
    #[error("bad database url: {0}")]
    BadUrl(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("migration failed: {0}")]
    Migration(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch; every timestamp column holds one.
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: Millis,
}

/// A member's role in a workspace, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Guest,
    Developer,
    Maintainer,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Role::Guest, Role::Developer, Role::Maintainer, Role::Owner]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

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
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Ephemeral => "ephemeral",
            SandboxKind::Warm => "warm",
            SandboxKind::Local => "local",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ephemeral" => Some(SandboxKind::Ephemeral),
            "warm" => Some(SandboxKind::Warm),
            "local" => Some(SandboxKind::Local),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub kind: SandboxKind,
    /// `process`, `docker`, `kubernetes` or `local`.
    pub backend: String,
    pub status: SandboxStatus,
    /// Why the sandbox is `failed` (or other human-readable context for its status).
    pub status_reason: Option<String>,
    pub idle_timeout_s: Option<i64>,
    /// Backend-specific facts (work dir, container id, ...); never secrets.
    pub meta: Value,
    pub created_by: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub sandbox_id: String,
    pub workspace_id: String,
    pub task: String,
    pub model: Option<String>,
    pub agent: Option<String>,
    pub status: RunStatus,
    pub timeout_s: i64,
    /// Who delegated it: `user:<id>`, `token:<id>`, `mcp:<client name>`, `cli`.
    pub created_by: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub outcome: RunOutcome,
}

/// What a run produced; filled when it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutcome {
    pub final_message: String,
    pub changed_files: Vec<ChangedFile>,
    pub diff: String,
    pub diff_truncated: bool,
    pub usage: Usage,
    pub error: Option<RunError>,
    /// Time to the first token of the first model call, as the proxy measured it.
    pub ttft_ms: Option<i64>,
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
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Sandbox => "sandbox",
            TokenKind::Session => "session",
            TokenKind::Tunnel => "tunnel",
            TokenKind::AgentCode => "agent_code",
        }
    }
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

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub name: Option<String>,
    pub user_id: Option<String>,
    pub sandbox_id: Option<String>,
    pub workspace_id: Option<String>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// One model call through the Anthropic proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub id: String,
    pub sandbox_id: String,
    pub run_id: Option<String>,
    pub workspace_id: String,
    pub model: Option<String>,
    pub usage: Usage,
    pub status_code: i64,
    pub ttft_ms: Option<i64>,
    pub duration_ms: i64,
    pub created_at: Millis,
}

/// An event about to be appended; the orchestrator assigns `seq` (one writer per run).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub run_id: String,
    pub seq: u64,
    pub ts: Millis,
    pub kind: String,
    pub data: Value,
    pub raw: Option<Value>,
}

/// How many runs and sandboxes are in each status, and how many model calls the proxy recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusCounts {
    pub runs: Vec<(RunStatus, u64)>,
    pub sandboxes: Vec<(SandboxStatus, u64)>,
    pub proxy_requests: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    // Users, workspaces, members.
    async fn create_user(&self, user: &User) -> Result<()>;
    async fn user_by_id(&self, id: &str) -> Result<User>;
    async fn user_by_email(&self, email: &str) -> Result<User>;
    async fn create_workspace(&self, ws: &Workspace, owner_user_id: &str) -> Result<()>;
    async fn workspace_by_id(&self, id: &str) -> Result<Workspace>;
    async fn workspace_by_slug(&self, slug: &str) -> Result<Workspace>;
    /// The workspaces a user is a member of, oldest first, with the user's role in each.
    async fn workspaces_of_user(&self, user_id: &str) -> Result<Vec<(Workspace, Role)>>;
    async fn set_member(&self, workspace_id: &str, user_id: &str, role: Role) -> Result<()>;
    async fn member_role(&self, workspace_id: &str, user_id: &str) -> Result<Option<Role>>;

    // Sandboxes.
    async fn insert_sandbox(&self, sandbox: &Sandbox) -> Result<()>;
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
    async fn set_sandbox_meta(&self, id: &str, meta: &Value, now: Millis) -> Result<()>;

    // Runs.
    async fn insert_run(&self, run: &Run) -> Result<()>;
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
    async fn event_count(&self, run_id: &str) -> Result<u64>;

    // Tokens (hashed).
    async fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    async fn token_by_hash(&self, hash: &str) -> Result<TokenRecord>;
    async fn revoke_token(&self, id: &str, now: Millis) -> Result<()>;
    /// Revokes every token of a sandbox (when it is deleted).
    async fn revoke_sandbox_tokens(&self, sandbox_id: &str, now: Millis) -> Result<()>;

    /// Uses up a one-time token of `kind` (an agent registration code): revokes it and returns it
    /// if it was neither revoked nor expired; `NotFound` otherwise. One statement, so it works once.
    async fn claim_token(&self, hash: &str, kind: TokenKind, now: Millis) -> Result<TokenRecord>;

    /// A user's API tokens, newest first, revoked and expired ones included.
    async fn tokens_of_user(&self, user_id: &str) -> Result<Vec<TokenRecord>>;

    // Usage.
    async fn record_usage(&self, record: &UsageRecord) -> Result<()>;
    /// Sum of a run's proxied model calls, and the first call's time to first token.
    async fn run_usage(&self, run_id: &str) -> Result<(Usage, Option<i64>)>;
    /// Sum of a workspace's proxied model calls, and how many runs the workspace has.
    async fn workspace_usage(&self, workspace_id: &str) -> Result<(Usage, u64)>;

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

    // ---- Identities
    /// The account a provider's subject is linked to.
    async fn identity(&self, provider: &str, subject: &str) -> Result<Identity>;
    /// Links a provider's subject to an account; `Conflict` if the subject is already linked.
    async fn insert_identity(&self, identity: &Identity) -> Result<()>;
    /// The identities linked to an account, oldest first.
    async fn identities_of_user(&self, user_id: &str) -> Result<Vec<Identity>>;
    /// Records a sign-in in progress after deleting those created before `expired_before`;
    /// `false` (nothing written) when `max_pending` are already in progress.
    async fn insert_sso_login(
        &self,
        login: &SsoLogin,
        expired_before: Millis,
        max_pending: u64,
    ) -> Result<bool>;
    /// Deletes and returns the sign-in with this state hash: one statement, so it works once.
    async fn take_sso_login(&self, state_hash: &str) -> Result<SsoLogin>;

    // ---- Ownership
    /// Records which server process executes a run (see `Orchestrator::instance_id`).
    async fn set_run_owner(&self, run_id: &str, owner: &str) -> Result<()>;
    /// Records which server process holds a sandbox.
    async fn set_sandbox_owner(&self, sandbox_id: &str, owner: &str) -> Result<()>;
    /// Runs of `owner` (or of no recorded owner) in any of `statuses`.
    async fn runs_owned_with_status(&self, owner: &str, statuses: &[RunStatus])
    -> Result<Vec<Run>>;
    /// Sandboxes of `owner` (or of no recorded owner) in any of `statuses`.
    async fn sandboxes_owned_with_status(
        &self,
        owner: &str,
        statuses: &[SandboxStatus],
    ) -> Result<Vec<Sandbox>>;
}

/// A single sign-on in progress, keyed by the SHA-256 of its `state`.
#[derive(Debug, Clone, PartialEq)]
pub struct SsoLogin {
    pub state_hash: String,
    pub provider: String,
    /// SHA-256 of the cookie that binds the sign-in to the browser that started it.
    pub browser_hash: String,
    pub return_to: String,
    pub created_at: Millis,
}

/// A single sign-on identity: `subject` at `provider` (`oidc`, `github`) signs in as `user_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
    pub user_id: String,
    /// The email the provider gave when the identity was linked.
    pub email: Option<String>,
    pub email_verified: bool,
    pub created_at: Millis,
}

/// A one-time code that lets someone sign up into a workspace with a role; only its SHA-256 is
/// stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Invite {
    pub id: String,
    pub hash: String,
    pub workspace_id: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: Millis,
    pub expires_at: Millis,
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

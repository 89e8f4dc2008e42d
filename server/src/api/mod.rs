//! The REST API under `/api/`: runs, run events (JSON pages and SSE), sandboxes, tokens, usage, and
//! the operations endpoints (`/healthz`, `/readyz`, `/metrics`). Every route is one row of
//! [`table`]: the router and the OpenAPI document (`/api/openapi.json`) are both built from it, so
//! they cannot drift apart. Handlers are thin: they call the same [`Service`] as the MCP tools,
//! which checks the caller's role in one place.

pub mod accounts;
pub mod agents;
mod error;
pub mod open;
pub mod openapi;
pub mod ops;
pub mod runs;
pub mod sandboxes;
pub mod snapshots;
pub mod sso;
pub mod tokens;
pub mod views;
pub mod workspaces;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use delegate_mcp::delegator::Caller;
use schemars::{JsonSchema, Schema, SchemaGenerator};

pub use error::{ApiError, ApiResult, IdPath, Json, Path, Query};

use crate::delegation::Service;
use crate::orchestrator::Orchestrator;

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// What every handler gets; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The role-checked delegation service the MCP tools share, so both surfaces enforce the same rules.
    pub service: Service,
    /// HTTP request counters and latencies, filled by the metrics middleware and served at `/metrics`.
    pub metrics: Arc<ops::HttpMetrics>,
    /// Failed sign-ins per email and per client IP.
    pub logins: Arc<crate::auth::limits::LoginLimiter>,
    /// Single sign-on (OIDC, GitHub).
    pub sso: Arc<crate::auth::oidc::Sso>,
    /// The browser gateway to sandboxes' opencode (its tickets).
    pub gateway: crate::gateway::Gateway,
}

impl ApiState {
    /// Builds the state around one orchestrator; the SSO providers come from its settings.
    pub fn new(orch: Orchestrator, metrics: Arc<ops::HttpMetrics>) -> Self {
        let sso = Arc::new(crate::auth::oidc::Sso::new(orch.settings().sso.clone()));
        ApiState {
            gateway: crate::gateway::Gateway::new(orch.clone()),
            service: Service::new(orch),
            metrics,
            logins: Arc::default(),
            sso,
        }
    }

    /// The orchestrator behind the service, for the few handlers that need more than its calls.
    pub fn orch(&self) -> &Orchestrator {
        self.service.orchestrator()
    }
}

/// The caller `require_token` authenticated.
pub struct Authed(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Authed)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no caller"))
    }
}

/// Produces a (referenced) JSON Schema of a wire type for the OpenAPI document.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The [`SchemaFn`] for `T`: registers `T` in the document's components and returns a reference.
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    /// A `{name}` segment of the route's path.
    Path,
    /// A `?name=` query-string parameter.
    Query,
    /// A request header.
    Header,
}

impl In {
    /// The OpenAPI `in` value.
    pub fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
        }
    }
}

/// One documented parameter; `kind` is its JSON Schema type (`string`, `integer`).
#[derive(Debug, Clone)]
pub struct Param {
    /// The parameter's name as it appears on the wire.
    pub name: &'static str,
    /// Where the request carries it.
    pub location: In,
    /// Its JSON Schema type.
    pub kind: &'static str,
    /// The text shown for it in the OpenAPI document.
    pub description: &'static str,
}

/// One documented successful response.
#[derive(Clone)]
pub struct Reply {
    /// The HTTP status code of this response.
    pub status: u16,
    /// The text shown for it in the OpenAPI document.
    pub description: &'static str,
    /// `None`: no body (204), or a text body described by `content_type`.
    pub schema: Option<SchemaFn>,
    /// The media type of the body (`application/json`, `text/plain`, ...); empty for no body.
    pub content_type: &'static str,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `Authorization: Bearer dlg_...` or the session cookie (unsafe methods then need a same-site
    /// `Origin`), mounted under `/api` behind `require_token`.
    Token,
    /// No token (health, metrics, the OpenAPI document).
    Public,
}

/// One row of the route table.
pub struct Route {
    /// The HTTP method the route answers.
    pub method: Method,
    /// The full path as served, in OpenAPI/axum syntax (`/api/runs/{id}`).
    pub path: &'static str,
    /// The OpenAPI `operationId`: a stable name clients generate method names from.
    pub operation_id: &'static str,
    /// One line for the OpenAPI document saying what the call does.
    pub summary: &'static str,
    /// Whether the route needs a token (and so sits behind `require_token`).
    pub access: Access,
    /// The path, query and header parameters, in documentation order.
    pub params: Vec<Param>,
    /// The JSON request body's schema; `None` when the call takes no body.
    pub body: Option<SchemaFn>,
    /// The successful responses; the failure statuses of token routes are added from one shared list.
    pub replies: Vec<Reply>,
    /// The axum handler serving the route.
    pub handler: MethodRouter<ApiState>,
}

impl Route {
    fn new(
        method: Method,
        path: &'static str,
        operation_id: &'static str,
        summary: &'static str,
        handler: MethodRouter<ApiState>,
    ) -> Self {
        Route {
            method,
            path,
            operation_id,
            summary,
            access: Access::Token,
            params: Vec::new(),
            body: None,
            replies: Vec::new(),
            handler,
        }
    }

    fn public(mut self) -> Self {
        self.access = Access::Public;
        self
    }

    fn param(
        mut self,
        name: &'static str,
        location: In,
        kind: &'static str,
        description: &'static str,
    ) -> Self {
        self.params.push(Param {
            name,
            location,
            kind,
            description,
        });
        self
    }

    fn id(self, what: &'static str) -> Self {
        self.param("id", In::Path, "string", what)
    }

    fn body(mut self, schema: SchemaFn) -> Self {
        self.body = Some(schema);
        self
    }

    fn reply(mut self, status: u16, description: &'static str, schema: SchemaFn) -> Self {
        self.replies.push(Reply {
            status,
            description,
            schema: Some(schema),
            content_type: "application/json",
        });
        self
    }

    fn reply_text(
        mut self,
        status: u16,
        description: &'static str,
        content_type: &'static str,
    ) -> Self {
        self.replies.push(Reply {
            status,
            description,
            schema: None,
            content_type,
        });
        self
    }
}

/// Every route of the REST API and the operations endpoints, in one table.
pub fn table() -> Vec<Route> {
    use delegate_mcp::tools::{
        CancelRunOutput, CreateSandboxInput, DeleteSandboxOutput, ListSandboxesOutput,
        RunInSandboxInput, SandboxInfo, StreamSessionOutput,
    };
    use delegate_mcp::types::RunResult;
    let workspace = "Workspace slug or id; omit for your first workspace.";
    vec![
        // Runs.
        Route::new(Method::POST, "/api/runs", "createRun", "Start a run (`wait` defaults to false here: 201 at once; with `\"wait\": true`, 200 when it ends)", post(runs::create))
            .body(schema::<RunInSandboxInput>)
            .reply(201, "Started; status running", schema::<RunResult>)
            .reply(200, "Ended (with `wait: true`)", schema::<RunResult>),
        Route::new(Method::GET, "/api/runs", "listRuns", "Runs of a workspace or sandbox, newest first", get(runs::list))
            .param("workspace", In::Query, "string", workspace)
            .param("sandbox_id", In::Query, "string", "Only runs of this sandbox.")
            .param("limit", In::Query, "integer", "At most this many (default 50, max 500).")
            .reply(200, "The runs", schema::<runs::RunList>),
        Route::new(Method::GET, "/api/runs/summaries", "listRunSummaries", "Runs of a workspace or sandbox with their task and who delegated them (user, API token, MCP client), newest first", get(views::summaries))
            .param("workspace", In::Query, "string", workspace)
            .param("sandbox_id", In::Query, "string", "Only runs of this sandbox.")
            .param("limit", In::Query, "integer", "At most this many (default 50, max 500).")
            .reply(200, "The runs", schema::<views::RunSummaryList>),
        Route::new(Method::GET, "/api/runs/{id}/summary", "getRunDetail", "A run's result with its task, who delegated it and its workspace", get(views::detail))
            .id("Run id")
            .reply(200, "The run", schema::<views::RunDetail>),
        Route::new(Method::GET, "/api/runs/{id}", "getRun", "A run's result as it stands", get(runs::get_one))
            .id("Run id")
            .reply(200, "The run", schema::<RunResult>),
        Route::new(Method::POST, "/api/runs/{id}/cancel", "cancelRun", "Cancel a run and wait until it ended", post(runs::cancel))
            .id("Run id")
            .reply(200, "The run's status after the cancel", schema::<CancelRunOutput>),
        Route::new(Method::GET, "/api/runs/{id}/patch", "getRunPatch", "A run's whole change as a binary-safe patch (`git apply` takes it); 404 while the run has no change", get(runs::patch))
            .id("Run id")
            .reply_text(200, "The patch (`git diff --binary --full-index` of the agent's commit)", "text/x-diff"),
        Route::new(Method::GET, "/api/runs/{id}/bundle", "getRunBundle", "A run's change as a git bundle: the commits from the snapshot its sandbox started from to the run's commit, as ref `refs/delegate/export` (header `X-Delegate-Commit`); 404 when the sandbox did not start from a snapshot or the run has no change", get(runs::bundle))
            .id("Run id")
            .reply_text(200, "The bundle", "application/x-git-bundle"),
        Route::new(Method::GET, "/api/runs/{id}/events", "runEvents", "A run's events after a cursor: a JSON page (long-polls up to wait_seconds), or with `Accept: text/event-stream` an SSE stream (`id: seq`, `event: type`, `data: Event`; resume with `Last-Event-ID`; ends with `event: end`)", get(runs::events))
            .id("Run id")
            .param("after", In::Query, "integer", "Events after this sequence number (default 0).")
            .param("limit", In::Query, "integer", "JSON page: at most this many events (default and max 500).")
            .param("wait_seconds", In::Query, "integer", "JSON page: wait this long for a first event (default 0, max 60).")
            .param("Last-Event-ID", In::Header, "string", "SSE: resume after this sequence number.")
            .reply(200, "A page of events (SSE: text/event-stream)", schema::<StreamSessionOutput>),
        // Repository snapshots.
        Route::new(Method::POST, "/api/snapshots", "uploadSnapshot", "Upload a repository snapshot (a git bundle, `Content-Type: application/x-git-bundle`, streamed; at most DELEGATE_MAX_REPO_BYTES, else 413 `repo_too_large`) for one `createRun` or `createSandbox` in the workspace: pass `snapshot_id` as their `snapshot`; it is used once and expires after an hour", post(snapshots::create))
            .param("workspace", In::Query, "string", workspace)
            .param("repo", In::Query, "string", "The work tree's root on your machine (reported back as the result's `base.repo`).")
            .param("commit", In::Query, "string", "The commit snapshotted (your HEAD), when there is one.")
            .param("branch", In::Query, "string", "Your current branch, when there is one.")
            .param("dirty", In::Query, "boolean", "Whether uncommitted changes went along (default false).")
            .reply(201, "Received", schema::<delegate_mcp::rest::SnapshotUploaded>),
        // Sandboxes.
        Route::new(Method::POST, "/api/sandboxes", "createSandbox", "Create a warm sandbox", post(sandboxes::create))
            .body(schema::<CreateSandboxInput>)
            .reply(201, "Created and running", schema::<SandboxInfo>),
        Route::new(Method::GET, "/api/sandboxes", "listSandboxes", "Sandboxes of a workspace, newest first", get(sandboxes::list))
            .param("workspace", In::Query, "string", workspace)
            .reply(200, "The sandboxes", schema::<ListSandboxesOutput>),
        Route::new(Method::GET, "/api/sandboxes/{id}", "getSandbox", "A sandbox", get(sandboxes::get_one))
            .id("Sandbox id")
            .reply(200, "The sandbox", schema::<SandboxInfo>),
        Route::new(Method::DELETE, "/api/sandboxes/{id}", "deleteSandbox", "Delete a sandbox with its files (a run in it is cancelled first)", delete(sandboxes::remove))
            .id("Sandbox id")
            .reply(200, "Deleted", schema::<DeleteSandboxOutput>),
        Route::new(Method::POST, "/api/sandboxes/{id}/pause", "pauseSandbox", "Pause a warm sandbox, keeping its files", post(sandboxes::pause))
            .id("Sandbox id")
            .reply(200, "Paused", schema::<SandboxInfo>),
        Route::new(Method::POST, "/api/sandboxes/{id}/resume", "resumeSandbox", "Resume a paused sandbox", post(sandboxes::resume))
            .id("Sandbox id")
            .reply(200, "Running again", schema::<SandboxInfo>),
        Route::new(Method::POST, "/api/sandboxes/{id}/open", "openSandbox", "A one-time ticket (30 s) into the sandbox's opencode web UI: navigate the browser to `url` (oc-{id}.BASE_DOMAIN), which sets a cookie for that host only", post(open::open))
            .id("Sandbox id")
            .reply(200, "The ticket URL", schema::<crate::gateway::OpenTicket>),
        // Tokens.
        Route::new(Method::POST, "/api/tokens", "createToken", "Create an API token for yourself (the secret is shown once)", post(tokens::create))
            .body(schema::<tokens::CreateTokenInput>)
            .reply(201, "Created", schema::<tokens::CreatedToken>),
        Route::new(Method::GET, "/api/tokens", "listTokens", "Your API tokens (never their secrets)", get(tokens::list))
            .reply(200, "The tokens", schema::<tokens::TokenList>),
        Route::new(Method::DELETE, "/api/tokens/{id}", "revokeToken", "Revoke one of your API tokens", delete(tokens::revoke))
            .id("Token id")
            .reply_text(204, "Revoked", ""),
        // Accounts.
        Route::new(Method::POST, "/api/auth/signup", "signup", "Create an account with a password (per DELEGATE_REGISTRATION: open, invite or disabled) and sign in (Set-Cookie)", post(accounts::signup))
            .public()
            .body(schema::<accounts::SignupInput>)
            .reply(201, "Created and signed in; Set-Cookie delegate_session", schema::<accounts::Me>),
        Route::new(Method::POST, "/api/auth/login", "login", "Sign in with email and password (Set-Cookie); 429 after 10 failures per email or IP in 15 minutes", post(accounts::login))
            .public()
            .body(schema::<accounts::LoginInput>)
            .reply(200, "Signed in; Set-Cookie delegate_session", schema::<accounts::Me>),
        Route::new(Method::POST, "/api/auth/logout", "logout", "Sign out: revoke this session and clear the cookie", post(accounts::logout))
            .reply_text(204, "Signed out", ""),
        Route::new(Method::GET, "/api/auth/me", "me", "Who you are, and your workspaces with your role in each", get(accounts::me))
            .reply(200, "You", schema::<accounts::Me>),
        Route::new(Method::GET, "/api/auth/sessions", "listSessions", "Your browser sessions (never their secrets)", get(accounts::list_sessions))
            .reply(200, "The sessions", schema::<accounts::SessionList>),
        Route::new(Method::DELETE, "/api/auth/sessions/{id}", "revokeSession", "Revoke one of your sessions", delete(accounts::revoke_session))
            .id("Session id")
            .reply_text(204, "Revoked", ""),
        // Workspaces and members.
        Route::new(Method::GET, "/api/workspaces", "listWorkspaces", "Your workspaces with your role", get(workspaces::list))
            .reply(200, "The workspaces", schema::<workspaces::WorkspaceList>),
        Route::new(Method::POST, "/api/workspaces", "createWorkspace", "Create a workspace; you own it", post(workspaces::create))
            .body(schema::<workspaces::CreateWorkspaceInput>)
            .reply(201, "Created", schema::<accounts::WorkspaceInfo>),
        Route::new(Method::GET, "/api/workspaces/{ws}", "getWorkspace", "A workspace and your role in it", get(workspaces::get_one))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .reply(200, "The workspace", schema::<accounts::WorkspaceInfo>),
        Route::new(Method::GET, "/api/workspaces/{ws}/members", "listMembers", "The members of a workspace", get(workspaces::members))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .reply(200, "The members", schema::<workspaces::MemberList>),
        Route::new(Method::POST, "/api/workspaces/{ws}/members", "addMember", "Add an existing account as a member (maintainers: below maintainer only); an email without an account gets the same answer and changes nothing", post(workspaces::add_member))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .body(schema::<workspaces::AddMemberInput>)
            .reply(202, "Added if an account has the email", schema::<workspaces::MemberAdded>),
        Route::new(Method::PATCH, "/api/workspaces/{ws}/members/{user_id}", "changeMember", "Change a member's role (the last owner stays an owner)", patch(workspaces::change_member))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .param("user_id", In::Path, "string", "The member's user id")
            .body(schema::<workspaces::RoleInput>)
            .reply(200, "Changed", schema::<workspaces::MemberInfo>),
        Route::new(Method::DELETE, "/api/workspaces/{ws}/members/{user_id}", "removeMember", "Remove a member (not the last owner)", delete(workspaces::remove_member))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .param("user_id", In::Path, "string", "The member's user id")
            .reply_text(204, "Removed", ""),
        Route::new(Method::GET, "/api/workspaces/{ws}/egress", "getWorkspaceEgress", "The egress policies members may pick for a sandbox's network, and the default", get(workspaces::egress))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .reply(200, "The choice in effect", schema::<crate::orchestrator::WorkspaceEgress>),
        Route::new(Method::PUT, "/api/workspaces/{ws}/egress", "setWorkspaceEgress", "Choose the egress policies members may pick (none always) and the default (maintainers and owners)", put(workspaces::set_egress))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .body(schema::<crate::orchestrator::WorkspaceEgress>)
            .reply(200, "The choice in effect", schema::<crate::orchestrator::WorkspaceEgress>),
        Route::new(Method::GET, "/api/workspaces/{ws}/limits", "getWorkspaceLimits", "The workspace's budgets and quotas (its own and those in effect) and today's spend", get(workspaces::limits))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .reply(200, "The limits and spend", schema::<workspaces::LimitsView>),
        Route::new(Method::PUT, "/api/workspaces/{ws}/limits", "setWorkspaceLimits", "Set the workspace's budgets and quotas; null for the server's default (maintainers and owners)", put(workspaces::set_limits))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .body(schema::<workspaces::LimitsInput>)
            .reply(200, "The limits and spend", schema::<workspaces::LimitsView>),
        Route::new(Method::GET, "/api/workspaces/{ws}/secrets", "listSecrets", "The names of the workspace's secrets, never their values (maintainers and owners)", get(workspaces::secrets))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .reply(200, "The names", schema::<workspaces::SecretList>),
        Route::new(Method::PUT, "/api/workspaces/{ws}/secrets/{name}", "setSecret", "Set a workspace secret, stored encrypted; runs and sandboxes name it in `secrets` (maintainers and owners)", put(workspaces::set_secret))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .param("name", In::Path, "string", "The variable name the sandbox sees")
            .body(schema::<workspaces::SecretInput>)
            .reply_text(204, "Set", ""),
        Route::new(Method::DELETE, "/api/workspaces/{ws}/secrets/{name}", "deleteSecret", "Remove a workspace secret (maintainers and owners)", delete(workspaces::delete_secret))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .param("name", In::Path, "string", "The secret's name")
            .reply_text(204, "Removed", ""),
        Route::new(Method::GET, "/api/workspaces/{ws}/git-credentials", "listGitCredentials", "The workspace's git credentials: hosts and user names, never tokens (maintainers and owners)", get(workspaces::git_credentials))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .reply(200, "By host", schema::<workspaces::GitCredentialList>),
        Route::new(Method::PUT, "/api/workspaces/{ws}/git-credentials/{host}", "setGitCredential", "Set the username and token the server's clones of https:// repos on this host use, stored encrypted and never given to a sandbox (maintainers and owners)", put(workspaces::set_git_credential))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .param("host", In::Path, "string", "The git host: host, or host:port when the port is not 443")
            .body(schema::<workspaces::GitCredentialInput>)
            .reply(200, "Set (without the token)", schema::<crate::store::GitCredentialInfo>),
        Route::new(Method::DELETE, "/api/workspaces/{ws}/git-credentials/{host}", "deleteGitCredential", "Remove a git credential (maintainers and owners)", delete(workspaces::delete_git_credential))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .param("host", In::Path, "string", "The git host: host, or host:port")
            .reply_text(204, "Removed", ""),
        Route::new(Method::POST, "/api/workspaces/{ws}/invites", "createInvite", "Create a one-time invite code (7 days) for sign-up into this workspace", post(workspaces::create_invite))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .body(schema::<workspaces::RoleInput>)
            .reply(201, "Created; the code is shown once", schema::<workspaces::CreatedInvite>),
        Route::new(Method::GET, "/api/workspaces/{ws}/invites", "listInvites", "The workspace's invites, never their codes (maintainers and owners)", get(workspaces::invites))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .reply(200, "The invites", schema::<workspaces::InviteList>),
        Route::new(Method::DELETE, "/api/workspaces/{ws}/invites/{id}", "revokeInvite", "Revoke an unused invite", delete(workspaces::revoke_invite))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .id("Invite id")
            .reply_text(204, "Revoked", ""),
        // Local agents (the tunnel itself is `/api/tunnel/{sandbox_id}`, a WebSocket with its own token).
        Route::new(Method::POST, "/api/workspaces/{ws}/agent-codes", "createAgentCode", "Create a one-time code (10 minutes unless asked otherwise) that registers a local agent in this workspace", post(agents::create_code))
            .param("ws", In::Path, "string", "Workspace slug or id")
            .body(schema::<delegate_agent::wire::CreateCodeInput>)
            .reply(201, "Created; the code is shown once", schema::<delegate_agent::wire::CreatedCode>),
        Route::new(Method::POST, "/api/agents/register", "registerAgent", "Trade a registration code (once) for a local sandbox and its tunnel token (shown once); no API token", post(agents::register))
            .public()
            .body(schema::<delegate_agent::wire::RegisterInput>)
            .reply(201, "Registered", schema::<delegate_agent::wire::Registered>),
        // Usage.
        Route::new(Method::GET, "/api/usage", "getUsage", "Usage summed over a workspace's runs", get(ops::usage))
            .param("workspace", In::Query, "string", workspace)
            .reply(200, "The usage", schema::<ops::WorkspaceUsage>),
        // Single sign-on, no token.
        Route::new(Method::GET, "/api/auth/providers", "authProviders", "Which single sign-on providers this server offers", get(sso::providers))
            .public()
            .reply(200, "The providers", schema::<sso::Providers>),
        Route::new(Method::GET, "/api/auth/oidc/start", "oidcStart", "Sign in with the OpenID Connect provider: 303 to it (PKCE, state, nonce)", get(sso::oidc_start))
            .public()
            .param("return_to", In::Query, "string", "A path on this server to land on afterwards (default /).")
            .reply_text(303, "To the provider", ""),
        Route::new(Method::GET, "/api/auth/oidc/callback", "oidcCallback", "The OpenID Connect provider's redirect back: signs in (session cookie) and 303 to return_to", get(sso::oidc_callback))
            .public()
            .param("code", In::Query, "string", "Authorization code.")
            .param("state", In::Query, "string", "The state sent with the authorization request.")
            .reply_text(303, "Signed in; Set-Cookie delegate_session", ""),
        Route::new(Method::GET, "/api/auth/github/start", "githubStart", "Sign in with GitHub: 303 to GitHub (PKCE, state)", get(sso::github_start))
            .public()
            .param("return_to", In::Query, "string", "A path on this server to land on afterwards (default /).")
            .reply_text(303, "To GitHub", ""),
        Route::new(Method::GET, "/api/auth/github/callback", "githubCallback", "GitHub's redirect back: signs in (session cookie) and 303 to return_to", get(sso::github_callback))
            .public()
            .param("code", In::Query, "string", "Authorization code.")
            .param("state", In::Query, "string", "The state sent with the authorization request.")
            .reply_text(303, "Signed in; Set-Cookie delegate_session", ""),
        // Operations, no token.
        Route::new(Method::GET, "/api/openapi.json", "openapi", "This document", get(openapi::serve))
            .public()
            .reply_text(200, "OpenAPI 3.1", "application/json"),
        Route::new(Method::GET, "/healthz", "healthz", "Liveness: the process answers", get(ops::healthz))
            .public()
            .reply_text(200, "ok", "text/plain"),
        Route::new(Method::GET, "/readyz", "readyz", "Readiness: the database answers", get(ops::readyz))
            .public()
            .reply_text(200, "ready", "text/plain"),
        Route::new(Method::GET, "/metrics", "metrics", "Prometheus metrics; needs a bearer API token unless DELEGATE_METRICS_PUBLIC=true", get(ops::metrics))
            .public()
            .reply_text(200, "Prometheus text format 0.0.4", "text/plain; version=0.0.4"),
    ]
}

/// The API's routes: those needing a token behind `require_token`, with unknown `/api/...` paths
/// and methods answered in the JSON envelope.
pub fn routes(state: ApiState) -> Router {
    let mut private = Router::new();
    let mut public = Router::new();
    for route in table() {
        match route.access {
            Access::Token => {
                let path = route.path.strip_prefix("/api").unwrap_or(route.path);
                private = private.route(path, route.handler);
            }
            Access::Public => public = public.route(route.path, route.handler),
        }
    }
    let private = private
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.orch().clone(),
            crate::auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    public.nest("/api", private).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API route; see /api/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /api/openapi.json",
    )
}

//! `/api/workspaces`: the caller's workspaces, creating one, members and their roles, invites.
//! Who may do what is [`crate::roles`]'s decision; the workspace lookup (membership, token
//! scope) is [`crate::delegation::Service::authorize_role`]'s.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::accounts::WorkspaceInfo;
use super::{ApiResult, ApiState, Authed, Json, Path};
use crate::auth::accounts;
use crate::delegation::Action;
use crate::store::{Role, Workspace};

/// `GET /api/workspaces` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceList {
    /// Oldest first.
    pub workspaces: Vec<WorkspaceInfo>,
}

/// `POST /api/workspaces` body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceInput {
    /// `[a-z0-9-]{2,40}`, unique on the server.
    pub slug: String,
    /// The display name.
    pub name: String,
}

/// A member of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberInfo {
    /// The member's user id, for `PATCH` and `DELETE .../members/{user_id}`.
    pub user_id: String,
    /// The member's email address.
    pub email: String,
    /// The member's display name.
    pub name: String,
    /// `owner`, `maintainer`, `developer` or `guest`.
    pub role: String,
}

/// `POST /api/workspaces/{ws}/members` reply: the same whether or not the email has an account,
/// so that adding members tells nobody which emails do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberAdded {
    /// The email as given (normalized).
    pub email: String,
    /// The role asked for.
    pub role: String,
    /// What happened, in words.
    pub note: String,
}

/// `GET /api/workspaces/{ws}/members` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberList {
    /// Highest role first.
    pub members: Vec<MemberInfo>,
}

/// `POST /api/workspaces/{ws}/members` body: an existing user by email.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberInput {
    /// The email of an existing account; no account is created.
    pub email: String,
    /// `owner`, `maintainer`, `developer` or `guest`.
    pub role: String,
}

/// `PATCH /api/workspaces/{ws}/members/{user_id}` and `POST .../invites` body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    /// `owner`, `maintainer`, `developer` or `guest`.
    pub role: String,
}

/// `POST /api/workspaces/{ws}/invites` reply: the code is shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreatedInvite {
    /// The invite's id; not the code.
    pub id: String,
    /// `dli_...`: pass as `invite` to `POST /api/auth/signup`. Works once.
    pub code: String,
    /// The slug of the workspace the invite joins.
    pub workspace: String,
    /// The role the new member gets: `owner`, `maintainer`, `developer` or `guest`.
    pub role: String,
    /// When the code stops working, in milliseconds since the Unix epoch.
    pub expires_at: i64,
}

/// An invite as `GET /api/workspaces/{ws}/invites` lists it: never the code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InviteInfo {
    /// The invite's id, for `DELETE .../invites/{id}`.
    pub id: String,
    /// The role a new member gets with it.
    pub role: String,
    /// The user id of whoever created it.
    pub created_by: String,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it stops working, in milliseconds since the Unix epoch.
    pub expires_at: i64,
    /// When it was used; `null` while unused.
    pub used_at: Option<i64>,
}

/// `GET /api/workspaces/{ws}/invites` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InviteList {
    /// Newest first, used and expired ones included.
    pub invites: Vec<InviteInfo>,
}

fn info(ws: Workspace, role: Role) -> WorkspaceInfo {
    WorkspaceInfo {
        id: ws.id,
        slug: ws.slug,
        name: ws.name,
        role: role.as_str().to_string(),
    }
}

/// `GET /api/workspaces`: the workspaces the caller can reach, with their role in each.
pub async fn list(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> ApiResult<axum::Json<WorkspaceList>> {
    let workspaces = accounts::workspaces(state.orch().store().as_ref(), &caller)
        .await?
        .into_iter()
        .map(|(ws, role)| info(ws, role))
        .collect();
    Ok(axum::Json(WorkspaceList { workspaces }))
}

/// `POST /api/workspaces`: creates a workspace owned by the caller.
pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Json(input): Json<CreateWorkspaceInput>,
) -> ApiResult<Response> {
    let ws = accounts::create_workspace(
        state.orch().store().as_ref(),
        &caller,
        &input.slug,
        &input.name,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(info(ws, Role::Owner))).into_response())
}

/// `GET /api/workspaces/{ws}`: one workspace and the caller's role in it.
pub async fn get_one(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<WorkspaceInfo>> {
    let (ws, role) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::Read)
        .await?;
    Ok(axum::Json(info(ws, role)))
}

fn member(user: crate::store::User, role: Role) -> MemberInfo {
    MemberInfo {
        user_id: user.id,
        email: user.email,
        name: user.name,
        role: role.as_str().to_string(),
    }
}

/// `GET /api/workspaces/{ws}/members`: the workspace's members and their roles.
pub async fn members(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<MemberList>> {
    let members = accounts::members(&state.service, &caller, &ws).await?;
    Ok(axum::Json(MemberList {
        members: members.into_iter().map(|(u, r)| member(u, r)).collect(),
    }))
}

/// `POST /api/workspaces/{ws}/members`: adds an existing account with a role.
pub async fn add_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<AddMemberInput>,
) -> ApiResult<Response> {
    let (email, role) =
        accounts::add_member(&state.service, &caller, &ws, &input.email, &input.role).await?;
    let reply = MemberAdded {
        email,
        role: role.as_str().to_string(),
        note: "if an account has this email, it is a member now (see the member list); \
               otherwise nothing changed: send an invite"
            .into(),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(reply)).into_response())
}

/// `PATCH /api/workspaces/{ws}/members/{user_id}`: changes a member's role; a workspace keeps at
/// least one owner.
pub async fn change_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, user_id)): Path<(String, String)>,
    Json(input): Json<RoleInput>,
) -> ApiResult<axum::Json<MemberInfo>> {
    let (user, role) =
        accounts::change_member(&state.service, &caller, &ws, &user_id, &input.role).await?;
    Ok(axum::Json(member(user, role)))
}

/// `DELETE /api/workspaces/{ws}/members/{user_id}`: removes a member; not the last owner.
pub async fn remove_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    accounts::remove_member(&state.service, &caller, &ws, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/workspaces/{ws}/invites`: a one-time code that signs a new account up into this
/// workspace with a role.
pub async fn create_invite(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<RoleInput>,
) -> ApiResult<Response> {
    let (code, invite, ws) =
        accounts::create_invite(&state.service, &caller, &ws, &input.role).await?;
    let created = CreatedInvite {
        id: invite.id,
        code,
        workspace: ws.slug,
        role: invite.role.as_str().to_string(),
        expires_at: invite.expires_at,
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `GET /api/workspaces/{ws}/invites`: the workspace's invites, without their codes.
pub async fn invites(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<InviteList>> {
    let (_, invites) = accounts::invites(&state.service, &caller, &ws).await?;
    let invites = invites
        .into_iter()
        .map(|i| InviteInfo {
            id: i.id,
            role: i.role.as_str().to_string(),
            created_by: i.created_by,
            created_at: i.created_at,
            expires_at: i.expires_at,
            used_at: i.used_at,
        })
        .collect();
    Ok(axum::Json(InviteList { invites }))
}

/// `DELETE /api/workspaces/{ws}/invites/{id}`: revokes an unused invite.
pub async fn revoke_invite(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    accounts::revoke_invite(&state.service, &caller, &ws, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/workspaces/{ws}/egress`: the egress policies members may pick and the default,
/// as the workspace's admins chose them (unset: every policy of the server, its default).
pub async fn egress(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<crate::orchestrator::WorkspaceEgress>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::Read)
        .await?;
    let orch = state.service.orchestrator();
    Ok(axum::Json(orch.workspace_egress(&ws).await?))
}

/// `PUT /api/workspaces/{ws}/egress`: maintainers and owners choose which egress policies
/// members may use (`none` always) and the default.
pub async fn set_egress(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<crate::orchestrator::WorkspaceEgress>,
) -> ApiResult<axum::Json<crate::orchestrator::WorkspaceEgress>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let orch = state.service.orchestrator();
    Ok(axum::Json(
        orch.set_workspace_egress(&ws, Some(input)).await?,
    ))
}

/// A workspace's limits as `GET/PUT /api/workspaces/{ws}/limits` carry them; `null` (or absent)
/// for "the server's default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    /// A run's `max_cost_usd` when its caller gives none, in dollars.
    #[serde(default)]
    pub max_run_cost_usd: Option<f64>,
    /// What the workspace's model calls may cost per UTC day, in dollars; once spent, runs are
    /// stopped and new ones refused (`budget_exceeded`) until 00:00 UTC.
    #[serde(default)]
    pub daily_budget_usd: Option<f64>,
    /// The workspace's runs at once; more wait in `queued`.
    #[serde(default)]
    pub max_concurrent_runs: Option<u64>,
    /// The workspace's warm sandboxes, paused ones included; one more is refused (`limit`).
    #[serde(default)]
    pub max_warm_sandboxes: Option<u64>,
}

impl From<crate::store::WorkspaceLimits> for LimitsInput {
    fn from(l: crate::store::WorkspaceLimits) -> Self {
        LimitsInput {
            max_run_cost_usd: l.max_run_cost_usd,
            daily_budget_usd: l.daily_budget_usd,
            max_concurrent_runs: l.max_concurrent_runs,
            max_warm_sandboxes: l.max_warm_sandboxes,
        }
    }
}

/// `GET /api/workspaces/{ws}/limits` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LimitsView {
    /// What the workspace's maintainers set (`null`: the server's default).
    pub own: LimitsInput,
    /// What applies: the workspace's own, else the server's defaults (`null`: no limit).
    pub effective: LimitsInput,
    /// What the workspace's model calls cost today (UTC), in dollars.
    pub spent_today_usd: f64,
    /// When today's spend starts again from zero, in words.
    pub resets: String,
}

async fn limits_view(
    orch: &crate::orchestrator::Orchestrator,
    ws: &Workspace,
) -> ApiResult<axum::Json<LimitsView>> {
    let own = orch
        .store()
        .workspace_limits(&ws.id)
        .await
        .map_err(crate::error::Error::from)?;
    let effective = orch.workspace_limits(&ws.id).await?;
    let (spent_today_usd, resets) = orch.spent_today(&ws.id).await?;
    Ok(axum::Json(LimitsView {
        own: own.into(),
        effective: effective.into(),
        spent_today_usd,
        resets,
    }))
}

/// `GET /api/workspaces/{ws}/limits`: the workspace's budgets and quotas and today's spend
/// (members).
pub async fn limits(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<LimitsView>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::Read)
        .await?;
    limits_view(state.service.orchestrator(), &ws).await
}

/// `PUT /api/workspaces/{ws}/limits`: maintainers and owners set the workspace's budgets and
/// quotas; each field replaces the old value (`null` or absent: the server's default).
pub async fn set_limits(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<LimitsInput>,
) -> ApiResult<axum::Json<LimitsView>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let orch = state.service.orchestrator();
    orch.set_workspace_limits(
        &ws.id,
        crate::store::WorkspaceLimits {
            max_run_cost_usd: input.max_run_cost_usd,
            daily_budget_usd: input.daily_budget_usd,
            max_concurrent_runs: input.max_concurrent_runs,
            max_warm_sandboxes: input.max_warm_sandboxes,
        },
        Some(&caller.user_id),
    )
    .await?;
    limits_view(orch, &ws).await
}

/// `PUT /api/workspaces/{ws}/secrets/{name}` body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretInput {
    /// The secret's value (at most 32 KiB); stored encrypted, never shown again.
    pub value: String,
}

/// `GET /api/workspaces/{ws}/secrets` reply: names only.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SecretList {
    /// By name.
    pub secrets: Vec<crate::orchestrator::SecretName>,
}

/// `GET /api/workspaces/{ws}/secrets`: the names of the workspace's secrets (maintainers and
/// owners), never their values.
pub async fn secrets(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<SecretList>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let secrets = state.service.orchestrator().list_secrets(&ws).await?;
    Ok(axum::Json(SecretList { secrets }))
}

/// `PUT /api/workspaces/{ws}/secrets/{name}`: sets a workspace secret (maintainers and owners).
pub async fn set_secret(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, name)): Path<(String, String)>,
    Json(input): Json<SecretInput>,
) -> ApiResult<StatusCode> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    state
        .service
        .orchestrator()
        .set_secret(&ws, &name, &input.value, Some(&caller.user_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/workspaces/{ws}/secrets/{name}`: removes a workspace secret (maintainers and
/// owners); sandboxes made with it keep their copy.
pub async fn delete_secret(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    state
        .service
        .orchestrator()
        .delete_secret(&ws, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/workspaces/{ws}/git-credentials/{host}` body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitCredentialInput {
    /// The user name sent with the token (for GitHub tokens any non-empty name, e.g.
    /// `x-access-token`).
    pub username: String,
    /// The token (or password), at most 4 KiB; stored encrypted, never shown again.
    pub token: String,
}

/// `GET /api/workspaces/{ws}/git-credentials` reply: hosts and user names, never tokens.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct GitCredentialList {
    /// By host.
    pub credentials: Vec<crate::store::GitCredentialInfo>,
}

/// `GET /api/workspaces/{ws}/git-credentials`: the workspace's git credentials without their
/// tokens (maintainers and owners).
pub async fn git_credentials(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<GitCredentialList>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let credentials = state
        .service
        .orchestrator()
        .list_git_credentials(&ws)
        .await?;
    Ok(axum::Json(GitCredentialList { credentials }))
}

/// `PUT /api/workspaces/{ws}/git-credentials/{host}`: sets the credential the server's clones of
/// `https://` repos on `host` use (maintainers and owners).
pub async fn set_git_credential(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, host)): Path<(String, String)>,
    Json(input): Json<GitCredentialInput>,
) -> ApiResult<axum::Json<crate::store::GitCredentialInfo>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let set = state
        .service
        .orchestrator()
        .set_git_credential(
            &ws,
            &host,
            &input.username,
            &input.token,
            Some(&caller.user_id),
        )
        .await?;
    Ok(axum::Json(set))
}

/// `DELETE /api/workspaces/{ws}/git-credentials/{host}`: removes a git credential (maintainers
/// and owners).
pub async fn delete_git_credential(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, host)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    state
        .service
        .orchestrator()
        .delete_git_credential(&ws, &host)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

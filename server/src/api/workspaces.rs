//! `/api/workspaces`: the caller's workspaces, creating one, members and their roles, invites.
//! Who may do what is [`crate::roles`]'s decision; the workspace lookup (membership, token
//! scope) is [`crate::delegation::Service::authorize_role`]'s.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::accounts::{WorkspaceInfo, check_name, normalise_email};
use super::{ApiError, ApiResult, ApiState, Authed, Json, Path};
use crate::delegation::Action;
use crate::ids::{hash_secret, new_id, new_secret, now_ms};
use crate::roles::may_assign;
use crate::store::{Invite, Role, StoreError, Workspace};

/// How long an invite code works.
pub const INVITE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

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
    pub name: String,
}

/// A member of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberInfo {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
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
    pub id: String,
    /// `dli_...`: pass as `invite` to `POST /api/auth/signup`. Works once.
    pub code: String,
    pub workspace: String,
    pub role: String,
    pub expires_at: i64,
}

fn role(s: &str) -> ApiResult<Role> {
    Role::parse(s.trim())
        .ok_or_else(|| ApiError::invalid("role: one of owner, maintainer, developer, guest"))
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn info(ws: Workspace, role: Role) -> WorkspaceInfo {
    WorkspaceInfo {
        id: ws.id,
        slug: ws.slug,
        name: ws.name,
        role: role.as_str().to_string(),
    }
}

fn is_slug(s: &str) -> bool {
    (2..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub async fn list(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> ApiResult<axum::Json<WorkspaceList>> {
    let workspaces = state
        .orch()
        .store()
        .workspaces_of_user(&caller.user_id)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|(ws, _)| caller.workspace_id.as_ref().is_none_or(|id| *id == ws.id))
        .map(|(ws, role)| info(ws, role))
        .collect();
    Ok(axum::Json(WorkspaceList { workspaces }))
}

pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Json(input): Json<CreateWorkspaceInput>,
) -> ApiResult<Response> {
    if caller.workspace_id.is_some() {
        return Err(forbidden(
            "a workspace-scoped token can not create workspaces",
        ));
    }
    if !is_slug(&input.slug) {
        return Err(ApiError::invalid("slug: 2 to 40 of a-z, 0-9 and -"));
    }
    let name = check_name(&input.name)?;
    let ws = Workspace {
        id: new_id("wsp"),
        slug: input.slug,
        name,
        created_at: now_ms(),
    };
    let conflict = || ApiError::new(StatusCode::CONFLICT, "conflict", "that slug is taken");
    let store = state.orch().store();
    match store.workspace_by_slug(&ws.slug).await {
        Ok(_) => return Err(conflict()),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(ApiError::internal(e)),
    }
    match store.create_workspace(&ws, &caller.user_id).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Err(conflict()),
        Err(e) => return Err(ApiError::internal(e)),
    }
    Ok((StatusCode::CREATED, axum::Json(info(ws, Role::Owner))).into_response())
}

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

pub async fn members(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
) -> ApiResult<axum::Json<MemberList>> {
    let (ws, _) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::Read)
        .await?;
    let members = state
        .orch()
        .store()
        .workspace_members(&ws.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(MemberList {
        members: members.into_iter().map(|(u, r)| member(u, r)).collect(),
    }))
}

pub async fn add_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<AddMemberInput>,
) -> ApiResult<Response> {
    let (ws, actor) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let new = role(&input.role)?;
    let email = normalise_email(&input.email)?;
    if !may_assign(actor, None, Some(new)) {
        return Err(forbidden("your role can not add members with that role"));
    }
    let store = state.orch().store();
    let user = match store.user_by_email(&email).await {
        Ok(u) => u,
        Err(StoreError::NotFound(_)) => {
            return Err(ApiError::not_found(
                "no account with that email; send an invite instead",
            ));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if store
        .member_role(&ws.id, &user.id)
        .await
        .map_err(ApiError::internal)?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "already a member; change the role with PATCH",
        ));
    }
    store
        .set_member(&ws.id, &user.id, new)
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, axum::Json(member(user, new))).into_response())
}

/// The target's current role, or 404 when they are not a member.
async fn current_role(state: &ApiState, ws: &Workspace, user_id: &str) -> ApiResult<Role> {
    state
        .orch()
        .store()
        .member_role(&ws.id, user_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("member {user_id:?} not found")))
}

fn store_conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        StoreError::NotFound(m) => ApiError::not_found(format!("{m} not found")),
        e => ApiError::internal(e),
    }
}

pub async fn change_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, user_id)): Path<(String, String)>,
    Json(input): Json<RoleInput>,
) -> ApiResult<axum::Json<MemberInfo>> {
    let (ws, actor) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let new = role(&input.role)?;
    let from = current_role(&state, &ws, &user_id).await?;
    if !may_assign(actor, Some(from), Some(new)) {
        return Err(forbidden("your role can not make this change"));
    }
    let store = state.orch().store();
    store
        .change_member_role(&ws.id, &user_id, new)
        .await
        .map_err(store_conflict)?;
    let user = store
        .user_by_id(&user_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(member(user, new)))
}

pub async fn remove_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (ws, actor) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::ManageMembers)
        .await?;
    let from = current_role(&state, &ws, &user_id).await?;
    if !may_assign(actor, Some(from), None) {
        return Err(forbidden("your role can not remove this member"));
    }
    state
        .orch()
        .store()
        .remove_member(&ws.id, &user_id)
        .await
        .map_err(store_conflict)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_invite(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<RoleInput>,
) -> ApiResult<Response> {
    let (ws, actor) = state
        .service
        .authorize_role(&caller, Some(&ws), Action::Invite)
        .await?;
    let new = role(&input.role)?;
    if !may_assign(actor, None, Some(new)) {
        return Err(forbidden("your role can not invite with that role"));
    }
    let code = new_secret("dli_");
    let now = now_ms();
    let invite = Invite {
        id: new_id("inv"),
        hash: hash_secret(&code),
        workspace_id: ws.id.clone(),
        role: new,
        created_by: caller.user_id.clone(),
        created_at: now,
        expires_at: now + INVITE_TTL_MS,
        used_at: None,
    };
    state
        .orch()
        .store()
        .insert_invite(&invite)
        .await
        .map_err(ApiError::internal)?;
    let created = CreatedInvite {
        id: invite.id,
        code,
        workspace: ws.slug,
        role: new.as_str().to_string(),
        expires_at: invite.expires_at,
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

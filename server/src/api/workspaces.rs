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

fn info(ws: Workspace, role: Role) -> WorkspaceInfo {
    WorkspaceInfo {
        id: ws.id,
        slug: ws.slug,
        name: ws.name,
        role: role.as_str().to_string(),
    }
}

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
    let members = accounts::members(&state.service, &caller, &ws).await?;
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
    let (user, role) =
        accounts::add_member(&state.service, &caller, &ws, &input.email, &input.role).await?;
    Ok((StatusCode::CREATED, axum::Json(member(user, role))).into_response())
}

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

pub async fn remove_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path((ws, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    accounts::remove_member(&state.service, &caller, &ws, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

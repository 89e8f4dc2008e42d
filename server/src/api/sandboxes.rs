//! `/api/sandboxes`: create, list, get, delete, pause and resume warm sandboxes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use delegate_mcp::tools::{
    CreateSandboxInput, DeleteSandboxOutput, ListSandboxesInput, ListSandboxesOutput, SandboxInfo,
};
use serde::Deserialize;

use super::{ApiResult, ApiState, Authed, IdPath, Json, Query};
use crate::ids::SandboxId;

/// `?workspace=`: which workspace a call is about.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceQuery {
    /// Workspace slug or id; `None` for the caller's first workspace.
    pub workspace: Option<String>,
}

/// `POST /api/sandboxes`: creates a warm sandbox and answers once it runs.
pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Json(input): Json<CreateSandboxInput>,
) -> ApiResult<Response> {
    let info = state.service.create_sandbox(&caller, input).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// `GET /api/sandboxes`: the sandboxes of a workspace, newest first.
pub async fn list(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Query(q): Query<WorkspaceQuery>,
) -> ApiResult<axum::Json<ListSandboxesOutput>> {
    let input = ListSandboxesInput {
        workspace: q.workspace,
    };
    Ok(axum::Json(
        state.service.list_sandboxes(&caller, input).await?,
    ))
}

/// `GET /api/sandboxes/{id}`: one sandbox and its status.
pub async fn get_one(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    Ok(axum::Json(state.service.get_sandbox(&caller, &id).await?))
}

/// `DELETE /api/sandboxes/{id}`: deletes a sandbox and its files, cancelling a run in it first.
pub async fn remove(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<DeleteSandboxOutput>> {
    Ok(axum::Json(
        state.service.delete_sandbox(&caller, &id).await?,
    ))
}

/// `POST /api/sandboxes/{id}/pause`: stops a warm sandbox's processes but keeps its files, to free
/// resources until the next run resumes it; refused while a run is in it.
pub async fn pause(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    Ok(axum::Json(state.service.pause_sandbox(&caller, &id).await?))
}

/// `POST /api/sandboxes/{id}/resume`: starts a paused sandbox again with the files it had.
pub async fn resume(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    Ok(axum::Json(
        state.service.resume_sandbox(&caller, &id).await?,
    ))
}

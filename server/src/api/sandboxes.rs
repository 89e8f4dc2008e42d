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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceQuery {
    pub workspace: Option<String>,
}

pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Json(input): Json<CreateSandboxInput>,
) -> ApiResult<Response> {
    let info = state.service.create_sandbox(&caller, input).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

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

pub async fn get_one(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    Ok(axum::Json(state.service.get_sandbox(&caller, &id).await?))
}

pub async fn remove(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<DeleteSandboxOutput>> {
    Ok(axum::Json(
        state.service.delete_sandbox(&caller, &id).await?,
    ))
}

pub async fn pause(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    Ok(axum::Json(state.service.pause_sandbox(&caller, &id).await?))
}

pub async fn resume(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<SandboxId>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    Ok(axum::Json(
        state.service.resume_sandbox(&caller, &id).await?,
    ))
}

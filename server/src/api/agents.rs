//! Registering a local agent (the REST side of the tunnel, [`crate::tunnel`]): a developer (or above) of a workspace asks for a one-time code that
//! expires (10 minutes unless asked otherwise); `delegate agent connect --code` trades it, once,
//! for a new local sandbox and its tunnel token. Codes and tokens are stored as hashes only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use delegate_agent::wire::{CreateCodeInput, CreatedCode, RegisterInput, Registered};

use super::{ApiResult, ApiState, Authed, Json, Path};
use crate::auth::accounts;

/// `POST /api/workspaces/{ws}/agent-codes`.
pub async fn create_code(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<CreateCodeInput>,
) -> ApiResult<Response> {
    let (code, record, ws) =
        accounts::create_agent_code(&state.service, &caller, &ws, input.expires_in_seconds).await?;
    let server = state
        .orch()
        .settings()
        .public_url
        .clone()
        .unwrap_or_else(|| "URL".into());
    let created = CreatedCode {
        command: format!(
            "delegate agent connect --server {server} --code {code} --name NAME \
             --opencode-url http://127.0.0.1:4096"
        ),
        code,
        workspace_id: ws.id,
        expires_at: record.expires_at.unwrap_or(record.created_at),
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `POST /api/agents/register`: no API token, the code is the credential.
pub async fn register(
    State(state): State<ApiState>,
    Json(input): Json<RegisterInput>,
) -> ApiResult<Response> {
    let (sandbox, ws, token) =
        accounts::register_agent(&state.service, &input.code, &input.name).await?;
    tracing::info!(sandbox = %sandbox.id, workspace = %ws.slug, "local agent registered");
    let registered = Registered {
        sandbox_id: sandbox.id,
        workspace_id: ws.id,
        token,
    };
    Ok((StatusCode::CREATED, axum::Json(registered)).into_response())
}

//! Registering a local agent (the REST side of the tunnel, [`crate::tunnel`]): a developer (or above) of a workspace asks for a one-time code that
//! expires (10 minutes unless asked otherwise); `delegate agent connect --code` trades it, once,
//! for a new local sandbox and its tunnel token. Codes and tokens are stored as hashes only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use delegate_agent::wire::{CreateCodeInput, CreatedCode, RegisterInput, Registered};

use super::{ApiError, ApiResult, ApiState, Authed, Json, Path};
use crate::auth::TUNNEL_TOKEN_PREFIX;
use crate::ids::{hash_secret, new_id, new_secret, now_ms};
use crate::roles::{Action, allows};
use crate::store::{StoreError, TokenKind, TokenRecord};

/// Prefix of registration codes.
pub const CODE_PREFIX: &str = "dac_";
/// How long a code is valid unless asked otherwise.
pub const DEFAULT_CODE_TTL_S: u64 = 600;
/// The longest a code may be valid.
pub const MAX_CODE_TTL_S: u64 = 86_400;

/// `POST /api/workspaces/{ws}/agent-codes`.
pub async fn create_code(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(ws): Path<String>,
    Json(input): Json<CreateCodeInput>,
) -> ApiResult<Response> {
    let ws = state
        .service
        .authorize(&caller, Some(&ws), Action::Write)
        .await?;
    let ttl = input.expires_in_seconds.unwrap_or(DEFAULT_CODE_TTL_S);
    if ttl == 0 || ttl > MAX_CODE_TTL_S {
        return Err(ApiError::invalid(format!(
            "expires_in_seconds: between 1 and {MAX_CODE_TTL_S}"
        )));
    }
    let code = new_secret(CODE_PREFIX);
    let now = now_ms();
    let record = TokenRecord {
        id: new_id("tok"),
        kind: TokenKind::AgentCode,
        hash: hash_secret(&code),
        name: None,
        user_id: Some(caller.user_id.clone()),
        sandbox_id: None,
        workspace_id: Some(ws.id.clone()),
        created_at: now,
        expires_at: Some(now + ttl as i64 * 1000),
        revoked_at: None,
    };
    state
        .orch()
        .store()
        .insert_token(&record)
        .await
        .map_err(ApiError::internal)?;
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
        expires_at: record.expires_at.unwrap_or(now),
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `POST /api/agents/register`: no API token, the code is the credential.
pub async fn register(
    State(state): State<ApiState>,
    Json(input): Json<RegisterInput>,
) -> ApiResult<Response> {
    let refused = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown, used or expired registration code: ask for a new one",
        )
    };
    let code = input.code.trim();
    if !code.starts_with(CODE_PREFIX) {
        return Err(refused());
    }
    let store = state.orch().store();
    let claimed = match store
        .claim_token(&hash_secret(code), TokenKind::AgentCode, now_ms())
        .await
    {
        Ok(c) => c,
        Err(StoreError::NotFound(_)) => return Err(refused()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let (Some(user_id), Some(workspace_id)) = (claimed.user_id, claimed.workspace_id) else {
        return Err(refused());
    };
    // The code acts with its creator's rights as they are now.
    let role = store
        .member_role(&workspace_id, &user_id)
        .await
        .map_err(ApiError::internal)?;
    if !role.is_some_and(|r| allows(r, Action::Write)) {
        return Err(refused());
    }
    let ws = store
        .workspace_by_id(&workspace_id)
        .await
        .map_err(ApiError::internal)?;
    let sandbox = state
        .orch()
        .register_local(&ws, &input.name, Some(format!("user:{user_id}")))
        .await
        .map_err(|e| match e {
            crate::orchestrator::OrchestratorError::BadInput(m) => ApiError::invalid(m),
            other => ApiError::internal(other),
        })?;
    let token = new_secret(TUNNEL_TOKEN_PREFIX);
    store
        .insert_token(&TokenRecord {
            id: new_id("tok"),
            kind: TokenKind::Tunnel,
            hash: hash_secret(&token),
            name: Some(sandbox.name.clone()),
            user_id: Some(user_id),
            sandbox_id: Some(sandbox.id.clone()),
            workspace_id: Some(ws.id.clone()),
            created_at: now_ms(),
            expires_at: None,
            revoked_at: None,
        })
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(sandbox = %sandbox.id, workspace = %ws.slug, "local agent registered");
    let registered = Registered {
        sandbox_id: sandbox.id,
        workspace_id: ws.id,
        token,
    };
    Ok((StatusCode::CREATED, axum::Json(registered)).into_response())
}

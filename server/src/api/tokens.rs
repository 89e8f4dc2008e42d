//! `/api/tokens`: the caller's own API tokens. The secret is returned once, at creation; lists
//! never carry secrets or hashes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiResult, ApiState, Authed, Json, Path};
use crate::auth::accounts;
use crate::store::TokenRecord;

/// `POST /api/tokens` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenInput {
    /// What the token is for, e.g. `laptop claude-code`.
    pub name: String,
    /// The token stops working after this many seconds; omit for no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// Limit the token to this workspace (slug or id): elsewhere it finds nothing. A token made
    /// with a scoped token is always scoped to the same workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// `POST /api/tokens` reply: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreatedToken {
    /// The token's id, for listing and `DELETE /api/tokens/{id}`; not a credential.
    pub id: String,
    /// The name given at creation.
    pub name: String,
    /// `dlg_...`: send as `Authorization: Bearer <token>`. Not retrievable later.
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the token stops working, in milliseconds since the Unix epoch; `null` never expires.
    pub expires_at: Option<i64>,
    /// The workspace (id) the token is limited to, if any.
    #[serde(default)]
    pub workspace_id: Option<String>,
}

/// A token as lists show it (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    /// The token's id, for `DELETE /api/tokens/{id}`; not a credential.
    pub id: String,
    /// The name given at creation.
    pub name: Option<String>,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it stops working, in milliseconds since the Unix epoch; `null` never expires.
    pub expires_at: Option<i64>,
    /// When it was revoked, in milliseconds since the Unix epoch; `null` while not revoked.
    pub revoked_at: Option<i64>,
    /// The workspace (id) the token is limited to, if any.
    #[serde(default)]
    pub workspace_id: Option<String>,
}

/// `GET /api/tokens` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenList {
    /// Newest first, revoked and expired ones included.
    pub tokens: Vec<TokenInfo>,
}

impl From<TokenRecord> for TokenInfo {
    fn from(t: TokenRecord) -> Self {
        TokenInfo {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            workspace_id: t.workspace_id,
        }
    }
}

/// `POST /api/tokens`: creates an API token for the caller and returns its secret, once.
pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Json(input): Json<CreateTokenInput>,
) -> ApiResult<Response> {
    let (secret, record) = accounts::create_token(
        &state.service,
        &caller,
        &input.name,
        input.expires_in_seconds,
        input.workspace.as_deref(),
    )
    .await?;
    let created = CreatedToken {
        id: record.id,
        name: record.name.unwrap_or_default(),
        token: secret,
        created_at: record.created_at,
        expires_at: record.expires_at,
        workspace_id: record.workspace_id,
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `GET /api/tokens`: the caller's API tokens, without secrets.
pub async fn list(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> ApiResult<axum::Json<TokenList>> {
    let tokens = accounts::tokens(state.orch().store().as_ref(), &caller).await?;
    Ok(axum::Json(TokenList {
        tokens: tokens.into_iter().map(TokenInfo::from).collect(),
    }))
}

/// `DELETE /api/tokens/{id}`: revokes one of the caller's API tokens at once; others' look unknown.
pub async fn revoke(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    accounts::revoke_token(state.orch().store().as_ref(), &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `/api/tokens`: the caller's own API tokens. The secret is returned once, at creation; lists
//! never carry secrets or hashes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, ApiState, Authed, Json, Path};
use crate::store::TokenRecord;

/// The longest lifetime a token may ask for: ten years.
const MAX_EXPIRY_SECONDS: u64 = 10 * 365 * 86_400;

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
    pub id: String,
    pub name: String,
    /// `dlg_...`: send as `Authorization: Bearer <token>`. Not retrievable later.
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// The workspace (id) the token is limited to, if any.
    #[serde(default)]
    pub workspace_id: Option<String>,
}

/// A token as lists show it (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
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

pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Json(input): Json<CreateTokenInput>,
) -> ApiResult<Response> {
    let name = input.name.trim().to_string();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name: 1 to 200 characters, no control characters",
        ));
    }
    let expires_at = match input.expires_in_seconds {
        None => None,
        Some(s) if (1..=MAX_EXPIRY_SECONDS).contains(&s) => {
            Some(crate::ids::now_ms() + (s as i64) * 1000)
        }
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "expires_in_seconds: between 1 and {MAX_EXPIRY_SECONDS}"
            )));
        }
    };
    // Resolved through the caller's memberships (and scope): no scoping to a foreign workspace,
    // and a scoped token can not mint a wider one.
    let workspace_id = match &input.workspace {
        Some(w) => Some(
            state
                .service
                .authorize(&caller, Some(w), crate::delegation::Action::Read)
                .await?
                .id,
        ),
        None => caller.workspace_id.clone(),
    };
    let (secret, record) = crate::auth::create_scoped_api_token(
        state.orch().store().as_ref(),
        &caller.user_id,
        Some(name.clone()),
        expires_at,
        workspace_id,
    )
    .await
    .map_err(ApiError::internal)?;
    let created = CreatedToken {
        id: record.id,
        name,
        token: secret,
        created_at: record.created_at,
        expires_at: record.expires_at,
        workspace_id: record.workspace_id,
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

pub async fn list(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> ApiResult<axum::Json<TokenList>> {
    let tokens = state
        .orch()
        .store()
        .tokens_of_user(&caller.user_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(TokenList {
        tokens: tokens
            .into_iter()
            .filter(|t| in_scope(&caller, t))
            .map(TokenInfo::from)
            .collect(),
    }))
}

pub async fn revoke(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let store = state.orch().store();
    // Only the caller's own tokens; anyone else's look unknown.
    let own = store
        .tokens_of_user(&caller.user_id)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .any(|t| t.id == id && in_scope(&caller, &t));
    if !own {
        return Err(ApiError::not_found(format!("token {id:?} not found")));
    }
    store
        .revoke_token(&id, crate::ids::now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A workspace-scoped token sees (and revokes) only tokens of its own workspace.
pub fn in_scope(caller: &delegate_mcp::delegator::Caller, t: &TokenRecord) -> bool {
    caller.workspace_id.is_none() || caller.workspace_id == t.workspace_id
}

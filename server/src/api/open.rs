//! `POST /api/sandboxes/{id}/open`: a one-time ticket into the sandbox's opencode web UI through
//! the gateway ([`crate::gateway`]).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};

use super::{ApiError, ApiResult, ApiState, Authed, IdPath};
use crate::auth::sessions;
use crate::credentials;
use crate::gateway::OpenTicket;
use crate::ids::SandboxId;

/// `POST /api/sandboxes/{id}/open`: a ticket bound to the caller's credential, so the browser's
/// access to the sandbox ends when that token or session does.
pub async fn open(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    // Checked after the credential, where the sandbox is looked up.
    id: Result<IdPath<SandboxId>, ApiError>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<OpenTicket>> {
    // The credential `require_token` accepted (the same precedence): the gateway lives only as
    // long as it does.
    let credential = if headers.contains_key(header::AUTHORIZATION) {
        credentials::bearer(&headers)
    } else {
        sessions::cookie_value(&headers)
    }
    .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no credential"))?;
    let IdPath(id) = id?;
    Ok(axum::Json(
        state.gateway.open(&caller, credential, &id).await?,
    ))
}

//! `POST /api/sandboxes/{id}/open`: a one-time ticket into the sandbox's opencode web UI through
//! the gateway ([`crate::gateway`]).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};

use super::{ApiError, ApiResult, ApiState, Authed, Path};
use crate::gateway::OpenTicket;

pub async fn open(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<OpenTicket>> {
    // The credential `require_token` accepted (the same precedence): the gateway lives only as
    // long as it does.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let credential = match headers.get(header::AUTHORIZATION) {
        Some(_) => bearer,
        None => crate::auth::sessions::cookie_value(cookie),
    }
    .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no credential"))?;
    Ok(axum::Json(
        state.gateway.open(&caller, credential, &id).await?,
    ))
}

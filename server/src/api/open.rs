//! `POST /api/sandboxes/{id}/open`: a one-time ticket into the sandbox's opencode web UI through
//! the gateway ([`crate::gateway`]).

use axum::extract::State;

use super::{ApiResult, ApiState, Authed, Path};
use crate::gateway::OpenTicket;

pub async fn open(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<OpenTicket>> {
    Ok(axum::Json(state.gateway.open(&caller, &id).await?))
}

//! `POST /api/snapshots`: a caller's repository snapshot (a git bundle made by delegate's client
//! on their machine), streamed to disk for the next `run_in_sandbox` or `create_sandbox`.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use delegate_mcp::rest::SnapshotUploaded;
use delegate_mcp::types::RepoBase;
use serde::Deserialize;

use super::{ApiResult, ApiState, Authed, Query};

/// `POST /api/snapshots` query: the workspace, and where the snapshot came from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    workspace: Option<String>,
    repo: String,
    commit: Option<String>,
    branch: Option<String>,
    dirty: Option<bool>,
}

/// Receives the bundle (streamed, never held in memory; over `DELEGATE_MAX_REPO_BYTES` it is
/// cut off with 413 `repo_too_large`) and answers with the id to pass as `snapshot`.
pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Query(q): Query<SnapshotQuery>,
    body: Body,
) -> ApiResult<Response> {
    let base = RepoBase {
        repo: q.repo,
        commit: q.commit.filter(|c| !c.is_empty()),
        branch: q.branch.filter(|b| !b.is_empty()),
        dirty: q.dirty.unwrap_or(false),
    };
    let (snapshot_id, bytes) = state
        .service
        .receive_snapshot(
            &caller,
            q.workspace.as_deref(),
            base,
            body.into_data_stream(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(SnapshotUploaded { snapshot_id, bytes }),
    )
        .into_response())
}

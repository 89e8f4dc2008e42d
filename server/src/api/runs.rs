//! `/api/runs`: start, list, get, cancel runs, and follow their events (JSON pages or SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use delegate_mcp::tools::RunInSandboxInput;
use delegate_mcp::types::RunResult;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{ApiError, ApiResult, ApiState, Authed, IdPath, Json, Query};
use crate::delegation::{Action, RunChange};
use crate::ids::{RunId, SandboxId};
use crate::orchestrator::Orchestrator;

/// `GET /api/runs` lists this many runs unless told otherwise.
const DEFAULT_LIST_LIMIT: i64 = 50;
/// ... and never more than this.
const MAX_LIST_LIMIT: i64 = 500;
/// SSE keep-alive comment interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often an SSE stream looks again at a run that executes in another server process.
const REMOTE_POLL: Duration = Duration::from_millis(500);

pub use delegate_mcp::rest::RunList;

/// `GET /api/runs` query: `workspace`, `sandbox_id` and `limit` (see [`super::table`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    workspace: Option<String>,
    sandbox_id: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/runs/{id}/events` query: the cursor `after`, and for JSON pages `limit` and
/// `wait_seconds` (see [`super::table`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    wait_seconds: Option<u64>,
}

/// `POST /api/runs`: starts a run; unlike the MCP tool it does not wait unless asked, since HTTP
/// clients follow the events endpoint instead.
pub async fn create(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Json(mut input): Json<RunInSandboxInput>,
) -> ApiResult<Response> {
    let wait = input.wait.unwrap_or(false);
    input.wait = Some(wait);
    // Nobody listens to progress here: the events endpoint is the way to follow a run.
    let (progress, _) = tokio::sync::mpsc::channel(1);
    let result = state
        .service
        .run_in_sandbox(&caller, input, progress, CancellationToken::new())
        .await?;
    let status = if wait {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(result)).into_response())
}

/// `GET /api/runs`: the runs of a workspace or one sandbox, newest first.
pub async fn list(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<RunList>> {
    let limit = q
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let sandbox_id = parse_sandbox(q.sandbox_id.as_deref())?;
    let runs = state
        .service
        .list_runs(&caller, q.workspace.as_deref(), sandbox_id.as_ref(), limit)
        .await?;
    Ok(axum::Json(RunList { runs }))
}

/// The `sandbox_id` query parameter, parsed once: a malformed one is not found.
pub(super) fn parse_sandbox(sandbox_id: Option<&str>) -> ApiResult<Option<SandboxId>> {
    Ok(sandbox_id
        .map(str::parse)
        .transpose()
        .map_err(crate::error::Error::from)?)
}

/// `GET /api/runs/{id}`: a run's result as it stands, running or ended.
pub async fn get_one(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<RunId>,
) -> ApiResult<axum::Json<RunResult>> {
    Ok(axum::Json(state.service.get_run(&caller, &id).await?))
}

/// `POST /api/runs/{id}/cancel`: cancels a run and answers once it has ended.
pub async fn cancel(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<RunId>,
) -> ApiResult<Response> {
    let out = state.service.cancel_run(&caller, &id).await?;
    Ok(axum::Json(out).into_response())
}

/// `GET /api/runs/{id}/patch`: a run's whole binary-safe patch, streamed from its file.
pub async fn patch(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<RunId>,
) -> ApiResult<Response> {
    let change = state.service.run_patch(&caller, &id).await?;
    change_file(change, "text/x-diff").await
}

/// `GET /api/runs/{id}/bundle`: a run's change as a git bundle on top of its snapshot, streamed
/// from its file; the commit in `X-Delegate-Commit`.
pub async fn bundle(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    IdPath(id): IdPath<RunId>,
) -> ApiResult<Response> {
    let change = state.service.run_bundle(&caller, &id).await?;
    change_file(change, "application/x-git-bundle").await
}

async fn change_file(change: RunChange, content_type: &'static str) -> ApiResult<Response> {
    let file = tokio::fs::File::open(&change.path)
        .await
        .map_err(ApiError::internal)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, change.bytes.to_string()),
        ],
        [("x-delegate-commit", change.commit)],
        body,
    )
        .into_response())
}

/// `GET /api/runs/{id}/events`: a run's events after a cursor, as a long-polled JSON page or, with
/// `Accept: text/event-stream`, as an SSE stream that resumes from `Last-Event-ID`.
pub async fn events(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    // Checked where the run is looked up: a bad Last-Event-ID answers first.
    id: Result<IdPath<RunId>, ApiError>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let wants_sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if !wants_sse {
        let IdPath(id) = id?;
        let run = state.service.run(&caller, &id, Action::Read).await?;
        let page = state
            .service
            .events_page(run, q.after, q.wait_seconds, Duration::ZERO, q.limit)
            .await?;
        return Ok(axum::Json(page).into_response());
    }
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID: an event sequence number"))?,
        ),
    };
    let IdPath(id) = id?;
    let run = state.service.run(&caller, &id, Action::Read).await?;
    let after = last_event_id.or(q.after).unwrap_or(0);
    if crate::delegation::is_parent(&run) {
        let stream = sse_attempt_events(state.orch().clone(), id, after);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response());
    }
    let stream = sse_events(state.orch().clone(), id, after);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// A parent's events as SSE: one `attempt` event per attempt as it ends, then `event: end`
/// once every attempt has ended.
fn sse_attempt_events(
    orch: Orchestrator,
    parent: RunId,
    after: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    async_stream::stream! {
        let mut cursor = after;
        loop {
            let runs = match orch.attempts_of(&parent).await {
                Ok(runs) => runs,
                Err(e) => {
                    tracing::warn!(run = %parent, error = %e, "SSE: cannot read the attempts; closing");
                    return;
                }
            };
            let total = runs.len() as u64;
            let (runs, events) = match orch.attempt_events(&parent, runs, cursor, KEEP_ALIVE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(run = %parent, error = %e, "SSE: cannot read the attempts; closing");
                    return;
                }
            };
            for e in &events {
                cursor = e.seq;
                yield Ok(sse_event(e));
            }
            let statuses: Vec<_> = runs.iter().map(|r| r.status).collect();
            let status = delegate_mcp::types::parent_status(&statuses);
            if status.is_terminal() && cursor >= total {
                let data = serde_json::to_string(&delegate_mcp::rest::StreamEnd { status })
                    .unwrap_or_default();
                yield Ok(SseEvent::default().event("end").data(data));
                return;
            }
        }
    }
}

/// A run's events after `after` as SSE, then `event: end` once the run has ended and every event
/// was sent. Reads the orchestrator's event stream (store, then live), never buffering the log.
fn sse_events(
    orch: Orchestrator,
    run_id: RunId,
    after: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    async_stream::stream! {
        let mut cursor = after;
        loop {
            // Status first: a run seen terminal here has every event stored already.
            let status = match orch.run(&run_id).await {
                Ok(run) => run.status,
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "SSE: cannot read the run; closing");
                    return;
                }
            };
            let mut events = Box::pin(orch.events(&run_id, cursor));
            while let Some(event) = events.next().await {
                match event {
                    Ok(e) => {
                        cursor = e.seq;
                        yield Ok(sse_event(&e));
                    }
                    Err(e) => {
                        // The client resumes from its Last-Event-ID.
                        tracing::warn!(run = %run_id, error = %e, "SSE: event stream broke; closing");
                        return;
                    }
                }
            }
            if status.is_terminal() {
                let data = serde_json::to_string(&delegate_mcp::rest::StreamEnd { status })
                    .unwrap_or_default();
                yield Ok(SseEvent::default().event("end").data(data));
                return;
            }
            // Not live in this process (another server runs it) or it ended meanwhile: look again.
            tokio::time::sleep(REMOTE_POLL).await;
        }
    }
}

fn sse_event(e: &delegate_mcp::types::Event) -> SseEvent {
    // axum refuses line breaks in an event name; opencode's unknown types are kept, not trusted.
    let kind: String = e
        .kind
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(e.seq.to_string())
        .event(kind)
        .data(data)
}

//! Operations endpoints (`/healthz`, `/readyz`, Prometheus `/metrics`), the HTTP request counter
//! behind `delegate_http_requests_total`, and `/api/usage`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use delegate_mcp::types::{RunStatus, SandboxStatus, Usage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sandboxes::WorkspaceQuery;
use super::{ApiError, ApiResult, ApiState, Authed, Query};

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests served, by route template (never the raw path, so the label set stays small) and
/// status code.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpMetrics {
    fn record(&self, route: String, status: u16) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((route, status)).or_insert(0) += 1;
    }

    fn snapshot(&self) -> Vec<((String, u16), u64)> {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Middleware counting every request by matched route and status.
pub async fn track(
    State(metrics): State<std::sync::Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics.record(route, response.status().as_u16());
    response
}

/// `GET /healthz`: liveness; answers whenever the process serves HTTP, without touching the database.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: readiness; 503 when the database does not answer in time, so a load balancer
/// stops sending traffic here.
pub async fn readyz(State(state): State<ApiState>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.orch().store().ping()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database did not answer");
            not_ready()
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer in time");
            not_ready()
        }
    }
}

fn not_ready() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the database does not answer",
    )
    .into_response()
}

/// `GET /metrics`: Prometheus text with the HTTP counters, the runs and sandboxes per status and
/// the egress proxy's connections and bytes.
pub async fn metrics(
    State(state): State<ApiState>,
    headers: http::HeaderMap,
) -> ApiResult<Response> {
    // Counts of runs, sandboxes and requests say how a team works: an API token (any user's)
    // unless the operator made them public for a scraper (`DELEGATE_METRICS_PUBLIC`).
    if !state.orch().settings().metrics_public {
        let store = state.orch().store();
        match crate::auth::caller_from_bearer(store.as_ref(), crate::credentials::bearer(&headers))
            .await
        {
            Ok(_) => {}
            Err(crate::credentials::AuthError::Store(e)) => return Err(ApiError::internal(e)),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "/metrics needs `Authorization: Bearer dlg_...` (or DELEGATE_METRICS_PUBLIC=true)",
                ));
            }
        }
    }
    let counts = state
        .orch()
        .store()
        .status_counts()
        .await
        .map_err(ApiError::internal)?;
    let mut out = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP delegate_runs_total Runs in the database, by status."
    );
    let _ = writeln!(out, "# TYPE delegate_runs_total counter");
    for status in RunStatus::ALL {
        let n = counts
            .runs
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "delegate_runs_total{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP delegate_runs_active Runs executing in this server process."
    );
    let _ = writeln!(out, "# TYPE delegate_runs_active gauge");
    let _ = writeln!(
        out,
        "delegate_runs_active {}",
        state.orch().live_run_count()
    );
    let _ = writeln!(
        out,
        "# HELP delegate_sandboxes Sandboxes in the database, by status."
    );
    let _ = writeln!(out, "# TYPE delegate_sandboxes gauge");
    for status in SandboxStatus::ALL {
        let n = counts
            .sandboxes
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "delegate_sandboxes{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP delegate_proxy_requests_total Model calls recorded by the Anthropic proxy."
    );
    let _ = writeln!(out, "# TYPE delegate_proxy_requests_total counter");
    let _ = writeln!(
        out,
        "delegate_proxy_requests_total {}",
        counts.proxy_requests
    );
    let _ = writeln!(
        out,
        "# HELP delegate_retention_pruned_total Rows pruned by retention (DELEGATE_RETAIN_RUNS_DAYS) since this process started."
    );
    let _ = writeln!(out, "# TYPE delegate_retention_pruned_total counter");
    let pruned = state.orch().pruned();
    for (what, n) in [
        ("runs", &pruned.runs),
        ("events", &pruned.events),
        ("usage", &pruned.usage),
    ] {
        let n = n.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            out,
            "delegate_retention_pruned_total{{what=\"{what}\"}} {n}"
        );
    }
    state.orch().egress_metrics().render(&mut out);
    state.orch().render_pool_metrics(&mut out);
    let _ = writeln!(
        out,
        "# HELP delegate_http_requests_total HTTP requests served by this process, by route and status."
    );
    let _ = writeln!(out, "# TYPE delegate_http_requests_total counter");
    for ((route, status), n) in state.metrics.snapshot() {
        let route = route.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "delegate_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// `GET /api/usage` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceUsage {
    /// The workspace's slug.
    pub workspace: String,
    /// Summed over every model call of the workspace's runs.
    pub usage: Usage,
    /// How many runs the workspace has.
    pub runs: u64,
}

/// `GET /api/usage`: model usage summed over a workspace's runs, for the caller to watch spending.
pub async fn usage(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Query(q): Query<WorkspaceQuery>,
) -> ApiResult<axum::Json<WorkspaceUsage>> {
    let (ws, usage, runs) = state.service.usage(&caller, q.workspace.as_deref()).await?;
    Ok(axum::Json(WorkspaceUsage {
        workspace: ws.slug,
        usage,
        runs,
    }))
}

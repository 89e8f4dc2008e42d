//! `delegate serve`'s HTTP surface: the REST API under `/api` and `/healthz`, `/readyz`, `/metrics`
//! (see [`crate::api`]), MCP over streamable HTTP at `/mcp` (bearer API tokens), and the Anthropic
//! proxy at `/v1` (for sandboxes that reach the server over the network), the web UI
//! ([`crate::web`]), the opencode gateway on `oc-{id}.BASE_DOMAIN` hosts ([`crate::gateway`]) and
//! the tunnel of local agents at `/api/tunnel/{sandbox_id}` (see [`crate::tunnel`]).
//! The caller binds the listener and decides when to stop.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use delegate_mcp::HttpConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::api::ops::{HttpMetrics, track};
use crate::auth::{AuthError, caller_from_bearer};
use crate::delegation::EmbeddedDelegator;
use crate::orchestrator::Orchestrator;

/// The whole router of `delegate serve`.
pub fn router(
    orch: Orchestrator,
    allowed_hosts: Vec<String>,
    shutdown: CancellationToken,
) -> Router {
    let mcp = delegate_mcp::http_service(
        Arc::new(EmbeddedDelegator::new(orch.clone())),
        HttpConfig {
            allowed_hosts,
            shutdown,
        },
    );
    let mcp = Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            orch.clone(),
            require_token,
        ));
    let metrics = Arc::new(HttpMetrics::default());
    let state = ApiState::new(orch.clone(), metrics.clone());
    let gateway = state.gateway.clone();
    let api = crate::api::routes(state);
    let tunnels = crate::tunnel::Tunnels::new(orch.clone());
    Router::new()
        .merge(api)
        .merge(tunnels.router())
        .merge(mcp)
        .merge(orch.proxy().router())
        .merge(crate::web::routes())
        .fallback(crate::web::fallback)
        .layer(axum::middleware::from_fn_with_state(metrics, track))
        // Outermost: `oc-{id}.BASE_DOMAIN` hosts are the opencode gateway, never delegate's routes.
        .layer(axum::middleware::from_fn_with_state(
            gateway,
            crate::gateway::route_by_host,
        ))
}

/// Host names the MCP endpoint answers to: the public URL's host, the listen address, loopback.
pub fn allowed_hosts(orch: &Orchestrator, local: std::net::SocketAddr) -> Vec<String> {
    let mut hosts = vec![
        local.to_string(),
        format!("localhost:{}", local.port()),
        format!("127.0.0.1:{}", local.port()),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    if let Some(public) = &orch.settings().public_url
        && let Some(host) = public
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .filter(|h| !h.is_empty())
    {
        hosts.push(host.to_string());
        if let Some((name, _port)) = host.rsplit_once(':') {
            hosts.push(name.to_string());
        }
    }
    hosts
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    orch: Orchestrator,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = router(orch.clone(), allowed_hosts(&orch, local), stop.clone());
    let stopping = stop.clone();
    let served = crate::net::serve_tcp(listener, app, async move {
        shutdown.await;
        stopping.cancel();
    });
    // Long-lived streams (MCP SSE, a client that never hangs up) must not hold shutdown hostage.
    tokio::select! {
        r = served => r,
        _ = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("connections still open {}s after shutdown; closing them", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    }
}

/// How long open connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves `Authorization: Bearer dlg_...`, or else the session cookie, to a
/// [`delegate_mcp::delegator::Caller`] in the request's extensions; without a valid one: 401 with
/// `WWW-Authenticate`. A cookie-authenticated change must pass the CSRF origin check
/// ([`crate::auth::csrf`]) or gets 403 before any handler runs.
pub(crate) async fn require_token(
    State(orch): State<Orchestrator>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cookie = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok());
    let resolved = match (header, crate::auth::sessions::cookie_value(cookie)) {
        (None, Some(secret)) => {
            if !crate::auth::csrf::allowed(
                request.method(),
                request.headers(),
                orch.settings().public_url.as_deref(),
            ) {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "a change with a session cookie must come from this server's own origin \
                     (Origin or Referer header)",
                );
            }
            crate::auth::sessions::caller_from_session(orch.store().as_ref(), secret).await
        }
        _ => caller_from_bearer(orch.store().as_ref(), header).await,
    };
    match resolved {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "token check failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            )
        }
        Err(e) => {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!(
                    "{e}: send `Authorization: Bearer dlg_...` (create one with `delegate token create`)"
                ),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"delegate\""),
            );
            response
        }
    }
}

/// delegate's JSON error envelope: `{"error": {"code", "message"}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

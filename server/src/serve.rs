//! `delegate serve`'s HTTP surface: the REST API under `/api` and `/healthz`, `/readyz`, `/metrics`
//! (see [`crate::api`]), MCP over streamable HTTP at `/mcp` (bearer API tokens), the Anthropic
//! proxy at `/v1` only where sandboxes reach the server over the network (docker on a named
//! network, kubernetes through the server's Service; every other backend serves it on a socket or
//! loopback port of its own), the web UI
//! ([`crate::web`]), the opencode gateway on `oc-{id}.BASE_DOMAIN` hosts ([`crate::gateway`]) and
//! the tunnel of local agents at `/api/tunnel/{sandbox_id}` (see [`crate::tunnel`]).
//! The caller binds the listener and decides when to stop.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use delegate_mcp::HttpConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::api::ops::{HttpMetrics, track};
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
            max_sessions: None,
            options: delegate_mcp::McpOptions {
                heartbeat: orch.settings().heartbeat,
            },
        },
    );
    let mcp = Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            orch.clone(),
            crate::auth::require_token,
        ));
    let metrics = Arc::new(HttpMetrics::default());
    let state = ApiState::new(orch.clone(), metrics.clone());
    let gateway = state.gateway.clone();
    let api = crate::api::routes(state);
    let tunnels = crate::tunnel::Tunnels::new(orch.clone());
    let mut router = Router::new().merge(api).merge(tunnels.router()).merge(mcp);
    if orch.proxy_on_listener() {
        router = router.merge(orch.proxy().router());
    }
    router
        .merge(crate::web::routes())
        .fallback(crate::web::fallback)
        .layer(axum::middleware::from_fn_with_state(metrics, track))
        // Outermost: `oc-{id}.BASE_DOMAIN` hosts are the opencode gateway, never delegate's routes.
        .layer(axum::middleware::from_fn_with_state(
            gateway,
            crate::gateway::route_by_host,
        ))
}

/// Host names the MCP endpoint answers to: the public URL's host, the listen address, loopback,
/// and `DELEGATE_ALLOWED_HOSTS`.
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
    hosts.extend(orch.settings().allowed_hosts.iter().cloned());
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

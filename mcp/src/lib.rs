//! delegate's MCP surface: the wire types every part shares ([`types`]), the tool inputs and
//! outputs ([`tools`]), the seam to whatever executes them ([`delegator`]), and the rmcp server
//! ([`service`]) with its two transports: [`serve_stdio`] and [`http_service`]. On the caller's
//! machine, [`local`] wraps any delegator to take repositories in and bring changes back.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod budget;
pub mod delegator;
pub mod local;
pub mod remote;
pub mod rest;
pub mod service;
pub mod sessions;
pub mod tasks;
pub mod tools;
pub mod types;

use std::{sync::Arc, time::Duration};

use rmcp::{
    ServiceExt,
    service::ServerInitializeError,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use tokio_util::sync::CancellationToken;

pub use delegator::{Caller, ClientRoots, DelegateError, Delegator, Progress};
pub use local::{KeepPolicy, LocalDelegator, PruneReport};
pub use remote::RemoteDelegator;
pub use service::{DelegateMcp, McpOptions};

/// How long an HTTP session may go without any message before it is closed. Longer than the
/// longest run ([`tools::MAX_TIMEOUT_SECONDS`]) by an hour: a `run_in_sandbox` call without a
/// progress token sends nothing until it ends, and closing its session would cancel the run.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(tools::MAX_TIMEOUT_SECONDS + 3600);

/// Why [`serve_stdio`] stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The client's handshake failed or stdin closed before it completed.
    #[error("MCP handshake failed: {0}")]
    Handshake(Box<ServerInitializeError>),
    /// The service task failed.
    #[error("MCP service failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<ServerInitializeError> for ServeError {
    fn from(error: ServerInitializeError) -> Self {
        Self::Handshake(Box::new(error))
    }
}

/// Serves MCP on stdin/stdout, every request running as `caller`, until the client closes stdin.
///
/// Only MCP frames are written to stdout; logs must go elsewhere (the caller's tracing setup).
pub async fn serve_stdio(
    delegator: Arc<dyn Delegator>,
    caller: Caller,
    options: McpOptions,
) -> Result<(), ServeError> {
    let mcp = DelegateMcp::new(delegator, Some(caller)).with_options(options);
    let tasks = mcp.tasks();
    let service = mcp.serve(rmcp::transport::stdio()).await?;
    let served = service.waiting().await;
    // The client hung up: its tasks' runs are cancelled, as a plain call's run would be.
    tasks.cancel_all().await;
    served?;
    Ok(())
}

/// Settings of the streamable-HTTP endpoint.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// `Host` header values allowed (`example.com` or `example.com:8443`), against DNS
    /// rebinding. Empty allows any host.
    pub allowed_hosts: Vec<String>,
    /// Cancelling it ends every session and stream (server shutdown).
    pub shutdown: CancellationToken,
    /// Live sessions at most; [`sessions::DEFAULT_MAX_SESSIONS`] when `None`.
    pub max_sessions: Option<usize>,
    /// The MCP service's own settings (the progress heartbeat).
    pub options: McpOptions,
}

/// The tower service [`http_service`] returns; mount it with axum's `nest_service("/mcp", ...)`.
pub type McpHttpService = StreamableHttpService<DelegateMcp, sessions::BoundedSessions>;

/// The MCP streamable-HTTP endpoint (POST/GET/DELETE on one path).
///
/// The server's auth middleware must insert a [`Caller`] into each HTTP request's extensions;
/// tools refuse requests without one. Both protocol eras are served: clients that `initialize`
/// (2025-11-25 and older) get a stateful session (`Mcp-Session-Id`), and 2026-07-28 clients
/// (`server/discover`, per-request `_meta`) are served statelessly, with plain JSON replies when
/// a call sends no notifications.
pub fn http_service(delegator: Arc<dyn Delegator>, config: HttpConfig) -> McpHttpService {
    let mcp = DelegateMcp::new(delegator, None).with_options(config.options);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE_TIMEOUT);
    let server_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        .with_json_response(true)
        .with_cancellation_token(config.shutdown);
    // rmcp's default accepts loopback hosts only; ours means "any" when empty.
    let server_config = if config.allowed_hosts.is_empty() {
        server_config.disable_allowed_hosts()
    } else {
        server_config.with_allowed_hosts(config.allowed_hosts)
    };
    let sessions = sessions::BoundedSessions::new(
        sessions,
        config
            .max_sessions
            .unwrap_or(sessions::DEFAULT_MAX_SESSIONS),
    );
    StreamableHttpService::new(move || Ok(mcp.clone()), Arc::new(sessions), server_config)
}

//! `delegate serve`: the HTTP server (MCP at /mcp, the Anthropic proxy at /v1, health checks).

use std::process::ExitCode;

use anyhow::Context;
use delegate_server::settings::Settings;

pub async fn main(settings: Settings) -> anyhow::Result<ExitCode> {
    let listen = settings.listen;
    let orch = delegate_server::app::embedded(settings).await?;
    let (lost, failed) = orch.reconcile().await?;
    if lost + failed > 0 {
        tracing::warn!(
            "after the restart: {lost} active runs marked lost, {failed} sandboxes failed"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (DELEGATE_LISTEN)"))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal();
    tracing::info!("delegate serve listening on http://{addr} (web UI at /, MCP at /mcp)");
    let served = delegate_server::serve::serve(orch.clone(), listener, shutdown).await;
    orch.shutdown_server().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: a signal that comes right after the server says it listens must shut
/// it down gracefully, not kill it with the default action.
pub(super) fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            () = received(term.as_mut()) => {}
            () = received(int.as_mut()) => {}
        }
        tracing::info!("shutting down");
    }
}

/// Waits for `signal`, or forever when it could not be installed.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

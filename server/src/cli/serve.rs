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
    tracing::info!("delegate serve listening on http://{addr} (web UI at /, MCP at /mcp)");
    let served = delegate_server::serve::serve(orch.clone(), listener, shutdown_signal()).await;
    orch.shutdown_server().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}

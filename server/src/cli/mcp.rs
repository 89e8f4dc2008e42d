//! `delegate mcp`: MCP over stdio with the orchestrator embedded (SQLite + the process backend):
//! zero set-up beyond an API key and opencode. With `--server URL --token T` it forwards every
//! tool call to a running `delegate serve` instead. stdout carries only MCP frames.

use std::process::ExitCode;
use std::sync::Arc;

use delegate_mcp::delegator::Caller;
use delegate_mcp::{McpOptions, RemoteDelegator};
use delegate_server::settings::Settings;

use super::remote::RemoteArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  claude mcp add delegate -- delegate mcp                # embedded: runs on this machine
  claude mcp add delegate -e DELEGATE_SERVER=https://delegate.example.com \\
    -e DELEGATE_TOKEN=dlg_... -- delegate mcp            # forwards to a team server

Embedded, every run's watch_url (and its first progress line) is a link to follow it live in a
browser: http://127.0.0.1:PORT/watch/... , served by this process on loopback, opening once
within 10 minutes. DELEGATE_WATCH=off turns that off; DELEGATE_WATCH_ADDR picks the address.")]
pub struct McpArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn main(settings: Settings) -> anyhow::Result<ExitCode> {
    let embedded_settings = settings.clone();
    if settings.upstream.credential.is_none() {
        tracing::warn!(
            "no ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN: runs will fail with upstream_auth"
        );
    }
    let orch = delegate_server::app::embedded(embedded_settings).await?;
    let caller = Caller {
        user_id: orch.local_user().id.clone(),
        token_id: None,
        client: None,
        workspace_id: None,
    };
    let (embedded, watch) = super::embedded_delegator(&orch, &settings).await;
    let delegator = super::local_repositories(Arc::new(embedded), &settings, None);
    let served = delegate_mcp::serve_stdio(delegator, caller, options(&settings)).await;
    // The client hung up: nothing of ours may outlive it.
    if let Some(watch) = watch {
        watch.stop().await;
    }
    orch.shutdown().await;
    served.map_err(|e| anyhow::anyhow!("mcp: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `delegate mcp --server URL --token T`: no local store, no opencode; the server knows the caller
/// from the token.
pub async fn remote(delegator: RemoteDelegator, settings: &Settings) -> anyhow::Result<ExitCode> {
    tracing::info!(server = delegator.server(), "forwarding MCP tool calls");
    let caller = Caller {
        user_id: "remote".into(),
        token_id: None,
        client: None,
        workspace_id: None,
    };
    delegate_mcp::serve_stdio(
        super::local_repositories(Arc::new(delegator), settings, None),
        caller,
        options(settings),
    )
    .await
    .map_err(|e| anyhow::anyhow!("mcp: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// The MCP service's settings from delegate's.
fn options(settings: &Settings) -> McpOptions {
    McpOptions {
        heartbeat: settings.heartbeat,
    }
}

//! `delegate mcp`: MCP over stdio with the orchestrator embedded (SQLite + the process backend):
//! zero set-up beyond an API key and opencode. stdout carries only MCP frames.

use std::process::ExitCode;
use std::sync::Arc;

use delegate_mcp::delegator::Caller;
use delegate_server::delegation::EmbeddedDelegator;
use delegate_server::settings::Settings;

pub async fn main(settings: Settings) -> anyhow::Result<ExitCode> {
    if settings.upstream.credential.is_none() {
        tracing::warn!(
            "no ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN: runs will fail with upstream_auth"
        );
    }
    let orch = delegate_server::app::embedded(settings).await?;
    let caller = Caller {
        user_id: orch.local_user().id.clone(),
        token_id: None,
        client: None,
    };
    let served =
        delegate_mcp::serve_stdio(Arc::new(EmbeddedDelegator::new(orch.clone())), caller).await;
    // The client hung up: nothing of ours may outlive it.
    orch.shutdown().await;
    served.map_err(|e| anyhow::anyhow!("mcp: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

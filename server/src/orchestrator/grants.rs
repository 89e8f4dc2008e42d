//! Sandbox proxy tokens: issuing one for a sandbox delegate runs, and registering a sandbox it
//! does not run (with its token). Only a token's hash is stored.

use delegate_mcp::types::SandboxStatus;

use super::Result;
use crate::credentials::{self, Holder};
use crate::ids::{Origin, SandboxId, new_secret, now_ms};
use crate::settings::Secret;
use crate::store::{Sandbox, SandboxKind, Store, TokenKind, Workspace};

/// A new proxy token for a sandbox (`dsb_...`); only its hash is stored.
pub(super) async fn issue_sandbox_token(
    store: &dyn Store,
    sandbox_id: &str,
    workspace_id: &str,
    expires_at: Option<crate::store::Millis>,
) -> Result<String> {
    let holder = Holder {
        sandbox_id: Some(sandbox_id.to_string()),
        workspace_id: Some(workspace_id.to_string()),
        ..Holder::default()
    };
    let (token, record) = credentials::issue(TokenKind::Sandbox, holder, expires_at);
    store.insert_token(&record).await?;
    Ok(token)
}

/// A new proxy token for a pooled sandbox: `dsb_...`, passed to the sandbox as it starts, with no
/// record yet, so the proxy refuses it until [`grant_pooled_token`] binds it at claim.
pub(super) fn mint_pooled_token() -> Secret {
    Secret::new(new_secret(credentials::prefix(TokenKind::Sandbox)))
}

/// Makes a pooled sandbox's token (minted by [`mint_pooled_token`] when the sandbox started)
/// valid for the run that claimed it: its hashed record, bound to the sandbox and the run's
/// workspace, as [`issue_sandbox_token`] stores one. Revoked with the sandbox, as any other.
pub(super) async fn grant_pooled_token(
    store: &dyn Store,
    token: &Secret,
    sandbox_id: &str,
    workspace_id: &str,
) -> Result<()> {
    let holder = Holder {
        sandbox_id: Some(sandbox_id.to_string()),
        workspace_id: Some(workspace_id.to_string()),
        ..Holder::default()
    };
    let record = credentials::record_for(TokenKind::Sandbox, token.expose(), holder, None);
    store.insert_token(&record).await?;
    Ok(())
}

/// Registers a sandbox delegate does not run itself (a container started from
/// `compose.headless.yml`, say) and returns it with its proxy token, so it reaches the model
/// through delegate's proxy like any other: usage is recorded, the real key stays here.
/// Deleting the sandbox revokes the token.
pub async fn register_external_sandbox(
    store: &dyn Store,
    workspace: &Workspace,
    name: Option<String>,
    created_by: Option<Origin>,
    expires_at: Option<crate::store::Millis>,
) -> Result<(Sandbox, String)> {
    let now = now_ms();
    let id = SandboxId::new().into_string();
    let sandbox = Sandbox {
        id: id.clone(),
        workspace_id: workspace.id.clone(),
        name: name.unwrap_or_else(|| id.clone()),
        kind: SandboxKind::Ephemeral,
        backend: "external".into(),
        status: SandboxStatus::Running,
        status_reason: None,
        idle_timeout_s: None,
        meta: serde_json::json!({}),
        created_by: created_by.map(|o| o.to_string()),
        created_at: now,
        updated_at: now,
        base: None,
    };
    store.insert_sandbox(&sandbox).await?;
    let token = issue_sandbox_token(store, &id, &workspace.id, expires_at).await?;
    Ok((sandbox, token))
}

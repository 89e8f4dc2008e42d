//! Local sandboxes: a developer's machine joined through the tunnel. The tunnel endpoint
//! ([`crate::tunnel`]) tells the orchestrator when an agent's link comes up (with an HTTP endpoint
//! that reaches its `opencode serve` through the tunnel) and when it drops; in between the sandbox
//! is `running` and takes runs like a warm sandbox, otherwise it is `offline`. Nothing here pauses
//! it (its machine is not ours to stop), and deleting it closes the link and revokes the token.

use std::sync::Arc;
use std::time::Duration;

use delegate_mcp::types::SandboxStatus;
use tokio_util::sync::CancellationToken;

use super::{Error, Orchestrator, Result, Warm, lock};
use crate::ids::{Origin, SandboxId, now_ms};
use crate::sandbox::local::{LocalBackend, LocalLink};
use crate::sandbox::{SandboxBackend, ServeEndpoint};
use crate::store::{Sandbox, SandboxKind, StoreError, Workspace};

/// The links of this process's local sandboxes.
#[derive(Default)]
pub(super) struct Links {
    /// The links themselves, and what the machines can do: the backend of `local` sandboxes.
    pub(super) backend: Arc<LocalBackend>,
    /// Held across a link's coming or going (links and status together), so a replaced link's
    /// departure cannot mark offline a sandbox its successor just brought up.
    transitions: tokio::sync::Mutex<()>,
}

impl Orchestrator {
    /// Records a local sandbox for a newly registered agent; `offline` until its link comes up.
    pub async fn register_local(
        &self,
        ws: &Workspace,
        name: &str,
        created_by: Option<Origin>,
    ) -> Result<Sandbox> {
        let name =
            crate::names::Name::parse(name).map_err(|bad| Error::Invalid(bad.to_string()))?;
        let now = now_ms();
        let sandbox = Sandbox {
            id: SandboxId::new().into_string(),
            workspace_id: ws.id.clone(),
            name: name.into_string(),
            kind: SandboxKind::Local,
            backend: self.inner.local.backend.name().into(),
            status: SandboxStatus::Offline,
            status_reason: Some("its agent has not connected yet".into()),
            idle_timeout_s: None,
            meta: serde_json::json!({}),
            created_by: created_by.map(|o| o.to_string()),
            created_at: now,
            updated_at: now,
            base: None,
        };
        self.inner.store.insert_sandbox(&sandbox).await?;
        Ok(sandbox)
    }

    /// An agent's link is up: the sandbox is `running` and its opencode answers at `endpoint`.
    /// `generation` tells this link from later ones; `takes_repos` says whether its agent seeds
    /// and exports repositories; `revoked` is cancelled if the sandbox is deleted while the link
    /// lasts.
    pub async fn local_up(
        &self,
        sandbox_id: &SandboxId,
        endpoint: ServeEndpoint,
        generation: u64,
        takes_repos: bool,
        revoked: CancellationToken,
    ) -> Result<()> {
        let id = sandbox_id;
        let sandbox_id = id.as_str();
        let _serial = self.inner.local.transitions.lock().await;
        let sandbox = self.inner.store.sandbox(sandbox_id).await?;
        if sandbox.backend != self.inner.local.backend.name() {
            return Err(Error::Invalid(format!(
                "sandbox {sandbox_id} is not a local sandbox"
            )));
        }
        self.inner.local.backend.link_up(
            sandbox_id,
            LocalLink {
                generation,
                takes_repos,
                endpoint: endpoint.clone(),
                revoked,
            },
        );
        lock(&self.inner.warm).insert(
            sandbox_id.to_string(),
            Warm {
                backend: self.inner.local.backend.clone(),
                endpoint,
                last_session: None,
                last_active: std::time::Instant::now(),
                // Never paused for idleness: the machine is the developer's.
                idle_timeout: Duration::MAX,
            },
        );
        self.inner
            .store
            .set_sandbox_owner(sandbox_id, &self.inner.instance_id)
            .await?;
        match sandbox.status {
            // A newer link of the same agent, or another server noticed no drop yet.
            SandboxStatus::Running => Ok(()),
            SandboxStatus::Offline => {
                self.set_sandbox_status(
                    sandbox_id,
                    SandboxStatus::Offline,
                    SandboxStatus::Running,
                    None,
                )
                .await
            }
            status => {
                self.forget_local(sandbox_id, generation);
                Err(Error::NotRunning {
                    id: sandbox_id.to_string(),
                    status,
                })
            }
        }
    }

    /// The link of `generation` dropped: unless a newer link took over, the sandbox is `offline`
    /// and runs into it get a clear error.
    pub async fn local_down(&self, sandbox_id: &SandboxId, generation: u64) -> Result<()> {
        let sandbox_id = sandbox_id.as_str();
        let _serial = self.inner.local.transitions.lock().await;
        if !self.forget_local(sandbox_id, generation) {
            return Ok(());
        }
        match self
            .set_sandbox_status(
                sandbox_id,
                SandboxStatus::Running,
                SandboxStatus::Offline,
                Some("its agent is not connected"),
            )
            .await
        {
            // Deleted meanwhile, or already offline.
            Err(Error::Store(StoreError::StaleStatus { .. })) => Ok(()),
            other => other,
        }
    }

    /// Drops the in-memory link of `generation`; false when a newer one holds the sandbox.
    fn forget_local(&self, sandbox_id: &str, generation: u64) -> bool {
        if !self.inner.local.backend.link_down(sandbox_id, generation) {
            return false;
        }
        lock(&self.inner.warm).remove(sandbox_id);
        true
    }

    /// The endpoint (URL and password) of a running sandbox's opencode serve in this process.
    pub fn local_endpoint(&self, sandbox_id: &SandboxId) -> Option<ServeEndpoint> {
        self.local_endpoint_of(sandbox_id.as_str())
    }

    pub(super) fn local_endpoint_of(&self, sandbox_id: &str) -> Option<ServeEndpoint> {
        lock(&self.inner.warm)
            .get(sandbox_id)
            .map(|w| w.endpoint.clone())
    }

    /// At shutdown: every link of this process ends, so its sandboxes are `offline` until their
    /// agents reconnect (to this server once it is back, or to a peer).
    pub(super) async fn local_shutdown(&self) {
        for (id, generation) in self.inner.local.backend.linked() {
            let Ok(id) = id.parse::<SandboxId>() else {
                continue;
            };
            if let Err(e) = self.local_down(&id, generation).await {
                tracing::warn!(sandbox = %id, error = %e, "could not mark a local sandbox offline");
            }
        }
    }
}

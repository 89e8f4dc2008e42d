//! Local sandboxes: a developer's machine joined through the tunnel. The tunnel endpoint
//! ([`crate::tunnel`]) tells the orchestrator when an agent's link comes up (with an HTTP endpoint
//! that reaches its `opencode serve` through the tunnel) and when it drops; in between the sandbox
//! is `running` and takes runs like a warm sandbox, otherwise it is `offline`. Nothing here pauses
//! it (its machine is not ours to stop), and deleting it closes the link and revokes the token.

use std::time::Duration;

use delegate_mcp::types::{ChangeKind, ChangedFile, SandboxStatus};
use tokio_util::sync::CancellationToken;

use super::{Error, Orchestrator, Result, Warm, lock};
use crate::ids::{Origin, SandboxId, now_ms};
use crate::sandbox::ServeEndpoint;
use crate::store::{Sandbox, SandboxKind, StoreError, Workspace};

/// The `backend` of local sandboxes.
pub const LOCAL_BACKEND: &str = "local";

/// The links of this process's local sandboxes.
#[derive(Default)]
pub(super) struct Links {
    pub(super) map: std::sync::Mutex<std::collections::HashMap<SandboxId, LocalLink>>,
    /// Held across a link's coming or going (map and status together), so a replaced link's
    /// departure cannot mark offline a sandbox its successor just brought up.
    transitions: tokio::sync::Mutex<()>,
}

/// The link currently serving a local sandbox.
pub(super) struct LocalLink {
    generation: u64,
    /// Its agent takes runs with a repository (said so when it connected).
    takes_repos: bool,
    /// Cancelled when the sandbox is deleted: the tunnel then closes the link.
    revoked: CancellationToken,
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
            backend: LOCAL_BACKEND.into(),
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
        if sandbox.backend != LOCAL_BACKEND {
            return Err(Error::Invalid(format!(
                "sandbox {sandbox_id} is not a local sandbox"
            )));
        }
        lock(&self.inner.local.map).insert(
            id.clone(),
            LocalLink {
                generation,
                takes_repos,
                revoked,
            },
        );
        lock(&self.inner.warm).insert(
            sandbox_id.to_string(),
            Warm {
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
        let mut local = lock(&self.inner.local.map);
        if local
            .get(sandbox_id)
            .is_none_or(|l| l.generation != generation)
        {
            return false;
        }
        local.remove(sandbox_id);
        lock(&self.inner.warm).remove(sandbox_id);
        true
    }

    /// The endpoint (URL and password) of a running sandbox's opencode serve in this process.
    pub fn local_endpoint(&self, sandbox_id: &SandboxId) -> Option<ServeEndpoint> {
        self.local_endpoint_of(sandbox_id.as_str())
    }

    /// Whether the agent of a connected local sandbox takes repositories.
    pub(super) fn local_takes_repos(&self, sandbox_id: &str) -> bool {
        lock(&self.inner.local.map)
            .get(sandbox_id)
            .is_some_and(|l| l.takes_repos)
    }

    pub(super) fn local_endpoint_of(&self, sandbox_id: &str) -> Option<ServeEndpoint> {
        lock(&self.inner.warm)
            .get(sandbox_id)
            .map(|w| w.endpoint.clone())
    }

    /// At shutdown: every link of this process ends, so its sandboxes are `offline` until their
    /// agents reconnect (to this server once it is back, or to a peer).
    pub(super) async fn local_shutdown(&self) {
        let links: Vec<(SandboxId, u64)> = lock(&self.inner.local.map)
            .iter()
            .map(|(id, l)| (id.clone(), l.generation))
            .collect();
        for (id, generation) in links {
            if let Err(e) = self.local_down(&id, generation).await {
                tracing::warn!(sandbox = %id, error = %e, "could not mark a local sandbox offline");
            }
        }
    }

    /// What a run changed in a connected local sandbox, as its opencode reports it (the files are
    /// on the developer's machine): the session's diff, or else the repository's uncommitted
    /// changes; `None` for other sandboxes or when opencode does not answer.
    pub(super) async fn local_changes(
        &self,
        sandbox_id: &str,
        session: &str,
    ) -> Option<(Vec<ChangedFile>, String, bool)> {
        if !lock(&self.inner.local.map).contains_key(sandbox_id) {
            return None;
        }
        let endpoint = self.local_endpoint_of(sandbox_id)?;
        let client = crate::opencode::serve::ServeClient::new(
            &endpoint.url,
            endpoint.password.clone(),
            &endpoint.directory,
        );
        // opencode's own account of the session first; when it has none (no snapshots), the
        // repository's uncommitted changes.
        let files = match client.session_diff(session).await {
            Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => v,
            Ok(_) => match client.vcs_diff().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(sandbox = sandbox_id, error = %e, "could not ask a local opencode what changed");
                    return None;
                }
            },
            Err(e) => {
                tracing::warn!(sandbox = sandbox_id, error = %e, "could not ask a local opencode what changed");
                return None;
            }
        };
        let mut changed = Vec::new();
        let mut preview = delegate_repo::PreviewCut::new(self.inner.settings.diff_max_bytes);
        for f in files.as_array().into_iter().flatten() {
            let Some(path) = f.get("file").and_then(|v| v.as_str()) else {
                continue;
            };
            let change = match f.get("status").and_then(|v| v.as_str()) {
                Some("added") => ChangeKind::Added,
                Some("deleted") => ChangeKind::Deleted,
                _ => ChangeKind::Modified,
            };
            let count = |k: &str| f.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            changed.push(ChangedFile {
                additions: count("additions"),
                deletions: count("deletions"),
                ..ChangedFile::new(path, change)
            });
            let mut patch = f
                .get("patch")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            if !patch.is_empty() && !patch.ends_with('\n') {
                patch.push('\n');
            }
            let size = patch.len();
            preview.add(path.to_string(), patch.into_bytes(), size);
        }
        let (diff, truncated) = preview.finish();
        Some((changed, diff, truncated))
    }

    /// Closes a local sandbox's link (it is being deleted).
    pub(super) fn revoke_local(&self, sandbox_id: &str) {
        if let Some(link) = lock(&self.inner.local.map).remove(sandbox_id) {
            link.revoked.cancel();
        }
    }
}

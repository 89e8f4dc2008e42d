//! Recovery and shutdown: after a restart, this server's runs and sandboxes are reconciled with
//! what the backend still holds; at exit, runs are cancelled and sandboxes cleaned up; while
//! running, cancel requests from other servers on the same database are picked up.

use delegate_mcp::types::{RunStatus, SandboxStatus};

use super::{Error, Orchestrator, Result, lock};
use crate::ids::{RunId, SandboxId, now_ms};
use crate::store::{RunOutcome, SandboxKind, StoreError};

impl Orchestrator {
    /// After a restart: this server's runs that were active belong to no process any more and end
    /// `lost`. Its sandboxes of this backend that were up are `failed` with the reason and lose
    /// their tokens, except warm containers still running, which are adopted; what the backend
    /// holds for sandboxes that are gone or failed is removed. Other servers' runs and
    /// sandboxes on the same database are left alone (see `instance_id`). Not for embedded
    /// `delegate run`, which shares the data dir (and so the instance id) with a local server.
    pub async fn reconcile(&self) -> Result<(usize, usize)> {
        use crate::state::run_transition;
        let store = &self.inner.store;
        let active = [RunStatus::Queued, RunStatus::Starting, RunStatus::Running];
        let mut lost = 0;
        let me = &self.inner.instance_id;
        for run in store.runs_owned_with_status(me, &active).await? {
            if lock(&self.inner.live).contains_key(run.id.as_str()) {
                continue;
            }
            run_transition(run.status, RunStatus::Lost)?;
            let outcome = RunOutcome {
                error: Some(delegate_mcp::types::RunError {
                    kind: delegate_mcp::types::ErrorKind::Lost,
                    message: "the server restarted while the run was active".into(),
                }),
                ..run.outcome.clone()
            };
            match store
                .finish_run(&run.id, run.status, RunStatus::Lost, &outcome, now_ms())
                .await
            {
                Ok(()) => lost += 1,
                // It moved meanwhile: someone else owns it.
                Err(StoreError::StaleStatus { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let up = [
            SandboxStatus::Creating,
            SandboxStatus::Running,
            SandboxStatus::Pausing,
            SandboxStatus::Resuming,
            SandboxStatus::Paused,
        ];
        let held: std::collections::HashSet<String> =
            self.inner.backend.held().await?.into_iter().collect();
        let mut failed = 0;
        for sandbox in store.sandboxes_owned_with_status(me, &up).await? {
            // Another backend's (another configuration of this server's): not this one's to judge.
            let Ok(backend) = self.backend_for(&sandbox) else {
                continue;
            };
            if lock(&self.inner.warm).contains_key(&sandbox.id) {
                continue;
            }
            if backend.reconnects() && sandbox.status == SandboxStatus::Running {
                // Its link ended with the old process; the agent reconnects by itself.
                let _ = self
                    .set_sandbox_status(
                        &sandbox.id,
                        SandboxStatus::Running,
                        SandboxStatus::Offline,
                        Some("the server restarted; waiting for its agent"),
                    )
                    .await;
                continue;
            }
            let outlives = backend.outlives_process();
            let reason = match sandbox.status {
                // A paused sandbox keeps its files; a container one only has to still exist.
                SandboxStatus::Paused if !outlives || held.contains(&sandbox.id) => continue,
                SandboxStatus::Paused => "its container is gone".to_string(),
                SandboxStatus::Running if !outlives => {
                    "the server restarted and the sandbox's processes ended with it".into()
                }
                SandboxStatus::Running if sandbox.kind == SandboxKind::Warm => {
                    match backend.adopt(&sandbox.id).await {
                        Ok(endpoint) => {
                            tracing::info!(sandbox = %sandbox.id, "adopted a warm sandbox that outlived the previous server");
                            lock(&self.inner.warm).insert(
                                sandbox.id.clone(),
                                self.warm_state(&backend, &sandbox, endpoint),
                            );
                            continue;
                        }
                        Err(e) => format!(
                            "the server restarted and the sandbox could not be picked up: {e}"
                        ),
                    }
                }
                _ => "the server restarted during the sandbox's run or set-up".into(),
            };
            match self
                .set_sandbox_status(
                    &sandbox.id,
                    sandbox.status,
                    SandboxStatus::Failed,
                    Some(&reason),
                )
                .await
            {
                Ok(()) => failed += 1,
                Err(Error::Store(StoreError::StaleStatus { .. })) => continue,
                Err(e) => return Err(e),
            }
            self.revoke_sandbox_tokens(&sandbox.id).await;
        }
        // Orphans: what the backend holds for sandboxes that no longer exist, or failed.
        for id in held {
            // A pooled sandbox of this process has no row until a run claims it.
            if self.pool_holds(&id) {
                continue;
            }
            let orphan = match store.sandbox(&id).await {
                Err(StoreError::NotFound(_)) => true,
                Ok(s) => matches!(s.status, SandboxStatus::Failed | SandboxStatus::Deleted),
                Err(e) => return Err(e.into()),
            };
            if orphan {
                match self.inner.backend.destroy(&id).await {
                    Ok(()) => tracing::info!(sandbox = %id, "removed an orphaned sandbox"),
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "could not remove an orphaned sandbox");
                    }
                }
            }
        }
        Ok((lost, failed))
    }

    /// Cancels every run of this process and deletes the sandboxes they and `create_sandbox` made,
    /// waiting for their processes to end. Call before exiting.
    pub async fn shutdown(&self) {
        self.shutdown_with(true).await;
    }

    /// `delegate serve`'s shutdown: like [`Self::shutdown`], but warm sandboxes that outlive the
    /// process (containers) stay up for the next start to adopt.
    pub async fn shutdown_server(&self) {
        self.shutdown_with(!self.inner.backend.outlives_process())
            .await;
    }

    async fn shutdown_with(&self, delete_warm: bool) {
        self.inner.shutdown.cancel();
        let runs: Vec<RunId> = lock(&self.inner.live).keys().cloned().collect();
        for run_id in &runs {
            let _ = self.cancel_run(run_id).await;
        }
        for run_id in &runs {
            let _ = self.wait(run_id).await;
        }
        // Never adopted by the next start (it makes its own): destroyed with this process.
        self.empty_pool().await;
        if delete_warm {
            // Local sandboxes are their owners' machines: they go offline, never away.
            let warm: Vec<String> = lock(&self.inner.warm)
                .iter()
                .filter(|(_, w)| !w.backend.reconnects())
                .map(|(id, _)| id.clone())
                .collect();
            for id in warm {
                // The warm map's ids are the orchestrator's own, so this always parses.
                let deleted = match id.parse::<SandboxId>() {
                    Ok(sandbox_id) => self.delete_sandbox(&sandbox_id).await,
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = deleted {
                    tracing::warn!(sandbox = %id, error = %e, "could not delete sandbox at shutdown");
                }
            }
        }
        self.local_shutdown().await;
    }
}

/// Cancels this process's live runs that another process asked to cancel (recorded by
/// [`Store::request_cancel`]; one check, see [`Orchestrator::every`]): one query for all live
/// runs, none while no run is live.
pub(super) async fn watch_cancel_requests(orch: Orchestrator) {
    let inner = &orch.inner;
    let live: Vec<String> = lock(&inner.live)
        .iter()
        .filter(|(_, (cancel, _))| !cancel.is_cancelled())
        .map(|(id, _)| id.to_string())
        .collect();
    if live.is_empty() {
        return;
    }
    match inner.store.cancel_requested(&live).await {
        Ok(requested) => {
            let live = lock(&inner.live);
            for id in requested {
                if let Some((cancel, _)) = live.get(id.as_str()) {
                    tracing::info!(run = %id, "cancelling on another server's request");
                    cancel.cancel();
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not check for cancel requests"),
    }
}

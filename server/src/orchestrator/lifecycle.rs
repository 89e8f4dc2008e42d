//! The sandbox lifecycle: create, delete, pause, resume, touch, and the idle sweep that pauses
//! warm sandboxes nobody uses. Every status change goes through the state machine
//! ([`sandbox_transition`]) and a compare-and-set in the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use delegate_mcp::types::{RunStatus, SandboxStatus};

use super::grants::issue_sandbox_token;
use super::inputs::SandboxInputs;
use super::reservation::Reservation;
use super::setup::SetupEnd;
use super::{Error, Orchestrator, Result, SandboxRequest, SnapshotFile, Warm, lock};
use crate::ids::{Origin, RunId, SandboxId, new_secret, now_ms};
use crate::names::Name;
use crate::sandbox::{SandboxBackend, SandboxError, SandboxSpec, ServeEndpoint};
use crate::settings::Secret;
use crate::state::sandbox_transition;
use crate::store::{Sandbox, SandboxKind, StoreError, Workspace};

/// How often idle warm sandboxes are looked for.
pub(super) const IDLE_SWEEP: Duration = Duration::from_secs(1);

/// How long a delete waits for a pause or resume that holds the sandbox.
const HELD_WAIT: Duration = Duration::from_secs(60);

/// A sandbox row about to be written, and what its work dir starts from.
pub(super) struct NewSandbox<'a> {
    pub(super) kind: SandboxKind,
    pub(super) name: Option<String>,
    pub(super) files: BTreeMap<String, String>,
    /// The snapshot it is cloned from; it must stay on disk until the backend made the sandbox.
    pub(super) snapshot: Option<&'a SnapshotFile>,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) created_by: Option<Origin>,
    /// The egress policy asked for; the workspace's default when `None`.
    pub(super) network: Option<&'a str>,
    /// `env`, `secrets`, `setup` and `image`.
    pub(super) inputs: &'a SandboxInputs,
    /// The workspace's `max_warm_sandboxes` quota, checked as the row is written.
    pub(super) max_warm: Option<u64>,
}

/// The secrets a sandbox's environment holds (name, value): what its runs' logs redact.
pub(super) type Redactions = Arc<Vec<(String, Secret)>>;

/// A sandbox row just written, with what its backend needs to make it.
pub(super) struct Inserted {
    pub(super) sandbox: Sandbox,
    pub(super) spec: SandboxSpec,
    pub(super) redactions: Redactions,
}

impl Orchestrator {
    /// Makes a warm sandbox (opencode serve inside) and waits until it is running.
    pub async fn create_sandbox(&self, req: SandboxRequest) -> Result<Sandbox> {
        crate::sandbox::workdir::validate_files(&req.files)?;
        if req
            .idle_timeout
            .is_some_and(|t| t.is_zero() || t > Duration::from_secs(30 * 86_400))
        {
            return Err(Error::Invalid(
                "idle_timeout_seconds: between 1 and 2592000 (30 days)".into(),
            ));
        }
        let name = match req.name.as_deref().map(Name::parse).transpose() {
            Ok(name) => name.map(Name::into_string),
            Err(bad) => return Err(Error::Invalid(bad.to_string())),
        };
        let ws = self.workspace(req.workspace.as_deref()).await?;
        let max_warm = self.warm_quota(&ws.id).await?;
        let Inserted { sandbox, spec, .. } = self
            .insert_sandbox(
                &ws,
                NewSandbox {
                    kind: SandboxKind::Warm,
                    name,
                    files: req.files,
                    snapshot: req.snapshot.as_deref(),
                    idle_timeout: req.idle_timeout,
                    created_by: req.created_by,
                    network: req.network.as_deref(),
                    inputs: &req.inputs,
                    max_warm,
                },
            )
            .await?;
        let endpoint = self.start_sandbox(&sandbox, &spec).await?;
        // Cloned into the work dir: the uploaded bundle is not needed any more.
        SnapshotFile::release(req.snapshot).await;
        if let Some(script) = &req.inputs.setup {
            self.setup_warm(&sandbox.id, script).await?;
        }
        if let Some(endpoint) = endpoint {
            let idle_timeout = req.idle_timeout.unwrap_or(self.inner.settings.idle_timeout);
            lock(&self.inner.warm).insert(
                sandbox.id.clone(),
                Warm {
                    backend: self.inner.backend.clone(),
                    endpoint,
                    last_session: None,
                    last_active: std::time::Instant::now(),
                    idle_timeout,
                },
            );
        }
        Ok(self.inner.store.sandbox(&sandbox.id).await?)
    }

    /// Runs a warm sandbox's setup once, within the server's default run timeout; a failure
    /// fails the sandbox (its reason carries the output's tail) and frees what it held.
    async fn setup_warm(&self, sandbox_id: &str, script: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.settings.default_timeout;
        let cancel = self.inner.shutdown.child_token();
        let end = self
            .run_setup(sandbox_id, script, deadline, &cancel, None)
            .await;
        let why = match end {
            Ok(SetupEnd::Done) => return Ok(()),
            Ok(SetupEnd::Failed(why)) => why,
            Ok(SetupEnd::TimedOut) => format!(
                "setup: the script did not finish within {}s",
                self.inner.settings.default_timeout.as_secs()
            ),
            Ok(SetupEnd::Cancelled) => "setup: cancelled (the server is shutting down)".into(),
            Err(e) => format!("setup: {e}"),
        };
        self.set_sandbox_status(
            sandbox_id,
            SandboxStatus::Running,
            SandboxStatus::Failed,
            Some(&why),
        )
        .await?;
        self.drop_egress(sandbox_id);
        self.revoke_sandbox_tokens(sandbox_id).await;
        if let Err(e) = self.inner.backend.destroy(sandbox_id).await {
            tracing::warn!(sandbox = sandbox_id, error = %e, "could not remove a sandbox whose setup failed");
        }
        Err(Error::Conflict(why))
    }

    /// Someone is looking at the sandbox (a browser through the gateway): its idle time starts
    /// over, so a sandbox in use is not paused under its viewer.
    pub fn touch_sandbox(&self, sandbox_id: &SandboxId) {
        if let Some(w) = lock(&self.inner.warm).get_mut(sandbox_id.as_str()) {
            w.last_active = std::time::Instant::now();
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn insert_sandbox(
        &self,
        ws: &Workspace,
        new: NewSandbox<'_>,
    ) -> Result<Inserted> {
        let NewSandbox {
            kind,
            name,
            files,
            snapshot,
            idle_timeout,
            created_by,
            network,
            inputs,
            max_warm,
        } = new;
        // Checked before the sandbox exists: bad input leaves nothing behind.
        if inputs.setup.is_some() && !self.inner.backend.runs_setup() {
            return Err(Error::Invalid(format!(
                "setup: the {} backend cannot run a setup script yet",
                self.inner.backend.name()
            )));
        }
        let resolved = self.resolve_inputs(ws, inputs).await?;
        let policy = self.choose_policy(ws, network).await?;
        let now = now_ms();
        let id = SandboxId::new().into_string();
        let sandbox = Sandbox {
            id: id.clone(),
            workspace_id: ws.id.clone(),
            name: name.unwrap_or_else(|| id.clone()),
            kind,
            backend: self.inner.backend.name().to_string(),
            status: SandboxStatus::Creating,
            status_reason: None,
            idle_timeout_s: idle_timeout.map(|d| d.as_secs() as i64),
            // Names only: values of env may be long, of secrets never stored here.
            meta: serde_json::json!({
                "network": policy.name,
                "env": inputs.env.keys().collect::<Vec<_>>(),
                "secrets": inputs.secrets,
                "image": inputs.image,
                "setup": inputs.setup.is_some(),
            }),
            created_by: created_by.map(|o| o.to_string()),
            created_at: now,
            updated_at: now,
            base: snapshot.map(|s| s.base.clone()),
        };
        match max_warm {
            // Counted and written in one transaction: creates racing on any server cannot pass it.
            Some(max) => {
                if let Some(warm) = self.inner.store.insert_warm_sandbox(&sandbox, max).await? {
                    return Err(super::quotas::warm_quota_full(warm, max));
                }
            }
            None => self.inner.store.insert_sandbox(&sandbox).await?,
        }
        self.inner
            .store
            .set_sandbox_owner(&sandbox.id, &self.inner.instance_id)
            .await?;
        let token = issue_sandbox_token(self.inner.store.as_ref(), &id, &ws.id, None).await?;
        let egress = self
            .egress_for(&id, policy)
            .map(|e| e as Arc<dyn crate::sandbox::EgressService>);
        let spec = SandboxSpec {
            id,
            workspace: Some(ws.id.clone()),
            kind,
            files,
            repo: snapshot.map(|s| s.path.clone()),
            proxy_token: Secret::new(token),
            serve_password: (kind == SandboxKind::Warm).then(|| Secret::new(new_secret(""))),
            egress,
            env: resolved.env,
            image: inputs.image.clone(),
        };
        Ok(Inserted {
            sandbox,
            spec,
            redactions: Arc::new(resolved.secrets),
        })
    }

    /// Asks the backend for the sandbox; on failure the sandbox is `failed` with the reason.
    pub(super) async fn start_sandbox(
        &self,
        sandbox: &Sandbox,
        spec: &SandboxSpec,
    ) -> Result<Option<ServeEndpoint>> {
        let created = self.inner.backend.create(spec).await;
        let failed = created.is_err();
        if failed {
            self.drop_egress(&sandbox.id);
        }
        let settled = self
            .settle(
                &sandbox.id,
                SandboxStatus::Creating,
                SandboxStatus::Running,
                "create",
                created,
            )
            .await;
        if failed {
            self.revoke_sandbox_tokens(&sandbox.id).await;
        }
        settled
    }

    /// Ends a transitional status (`creating`, `deleting`, `pausing`, `resuming`) after the
    /// backend did its part: `done` when it worked, else `failed` with what went wrong (the
    /// sandbox keeps its reason).
    pub(super) async fn settle<T>(
        &self,
        id: &str,
        from: SandboxStatus,
        done: SandboxStatus,
        what: &str,
        outcome: std::result::Result<T, SandboxError>,
    ) -> Result<T> {
        match outcome {
            Ok(v) => {
                self.set_sandbox_status(id, from, done, None).await?;
                Ok(v)
            }
            Err(e) => {
                let reason = format!("{what} failed: {e}");
                self.set_sandbox_status(id, from, SandboxStatus::Failed, Some(&reason))
                    .await?;
                Err(e.into())
            }
        }
    }

    pub(super) async fn set_sandbox_status(
        &self,
        id: &str,
        from: SandboxStatus,
        to: SandboxStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        sandbox_transition(from, to)?;
        self.inner
            .store
            .set_sandbox_status(id, from, to, reason, now_ms())
            .await?;
        Ok(())
    }

    pub(super) async fn revoke_sandbox_tokens(&self, sandbox_id: &str) {
        if let Err(e) = self.inner.proxy.revoke_sandbox(sandbox_id).await {
            tracing::warn!(sandbox = sandbox_id, error = %e, "could not revoke sandbox tokens");
        }
    }

    /// Deletes a sandbox: stops its processes, removes its files, revokes its token. A running
    /// run in it is cancelled first.
    pub async fn delete_sandbox(&self, sandbox_id: &SandboxId) -> Result<()> {
        self.delete_sandbox_row(sandbox_id, false).await
    }

    /// [`Self::delete_sandbox`]; `freed`: the backend has destroyed it already (an ephemeral
    /// run's driver does, before it records the result), so it is not asked again.
    pub(super) async fn delete_sandbox_row(
        &self,
        sandbox_id: &SandboxId,
        freed: bool,
    ) -> Result<()> {
        let sandbox_id = sandbox_id.as_str();
        let sandbox = self.inner.store.sandbox(sandbox_id).await?;
        if sandbox.status == SandboxStatus::Deleted {
            return Ok(());
        }
        let backend = self.backend_for(&sandbox)?;
        self.refuse_if_elsewhere(&sandbox, backend.as_ref(), "delete")
            .await?;
        if backend.any_replica()
            && let Some(run_id) = self.run_elsewhere(sandbox_id).await?
        {
            // Its server stops it (a cancel request in the store) before the sandbox goes.
            self.cancel_run(&run_id).await?;
            if !self.wait(&run_id).await?.status.is_terminal() {
                return Err(Error::Busy(sandbox_id.to_string()));
            }
        }
        match self.inner.reservations.holder(sandbox_id) {
            Some(Some(run_id)) => {
                self.cancel_run(&run_id).await?;
                let _ = self.wait(&run_id).await;
            }
            // A pause or resume (or a run not yet recorded) holds it: let it finish first.
            Some(None) if !self.inner.reservations.free(sandbox_id, HELD_WAIT).await => {
                return Err(Error::Busy(sandbox_id.to_string()));
            }
            Some(None) | None => {}
        }
        let sandbox = self.inner.store.sandbox(&sandbox.id).await?;
        match sandbox.status {
            SandboxStatus::Deleted => return Ok(()),
            SandboxStatus::Deleting => {}
            from => {
                self.set_sandbox_status(sandbox_id, from, SandboxStatus::Deleting, None)
                    .await?;
            }
        }
        self.revoke_sandbox_tokens(sandbox_id).await;
        lock(&self.inner.warm).remove(sandbox_id);
        self.drop_egress(sandbox_id);
        let destroyed = if freed {
            Ok(())
        } else {
            backend.destroy(sandbox_id).await
        };
        self.settle(
            sandbox_id,
            SandboxStatus::Deleting,
            SandboxStatus::Deleted,
            "delete",
            destroyed,
        )
        .await
    }

    /// A sandbox of a backend that cannot serve it from any server (a process sandbox lives in
    /// the server that made it; a local one's link ends in one server) is operated through its
    /// holder only: another server sharing the database can neither stop its processes nor
    /// reach its agent, so it refuses, naming the holder, rather than pretend. An offline local
    /// sandbox has no holder.
    pub(super) async fn refuse_if_elsewhere(
        &self,
        sandbox: &Sandbox,
        backend: &dyn SandboxBackend,
        what: &str,
    ) -> Result<()> {
        if backend.any_replica()
            || matches!(
                sandbox.status,
                SandboxStatus::Deleted | SandboxStatus::Offline
            )
        {
            return Ok(());
        }
        match self.inner.store.sandbox_owner(&sandbox.id).await? {
            Some(owner) if owner != self.inner.instance_id => Err(Error::Conflict(format!(
                "sandbox {} is a {} sandbox held by server {owner}, not by this one ({}); \
                 {what} it through that server",
                sandbox.id, sandbox.backend, self.inner.instance_id
            ))),
            _ => Ok(()),
        }
    }

    /// A run active in `sandbox_id` on another server (a backend every server reaches): the
    /// reservation that keeps one operation at a time per sandbox is per process, so the store
    /// is asked.
    pub(super) async fn run_elsewhere(&self, sandbox_id: &str) -> Result<Option<RunId>> {
        let active = [RunStatus::Queued, RunStatus::Starting, RunStatus::Running];
        let runs = self.inner.store.runs_with_status(&active).await?;
        let live = lock(&self.inner.live);
        Ok(runs
            .into_iter()
            .filter(|r| r.sandbox_id == sandbox_id && !live.contains_key(r.id.as_str()))
            .find_map(|r| r.id.parse::<RunId>().ok()))
    }

    /// Forgets a warm sandbox another server took over (or paused, or deleted): its endpoint, its
    /// egress proxy and what the backend keeps for it in this process.
    pub(super) fn release_stale(&self, sandbox_id: &str) {
        if let Some(w) = lock(&self.inner.warm).remove(sandbox_id) {
            w.backend.release(sandbox_id);
            self.drop_egress(sandbox_id);
        }
    }

    /// Picks up a running warm sandbox another server held, on a backend whose sandboxes every
    /// server can reach (as restart recovery does): this server serves it from now on.
    pub(super) async fn adopt_warm(
        &self,
        sandbox: &Sandbox,
        backend: &Arc<dyn SandboxBackend>,
    ) -> Result<Warm> {
        let endpoint = backend.adopt(&sandbox.id).await?;
        let warm = self.warm_state(backend, sandbox, endpoint);
        lock(&self.inner.warm).insert(sandbox.id.clone(), warm.clone());
        self.inner
            .store
            .set_sandbox_owner(&sandbox.id, &self.inner.instance_id)
            .await?;
        tracing::info!(sandbox = %sandbox.id, "adopted a warm sandbox another server held");
        Ok(warm)
    }

    /// Stops a warm sandbox's processes, keeping its files; the next run resumes it. Refused
    /// while a run is in it.
    pub async fn pause_sandbox(&self, sandbox_id: &SandboxId) -> Result<()> {
        let sandbox_id = sandbox_id.as_str();
        let sandbox = self.inner.store.sandbox(sandbox_id).await?;
        let backend = self.backend_for(&sandbox)?;
        if !backend.pauses() {
            return Err(Error::Invalid(format!(
                "a {} sandbox runs on its owner's machine and cannot be paused",
                sandbox.backend
            )));
        }
        self.refuse_if_elsewhere(&sandbox, backend.as_ref(), "pause")
            .await?;
        // Never paused under a run, whichever server drives it.
        if backend.any_replica() && self.run_elsewhere(sandbox_id).await?.is_some() {
            return Err(Error::Busy(sandbox_id.to_string()));
        }
        let reservation = self.inner.reservations.reserve(sandbox_id)?;
        self.pause_reserved(&reservation).await
    }

    /// Starts a paused warm sandbox again (its files kept). Refused while another operation
    /// holds the sandbox; a running sandbox is left as it is.
    pub async fn resume_sandbox(&self, sandbox_id: &SandboxId) -> Result<()> {
        let sandbox_id = sandbox_id.as_str();
        let reservation = self.inner.reservations.reserve(sandbox_id)?;
        let sandbox = self.inner.store.sandbox(sandbox_id).await?;
        match sandbox.status {
            SandboxStatus::Running => Ok(()),
            SandboxStatus::Paused => {
                let backend = self.backend_for(&sandbox)?;
                self.refuse_if_elsewhere(&sandbox, backend.as_ref(), "resume")
                    .await?;
                self.resume_reserved(&sandbox, &reservation).await?;
                Ok(())
            }
            status => Err(Error::NotRunning {
                id: sandbox.id.clone(),
                status,
            }),
        }
    }

    /// Pauses the sandbox the caller holds.
    pub(super) async fn pause_reserved(&self, reservation: &Reservation) -> Result<()> {
        let sandbox_id = reservation.sandbox_id();
        let backend = match lock(&self.inner.warm).get(sandbox_id) {
            Some(w) => w.backend.clone(),
            None => self.inner.backend.clone(),
        };
        match self
            .set_sandbox_status(
                sandbox_id,
                SandboxStatus::Running,
                SandboxStatus::Pausing,
                None,
            )
            .await
        {
            Ok(()) => {}
            Err(e @ Error::Store(StoreError::StaleStatus { .. })) => {
                // Another server paused or deleted it meanwhile: what this one kept is stale.
                self.release_stale(sandbox_id);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        // Its token stays (a resume needs it), but not the proxy's cached word that it runs.
        self.inner.proxy.forget_sandbox(sandbox_id);
        let paused = backend.pause(sandbox_id).await;
        if paused.is_ok()
            && let Some(mut w) = lock(&self.inner.warm).remove(sandbox_id)
        {
            w.last_session = None;
        }
        self.settle(
            sandbox_id,
            SandboxStatus::Pausing,
            SandboxStatus::Paused,
            "pause",
            paused,
        )
        .await
    }

    /// Starts a paused sandbox again (its files kept), for a sandbox the caller holds.
    pub(super) async fn resume_reserved(
        &self,
        sandbox: &Sandbox,
        _held: &Reservation,
    ) -> Result<Warm> {
        self.set_sandbox_status(
            &sandbox.id,
            SandboxStatus::Paused,
            SandboxStatus::Resuming,
            None,
        )
        .await?;
        let backend = self.backend_for(sandbox)?;
        let resumed = backend
            .resume(&sandbox.id)
            .await
            .map(|endpoint| self.warm_state(&backend, sandbox, endpoint));
        if let Ok(warm) = &resumed {
            lock(&self.inner.warm).insert(sandbox.id.clone(), warm.clone());
            if backend.any_replica() {
                // Paused through any server, resumed here: this one serves it now.
                self.inner
                    .store
                    .set_sandbox_owner(&sandbox.id, &self.inner.instance_id)
                    .await?;
            }
        }
        self.settle(
            &sandbox.id,
            SandboxStatus::Resuming,
            SandboxStatus::Running,
            "resume",
            resumed,
        )
        .await
    }

    /// A warm sandbox's live facts as it (re)starts: idle from now on.
    pub(super) fn warm_state(
        &self,
        backend: &Arc<dyn SandboxBackend>,
        sandbox: &Sandbox,
        endpoint: ServeEndpoint,
    ) -> Warm {
        Warm {
            backend: backend.clone(),
            endpoint,
            last_session: None,
            last_active: std::time::Instant::now(),
            idle_timeout: sandbox
                .idle_timeout_s
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(self.inner.settings.idle_timeout),
        }
    }

    /// Sandboxes of a workspace, newest first.
    pub async fn list_sandboxes(&self, workspace: Option<&str>) -> Result<Vec<Sandbox>> {
        let ws = self.workspace(workspace).await?;
        Ok(self.inner.store.list_sandboxes(&ws.id).await?)
    }
}

/// Pauses warm sandboxes that had no run for their idle timeout (one sweep; see
/// [`Orchestrator::every`]). A sandbox with a run going is reserved, so it is never paused under
/// a run.
pub(super) async fn sweep_idle(orch: Orchestrator) {
    let idle: Vec<(String, bool)> = lock(&orch.inner.warm)
        .iter()
        .filter(|(_, w)| w.last_active.elapsed() >= w.idle_timeout)
        .map(|(id, w)| (id.clone(), w.backend.any_replica()))
        .collect();
    for (id, any_replica) in idle {
        // Another server may have picked it up since (and run in it): then its idle clock is
        // that server's, and what this one kept is stale.
        if any_replica
            && orch
                .inner
                .store
                .sandbox_owner(&id)
                .await
                .is_ok_and(|owner| owner.as_deref() != Some(orch.inner.instance_id.as_str()))
        {
            orch.release_stale(&id);
            continue;
        }
        let Ok(reservation) = orch.inner.reservations.reserve(&id) else {
            continue;
        };
        match orch.pause_reserved(&reservation).await {
            Ok(()) => tracing::info!(sandbox = %id, "paused after its idle timeout"),
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "could not pause an idle sandbox");
            }
        }
    }
}

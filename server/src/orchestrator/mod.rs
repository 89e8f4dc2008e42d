//! The orchestrator core: makes sandboxes, runs delegated tasks in them, keeps each run's event
//! log, and answers for runs and sandboxes. The CLI, the MCP tools and the REST API are thin
//! layers over [`Orchestrator`].

mod local;
mod log;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use delegate_mcp::types::{Event, RunResult, RunStatus, SandboxStatus};
use futures::Stream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use local::LOCAL_BACKEND;
pub use log::{LiveLog, follow};

use crate::ids::{hash_secret, is_id, new_id, new_secret, now_ms};
use crate::proxy::{ActiveRuns, Proxy};
use crate::sandbox::{SandboxBackend, SandboxError, SandboxSpec, ServeEndpoint};
use crate::settings::{Secret, Settings};
use crate::state::{IllegalTransition, sandbox_transition};
use crate::store::{
    Run, RunOutcome, Sandbox, SandboxKind, Store, StoreError, TokenKind, TokenRecord, User,
    Workspace,
};

/// The largest task delegate accepts.
pub const MAX_TASK_BYTES: usize = 1 << 20;
/// The longest timeout a run may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The caller sent something unusable; nothing was written.
    #[error("{0}")]
    BadInput(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The sandbox already has a run going.
    #[error("sandbox {0} is busy with another run; wait for it or use another sandbox")]
    Busy(String),
    #[error("sandbox {id} is {status}, not running")]
    NotRunning { id: String, status: SandboxStatus },
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Sandbox(SandboxError),
    #[error(transparent)]
    Transition(#[from] IllegalTransition),
    #[error("storage: {0}")]
    Store(StoreError),
}

impl From<SandboxError> for OrchestratorError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::BadInput(msg) => OrchestratorError::BadInput(msg),
            other => OrchestratorError::Sandbox(other),
        }
    }
}

impl From<StoreError> for OrchestratorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => OrchestratorError::NotFound(what.to_string()),
            other => OrchestratorError::Store(other),
        }
    }
}

pub type Result<T, E = OrchestratorError> = std::result::Result<T, E>;

/// A request to delegate one task (the `run_in_sandbox` input).
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub task: String,
    /// Reuse this warm sandbox; `None` makes a fresh ephemeral one, destroyed after the run.
    pub sandbox_id: Option<String>,
    pub workspace: Option<String>,
    pub files: BTreeMap<String, String>,
    pub model: Option<String>,
    pub agent: Option<String>,
    pub timeout: Option<Duration>,
    pub continue_session: bool,
    /// Who delegated it (`cli`, `mcp:<client>`, `user:<id>`, `token:<id>`).
    pub created_by: Option<String>,
}

/// A request for a warm sandbox (the `create_sandbox` input).
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    pub workspace: Option<String>,
    pub name: Option<String>,
    pub files: BTreeMap<String, String>,
    pub idle_timeout: Option<Duration>,
    pub created_by: Option<String>,
}

/// A warm sandbox's live facts, kept in memory while its opencode serve runs.
#[derive(Clone)]
struct Warm {
    endpoint: ServeEndpoint,
    /// The opencode session of the previous run, for `continue_session`.
    last_session: Option<String>,
    /// When a run last started or ended here: idle time counts from it.
    last_active: std::time::Instant,
    /// Paused after this long without activity.
    idle_timeout: Duration,
}

/// How often idle warm sandboxes are looked for.
const IDLE_SWEEP: Duration = Duration::from_secs(1);
/// How often the store is asked about runs executing in another process (their status, cancel
/// requests for this process's runs): a cancel through another server lands within about this.
const REMOTE_POLL: Duration = Duration::from_millis(500);
/// How long [`Orchestrator::wait`] follows a run that executes in another process.
pub const REMOTE_WAIT: Duration = Duration::from_secs(30);

/// Shared handle to the orchestrator; cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    backend: Arc<dyn SandboxBackend>,
    proxy: Proxy,
    settings: Arc<Settings>,
    active_runs: ActiveRuns,
    /// Runs executing in this process: their cancel switch and live log.
    live: Mutex<HashMap<String, (CancellationToken, LiveLog)>>,
    /// Sandboxes that have a run right now (one at a time per sandbox).
    busy: Mutex<HashMap<String, String>>,
    warm: Mutex<HashMap<String, Warm>>,
    /// Local sandboxes whose agent is connected to this process.
    local: local::Links,
    slots: Arc<Semaphore>,
    default_workspace: Workspace,
    /// The user embedded mode acts as (stdio MCP, `delegate run`).
    local_user: User,
    /// This server's identity among servers sharing a database: it owns the runs it executes and
    /// the process sandboxes it holds. Kept in the data dir, so a restart knows its own.
    instance_id: String,
    shutdown: CancellationToken,
}

impl Orchestrator {
    /// Wires the parts together and makes sure the local user and the `default` workspace exist.
    pub async fn new(
        settings: Arc<Settings>,
        store: Arc<dyn Store>,
        backend: Arc<dyn SandboxBackend>,
        proxy: Proxy,
        active_runs: ActiveRuns,
    ) -> Result<Orchestrator> {
        let (local_user, default_workspace) = ensure_local_user(store.as_ref()).await?;
        let instance_id = instance_id(&settings.data_dir).await?;
        let orch = Orchestrator {
            inner: Arc::new(Inner {
                store,
                backend,
                proxy,
                active_runs,
                live: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashMap::new()),
                warm: Mutex::new(HashMap::new()),
                local: local::Links::default(),
                slots: Arc::new(Semaphore::new(settings.max_concurrent_runs.max(1))),
                settings,
                default_workspace,
                local_user,
                instance_id,
                shutdown: CancellationToken::new(),
            }),
        };
        tokio::spawn(sweep_idle(Arc::downgrade(&orch.inner)));
        tokio::spawn(watch_cancel_requests(Arc::downgrade(&orch.inner)));
        Ok(orch)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The user embedded mode acts as.
    pub fn local_user(&self) -> &User {
        &self.inner.local_user
    }

    /// The proxy sandboxes of this orchestrator talk to (mounted at `/v1` by `delegate serve`).
    pub fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    async fn workspace(&self, slug: Option<&str>) -> Result<Workspace> {
        match slug {
            None => Ok(self.inner.default_workspace.clone()),
            Some(s) if s == self.inner.default_workspace.slug => {
                Ok(self.inner.default_workspace.clone())
            }
            Some(s) => match self.inner.store.workspace_by_slug(s).await {
                Ok(ws) => Ok(ws),
                Err(StoreError::NotFound(_)) => self
                    .inner
                    .store
                    .workspace_by_id(s)
                    .await
                    .map_err(|_| OrchestratorError::NotFound(format!("workspace {s:?}"))),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Makes a warm sandbox (opencode serve inside) and waits until it is running.
    pub async fn create_sandbox(&self, req: SandboxRequest) -> Result<Sandbox> {
        crate::sandbox::workdir::validate_files(&req.files)?;
        if req
            .idle_timeout
            .is_some_and(|t| t.is_zero() || t > Duration::from_secs(30 * 86_400))
        {
            return Err(OrchestratorError::BadInput(
                "idle_timeout_seconds: between 1 and 2592000 (30 days)".into(),
            ));
        }
        if let Some(name) = &req.name
            && (name.len() > 200 || name.chars().any(char::is_control))
        {
            return Err(OrchestratorError::BadInput(
                "name: at most 200 characters, no control characters".into(),
            ));
        }
        let ws = self.workspace(req.workspace.as_deref()).await?;
        let (sandbox, spec) = self
            .insert_sandbox(
                &ws,
                SandboxKind::Warm,
                req.name,
                req.files,
                req.idle_timeout,
                req.created_by,
            )
            .await?;
        let endpoint = self.start_sandbox(&sandbox, &spec).await?;
        if let Some(endpoint) = endpoint {
            let idle_timeout = req.idle_timeout.unwrap_or(self.inner.settings.idle_timeout);
            lock(&self.inner.warm).insert(
                sandbox.id.clone(),
                Warm {
                    endpoint,
                    last_session: None,
                    last_active: std::time::Instant::now(),
                    idle_timeout,
                },
            );
        }
        Ok(self.inner.store.sandbox(&sandbox.id).await?)
    }

    /// The loopback URL of a warm sandbox's opencode serve, while it runs in this process.
    pub fn opencode_url(&self, sandbox_id: &str) -> Option<String> {
        lock(&self.inner.warm)
            .get(sandbox_id)
            .map(|w| w.endpoint.url.clone())
    }

    /// A warm sandbox's opencode serve (URL, password, directory) while it runs in this process:
    /// what the browser gateway forwards to.
    pub fn serve_endpoint(&self, sandbox_id: &str) -> Option<ServeEndpoint> {
        lock(&self.inner.warm)
            .get(sandbox_id)
            .map(|w| w.endpoint.clone())
    }

    /// Someone is looking at the sandbox (a browser through the gateway): its idle time starts
    /// over, so a sandbox in use is not paused under its viewer.
    pub fn touch_sandbox(&self, sandbox_id: &str) {
        if let Some(w) = lock(&self.inner.warm).get_mut(sandbox_id) {
            w.last_active = std::time::Instant::now();
        }
    }

    async fn insert_sandbox(
        &self,
        ws: &Workspace,
        kind: SandboxKind,
        name: Option<String>,
        files: BTreeMap<String, String>,
        idle_timeout: Option<Duration>,
        created_by: Option<String>,
    ) -> Result<(Sandbox, SandboxSpec)> {
        let now = now_ms();
        let id = new_id("sbx");
        let sandbox = Sandbox {
            id: id.clone(),
            workspace_id: ws.id.clone(),
            name: name.unwrap_or_else(|| id.clone()),
            kind,
            backend: self.inner.backend.name().to_string(),
            status: SandboxStatus::Creating,
            status_reason: None,
            idle_timeout_s: idle_timeout.map(|d| d.as_secs() as i64),
            meta: serde_json::json!({}),
            created_by,
            created_at: now,
            updated_at: now,
        };
        self.inner.store.insert_sandbox(&sandbox).await?;
        self.inner
            .store
            .set_sandbox_owner(&sandbox.id, &self.inner.instance_id)
            .await?;
        let token = issue_sandbox_token(self.inner.store.as_ref(), &id, &ws.id, None).await?;
        let spec = SandboxSpec {
            id,
            kind,
            files,
            proxy_token: Secret::new(token),
            serve_password: (kind == SandboxKind::Warm).then(|| Secret::new(new_secret(""))),
        };
        Ok((sandbox, spec))
    }

    /// Asks the backend for the sandbox; on failure the sandbox is `failed` with the reason.
    async fn start_sandbox(
        &self,
        sandbox: &Sandbox,
        spec: &SandboxSpec,
    ) -> Result<Option<ServeEndpoint>> {
        let created = self.inner.backend.create(spec).await;
        let failed = created.is_err();
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
    async fn settle<T>(
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

    async fn set_sandbox_status(
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

    async fn revoke_sandbox_tokens(&self, sandbox_id: &str) {
        if let Err(e) = self
            .inner
            .store
            .revoke_sandbox_tokens(sandbox_id, now_ms())
            .await
        {
            tracing::warn!(sandbox = sandbox_id, error = %e, "could not revoke sandbox tokens");
        }
        self.inner.proxy.forget_sandbox(sandbox_id);
    }

    /// Deletes a sandbox: stops its processes, removes its files, revokes its token. A running
    /// run in it is cancelled first.
    pub async fn delete_sandbox(&self, sandbox_id: &str) -> Result<()> {
        if !is_id("sbx", sandbox_id) {
            return Err(OrchestratorError::NotFound(format!(
                "sandbox {sandbox_id:?}"
            )));
        }
        let sandbox = self.inner.store.sandbox(sandbox_id).await?;
        let running_run = lock(&self.inner.busy).get(sandbox_id).cloned();
        if let Some(run_id) = running_run {
            self.cancel_run(&run_id).await?;
            let _ = self.wait(&run_id).await;
        }
        let sandbox = self.inner.store.sandbox(&sandbox.id).await?;
        match sandbox.status {
            SandboxStatus::Deleted => return Ok(()),
            SandboxStatus::Deleting => {}
            from => {
                self.set_sandbox_status(sandbox_id, from, SandboxStatus::Deleting, None)
                    .await?
            }
        }
        self.revoke_sandbox_tokens(sandbox_id).await;
        lock(&self.inner.warm).remove(sandbox_id);
        let destroyed = if sandbox.backend == LOCAL_BACKEND {
            // Its files are the developer's: only the link goes.
            self.revoke_local(sandbox_id);
            Ok(())
        } else {
            self.inner.backend.destroy(sandbox_id).await
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

    /// Stops a warm sandbox's processes, keeping its files; the next run resumes it. Refused
    /// while a run is in it.
    pub async fn pause_sandbox(&self, sandbox_id: &str) -> Result<()> {
        if is_id("sbx", sandbox_id)
            && self
                .inner
                .store
                .sandbox(sandbox_id)
                .await
                .is_ok_and(|s| s.backend == LOCAL_BACKEND)
        {
            return Err(OrchestratorError::BadInput(
                "a local sandbox runs on its owner's machine and cannot be paused".into(),
            ));
        }
        reserve(&self.inner, sandbox_id)?;
        let paused = self.pause_reserved(sandbox_id).await;
        lock(&self.inner.busy).remove(sandbox_id);
        paused
    }

    /// Starts a paused warm sandbox again (its files kept). Refused while another operation
    /// holds the sandbox; a running sandbox is left as it is.
    pub async fn resume_sandbox(&self, sandbox_id: &str) -> Result<()> {
        if !is_id("sbx", sandbox_id) {
            return Err(OrchestratorError::NotFound(format!(
                "sandbox {sandbox_id:?}"
            )));
        }
        reserve(&self.inner, sandbox_id)?;
        let resumed = async {
            let sandbox = self.inner.store.sandbox(sandbox_id).await?;
            match sandbox.status {
                SandboxStatus::Running => Ok(()),
                SandboxStatus::Paused => self.resume_reserved(&sandbox).await.map(|_| ()),
                status => Err(OrchestratorError::NotRunning {
                    id: sandbox.id.clone(),
                    status,
                }),
            }
        }
        .await;
        lock(&self.inner.busy).remove(sandbox_id);
        resumed
    }

    /// How many runs execute in this process right now.
    pub fn live_run_count(&self) -> usize {
        lock(&self.inner.live).len()
    }

    /// Pauses a sandbox the caller has reserved in `busy`.
    async fn pause_reserved(&self, sandbox_id: &str) -> Result<()> {
        self.set_sandbox_status(
            sandbox_id,
            SandboxStatus::Running,
            SandboxStatus::Pausing,
            None,
        )
        .await?;
        let paused = self.inner.backend.pause(sandbox_id).await;
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

    /// Starts a paused sandbox again (its files kept), for a sandbox the caller has reserved.
    async fn resume_reserved(&self, sandbox: &Sandbox) -> Result<Warm> {
        self.set_sandbox_status(
            &sandbox.id,
            SandboxStatus::Paused,
            SandboxStatus::Resuming,
            None,
        )
        .await?;
        let resumed = self
            .inner
            .backend
            .resume(&sandbox.id)
            .await
            .map(|endpoint| self.warm_state(sandbox, endpoint));
        if let Ok(warm) = &resumed {
            lock(&self.inner.warm).insert(sandbox.id.clone(), warm.clone());
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
    fn warm_state(&self, sandbox: &Sandbox, endpoint: ServeEndpoint) -> Warm {
        Warm {
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

    /// Starts a run and returns its id and sandbox id at once; follow it with [`Self::events`] or
    /// [`Self::wait`]. Input is checked before anything is written.
    pub async fn start_run(&self, req: RunRequest) -> Result<(String, String)> {
        run::start(self.clone(), req).await
    }

    /// Cancels a run; it ends `cancelled` once its processes are gone. A run executing in another
    /// process (several servers on one database) gets a request in the store, which that process
    /// acts on within about 0.5 s; follow it with [`Self::wait`].
    pub async fn cancel_run(&self, run_id: &str) -> Result<()> {
        let token = lock(&self.inner.live).get(run_id).map(|(t, _)| t.clone());
        match token {
            Some(t) => {
                t.cancel();
                Ok(())
            }
            None => {
                let run = self.run(run_id).await?;
                if !run.status.is_terminal() {
                    // Another process executes it (several servers on one database), or it is
                    // about to go live here: the owner's `watch_cancel_requests` picks this up.
                    self.inner.store.request_cancel(run_id, now_ms()).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn run(&self, run_id: &str) -> Result<Run> {
        if !is_id("run", run_id) {
            return Err(OrchestratorError::NotFound(format!("run {run_id:?}")));
        }
        Ok(self.inner.store.run(run_id).await?)
    }

    /// The events of a run after `after`, then live ones until it ends.
    pub fn events(
        &self,
        run_id: &str,
        after: u64,
    ) -> impl Stream<Item = Result<Event, StoreError>> + Send + use<> {
        let live = lock(&self.inner.live).get(run_id).map(|(_, l)| l.clone());
        follow(self.inner.store.clone(), run_id.to_string(), after, live)
    }

    /// Waits for a run to end and returns its result. A run executing in another process is
    /// followed through the store for at most [`REMOTE_WAIT`]; then its result as it stands.
    pub async fn wait(&self, run_id: &str) -> Result<RunResult> {
        let live = lock(&self.inner.live).get(run_id).map(|(_, l)| l.clone());
        if let Some(mut live) = live {
            let _ = live.wait_done().await;
            return self.result(run_id).await;
        }
        let deadline = tokio::time::Instant::now() + REMOTE_WAIT;
        while !self.run(run_id).await?.status.is_terminal()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(REMOTE_POLL).await;
        }
        self.result(run_id).await
    }

    /// The result of a run as it stands.
    pub async fn result(&self, run_id: &str) -> Result<RunResult> {
        let run = self.run(run_id).await?;
        let event_count = self.inner.store.event_count(run_id).await?;
        Ok(result_of(
            &run,
            event_count,
            self.inner.settings.public_url.as_deref(),
        ))
    }

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
            if lock(&self.inner.live).contains_key(&run.id) {
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
            if sandbox.backend == LOCAL_BACKEND
                && sandbox.status == SandboxStatus::Running
                && !lock(&self.inner.local.map).contains_key(&sandbox.id)
            {
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
            if sandbox.backend != self.inner.backend.name()
                || lock(&self.inner.warm).contains_key(&sandbox.id)
            {
                continue;
            }
            let outlives = self.inner.backend.outlives_process();
            let reason = match sandbox.status {
                // A paused sandbox keeps its files; a container one only has to still exist.
                SandboxStatus::Paused if !outlives || held.contains(&sandbox.id) => continue,
                SandboxStatus::Paused => "its container is gone".to_string(),
                SandboxStatus::Running if !outlives => {
                    "the server restarted and the sandbox's processes ended with it".into()
                }
                SandboxStatus::Running if sandbox.kind == SandboxKind::Warm => {
                    match self.inner.backend.adopt(&sandbox.id).await {
                        Ok(endpoint) => {
                            tracing::info!(sandbox = %sandbox.id, "adopted a warm sandbox that outlived the previous server");
                            lock(&self.inner.warm)
                                .insert(sandbox.id.clone(), self.warm_state(&sandbox, endpoint));
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
                Err(OrchestratorError::Store(StoreError::StaleStatus { .. })) => continue,
                Err(e) => return Err(e),
            }
            self.revoke_sandbox_tokens(&sandbox.id).await;
        }
        // Orphans: what the backend holds for sandboxes that no longer exist, or failed.
        for id in held {
            let orphan = match store.sandbox(&id).await {
                Err(StoreError::NotFound(_)) => true,
                Ok(s) => matches!(s.status, SandboxStatus::Failed | SandboxStatus::Deleted),
                Err(e) => return Err(e.into()),
            };
            if orphan {
                match self.inner.backend.destroy(&id).await {
                    Ok(()) => tracing::info!(sandbox = %id, "removed an orphaned sandbox"),
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "could not remove an orphaned sandbox")
                    }
                }
            }
        }
        Ok((lost, failed))
    }

    /// Cancels every run of this process and deletes the sandboxes they and `create_sandbox` made,
    /// waiting for their processes to end. Call before exiting.
    pub async fn shutdown(&self) {
        self.shutdown_with(true).await
    }

    /// `delegate serve`'s shutdown: like [`Self::shutdown`], but warm sandboxes that outlive the
    /// process (containers) stay up for the next start to adopt.
    pub async fn shutdown_server(&self) {
        self.shutdown_with(!self.inner.backend.outlives_process())
            .await
    }

    async fn shutdown_with(&self, delete_warm: bool) {
        self.inner.shutdown.cancel();
        let runs: Vec<String> = lock(&self.inner.live).keys().cloned().collect();
        for run_id in &runs {
            let _ = self.cancel_run(run_id).await;
        }
        for run_id in &runs {
            let _ = self.wait(run_id).await;
        }
        if delete_warm {
            // Local sandboxes are their owners' machines: they go offline, never away.
            let warm: Vec<String> = {
                let local = lock(&self.inner.local.map);
                lock(&self.inner.warm)
                    .keys()
                    .filter(|id| !local.contains_key(*id))
                    .cloned()
                    .collect()
            };
            for id in warm {
                if let Err(e) = self.delete_sandbox(&id).await {
                    tracing::warn!(sandbox = %id, error = %e, "could not delete sandbox at shutdown");
                }
            }
        }
        self.local_shutdown().await;
    }
}

impl LiveLog {
    async fn wait_done(&mut self) -> bool {
        self.done_rx().wait_for(|d| *d).await.is_ok()
    }
}

/// Reserves a sandbox for one operation (a run, a pause): a second one gets `Busy`.
fn reserve(inner: &Inner, sandbox_id: &str) -> Result<()> {
    let mut busy = lock(&inner.busy);
    if busy.contains_key(sandbox_id) {
        return Err(OrchestratorError::Busy(sandbox_id.to_string()));
    }
    busy.insert(sandbox_id.to_string(), String::new());
    Ok(())
}

/// Pauses warm sandboxes that had no run for their idle timeout. A sandbox with a run going is
/// reserved, so it is never paused under a run.
async fn sweep_idle(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(IDLE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.shutdown.is_cancelled() {
            return;
        }
        let idle: Vec<String> = lock(&inner.warm)
            .iter()
            .filter(|(_, w)| w.last_active.elapsed() >= w.idle_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        let orch = Orchestrator { inner };
        for id in idle {
            if reserve(&orch.inner, &id).is_err() {
                continue;
            }
            match orch.pause_reserved(&id).await {
                Ok(()) => tracing::info!(sandbox = %id, "paused after its idle timeout"),
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "could not pause an idle sandbox")
                }
            }
            lock(&orch.inner.busy).remove(&id);
        }
    }
}

/// Cancels this process's live runs that another process asked to cancel (recorded by
/// [`Store::request_cancel`]): one query per tick for all live runs, none while no run is live.
async fn watch_cancel_requests(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(REMOTE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.shutdown.is_cancelled() {
            return;
        }
        let live: Vec<String> = lock(&inner.live)
            .iter()
            .filter(|(_, (cancel, _))| !cancel.is_cancelled())
            .map(|(id, _)| id.clone())
            .collect();
        if live.is_empty() {
            continue;
        }
        match inner.store.cancel_requested(&live).await {
            Ok(requested) => {
                let live = lock(&inner.live);
                for id in requested {
                    if let Some((cancel, _)) = live.get(&id) {
                        tracing::info!(run = %id, "cancelling on another server's request");
                        cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not check for cancel requests"),
        }
    }
}

/// The `run_in_sandbox` result of a run row.
pub fn result_of(run: &Run, event_count: u64, public_url: Option<&str>) -> RunResult {
    let o: &RunOutcome = &run.outcome;
    let end = run.finished_at.unwrap_or_else(now_ms);
    let start = run.started_at.unwrap_or(run.created_at);
    RunResult {
        run_id: run.id.clone(),
        sandbox_id: run.sandbox_id.clone(),
        status: if run.status.is_terminal() {
            run.status
        } else {
            RunStatus::Running
        },
        final_message: o.final_message.clone(),
        changed_files: o.changed_files.clone(),
        diff: o.diff.clone(),
        diff_truncated: o.diff_truncated,
        usage: o.usage,
        duration_ms: (end - start).max(0) as u64,
        event_count,
        error: o.error.clone(),
        watch_url: public_url.map(|u| format!("{}/runs/{}", u.trim_end_matches('/'), run.id)),
    }
}

/// This server's instance id, stored in the data dir (`instance-id`), made on first start.
pub async fn instance_id(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("instance-id");
    let io = |e: std::io::Error| {
        OrchestratorError::Sandbox(SandboxError::Io(format!("{}: {e}", path.display())))
    };
    match tokio::fs::read_to_string(&path).await {
        Ok(id) if is_id("srv", id.trim()) => return Ok(id.trim().to_string()),
        Ok(_) | Err(_) => {}
    }
    tokio::fs::create_dir_all(data_dir).await.map_err(io)?;
    let id = new_id("srv");
    tokio::fs::write(&path, format!("{id}\n"))
        .await
        .map_err(io)?;
    Ok(id)
}

/// The local user and its `default` workspace, made on first start.
pub async fn ensure_local_user(store: &dyn Store) -> Result<(User, Workspace)> {
    let user = match store.user_by_email("local@delegate.invalid").await {
        Ok(u) => u,
        Err(StoreError::NotFound(_)) => {
            let u = User {
                id: new_id("usr"),
                email: "local@delegate.invalid".into(),
                name: "local".into(),
                created_at: now_ms(),
            };
            match store.create_user(&u).await {
                Ok(()) => u,
                // Another process made it first.
                Err(StoreError::Conflict(_)) => store.user_by_email(&u.email).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    match store.workspace_by_slug("default").await {
        Ok(ws) => return Ok((user, ws)),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let ws = Workspace {
        id: new_id("wsp"),
        slug: "default".into(),
        name: "Default".into(),
        created_at: now_ms(),
    };
    match store.create_workspace(&ws, &user.id).await {
        // The owner's membership comes with the workspace.
        Ok(()) => Ok((user, ws)),
        // Another process made it first.
        Err(StoreError::Conflict(_)) => Ok((user, store.workspace_by_slug("default").await?)),
        Err(e) => Err(e.into()),
    }
}

/// A new proxy token for a sandbox (`dsb_...`); only its hash is stored.
async fn issue_sandbox_token(
    store: &dyn Store,
    sandbox_id: &str,
    workspace_id: &str,
    expires_at: Option<crate::store::Millis>,
) -> Result<String> {
    let token = new_secret("dsb_");
    store
        .insert_token(&TokenRecord {
            id: new_id("tok"),
            kind: TokenKind::Sandbox,
            hash: hash_secret(&token),
            name: None,
            user_id: None,
            sandbox_id: Some(sandbox_id.to_string()),
            workspace_id: Some(workspace_id.to_string()),
            created_at: now_ms(),
            expires_at,
            revoked_at: None,
        })
        .await?;
    Ok(token)
}

/// Registers a sandbox delegate does not run itself (a container started from
/// `compose.headless.yml`, say) and returns it with its proxy token, so it reaches the model
/// through delegate's proxy like any other: usage is recorded, the real key stays here.
/// Deleting the sandbox revokes the token.
pub async fn register_external_sandbox(
    store: &dyn Store,
    workspace: &Workspace,
    name: Option<String>,
    created_by: Option<String>,
    expires_at: Option<crate::store::Millis>,
) -> Result<(Sandbox, String)> {
    let now = now_ms();
    let id = new_id("sbx");
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
        created_by,
        created_at: now,
        updated_at: now,
    };
    store.insert_sandbox(&sandbox).await?;
    let token = issue_sandbox_token(store, &id, &workspace.id, expires_at).await?;
    Ok((sandbox, token))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it consistent (single inserts/removes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! The orchestrator core: makes sandboxes, runs delegated tasks in them, keeps each run's event
//! log, and answers for runs and sandboxes. The CLI, the MCP tools and the REST API are thin
//! layers over [`Orchestrator`].
//!
//! This file holds the handle, its shared state and request types (its error is `crate::error`).
//! The rest, one concern a file: `lifecycle.rs` (sandboxes: create, delete, pause, resume, idle
//! sweep), `runs.rs` (the run facade), `run.rs` (driving one run) and `agent.rs` (following its
//! agent), `log.rs` (the event log), `reservation.rs` (one operation per sandbox), `recovery.rs`
//! (restart, shutdown, cancel requests from other servers), `local.rs` (local sandboxes through
//! the tunnel), `grants.rs` (sandbox proxy tokens), `snapshots.rs` (repository snapshots
//! uploaded for a sandbox to start from), `artifacts.rs` (each run's change kept as a patch
//! and a bundle), `attempts.rs` (best-of-N: N runs of one task under a parent), `quotas.rs`
//! (run slots, the queue of runs waiting for one, and workspace quotas) and `pool.rs` (the warm
//! pool of started sandboxes ephemeral runs claim).

mod agent;
mod artifacts;
mod attempts;
mod egress;
mod git_credentials;
mod grants;
mod inputs;
mod lifecycle;
mod local;
mod local_repo;
mod log;
mod pool;
mod quotas;
mod recovery;
mod reservation;
mod retention;
mod run;
mod runs;
mod secrets;
mod setup;
mod snapshots;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

// Bootstrap lives in `crate::bootstrap`; re-exported for the callers that name it here.
pub use artifacts::{bundle_path, patch_path, run_dir};
pub use attempts::{StartedAttempts, check_attempts, parent_row};
pub use egress::WorkspaceEgress;
pub use git_credentials::{
    GitCredential, MAX_GIT_TOKEN_BYTES, MAX_WORKSPACE_GIT_CREDENTIALS, git_host_key, host_key,
};
pub use grants::register_external_sandbox;
pub use inputs::{MAX_ENV_BYTES, MAX_ENV_ENTRIES, MAX_SETUP_BYTES, SandboxInputs, check_env_name};
pub use log::{LiveLog, follow};
pub use retention::{PruneReport, Pruned};
pub use runs::{REMOTE_WAIT, result_of};
pub use secrets::{MAX_SECRET_BYTES, SecretName};
pub use snapshots::{SNAPSHOT_PREFIX, SNAPSHOT_TTL, SnapshotFile, Snapshots, TreeCheck};

use crate::bootstrap::{ensure_local_user, instance_id};
use crate::ids::{Origin, RunId, SandboxId};
use crate::proxy::{ActiveRuns, Proxy};
use crate::sandbox::{SandboxBackend, SandboxError, ServeEndpoint};
use crate::settings::Settings;
use crate::store::{Sandbox, Store, StoreError, User, Workspace};
use reservation::Reservations;

/// The largest task delegate accepts.
pub const MAX_TASK_BYTES: usize = 1 << 20;
/// The longest timeout a run may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(delegate_mcp::tools::MAX_TIMEOUT_SECONDS);

// One error for the orchestrator and the service layer (`crate::error`).
pub use crate::error::{Error, Result};

/// A request to delegate one task (the `run_in_sandbox` input).
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The task text for the agent.
    pub task: String,
    /// Reuse this warm sandbox; `None` makes a fresh ephemeral one, destroyed after the run.
    pub sandbox_id: Option<String>,
    /// Workspace slug or id; `None` for the default workspace.
    pub workspace: Option<String>,
    /// Files to write into a fresh sandbox's work dir: relative path -> text content.
    pub files: BTreeMap<String, String>,
    /// Model as `provider/model`; `None` for the server default.
    pub model: Option<String>,
    /// opencode agent (`build`, `plan`, ...); `None` for opencode's default.
    pub agent: Option<String>,
    /// Time limit of the run; `None` for the server default.
    pub timeout: Option<Duration>,
    /// In a warm sandbox, continue its previous opencode session instead of starting a new one.
    pub continue_session: bool,
    /// The repository a fresh sandbox starts from (taken from [`Snapshots`] for this caller).
    pub snapshot: Option<Arc<SnapshotFile>>,
    /// Who delegated it.
    pub created_by: Option<Origin>,
    /// The egress policy of a fresh sandbox; `None` for the workspace's default.
    pub network: Option<String>,
    /// `env`, `secrets`, `setup` and `image` of a fresh sandbox.
    pub inputs: SandboxInputs,
    /// Stop the run once its model calls cost this many dollars; `None` for the workspace's or
    /// server's default, if any.
    pub max_cost_usd: Option<f64>,
}

/// A request for a warm sandbox (the `create_sandbox` input).
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    /// Workspace slug or id; `None` for the default workspace.
    pub workspace: Option<String>,
    /// A name people recognise in lists.
    pub name: Option<String>,
    /// Files to write into the work dir: relative path -> text content.
    pub files: BTreeMap<String, String>,
    /// Pause after this long without a run; `None` for the server's idle timeout.
    pub idle_timeout: Option<Duration>,
    /// The repository it starts from (taken from [`Snapshots`] for this caller).
    pub snapshot: Option<Arc<SnapshotFile>>,
    /// Who created it.
    pub created_by: Option<Origin>,
    /// The sandbox's egress policy; `None` for the workspace's default.
    pub network: Option<String>,
    /// `env`, `secrets`, `setup` (run once, at creation) and `image`.
    pub inputs: SandboxInputs,
}

/// A warm sandbox's live facts, kept in memory while its opencode serve runs.
#[derive(Clone)]
struct Warm {
    /// The backend that holds it (chosen once, by `Sandbox.backend`).
    backend: Arc<dyn SandboxBackend>,
    endpoint: ServeEndpoint,
    /// The opencode session of the previous run, for `continue_session`.
    last_session: Option<String>,
    /// When a run last started or ended here: idle time counts from it.
    last_active: std::time::Instant,
    /// Paused after this long without activity.
    idle_timeout: Duration,
}

/// How often the store is asked about runs executing in another process (their status, cancel
/// requests for this process's runs): a cancel through another server lands within about this.
const REMOTE_POLL: Duration = Duration::from_millis(500);

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
    live: Mutex<HashMap<RunId, (CancellationToken, LiveLog)>>,
    /// Sandboxes held by an operation (a run, a pause, a resume): one at a time per sandbox.
    reservations: Reservations,
    warm: Mutex<HashMap<String, Warm>>,
    /// Local sandboxes whose agent is connected to this process.
    local: local::Links,
    /// Repository snapshots uploaded for the next run or sandbox.
    snapshots: Arc<Snapshots>,
    /// This server's run slots and its runs waiting for one (workspace quotas are counted in the
    /// database, across servers).
    admission: Arc<quotas::Admission>,
    default_workspace: Workspace,
    /// The user embedded mode acts as (stdio MCP, `delegate run`).
    local_user: User,
    /// This server's identity among servers sharing a database: it owns the runs it executes and
    /// the process sandboxes it holds. Kept in the data dir, so a restart knows its own.
    instance_id: String,
    shutdown: CancellationToken,
    /// The egress policies (built in and configured).
    policies: crate::egress::Policies,
    /// Each sandbox's egress proxy, while it exists; none for a `none` sandbox.
    egress: Mutex<HashMap<String, Arc<crate::egress::Egress>>>,
    /// Every egress proxy's connections and bytes, for `/metrics`.
    egress_metrics: Arc<crate::egress::EgressMetrics>,
    /// What retention pruned since this process started.
    pruned: Pruned,
    /// The warm pool, when `DELEGATE_WARM_POOL` asks for one and the backend keeps one.
    pool: Option<Arc<pool::Pool>>,
}

impl Drop for Inner {
    /// Nothing can reach this orchestrator any more: its listeners stop (its loops see it gone).
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
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
        let policies = egress::policies(&settings)?;
        proxy.budgets().set_defaults(settings.limits);
        let (local_user, default_workspace) = ensure_local_user(store.as_ref()).await?;
        let instance_id = instance_id(&settings.data_dir)
            .await
            .map_err(|e| Error::Sandbox(SandboxError::Io(e.to_string())))?;
        let snapshots = Snapshots::open(&settings.data_dir)
            .await
            .map_err(|e| Error::Sandbox(SandboxError::Io(format!("the snapshots dir: {e}"))))?;
        let admission = quotas::Admission::new(
            settings.max_concurrent_runs,
            settings.max_queued_runs,
            store.clone(),
        );
        let pool = match settings.warm_pool {
            0 => None,
            n if backend.pools() => Some(Arc::new(pool::Pool::new(n, settings.warm_pool_idle))),
            n => {
                tracing::warn!(
                    "DELEGATE_WARM_POOL={n} is ignored: the {} backend keeps no warm pool",
                    backend.name()
                );
                None
            }
        };
        let orch = Orchestrator {
            inner: Arc::new(Inner {
                store,
                backend,
                proxy,
                active_runs,
                live: Mutex::new(HashMap::new()),
                reservations: Reservations::default(),
                warm: Mutex::new(HashMap::new()),
                local: local::Links::default(),
                snapshots: Arc::new(snapshots),
                admission,
                settings,
                default_workspace,
                local_user,
                instance_id,
                shutdown: CancellationToken::new(),
                policies,
                egress: Mutex::new(HashMap::new()),
                egress_metrics: Arc::default(),
                pruned: Pruned::default(),
                pool,
            }),
        };
        orch.every(lifecycle::IDLE_SWEEP, lifecycle::sweep_idle);
        orch.every(REMOTE_POLL, recovery::watch_cancel_requests);
        orch.every(snapshots::SNAPSHOT_SWEEP, snapshots::sweep_snapshots);
        orch.every(retention::RETENTION_SWEEP, retention::sweep_expired);
        pool::start(&orch);
        Ok(orch)
    }

    /// Runs `work` every `period` in the background for as long as the orchestrator lives and
    /// is not shutting down. Between ticks the loop holds only a weak reference, so it never
    /// keeps the orchestrator alive by itself.
    fn every<F, Fut>(&self, period: Duration, mut work: F)
    where
        F: FnMut(Orchestrator) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if inner.shutdown.is_cancelled() {
                    return;
                }
                work(Orchestrator { inner }).await;
            }
        });
    }

    /// The database, for callers that read or write rows the orchestrator does not own.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The server's configuration.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The user embedded mode acts as.
    pub fn local_user(&self) -> &User {
        &self.inner.local_user
    }

    /// The proxy sandboxes of this orchestrator talk to (each backend serves it where its
    /// sandboxes connect; see [`Orchestrator::proxy_on_listener`]).
    pub fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    /// Whether sandboxes reach the proxy through `delegate serve`'s own listener: only the docker
    /// backend on a named network does (`DELEGATE_DOCKER_PROXY_URL`), and sandboxes run outside
    /// delegate when the admin says so (`DELEGATE_PROXY_PUBLIC`). The process backend and docker
    /// with no network or the host's use a unix socket or a loopback port of their own.
    pub fn proxy_on_listener(&self) -> bool {
        self.inner.settings.proxy_public || self.inner.backend.proxy_on_listener()
    }

    /// Whether a run in warm `sandbox` may bring a repository of its own (a local agent clones
    /// it per run); any other warm sandbox already has its files.
    pub fn takes_repo_per_run(&self, sandbox: &Sandbox) -> bool {
        self.backend_for(sandbox)
            .is_ok_and(|b| b.takes_repo_per_run(&sandbox.id).is_some())
    }

    /// The backend that holds `sandbox`: this server's own (which makes new sandboxes), or the
    /// local one (machines joined through the tunnel). A sandbox of a backend this server does
    /// not run (another server's, configured differently) is refused rather than mistaken.
    pub(super) fn backend_for(&self, sandbox: &Sandbox) -> Result<Arc<dyn SandboxBackend>> {
        let local: Arc<dyn SandboxBackend> = self.inner.local.backend.clone();
        [self.inner.backend.clone(), local]
            .into_iter()
            .find(|b| b.name() == sandbox.backend)
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "sandbox {} is a {} sandbox, and this server runs the {} backend; use a \
                     server that runs it",
                    sandbox.id,
                    sandbox.backend,
                    self.inner.backend.name()
                ))
            })
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
                    .map_err(|_| Error::NotFound(format!("workspace {s:?}"))),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The loopback URL of a warm sandbox's opencode serve, while it runs in this process.
    pub fn opencode_url(&self, sandbox_id: &SandboxId) -> Option<String> {
        lock(&self.inner.warm)
            .get(sandbox_id.as_str())
            .map(|w| w.endpoint.url.clone())
    }

    /// A warm sandbox's opencode serve (URL, password, directory) while it runs in this process:
    /// what the browser gateway forwards to.
    pub fn serve_endpoint(&self, sandbox_id: &SandboxId) -> Option<ServeEndpoint> {
        lock(&self.inner.warm)
            .get(sandbox_id.as_str())
            .map(|w| w.endpoint.clone())
    }

    /// How many runs execute in this process right now.
    pub fn live_run_count(&self) -> usize {
        lock(&self.inner.live).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it consistent (single inserts/removes).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

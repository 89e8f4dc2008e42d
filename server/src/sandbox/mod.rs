//! Sandbox backends. A backend prepares a sandbox (work dir seeded and committed), runs opencode in
//! it headlessly or starts `opencode serve` for a warm sandbox, reports what changed, and destroys
//! it. The orchestrator drives every backend through [`SandboxBackend`] and never learns how.

pub mod cgroup;
pub mod docker;
pub mod kube;
pub mod lines;
pub mod local;
pub mod process;
pub mod workdir;

pub use workdir::Changes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::opencode::serve::{ServeClient, ServeError};
use crate::settings::Secret;
use crate::store::SandboxKind;

/// Why a backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The caller's input is unusable (e.g. a `files` path that escapes the work dir).
    #[error("{0}")]
    BadInput(String),
    /// A required program is missing; the message says how to provide it.
    #[error("{0}")]
    Missing(String),
    /// The backend has no sandbox with this id.
    #[error("sandbox {0} is not known to this backend")]
    Unknown(String),
    /// The sandbox (or its `opencode serve`) did not come up.
    #[error("sandbox failed to start: {0}")]
    Start(String),
    /// The sandbox image is not in the container engine; the message says how to build it.
    #[error("{0}")]
    ImageMissing(String),
    /// A file, process or engine operation failed; the message says which.
    #[error("{0}")]
    Io(String),
}

/// What a backend needs to make a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox's id (`sbx_...`), which names its dirs, container and cgroups.
    pub id: String,
    /// The workspace it belongs to (`wsp_...`); `None` for a pooled sandbox, whose workspace
    /// is known only when a run takes it. The kubernetes backend's namespace per workspace
    /// is named after it.
    pub workspace: Option<String>,
    /// Ephemeral or warm: a warm sandbox also gets `opencode serve`.
    pub kind: SandboxKind,
    /// Files to write into the work dir before the seed commit: path relative to it -> text.
    pub files: BTreeMap<String, String>,
    /// A snapshot bundle of the caller's repository to clone as the work dir (the seed files
    /// then go on top).
    pub repo: Option<PathBuf>,
    /// The sandbox's token for delegate's Anthropic proxy: the only credential it ever sees.
    pub proxy_token: Secret,
    /// Basic-auth password of a warm sandbox's `opencode serve`.
    pub serve_password: Option<Secret>,
    /// delegate's egress proxy for this sandbox; `None` when its policy allows nothing (then
    /// no socket exists and no proxy variables are set).
    pub egress: Option<Arc<dyn EgressService>>,
    /// Extra environment of every process in the sandbox: the caller's `env`, then the
    /// workspace secrets it asked for (values kept out of command lines and logs).
    pub env: Vec<(String, Secret)>,
    /// The container image; the backend's default when `None` (container backends only).
    pub image: Option<String>,
}

/// Serves the connections a sandbox makes through its `egress.sock` (delegate's egress proxy,
/// which lives above the backends: they only bind the socket and hand it over).
pub trait EgressService: Send + Sync + std::fmt::Debug + 'static {
    /// Accepts and serves connections from `listener` on background tasks until `stop`.
    fn serve_unix(self: Arc<Self>, listener: tokio::net::UnixListener, stop: CancellationToken);
}

/// Binds a sandbox's `egress.sock` at `path` (replacing a stale one, `mode` as for the model
/// proxy's socket) and hands it to `service` until `stop`.
pub fn serve_egress(
    service: &Arc<dyn EgressService>,
    path: &std::path::Path,
    mode: u32,
    stop: CancellationToken,
) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let bind = || -> std::io::Result<tokio::net::UnixListener> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(listener)
    };
    let listener = bind().map_err(|e| SandboxError::Io(format!("bind {}: {e}", path.display())))?;
    service.clone().serve_unix(listener, stop);
    Ok(())
}

/// Where the in-sandbox relay offers the egress proxy (the model proxy is on port 4000).
pub const IN_EGRESS_PROXY: &str = "127.0.0.1:4001";

/// What stays direct in every sandbox with egress: loopback (the model proxy's relay).
pub const NO_PROXY: &str = "127.0.0.1,localhost";

/// The environment that sends a sandbox's HTTP clients (npm, pip, cargo, git, curl) through
/// the egress relay at [`IN_EGRESS_PROXY`]; the model proxy on loopback stays direct.
pub fn egress_environment() -> Vec<(&'static str, String)> {
    proxy_environment(&format!("http://{IN_EGRESS_PROXY}"), NO_PROXY)
}

/// The proxy variables, both spellings, for the egress proxy at `url`, with `no_proxy` direct.
pub fn proxy_environment(url: &str, no_proxy: &str) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        env.push((name, url.to_string()));
    }
    env.push(("NO_PROXY", no_proxy.to_string()));
    env.push(("no_proxy", no_proxy.to_string()));
    env
}

/// A warm sandbox's `opencode serve`, as reachable from the server.
#[derive(Debug, Clone)]
pub struct ServeEndpoint {
    /// The base URL the server reaches it at (loopback, a relayed socket or a container name).
    pub url: String,
    /// Basic-auth password (user `opencode`).
    pub password: Secret,
    /// The work dir as opencode sees it (its `x-opencode-directory`).
    pub directory: String,
}

/// The names in a work dir's top level that change what opencode does there: its config and
/// the instructions it reads. opencode reads them when it builds the directory's instance.
const OPENCODE_CONFIG_NAMES: [&str; 6] = [
    "opencode.json",
    "opencode.jsonc",
    ".opencode",
    "AGENTS.md",
    "CLAUDE.md",
    "CONTEXT.md",
];

/// Whether the work dir `dir` (on the host) carries its own opencode config or instructions, so
/// an opencode instance built before it was seeded would ignore them.
pub async fn carries_opencode_config(dir: &std::path::Path) -> bool {
    for name in OPENCODE_CONFIG_NAMES {
        if tokio::fs::symlink_metadata(dir.join(name)).await.is_ok() {
            return true;
        }
    }
    false
}

/// One headless opencode run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The run's id (`run_...`).
    pub run_id: String,
    /// The task text, given to opencode on stdin.
    pub task: String,
    /// `provider/model` for opencode.
    pub model: String,
    /// The opencode agent to run; opencode's default when `None`.
    pub agent: Option<String>,
    /// The session title (the task's first line, shortened).
    pub title: String,
    /// Continue the sandbox's previous opencode session instead of starting one.
    pub continue_session: bool,
}

impl RunSpec {
    /// The options of `opencode run` for this run (after `run --format json --auto` on the
    /// process backend; the image's headless mode adds those itself). Every value is joined to its
    /// flag with `=`, so a task whose first line (the title) starts with `--` stays a value and
    /// never becomes an option of opencode's.
    pub fn opencode_options(&self) -> Vec<String> {
        let mut args = vec![
            format!("--model={}", self.model),
            format!("--title={}", self.title),
        ];
        if let Some(agent) = &self.agent {
            args.push(format!("--agent={agent}"));
        }
        if self.continue_session {
            args.push("--continue".into());
        }
        args
    }
}

/// Output of a headless run, in order; the last item is always `Exited`.
#[derive(Debug)]
pub enum AgentOutput {
    /// One line of opencode's stdout (its JSON events), without the newline.
    Stdout(String),
    /// One line of opencode's stderr, for diagnostics.
    Stderr(String),
    /// The run's process is gone; always the last item.
    Exited(ExitInfo),
}

/// How a headless run ended.
#[derive(Debug, Clone, Default)]
pub struct ExitInfo {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// delegate killed it (timeout or cancel).
    pub killed: bool,
    /// The kernel killed something in the sandbox for exceeding its memory limit.
    pub oom: bool,
}

/// A turn started in a warm sandbox's `opencode serve`: its session and the server's events.
pub struct WarmRun {
    /// The opencode session the turn runs in (a new one, or the one it continues).
    pub session: String,
    /// The `data` of each of opencode serve's events, subscribed to before the prompt went in,
    /// so no event of the turn is missed. The end of the stream is the end of the server.
    pub events: futures::stream::BoxStream<'static, Result<String, SandboxError>>,
}

/// What a run changed, as its backend can tell.
#[derive(Debug)]
pub enum RunChanges {
    /// Committed inside the sandbox and imported on the server (a bundle and patch are kept).
    Committed(Changes),
    /// Reported by the sandbox's opencode (the files are not the server's to read: a local
    /// sandbox's machine).
    Reported(ReportedChanges),
}

/// Files a sandbox's opencode says a session changed, with their diff.
#[derive(Debug, Default)]
pub struct ReportedChanges {
    /// Files added, modified or deleted, with line counts.
    pub files: Vec<delegate_mcp::types::ChangedFile>,
    /// The text diff, at most the asked-for bytes.
    pub diff: String,
    /// Whether [`ReportedChanges::diff`] was cut.
    pub diff_truncated: bool,
}

/// What a backend's [`SandboxBackend::create_pooled`] does around its own `make`: a pooled
/// sandbox is a warm one, and must come up with its `opencode serve`.
pub(crate) async fn make_pooled<F>(
    spec: &SandboxSpec,
    make: impl FnOnce() -> F,
) -> Result<ServeEndpoint, SandboxError>
where
    F: Future<Output = Result<Option<ServeEndpoint>, SandboxError>>,
{
    if spec.kind != SandboxKind::Warm {
        return Err(SandboxError::BadInput(
            "a pooled sandbox is a warm one (opencode serve up)".into(),
        ));
    }
    make()
        .await?
        .ok_or_else(|| SandboxError::Start("a pooled sandbox without opencode serve".into()))
}

fn serve_failed(e: ServeError) -> SandboxError {
    SandboxError::Start(e.to_string())
}

/// What the orchestrator needs from a place that runs opencode; one implementation per backend
/// (`process`, `docker`, `kubernetes`, and `local` for a developer's machine joined through the tunnel). The
/// orchestrator picks a sandbox's implementation once, by `Sandbox.backend`, and asks it what it
/// can do ([`pauses`](Self::pauses), [`any_replica`](Self::any_replica), ...) rather than
/// testing names.
#[async_trait]
pub trait SandboxBackend: Send + Sync + 'static {
    /// `process`, `docker`, `kubernetes`.
    fn name(&self) -> &'static str;

    /// Makes the sandbox; for a warm one also starts `opencode serve` and returns its endpoint.
    async fn create(&self, spec: &SandboxSpec) -> Result<Option<ServeEndpoint>, SandboxError>;

    /// Whether this backend keeps a warm pool: it can make a sandbox with an empty work dir
    /// ([`create_pooled`](Self::create_pooled)) and seed it later ([`seed`](Self::seed)).
    fn pools(&self) -> bool {
        false
    }

    /// Makes a warm sandbox for the pool: `opencode serve` up, its work dir empty (not yet a
    /// repository), for a run to claim and [`seed`](Self::seed). `spec` carries no files,
    /// repository, env or egress.
    async fn create_pooled(&self, spec: &SandboxSpec) -> Result<ServeEndpoint, SandboxError> {
        Err(SandboxError::BadInput(format!(
            "the {} backend keeps no warm pool (sandbox {})",
            self.name(),
            spec.id
        )))
    }

    /// Seeds a pooled sandbox's empty work dir as [`create`](Self::create) seeds a fresh one (a
    /// clone of `repo`, then `files`, committed) while its `opencode serve` runs. opencode makes
    /// its per-directory instance on the first request naming the work dir, and the pool has it
    /// made on the empty dir; `true` means it must be rebuilt: the seeded work dir carries its
    /// own opencode config or instructions ([`carries_opencode_config`]).
    async fn seed(
        &self,
        sandbox_id: &str,
        files: &BTreeMap<String, String>,
        repo: Option<&std::path::Path>,
    ) -> Result<bool, SandboxError> {
        let _ = (files, repo);
        Err(SandboxError::BadInput(format!(
            "the {} backend cannot seed a running sandbox (sandbox {sandbox_id})",
            self.name()
        )))
    }

    /// Starts `opencode run --format json` with the task on stdin. Output arrives on the channel;
    /// cancelling `stop` kills the run (and everything it started) and still ends with `Exited`.
    async fn run_headless(
        &self,
        sandbox_id: &str,
        run: &RunSpec,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError>;

    /// What changed since the previous call (or the seed): the backend commits the work dir
    /// inside the sandbox (as its user, under its confinement) with the message `label`, and
    /// the host reads that commit back as hostile input ([`workdir::SandboxDirs::import_changes`]),
    /// with a diff preview of at most `max_diff` bytes.
    async fn collect_changes(
        &self,
        sandbox_id: &str,
        max_diff: usize,
        label: &str,
    ) -> Result<Changes, SandboxError>;

    /// Whether [`run_setup`](Self::run_setup) works here, so a `setup` it cannot run is refused
    /// before any sandbox exists.
    fn runs_setup(&self) -> bool {
        false
    }

    /// Runs `script` with `sh -c` in the sandbox's work dir, as its user, with its environment
    /// and network. Output arrives as for [`run_headless`](Self::run_headless), ending with
    /// `Exited`; cancelling `stop` kills it.
    async fn run_setup(
        &self,
        sandbox_id: &str,
        script: &str,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let _ = (script, stop);
        Err(SandboxError::BadInput(format!(
            "setup: the {} backend cannot run a setup script (sandbox {sandbox_id})",
            self.name()
        )))
    }

    /// Stops a warm sandbox's processes, keeping its files (and opencode's sessions).
    async fn pause(&self, sandbox_id: &str) -> Result<(), SandboxError>;

    /// Starts a paused warm sandbox's `opencode serve` again.
    async fn resume(&self, sandbox_id: &str) -> Result<ServeEndpoint, SandboxError>;

    /// Stops every process of the sandbox and removes it with its files. A sandbox the backend
    /// does not know is already gone: that is not an error.
    async fn destroy(&self, sandbox_id: &str) -> Result<(), SandboxError>;

    /// Whether sandboxes live on when this process ends (containers do, child processes not).
    fn outlives_process(&self) -> bool {
        false
    }

    /// Picks up a warm sandbox that outlived a previous server process (a container does) and
    /// returns its `opencode serve` again. Sandboxes of backends whose sandboxes end with the
    /// process cannot be adopted.
    async fn adopt(&self, sandbox_id: &str) -> Result<ServeEndpoint, SandboxError> {
        Err(SandboxError::Unknown(sandbox_id.to_string()))
    }

    /// The ids of every sandbox this backend still holds resources for outside this process
    /// (labelled containers, volumes), so orphans can be swept at start.
    async fn held(&self) -> Result<Vec<String>, SandboxError> {
        Ok(Vec::new())
    }

    /// Starts a turn in a warm sandbox's `opencode serve` at `endpoint`: subscribes to its
    /// events, then prompts `session` (or a new session titled after the run) with the task.
    /// Every backend's warm sandboxes speak opencode's HTTP API, so few need their own.
    async fn start_warm_run(
        &self,
        sandbox_id: &str,
        endpoint: &ServeEndpoint,
        run: &RunSpec,
        session: Option<&str>,
    ) -> Result<WarmRun, SandboxError> {
        let _ = sandbox_id;
        let client = ServeClient::new(
            &endpoint.url,
            endpoint.password.clone(),
            &endpoint.directory,
        );
        // Subscribe before prompting, so no event of the turn is missed.
        let events = client.events().await.map_err(serve_failed)?;
        let session = match session {
            Some(s) => s.to_string(),
            None => client
                .create_session(&run.title)
                .await
                .map_err(serve_failed)?,
        };
        client
            .prompt_async(&session, &run.task, &run.model, run.agent.as_deref())
            .await
            .map_err(serve_failed)?;
        use futures::StreamExt;
        Ok(WarmRun {
            session,
            events: events
                .map(|item| item.map_err(|e| SandboxError::Io(e.to_string())))
                .boxed(),
        })
    }

    /// Stops a turn [`start_warm_run`](Self::start_warm_run) started (timeout, cancel).
    async fn abort_warm_run(
        &self,
        endpoint: &ServeEndpoint,
        session: &str,
    ) -> Result<(), SandboxError> {
        ServeClient::new(
            &endpoint.url,
            endpoint.password.clone(),
            &endpoint.directory,
        )
        .abort(session)
        .await
        .map_err(serve_failed)
    }

    /// What a run changed: by default the backend's commit inside the sandbox
    /// ([`collect_changes`](Self::collect_changes)); `session` is the opencode session of a warm
    /// run, for backends whose opencode reports it instead.
    async fn run_changes(
        &self,
        sandbox_id: &str,
        session: Option<&str>,
        max_diff: usize,
        label: &str,
    ) -> Result<RunChanges, SandboxError> {
        let _ = session;
        self.collect_changes(sandbox_id, max_diff, label)
            .await
            .map(RunChanges::Committed)
    }

    /// Drops what this process keeps for a sandbox another server now holds (its listeners and
    /// relays here), leaving the sandbox itself alone.
    fn release(&self, sandbox_id: &str) {
        let _ = sandbox_id;
    }

    /// Whether a sandbox may choose its image (from the server's list): backends that run
    /// containers.
    fn takes_images(&self) -> bool {
        false
    }

    /// Whether its sandboxes reach the model proxy through `delegate serve`'s own listener (a
    /// container on a named network does), rather than a socket or port of the backend's own.
    fn proxy_on_listener(&self) -> bool {
        false
    }

    /// Whether its warm sandboxes can be paused (a developer's machine cannot).
    fn pauses(&self) -> bool {
        true
    }

    /// Whether every server sharing the database can run in, pause, resume and delete this
    /// backend's sandboxes, adopting one another holds (they live in a shared container engine
    /// or cluster). When not, an operation through another server is refused, naming the
    /// holder.
    fn any_replica(&self) -> bool {
        false
    }

    /// Whether its sandboxes come back by themselves when the server that held them ends (a
    /// local agent reconnects): they go `offline` then, and are never deleted at shutdown.
    fn reconnects(&self) -> bool {
        false
    }

    /// Whether a run in warm sandbox `sandbox_id` may bring a repository of its own (a local
    /// agent clones it into a fresh work dir): `None` when the backend's warm sandboxes never do
    /// (they have their files), `Some(false)` when this sandbox cannot now (an older agent).
    fn takes_repo_per_run(&self, sandbox_id: &str) -> Option<bool> {
        let _ = sandbox_id;
        None
    }
}

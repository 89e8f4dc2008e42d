//! The caller's machine around any [`Delegator`]: `delegate mcp` and `delegate run`, embedded or
//! bridged (`--server`), wrap their delegator in a [`LocalDelegator`], which moves repositories.
//!
//! Before a run (or a warm sandbox) it resolves `repo` to a work tree on this machine, snapshots
//! it ([`delegate_repo::Snapshot`]), uploads the bundle ([`Delegator::upload_snapshot`]) and
//! hands the inner delegator the snapshot's id instead of a path. The snapshot is then kept under
//! the state dir, keyed by run (and by sandbox for `create_sandbox`), so that the change coming
//! back can be written into the caller's repository: at the end of a waited run (`apply`), or
//! later with `apply_changes`, in this process or another one (`delegate apply`).
//!
//! The caller's repository is only ever read, except by the apply at the end: a branch
//! `delegate/<run>` (never an existing one), and the working tree only for `worktree` when the
//! change applies cleanly. A failed apply never fails the run; `apply_message` says what happened.
//!
//! State dir layout (`<data_dir>/local/`):
//! - `tmp/`: snapshots being taken (on the same file system as `snapshots/`, so keeping one is a
//!   rename);
//! - `snapshots/run-<run_id>/`, `snapshots/sandbox-<sandbox_id>/`: kept snapshots;
//! - `runs/<run_id>.json`: which snapshot a run started from ([`RunRecord`]);
//! - `sandboxes/<sandbox_id>.json`: the branch a warm sandbox's runs move forward
//!   ([`SandboxRecord`]);
//! - `pruned/<key>.json`: why a kept snapshot was pruned ([`prune`]: unused for longer than the
//!   run retention, or over the state dir's cap), for an apply that comes too late.

mod prune;

pub use prune::{KeepPolicy, PruneReport};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use delegate_repo::{ApplyTo, BranchName, Limits, RepoError, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::delegator::{Caller, ClientRoots, DelegateError, Delegator, Progress};
use crate::tools::{
    ApplyChangesInput, ApplyChangesOutput, ApplyMode, ApplyTarget, CancelRunInput, CancelRunOutput,
    CreateSandboxInput, DeleteSandboxInput, DeleteSandboxOutput, ListSandboxesInput,
    ListSandboxesOutput, RunInSandboxInput, SandboxInfo, StreamSessionInput, StreamSessionOutput,
};
use crate::types::{RepoBase, RunResult};
use prune::{Keeper, LiveGuard};

/// Which snapshot a run started from, written when the run is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    /// The directory name under `snapshots/`.
    snapshot: String,
    /// The warm sandbox the run was in, when it was in one.
    #[serde(default)]
    sandbox_id: Option<String>,
}

/// The branch a warm sandbox's runs go to, and what delegate last wrote there.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    /// The name after `delegate/`.
    branch: String,
    /// The branch's tip as delegate wrote it.
    commit: String,
}

/// What `repo` resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Project {
    /// An empty sandbox.
    Empty,
    /// A work tree on this machine.
    Local {
        path: PathBuf,
        /// Whether a path that is not in a git work tree is an error (`.` or a path) or just
        /// means an empty sandbox (the default).
        required: bool,
    },
    /// A URL the server clones.
    Url(String),
}

/// A [`Delegator`] for the caller's machine: repositories in as snapshots, changes out as
/// branches. Every other call goes to the inner delegator unchanged.
pub struct LocalDelegator {
    inner: Arc<dyn Delegator>,
    state_dir: PathBuf,
    limits: Limits,
    /// The project root when the client names none: `CLAUDE_PROJECT_DIR`, else the cwd.
    default_root: Option<PathBuf>,
    /// One apply at a time: applies share a snapshot's scratch repository and the caller's refs.
    applying: Mutex<()>,
    /// Prunes the state dir, sparing the snapshots in use here.
    keeper: Arc<Keeper>,
    /// Snapshots held for as long as this process lives, or until their sandbox is deleted
    /// here: warm sandboxes created here, runs that went on after `run_in_sandbox` returned.
    pinned: std::sync::Mutex<HashMap<String, LiveGuard>>,
}

impl std::fmt::Debug for LocalDelegator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDelegator")
            .field("state_dir", &self.state_dir)
            .field("limits", &self.limits)
            .field("default_root", &self.default_root)
            .field("keep", &self.keeper.policy)
            .finish_non_exhaustive()
    }
}

impl LocalDelegator {
    /// Wraps `inner` (an embedded or a remote delegator). `state_dir` is where snapshots are
    /// taken and kept (`<data_dir>/local`); `limits` caps a snapshot
    /// (`DELEGATE_MAX_REPO_BYTES`). The project root, when the MCP client names none, is
    /// `CLAUDE_PROJECT_DIR`, else the current directory, as they are now.
    pub fn new(inner: Arc<dyn Delegator>, state_dir: impl Into<PathBuf>, limits: Limits) -> Self {
        let default_root = std::env::var_os("CLAUDE_PROJECT_DIR")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok());
        let state_dir = state_dir.into();
        Self {
            inner,
            keeper: Arc::new(Keeper::new(state_dir.clone(), KeepPolicy::default())),
            state_dir,
            limits,
            default_root,
            applying: Mutex::new(()),
            pinned: std::sync::Mutex::default(),
        }
    }

    /// How long and how much of the kept snapshots stay (`DELEGATE_RETAIN_RUNS_DAYS`,
    /// `DELEGATE_LOCAL_KEEP_BYTES`); [`KeepPolicy::default`] otherwise.
    pub fn with_keep_policy(mut self, policy: KeepPolicy) -> Self {
        self.keeper = Arc::new(Keeper::new(self.state_dir.clone(), policy));
        self
    }

    /// Prunes the kept snapshots now (see [`KeepPolicy`]), on the blocking pool; never one a run
    /// or an apply in this process is using.
    pub async fn prune(&self) -> std::io::Result<PruneReport> {
        self.keeper.prune().await
    }

    /// [`prune`](Self::prune) in the background (commands call it at start-up; every run ends
    /// with one); a failure is logged.
    pub fn prune_in_background(&self) {
        self.keeper.prune_in_background();
    }

    /// Holds `key` live for as long as this delegator lives (or until [`unpin`](Self::unpin)).
    fn pin(&self, key: &str) {
        let guard = self.keeper.live.hold(key);
        self.pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_string(), guard);
    }

    fn unpin(&self, key: &str) {
        self.pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Uses `root` as the project root when the MCP client names none (instead of
    /// `CLAUDE_PROJECT_DIR` or the cwd).
    pub fn with_project_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.default_root = Some(root.into());
        self
    }

    /// The project root for the call in progress: the client's first root, else the default.
    fn project_root(&self, roots: &ClientRoots) -> Option<PathBuf> {
        roots
            .project_root()
            .map(Path::to_path_buf)
            .or_else(|| self.default_root.clone())
    }

    /// What `repo` means here (see the tool's description).
    fn resolve(&self, repo: Option<&str>, roots: &ClientRoots) -> Result<Project, DelegateError> {
        let root = self.project_root(roots);
        let repo = repo.map(str::trim);
        match repo {
            None => Ok(root.map_or(Project::Empty, |path| Project::Local {
                path,
                required: false,
            })),
            Some("none") => Ok(Project::Empty),
            Some(".") => match root {
                Some(path) => Ok(Project::Local {
                    path,
                    required: true,
                }),
                None => Err(not_a_repo(
                    "there is no project root here (no client root, no CLAUDE_PROJECT_DIR, no \
                     current directory); pass repo as a path",
                )),
            },
            Some(url) if url.starts_with("https://") => Ok(Project::Url(url.to_string())),
            Some(url) if url.contains("://") || url.starts_with("git@") => {
                Err(DelegateError::Invalid(format!(
                    "repo {url:?}: only https:// URLs can be cloned by the server; pass a path to \
                     a local work tree instead"
                )))
            }
            Some("") => Err(DelegateError::Invalid(
                "repo is empty: omit it for your project root, or pass a path, `.` or `none`"
                    .into(),
            )),
            Some(path) => {
                let path = Path::new(path);
                let path = match (&root, path.is_absolute()) {
                    (_, true) => path.to_path_buf(),
                    (Some(root), false) => root.join(path),
                    (None, false) => {
                        return Err(DelegateError::Invalid(format!(
                            "repo {}: a relative path needs a project root; pass an absolute \
                             path",
                            path.display()
                        )));
                    }
                };
                Ok(Project::Local {
                    path,
                    required: true,
                })
            }
        }
    }

    /// Refuses a path outside the project root and the client's roots (symlinks resolved).
    async fn check_inside(&self, path: &Path, roots: &ClientRoots) -> Result<(), DelegateError> {
        let real = tokio::fs::canonicalize(path)
            .await
            .map_err(|e| not_a_repo(&format!("{}: {e}", path.display())))?;
        let mut allowed = roots.roots.clone();
        allowed.extend(self.default_root.clone());
        for root in allowed {
            if let Ok(root) = tokio::fs::canonicalize(&root).await
                && real.starts_with(&root)
            {
                return Ok(());
            }
        }
        Err(DelegateError::Repo {
            kind: "outside_project".into(),
            message: format!(
                "{} is outside your project ({}); pass a path inside it",
                path.display(),
                self.project_root(roots)
                    .map_or_else(|| "none".into(), |r| r.display().to_string())
            ),
        })
    }

    /// Snapshots the project `repo` names and uploads it; `None` for an empty sandbox or a URL
    /// (then `repo` stays as it is). The snapshot stays in `tmp/` until kept.
    async fn prepare(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        repo: Option<&str>,
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<Option<(Snapshot, String)>, DelegateError> {
        let roots = ClientRoots::current();
        let (path, required) = match self.resolve(repo, &roots)? {
            Project::Empty | Project::Url(_) => return Ok(None),
            Project::Local { path, required } => (path, required),
        };
        if required && repo != Some(".") {
            self.check_inside(&path, &roots).await?;
        }
        let snapshot = match Snapshot::take(&path, self.limits, &self.state_dir.join("tmp")).await {
            Ok(snapshot) => snapshot,
            Err(RepoError::NotARepo(_)) if !required => return Ok(None),
            Err(e) => return Err(repo_error(e)),
        };
        let line = describe(&snapshot);
        tracing::info!("{line}");
        if let Some(progress) = progress {
            // Before the run's own events, which count from 1.
            let _ = progress.try_send(Progress {
                seq: 0,
                message: line,
            });
        }
        let base = repo_base(&snapshot);
        let id = self
            .inner
            .upload_snapshot(caller, workspace, &base, &snapshot.bundle())
            .await?;
        Ok(Some((snapshot, id)))
    }

    fn snapshot_dir(&self, key: &str) -> PathBuf {
        self.state_dir.join("snapshots").join(key)
    }

    fn run_file(&self, run_id: &str) -> PathBuf {
        self.state_dir.join("runs").join(format!("{run_id}.json"))
    }

    fn sandbox_file(&self, sandbox_id: &str) -> PathBuf {
        self.state_dir
            .join("sandboxes")
            .join(format!("{sandbox_id}.json"))
    }

    /// Keeps `snapshot` as `snapshots/<key>`; a failure is logged, not returned (the run has
    /// started and stands; only applying it later will not work).
    async fn keep(&self, snapshot: Snapshot, key: &str) -> bool {
        match snapshot.keep(&self.snapshot_dir(key)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(key, error = %e, "could not keep the snapshot; its change cannot be applied here");
                false
            }
        }
    }

    async fn record_run(&self, run_id: &str, record: &RunRecord) {
        if let Err(e) = write_json(&self.run_file(run_id), record).await {
            tracing::warn!(run = run_id, error = %e, "could not record the run's snapshot");
        }
    }

    /// Downloads a run's change and writes it into the caller's repository.
    async fn apply_run(
        &self,
        caller: &Caller,
        run_id: &str,
        record: &RunRecord,
        branch: BranchName,
        to: ApplyTo,
    ) -> Result<delegate_repo::Applied, DelegateError> {
        if let Some(why) = self.keeper.expire_if_old(&record.snapshot).await {
            return Err(pruned(run_id, &why));
        }
        let _in_use = self.keeper.live.hold(&record.snapshot);
        let dir = self.snapshot_dir(&record.snapshot);
        let snapshot = match Snapshot::open(&dir).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                return Err(match self.keeper.pruned(&record.snapshot).await {
                    Some(why) => pruned(run_id, &why),
                    None => DelegateError::NotFound(format!(
                        "the snapshot run {run_id} started from is gone from this machine ({e})"
                    )),
                });
            }
        };
        prune::touch(&dir).await;
        let tmp = self.state_dir.join("tmp");
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| DelegateError::Internal(format!("{}: {e}", tmp.display())))?;
        let bundle = tempfile::Builder::new()
            .prefix("change-")
            .suffix(".bundle")
            .tempfile_in(&tmp)
            .map_err(|e| DelegateError::Internal(format!("{}: {e}", tmp.display())))?
            .into_temp_path();
        let commit = self.inner.download_change(caller, run_id, &bundle).await?;
        let _one_at_a_time = self.applying.lock().await;
        delegate_repo::apply(&snapshot, &bundle, &commit, &branch, to)
            .await
            .map_err(repo_error)
    }

    /// The end of a waited run: write its change as `apply` says, into `result`.
    async fn apply_at_end(
        &self,
        caller: &Caller,
        result: &mut RunResult,
        record: &RunRecord,
        mode: ApplyMode,
    ) {
        let to = match mode {
            ApplyMode::None => return,
            ApplyMode::Branch => ApplyTo::Branch,
            ApplyMode::Worktree => ApplyTo::Worktree,
        };
        if result.commit.is_none() {
            return;
        }
        let previous = match &record.sandbox_id {
            Some(sandbox_id) => read_json::<SandboxRecord>(&self.sandbox_file(sandbox_id)).await,
            None => None,
        };
        let branch = match (&record.sandbox_id, previous) {
            (Some(_), Some(previous)) => BranchName::Forward {
                name: previous.branch,
                from: previous.commit,
            },
            (Some(sandbox_id), None) => BranchName::Fresh(short_id(sandbox_id)),
            (None, _) => BranchName::Fresh(short_id(&result.run_id)),
        };
        match self
            .apply_run(caller, &result.run_id, record, branch, to)
            .await
        {
            Ok(applied) => {
                if let (Some(sandbox_id), Some(branch), Some(commit)) =
                    (&record.sandbox_id, &applied.branch, &applied.commit)
                {
                    let state = SandboxRecord {
                        branch: branch.trim_start_matches("delegate/").to_string(),
                        commit: commit.clone(),
                    };
                    if let Err(e) = write_json(&self.sandbox_file(sandbox_id), &state).await {
                        tracing::warn!(sandbox = %sandbox_id, error = %e, "could not record the sandbox's branch");
                    }
                }
                result.branch = applied.branch;
                result.commit = applied.commit.or(result.commit.take());
                result.applied = (to == ApplyTo::Worktree).then_some(applied.applied);
                result.conflicts = applied.conflicts;
                result.apply_message = Some(applied.message);
            }
            Err(e) => {
                tracing::warn!(run = %result.run_id, error = %e, "the change was not applied");
                result.apply_message = Some(format!(
                    "your repository was left as it was: {e}; the change is still on the server \
                     (apply_changes, or the patch)"
                ));
            }
        }
    }

    /// A parent of attempts: each attempt shares the parent's snapshot, so `apply_changes`
    /// takes any attempt's run id. Once they have all ended, each attempt with a change gets a
    /// branch of its own (never the working tree: there is no one change to apply there).
    async fn keep_attempts(
        &self,
        caller: &Caller,
        result: &mut RunResult,
        record: &RunRecord,
        apply: Option<ApplyMode>,
    ) {
        for attempt in &result.attempts {
            if safe_id(&attempt.run_id) {
                self.record_run(&attempt.run_id, record).await;
            }
        }
        if !result.status.is_terminal() || apply == Some(ApplyMode::None) {
            return;
        }
        let mut written = 0;
        for attempt in result.attempts.iter_mut().filter(|a| a.commit.is_some()) {
            let branch = BranchName::Fresh(short_id(&attempt.run_id));
            match self
                .apply_run(caller, &attempt.run_id, record, branch, ApplyTo::Branch)
                .await
            {
                Ok(applied) => {
                    written += usize::from(applied.branch.is_some());
                    attempt.branch = applied.branch;
                }
                Err(e) => {
                    tracing::warn!(run = %attempt.run_id, error = %e, "the attempt's branch was not written");
                }
            }
        }
        result.apply_message = Some(format!(
            "{written} branch(es) written, one per attempt with a change; your working tree was \
             left alone: apply the attempt you choose with apply_changes and its run_id"
        ));
    }

    /// [`Delegator::run_in_sandbox`] up to the apply at its end, the run's snapshot kept and
    /// held in use meanwhile.
    async fn run_and_keep(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError> {
        if input.snapshot.is_some() {
            return Err(DelegateError::Invalid(
                "snapshot is set by delegate itself; pass repo instead".into(),
            ));
        }
        let repo = input.repo.as_deref();
        let url = repo.is_some_and(|r| r.starts_with("https://"));
        if input.git_ref.is_some() && !url {
            return Err(DelegateError::Invalid(
                "ref is only for an https:// repo; a local repository goes in as it is now".into(),
            ));
        }
        // A warm sandbox has its files; a repository given with one goes in all the same (a
        // local agent takes it, in a work dir of its own; the server refuses it for others).
        let warm_as_it_is = input.sandbox_id.is_some() && repo.is_none();
        let (snapshot, inner_input) = if url || warm_as_it_is {
            (None, input.clone())
        } else {
            let prepared = tokio::select! {
                prepared = self.prepare(caller, input.workspace.as_deref(), repo, Some(&progress)) => prepared?,
                () = cancel.cancelled() => {
                    return Err(DelegateError::Invalid("cancelled before the run started".into()));
                }
            };
            match prepared {
                Some((snapshot, id)) => (
                    Some(snapshot),
                    RunInSandboxInput {
                        snapshot: Some(id),
                        repo: None,
                        ..input.clone()
                    },
                ),
                // An empty sandbox: nothing of `repo` is for the inner delegator to read.
                None => (
                    None,
                    RunInSandboxInput {
                        repo: None,
                        ..input.clone()
                    },
                ),
            }
        };
        // A warm sandbox's snapshot is in use for the whole run (a fresh one is in `tmp/`, which
        // a prune leaves alone while it is young).
        let _warm_in_use = input
            .sandbox_id
            .as_deref()
            .map(|id| self.keeper.live.hold(&format!("sandbox-{id}")));
        let mut result = self
            .inner
            .run_in_sandbox(caller, inner_input, progress.clone(), cancel)
            .await?;

        let key = match (&snapshot, &input.sandbox_id) {
            (Some(_), _) => format!("run-{}", result.run_id),
            (None, Some(sandbox_id)) => format!("sandbox-{sandbox_id}"),
            (None, None) => String::new(),
        };
        let _in_use = (!key.is_empty()).then(|| self.keeper.live.hold(&key));
        if !result.status.is_terminal() && !key.is_empty() {
            // The run goes on without us; `apply_changes` needs its snapshot when it ends.
            self.pin(&key);
        }
        let record = match (snapshot, &input.sandbox_id) {
            (Some(snapshot), _) => {
                if safe_id(&result.run_id) && self.keep(snapshot, &key).await {
                    let record = RunRecord {
                        snapshot: key,
                        sandbox_id: None,
                    };
                    self.record_run(&result.run_id, &record).await;
                    Some(record)
                } else {
                    None
                }
            }
            (None, Some(sandbox_id)) if safe_id(sandbox_id) && safe_id(&result.run_id) => {
                if tokio::fs::try_exists(self.snapshot_dir(&key))
                    .await
                    .unwrap_or(false)
                {
                    prune::touch(&self.snapshot_dir(&key)).await;
                    let record = RunRecord {
                        snapshot: key,
                        sandbox_id: Some(sandbox_id.clone()),
                    };
                    self.record_run(&result.run_id, &record).await;
                    Some(record)
                } else {
                    None
                }
            }
            _ => None,
        };
        let Some(record) = record else {
            return Ok(result);
        };
        if let Some(base) = read_base(&self.snapshot_dir(&record.snapshot)).await {
            result.base = Some(base);
        }
        if !result.attempts.is_empty() {
            self.keep_attempts(caller, &mut result, &record, input.apply)
                .await;
            return Ok(result);
        }
        if result.status.is_terminal() {
            let mode = input.apply.unwrap_or(ApplyMode::Branch);
            self.apply_at_end(caller, &mut result, &record, mode).await;
            if let Some(message) = &result.apply_message {
                let _ = progress.try_send(Progress {
                    seq: result.event_count + 1,
                    message: message.clone(),
                });
            }
        }
        Ok(result)
    }
}

#[async_trait]
impl Delegator for LocalDelegator {
    async fn run_in_sandbox(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError> {
        let outcome = self.run_and_keep(caller, input, progress, cancel).await;
        // The run's own snapshot is no longer in use (unless the run goes on): it may be the one
        // that has to go.
        self.prune_in_background();
        outcome
    }

    async fn create_sandbox(
        &self,
        caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError> {
        if input.snapshot.is_some() {
            return Err(DelegateError::Invalid(
                "snapshot is set by delegate itself; pass repo instead".into(),
            ));
        }
        let repo = input.repo.as_deref();
        let url = repo.is_some_and(|r| r.starts_with("https://"));
        if input.git_ref.is_some() && !url {
            return Err(DelegateError::Invalid(
                "ref is only for an https:// repo; a local repository goes in as it is now".into(),
            ));
        }
        if url {
            return self.inner.create_sandbox(caller, input).await;
        }
        let prepared = self
            .prepare(caller, input.workspace.as_deref(), repo, None)
            .await?;
        let Some((snapshot, id)) = prepared else {
            let input = CreateSandboxInput {
                repo: None,
                ..input
            };
            return self.inner.create_sandbox(caller, input).await;
        };
        let base = repo_base(&snapshot);
        let mut info = self
            .inner
            .create_sandbox(
                caller,
                CreateSandboxInput {
                    snapshot: Some(id),
                    repo: None,
                    ..input
                },
            )
            .await?;
        if safe_id(&info.sandbox_id) {
            let key = format!("sandbox-{}", info.sandbox_id);
            // Its runs need it for as long as the sandbox lives.
            self.pin(&key);
            self.keep(snapshot, &key).await;
        }
        info.base.get_or_insert(base);
        Ok(info)
    }

    async fn stream_session(
        &self,
        caller: &Caller,
        input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError> {
        self.inner.stream_session(caller, input).await
    }

    async fn list_sandboxes(
        &self,
        caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError> {
        self.inner.list_sandboxes(caller, input).await
    }

    async fn delete_sandbox(
        &self,
        caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError> {
        let key = format!("sandbox-{}", input.sandbox_id);
        let deleted = self.inner.delete_sandbox(caller, input).await?;
        self.unpin(&key);
        Ok(deleted)
    }

    async fn cancel_run(
        &self,
        caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError> {
        self.inner.cancel_run(caller, input).await
    }

    fn local_repositories(&self) -> bool {
        true
    }

    async fn apply_changes(
        &self,
        caller: &Caller,
        input: ApplyChangesInput,
    ) -> Result<ApplyChangesOutput, DelegateError> {
        let run_id = input.run_id.trim();
        let record = if safe_id(run_id) {
            read_json::<RunRecord>(&self.run_file(run_id)).await
        } else {
            None
        };
        let Some(record) = record else {
            return Err(DelegateError::NotFound(format!(
                "run {run_id} did not start from a repository on this machine; its patch is at \
                 the run's patch_url (or the resource delegate://runs/{run_id}/patch)"
            )));
        };
        let to = match input.to.unwrap_or(ApplyTarget::Branch) {
            ApplyTarget::Branch => ApplyTo::Branch,
            ApplyTarget::Worktree => ApplyTo::Worktree,
        };
        let applied = self
            .apply_run(
                caller,
                run_id,
                &record,
                BranchName::Fresh(short_id(run_id)),
                to,
            )
            .await?;
        Ok(ApplyChangesOutput {
            run_id: run_id.to_string(),
            branch: applied.branch,
            commit: applied.commit,
            applied: applied.applied,
            conflicts: applied.conflicts,
            message: applied.message,
        })
    }

    async fn upload_snapshot(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        base: &RepoBase,
        bundle: &Path,
    ) -> Result<String, DelegateError> {
        self.inner
            .upload_snapshot(caller, workspace, base, bundle)
            .await
    }

    async fn download_change(
        &self,
        caller: &Caller,
        run_id: &str,
        out: &Path,
    ) -> Result<String, DelegateError> {
        self.inner.download_change(caller, run_id, out).await
    }

    async fn read_patch(
        &self,
        caller: &Caller,
        run_id: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, DelegateError> {
        self.inner.read_patch(caller, run_id, max_bytes).await
    }
}

/// An id from the server used as a file name: letters, digits, `_` and `-` only.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The branch name of an id: the last 8 characters of its random part (`run_0192...9f3a2b1c` ->
/// `9f3a2b1c`); a UUIDv7's first characters are its timestamp and repeat for minutes.
pub fn short_id(id: &str) -> String {
    let tail = id.rsplit('_').next().unwrap_or(id);
    let clean: String = tail
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let start = clean.len().saturating_sub(8);
    let short = &clean[start..];
    if short.is_empty() {
        "run".into()
    } else {
        short.to_string()
    }
}

/// The error of an apply whose snapshot was pruned.
fn pruned(run_id: &str, why: &prune::Pruned) -> DelegateError {
    DelegateError::Repo {
        kind: "snapshot_pruned".into(),
        message: format!(
            "the snapshot run {run_id} started from is gone from this machine: {}; its change is \
             still in the run's patch (patch_url, or the resource delegate://runs/{run_id}/patch) \
             while the server keeps the run",
            why.explain()
        ),
    }
}

fn not_a_repo(message: &str) -> DelegateError {
    DelegateError::Repo {
        kind: "not_a_repo".into(),
        message: message.to_string(),
    }
}

/// A repository failure as a tool error of its kind; the message is delegate_repo's, which names
/// sizes and the largest paths for `repo_too_large`.
fn repo_error(e: RepoError) -> DelegateError {
    DelegateError::Repo {
        kind: e.kind().to_string(),
        message: e.to_string(),
    }
}

fn repo_base(snapshot: &Snapshot) -> RepoBase {
    RepoBase::from(&snapshot.base)
}

/// The `base` of a kept snapshot.
async fn read_base(dir: &Path) -> Option<RepoBase> {
    Snapshot::open(dir).await.ok().map(|s| repo_base(&s))
}

/// One line about a snapshot: "snapshot of /path: 1,234 files, 12.3 MiB, with uncommitted
/// changes".
fn describe(snapshot: &Snapshot) -> String {
    format!(
        "snapshot of {}: {} files, {}{}",
        snapshot.root.display(),
        thousands(snapshot.files),
        delegate_repo::snapshot::human(snapshot.bytes),
        if snapshot.base.dirty {
            ", with uncommitted changes"
        } else {
            ""
        }
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes `value` to `path` as JSON, atomically (a temp file renamed over it).
async fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent).await?;
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, json).await?;
    tokio::fs::rename(&tmp, path).await
}

async fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_take_the_random_tail() {
        assert_eq!(short_id("run_0192f3aabbccddeeff00112233445566"), "33445566");
        assert_eq!(short_id("sbx_abc"), "abc");
        assert_eq!(short_id("_"), "run");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn ids_used_as_file_names_are_plain() {
        assert!(safe_id("run_0192f3"));
        for bad in ["", "../x", "a/b", "a b", ".", "x\0"] {
            assert!(!safe_id(bad), "{bad:?}");
        }
    }
}

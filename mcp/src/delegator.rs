//! The seam between the MCP tools and whatever executes them: an embedded orchestrator, or a
//! remote delegate server spoken to over its REST API. Tools stay thin; they call a [`Delegator`].

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::tools::{
    ApplyChangesInput, ApplyChangesOutput, CancelRunInput, CancelRunOutput, CreateSandboxInput,
    DeleteSandboxInput, DeleteSandboxOutput, ListSandboxesInput, ListSandboxesOutput,
    RunInSandboxInput, SandboxInfo, StreamSessionInput, StreamSessionOutput,
};
use crate::types::{RepoBase, RunResult};

/// The message of the trait's default methods: only delegate's own clients on the caller's
/// machine move repositories.
fn no_repositories(what: &str) -> DelegateError {
    DelegateError::Invalid(format!(
        "{what} needs delegate on your machine (`delegate mcp`, `delegate run`): this connection \
         cannot read or write your files; download the change from the run's `patch_url` instead"
    ))
}

/// The `client` of a [`Caller`] that is delegate's own command line (`delegate run`, `delegate
/// apply`), so runs are attributed to the CLI rather than to an MCP client.
pub const CLI_CLIENT: &str = "delegate-cli";

/// Who is calling: resolved by the transport (the local user over stdio, the owner of the bearer
/// token over HTTP) before any tool runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user every permission check and every created run or sandbox is attributed to.
    pub user_id: String,
    /// The API token used, if any.
    pub token_id: Option<String>,
    /// The MCP client's name from `initialize` (e.g. `claude-code`), for "delegated by".
    pub client: Option<String>,
    /// A workspace-scoped API token acts only in this workspace (id); `None`: wherever the user
    /// is a member.
    pub workspace_id: Option<String>,
}

/// The MCP client's roots (`roots/list`: the directories it works in, first the project), as
/// the service learnt them for the tool call in progress. The service runs a delegator's
/// `run_in_sandbox` and `create_sandbox` inside [`ClientRoots::scope`], and a delegator on the
/// caller's machine (`LocalDelegator`) reads them with [`ClientRoots::current`]: the project root
/// then is the first root, and a `repo` path must lie inside one of them. Kept out of [`Caller`]
/// and the tool inputs on purpose: it is a fact about the connection, never something a model or
/// a remote caller sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRoots {
    /// Local directories (from `file://` roots), the client's order.
    pub roots: Vec<PathBuf>,
}

tokio::task_local! {
    static CLIENT_ROOTS: ClientRoots;
}

impl ClientRoots {
    /// Runs `work` with these roots as [`ClientRoots::current`].
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CLIENT_ROOTS.scope(self, work).await
    }

    /// The roots of the call in progress; none outside [`ClientRoots::scope`].
    pub fn current() -> ClientRoots {
        CLIENT_ROOTS.try_with(Clone::clone).unwrap_or_default()
    }

    /// The project root the client named: its first root.
    pub fn project_root(&self) -> Option<&Path> {
        self.roots.first().map(PathBuf::as_path)
    }
}

/// A failure the calling model can act on; becomes a tool error (`isError: true`) with the
/// message as text. Protocol faults never get here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    /// Bad arguments the schema could not catch (a path with `..`, a task over 1 MiB, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The run, sandbox or workspace does not exist, or the caller may not see it.
    #[error("not found: {0}")]
    NotFound(String),
    /// The sandbox cannot take the request now (busy with a run, paused, failed).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A quota or concurrency limit; try again later.
    #[error("limit reached: {0}")]
    Limit(String),
    /// The workspace's budget for the day is spent; the message says when it resets.
    #[error("budget exceeded: {0}")]
    BudgetExceeded(String),
    /// A repository could not be used or changed; `kind` is `not_a_repo`, `repo_busy`,
    /// `repo_too_large`, `repo_unreachable`, `bad_change`, `conflict`, `repo_failed`, or (on the
    /// caller's machine) `outside_project` and `snapshot_pruned`.
    #[error("{kind}: {message}")]
    Repo {
        /// The error kind, to branch on.
        kind: String,
        /// What went wrong and what to do, in words.
        message: String,
    },
    /// Something failed on delegate's side; the caller can only retry or report it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One line of progress while a run is in flight (sent as `notifications/progress`).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The event's sequence number; strictly increasing.
    pub seq: u64,
    /// A short human line, e.g. `tool write hello.txt (completed)`.
    pub message: String,
}

/// What the MCP tools call: one method per tool, each taking the tool's input and returning its
/// output. `delegate serve` implements it over its own services (embedded mode), and
/// [`RemoteDelegator`](crate::RemoteDelegator) over a server's REST API, so both modes serve the
/// same tools.
#[async_trait]
pub trait Delegator: Send + Sync + 'static {
    /// Starts a run. With `wait` (the default) it returns when the run ends, sending one
    /// [`Progress`] per meaningful event on `progress`; cancelling `cancel` cancels the run.
    async fn run_in_sandbox(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError>;

    /// Creates a warm sandbox that keeps its files between runs.
    async fn create_sandbox(
        &self,
        caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError>;

    /// Long-polls: returns at once when events after the cursor exist, else waits up to
    /// `wait_seconds` for some (or for the run to end).
    async fn stream_session(
        &self,
        caller: &Caller,
        input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError>;

    /// The sandboxes of one workspace the caller can see, newest first.
    async fn list_sandboxes(
        &self,
        caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError>;

    /// Deletes a sandbox and its files, cancelling a run in it first.
    async fn delete_sandbox(
        &self,
        caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError>;

    /// Cancels a run and reports its status after the cancel took effect.
    async fn cancel_run(
        &self,
        caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError>;

    /// Whether this delegator reads repositories on the caller's machine, so a client's MCP
    /// roots are worth asking for.
    fn local_repositories(&self) -> bool {
        false
    }

    /// Applies a finished run's change to the caller's repository (`apply_changes`).
    async fn apply_changes(
        &self,
        _caller: &Caller,
        _input: ApplyChangesInput,
    ) -> Result<ApplyChangesOutput, DelegateError> {
        Err(no_repositories("apply_changes"))
    }

    /// Hands the server a snapshot bundle of the caller's repository (made by
    /// `delegate_repo::Snapshot`) for the next `run_in_sandbox` or `create_sandbox` in
    /// `workspace`; returns the id to pass as their `snapshot`. The server reads it as hostile
    /// input; it is used once and expires.
    async fn upload_snapshot(
        &self,
        _caller: &Caller,
        _workspace: Option<&str>,
        _base: &RepoBase,
        _bundle: &Path,
    ) -> Result<String, DelegateError> {
        Err(no_repositories("a local repository"))
    }

    /// Writes a run's change to `out` as a git bundle of the commits from the snapshot the
    /// sandbox started from to the run's commit (ref `refs/delegate/export`); returns that
    /// commit.
    async fn download_change(
        &self,
        _caller: &Caller,
        _run_id: &str,
        _out: &Path,
    ) -> Result<String, DelegateError> {
        Err(no_repositories("downloading a change as a bundle"))
    }

    /// A run's whole binary-safe patch (`git apply` takes it); a `Limit` error past
    /// `max_bytes`, a `NotFound` when the run has no change.
    async fn read_patch(
        &self,
        _caller: &Caller,
        run_id: &str,
        _max_bytes: u64,
    ) -> Result<Vec<u8>, DelegateError> {
        Err(DelegateError::NotFound(format!(
            "no patch for run {run_id} here"
        )))
    }
}

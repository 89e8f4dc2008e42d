//! The seam between the MCP tools and whatever executes them: an embedded orchestrator, or a
//! remote delegate server spoken to over its REST API. Tools stay thin; they call a [`Delegator`].

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::tools::{
    CancelRunInput, CancelRunOutput, CreateSandboxInput, DeleteSandboxInput, DeleteSandboxOutput,
    ListSandboxesInput, ListSandboxesOutput, RunInSandboxInput, SandboxInfo, StreamSessionInput,
    StreamSessionOutput,
};
use crate::types::RunResult;

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
}

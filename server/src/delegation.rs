//! The MCP tools' [`Delegator`] for an orchestrator in this process: resolves the caller's
//! workspace, checks the caller's role there (one place, `authorize`), and maps orchestrator
//! results and errors to the tool contract.

use std::time::Duration;

use async_trait::async_trait;
use delegate_mcp::delegator::{Caller, DelegateError, Delegator, Progress};
use delegate_mcp::tools::{
    CancelRunInput, CancelRunOutput, CreateSandboxInput, DeleteSandboxInput, DeleteSandboxOutput,
    ListSandboxesInput, ListSandboxesOutput, RunInSandboxInput, SandboxInfo, StreamSessionInput,
    StreamSessionOutput,
};
use delegate_mcp::types::{Event, RunResult, RunStatus};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::orchestrator::{Orchestrator, OrchestratorError, RunRequest, SandboxRequest};
use crate::store::{Role, Run, Sandbox, StoreError, Workspace};

/// The most events one `stream_session` call returns.
const MAX_EVENTS_PER_POLL: usize = 500;
/// `stream_session`'s longest wait.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct EmbeddedDelegator {
    orch: Orchestrator,
}

impl EmbeddedDelegator {
    pub fn new(orch: Orchestrator) -> Self {
        EmbeddedDelegator { orch }
    }
}

/// What a tool call wants to do in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Read,
    Write,
}

impl EmbeddedDelegator {
    /// The workspace a call acts in, if the caller may do `action` there. Guests only read.
    async fn authorize(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        action: Action,
    ) -> Result<Workspace, DelegateError> {
        let store = self.orch.store();
        let memberships = store
            .workspaces_of_user(&caller.user_id)
            .await
            .map_err(internal)?;
        let found = match workspace {
            None => memberships.into_iter().next(),
            Some(w) => memberships
                .into_iter()
                .find(|(ws, _)| ws.slug == w || ws.id == w),
        };
        // Not a member and no such workspace look the same: no probing for names.
        let (ws, role) = found.ok_or_else(|| {
            DelegateError::NotFound(match workspace {
                Some(w) => format!("workspace {w:?}"),
                None => "no workspace for this user".into(),
            })
        })?;
        if action == Action::Write && role < Role::Developer {
            return Err(DelegateError::Invalid(format!(
                "your role in workspace {} is {}: read-only",
                ws.slug,
                role.as_str()
            )));
        }
        Ok(ws)
    }

    /// A sandbox the caller may act on.
    async fn sandbox(
        &self,
        caller: &Caller,
        id: &str,
        action: Action,
    ) -> Result<Sandbox, DelegateError> {
        let not_found = || DelegateError::NotFound(format!("sandbox {id:?}"));
        if !crate::ids::is_id("sbx", id) {
            return Err(not_found());
        }
        let sandbox = match self.orch.store().sandbox(id).await {
            Ok(s) => s,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(internal(e)),
        };
        match self
            .authorize(caller, Some(&sandbox.workspace_id), action)
            .await
        {
            Ok(_) => Ok(sandbox),
            Err(DelegateError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    /// A run the caller may act on.
    async fn run(&self, caller: &Caller, id: &str, action: Action) -> Result<Run, DelegateError> {
        let not_found = || DelegateError::NotFound(format!("run {id:?}"));
        let run = match self.orch.run(id).await {
            Ok(r) => r,
            Err(OrchestratorError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(map_err(e)),
        };
        match self
            .authorize(caller, Some(&run.workspace_id), action)
            .await
        {
            Ok(_) => Ok(run),
            Err(DelegateError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    fn info(&self, s: &Sandbox) -> SandboxInfo {
        let public = self.orch.settings().public_url.as_deref();
        SandboxInfo {
            sandbox_id: s.id.clone(),
            name: s.name.clone(),
            status: s.status,
            backend: s.backend.clone(),
            kind: s.kind.as_str().to_string(),
            status_reason: s.status_reason.clone(),
            watch_url: public.map(|u| format!("{}/sandboxes/{}", u.trim_end_matches('/'), s.id)),
            opencode_url: self.orch.opencode_url(&s.id),
            created_at: s.created_at,
        }
    }
}

#[async_trait]
impl Delegator for EmbeddedDelegator {
    async fn run_in_sandbox(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError> {
        let ws = match &input.sandbox_id {
            Some(id) => {
                let sandbox = self.sandbox(caller, id, Action::Write).await?;
                self.authorize(caller, Some(&sandbox.workspace_id), Action::Write)
                    .await?
            }
            None => {
                self.authorize(caller, input.workspace.as_deref(), Action::Write)
                    .await?
            }
        };
        let created_by = match (&caller.client, &caller.token_id) {
            (Some(client), _) => format!("mcp:{client}"),
            (None, Some(token)) => format!("token:{token}"),
            (None, None) => format!("user:{}", caller.user_id),
        };
        let request = RunRequest {
            task: input.task,
            sandbox_id: input.sandbox_id,
            workspace: Some(ws.id),
            files: input.files.unwrap_or_default(),
            model: input.model,
            agent: input.agent,
            timeout: input.timeout_seconds.map(Duration::from_secs),
            continue_session: input.continue_session.unwrap_or(false),
            created_by: Some(created_by),
        };
        let (run_id, _) = self.orch.start_run(request).await.map_err(map_err)?;
        if input.wait == Some(false) {
            return self.orch.result(&run_id).await.map_err(map_err);
        }
        let mut events = Box::pin(self.orch.events(&run_id, 0));
        let mut cancelled = false;
        loop {
            tokio::select! {
                e = events.next() => match e {
                    Some(Ok(e)) => {
                        if is_meaningful(&e) {
                            // Progress is best effort: a slow client must not stall the run.
                            let _ = progress.try_send(Progress { seq: e.seq, message: crate::events::describe(&e) });
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(run = %run_id, error = %e, "event stream broke; waiting for the result");
                        break;
                    }
                    None => break,
                },
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    self.orch.cancel_run(&run_id).await.map_err(map_err)?;
                }
            }
        }
        self.orch.wait(&run_id).await.map_err(map_err)
    }

    async fn create_sandbox(
        &self,
        caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError> {
        let ws = self
            .authorize(caller, input.workspace.as_deref(), Action::Write)
            .await?;
        let sandbox = self
            .orch
            .create_sandbox(SandboxRequest {
                workspace: Some(ws.id),
                name: input.name,
                files: input.files.unwrap_or_default(),
                idle_timeout: input.idle_timeout_seconds.map(Duration::from_secs),
                created_by: Some(format!("user:{}", caller.user_id)),
            })
            .await
            .map_err(map_err)?;
        Ok(self.info(&sandbox))
    }

    async fn stream_session(
        &self,
        caller: &Caller,
        input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError> {
        let run = match (&input.run_id, &input.sandbox_id) {
            (Some(run_id), _) => self.run(caller, run_id, Action::Read).await?,
            (None, Some(sandbox_id)) => {
                let sandbox = self.sandbox(caller, sandbox_id, Action::Read).await?;
                let latest = self
                    .orch
                    .store()
                    .list_runs(&sandbox.workspace_id, Some(&sandbox.id), 1)
                    .await
                    .map_err(internal)?;
                latest.into_iter().next().ok_or_else(|| {
                    DelegateError::NotFound(format!("sandbox {sandbox_id} has no runs yet"))
                })?
            }
            (None, None) => {
                return Err(DelegateError::Invalid("give run_id or sandbox_id".into()));
            }
        };
        let after = input.after.unwrap_or(0);
        let wait = Duration::from_secs(input.wait_seconds.unwrap_or(20)).min(MAX_WAIT);

        // Status first: the closing event is written before a run's terminal status, so a run seen
        // terminal here has every event stored already.
        let mut status = run.status;
        let mut stream = Box::pin(self.orch.events(&run.id, after));
        let mut events: Vec<Event> = Vec::new();
        let first = if status.is_terminal() {
            stream.next().await
        } else {
            tokio::time::timeout(wait, stream.next())
                .await
                .ok()
                .flatten()
        };
        if let Some(e) = first {
            events.push(e.map_err(internal)?);
            // Whatever else is ready now comes along, up to the page size.
            while events.len() < MAX_EVENTS_PER_POLL {
                match stream.next().now_or_never() {
                    Some(Some(e)) => events.push(e.map_err(internal)?),
                    _ => break,
                }
            }
        }
        if !status.is_terminal() {
            status = self.orch.run(&run.id).await.map_err(map_err)?.status;
        }
        let next_cursor = events.last().map_or(after, |e| e.seq);
        let done = status.is_terminal()
            && events.len() < MAX_EVENTS_PER_POLL
            && self
                .orch
                .store()
                .events_after(&run.id, next_cursor, 1)
                .await
                .map_err(internal)?
                .is_empty();
        Ok(StreamSessionOutput {
            run_id: run.id,
            status: if status.is_terminal() {
                status
            } else {
                RunStatus::Running
            },
            events,
            next_cursor,
            done,
        })
    }

    async fn list_sandboxes(
        &self,
        caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError> {
        let ws = self
            .authorize(caller, input.workspace.as_deref(), Action::Read)
            .await?;
        let sandboxes = self
            .orch
            .list_sandboxes(Some(&ws.id))
            .await
            .map_err(map_err)?;
        Ok(ListSandboxesOutput {
            sandboxes: sandboxes.iter().map(|s| self.info(s)).collect(),
        })
    }

    async fn delete_sandbox(
        &self,
        caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError> {
        let sandbox = self
            .sandbox(caller, &input.sandbox_id, Action::Write)
            .await?;
        self.orch
            .delete_sandbox(&sandbox.id)
            .await
            .map_err(map_err)?;
        let sandbox = self
            .orch
            .store()
            .sandbox(&sandbox.id)
            .await
            .map_err(internal)?;
        Ok(DeleteSandboxOutput {
            sandbox_id: sandbox.id,
            status: sandbox.status,
        })
    }

    async fn cancel_run(
        &self,
        caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError> {
        let run = self.run(caller, &input.run_id, Action::Write).await?;
        self.orch.cancel_run(&run.id).await.map_err(map_err)?;
        let result = self.orch.wait(&run.id).await.map_err(map_err)?;
        Ok(CancelRunOutput {
            run_id: run.id,
            status: result.status,
        })
    }
}

/// Progress notifications skip bookkeeping events nobody would want a notification for.
fn is_meaningful(e: &Event) -> bool {
    !matches!(e.kind.as_str(), "step_start" | "stderr")
}

fn map_err(e: OrchestratorError) -> DelegateError {
    match e {
        OrchestratorError::BadInput(m) => DelegateError::Invalid(m),
        OrchestratorError::NotFound(m) => DelegateError::NotFound(m),
        e @ (OrchestratorError::Busy(_) | OrchestratorError::NotRunning { .. }) => {
            DelegateError::Unavailable(e.to_string())
        }
        OrchestratorError::Limit(m) => DelegateError::Limit(m),
        OrchestratorError::Sandbox(e) => {
            DelegateError::Unavailable(format!("the sandbox failed: {e}"))
        }
        e @ (OrchestratorError::Transition(_) | OrchestratorError::Store(_)) => internal(e),
    }
}

/// Logs the cause once; the caller gets a generic message.
fn internal(e: impl std::fmt::Display) -> DelegateError {
    tracing::error!(error = %e, "internal error in a tool call");
    DelegateError::Internal("delegate hit an internal error; the server log has details".into())
}

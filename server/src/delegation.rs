//! The service layer both the MCP tools and the REST API call: resolves the caller's workspace,
//! checks the caller's role there (one place, [`Service::authorize`]), and maps orchestrator
//! results and errors to the wire types of `delegate_mcp`. [`EmbeddedDelegator`] is the MCP
//! tools' [`Delegator`] over it; `crate::api` is the REST surface over it.

use std::time::Duration;

use async_trait::async_trait;
use delegate_mcp::delegator::{Caller, DelegateError, Delegator, Progress};
use delegate_mcp::tools::{
    CancelRunInput, CancelRunOutput, CreateSandboxInput, DeleteSandboxInput, DeleteSandboxOutput,
    ListSandboxesInput, ListSandboxesOutput, RunInSandboxInput, SandboxInfo, StreamSessionInput,
    StreamSessionOutput,
};
use delegate_mcp::types::{Event, RunResult, RunStatus, SandboxStatus, Usage};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ids::Origin;
use crate::orchestrator::{Orchestrator, RunRequest, SandboxRequest};
use crate::store::{Role, Run, Sandbox, StoreError, Workspace};

/// The most events one `stream_session` call returns.
pub const MAX_EVENTS_PER_POLL: usize = 500;
/// `stream_session`'s longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(delegate_mcp::tools::MAX_WAIT_SECONDS);

// One error for the service and the orchestrator; each surface maps it once.
pub use crate::error::{Error, Result, internal};

pub use crate::roles::Action;

/// The operations of delegate on behalf of a [`Caller`]; cheap to clone.
#[derive(Clone)]
pub struct Service {
    orch: Orchestrator,
}

/// The MCP tools' [`Delegator`] for an orchestrator in this process.
pub struct EmbeddedDelegator {
    service: Service,
}

impl EmbeddedDelegator {
    pub fn new(orch: Orchestrator) -> Self {
        EmbeddedDelegator {
            service: Service::new(orch),
        }
    }
}

impl Service {
    pub fn new(orch: Orchestrator) -> Self {
        Service { orch }
    }

    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    /// The workspace a call acts in, if the caller may do `action` there. Guests only read.
    pub async fn authorize(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        action: Action,
    ) -> Result<Workspace> {
        self.authorize_role(caller, workspace, action)
            .await
            .map(|(ws, _)| ws)
    }

    /// [`Self::authorize`], also returning the caller's role there.
    pub async fn authorize_role(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        action: Action,
    ) -> Result<(Workspace, Role)> {
        let store = self.orch.store();
        let memberships = store
            .workspaces_of_user(&caller.user_id)
            .await
            .map_err(internal)?;
        // A workspace-scoped token sees only its workspace: every other one looks unknown.
        let mut memberships = memberships
            .into_iter()
            .filter(|(ws, _)| caller.workspace_id.as_ref().is_none_or(|id| *id == ws.id));
        let found = match workspace {
            None => memberships.next(),
            Some(w) => memberships.find(|(ws, _)| ws.slug == w || ws.id == w),
        };
        // Not a member and no such workspace look the same: no probing for names.
        let (ws, role) = found.ok_or_else(|| {
            Error::NotFound(match workspace {
                Some(w) => format!("workspace {w:?}"),
                None => "no workspace for this user".into(),
            })
        })?;
        if !crate::roles::allows(role, action) {
            return Err(Error::Forbidden(format!(
                "your role in workspace {} is {}: not allowed to do this",
                ws.slug,
                role.as_str()
            )));
        }
        Ok((ws, role))
    }

    /// A sandbox the caller may act on.
    pub async fn sandbox(&self, caller: &Caller, id: &str, action: Action) -> Result<Sandbox> {
        self.sandbox_in_workspace(caller, id, action)
            .await
            .map(|(sandbox, _)| sandbox)
    }

    /// [`Self::sandbox`] with its workspace, read and authorized once.
    async fn sandbox_in_workspace(
        &self,
        caller: &Caller,
        id: &str,
        action: Action,
    ) -> Result<(Sandbox, Workspace)> {
        let not_found = || Error::NotFound(format!("sandbox {id:?}"));
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
            Ok(ws) => Ok((sandbox, ws)),
            Err(Error::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    /// A run the caller may act on.
    pub async fn run(&self, caller: &Caller, id: &str, action: Action) -> Result<Run> {
        let not_found = || Error::NotFound(format!("run {id:?}"));
        let run = match self.orch.run(id).await {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        match self
            .authorize(caller, Some(&run.workspace_id), action)
            .await
        {
            Ok(_) => Ok(run),
            Err(Error::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    /// A sandbox as the wire types report it.
    pub fn info(&self, s: &Sandbox) -> SandboxInfo {
        let public = self.orch.settings().public_url.as_deref();
        SandboxInfo {
            sandbox_id: s.id.clone(),
            name: s.name.clone(),
            status: s.status,
            backend: s.backend.clone(),
            kind: s.kind.as_str().to_string(),
            status_reason: s.status_reason.clone(),
            watch_url: public.map(|u| format!("{}/sandboxes/{}", u.trim_end_matches('/'), s.id)),
            // Browsers go through the gateway when there is one (the loopback URL is the server's).
            opencode_url: self
                .orch
                .opencode_url(&s.id)
                .map(|local| self.orch.settings().sandbox_origin(&s.id).unwrap_or(local)),
            created_at: s.created_at,
        }
    }

    /// Starts a run; with `wait` (default true) returns when it ends, sending progress and
    /// cancelling the run when `cancel` fires.
    pub async fn run_in_sandbox(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult> {
        // A warm sandbox is read and authorized once here; the orchestrator takes it as it is.
        let (ws, sandbox) = match &input.sandbox_id {
            Some(id) => {
                let (sandbox, ws) = self.sandbox_in_workspace(caller, id, Action::Write).await?;
                (ws, Some(sandbox))
            }
            None => {
                let ws = self
                    .authorize(caller, input.workspace.as_deref(), Action::Write)
                    .await?;
                (ws, None)
            }
        };
        let created_by = match (&caller.client, &caller.token_id) {
            (Some(client), _) => Origin::Mcp(client.clone()),
            (None, Some(token)) => Origin::Token(token.clone()),
            (None, None) => Origin::User(caller.user_id.clone()),
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
        let started = match sandbox {
            Some(sandbox) => self.orch.start_run_in(sandbox, request).await,
            None => self.orch.start_run(request).await,
        };
        let (run_id, _) = started?;
        if input.wait == Some(false) {
            return self.orch.result(&run_id).await;
        }
        let mut events = Box::pin(self.orch.events(&run_id, 0));
        let mut cancelled = false;
        loop {
            tokio::select! {
                e = events.next() => match e {
                    Some(Ok(e)) => {
                        if e.is_progress() {
                            // Progress is best effort: a slow client must not stall the run.
                            let _ = progress.try_send(Progress { seq: e.seq, message: e.describe() });
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
                    self.orch.cancel_run(&run_id).await?;
                }
            }
        }
        self.orch.wait(&run_id).await
    }

    pub async fn create_sandbox(
        &self,
        caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo> {
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
                created_by: Some(Origin::User(caller.user_id.clone())),
            })
            .await?;
        Ok(self.info(&sandbox))
    }

    /// Events after a cursor, long-polling up to `wait_seconds` (default `default_wait`) when there
    /// are none yet; at most `limit` (and [`MAX_EVENTS_PER_POLL`]) events.
    pub async fn stream_session(
        &self,
        caller: &Caller,
        input: StreamSessionInput,
        default_wait: Duration,
        limit: Option<usize>,
    ) -> Result<StreamSessionOutput> {
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
                    Error::NotFound(format!("sandbox {sandbox_id} has no runs yet"))
                })?
            }
            (None, None) => {
                return Err(Error::Invalid("give run_id or sandbox_id".into()));
            }
        };
        let page = limit
            .unwrap_or(MAX_EVENTS_PER_POLL)
            .clamp(1, MAX_EVENTS_PER_POLL);
        let after = input.after.unwrap_or(0);
        let wait = input
            .wait_seconds
            .map_or(default_wait, Duration::from_secs)
            .min(MAX_WAIT);

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
            while events.len() < page {
                match stream.next().now_or_never() {
                    Some(Some(e)) => events.push(e.map_err(internal)?),
                    _ => break,
                }
            }
        }
        if !status.is_terminal() {
            status = self.orch.run(&run.id).await?.status;
        }
        let next_cursor = events.last().map_or(after, |e| e.seq);
        let done = status.is_terminal()
            && events.len() < page
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

    pub async fn list_sandboxes(
        &self,
        caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput> {
        let ws = self
            .authorize(caller, input.workspace.as_deref(), Action::Read)
            .await?;
        let sandboxes = self.orch.list_sandboxes(Some(&ws.id)).await?;
        Ok(ListSandboxesOutput {
            sandboxes: sandboxes.iter().map(|s| self.info(s)).collect(),
        })
    }

    pub async fn get_sandbox(&self, caller: &Caller, id: &str) -> Result<SandboxInfo> {
        let sandbox = self.sandbox(caller, id, Action::Read).await?;
        Ok(self.info(&sandbox))
    }

    pub async fn delete_sandbox(
        &self,
        caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput> {
        let sandbox = self
            .sandbox(caller, &input.sandbox_id, Action::Write)
            .await?;
        self.orch.delete_sandbox(&sandbox.id).await?;
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

    /// Pauses a warm sandbox (files kept); refused while a run is in it.
    pub async fn pause_sandbox(&self, caller: &Caller, id: &str) -> Result<SandboxInfo> {
        let sandbox = self.sandbox(caller, id, Action::Write).await?;
        match sandbox.status {
            SandboxStatus::Paused => return Ok(self.info(&sandbox)),
            SandboxStatus::Running => {}
            status => {
                return Err(Error::Conflict(format!(
                    "sandbox {} is {status}, not running",
                    sandbox.id
                )));
            }
        }
        self.orch.pause_sandbox(&sandbox.id).await?;
        self.fresh_info(&sandbox.id).await
    }

    /// Starts a paused sandbox again.
    pub async fn resume_sandbox(&self, caller: &Caller, id: &str) -> Result<SandboxInfo> {
        let sandbox = self.sandbox(caller, id, Action::Write).await?;
        self.orch.resume_sandbox(&sandbox.id).await?;
        self.fresh_info(&sandbox.id).await
    }

    async fn fresh_info(&self, id: &str) -> Result<SandboxInfo> {
        let sandbox = self.orch.store().sandbox(id).await.map_err(internal)?;
        Ok(self.info(&sandbox))
    }

    pub async fn cancel_run(
        &self,
        caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput> {
        let run = self.run(caller, &input.run_id, Action::Write).await?;
        self.orch.cancel_run(&run.id).await?;
        let result = self.orch.wait(&run.id).await?;
        Ok(CancelRunOutput {
            run_id: run.id,
            status: result.status,
        })
    }

    /// A run's result as it stands.
    pub async fn get_run(&self, caller: &Caller, id: &str) -> Result<RunResult> {
        let run = self.run(caller, id, Action::Read).await?;
        self.orch.result(&run.id).await
    }

    /// Runs of a workspace (or of one sandbox), newest first.
    pub async fn list_runs(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        sandbox_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunResult>> {
        let runs = self.runs(caller, workspace, sandbox_id, limit).await?;
        Ok(runs.into_iter().map(|(_, result)| result).collect())
    }

    /// Runs of a workspace (or of one sandbox), newest first, each with its result: authorized
    /// once for the whole list, read in two queries (the runs, then all their event counts).
    pub async fn runs(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        sandbox_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(Run, RunResult)>> {
        let (workspace_id, sandbox_id) = match sandbox_id {
            Some(id) => {
                let sandbox = self.sandbox(caller, id, Action::Read).await?;
                if let Some(w) = workspace {
                    let ws = self.authorize(caller, Some(w), Action::Read).await?;
                    if ws.id != sandbox.workspace_id {
                        return Err(Error::NotFound(format!("sandbox {id:?}")));
                    }
                }
                (sandbox.workspace_id, Some(sandbox.id))
            }
            None => (
                self.authorize(caller, workspace, Action::Read).await?.id,
                None,
            ),
        };
        let store = self.orch.store();
        let runs = store
            .list_runs(&workspace_id, sandbox_id.as_deref(), limit)
            .await
            .map_err(internal)?;
        let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let counts: std::collections::HashMap<String, u64> = store
            .event_counts(&ids)
            .await
            .map_err(internal)?
            .into_iter()
            .collect();
        let public = self.orch.settings().public_url.as_deref();
        Ok(runs
            .into_iter()
            .map(|run| {
                let events = counts.get(&run.id).copied().unwrap_or(0);
                let result = crate::orchestrator::result_of(&run, events, public);
                (run, result)
            })
            .collect())
    }

    /// Usage summed over a workspace's model calls, and how many runs it has.
    pub async fn usage(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
    ) -> Result<(Workspace, Usage, u64)> {
        let ws = self.authorize(caller, workspace, Action::Read).await?;
        let (usage, runs) = self
            .orch
            .store()
            .workspace_usage(&ws.id)
            .await
            .map_err(internal)?;
        Ok((ws, usage, runs))
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
        Ok(self
            .service
            .run_in_sandbox(caller, input, progress, cancel)
            .await?)
    }

    async fn create_sandbox(
        &self,
        caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError> {
        Ok(self.service.create_sandbox(caller, input).await?)
    }

    async fn stream_session(
        &self,
        caller: &Caller,
        input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError> {
        Ok(self
            .service
            .stream_session(
                caller,
                input,
                Duration::from_secs(delegate_mcp::tools::DEFAULT_WAIT_SECONDS),
                None,
            )
            .await?)
    }

    async fn list_sandboxes(
        &self,
        caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError> {
        Ok(self.service.list_sandboxes(caller, input).await?)
    }

    async fn delete_sandbox(
        &self,
        caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError> {
        Ok(self.service.delete_sandbox(caller, input).await?)
    }

    async fn cancel_run(
        &self,
        caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError> {
        Ok(self.service.cancel_run(caller, input).await?)
    }
}

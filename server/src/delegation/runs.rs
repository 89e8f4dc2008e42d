//! Runs on behalf of a caller: start one (and follow it to the end), read its events from a
//! cursor, cancel it, list them, sum their usage.

use std::time::Duration;

use delegate_mcp::delegator::{Caller, Progress};
use delegate_mcp::tools::{
    CancelRunOutput, RunInSandboxInput, StreamSessionInput, StreamSessionOutput,
};
use delegate_mcp::types::{Event, RunResult, RunStatus, Usage};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Action, Error, RepoInput, Result, Service, internal};
use crate::ids::{Origin, RunId, SandboxId};
use crate::orchestrator::RunRequest;
use crate::store::{Run, Workspace};

/// The most events one `stream_session` call returns.
pub const MAX_EVENTS_PER_POLL: usize = 500;
/// `stream_session`'s longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(delegate_mcp::tools::MAX_WAIT_SECONDS);

impl Service {
    /// Starts a run; with `wait` (default true) returns when it ends, sending progress and
    /// cancelling the run when `cancel` fires.
    pub async fn run_in_sandbox(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult> {
        // Before anything is read or written: a bad `attempts` starts nothing.
        let attempts = input.attempts.unwrap_or(1);
        crate::orchestrator::check_attempts(attempts, input.sandbox_id.is_some())?;
        // A warm sandbox is read and authorized once here; the orchestrator takes it as it is.
        let sandbox_id = input
            .sandbox_id
            .as_deref()
            .map(str::parse::<SandboxId>)
            .transpose()?;
        let (ws, sandbox) = match &sandbox_id {
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
        let snapshot = self
            .starting_point(
                caller,
                &ws,
                sandbox.as_ref(),
                RepoInput {
                    repo: input.repo.as_deref(),
                    git_ref: input.git_ref.as_deref(),
                    snapshot: input.snapshot.as_deref(),
                },
            )
            .await?;
        let created_by = match (&caller.client, &caller.token_id) {
            (Some(client), None) if client == delegate_mcp::delegator::CLI_CLIENT => Origin::Cli,
            // The client's name is its own say; who it authenticated as is not.
            (Some(client), token) => Origin::McpAs {
                client: client.clone(),
                user: caller.user_id.clone(),
                token: token.clone(),
            },
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
            snapshot,
            created_by: Some(created_by),
            network: input.network,
            inputs: crate::orchestrator::SandboxInputs {
                env: input.env.unwrap_or_default(),
                secrets: input.secrets.unwrap_or_default(),
                setup: input.setup,
                image: input.image,
            },
            max_cost_usd: input.max_cost_usd,
        };
        if attempts > 1 {
            let wait = input.wait != Some(false);
            return self
                .run_attempts(request, attempts, wait, progress, cancel)
                .await;
        }
        let started = match sandbox {
            Some(sandbox) => self.orch.start_run_in(sandbox, request).await,
            None => self.orch.start_run(request).await,
        };
        let (run_id, _) = started?;
        // Each link works once: the progress line and the result get one each.
        if let Some(url) = self.watch_link(run_id.as_str()) {
            let _ = progress.try_send(Progress {
                seq: 0,
                message: format!("watch it live: {url}"),
            });
        }
        if input.wait == Some(false) {
            return self.with_watch_url(self.orch.result(&run_id).await);
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
        self.with_watch_url(self.orch.wait(&run_id).await)
    }

    /// [`Self::run_in_sandbox`] with `attempts` over 1: starts them under a parent and, with
    /// `wait`, follows them all (progress lines say which attempt) until every one has ended.
    async fn run_attempts(
        &self,
        request: RunRequest,
        attempts: u64,
        wait: bool,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult> {
        let started = self.orch.start_attempts(request, attempts).await?;
        let parent = started.parent;
        if let Some(url) = self.watch_link(parent.as_str()) {
            let _ = progress.try_send(Progress {
                seq: 0,
                message: format!("watch them live: {url}"),
            });
        }
        if wait {
            let streams = started.attempts.iter().enumerate().map(|(i, (run_id, _))| {
                Box::pin(self.orch.events(run_id, 0).map(move |e| (i + 1, e)))
            });
            let mut events = futures::stream::select_all(streams);
            let mut cancelled = false;
            // Every attempt numbers its own events: progress gets one sequence of its own.
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    e = events.next() => match e {
                        Some((n, Ok(e))) => {
                            if e.is_progress() {
                                seq += 1;
                                let message = format!("attempt {n}: {}", e.describe());
                                let _ = progress.try_send(Progress { seq, message });
                            }
                        }
                        Some((n, Err(e))) => {
                            tracing::warn!(parent = %parent, attempt = n, error = %e, "event stream broke; waiting for the result");
                        }
                        None => break,
                    },
                    _ = cancel.cancelled(), if !cancelled => {
                        cancelled = true;
                        let runs = self.orch.attempts_of(&parent).await?;
                        self.orch.cancel_attempts(&runs).await?;
                    }
                }
            }
        }
        let runs = self.orch.attempts_of(&parent).await?;
        let result = if wait {
            self.orch.wait_attempts(&parent, &runs).await
        } else {
            self.orch.parent_result(&parent, &runs).await
        };
        self.with_watch_url(result)
    }

    /// A run's row, or a row standing for a parent of attempts; `NotFound` for neither.
    pub(super) async fn run_or_parent(&self, id: &RunId) -> Result<Run> {
        match self.orch.run(id).await {
            Err(Error::NotFound(what)) => {
                let attempts = self.orch.attempts_of(id).await?;
                crate::orchestrator::parent_row(id, &attempts).ok_or(Error::NotFound(what))
            }
            found => found,
        }
    }

    /// `result` with a fresh watch link when this service makes them and the server has none.
    fn with_watch_url(&self, result: Result<RunResult>) -> Result<RunResult> {
        result.map(|mut run| {
            if run.watch_url.is_none() {
                run.watch_url = self.watch_link(&run.run_id);
            }
            run
        })
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
            (Some(_), Some(_)) => {
                return Err(Error::Invalid("give run_id or sandbox_id, not both".into()));
            }
            (Some(run_id), None) => self.run(caller, &run_id.parse()?, Action::Read).await?,
            (None, Some(sandbox_id)) => {
                let sandbox = self
                    .sandbox(caller, &sandbox_id.parse()?, Action::Read)
                    .await?;
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
        self.events_page(run, input.after, input.wait_seconds, default_wait, limit)
            .await
    }

    /// [`Self::stream_session`] for a run the caller may read: its events after `after` (default
    /// 0), long-polling up to `wait_seconds` (default `default_wait`).
    pub async fn events_page(
        &self,
        run: Run,
        after: Option<u64>,
        wait_seconds: Option<u64>,
        default_wait: Duration,
        limit: Option<usize>,
    ) -> Result<StreamSessionOutput> {
        // The row was read by id, so its id is well formed.
        let run_id: RunId = run.id.parse()?;
        if is_parent(&run) {
            return self
                .parent_events_page(run_id, after, wait_seconds, default_wait)
                .await;
        }
        let page = limit
            .unwrap_or(MAX_EVENTS_PER_POLL)
            .clamp(1, MAX_EVENTS_PER_POLL);
        let after = after.unwrap_or(0);
        let wait = wait_seconds
            .map_or(default_wait, Duration::from_secs)
            .min(MAX_WAIT);

        // Status first: the closing event is written before a run's terminal status, so a run seen
        // terminal here has every event stored already.
        let mut status = run.status;
        let mut stream = Box::pin(self.orch.events(&run_id, after));
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
            status = self.orch.run(&run_id).await?.status;
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

    /// A parent's page: one `attempt` event per ended attempt, in the order they ended,
    /// long-polling up to `wait_seconds` for the next one to end.
    async fn parent_events_page(
        &self,
        parent: RunId,
        after: Option<u64>,
        wait_seconds: Option<u64>,
        default_wait: Duration,
    ) -> Result<StreamSessionOutput> {
        let after = after.unwrap_or(0);
        let wait = wait_seconds
            .map_or(default_wait, Duration::from_secs)
            .min(MAX_WAIT);
        let runs = self.orch.attempts_of(&parent).await?;
        let (runs, events) = self.orch.attempt_events(&parent, runs, after, wait).await?;
        let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
        let status = delegate_mcp::types::parent_status(&statuses);
        let next_cursor = events.last().map_or(after, |e| e.seq);
        Ok(StreamSessionOutput {
            run_id: parent.to_string(),
            status: if status.is_terminal() {
                status
            } else {
                RunStatus::Running
            },
            done: status.is_terminal() && next_cursor >= runs.len() as u64,
            events,
            next_cursor,
        })
    }

    /// Cancels a run (writers only) and waits until it has ended, so the reply says how it ended.
    /// A parent's attempts are all cancelled.
    pub async fn cancel_run(&self, caller: &Caller, id: &RunId) -> Result<CancelRunOutput> {
        let run = self.run(caller, id, Action::Write).await?;
        if is_parent(&run) {
            let runs = self.orch.attempts_of(id).await?;
            self.orch.cancel_attempts(&runs).await?;
            let result = self.orch.wait_attempts(id, &runs).await?;
            return Ok(CancelRunOutput {
                run_id: run.id,
                status: result.status,
            });
        }
        self.orch.cancel_run(id).await?;
        let result = self.orch.wait(id).await?;
        Ok(CancelRunOutput {
            run_id: run.id,
            status: result.status,
        })
    }

    /// A run's result as it stands; a parent's lists its attempts.
    pub async fn get_run(&self, caller: &Caller, id: &RunId) -> Result<RunResult> {
        let run = self.run(caller, id, Action::Read).await?;
        if is_parent(&run) {
            let runs = self.orch.attempts_of(id).await?;
            return self.orch.parent_result(id, &runs).await;
        }
        self.orch.result(id).await
    }

    /// Waits for a run (or every attempt of a parent) to end; its result then.
    pub async fn wait_run(&self, caller: &Caller, id: &RunId) -> Result<RunResult> {
        let run = self.run(caller, id, Action::Read).await?;
        if is_parent(&run) {
            let runs = self.orch.attempts_of(id).await?;
            return self.orch.wait_attempts(id, &runs).await;
        }
        self.orch.wait(id).await?;
        self.get_run(caller, id).await
    }

    /// Runs of a workspace (or of one sandbox), newest first.
    pub async fn list_runs(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        sandbox_id: Option<&SandboxId>,
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
        sandbox_id: Option<&SandboxId>,
        limit: i64,
    ) -> Result<Vec<(Run, RunResult)>> {
        let (workspace_id, sandbox_id) = match sandbox_id {
            Some(id) => {
                let sandbox = self.sandbox(caller, id, Action::Read).await?;
                if let Some(w) = workspace {
                    let ws = self.authorize(caller, Some(w), Action::Read).await?;
                    if ws.id != sandbox.workspace_id {
                        return Err(Error::NotFound(format!("sandbox {:?}", id.as_str())));
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

/// Whether a row stands for a parent of attempts (which has no sandbox of its own).
pub fn is_parent(run: &Run) -> bool {
    run.sandbox_id.is_empty()
}

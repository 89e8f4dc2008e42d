//! The run facade: start, cancel, follow and read runs, whether they execute in this process or
//! in another server on the same database. Driving a run is `run.rs`.

use std::time::Duration;

use delegate_mcp::types::{Event, RunResult, RunStatus};
use futures::Stream;

use super::{LiveLog, Orchestrator, REMOTE_POLL, Result, RunRequest, follow, lock, run};
use crate::ids::{RunId, SandboxId, now_ms};
use crate::store::{Run, RunOutcome, Sandbox, StoreError};

/// How long [`Orchestrator::wait`] follows a run that executes in another process.
pub const REMOTE_WAIT: Duration = Duration::from_secs(30);

impl Orchestrator {
    /// Starts a run and returns its id and sandbox id at once; follow it with [`Self::events`] or
    /// [`Self::wait`]. Input is checked before anything is written.
    pub async fn start_run(&self, req: RunRequest) -> Result<(RunId, SandboxId)> {
        run::start(self.clone(), req, None, None).await
    }

    /// [`Self::start_run`] in a warm sandbox the caller has already read (to authorize the
    /// caller there, say): it is not read again; status and reservation are checked as usual.
    pub async fn start_run_in(
        &self,
        sandbox: Sandbox,
        mut req: RunRequest,
    ) -> Result<(RunId, SandboxId)> {
        req.sandbox_id = Some(sandbox.id.clone());
        run::start(self.clone(), req, Some(sandbox), None).await
    }

    /// Cancels a run; it ends `cancelled` once its processes are gone. A run executing in another
    /// process (several servers on one database) gets a request in the store, which that process
    /// acts on within about 0.5 s; follow it with [`Self::wait`].
    pub async fn cancel_run(&self, run_id: &RunId) -> Result<()> {
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
                    self.inner
                        .store
                        .request_cancel(run_id.as_str(), now_ms())
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// A run's row as stored, without any access check (the service layer does those).
    pub async fn run(&self, run_id: &RunId) -> Result<Run> {
        Ok(self.inner.store.run(run_id.as_str()).await?)
    }

    /// The events of a run after `after`, then live ones until it ends.
    pub fn events(
        &self,
        run_id: &RunId,
        after: u64,
    ) -> impl Stream<Item = Result<Event, StoreError>> + Send + use<> {
        let live = lock(&self.inner.live).get(run_id).map(|(_, l)| l.clone());
        follow(self.inner.store.clone(), run_id.clone(), after, live)
    }

    /// Waits for a run to end and returns its result. A run executing in another process is
    /// followed through the store for at most [`REMOTE_WAIT`]; then its result as it stands.
    pub async fn wait(&self, run_id: &RunId) -> Result<RunResult> {
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
    pub async fn result(&self, run_id: &RunId) -> Result<RunResult> {
        let run = self.run(run_id).await?;
        let event_count = self.inner.store.event_count(run_id.as_str()).await?;
        let mut result = result_of(&run, event_count, self.inner.settings.public_url.as_deref());
        if result.status == RunStatus::Queued {
            result.queue_position = self.queue_position(run_id.as_str()).await?;
        }
        Ok(result)
    }
}

impl LiveLog {
    async fn wait_done(&mut self) -> bool {
        self.done_rx().wait_for(|d| *d).await.is_ok()
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
        // Queued runs say so (and their place, see `Orchestrator::result`); a starting one is
        // already running as far as the caller is concerned.
        status: if run.status.is_terminal() || run.status == RunStatus::Queued {
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
        queue_position: None,
        error: o.error.clone(),
        watch_url: public_url.map(|u| format!("{}/runs/{}", u.trim_end_matches('/'), run.id)),
        base: o.base.clone(),
        commit: o.commit.clone(),
        // Only a client on the caller's machine writes branches (and says so in its result).
        branch: None,
        applied: None,
        conflicts: Vec::new(),
        apply_message: None,
        patch_url: o
            .commit
            .as_ref()
            .and(public_url)
            .map(|u| format!("{}/api/runs/{}/patch", u.trim_end_matches('/'), run.id)),
        egress: o.egress,
        parent_run_id: run.parent_run_id.clone(),
        attempts: Vec::new(),
        omitted: None,
    }
}

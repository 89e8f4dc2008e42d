//! Driving one run: check the request, make (or borrow) the sandbox, run opencode, turn its output
//! into the event log, enforce the timeout and cancellation, then collect changes and usage and
//! write the outcome with one checked transition.

use std::time::Duration;

use delegate_mcp::types::{ErrorKind, RunError, RunStatus, SandboxStatus, Usage};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::log::RunLog;
use super::{Orchestrator, OrchestratorError, Result, RunRequest, Warm, lock};
use crate::ids::{is_id, new_id, now_ms};
use crate::opencode::events::{AgentEvent, ParsedEvent, ServeEvent, ServeTracker, parse_run_line};
use crate::opencode::serve::ServeClient;
use crate::sandbox::{AgentOutput, RunSpec, SandboxError, SandboxSpec};
use crate::state::run_transition;
use crate::store::{Run, RunOutcome, SandboxKind};

/// How long a killed run may take to report its exit before delegate stops waiting.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// stderr lines kept as events per run; the rest are counted, not stored.
const MAX_STDERR_EVENTS: usize = 500;
/// stderr lines kept for the error message of a failed run.
const STDERR_TAIL: usize = 20;

/// Where the run executes.
enum Target {
    /// A fresh sandbox made for this run and destroyed after it.
    Ephemeral(SandboxSpec),
    /// A warm sandbox's opencode serve.
    Warm(Warm),
}

pub(super) async fn start(orch: Orchestrator, req: RunRequest) -> Result<(String, String)> {
    // Everything the caller controls is checked before anything is written.
    if req.task.trim().is_empty() {
        return Err(OrchestratorError::BadInput(
            "task: must not be empty".into(),
        ));
    }
    if req.task.len() > super::MAX_TASK_BYTES {
        return Err(OrchestratorError::BadInput(format!(
            "task: {} bytes, at most {} (1 MiB); put large inputs in `files`",
            req.task.len(),
            super::MAX_TASK_BYTES
        )));
    }
    crate::sandbox::workdir::validate_files(&req.files)?;
    let timeout = req.timeout.unwrap_or(orch.inner.settings.default_timeout);
    if timeout.is_zero() || timeout > super::MAX_TIMEOUT {
        return Err(OrchestratorError::BadInput(
            "timeout_seconds: must be between 1 and 86400".into(),
        ));
    }
    for (field, value) in [("model", &req.model), ("agent", &req.agent)] {
        if let Some(v) = value
            && (v.is_empty()
                || v.len() > 200
                || v.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(OrchestratorError::BadInput(format!(
                "{field}: 1 to 200 characters, no spaces"
            )));
        }
    }
    let permit = orch.inner.slots.clone().try_acquire_owned().map_err(|_| {
        OrchestratorError::Limit(format!(
            "too many runs at once (limit {}); retry later or raise DELEGATE_MAX_CONCURRENT_RUNS",
            orch.inner.settings.max_concurrent_runs
        ))
    })?;

    let (sandbox_id, workspace_id, target) = match &req.sandbox_id {
        Some(id) => {
            if !req.files.is_empty() {
                return Err(OrchestratorError::BadInput(
                    "files: only for a fresh sandbox; a warm sandbox already has its files".into(),
                ));
            }
            if !is_id("sbx", id) {
                return Err(OrchestratorError::NotFound(format!("sandbox {id:?}")));
            }
            let sandbox = orch.inner.store.sandbox(id).await?;
            super::reserve(&orch.inner, &sandbox.id)?;
            let warm = match sandbox.status {
                // A paused sandbox wakes up for the run.
                SandboxStatus::Paused => orch.resume_reserved(&sandbox).await,
                SandboxStatus::Running => {
                    lock(&orch.inner.warm).get(id).cloned().ok_or_else(|| {
                        OrchestratorError::BadInput(format!(
                            "sandbox {id} is not served by this delegate process"
                        ))
                    })
                }
                status => Err(OrchestratorError::NotRunning {
                    id: sandbox.id.clone(),
                    status,
                }),
            };
            let warm = match warm {
                Ok(w) => w,
                Err(e) => {
                    lock(&orch.inner.busy).remove(&sandbox.id);
                    return Err(e);
                }
            };
            (sandbox.id, sandbox.workspace_id, Target::Warm(warm))
        }
        None => {
            let ws = orch.workspace(req.workspace.as_deref()).await?;
            let (sandbox, spec) = orch
                .insert_sandbox(
                    &ws,
                    SandboxKind::Ephemeral,
                    None,
                    req.files.clone(),
                    None,
                    req.created_by.clone(),
                )
                .await?;
            (sandbox.id, ws.id, Target::Ephemeral(spec))
        }
    };
    if matches!(target, Target::Ephemeral(_)) {
        // A fresh sandbox nobody else knows yet; a warm one was reserved above.
        super::reserve(&orch.inner, &sandbox_id)?;
    }

    let run_id = new_id("run");
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| orch.inner.settings.model.clone());
    let run = Run {
        id: run_id.clone(),
        sandbox_id: sandbox_id.clone(),
        workspace_id,
        task: req.task.clone(),
        model: Some(model.clone()),
        agent: req.agent.clone(),
        status: RunStatus::Queued,
        timeout_s: timeout.as_secs() as i64,
        created_by: req.created_by.clone(),
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
        outcome: RunOutcome::default(),
    };
    let inserted = match orch.inner.store.insert_run(&run).await {
        Ok(()) => {
            orch.inner
                .store
                .set_run_owner(&run.id, &orch.inner.instance_id)
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = inserted {
        lock(&orch.inner.busy).remove(&sandbox_id);
        return Err(e.into());
    }
    lock(&orch.inner.busy).insert(sandbox_id.clone(), run_id.clone());

    let cancel = orch.inner.shutdown.child_token();
    let (log, live) = RunLog::new(&run_id, orch.inner.store.clone());
    lock(&orch.inner.live).insert(run_id.clone(), (cancel.clone(), live));

    let spec = RunSpec {
        run_id: run_id.clone(),
        title: title_of(&req.task),
        task: req.task,
        model,
        agent: req.agent,
        continue_session: req.continue_session,
    };
    tokio::spawn(drive(orch, run, spec, target, timeout, cancel, log, permit));
    Ok((run_id, sandbox_id))
}

/// Runs to the end, whatever happens; the outcome always lands in the store.
#[allow(clippy::too_many_arguments)]
async fn drive(
    orch: Orchestrator,
    run: Run,
    spec: RunSpec,
    target: Target,
    timeout: Duration,
    cancel: CancellationToken,
    mut log: RunLog,
    _permit: OwnedSemaphorePermit,
) {
    let inner = &orch.inner;
    let deadline = Instant::now() + timeout;
    let mut state = RunState::new(run.status);
    let ephemeral = matches!(target, Target::Ephemeral(_));

    let outcome = async {
        state
            .advance(&orch, &run.id, RunStatus::Starting, &mut log)
            .await?;
        let warm = match target {
            Target::Ephemeral(sandbox_spec) => {
                let sandbox = inner.store.sandbox(&run.sandbox_id).await?;
                tokio::select! {
                    r = orch.start_sandbox(&sandbox, &sandbox_spec) => { r?; }
                    _ = cancel.cancelled() => return Ok(Finish::cancelled()),
                    _ = tokio::time::sleep_until(deadline) => return Ok(Finish::timed_out(timeout)),
                }
                None
            }
            Target::Warm(w) => Some(w),
        };
        if let Ok(mut active) = inner.active_runs.write() {
            active.insert(run.sandbox_id.clone(), run.id.clone());
        }
        state
            .advance(&orch, &run.id, RunStatus::Running, &mut log)
            .await?;
        let finish = match warm {
            None => headless(&orch, &run, &spec, deadline, timeout, &cancel, &mut log).await?,
            Some(w) => served(&orch, &run, &spec, w, deadline, timeout, &cancel, &mut log).await?,
        };
        Ok::<Finish, OrchestratorError>(finish)
    }
    .await;

    let mut finish = match outcome {
        Ok(f) => f,
        Err(e) => Finish::failed(
            match &e {
                OrchestratorError::Sandbox(SandboxError::ImageMissing(_)) => {
                    ErrorKind::ImageMissing
                }
                OrchestratorError::Sandbox(_) => ErrorKind::SandboxFailed,
                _ => ErrorKind::Internal,
            },
            e.to_string(),
        ),
    };

    // What changed, even when the run failed: partial work is worth seeing.
    if inner
        .store
        .sandbox(&run.sandbox_id)
        .await
        .is_ok_and(|s| s.status == SandboxStatus::Running && s.backend != super::LOCAL_BACKEND)
    {
        match inner
            .backend
            .collect_changes(
                &run.sandbox_id,
                inner.settings.diff_max_bytes,
                &format!("delegate: run {}", run.id),
            )
            .await
        {
            Ok((changed, diff, truncated)) => {
                finish.outcome.changed_files = changed;
                finish.outcome.diff = diff;
                finish.outcome.diff_truncated = truncated;
            }
            Err(e) => tracing::warn!(run = %run.id, error = %e, "could not collect changes"),
        }
    } else if let Some(session) = &finish.session
        && let Some((changed, diff, truncated)) = orch.local_changes(&run.sandbox_id, session).await
    {
        // A local sandbox's files are not ours to diff: its opencode says what the session changed.
        finish.outcome.changed_files = changed;
        finish.outcome.diff = diff;
        finish.outcome.diff_truncated = truncated;
    }
    if let Ok(mut active) = inner.active_runs.write() {
        active.remove(&run.sandbox_id);
    }
    // Usage as the proxy measured it; opencode's own count when the proxy saw nothing.
    inner.proxy.flush(Duration::from_secs(2)).await;
    if let Ok((usage, ttft)) = inner.store.run_usage(&run.id).await {
        if usage.total_tokens() > 0 {
            let cost = if usage.cost_usd > 0.0 {
                usage.cost_usd
            } else {
                finish.outcome.usage.cost_usd
            };
            finish.outcome.usage = Usage {
                cost_usd: cost,
                ..usage
            };
        }
        finish.outcome.ttft_ms = ttft;
    }

    let status = finish.status;
    if let Err(e) = state
        .finish(&orch, &run.id, status, &finish.outcome, &mut log)
        .await
    {
        tracing::error!(run = %run.id, error = %e, "could not record the end of the run");
    }
    if ephemeral {
        if let Err(e) = orch.delete_sandbox_after_run(&run.sandbox_id).await {
            tracing::warn!(sandbox = %run.sandbox_id, error = %e, "could not delete ephemeral sandbox");
        }
    } else if let Some(session) = finish.session
        && let Some(w) = lock(&inner.warm).get_mut(&run.sandbox_id)
    {
        w.last_session = Some(session);
    }
    if let Some(w) = lock(&inner.warm).get_mut(&run.sandbox_id) {
        w.last_active = std::time::Instant::now();
    }
    lock(&inner.busy).remove(&run.sandbox_id);
    lock(&inner.live).remove(&run.id);
    log.close();
}

impl Orchestrator {
    async fn delete_sandbox_after_run(&self, sandbox_id: &str) -> Result<()> {
        // The run is over; `delete_sandbox` must not wait for it.
        lock(&self.inner.busy).remove(sandbox_id);
        if self.inner.store.sandbox(sandbox_id).await?.status == SandboxStatus::Failed {
            // It never came up: free what the backend holds, but keep the row and its reason.
            self.inner.backend.destroy(sandbox_id).await?;
            return Ok(());
        }
        self.delete_sandbox(sandbox_id).await
    }
}

/// How a run ended, before it is written.
struct Finish {
    status: RunStatus,
    outcome: RunOutcome,
    /// The opencode session a warm run used.
    session: Option<String>,
}

impl Finish {
    fn failed(kind: ErrorKind, message: String) -> Finish {
        Finish {
            status: RunStatus::Failed,
            outcome: RunOutcome {
                error: Some(RunError { kind, message }),
                ..Default::default()
            },
            session: None,
        }
    }
    fn cancelled() -> Finish {
        Finish {
            status: RunStatus::Cancelled,
            outcome: RunOutcome {
                error: Some(RunError {
                    kind: ErrorKind::Cancelled,
                    message: "the run was cancelled".into(),
                }),
                ..Default::default()
            },
            session: None,
        }
    }
    fn timed_out(timeout: Duration) -> Finish {
        Finish {
            status: RunStatus::TimedOut,
            outcome: RunOutcome {
                error: Some(RunError {
                    kind: ErrorKind::Timeout,
                    message: format!("the run did not finish within {}s", timeout.as_secs()),
                }),
                ..Default::default()
            },
            session: None,
        }
    }
}

/// The run's status as this driver knows it; every change goes through the state machine and a
/// compare-and-set, and is logged as a `status` event.
struct RunState {
    status: RunStatus,
}

impl RunState {
    fn new(status: RunStatus) -> Self {
        RunState { status }
    }

    async fn advance(
        &mut self,
        orch: &Orchestrator,
        run_id: &str,
        next: RunStatus,
        log: &mut RunLog,
    ) -> Result<()> {
        run_transition(self.status, next)?;
        orch.inner
            .store
            .set_run_status(run_id, self.status, next, now_ms())
            .await?;
        self.status = next;
        log.append(now_ms(), "status", json!({ "status": next }), None)
            .await?;
        Ok(())
    }

    async fn finish(
        &mut self,
        orch: &Orchestrator,
        run_id: &str,
        next: RunStatus,
        outcome: &RunOutcome,
        log: &mut RunLog,
    ) -> Result<()> {
        run_transition(self.status, next)?;
        // The closing event goes first so `event_count` in the stored result includes it.
        let mut data = json!({ "status": next });
        if let Some(e) = &outcome.error {
            data["error"] = json!(e);
        }
        log.append(now_ms(), "status", data, None).await?;
        orch.inner
            .store
            .finish_run(run_id, self.status, next, outcome, now_ms())
            .await?;
        self.status = next;
        Ok(())
    }
}

/// What a run's agent output amounts to so far.
#[derive(Default)]
struct Tally {
    final_message: String,
    usage: Usage,
    last_error: Option<RunError>,
    stderr_events: usize,
    stderr_tail: std::collections::VecDeque<String>,
}

impl Tally {
    async fn record(&mut self, parsed: &ParsedEvent, log: &mut RunLog) -> Result<()> {
        match &parsed.event {
            AgentEvent::Text { text } if !text.trim().is_empty() => {
                self.final_message = text.clone();
            }
            AgentEvent::StepFinish { usage, .. } => self.usage.add(usage),
            AgentEvent::Error { message, .. } => {
                self.last_error = Some(RunError {
                    kind: parsed.event.error_kind().unwrap_or(ErrorKind::AgentFailed),
                    message: message.clone(),
                });
            }
            _ => {}
        }
        let e = parsed.to_event(0, now_ms());
        log.append(e.ts, &e.kind, e.data, e.raw).await?;
        Ok(())
    }

    async fn stderr(&mut self, line: String, log: &mut RunLog) -> Result<()> {
        if self.stderr_tail.len() == STDERR_TAIL {
            self.stderr_tail.pop_front();
        }
        self.stderr_tail.push_back(line.chars().take(500).collect());
        if self.stderr_events < MAX_STDERR_EVENTS {
            self.stderr_events += 1;
            log.append(now_ms(), "stderr", json!({ "line": line }), None)
                .await?;
        }
        Ok(())
    }

    fn into_finish(self, status: RunStatus, error: Option<RunError>) -> Finish {
        Finish {
            status,
            outcome: RunOutcome {
                final_message: self.final_message,
                usage: self.usage,
                error,
                ..Default::default()
            },
            session: None,
        }
    }
}

/// An ephemeral run: `opencode run --format json`, output line by line.
async fn headless(
    orch: &Orchestrator,
    run: &Run,
    spec: &RunSpec,
    deadline: Instant,
    timeout: Duration,
    cancel: &CancellationToken,
    log: &mut RunLog,
) -> Result<Finish> {
    let stop = CancellationToken::new();
    let mut rx = orch
        .inner
        .backend
        .run_headless(&run.sandbox_id, spec, stop.clone())
        .await?;
    let mut tally = Tally::default();
    let mut ended_by: Option<RunStatus> = None;
    let mut grace: Option<Instant> = None;
    let exit = loop {
        let wake = grace.unwrap_or(deadline);
        tokio::select! {
            item = rx.recv() => match item {
                Some(AgentOutput::Stdout(line)) => {
                    if line.trim().is_empty() { continue; }
                    match parse_run_line(&line) {
                        Ok(parsed) => tally.record(&parsed, log).await?,
                        Err(e) => {
                            let excerpt: String = line.chars().take(300).collect();
                            log.append(now_ms(), "malformed", json!({ "error": e.to_string(), "line": excerpt }), None).await?;
                        }
                    }
                }
                Some(AgentOutput::Stderr(line)) => tally.stderr(line, log).await?,
                Some(AgentOutput::Exited(exit)) => break Some(exit),
                None => break None,
            },
            _ = cancel.cancelled(), if ended_by.is_none() => {
                ended_by = Some(RunStatus::Cancelled);
                stop.cancel();
                grace = Some(Instant::now() + KILL_GRACE);
            }
            _ = tokio::time::sleep_until(wake) => {
                if ended_by.is_none() {
                    ended_by = Some(RunStatus::TimedOut);
                    stop.cancel();
                    grace = Some(Instant::now() + KILL_GRACE);
                } else {
                    tracing::warn!(run = %run.id, "the sandbox did not report its exit after kill");
                    break None;
                }
            }
        }
    };
    match ended_by {
        Some(RunStatus::Cancelled) => return Ok(with_tally(Finish::cancelled(), tally)),
        Some(_) => return Ok(with_tally(Finish::timed_out(timeout), tally)),
        None => {}
    }
    let exit = exit.unwrap_or_default();
    if exit.oom {
        let error = RunError {
            kind: ErrorKind::Oom,
            message: format!(
                "the sandbox ran out of memory (limit {} MiB)",
                orch.inner.settings.sandbox_memory_mb
            ),
        };
        return Ok(tally.into_finish(RunStatus::Failed, Some(error)));
    }
    if let Some(error) = tally.last_error.take() {
        return Ok(tally.into_finish(RunStatus::Failed, Some(error)));
    }
    if exit.code != Some(0) {
        let tail: Vec<String> = tally.stderr_tail.iter().cloned().collect();
        let error = RunError {
            kind: ErrorKind::AgentFailed,
            message: format!(
                "opencode exited with {}{}",
                exit.code
                    .map_or("a signal".to_string(), |c| format!("code {c}")),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", tail.join(" | "))
                }
            ),
        };
        return Ok(tally.into_finish(RunStatus::Failed, Some(error)));
    }
    Ok(tally.into_finish(RunStatus::Succeeded, None))
}

fn with_tally(mut finish: Finish, tally: Tally) -> Finish {
    finish.outcome.final_message = tally.final_message;
    finish.outcome.usage = tally.usage;
    finish
}

/// A run in a warm sandbox, through its opencode serve's HTTP API.
#[allow(clippy::too_many_arguments)]
async fn served(
    orch: &Orchestrator,
    run: &Run,
    spec: &RunSpec,
    warm: Warm,
    deadline: Instant,
    timeout: Duration,
    cancel: &CancellationToken,
    log: &mut RunLog,
) -> Result<Finish> {
    let _ = orch;
    let client = ServeClient::new(
        &warm.endpoint.url,
        warm.endpoint.password.clone(),
        &warm.endpoint.directory,
    );
    let sandbox_err = |e: crate::opencode::serve::ServeError| {
        OrchestratorError::Sandbox(crate::sandbox::SandboxError::Start(e.to_string()))
    };
    // Subscribe before prompting, so no event of the turn is missed.
    let events = client.events().await.map_err(sandbox_err)?;
    let mut events = Box::pin(events);
    let session = match (spec.continue_session, &warm.last_session) {
        (true, Some(s)) => s.clone(),
        _ => client
            .create_session(&spec.title)
            .await
            .map_err(sandbox_err)?,
    };
    client
        .prompt_async(&session, &spec.task, &spec.model, spec.agent.as_deref())
        .await
        .map_err(sandbox_err)?;
    let mut tracker = ServeTracker::new(session.clone());
    let mut tally = Tally::default();
    let mut saw_activity = false;
    let ended_by = loop {
        tokio::select! {
            item = futures::StreamExt::next(&mut events) => match item {
                Some(Ok(data)) => match tracker.push(&data) {
                    Ok(ServeEvent::Event(parsed)) => {
                        saw_activity = true;
                        tally.record(&parsed, log).await?;
                    }
                    Ok(ServeEvent::Idle) if saw_activity => break None,
                    Ok(ServeEvent::Status(_)) => saw_activity = true,
                    Ok(_) => {}
                    Err(e) => {
                        let excerpt: String = data.chars().take(300).collect();
                        log.append(now_ms(), "malformed", json!({ "error": e.to_string(), "line": excerpt }), None).await?;
                    }
                },
                Some(Err(e)) => {
                    return Ok(with_session(Finish::failed(ErrorKind::SandboxFailed, e.to_string()), &session));
                }
                None => {
                    return Ok(with_session(Finish::failed(ErrorKind::SandboxFailed, "opencode serve closed its event stream".into()), &session));
                }
            },
            _ = cancel.cancelled() => break Some(RunStatus::Cancelled),
            _ = tokio::time::sleep_until(deadline) => break Some(RunStatus::TimedOut),
        }
    };
    if ended_by.is_some()
        && let Err(e) = client.abort(&session).await
    {
        tracing::warn!(run = %run.id, error = %e, "could not abort the opencode session");
    }
    let finish = match ended_by {
        Some(RunStatus::Cancelled) => with_tally(Finish::cancelled(), tally),
        Some(_) => with_tally(Finish::timed_out(timeout), tally),
        None => match tally.last_error.take() {
            Some(error) => tally.into_finish(RunStatus::Failed, Some(error)),
            None => tally.into_finish(RunStatus::Succeeded, None),
        },
    };
    Ok(with_session(finish, &session))
}

fn with_session(mut finish: Finish, session: &str) -> Finish {
    finish.session = Some(session.to_string());
    finish
}

/// A short session title from the task's first line.
fn title_of(task: &str) -> String {
    let line = task
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("delegated task")
        .trim();
    let mut title: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        title.push('…');
    }
    title
}

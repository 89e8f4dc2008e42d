//! Following the agent through one run: `opencode run` output line by line in an ephemeral
//! sandbox, or a warm sandbox's opencode serve over HTTP. Either way every event goes to the run
//! log and the run ends as a [`Finish`], on its own, by timeout or by cancellation.

use std::time::Duration;

use delegate_mcp::types::{ErrorKind, RunError, RunStatus, Usage};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::log::RunLog;
use super::run::Finish;
use super::{Orchestrator, Result, Warm};
use crate::ids::now_ms;
use crate::opencode::events::{AgentEvent, ParsedEvent, ServeEvent, ServeTracker, parse_run_line};
use crate::sandbox::{AgentOutput, RunSpec};
use crate::store::{Run, RunOutcome};

/// How long a killed run may take to report its exit before delegate stops waiting.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// stderr lines kept as events per run; the rest are counted, not stored.
const MAX_STDERR_EVENTS: usize = 500;
/// stderr lines kept for the error message of a failed run.
const STDERR_TAIL: usize = 20;

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
pub(super) async fn headless(
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
pub(super) async fn served(
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
    let continued = warm
        .last_session
        .as_deref()
        .filter(|_| spec.continue_session);
    // Whatever the backend, a warm sandbox's turn goes through the same trait path.
    let started = warm
        .backend
        .start_warm_run(&run.sandbox_id, &warm.endpoint, spec, continued)
        .await?;
    let session = started.session;
    let mut events = started.events;
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
        && let Err(e) = warm.backend.abort_warm_run(&warm.endpoint, &session).await
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

//! Best-of-N: one task run as N attempts, each an ordinary run in a fresh sandbox of its own,
//! under a parent id the caller holds.
//!
//! The parent has no row. Its attempts carry its id (`runs.parent_run_id`), and everything about
//! it is derived from them: its status (see [`parent_status`]), its usage, its result and its
//! events. So quotas, the queue, recovery after a restart and retention see only ordinary runs,
//! and a parent can never disagree with its attempts.

use std::time::Duration;

use delegate_mcp::types::{
    Attempt, ErrorKind, Event, MAX_ATTEMPTS, RunError, RunResult, RunStatus, Usage, parent_status,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{Error, Orchestrator, Result, RunRequest, result_of};
use crate::ids::{RunId, SandboxId, now_ms};
use crate::store::{Run, RunOutcome};

/// The `attempts` a request may ask for: 1 to [`MAX_ATTEMPTS`], and more than one only for fresh
/// sandboxes. Checked before anything is written.
pub fn check_attempts(attempts: u64, warm_sandbox: bool) -> Result<()> {
    if !(1..=MAX_ATTEMPTS).contains(&attempts) {
        return Err(Error::Invalid(format!(
            "attempts: a whole number from 1 to {MAX_ATTEMPTS}, not {attempts}"
        )));
    }
    if attempts > 1 && warm_sandbox {
        return Err(Error::Invalid(
            "attempts: only for fresh sandboxes; a warm sandbox runs one task at a time (omit \
             sandbox_id, or attempts)"
                .into(),
        ));
    }
    Ok(())
}

/// A parent just started: its id and its attempts' runs and sandboxes, oldest first.
#[derive(Debug, Clone)]
pub struct StartedAttempts {
    /// The parent's id, in the shape of a run id.
    pub parent: RunId,
    /// Each attempt's run and fresh sandbox.
    pub attempts: Vec<(RunId, SandboxId)>,
}

impl Orchestrator {
    /// Starts `attempts` runs of `req` at once, each in a fresh sandbox (a pooled one when the
    /// pool has it) and each taking a run slot like any other run, under a new parent. Every
    /// attempt's row carries the parent from its insert, so once this returns the parent id
    /// finds them all. When one cannot start (the queue is full, say), those that did are
    /// cancelled and the error is returned.
    pub async fn start_attempts(&self, req: RunRequest, attempts: u64) -> Result<StartedAttempts> {
        check_attempts(attempts, req.sandbox_id.is_some())?;
        let parent = RunId::new();
        let starts = (0..attempts)
            .map(|_| super::run::start(self.clone(), req.clone(), None, Some(&parent)));
        let mut started: Vec<(RunId, SandboxId)> = Vec::new();
        let mut failed = None;
        for one in futures::future::join_all(starts).await {
            match one {
                Ok(attempt) => started.push(attempt),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            for (run_id, _) in &started {
                if let Err(e) = self.cancel_run(run_id).await {
                    tracing::warn!(run = %run_id, error = %e, "could not cancel an attempt");
                }
            }
            return Err(e);
        }
        Ok(StartedAttempts {
            parent,
            attempts: started,
        })
    }

    /// The attempts of `parent`, oldest first; empty when it is no parent.
    pub async fn attempts_of(&self, parent: &RunId) -> Result<Vec<Run>> {
        Ok(self
            .inner
            .store
            .runs_of_parents(std::slice::from_ref(&parent.to_string()))
            .await?)
    }

    /// The parent's result from its attempts' rows: each attempt compactly in `attempts`.
    pub async fn parent_result(&self, parent: &RunId, runs: &[Run]) -> Result<RunResult> {
        let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let counts: std::collections::HashMap<String, u64> = self
            .inner
            .store
            .event_counts(&ids)
            .await?
            .into_iter()
            .collect();
        let public = self.inner.settings.public_url.as_deref();
        let results: Vec<RunResult> = runs
            .iter()
            .map(|run| result_of(run, counts.get(&run.id).copied().unwrap_or(0), public))
            .collect();
        Ok(combine(parent, runs, &results, public))
    }

    /// Waits until every attempt of `parent` has ended, then its result.
    pub async fn wait_attempts(&self, parent: &RunId, runs: &[Run]) -> Result<RunResult> {
        for run in runs {
            self.wait(&run.id.parse()?).await?;
        }
        let runs = self.attempts_of(parent).await?;
        self.parent_result(parent, &runs).await
    }

    /// Cancels every attempt of `parent` still going.
    pub async fn cancel_attempts(&self, runs: &[Run]) -> Result<()> {
        for run in runs.iter().filter(|r| !r.status.is_terminal()) {
            self.cancel_run(&run.id.parse()?).await?;
        }
        Ok(())
    }

    /// The parent's events after `after`: one `attempt` event per ended attempt, in the order
    /// they ended. With none yet, waits up to `wait` for an attempt to end.
    pub async fn attempt_events(
        &self,
        parent: &RunId,
        runs: Vec<Run>,
        after: u64,
        wait: Duration,
    ) -> Result<(Vec<Run>, Vec<Event>)> {
        let mut runs = runs;
        let ended = |runs: &[Run]| runs.iter().filter(|r| r.status.is_terminal()).count() as u64;
        if ended(&runs) <= after && runs.iter().any(|r| !r.status.is_terminal()) {
            let mut waits: FuturesUnordered<_> = runs
                .iter()
                .filter(|r| !r.status.is_terminal())
                .filter_map(|r| r.id.parse::<RunId>().ok())
                .map(|id| async move { self.wait(&id).await })
                .collect();
            // Whichever attempt ends first; `wait` itself gives up on another server's run.
            let _ = tokio::time::timeout(wait, waits.next()).await;
            drop(waits);
            runs = self.attempts_of(parent).await?;
        }
        let public = self.inner.settings.public_url.as_deref();
        let mut done: Vec<&Run> = runs.iter().filter(|r| r.status.is_terminal()).collect();
        done.sort_by(|a, b| (a.finished_at, &a.id).cmp(&(b.finished_at, &b.id)));
        let events = done
            .iter()
            .enumerate()
            .skip(after as usize)
            .map(|(i, run)| {
                let attempt = Attempt::of(&result_of(run, 0, public));
                Event {
                    seq: i as u64 + 1,
                    ts: run.finished_at.unwrap_or_else(now_ms),
                    kind: "attempt".into(),
                    data: serde_json::to_value(&attempt).unwrap_or_default(),
                    raw: None,
                }
            })
            .collect();
        Ok((runs, events))
    }
}

/// A row standing for the parent, for the callers that read a run's row (authorization, the web
/// page's task and origin): its attempts' workspace, task and origin, its derived status and
/// summed usage, and no sandbox.
pub fn parent_row(parent: &RunId, runs: &[Run]) -> Option<Run> {
    let first = runs.first()?;
    let status = parent_status(&runs.iter().map(|r| r.status).collect::<Vec<_>>());
    let mut usage = Usage::default();
    for run in runs {
        usage.add(&run.outcome.usage);
    }
    Some(Run {
        id: parent.to_string(),
        sandbox_id: String::new(),
        workspace_id: first.workspace_id.clone(),
        task: first.task.clone(),
        model: first.model.clone(),
        agent: first.agent.clone(),
        status,
        timeout_s: first.timeout_s,
        created_by: first.created_by.clone(),
        created_at: runs.iter().map(|r| r.created_at).min()?,
        started_at: runs.iter().filter_map(|r| r.started_at).min(),
        finished_at: status
            .is_terminal()
            .then(|| runs.iter().filter_map(|r| r.finished_at).max())
            .flatten(),
        parent_run_id: None,
        outcome: RunOutcome {
            usage,
            base: first.outcome.base.clone(),
            max_cost_usd: first.outcome.max_cost_usd,
            ..RunOutcome::default()
        },
    })
}

/// The parent's result from its attempts' full results.
fn combine(
    parent: &RunId,
    runs: &[Run],
    results: &[RunResult],
    public_url: Option<&str>,
) -> RunResult {
    let statuses: Vec<RunStatus> = results.iter().map(|r| r.status).collect();
    let status = parent_status(&statuses);
    let mut usage = Usage::default();
    for r in results {
        usage.add(&r.usage);
    }
    let count = |s: RunStatus| statuses.iter().filter(|x| **x == s).count();
    let going = statuses.iter().filter(|s| !s.is_terminal()).count();
    let mut tally: Vec<String> = Vec::new();
    for s in RunStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        if count(s) > 0 {
            tally.push(format!("{} {s}", count(s)));
        }
    }
    if going > 0 {
        tally.push(format!("{going} still going"));
    }
    let final_message = format!(
        "{} attempts: {}. Compare them in `attempts`; apply the one you choose with \
         apply_changes and its run_id.",
        results.len(),
        tally.join(", ")
    );
    let error = match status {
        RunStatus::Cancelled => Some(RunError {
            kind: ErrorKind::Cancelled,
            message: "the attempts were cancelled".into(),
        }),
        s if s.is_terminal() && s != RunStatus::Succeeded => {
            let first = results.iter().find_map(|r| r.error.clone());
            Some(RunError {
                kind: first.as_ref().map_or(ErrorKind::Internal, |e| e.kind),
                message: format!(
                    "no attempt succeeded; the first error: {}",
                    first.map_or_else(|| "none recorded".into(), |e| e.message)
                ),
            })
        }
        _ => None,
    };
    let row = parent_row(parent, runs);
    let start = row
        .as_ref()
        .map_or(0, |r| r.started_at.unwrap_or(r.created_at));
    let end = row
        .as_ref()
        .and_then(|r| r.finished_at)
        .unwrap_or_else(now_ms);
    RunResult {
        run_id: parent.to_string(),
        sandbox_id: String::new(),
        status,
        final_message,
        changed_files: Vec::new(),
        diff: String::new(),
        diff_truncated: false,
        usage,
        duration_ms: (end - start).max(0) as u64,
        event_count: statuses.iter().filter(|s| s.is_terminal()).count() as u64,
        queue_position: None,
        error,
        watch_url: public_url.map(|u| format!("{}/runs/{parent}", u.trim_end_matches('/'))),
        base: results.first().and_then(|r| r.base.clone()),
        commit: None,
        branch: None,
        applied: None,
        conflicts: Vec::new(),
        apply_message: None,
        patch_url: None,
        egress: None,
        parent_run_id: None,
        attempts: results.iter().map(Attempt::of).collect(),
        omitted: None,
    }
}

//! Driving one run: check the request and its workspace's budget, take a place in line for a run
//! slot (`quotas.rs`), make (or borrow) the sandbox, run opencode, turn its output into the event
//! log, enforce the timeout, cancellation and the run's budget, then collect changes and usage and
//! write the outcome with one checked transition.

use std::sync::Arc;
use std::time::Duration;

use delegate_mcp::types::{ErrorKind, RunError, RunStatus, SandboxStatus, Usage};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::agent::{headless, served};
use super::lifecycle::{Inserted, NewSandbox};
use super::log::{Redactor, RunLog};
use super::quotas::Ticket;
use super::reservation::Reservation;
use super::setup::SetupEnd;
use super::{Error, Orchestrator, Result, RunRequest, SnapshotFile, Warm, lock};
use crate::ids::{Origin, RunId, SandboxId, now_ms};
use crate::sandbox::{RunChanges, RunSpec, SandboxError, SandboxSpec};
use crate::state::run_transition;
use crate::store::{Run, RunOutcome, Sandbox, SandboxKind};

/// Where the run executes.
enum Target {
    /// A fresh sandbox made for this run and destroyed after it, with the snapshot it starts
    /// from (kept on disk until the sandbox has cloned it).
    Ephemeral(SandboxSpec, Option<Arc<SnapshotFile>>),
    /// A warm sandbox's opencode serve.
    Warm(Warm),
    /// A pooled sandbox (opencode serve up, work dir empty) claimed for this run: seeded with
    /// these files and snapshot, run through its opencode serve, destroyed after the run.
    Pooled(
        super::pool::Pooled,
        std::collections::BTreeMap<String, String>,
        Option<Arc<SnapshotFile>>,
    ),
    /// A local agent's opencode serve, working in a fresh work dir on the agent's machine seeded
    /// from the snapshot.
    Local(Warm, Arc<SnapshotFile>),
}

/// The largest `max_cost_usd` a run may ask for, in dollars.
pub const MAX_RUN_COST_USD: f64 = 10_000.0;

/// Checks the request, joins the line for a run slot, reserves the sandbox (a warm one, or a fresh ephemeral
/// one it makes), records the run and spawns its driver. `loaded` is the warm sandbox when the
/// caller has already read it (so it is not read twice); otherwise it is read here. `parent` is
/// the best-of-N parent of an attempt, recorded with the run's row.
pub(super) async fn start(
    orch: Orchestrator,
    mut req: RunRequest,
    loaded: Option<Sandbox>,
    parent: Option<&RunId>,
) -> Result<(RunId, SandboxId)> {
    // Everything the caller controls is checked before anything is written.
    if req.task.trim().is_empty() {
        return Err(Error::Invalid("task: must not be empty".into()));
    }
    // It goes to opencode as an argument, which cannot hold a NUL.
    if req.task.contains('\0') {
        return Err(Error::Invalid(
            "task: must not contain NUL characters".into(),
        ));
    }
    if req.task.len() > super::MAX_TASK_BYTES {
        return Err(Error::Invalid(format!(
            "task: {} bytes, at most {} (1 MiB); put large inputs in `files`",
            req.task.len(),
            super::MAX_TASK_BYTES
        )));
    }
    crate::sandbox::workdir::validate_files(&req.files)?;
    let timeout = req.timeout.unwrap_or(orch.inner.settings.default_timeout);
    if timeout.is_zero() || timeout > super::MAX_TIMEOUT {
        return Err(Error::Invalid(format!(
            "timeout_seconds: must be between 1 and {}",
            super::MAX_TIMEOUT.as_secs()
        )));
    }
    for (field, value) in [("model", &req.model), ("agent", &req.agent)] {
        if let Some(v) = value
            && (v.is_empty()
                || v.len() > 200
                || v.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(Error::Invalid(format!(
                "{field}: 1 to 200 characters, no spaces"
            )));
        }
    }
    if let Some(max) = req.max_cost_usd
        && !(max.is_finite() && max > 0.0 && max <= MAX_RUN_COST_USD)
    {
        return Err(Error::Invalid(format!(
            "max_cost_usd: a dollar amount above 0 and at most {MAX_RUN_COST_USD}"
        )));
    }
    let run_id = RunId::new();

    let mut loaded_base = None;
    let mut secrets = Vec::new();
    let (sandbox_id, workspace_id, target, reservation, ticket) = match &req.sandbox_id {
        Some(id) => {
            if !req.files.is_empty() {
                return Err(Error::Invalid(
                    "files: only for a fresh sandbox; a warm sandbox already has its files".into(),
                ));
            }
            if req.network.is_some() {
                return Err(Error::Invalid(
                    "network: only for a fresh sandbox; a warm sandbox keeps the policy it was \
                     created with"
                        .into(),
                ));
            }
            // opencode serve's environment is fixed when it starts, so a run cannot change it.
            if !req.inputs.is_empty() {
                return Err(Error::Invalid(
                    "env, secrets, setup and image: only for a fresh sandbox; a warm sandbox \
                     keeps what it was created with (give them to create_sandbox)"
                        .into(),
                ));
            }
            let (sandbox_id, sandbox) = match loaded {
                Some(sandbox) => (sandbox.id.parse::<SandboxId>()?, sandbox),
                // The request's text is parsed here, once: a malformed id is not found.
                None => {
                    let id = id.parse::<SandboxId>()?;
                    let sandbox = orch.inner.store.sandbox(id.as_str()).await?;
                    (id, sandbox)
                }
            };
            let backend = orch.backend_for(&sandbox)?;
            orch.refuse_if_elsewhere(&sandbox, backend.as_ref(), "run in")
                .await?;
            // One run at a time, whichever server drives it.
            if backend.any_replica() && orch.run_elsewhere(&sandbox.id).await?.is_some() {
                return Err(Error::Busy(sandbox.id.clone()));
            }
            let ticket = admit(&orch, &run_id, &sandbox.workspace_id).await?;
            loaded_base = sandbox.base.clone();
            // A local agent takes a repository per run; any other warm sandbox has its files.
            if req.snapshot.is_some() && backend.takes_repo_per_run(&sandbox.id).is_none() {
                return Err(Error::Invalid(
                    "snapshot: only for a fresh sandbox or a local agent; a warm sandbox already \
                     has its files (give the repository to create_sandbox instead)"
                        .into(),
                ));
            }
            if sandbox.meta["secrets"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
                && let Ok(ws) = orch.workspace(Some(&sandbox.workspace_id)).await
            {
                secrets = orch.sandbox_secrets(&ws, &sandbox.meta).await;
            }
            // On any error below, dropping the reservation frees the sandbox again.
            let reservation = orch.inner.reservations.reserve(&sandbox.id)?;
            let warm = match sandbox.status {
                // A paused sandbox wakes up for the run.
                SandboxStatus::Paused => orch.resume_reserved(&sandbox, &reservation).await?,
                SandboxStatus::Running => {
                    let kept = lock(&orch.inner.warm).get(sandbox.id.as_str()).cloned();
                    match kept {
                        // Any server may have moved it since: it is this one's only while the
                        // store says so.
                        Some(w)
                            if !backend.any_replica()
                                || orch
                                    .inner
                                    .store
                                    .sandbox_owner(&sandbox.id)
                                    .await?
                                    .as_deref()
                                    == Some(orch.inner.instance_id.as_str()) =>
                        {
                            w
                        }
                        _ if backend.any_replica() => orch.adopt_warm(&sandbox, &backend).await?,
                        _ => {
                            return Err(Error::Invalid(format!(
                                "sandbox {id} is not served by this delegate process"
                            )));
                        }
                    }
                }
                status => {
                    return Err(Error::NotRunning {
                        id: sandbox.id.clone(),
                        status,
                    });
                }
            };
            let target = match req.snapshot.take() {
                Some(snapshot) if backend.takes_repo_per_run(&sandbox.id) == Some(true) => {
                    Target::Local(warm, snapshot)
                }
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "this agent does not take repositories; update delegate on {} (sandbox \
                         {}) and reconnect it, or run without a repository",
                        sandbox.name, sandbox.id
                    )));
                }
                None => Target::Warm(warm),
            };
            (
                sandbox_id,
                sandbox.workspace_id,
                target,
                reservation,
                ticket,
            )
        }
        None => {
            // The driver holds the only reference, so it can remove the file once cloned.
            let snapshot = req.snapshot.take();
            let ws = orch.workspace(req.workspace.as_deref()).await?;
            let ticket = admit(&orch, &run_id, &ws.id).await?;
            let claimed = orch.claim_pooled(&ws, &req, snapshot.as_deref()).await?;
            if let Some((sandbox, pooled)) = claimed {
                // A sandbox nobody else knows yet, started before anyone asked for it.
                let reservation = orch.inner.reservations.reserve(&sandbox.id)?;
                (
                    sandbox.id.parse()?,
                    ws.id,
                    Target::Pooled(pooled, req.files.clone(), snapshot),
                    reservation,
                    ticket,
                )
            } else {
                let Inserted {
                    sandbox,
                    spec,
                    redactions,
                } = orch
                    .insert_sandbox(
                        &ws,
                        NewSandbox {
                            kind: SandboxKind::Ephemeral,
                            name: None,
                            files: req.files.clone(),
                            snapshot: snapshot.as_deref(),
                            idle_timeout: None,
                            created_by: req.created_by.clone(),
                            network: req.network.as_deref(),
                            inputs: &req.inputs,
                            max_warm: None,
                        },
                    )
                    .await?;
                secrets = redactions.to_vec();
                // A fresh sandbox nobody else knows yet.
                let reservation = orch.inner.reservations.reserve(&sandbox.id)?;
                (
                    sandbox.id.parse()?,
                    ws.id,
                    Target::Ephemeral(spec, snapshot),
                    reservation,
                    ticket,
                )
            }
        }
    };

    // The run carries its sandbox's base, so its result needs no second read.
    let base = match (&target, &loaded_base) {
        (Target::Ephemeral(_, snapshot) | Target::Pooled(_, _, snapshot), _) => {
            snapshot.as_ref().map(|s| s.base.clone())
        }
        (Target::Local(_, snapshot), _) => Some(snapshot.base.clone()),
        (Target::Warm(_), base) => base.clone(),
    };
    let max_cost_usd = match req.max_cost_usd {
        Some(max) => Some(max),
        None => orch.effective_limits(&workspace_id).await?.max_run_cost_usd,
    };
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| orch.inner.settings.model.clone());
    let run = Run {
        id: run_id.to_string(),
        sandbox_id: sandbox_id.to_string(),
        workspace_id,
        task: req.task.clone(),
        model: Some(model.clone()),
        agent: req.agent.clone(),
        status: RunStatus::Queued,
        timeout_s: timeout.as_secs() as i64,
        created_by: req.created_by.as_ref().map(Origin::to_string),
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
        parent_run_id: parent.map(RunId::to_string),
        outcome: RunOutcome {
            base,
            max_cost_usd,
            ..RunOutcome::default()
        },
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
    inserted?;
    // Admitted now if there is room, so the caller reads its true status (or place in line).
    ticket.ready().await;
    reservation.hold_for_run(&run_id);

    let cancel = orch.inner.shutdown.child_token();
    let (log, live) = RunLog::new(&run_id, orch.inner.store.clone(), Redactor::new(&secrets));
    lock(&orch.inner.live).insert(run_id.clone(), (cancel.clone(), live));

    let spec = RunSpec {
        run_id: run_id.to_string(),
        title: title_of(&req.task),
        task: req.task,
        model,
        agent: req.agent,
        continue_session: req.continue_session,
    };
    let setup = req.inputs.setup.take();
    tokio::spawn(drive(
        orch,
        run,
        spec,
        setup,
        target,
        timeout,
        cancel,
        log,
        ticket,
        reservation,
    ));
    Ok((run_id, sandbox_id))
}

/// Runs to the end, whatever happens; the outcome always lands in the store.
#[allow(clippy::too_many_arguments)]
async fn drive(
    orch: Orchestrator,
    run: Run,
    spec: RunSpec,
    setup: Option<String>,
    target: Target,
    timeout: Duration,
    cancel: CancellationToken,
    mut log: RunLog,
    ticket: Ticket,
    reservation: Reservation,
) {
    let inner = &orch.inner;
    let mut state = RunState::new(run.status);
    // A pooled sandbox is the run's alone, as a fresh one: it goes with the run.
    let ephemeral = matches!(target, Target::Ephemeral(..) | Target::Pooled(..));
    let local_run = matches!(target, Target::Local(..));
    let mut local_repo = None;
    let mut egress = None;
    let budgets = inner.proxy.budgets().clone();

    // Queued until a slot is free; cancelling leaves the line. The time limit starts after.
    let slot = tokio::select! {
        slot = ticket.slot() => Some(slot),
        _ = cancel.cancelled() => None,
    };
    let deadline = Instant::now() + timeout;
    // The proxy cancels `stop` when the run's budget is spent; a cancel stops it too.
    let stop = cancel.child_token();
    budgets.watch_run(&run.id, run.outcome.max_cost_usd, stop.clone());

    let outcome = async {
        if slot.is_none() {
            return Ok(Finish::cancelled());
        }
        // Inside, "cancelled" means either: a cancel, or the budget (told apart after).
        let cancel = stop.clone();
        state
            .advance(&orch, &run.id, RunStatus::Starting, &mut log)
            .await?;
        let warm = match target {
            Target::Ephemeral(sandbox_spec, snapshot) => {
                let sandbox = inner.store.sandbox(&run.sandbox_id).await?;
                tokio::select! {
                    r = orch.start_sandbox(&sandbox, &sandbox_spec) => { r?; }
                    _ = cancel.cancelled() => return Ok(Finish::cancelled()),
                    _ = tokio::time::sleep_until(deadline) => return Ok(Finish::timed_out(timeout)),
                }
                // Cloned into the work dir: the uploaded bundle is not needed any more.
                SnapshotFile::release(snapshot).await;
                None
            }
            Target::Pooled(pooled, files, snapshot) => {
                let repo = snapshot.as_ref().map(|s| s.path.as_path());
                tokio::select! {
                    r = orch.seed_pooled(&pooled, &files, repo) => r?,
                    _ = cancel.cancelled() => return Ok(Finish::cancelled()),
                    _ = tokio::time::sleep_until(deadline) => return Ok(Finish::timed_out(timeout)),
                }
                SnapshotFile::release(snapshot).await;
                Some(orch.pooled_warm(pooled))
            }
            Target::Warm(w) => Some(w),
            Target::Local(w, snapshot) => {
                let seeded = tokio::select! {
                    r = orch.local_seed(&run.sandbox_id, &run.id, &snapshot) => r?,
                    _ = cancel.cancelled() => return Ok(Finish::cancelled()),
                    _ = tokio::time::sleep_until(deadline) => return Ok(Finish::timed_out(timeout)),
                };
                SnapshotFile::release(Some(snapshot)).await;
                let w = seeded.endpoint_of(w);
                local_repo = Some(seeded);
                Some(w)
            }
        };
        if let Ok(mut active) = inner.active_runs.write() {
            active.insert(run.sandbox_id.clone(), run.id.clone());
        }
        egress = orch.begin_egress(&run.sandbox_id, &log);
        state
            .advance(&orch, &run.id, RunStatus::Running, &mut log)
            .await?;
        // Within the run's time, through its egress window, before the agent sees anything.
        if let Some(script) = &setup {
            match orch
                .run_setup(&run.sandbox_id, script, deadline, &cancel, Some(&mut log))
                .await?
            {
                SetupEnd::Done => {}
                SetupEnd::Failed(why) => {
                    return Ok(Finish::failed(ErrorKind::SetupFailed, why));
                }
                SetupEnd::TimedOut => return Ok(Finish::timed_out(timeout)),
                SetupEnd::Cancelled => return Ok(Finish::cancelled()),
            }
        }
        let finish = match warm {
            None => headless(&orch, &run, &spec, deadline, timeout, &cancel, &mut log).await?,
            Some(w) => served(&orch, &run, &spec, w, deadline, timeout, &cancel, &mut log).await?,
        };
        Ok::<Finish, Error>(finish)
    }
    .await;

    let mut finish = match outcome {
        Ok(f) => f,
        Err(e) => Finish::failed(
            match &e {
                Error::Sandbox(SandboxError::ImageMissing(_)) => ErrorKind::ImageMissing,
                Error::Sandbox(_) => ErrorKind::SandboxFailed,
                _ => ErrorKind::Internal,
            },
            e.to_string(),
        ),
    };
    // A refused model call ends the run however the agent took it (stopped, or gave up on the
    // error), unless somebody cancelled it.
    if let Some(why) = budgets.forget_run(&run.id)
        && !cancel.is_cancelled()
    {
        let session = finish.session.take();
        finish = Finish::failed(ErrorKind::BudgetExceeded, why);
        finish.session = session;
    }

    // What changed, even when the run failed: partial work is worth seeing.
    let collected = if let Some(repo) = &local_repo {
        // Committed on the agent's machine, read back here as hostile input.
        Some(
            orch.local_export(&run.sandbox_id, &run.id, repo)
                .await
                .map(RunChanges::Committed),
        )
    } else {
        match inner.store.sandbox(&run.sandbox_id).await {
            Ok(s) if s.status == SandboxStatus::Running => match orch.backend_for(&s) {
                Ok(backend) => Some(
                    backend
                        .run_changes(
                            &run.sandbox_id,
                            finish.session.as_deref(),
                            inner.settings.diff_max_bytes,
                            &format!("delegate: run {}", run.id),
                        )
                        .await
                        .map_err(Error::from),
                ),
                Err(e) => Some(Err(e)),
            },
            _ => None,
        }
    };
    match collected {
        Some(Ok(RunChanges::Committed(changes))) => {
            // Kept now, before an ephemeral sandbox (and its change repository) goes.
            if let Err(e) =
                super::artifacts::keep(&inner.settings.data_dir, &run.id, &changes).await
            {
                tracing::warn!(run = %run.id, error = %e, "could not keep the run's change");
            }
            finish.outcome.commit = Some(changes.commit);
            finish.outcome.changed_files = changes.files;
            finish.outcome.diff = changes.diff;
            finish.outcome.diff_truncated = changes.diff_truncated;
        }
        // A sandbox whose files are not ours to diff (a local one): its opencode says what the
        // session changed.
        Some(Ok(RunChanges::Reported(reported))) => {
            finish.outcome.changed_files = reported.files;
            finish.outcome.diff = reported.diff;
            finish.outcome.diff_truncated = reported.diff_truncated;
        }
        // A local agent's change that fails the checks fails the run; nothing of it is kept.
        Some(Err(Error::Repo {
            kind: "bad_change",
            message,
        })) if local_run => {
            finish.status = RunStatus::Failed;
            finish.outcome.error = Some(RunError {
                kind: ErrorKind::BadChange,
                message,
            });
        }
        Some(Err(e)) => tracing::warn!(run = %run.id, error = %e, "could not collect changes"),
        None => {}
    }
    if local_run {
        orch.local_forget_run(&run.sandbox_id, &run.id, local_repo.as_ref())
            .await;
    }
    if let Ok(mut active) = inner.active_runs.write() {
        active.remove(&run.sandbox_id);
    }
    finish.outcome.egress = orch.end_egress(egress).await;
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

    // Whatever the sandbox printed of its secrets is scrubbed before the result is stored.
    let redactor = log.redactor().clone();
    if !redactor.is_empty() {
        let outcome = &mut finish.outcome;
        outcome.final_message = redactor.text(&outcome.final_message);
        outcome.diff = redactor.text(&outcome.diff);
        if let Some(error) = outcome.error.as_mut() {
            error.message = redactor.text(&error.message);
        }
    }
    let status = finish.status;
    // Its change is kept: free what the sandbox holds before writing to the store, so a store
    // that refuses writes (a full data disk, often full of this very sandbox's files) cannot
    // keep it. Its row follows below, without freeing it twice.
    let mut freed = false;
    if ephemeral {
        match inner.backend.destroy(&run.sandbox_id).await {
            Ok(()) => freed = true,
            Err(e) => {
                tracing::warn!(sandbox = %run.sandbox_id, error = %e, "could not free the sandbox");
            }
        }
        // Gone with it, before the result says the run ended: its token is dead by then.
        orch.revoke_sandbox_tokens(&run.sandbox_id).await;
    }
    let mut recorded = state
        .finish(&orch, &run.id, status, &finish.outcome, &mut log)
        .await;
    if recorded.is_err() {
        for wait in RECORD_RETRIES {
            tokio::time::sleep(wait).await;
            recorded = state
                .finish(&orch, &run.id, status, &finish.outcome, &mut log)
                .await;
            if recorded.is_ok() {
                break;
            }
        }
    }
    if let Err(e) = recorded {
        tracing::error!(run = %run.id, error = %e, "could not record the end of the run");
    }
    if ephemeral {
        if let Err(e) = orch.delete_sandbox_after_run(reservation, freed).await {
            tracing::warn!(sandbox = %run.sandbox_id, error = %e, "could not delete ephemeral sandbox");
        }
    } else {
        if let Some(w) = lock(&inner.warm).get_mut(&run.sandbox_id) {
            // A run in its own work dir left a session of that directory: not one to continue.
            if let Some(session) = finish.session.filter(|_| !local_run) {
                w.last_session = Some(session);
            }
            w.last_active = std::time::Instant::now();
        }
        // Free for the next run only once its session and idle clock are up to date.
        drop(reservation);
    }
    lock(&inner.live).remove(run.id.as_str());
    log.close();
    // The next queued run starts only once this one's sandbox and records are settled.
    drop(slot);
}

/// Refuses the run when its workspace's day is spent; else joins the line for a run slot.
async fn admit(orch: &Orchestrator, run_id: &RunId, workspace_id: &str) -> Result<Ticket> {
    orch.check_daily_budget(workspace_id).await?;
    let limit = orch
        .effective_limits(workspace_id)
        .await?
        .max_concurrent_runs;
    orch.inner
        .admission
        .enter(run_id.as_str(), workspace_id, limit)
}

impl Orchestrator {
    /// `freed`: the backend's sandbox is gone already (the driver freed it before recording).
    async fn delete_sandbox_after_run(&self, reservation: Reservation, freed: bool) -> Result<()> {
        let sandbox_id = &reservation.sandbox_id().to_owned();
        // The run is over; `delete_sandbox` must not wait for it.
        drop(reservation);
        if self.inner.store.sandbox(sandbox_id).await?.status == SandboxStatus::Failed {
            // It never came up: free what the backend holds, but keep the row and its reason.
            if !freed {
                self.inner.backend.destroy(sandbox_id).await?;
            }
            return Ok(());
        }
        self.delete_sandbox_row(&sandbox_id.parse()?, freed).await
    }
}

/// How a run ended, before it is written.
pub(super) struct Finish {
    pub(super) status: RunStatus,
    pub(super) outcome: RunOutcome,
    /// The opencode session a warm run used.
    pub(super) session: Option<String>,
}

impl Finish {
    pub(super) fn failed(kind: ErrorKind, message: String) -> Finish {
        Finish {
            status: RunStatus::Failed,
            outcome: RunOutcome {
                error: Some(RunError { kind, message }),
                ..Default::default()
            },
            session: None,
        }
    }
    pub(super) fn cancelled() -> Finish {
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
    pub(super) fn timed_out(timeout: Duration) -> Finish {
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
    /// The closing `status` event is in the log (so a retried finish does not log it twice).
    closing_logged: bool,
}

/// How long the end of a run is retried when the store refuses it (about half a minute).
const RECORD_RETRIES: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];

impl RunState {
    fn new(status: RunStatus) -> Self {
        RunState {
            status,
            closing_logged: false,
        }
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
        if !self.closing_logged {
            log.append(now_ms(), "status", data, None).await?;
            self.closing_logged = true;
        }
        orch.inner
            .store
            .finish_run(run_id, self.status, next, outcome, now_ms())
            .await?;
        self.status = next;
        Ok(())
    }
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

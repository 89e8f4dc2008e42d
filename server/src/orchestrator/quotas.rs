//! Admission of runs, and the workspace quotas checked before anything is written.
//!
//! A run takes a slot before it starts: one of this server's `DELEGATE_MAX_CONCURRENT_RUNS` (a
//! per-process cap, kept here) and one of its workspace's `max_concurrent_runs` (a quota that holds
//! across every server on the database, decided there: [`Store::admit_run`]). Without a free slot
//! it waits in `queued`, first come first served per workspace in the database's order
//! `(created_at, id)`, which every server sees alike: a run never passes an earlier one of its own
//! workspace; a run of another workspace with room may. Its place (`queue_position`) is read
//! from the database too, so every server reports the same one. This server's line is bounded
//! (`DELEGATE_MAX_QUEUED_RUNS`); past it a run is refused with a `limit` error. A queued run holds
//! a [`Ticket`]; dropping it (the run was cancelled) leaves the line, and dropping a [`Slot`] lets
//! the next waiting run in.
//!
//! One task per server admits waiting runs ([`Admission::pump`]). A slot freed on this server
//! wakes it at once. A slot freed on another server is seen by polling every [`POLL`] while
//! a run here waits on its workspace's quota: LISTEN/NOTIFY would need a connection held open
//! per server and exists on PostgreSQL only, where one short query per waiting workspace a second
//! costs little and the delay it adds (under a second) is small beside a run's start.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::{Error, Orchestrator, Result, lock};
use crate::ids::now_ms;
use crate::proxy::resets_in;
use crate::store::{Store, WorkspaceLimits};

/// The largest dollar amount a workspace limit may be.
const MAX_DOLLARS: f64 = 1_000_000.0;
/// The largest count a workspace quota may be.
const MAX_COUNT: u64 = 100_000;
/// How often runs held back by their workspace's quota look again for a slot another server freed.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// The run slots of one server and the line of runs waiting for one.
pub(super) struct Admission {
    max_running: usize,
    max_queued: usize,
    store: Arc<dyn Store>,
    state: Mutex<Line>,
    /// Wakes the admitting task: a run joined the line or a slot was freed here.
    wake: Arc<Notify>,
    /// Held while admitting, so the task and a run just written never admit at the same time
    /// (this server's cap is counted here, not in the database).
    pumping: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Line {
    /// Runs holding a slot of this server.
    running: usize,
    /// Runs waiting, oldest first.
    queue: VecDeque<Waiter>,
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    run_id: String,
    workspace_id: String,
    workspace_limit: Option<u64>,
    /// Its row is written: the database can admit it.
    ready: bool,
    admit: oneshot::Sender<()>,
}

impl Admission {
    /// The line, and the task that admits from it (it ends when the line is dropped).
    pub(super) fn new(
        max_running: usize,
        max_queued: usize,
        store: Arc<dyn Store>,
    ) -> Arc<Admission> {
        let admission = Arc::new(Admission {
            max_running: max_running.max(1),
            max_queued,
            store,
            state: Mutex::new(Line::default()),
            wake: Arc::new(Notify::new()),
            pumping: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(admit_loop(
            Arc::downgrade(&admission),
            admission.wake.clone(),
        ));
        admission
    }

    /// Joins the line for a slot. Refused when this server's line is full. The run is admitted
    /// once its row is written ([`Ticket::ready`]) and there is room.
    pub(super) fn enter(
        self: &Arc<Self>,
        run_id: &str,
        workspace_id: &str,
        workspace_limit: Option<u64>,
    ) -> Result<Ticket> {
        let mut line = lock(&self.state);
        if line.running + line.queue.len() >= self.max_running + self.max_queued {
            return Err(Error::Limit(format!(
                "too many runs waiting for a slot on this server (limit {}); retry later or \
                 raise DELEGATE_MAX_QUEUED_RUNS",
                self.max_queued
            )));
        }
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        let (admit, admitted) = oneshot::channel();
        line.queue.push_back(Waiter {
            ticket,
            run_id: run_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            workspace_limit,
            ready: false,
            admit,
        });
        Ok(Ticket {
            admission: self.clone(),
            ticket,
            admitted: Some(admitted),
            taken: false,
        })
    }

    /// Lets in every ready waiting run that has room now, oldest first here; a run its workspace
    /// holds back also holds back the later runs of that workspace on this server. Whether some
    /// run waits on its workspace's quota (which only another server may free).
    async fn pump(&self) -> bool {
        let _turn = self.pumping.lock().await;
        let candidates: Vec<(u64, String, String, Option<u64>)> = {
            let line = lock(&self.state);
            line.queue
                .iter()
                .filter(|w| w.ready)
                .map(|w| {
                    let Waiter {
                        ticket,
                        run_id,
                        workspace_id,
                        workspace_limit,
                        ..
                    } = w;
                    (
                        *ticket,
                        run_id.clone(),
                        workspace_id.clone(),
                        *workspace_limit,
                    )
                })
                .collect()
        };
        let mut held_back: HashSet<String> = HashSet::new();
        for (ticket, run_id, workspace_id, limit) in candidates {
            if lock(&self.state).running >= self.max_running {
                // This server's own release wakes the task again.
                break;
            }
            if held_back.contains(&workspace_id) {
                continue;
            }
            match self.store.admit_run(&run_id, limit, now_ms()).await {
                Ok(true) => {}
                Ok(false) => {
                    // Without a quota, `false` means the run stopped waiting (cancelled).
                    if limit.is_some() {
                        held_back.insert(workspace_id);
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "could not admit a run; trying again");
                    held_back.insert(workspace_id);
                    continue;
                }
            }
            let mut line = lock(&self.state);
            // Gone meanwhile (cancelled): its run ends without starting, and no longer counts.
            if let Some(i) = line.queue.iter().position(|w| w.ticket == ticket)
                && let Some(w) = line.queue.remove(i)
            {
                line.running += 1;
                // A waiter that is gone frees its slot when its ticket drops.
                let _ = w.admit.send(());
            }
        }
        !held_back.is_empty()
    }

    fn release(&self) {
        let mut line = lock(&self.state);
        line.running = line.running.saturating_sub(1);
        drop(line);
        self.wake.notify_one();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // The admitting task finds the line gone and ends.
        self.wake.notify_one();
    }
}

/// Admits whenever woken, and every [`POLL`] while a run waits on its workspace's quota.
async fn admit_loop(admission: Weak<Admission>, wake: Arc<Notify>) {
    loop {
        let Some(line) = admission.upgrade() else {
            return;
        };
        let held_back = line.pump().await;
        drop(line);
        if held_back {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        } else {
            wake.notified().await;
        }
    }
}

/// A run's place in line, or its slot once admitted ([`Ticket::slot`]).
pub(super) struct Ticket {
    admission: Arc<Admission>,
    ticket: u64,
    admitted: Option<oneshot::Receiver<()>>,
    /// Whether the slot was handed to a [`Slot`] (which then releases it).
    taken: bool,
}

impl Ticket {
    /// The run's row is written: it may be admitted, at once if there is room (so a caller
    /// reading it right after sees it admitted, or its true place in line).
    pub(super) async fn ready(&self) {
        {
            let mut line = lock(&self.admission.state);
            if let Some(w) = line.queue.iter_mut().find(|w| w.ticket == self.ticket) {
                w.ready = true;
            }
        }
        if self.admission.pump().await {
            // Held back: the task polls for slots other servers free.
            self.admission.wake.notify_one();
        }
    }

    /// Waits for the run's slot.
    pub(super) async fn slot(mut self) -> Slot {
        if let Some(admitted) = self.admitted.take() {
            // The sender lives in the line until it is used: an error cannot happen while
            // this ticket exists, and would mean "admitted" anyway.
            let _ = admitted.await;
        }
        self.taken = true;
        Slot {
            admission: self.admission.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut line = lock(&self.admission.state);
        let before = line.queue.len();
        line.queue.retain(|w| w.ticket != self.ticket);
        if line.queue.len() == before {
            // Admitted but never used: give the slot back.
            drop(line);
            self.admission.release();
        }
    }
}

/// A run slot; dropping it lets the next waiting run in.
pub(super) struct Slot {
    admission: Arc<Admission>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release();
    }
}

/// The refusal of one more warm sandbox: the workspace has `warm` of its `max`. Every warm sandbox
/// that is not deleted or failed counts, paused ones too: they keep their files and wake up for
/// the next run without asking again.
pub(super) fn warm_quota_full(warm: u64, max: u64) -> Error {
    Error::Limit(format!(
        "the workspace has {warm} warm sandboxes, its max_warm_sandboxes quota is {max} \
         (paused ones count); delete one first, or ask a maintainer to raise the quota"
    ))
}

/// A workspace's limits with the server's defaults filled in.
pub(super) type Effective = WorkspaceLimits;

impl Orchestrator {
    /// A workspace's limits as they apply: its own, else the server's defaults.
    pub(super) async fn effective_limits(&self, workspace_id: &str) -> Result<Effective> {
        let own = self.inner.store.workspace_limits(workspace_id).await?;
        let d = &self.inner.settings.limits;
        Ok(WorkspaceLimits {
            max_run_cost_usd: own.max_run_cost_usd.or(d.max_run_cost_usd),
            daily_budget_usd: own.daily_budget_usd.or(d.workspace_daily_budget_usd),
            max_concurrent_runs: own.max_concurrent_runs.or(d.workspace_max_concurrent_runs),
            max_warm_sandboxes: own.max_warm_sandboxes.or(d.workspace_max_warm_sandboxes),
        })
    }

    /// Refuses a new run when its workspace's budget for the day is spent.
    pub(super) async fn check_daily_budget(&self, workspace_id: &str) -> Result<()> {
        match self
            .inner
            .proxy
            .budgets()
            .workspace_over(self.inner.store.as_ref(), workspace_id)
            .await?
        {
            Some(why) => Err(Error::BudgetExceeded(format!(
                "{why}; no new runs until then, or a maintainer raises daily_budget_usd"
            ))),
            None => Ok(()),
        }
    }

    /// The workspace's `max_warm_sandboxes` quota as it applies; the store checks it as it
    /// writes the new sandbox's row ([`crate::store::Store::insert_warm_sandbox`]).
    pub(super) async fn warm_quota(&self, workspace_id: &str) -> Result<Option<u64>> {
        Ok(self
            .effective_limits(workspace_id)
            .await?
            .max_warm_sandboxes)
    }

    /// A waiting run's place in its workspace's line, on every server alike (1: next).
    pub(super) async fn queue_position(&self, run_id: &str) -> Result<Option<u64>> {
        Ok(self.inner.store.queue_position(run_id).await?)
    }

    /// Today's spend of a workspace (UTC day) and when it resets, for views.
    pub async fn spent_today(&self, workspace_id: &str) -> Result<(f64, String)> {
        let now = now_ms();
        let spent = self
            .inner
            .proxy
            .budgets()
            .spent_today(self.inner.store.as_ref(), workspace_id, now)
            .await?;
        Ok((spent, resets_in(now)))
    }

    /// Replaces a workspace's own limits, after checking them.
    pub async fn set_workspace_limits(
        &self,
        workspace_id: &str,
        limits: WorkspaceLimits,
        updated_by: Option<&str>,
    ) -> Result<()> {
        for (field, v) in [
            ("max_run_cost_usd", limits.max_run_cost_usd),
            ("daily_budget_usd", limits.daily_budget_usd),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0 && v <= MAX_DOLLARS)
            {
                return Err(Error::Invalid(format!(
                    "{field}: a dollar amount above 0 and at most {MAX_DOLLARS}, or null for \
                     the server's default"
                )));
            }
        }
        for (field, v) in [
            ("max_concurrent_runs", limits.max_concurrent_runs),
            ("max_warm_sandboxes", limits.max_warm_sandboxes),
        ] {
            if v.is_some_and(|n| n == 0 || n > MAX_COUNT) {
                return Err(Error::Invalid(format!(
                    "{field}: between 1 and {MAX_COUNT}, or null for the server's default"
                )));
            }
        }
        self.inner
            .store
            .set_workspace_limits(workspace_id, &limits, updated_by, now_ms())
            .await?;
        // The proxy remembers budgets briefly; the next model call must see this one.
        self.inner.proxy.budgets().limits_changed(workspace_id);
        Ok(())
    }

    /// A workspace's limits as they apply (its own, else the server's defaults).
    pub async fn workspace_limits(&self, workspace_id: &str) -> Result<WorkspaceLimits> {
        self.effective_limits(workspace_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Run, Sandbox, SandboxKind, User, Workspace};
    use delegate_mcp::types::{RunStatus, SandboxStatus};

    /// A store with workspaces `a` and `b`, each with a sandbox `s_a` / `s_b`.
    async fn store() -> Arc<dyn Store> {
        let store = crate::store::connect("sqlite::memory:").await.unwrap();
        let user = User {
            id: "u".into(),
            email: "u@example.com".into(),
            name: "U".into(),
            created_at: 1,
        };
        store.create_user(&user).await.unwrap();
        for w in ["a", "b"] {
            let ws = Workspace {
                id: w.into(),
                slug: w.into(),
                name: w.into(),
                created_at: 1,
            };
            store.create_workspace(&ws, "u").await.unwrap();
            store
                .insert_sandbox(&Sandbox {
                    id: format!("s_{w}"),
                    workspace_id: w.into(),
                    name: "s".into(),
                    kind: SandboxKind::Ephemeral,
                    backend: "process".into(),
                    status: SandboxStatus::Running,
                    status_reason: None,
                    idle_timeout_s: None,
                    meta: serde_json::json!({}),
                    created_by: None,
                    created_at: 1,
                    updated_at: 1,
                    base: None,
                })
                .await
                .unwrap();
        }
        store
    }

    /// Writes run `id` of workspace `ws` (queued, created at `at`) and marks its ticket ready.
    async fn queue(store: &Arc<dyn Store>, ticket: &Ticket, id: &str, ws: &str, at: i64) {
        store
            .insert_run(&Run {
                id: id.into(),
                sandbox_id: format!("s_{ws}"),
                workspace_id: ws.into(),
                task: "t".into(),
                model: None,
                agent: None,
                status: RunStatus::Queued,
                timeout_s: 60,
                created_by: None,
                created_at: at,
                started_at: None,
                finished_at: None,
                parent_run_id: None,
                outcome: Default::default(),
            })
            .await
            .unwrap();
        ticket.ready().await;
    }

    async fn end(store: &Arc<dyn Store>, id: &str) {
        store
            .finish_run(
                id,
                RunStatus::Queued,
                RunStatus::Cancelled,
                &Default::default(),
                9,
            )
            .await
            .unwrap();
    }

    fn running(admission: &Admission) -> usize {
        lock(&admission.state).running
    }

    #[tokio::test]
    async fn a_run_over_its_workspace_quota_waits_in_the_databases_order_and_gets_the_freed_slot() {
        let store = store().await;
        let admission = Admission::new(16, 8, store.clone());
        let first = admission.enter("run_1", "a", Some(1)).unwrap();
        queue(&store, &first, "run_1", "a", 1).await;
        assert_eq!(
            store.queue_position("run_1").await.unwrap(),
            None,
            "taken at once"
        );
        let first = first.slot().await;
        let second = admission.enter("run_2", "a", Some(1)).unwrap();
        queue(&store, &second, "run_2", "a", 2).await;
        let third = admission.enter("run_3", "a", Some(1)).unwrap();
        queue(&store, &third, "run_3", "a", 3).await;
        assert_eq!(store.queue_position("run_2").await.unwrap(), Some(1));
        assert_eq!(store.queue_position("run_3").await.unwrap(), Some(2));
        // Another workspace is not held up by this one's quota.
        let other = admission.enter("run_4", "b", Some(1)).unwrap();
        queue(&store, &other, "run_4", "b", 4).await;
        assert_eq!(store.queue_position("run_4").await.unwrap(), None);
        let other = other.slot().await;
        assert_eq!(running(&admission), 2);

        // The first ends: its slot goes to the oldest waiting run.
        end(&store, "run_1").await;
        drop(first);
        let second = tokio::time::timeout(POLL * 5, second.slot())
            .await
            .expect("the second run gets the freed slot");
        assert_eq!(store.queue_position("run_3").await.unwrap(), Some(1));
        // Leaving the line (a cancel) frees the place.
        drop(third);
        end(&store, "run_3").await;
        assert_eq!(store.queue_position("run_3").await.unwrap(), None);
        drop(second);
        drop(other);
        assert_eq!(
            (running(&admission), lock(&admission.state).queue.len()),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn the_server_limit_queues_too_and_the_line_is_bounded() {
        let store = store().await;
        let admission = Admission::new(1, 1, store.clone());
        let first = admission.enter("run_1", "a", None).unwrap();
        queue(&store, &first, "run_1", "a", 1).await;
        let first = first.slot().await;
        let waiting = admission.enter("run_2", "b", None).unwrap();
        queue(&store, &waiting, "run_2", "b", 2).await;
        assert_eq!(store.queue_position("run_2").await.unwrap(), Some(1));
        let refused = admission.enter("run_3", "b", None);
        assert!(matches!(refused, Err(Error::Limit(m)) if m.contains("DELEGATE_MAX_QUEUED_RUNS")));
        // This server's slot frees: the waiting run is let in.
        drop(first);
        let waiting = tokio::time::timeout(POLL * 5, waiting.slot())
            .await
            .expect("the waiting run gets the slot");
        assert_eq!(store.queue_position("run_2").await.unwrap(), None);
        drop(waiting);
        assert_eq!(
            (running(&admission), lock(&admission.state).queue.len()),
            (0, 0)
        );
    }
}

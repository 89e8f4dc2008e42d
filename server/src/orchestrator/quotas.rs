//! Admission of runs, and the workspace quotas checked before anything is written.
//!
//! A run takes a slot before it starts: one of the server's `DELEGATE_MAX_CONCURRENT_RUNS` and one
//! of its workspace's `max_concurrent_runs`. Without a free slot it waits in `queued`, first come
//! first served per workspace (a run never passes an earlier one of its own workspace; a run of
//! another workspace with room may). The queue is bounded (`DELEGATE_MAX_QUEUED_RUNS`); past it a
//! run is refused with a `limit` error. A queued run holds a [`Ticket`]; dropping it (the run was
//! cancelled) leaves the line, and dropping a [`Slot`] lets the next waiting run in.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Error, Orchestrator, Result, lock};
use crate::ids::now_ms;
use crate::proxy::resets_in;
use crate::store::{SandboxKind, WorkspaceLimits};
use delegate_mcp::types::SandboxStatus;

/// The largest dollar amount a workspace limit may be.
const MAX_DOLLARS: f64 = 1_000_000.0;
/// The largest count a workspace quota may be.
const MAX_COUNT: u64 = 100_000;

/// The run slots of one server and the line of runs waiting for one.
pub(super) struct Admission {
    max_running: usize,
    max_queued: usize,
    state: Mutex<Line>,
}

#[derive(Default)]
struct Line {
    /// Runs holding a slot, in all and per workspace.
    running: usize,
    by_workspace: std::collections::HashMap<String, usize>,
    /// Runs waiting, oldest first.
    queue: VecDeque<Waiter>,
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    run_id: String,
    workspace_id: String,
    workspace_limit: Option<usize>,
    admit: oneshot::Sender<()>,
}

impl Admission {
    pub(super) fn new(max_running: usize, max_queued: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_running: max_running.max(1),
            max_queued,
            state: Mutex::new(Line::default()),
        })
    }

    /// Joins the line for a slot: the run gets one at once ([`Admission::position`] is then
    /// `None`) or waits. Refused when the line is full.
    pub(super) fn enter(
        self: &Arc<Self>,
        run_id: &str,
        workspace_id: &str,
        workspace_limit: Option<usize>,
    ) -> Result<Ticket> {
        let mut line = lock(&self.state);
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        let (admit, admitted) = oneshot::channel();
        line.queue.push_back(Waiter {
            ticket,
            run_id: run_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            workspace_limit,
            admit,
        });
        self.pump(&mut line);
        let waiting = line.queue.iter().any(|w| w.ticket == ticket);
        if waiting && line.queue.len() > self.max_queued {
            line.queue.retain(|w| w.ticket != ticket);
            return Err(Error::Limit(format!(
                "too many runs waiting for a slot on this server (limit {}); retry later or \
                 raise DELEGATE_MAX_QUEUED_RUNS",
                self.max_queued
            )));
        }
        Ok(Ticket {
            admission: self.clone(),
            ticket,
            workspace_id: workspace_id.to_owned(),
            admitted: Some(admitted),
            taken: false,
        })
    }

    /// The place of a waiting run among its workspace's waiting runs (1: next); `None` when it
    /// is not waiting here.
    pub(super) fn position(&self, run_id: &str) -> Option<u64> {
        let line = lock(&self.state);
        let me = line.queue.iter().position(|w| w.run_id == run_id)?;
        let workspace = &line.queue[me].workspace_id;
        let ahead = line
            .queue
            .iter()
            .take(me)
            .filter(|w| &w.workspace_id == workspace)
            .count();
        Some(ahead as u64 + 1)
    }

    /// Lets in every waiting run that has room now, oldest first; a run blocked by its
    /// workspace's limit also holds back the later runs of that workspace.
    fn pump(&self, line: &mut Line) {
        let mut held_back: HashSet<String> = HashSet::new();
        let mut i = 0;
        while i < line.queue.len() && line.running < self.max_running {
            let w = &line.queue[i];
            let used = line.by_workspace.get(&w.workspace_id).copied().unwrap_or(0);
            if held_back.contains(&w.workspace_id) || w.workspace_limit.is_some_and(|l| used >= l) {
                held_back.insert(w.workspace_id.clone());
                i += 1;
                continue;
            }
            let Some(w) = line.queue.remove(i) else {
                break;
            };
            line.running += 1;
            *line.by_workspace.entry(w.workspace_id).or_default() += 1;
            // A waiter that is gone frees its slot when its ticket drops.
            let _ = w.admit.send(());
        }
    }

    fn release(&self, workspace_id: &str) {
        let mut line = lock(&self.state);
        line.running = line.running.saturating_sub(1);
        if let Some(n) = line.by_workspace.get_mut(workspace_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                line.by_workspace.remove(workspace_id);
            }
        }
        self.pump(&mut line);
    }
}

/// A run's place in line, or its slot once admitted ([`Ticket::slot`]).
pub(super) struct Ticket {
    admission: Arc<Admission>,
    ticket: u64,
    workspace_id: String,
    admitted: Option<oneshot::Receiver<()>>,
    /// Whether the slot was handed to a [`Slot`] (which then releases it).
    taken: bool,
}

impl Ticket {
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
            workspace_id: self.workspace_id.clone(),
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
            self.admission.release(&self.workspace_id);
        }
    }
}

/// A run slot; dropping it lets the next waiting run in.
pub(super) struct Slot {
    admission: Arc<Admission>,
    workspace_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(&self.workspace_id);
    }
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

    /// Refuses one more warm sandbox over the workspace's `max_warm_sandboxes` quota. Every warm
    /// sandbox that is not deleted or failed counts, paused ones too: they keep their files and
    /// wake up for the next run without asking again. The guard it returns is held until the new
    /// sandbox's row is written, so creates in this process cannot overtake each other.
    pub(super) async fn check_warm_quota(
        &self,
        workspace_id: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.inner.warm_quota.lock().await;
        let Some(max) = self
            .effective_limits(workspace_id)
            .await?
            .max_warm_sandboxes
        else {
            return Ok(guard);
        };
        let warm = self
            .inner
            .store
            .list_sandboxes(workspace_id)
            .await?
            .into_iter()
            .filter(|s| {
                s.kind == SandboxKind::Warm
                    && !matches!(s.status, SandboxStatus::Deleted | SandboxStatus::Failed)
            })
            .count() as u64;
        if warm >= max {
            return Err(Error::Limit(format!(
                "the workspace has {warm} warm sandboxes, its max_warm_sandboxes quota is {max} \
                 (paused ones count); delete one first, or ask a maintainer to raise the quota"
            )));
        }
        Ok(guard)
    }

    /// A waiting run's place in its workspace's line on this server (1: next).
    pub(super) fn queue_position(&self, run_id: &str) -> Option<u64> {
        self.inner.admission.position(run_id)
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

    #[tokio::test]
    async fn a_run_over_its_workspace_limit_waits_first_in_line_and_gets_the_freed_slot() {
        let admission = Admission::new(16, 8);
        let first = admission.enter("run_1", "wsp_a", Some(1)).unwrap();
        assert_eq!(
            admission.position("run_1"),
            None,
            "a free slot is taken at once"
        );
        let first = first.slot().await;
        let second = admission.enter("run_2", "wsp_a", Some(1)).unwrap();
        let third = admission.enter("run_3", "wsp_a", Some(1)).unwrap();
        assert_eq!(admission.position("run_2"), Some(1));
        assert_eq!(admission.position("run_3"), Some(2));
        assert_eq!(admission.position("run_3"), Some(2));
        // Another workspace is not held up by this one's limit.
        let other = admission.enter("run_4", "wsp_b", Some(1)).unwrap();
        assert_eq!(admission.position("run_4"), None);
        drop(first);
        assert_eq!(
            admission.position("run_2"),
            None,
            "the freed slot went to the oldest"
        );
        assert_eq!(admission.position("run_3"), Some(1));
        let second = second.slot().await;
        // Leaving the line (a cancel) frees the place; dropping a slot lets the next in.
        drop(third);
        assert_eq!(admission.position("run_3"), None);
        drop(second);
        drop(other);
        let line = lock(&admission.state);
        assert_eq!((line.running, line.queue.len()), (0, 0));
        assert!(line.by_workspace.is_empty());
    }

    #[tokio::test]
    async fn the_server_limit_queues_too_and_the_line_is_bounded() {
        let admission = Admission::new(1, 1);
        let running = admission
            .enter("run_1", "wsp_a", None)
            .unwrap()
            .slot()
            .await;
        let waiting = admission.enter("run_2", "wsp_b", None).unwrap();
        assert_eq!(admission.position("run_2"), Some(1));
        let refused = admission.enter("run_3", "wsp_c", None);
        assert!(matches!(refused, Err(Error::Limit(m)) if m.contains("DELEGATE_MAX_QUEUED_RUNS")));
        assert_eq!(admission.position("run_3"), None);
        // An admitted ticket dropped before its run took the slot gives it back.
        drop(running);
        assert_eq!(admission.position("run_2"), None);
        drop(waiting);
        let line = lock(&admission.state);
        assert_eq!((line.running, line.queue.len()), (0, 0));
    }
}

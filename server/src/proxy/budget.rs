//! Spending limits the proxy enforces before it relays a model call: a run's `max_cost_usd` and
//! its workspace's budget for the UTC day.
//!
//! Usage is only known when a response ends, so a call that crosses a budget completes; the check
//! runs before each call, so the next one is refused (Anthropic's `billing_error`, HTTP 402, which
//! clients do not retry) and the run is told to stop through the token it registered.
//!
//! A run's spend is summed here, in memory, as each call ends: all of a run's calls go through the
//! proxy of the server that executes it, and an in-memory sum has no window between a call's end
//! and its usage row landing. A workspace's spend is the sum of its usage rows for the day plus
//! the calls this process has ended but not yet written, so it agrees with the rows and never
//! lags them.
//!
//! A workspace's own daily budget is read from the store at most every [`LIMITS_TTL`] per
//! workspace (a store round trip on every model call was most of what the proxy added to a call):
//! a change made through this process applies to the next call ([`Budgets::limits_changed`]), one
//! made through another server process within [`LIMITS_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::ids::now_ms;
use crate::settings::LimitSettings;
use crate::store::{Store, StoreError};

/// A UTC day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// How long a workspace's own daily budget, once read, is used without reading it again.
pub const LIMITS_TTL: Duration = Duration::from_secs(5);
/// Workspaces whose budget is remembered before the stale ones are dropped.
const MAX_REMEMBERED: usize = 10_000;

/// The start of the UTC day `at` (ms) falls in.
pub fn day_start(at: i64) -> i64 {
    at - at.rem_euclid(DAY_MS)
}

/// "resets at 00:00 UTC, in 3h 12m": when the UTC day after `now` begins.
pub fn resets_in(now: i64) -> String {
    let left = (day_start(now) + DAY_MS - now).max(0) / 60_000;
    format!("resets at 00:00 UTC, in {}h {:02}m", left / 60, left % 60)
}

/// The budgets the proxy enforces; cheap to clone, shared by the proxy and the orchestrator.
#[derive(Clone, Default)]
pub struct Budgets {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The server-wide defaults of workspace limits.
    defaults: RwLock<LimitSettings>,
    /// Runs executing in this process, by run id.
    runs: Mutex<HashMap<String, Watched>>,
    /// Dollars of calls that have ended but whose usage row is not written yet, by workspace.
    unwritten: Mutex<HashMap<String, f64>>,
    /// Each workspace's own daily budget (`None`: the server's default) and when it was read.
    own_budgets: Mutex<HashMap<String, (Instant, Option<f64>)>>,
}

struct Watched {
    max_cost_usd: Option<f64>,
    spent: f64,
    stop: CancellationToken,
    /// Why the run was stopped, once it was.
    why: Option<String>,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct OverBudget(pub String);

impl Budgets {
    /// Sets the server-wide defaults (`DELEGATE_WORKSPACE_DAILY_BUDGET_USD`, ...).
    pub fn set_defaults(&self, defaults: LimitSettings) {
        if let Ok(mut d) = self.inner.defaults.write() {
            *d = defaults;
        }
    }

    /// The server-wide defaults.
    pub fn defaults(&self) -> LimitSettings {
        self.inner.defaults.read().map(|d| *d).unwrap_or_default()
    }

    /// Starts metering a run: once its calls cost `max_cost_usd` (or its workspace's day is
    /// spent), its next call is refused and `stop` is cancelled.
    pub fn watch_run(&self, run_id: &str, max_cost_usd: Option<f64>, stop: CancellationToken) {
        lock(&self.inner.runs).insert(
            run_id.to_owned(),
            Watched {
                max_cost_usd,
                spent: 0.0,
                stop,
                why: None,
            },
        );
    }

    /// Stops metering a run; why it was stopped for its budget, if it was.
    pub fn forget_run(&self, run_id: &str) -> Option<String> {
        lock(&self.inner.runs).remove(run_id).and_then(|w| w.why)
    }

    /// Why a run was stopped for its budget, if it was.
    pub fn stopped(&self, run_id: &str) -> Option<String> {
        lock(&self.inner.runs)
            .get(run_id)
            .and_then(|w| w.why.clone())
    }

    /// Books a call that just ended: on its run at once, on its workspace until its usage row
    /// is written ([`Budgets::written`]).
    pub(super) fn ended(&self, run_id: Option<&str>, workspace_id: &str, cost: f64) {
        if let Some(run_id) = run_id
            && let Some(w) = lock(&self.inner.runs).get_mut(run_id)
        {
            w.spent += cost;
        }
        *lock(&self.inner.unwritten)
            .entry(workspace_id.to_owned())
            .or_default() += cost;
    }

    /// The usage row of a call [`Budgets::ended`] booked is written (or failed to be).
    pub(super) fn written(&self, workspace_id: &str, cost: f64) {
        let mut unwritten = lock(&self.inner.unwritten);
        if let Some(v) = unwritten.get_mut(workspace_id) {
            *v -= cost;
            if *v <= 1e-12 {
                unwritten.remove(workspace_id);
            }
        }
    }

    /// Whether a call of `run_id` (if any) in `workspace_id` may go upstream now. A refusal stops
    /// the run.
    pub(super) async fn check(
        &self,
        store: &dyn Store,
        workspace_id: &str,
        run_id: Option<&str>,
    ) -> Result<(), CheckError> {
        if let Some(run_id) = run_id {
            let mut runs = lock(&self.inner.runs);
            if let Some(w) = runs.get_mut(run_id) {
                if let Some(why) = &w.why {
                    return Err(CheckError::Over(OverBudget(why.clone())));
                }
                if let Some(max) = w.max_cost_usd
                    && w.spent >= max
                {
                    let why = format!(
                        "the run's budget is spent: its model calls cost ${:.4} of its \
                         max_cost_usd ${max:.4}",
                        w.spent
                    );
                    stop(w, &why);
                    return Err(CheckError::Over(OverBudget(why)));
                }
            }
        }
        if let Some(why) = self.workspace_over(store, workspace_id).await? {
            if let Some(run_id) = run_id
                && let Some(w) = lock(&self.inner.runs).get_mut(run_id)
            {
                stop(w, &why);
            }
            return Err(CheckError::Over(OverBudget(why)));
        }
        Ok(())
    }

    /// The workspace's own limits were changed: its next call reads them again.
    pub fn limits_changed(&self, workspace_id: &str) {
        lock(&self.inner.own_budgets).remove(workspace_id);
    }

    /// The workspace's own daily budget, from the store at most every [`LIMITS_TTL`].
    async fn own_budget(
        &self,
        store: &dyn Store,
        workspace_id: &str,
    ) -> Result<Option<f64>, StoreError> {
        if let Some((at, budget)) = lock(&self.inner.own_budgets).get(workspace_id)
            && at.elapsed() < LIMITS_TTL
        {
            return Ok(*budget);
        }
        let budget = store.workspace_limits(workspace_id).await?.daily_budget_usd;
        let mut remembered = lock(&self.inner.own_budgets);
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, (at, _)| at.elapsed() < LIMITS_TTL);
        }
        remembered.insert(workspace_id.to_owned(), (Instant::now(), budget));
        Ok(budget)
    }

    /// Why the workspace may not spend more today, if it may not.
    pub async fn workspace_over(
        &self,
        store: &dyn Store,
        workspace_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let own = self.own_budget(store, workspace_id).await?;
        let Some(budget) = own.or(self.defaults().workspace_daily_budget_usd) else {
            return Ok(None);
        };
        let now = now_ms();
        let spent = self.spent_today(store, workspace_id, now).await?;
        Ok((spent >= budget).then(|| {
            format!(
                "the workspace's budget for today is spent: ${spent:.4} of ${budget:.2} \
                 (it {})",
                resets_in(now)
            )
        }))
    }

    /// What the workspace's calls cost since the UTC day began, the unwritten ones included.
    pub async fn spent_today(
        &self,
        store: &dyn Store,
        workspace_id: &str,
        now: i64,
    ) -> Result<f64, StoreError> {
        // Read before the rows: a call written in between is counted twice (refusing early),
        // never missed.
        let unwritten = lock(&self.inner.unwritten)
            .get(workspace_id)
            .copied()
            .unwrap_or(0.0);
        let written = store
            .workspace_spend_since(workspace_id, day_start(now))
            .await?;
        Ok(written + unwritten)
    }
}

fn stop(w: &mut Watched, why: &str) {
    if w.why.is_none() {
        w.why = Some(why.to_owned());
    }
    w.stop.cancel();
}

/// Why [`Budgets::check`] did not let a call through.
pub(super) enum CheckError {
    /// A budget is spent.
    Over(OverBudget),
    /// The store could not say.
    Store(StoreError),
}

impl From<StoreError> for CheckError {
    fn from(e: StoreError) -> Self {
        CheckError::Store(e)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_days() {
        let noon = 20_000 * DAY_MS + DAY_MS / 2;
        assert_eq!(day_start(noon), 20_000 * DAY_MS);
        assert_eq!(day_start(20_000 * DAY_MS), 20_000 * DAY_MS);
        assert_eq!(resets_in(noon), "resets at 00:00 UTC, in 12h 00m");
        assert_eq!(
            resets_in(20_001 * DAY_MS - 60_000),
            "resets at 00:00 UTC, in 0h 01m"
        );
    }

    #[test]
    fn a_run_is_stopped_once_its_calls_reach_its_budget() {
        let budgets = Budgets::default();
        let stop = CancellationToken::new();
        budgets.watch_run("run_a", Some(0.01), stop.clone());
        budgets.ended(Some("run_a"), "wsp_a", 0.004);
        budgets.ended(Some("run_a"), "wsp_a", 0.004);
        let runs = lock(&budgets.inner.runs);
        assert!((runs["run_a"].spent - 0.008).abs() < 1e-12);
        drop(runs);
        assert!(!stop.is_cancelled());
        budgets.ended(Some("run_a"), "wsp_a", 0.004);
        budgets.written("wsp_a", 0.012);
        assert!(lock(&budgets.inner.unwritten).is_empty());
        assert_eq!(budgets.forget_run("run_a"), None);
    }
}

//! Retention: runs that ended more than `DELEGATE_RETAIN_RUNS_DAYS` ago go, with their events,
//! usage rows and files under `<data>/runs/<id>/`, and so do usage rows of no run that old. A
//! background task prunes every [`RETENTION_SWEEP`], in small steps (a page of runs, a page of
//! one run's events per statement), so neither database holds a long transaction or locks a
//! table while runs go on. A run still going, one live in this process, and the latest run of a
//! warm sandbox that still exists (the next run starts from its work) are never pruned.
//! Uploaded snapshots expire on their own (see `snapshots`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Orchestrator, Result, lock};
use crate::ids::{RunId, now_ms};

/// How often the pruner runs (also once at start).
pub(super) const RETENTION_SWEEP: Duration = Duration::from_secs(3600);
/// Runs looked up per page.
const RUNS_PER_PAGE: i64 = 100;
/// Events deleted per statement.
const EVENTS_PER_STATEMENT: i64 = 5000;
/// Usage rows deleted per statement.
const USAGE_PER_STATEMENT: i64 = 5000;
/// At most this many runs per sweep, so one sweep ends even on a huge backlog; the next one
/// goes on.
const MAX_RUNS_PER_SWEEP: usize = 10_000;

/// What the pruner removed since this process started (`delegate_retention_pruned_total`).
#[derive(Debug, Default)]
pub struct Pruned {
    /// Runs.
    pub runs: AtomicU64,
    /// Their events.
    pub events: AtomicU64,
    /// Usage rows (of pruned runs, and of no run).
    pub usage: AtomicU64,
}

/// One sweep's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    /// Runs deleted.
    pub runs: u64,
    /// Events deleted.
    pub events: u64,
    /// Usage rows deleted.
    pub usage: u64,
}

impl Orchestrator {
    /// What the pruner removed since this process started.
    pub fn pruned(&self) -> &Pruned {
        &self.inner.pruned
    }

    /// Prunes what ended before `now - DELEGATE_RETAIN_RUNS_DAYS` (nothing when it is 0).
    pub async fn prune_expired(&self) -> Result<PruneReport> {
        let days = self.inner.settings.retain_runs_days;
        if days == 0 {
            return Ok(PruneReport::default());
        }
        let keep_ms = i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
        self.prune_before(now_ms().saturating_sub(keep_ms)).await
    }

    /// Prunes runs that ended before `cutoff` (ms since the epoch) and usage rows of no run made
    /// before it; see the module docs for what is kept.
    pub async fn prune_before(&self, cutoff: i64) -> Result<PruneReport> {
        let store = &self.inner.store;
        let mut report = PruneReport::default();
        let mut seen = 0usize;
        'pages: loop {
            let page = store.expired_runs(cutoff, RUNS_PER_PAGE).await?;
            if page.is_empty() {
                break;
            }
            let mut progressed = false;
            for id in page {
                seen += 1;
                if seen > MAX_RUNS_PER_SWEEP {
                    break 'pages;
                }
                if self.is_live(&id) {
                    continue;
                }
                loop {
                    let n = store.prune_run_events(&id, EVENTS_PER_STATEMENT).await?;
                    report.events += n;
                    self.inner.pruned.events.fetch_add(n, Ordering::Relaxed);
                    if n < EVENTS_PER_STATEMENT as u64 {
                        break;
                    }
                }
                let (runs, usage) = store.delete_ended_run(&id).await?;
                report.runs += runs;
                report.usage += usage;
                self.inner.pruned.runs.fetch_add(runs, Ordering::Relaxed);
                self.inner.pruned.usage.fetch_add(usage, Ordering::Relaxed);
                progressed |= runs > 0;
                let dir = super::run_dir(&self.inner.settings.data_dir, &id);
                match tokio::fs::remove_dir_all(&dir).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(run = %id, "pruning {}: {e}", dir.display()),
                }
            }
            if !progressed {
                // Only live runs left on this page: the next sweep gets them.
                break;
            }
        }
        loop {
            let n = store.prune_usage(cutoff, USAGE_PER_STATEMENT).await?;
            report.usage += n;
            self.inner.pruned.usage.fetch_add(n, Ordering::Relaxed);
            if n < USAGE_PER_STATEMENT as u64 {
                break;
            }
        }
        Ok(report)
    }

    fn is_live(&self, id: &str) -> bool {
        id.parse::<RunId>()
            .map(|id| lock(&self.inner.live).contains_key(&id))
            .unwrap_or(false)
    }
}

/// One background sweep (see [`Orchestrator::every`]); logs what went.
pub(super) async fn sweep_expired(orch: Orchestrator) {
    match orch.prune_expired().await {
        Ok(r) if r == PruneReport::default() => {}
        Ok(r) => tracing::info!(
            runs = r.runs,
            events = r.events,
            usage = r.usage,
            "retention: pruned what ended more than DELEGATE_RETAIN_RUNS_DAYS ago"
        ),
        Err(e) => tracing::warn!("retention: pruning failed, tried again next sweep: {e}"),
    }
}

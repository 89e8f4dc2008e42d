//! The warm pool (`DELEGATE_WARM_POOL`): sandboxes of the server's backend and default image
//! kept started with `opencode serve` up, an empty work dir and no egress, so an ephemeral run
//! skips making a sandbox and starting `opencode serve` (BENCHMARKS.md, "Warm pool", says what a
//! hit still costs).
//!
//! - A pooled sandbox is not in the store until a run claims it: it counts against no quota and
//!   shows in no list. Its id, minted when it is made, becomes the row's id at claim.
//! - Its proxy token is minted when it is made and is in its environment, but has no record:
//!   the proxy refuses it until the claim stores one (bound to the sandbox and the run's
//!   workspace). The sandbox is destroyed after its one run and its token revoked, as a fresh
//!   sandbox's: nothing of one run can reach the next, which gets a sandbox of its own.
//! - Once made, its serve builds opencode's per-directory instance for the empty work dir, and
//!   runs one turn there (most of a first run's time: the first turn boots the work dir's
//!   services). The proxy refuses that turn's model call (the token has no record yet), which
//!   the pool requires: the turn reaches no model, and its session is deleted. A claim seeds
//!   the work dir (the run's repository and files) while opencode serve runs; a seed that
//!   carries opencode config or instructions has the instance disposed, so it is rebuilt from
//!   them. The run then goes through the HTTP API as a warm run does.
//! - Only runs the pool can serve claim: no env, secrets, setup or image, and an egress policy
//!   that allows nothing. An empty pool (or such inputs) falls back to a fresh sandbox.
//! - One background task refills it, one sandbox at a time, never in a run's way. With no claim
//!   for `DELEGATE_WARM_POOL_IDLE` it empties; the next run that could have used it fills it
//!   again. At shutdown it is destroyed; after a crash the start sweep removes labelled
//!   containers, and a process sandbox's processes end with the server.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use delegate_mcp::types::SandboxStatus;
use tokio::sync::{Notify, watch};

use super::grants::{grant_pooled_token, mint_pooled_token};
use super::{Orchestrator, Result, RunRequest, SnapshotFile, Warm, lock};
use crate::ids::{Origin, SandboxId, new_secret, now_ms};
use crate::opencode::serve::ServeClient;
use crate::sandbox::{SandboxError, SandboxSpec, ServeEndpoint};
use crate::settings::Secret;
use crate::store::{Sandbox, SandboxKind, Workspace};

/// How often the refill task looks whether the pool has been idle long enough to empty.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// The longest wait before making a pooled sandbox again after making one failed.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Upper bounds (seconds) of `delegate_pool_refill_seconds`' buckets.
const REFILL_BUCKETS: [f64; 8] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// An idle pooled sandbox: up, with opencode serve listening, its token not yet valid.
pub(super) struct Pooled {
    /// The sandbox's id, the row's id once claimed.
    pub(super) id: String,
    /// Its proxy token, in its environment since it started; recorded only at claim.
    token: Secret,
    endpoint: ServeEndpoint,
}

/// Why a run that could not use a pooled sandbox did not.
#[derive(Debug, Clone, Copy)]
enum Miss {
    /// The pool had no sandbox ready.
    Empty,
    /// The run asked for what a pooled sandbox cannot have (env, secrets, setup, an image,
    /// egress).
    Inputs,
}

/// The pool's state, shared by claims and the refill task.
pub(super) struct Pool {
    target: usize,
    idle: Duration,
    ready: Mutex<VecDeque<Pooled>>,
    /// How many are ready (the `delegate_pool_size` gauge; tests and benches wait on it).
    size: watch::Sender<usize>,
    /// Every pooled sandbox this process holds or is making, so the start sweep (which sees
    /// their containers but no row) leaves them alone.
    held: Mutex<HashSet<String>>,
    last_claim: Mutex<Instant>,
    /// Emptied after an idle spell: nothing is made until a run wants one again.
    dormant: AtomicBool,
    /// A claim took one (or found none): the refill task looks again.
    wake: Notify,
    /// Held while a pooled sandbox is being made, so shutdown waits for it and destroys it.
    making: tokio::sync::Mutex<()>,
    hits: AtomicU64,
    misses_empty: AtomicU64,
    misses_inputs: AtomicU64,
    refill_buckets: [AtomicU64; REFILL_BUCKETS.len()],
    refill_count: AtomicU64,
    refill_micros: AtomicU64,
}

impl Pool {
    pub(super) fn new(target: usize, idle: Duration) -> Pool {
        Pool {
            target,
            idle,
            ready: Mutex::new(VecDeque::new()),
            size: watch::channel(0).0,
            held: Mutex::new(HashSet::new()),
            last_claim: Mutex::new(Instant::now()),
            dormant: AtomicBool::new(false),
            wake: Notify::new(),
            making: tokio::sync::Mutex::new(()),
            hits: AtomicU64::new(0),
            misses_empty: AtomicU64::new(0),
            misses_inputs: AtomicU64::new(0),
            refill_buckets: Default::default(),
            refill_count: AtomicU64::new(0),
            refill_micros: AtomicU64::new(0),
        }
    }

    fn ready_count(&self) -> usize {
        lock(&self.ready).len()
    }

    fn publish_size(&self) {
        let n = self.ready_count();
        self.size.send_replace(n);
    }

    fn wants_more(&self) -> bool {
        !self.dormant.load(Ordering::Acquire) && self.ready_count() < self.target
    }

    /// Takes a ready sandbox for a run, or counts the miss; either way the run is activity
    /// (the idle clock starts over) and the refill task looks again.
    fn take(&self) -> Option<Pooled> {
        *lock(&self.last_claim) = Instant::now();
        self.dormant.store(false, Ordering::Release);
        let taken = lock(&self.ready).pop_front();
        match &taken {
            Some(p) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                lock(&self.held).remove(&p.id);
            }
            None => self.miss(Miss::Empty),
        }
        self.publish_size();
        self.wake.notify_one();
        taken
    }

    fn miss(&self, why: Miss) {
        match why {
            Miss::Empty => &self.misses_empty,
            Miss::Inputs => &self.misses_inputs,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn record_refill(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, bucket) in REFILL_BUCKETS.iter().zip(&self.refill_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.refill_count.fetch_add(1, Ordering::Relaxed);
        self.refill_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Every ready sandbox, taken out (to destroy).
    fn drain(&self) -> Vec<Pooled> {
        let drained: Vec<Pooled> = lock(&self.ready).drain(..).collect();
        self.publish_size();
        drained
    }

    /// Appends the pool's figures in Prometheus text format.
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        // `write!` to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP delegate_pool_size Idle sandboxes in the warm pool, ready for a run to claim."
        );
        let _ = writeln!(out, "# TYPE delegate_pool_size gauge");
        let _ = writeln!(out, "delegate_pool_size {}", self.ready_count());
        let _ = writeln!(
            out,
            "# HELP delegate_pool_target The warm pool's size when full (DELEGATE_WARM_POOL)."
        );
        let _ = writeln!(out, "# TYPE delegate_pool_target gauge");
        let _ = writeln!(out, "delegate_pool_target {}", self.target);
        let _ = writeln!(
            out,
            "# HELP delegate_pool_hits_total Ephemeral runs that started in a pooled sandbox."
        );
        let _ = writeln!(out, "# TYPE delegate_pool_hits_total counter");
        let _ = writeln!(
            out,
            "delegate_pool_hits_total {}",
            self.hits.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP delegate_pool_misses_total Ephemeral runs that made a fresh sandbox instead, by reason: the pool was empty, or the run asked for env, secrets, setup, an image or egress."
        );
        let _ = writeln!(out, "# TYPE delegate_pool_misses_total counter");
        for (reason, n) in [
            ("empty", &self.misses_empty),
            ("inputs", &self.misses_inputs),
        ] {
            let _ = writeln!(
                out,
                "delegate_pool_misses_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP delegate_pool_refill_seconds Time to make one pooled sandbox (opencode serve listening)."
        );
        let _ = writeln!(out, "# TYPE delegate_pool_refill_seconds histogram");
        for (bound, bucket) in REFILL_BUCKETS.iter().zip(&self.refill_buckets) {
            let _ = writeln!(
                out,
                "delegate_pool_refill_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.refill_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "delegate_pool_refill_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "delegate_pool_refill_seconds_sum {}",
            self.refill_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "delegate_pool_refill_seconds_count {count}");
    }
}

/// Starts the refill task: it keeps the pool full, one sandbox at a time, and empties it after
/// an idle spell. It holds the orchestrator only while it works, and ends at shutdown.
pub(super) fn start(orch: &Orchestrator) {
    let Some(pool) = orch.inner.pool.clone() else {
        return;
    };
    let weak = Arc::downgrade(&orch.inner);
    let shutdown = orch.inner.shutdown.clone();
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            if !pool.wants_more() {
                tokio::select! {
                    _ = pool.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_CHECK.min(pool.idle)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if shutdown.is_cancelled() {
                return;
            }
            let orch = Orchestrator { inner };
            if lock(&pool.last_claim).elapsed() >= pool.idle && pool.ready_count() > 0 {
                pool.dormant.store(true, Ordering::Release);
                let idle = pool.drain();
                tracing::info!(
                    sandboxes = idle.len(),
                    "the warm pool was not used for {}s: emptied until the next run",
                    pool.idle.as_secs()
                );
                orch.destroy_pooled(idle).await;
                continue;
            }
            if !pool.wants_more() {
                continue;
            }
            match orch.refill_one(&pool).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
                    tracing::warn!(error = %e, "could not make a pooled sandbox; trying again in {}s", wait.as_secs());
                    drop(orch);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    });
}

impl Orchestrator {
    /// Makes one pooled sandbox and adds it to the pool (destroys it instead if the server began
    /// shutting down or the pool went dormant meanwhile).
    async fn refill_one(&self, pool: &Pool) -> Result<()> {
        let _making = pool.making.lock().await;
        if self.inner.shutdown.is_cancelled() {
            return Ok(());
        }
        let id = SandboxId::new().into_string();
        let token = mint_pooled_token();
        let spec = SandboxSpec {
            id: id.clone(),
            workspace: None,
            kind: SandboxKind::Warm,
            files: BTreeMap::new(),
            repo: None,
            proxy_token: token.clone(),
            serve_password: Some(Secret::new(new_secret(""))),
            egress: None,
            env: Vec::new(),
            image: None,
        };
        lock(&pool.held).insert(id.clone());
        let started = Instant::now();
        let made = self.inner.backend.create_pooled(&spec).await;
        // The run's first request would build opencode's instance for the work dir, and its
        // first turn boot the work dir's services (most of a hit's time): do both now, on the
        // empty dir, with a turn the proxy refuses; a seed that brings its own opencode config
        // drops the instance again (`seed_pooled`).
        let made = match made {
            Ok(endpoint) => {
                let serve = ServeClient::new(
                    &endpoint.url,
                    endpoint.password.clone(),
                    &endpoint.directory,
                );
                let model = &self.inner.settings.model;
                match serve.warm_instance(model).await {
                    Ok(()) => serve.warm_turn(model).await,
                    Err(e) => Err(e),
                }
                .map(|()| endpoint)
                .map_err(|e| SandboxError::Start(format!("warming the pooled sandbox: {e}")))
            }
            Err(e) => Err(e),
        };
        let endpoint = match made {
            Ok(endpoint) => endpoint,
            Err(e) => {
                // A failed create cleans up after itself; this only makes sure.
                let _ = self.inner.backend.destroy(&id).await;
                lock(&pool.held).remove(&id);
                return Err(e.into());
            }
        };
        pool.record_refill(started.elapsed());
        let entry = Pooled {
            id,
            token,
            endpoint,
        };
        if self.inner.shutdown.is_cancelled() || pool.dormant.load(Ordering::Acquire) {
            self.destroy_pooled(vec![entry]).await;
            return Ok(());
        }
        lock(&pool.ready).push_back(entry);
        pool.publish_size();
        Ok(())
    }

    async fn destroy_pooled(&self, entries: Vec<Pooled>) {
        let Some(pool) = &self.inner.pool else {
            return;
        };
        for entry in entries {
            if let Err(e) = self.inner.backend.destroy(&entry.id).await {
                tracing::warn!(sandbox = %entry.id, error = %e, "could not remove a pooled sandbox");
            }
            lock(&pool.held).remove(&entry.id);
        }
    }

    /// At shutdown: waits for a pooled sandbox being made and destroys every pooled sandbox
    /// (they are not adoptable: the next start makes its own).
    pub(super) async fn empty_pool(&self) {
        let Some(pool) = &self.inner.pool else {
            return;
        };
        let _making = pool.making.lock().await;
        let entries = pool.drain();
        self.destroy_pooled(entries).await;
    }

    /// Whether `sandbox_id` is a pooled sandbox of this process (not in the store, and not an
    /// orphan).
    pub(super) fn pool_holds(&self, sandbox_id: &str) -> bool {
        self.inner
            .pool
            .as_ref()
            .is_some_and(|p| lock(&p.held).contains(sandbox_id))
    }

    /// A pooled sandbox made `req`'s: its row written (ephemeral, `creating`, this server's) and
    /// its token made valid for the run's workspace. `None` when there is no pool, the run asks
    /// for what a pooled sandbox cannot have, or the pool is empty: the run makes a fresh
    /// sandbox, as without a pool.
    pub(super) async fn claim_pooled(
        &self,
        ws: &Workspace,
        req: &RunRequest,
        snapshot: Option<&SnapshotFile>,
    ) -> Result<Option<(Sandbox, Pooled)>> {
        let Some(pool) = &self.inner.pool else {
            return Ok(None);
        };
        // Checked as a fresh sandbox's would be: a bad `network` is an error either way.
        let policy = self.choose_policy(ws, req.network.as_deref()).await?;
        if !req.inputs.is_empty() || !policy.denies_all() {
            pool.miss(Miss::Inputs);
            return Ok(None);
        }
        let Some(entry) = pool.take() else {
            return Ok(None);
        };
        let now = now_ms();
        let sandbox = Sandbox {
            id: entry.id.clone(),
            workspace_id: ws.id.clone(),
            name: entry.id.clone(),
            kind: SandboxKind::Ephemeral,
            backend: self.inner.backend.name().to_string(),
            status: SandboxStatus::Creating,
            status_reason: None,
            idle_timeout_s: None,
            meta: serde_json::json!({
                "network": policy.name,
                "env": Vec::<String>::new(),
                "secrets": Vec::<String>::new(),
                "image": null,
                "setup": false,
                "pooled": true,
            }),
            created_by: req.created_by.as_ref().map(Origin::to_string),
            created_at: now,
            updated_at: now,
            base: snapshot.map(|s| s.base.clone()),
        };
        let recorded = async {
            self.inner.store.insert_sandbox(&sandbox).await?;
            self.inner
                .store
                .set_sandbox_owner(&sandbox.id, &self.inner.instance_id)
                .await?;
            grant_pooled_token(self.inner.store.as_ref(), &entry.token, &sandbox.id, &ws.id).await
        }
        .await;
        if let Err(e) = recorded {
            self.revoke_sandbox_tokens(&entry.id).await;
            if let Err(e) = self.inner.backend.destroy(&entry.id).await {
                tracing::warn!(sandbox = %entry.id, error = %e, "could not remove a pooled sandbox");
            }
            return Err(e);
        }
        Ok(Some((sandbox, entry)))
    }

    /// Seeds a claimed pooled sandbox with the run's repository and files and marks it
    /// `running`; on failure it is `failed` with the reason and its token revoked.
    pub(super) async fn seed_pooled(
        &self,
        entry: &Pooled,
        files: &BTreeMap<String, String>,
        repo: Option<&Path>,
    ) -> Result<()> {
        let sandbox_id = entry.id.as_str();
        let seeded = match self.inner.backend.seed(sandbox_id, files, repo).await {
            // The instance was built on the empty work dir: a repository with its own opencode
            // config or instructions gets it rebuilt from them (the slow path, for those alone).
            Ok(true) => {
                let e = &entry.endpoint;
                ServeClient::new(&e.url, e.password.clone(), &e.directory)
                    .dispose_instance()
                    .await
                    .map_err(|e| {
                        SandboxError::Start(format!("rebuilding opencode's instance: {e}"))
                    })
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        let failed = seeded.is_err();
        let settled = self
            .settle(
                sandbox_id,
                SandboxStatus::Creating,
                SandboxStatus::Running,
                "seed",
                seeded,
            )
            .await;
        if failed {
            self.revoke_sandbox_tokens(sandbox_id).await;
        }
        settled
    }

    /// The warm state a claimed pooled sandbox's run goes through (never in the warm map: the
    /// sandbox is the run's alone and goes with it).
    pub(super) fn pooled_warm(&self, entry: Pooled) -> Warm {
        Warm {
            backend: self.inner.backend.clone(),
            endpoint: entry.endpoint,
            last_session: None,
            last_active: Instant::now(),
            idle_timeout: self.inner.settings.idle_timeout,
        }
    }

    /// The warm pool's figures in Prometheus text format (`/metrics`); zeros when it is off.
    pub fn render_pool_metrics(&self, out: &mut String) {
        match &self.inner.pool {
            Some(pool) => pool.render(out),
            None => Pool::new(0, Duration::MAX).render(out),
        }
    }

    /// How many pooled sandboxes are ready now (0 without a pool).
    pub fn pool_size(&self) -> usize {
        self.inner.pool.as_ref().map_or(0, |p| p.ready_count())
    }

    /// The ids of the pooled sandboxes ready now, oldest (next to be claimed) first.
    pub fn pooled_sandbox_ids(&self) -> Vec<String> {
        self.inner.pool.as_ref().map_or_else(Vec::new, |p| {
            lock(&p.ready).iter().map(|e| e.id.clone()).collect()
        })
    }

    /// Waits until at least `n` pooled sandboxes are ready (at once without a pool when `n` is
    /// 0; never with a pool smaller than `n`).
    pub async fn pool_ready(&self, n: usize) {
        let Some(pool) = &self.inner.pool else {
            if n == 0 {
                return;
            }
            return std::future::pending().await;
        };
        let mut rx = pool.size.subscribe();
        let _ = rx.wait_for(|size| *size >= n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Pooled {
        Pooled {
            id: id.into(),
            token: Secret::new("dsb_x".to_string()),
            endpoint: ServeEndpoint {
                url: "http://127.0.0.1:1".into(),
                password: Secret::new("pw".to_string()),
                directory: "/workspace".into(),
            },
        }
    }

    #[test]
    fn a_claim_takes_the_oldest_and_the_metrics_count_hits_misses_and_refills() {
        let pool = Pool::new(2, Duration::from_secs(60));
        assert!(pool.take().is_none(), "an empty pool is a miss");
        pool.miss(Miss::Inputs);
        for id in ["sbx_a", "sbx_b"] {
            lock(&pool.held).insert(id.into());
            lock(&pool.ready).push_back(entry(id));
        }
        pool.publish_size();
        assert!(!pool.wants_more(), "full");
        assert_eq!(pool.take().map(|p| p.id).as_deref(), Some("sbx_a"));
        assert!(
            !lock(&pool.held).contains("sbx_a"),
            "claimed: the store has it now"
        );
        assert!(pool.wants_more());
        assert_eq!(*pool.size.borrow(), 1);
        pool.record_refill(Duration::from_millis(700));
        pool.record_refill(Duration::from_secs(3));
        let mut out = String::new();
        pool.render(&mut out);
        for needle in [
            "delegate_pool_size 1\n",
            "delegate_pool_target 2\n",
            "delegate_pool_hits_total 1\n",
            "delegate_pool_misses_total{reason=\"empty\"} 1\n",
            "delegate_pool_misses_total{reason=\"inputs\"} 1\n",
            "delegate_pool_refill_seconds_bucket{le=\"0.5\"} 0\n",
            "delegate_pool_refill_seconds_bucket{le=\"1\"} 1\n",
            "delegate_pool_refill_seconds_bucket{le=\"4\"} 2\n",
            "delegate_pool_refill_seconds_bucket{le=\"+Inf\"} 2\n",
            "delegate_pool_refill_seconds_sum 3.7\n",
            "delegate_pool_refill_seconds_count 2\n",
        ] {
            assert!(out.contains(needle), "{needle} not in\n{out}");
        }
        assert_eq!(pool.drain().len(), 1);
        assert_eq!(*pool.size.borrow(), 0);
    }
}

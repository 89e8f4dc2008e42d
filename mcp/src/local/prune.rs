//! Pruning the state dir of [`LocalDelegator`](super::LocalDelegator): without it every run
//! started from a repository would leave its kept snapshot (a scratch repository holding the
//! caller's uncommitted work, up to `DELEGATE_MAX_REPO_BYTES`) on the caller's disk for good.
//!
//! A kept snapshot goes when it has not been used for longer than the run retention
//! (`DELEGATE_RETAIN_RUNS_DAYS`, by then the server has pruned the run too), and, oldest first,
//! while the whole state dir is over `DELEGATE_LOCAL_KEEP_BYTES`. Never one that a run or an
//! apply in this process is using: those are [`Live`]. Each pruned snapshot leaves a tombstone
//! (`pruned/<key>.json`) so that applying its run later says why it cannot.
//!
//! The walk and the removals are blocking file system work: [`Keeper::prune`] runs them on the
//! blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How long and how much the caller's machine keeps of the snapshots runs started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepPolicy {
    /// `DELEGATE_RETAIN_RUNS_DAYS`: a snapshot unused for longer is pruned; 0 keeps them
    /// whatever their age.
    pub retain_days: u64,
    /// `DELEGATE_LOCAL_KEEP_BYTES`: the most the state dir may hold; over it, the least recently
    /// used snapshots go first.
    pub max_bytes: u64,
}

impl Default for KeepPolicy {
    fn default() -> Self {
        KeepPolicy {
            retain_days: 30,
            max_bytes: 5 << 30,
        }
    }
}

/// What one prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The snapshots removed (`run-<id>`, `sandbox-<id>`), oldest first.
    pub pruned: Vec<String>,
    /// Bytes freed, snapshots and stale temporary files together.
    pub freed_bytes: u64,
    /// Bytes the state dir holds afterwards.
    pub kept_bytes: u64,
}

/// Why a snapshot was pruned; written as its tombstone and named by a later apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub(super) enum Pruned {
    /// Unused for longer than the retention.
    Age {
        /// `DELEGATE_RETAIN_RUNS_DAYS` at the time.
        retain_days: u64,
    },
    /// The state dir was over its cap, and this was among the least recently used.
    Cap {
        /// `DELEGATE_LOCAL_KEEP_BYTES` at the time.
        max_bytes: u64,
    },
}

impl Pruned {
    /// Why, in words, for an apply that cannot happen.
    pub(super) fn explain(&self) -> String {
        match self {
            Pruned::Age { retain_days } => format!(
                "it was pruned after {retain_days} {} unused (DELEGATE_RETAIN_RUNS_DAYS)",
                if *retain_days == 1 { "day" } else { "days" }
            ),
            Pruned::Cap { max_bytes } => format!(
                "it was pruned, least recently used first, when the snapshots kept on this \
                 machine went over {} (DELEGATE_LOCAL_KEEP_BYTES)",
                delegate_repo::snapshot::human(*max_bytes)
            ),
        }
    }
}

/// Temporary files older than this are left over from a process that died mid-snapshot.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// Tombstones stay this long at least (longer with a longer retention), so an apply soon after
/// still says why; then they and the run records pointing at them go.
const TOMBSTONE_DAYS: u64 = 30;

/// Prefix of a snapshot being removed, under `tmp/` (a crash leaves it for the next prune).
const TRASH_PREFIX: &str = "pruning-";

/// `days` as a duration, saturating.
fn days(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(24 * 3600))
}

/// The snapshots this process is using: a prune leaves them alone.
#[derive(Debug, Default)]
pub(super) struct Live {
    /// Snapshot key -> how many uses hold it.
    keys: Mutex<HashMap<String, usize>>,
}

/// Holds a snapshot key live until dropped.
#[derive(Debug)]
pub(super) struct LiveGuard {
    live: Arc<Live>,
    key: String,
}

impl Live {
    /// Marks `key` in use until the guard is dropped.
    pub(super) fn hold(self: &Arc<Self>, key: &str) -> LiveGuard {
        *self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_string())
            .or_default() += 1;
        LiveGuard {
            live: self.clone(),
            key: key.to_string(),
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut keys = self
            .live
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = keys.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

/// The state dir's housekeeper, shared by the delegator and its background prunes.
#[derive(Debug)]
pub(super) struct Keeper {
    pub(super) state_dir: PathBuf,
    pub(super) policy: KeepPolicy,
    pub(super) live: Arc<Live>,
    /// One prune at a time in this process.
    pruning: Mutex<()>,
}

impl Keeper {
    pub(super) fn new(state_dir: PathBuf, policy: KeepPolicy) -> Keeper {
        Keeper {
            state_dir,
            policy,
            live: Arc::new(Live::default()),
            pruning: Mutex::new(()),
        }
    }

    /// The tombstone of a pruned snapshot.
    pub(super) fn tombstone(&self, key: &str) -> PathBuf {
        self.state_dir.join("pruned").join(format!("{key}.json"))
    }

    /// Why `key` was pruned, when it was.
    pub(super) async fn pruned(&self, key: &str) -> Option<Pruned> {
        let bytes = tokio::fs::read(self.tombstone(key)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Prunes now, on the blocking pool, and says what went.
    pub(super) async fn prune(self: &Arc<Self>) -> std::io::Result<PruneReport> {
        let keeper = self.clone();
        tokio::task::spawn_blocking(move || keeper.prune_blocking(SystemTime::now()))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Prunes `key` now when it is past the retention and not in use here, and says why: an
    /// apply must not depend on whether a background prune got to it first.
    pub(super) async fn expire_if_old(self: &Arc<Self>, key: &str) -> Option<Pruned> {
        let retain = (self.policy.retain_days > 0).then(|| days(self.policy.retain_days))?;
        let keeper = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = keeper
                .pruning
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let dir = keeper.state_dir.join("snapshots").join(&key);
            let unused = SystemTime::now()
                .duration_since(last_used(&dir))
                .unwrap_or_default();
            if !dir.is_dir() || unused <= retain {
                return None;
            }
            let why = Pruned::Age {
                retain_days: keeper.policy.retain_days,
            };
            matches!(keeper.remove_snapshot(&key, &why), Ok(true)).then_some(why)
        })
        .await
        .ok()
        .flatten()
    }

    /// Prunes in the background; a failure is logged.
    pub(super) fn prune_in_background(self: &Arc<Self>) {
        let keeper = self.clone();
        tokio::spawn(async move {
            match keeper.prune().await {
                Ok(report) if !report.pruned.is_empty() => tracing::info!(
                    pruned = ?report.pruned,
                    freed_bytes = report.freed_bytes,
                    "pruned kept snapshots"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune the kept snapshots"),
            }
        });
    }

    /// Runs on the blocking pool (see [`Keeper::prune`]).
    fn prune_blocking(&self, now: SystemTime) -> std::io::Result<PruneReport> {
        let _one_at_a_time = self
            .pruning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut report = PruneReport::default();
        let tmp = self.state_dir.join("tmp");
        let snapshots = self.state_dir.join("snapshots");

        // Leftovers first: removals a crash interrupted, snapshots a dead process was taking.
        let mut tmp_bytes = 0;
        for entry in list(&tmp)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let bytes = size_of(&path);
            let stale = name.starts_with(TRASH_PREFIX) || age(&path, now) > STALE_TMP;
            if stale && remove(&path) {
                report.freed_bytes += bytes;
            } else {
                tmp_bytes += bytes;
            }
        }

        let mut kept: Vec<(String, SystemTime, u64)> = list(&snapshots)?
            .into_iter()
            .map(|entry| {
                let path = entry.path();
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    last_used(&path),
                    size_of(&path),
                )
            })
            .collect();
        kept.sort_by_key(|(_, used, _)| *used);
        let mut total = tmp_bytes + kept.iter().map(|(_, _, bytes)| bytes).sum::<u64>();
        let retain = (self.policy.retain_days > 0).then(|| days(self.policy.retain_days));
        for (key, used, bytes) in kept {
            let unused = now.duration_since(used).unwrap_or_default();
            let why = if retain.is_some_and(|retain| unused > retain) {
                Pruned::Age {
                    retain_days: self.policy.retain_days,
                }
            } else if total > self.policy.max_bytes {
                Pruned::Cap {
                    max_bytes: self.policy.max_bytes,
                }
            } else {
                // Sorted by last use: nothing later is older, and the total is under the cap.
                break;
            };
            if self.remove_snapshot(&key, &why)? {
                report.pruned.push(key);
                report.freed_bytes += bytes;
                total -= bytes;
            }
        }
        report.kept_bytes = total;

        self.forget_old_tombstones(now)?;
        Ok(report)
    }

    /// Removes one kept snapshot unless it is live; its tombstone is written first, so an apply
    /// never finds neither. Returns whether it went.
    fn remove_snapshot(&self, key: &str, why: &Pruned) -> std::io::Result<bool> {
        let from = self.state_dir.join("snapshots").join(key);
        let trash = self
            .state_dir
            .join("tmp")
            .join(format!("{TRASH_PREFIX}{key}"));
        let tombstone = self.tombstone(key);
        std::fs::create_dir_all(tombstone.parent().unwrap_or(&self.state_dir))?;
        std::fs::create_dir_all(self.state_dir.join("tmp"))?;
        write_json(&tombstone, why)?;
        {
            // Checked and moved under the lock that `hold` takes: a use starting now either
            // holds the key first (and it stays) or finds it gone (and reads the tombstone).
            let keys = self
                .live
                .keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if keys.contains_key(key) {
                drop(keys);
                let _ = std::fs::remove_file(&tombstone);
                return Ok(false);
            }
            if let Err(e) = std::fs::rename(&from, &trash) {
                drop(keys);
                // Gone already: another process pruned it, and its tombstone (the same) stays.
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Ok(false);
                }
                let _ = std::fs::remove_file(&tombstone);
                return Err(e);
            }
        }
        if let Some(sandbox_id) = key.strip_prefix("sandbox-") {
            // Its branch record is of no use without the snapshot.
            let _ = std::fs::remove_file(
                self.state_dir
                    .join("sandboxes")
                    .join(format!("{sandbox_id}.json")),
            );
        }
        remove(&trash);
        Ok(true)
    }

    /// Tombstones older than the retention (at least [`TOMBSTONE_DAYS`]) go, and with them the
    /// run records whose snapshot is gone and no longer explained.
    fn forget_old_tombstones(&self, now: SystemTime) -> std::io::Result<()> {
        let keep_for = days(self.policy.retain_days.max(TOMBSTONE_DAYS));
        for entry in list(&self.state_dir.join("pruned"))? {
            if age(&entry.path(), now) > keep_for {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for entry in list(&self.state_dir.join("runs"))? {
            let path = entry.path();
            let Some(record) = read_json::<super::RunRecord>(&path) else {
                continue;
            };
            let snapshot = self.state_dir.join("snapshots").join(&record.snapshot);
            if !snapshot.exists() && !self.tombstone(&record.snapshot).exists() {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

/// When a kept snapshot was last used: its description's time (written when kept, touched by
/// every run and apply that uses it), else the directory's.
fn last_used(dir: &Path) -> SystemTime {
    std::fs::metadata(dir.join(delegate_repo::snapshot::KEPT_FILE))
        .or_else(|_| std::fs::metadata(dir))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Marks a kept snapshot used now (see [`last_used`]).
pub(super) async fn touch(dir: &Path) {
    let file = dir.join(delegate_repo::snapshot::KEPT_FILE);
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .append(true)
            .open(&file)
            .and_then(|f| f.set_modified(SystemTime::now()))
    })
    .await;
}

fn age(path: &Path, now: SystemTime) -> Duration {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map_or(Duration::MAX, |t| now.duration_since(t).unwrap_or_default())
}

/// The entries of `dir`; none when it does not exist yet.
fn list(dir: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Bytes of the files under `path` (symlinks not followed).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut bytes = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(entry.path()),
                Ok(_) => bytes += entry.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    bytes
}

/// Removes a file or a directory tree; whether it is gone.
fn remove(path: &Path) -> bool {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove");
            false
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

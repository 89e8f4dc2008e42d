//! A snapshot of a caller's work tree as it is now: HEAD's tree, plus the uncommitted changes to
//! tracked files and the untracked files that are not ignored, binary-safe, with symlinks as
//! symlinks and submodules as gitlinks. Nothing of the caller's `.git` (config, hooks, remotes,
//! credentials, other branches, history) goes into it.
//!
//! It is built in a scratch repository whose object store borrows the caller's (alternates), so
//! unchanged files are neither read twice nor copied: git hashes the work tree against a copy of
//! the caller's index and writes only new blobs, into the scratch store. The caller's working
//! tree, index, refs and object store are only read.
//!
//! The snapshot is two commits at most, in a git bundle the sandbox clones (its `HEAD` is the
//! caller's branch name, or `main`):
//! - `base`: HEAD's tree with no parent (so no history leaves the machine), its message naming the
//!   source commit;
//! - when the tree was dirty, a second commit on top with the uncommitted changes, so the agent
//!   can read `git log` and `git diff HEAD~1`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RepoError;
use crate::git::Git;

/// Caps on what a snapshot may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of file content in the snapshot's tree.
    pub max_bytes: u64,
    /// Entries (files, symlinks, gitlinks) in the snapshot's tree.
    pub max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_files: 200_000,
        }
    }
}

/// Where a snapshot came from; the result's `base` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The work tree's root on the caller's machine.
    pub repo: String,
    /// The caller's HEAD commit; `None` in a repository with no commit yet.
    pub commit: Option<String>,
    /// The caller's current branch, when HEAD is on one.
    pub branch: Option<String>,
    /// Whether there were uncommitted changes or untracked files.
    pub dirty: bool,
}

/// A snapshot ready to seed a sandbox. Its scratch repository stays until it is dropped (or, once
/// [kept](Snapshot::keep), until its directory is removed): the change that comes back is read
/// into it, and from there into the caller's repository.
#[derive(Debug)]
pub struct Snapshot {
    /// Holds the scratch repository and the bundle.
    dir: Scratch,
    /// The caller's work tree root.
    pub root: PathBuf,
    /// What the snapshot was taken from, as a result reports it.
    pub base: Base,
    /// The parentless commit with HEAD's tree.
    pub base_commit: String,
    /// What the sandbox starts from: the uncommitted-changes commit, or `base_commit`.
    pub tip: String,
    /// Bytes of file content in the tip's tree.
    pub bytes: u64,
    /// Entries in the tip's tree.
    pub files: u64,
}

/// The directory a snapshot lives in: removed with the value, or kept for a later process.
#[derive(Debug)]
enum Scratch {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Scratch {
    fn path(&self) -> &Path {
        match self {
            Scratch::Temporary(dir) => dir.path(),
            Scratch::Kept(dir) => dir,
        }
    }
}

/// What [`Snapshot::keep`] writes beside the scratch repository, so that [`Snapshot::open`] in
/// another process (`delegate apply` later) knows what the snapshot was taken from.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    root: PathBuf,
    base: Base,
    base_commit: String,
    tip: String,
    bytes: u64,
    files: u64,
}

/// The file [`Snapshot::keep`] writes in the kept directory (its time is when the snapshot was
/// kept, for whoever prunes kept snapshots).
pub const KEPT_FILE: &str = "snapshot.json";

impl Snapshot {
    /// The scratch repository (bare; its object store falls back on the caller's).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch.git")
    }

    /// The git bundle holding both commits and every object they need, for the sandbox.
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("snapshot.bundle")
    }

    /// The directory holding the scratch repository, the bundle and, once kept, its description.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Moves the snapshot to `dir` (which must not exist yet, on the same file system as the
    /// scratch parent given to [`Snapshot::take`]) and keeps it there after the value is
    /// dropped, with a description [`Snapshot::open`] reads back. The bundle is removed: the
    /// server has its own copy, and the scratch repository holds every commit.
    pub async fn keep(self, dir: &Path) -> Result<Snapshot, RepoError> {
        let kept = Kept {
            root: self.root.clone(),
            base: self.base.clone(),
            base_commit: self.base_commit.clone(),
            tip: self.tip.clone(),
            bytes: self.bytes,
            files: self.files,
        };
        let json = serde_json::to_vec_pretty(&kept)
            .map_err(|e| RepoError::Io(format!("describing the snapshot: {e}")))?;
        let from = self.dir.path().to_path_buf();
        tokio::fs::write(from.join(KEPT_FILE), json)
            .await
            .map_err(|e| RepoError::Io(format!("{}: {e}", from.display())))?;
        // Only the scratch repository is needed from now on.
        let _ = tokio::fs::remove_file(from.join("snapshot.bundle")).await;
        let _ = tokio::fs::remove_file(from.join("index")).await;
        if let Some(parent) = dir.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RepoError::Io(format!("{}: {e}", parent.display())))?;
        }
        // A rename is atomic: `dir` either holds the whole snapshot or does not exist.
        tokio::fs::rename(&from, dir).await.map_err(|e| {
            RepoError::Io(format!("keeping the snapshot in {}: {e}", dir.display()))
        })?;
        if let Scratch::Temporary(temp) = self.dir {
            // Already moved away; nothing is left for the guard to remove.
            let _ = temp.keep();
        }
        Ok(Snapshot {
            dir: Scratch::Kept(dir.to_path_buf()),
            root: kept.root,
            base: kept.base,
            base_commit: kept.base_commit,
            tip: kept.tip,
            bytes: kept.bytes,
            files: kept.files,
        })
    }

    /// A snapshot [kept](Snapshot::keep) in `dir` earlier, perhaps by another process.
    pub async fn open(dir: &Path) -> Result<Snapshot, RepoError> {
        let json = tokio::fs::read(dir.join(KEPT_FILE))
            .await
            .map_err(|e| RepoError::Io(format!("{}: {e}", dir.join(KEPT_FILE).display())))?;
        let kept: Kept = serde_json::from_slice(&json)
            .map_err(|e| RepoError::Io(format!("{}: {e}", dir.join(KEPT_FILE).display())))?;
        Ok(Snapshot {
            dir: Scratch::Kept(dir.to_path_buf()),
            root: kept.root,
            base: kept.base,
            base_commit: kept.base_commit,
            tip: kept.tip,
            bytes: kept.bytes,
            files: kept.files,
        })
    }

    /// Snapshots the work tree that `path` is in, under `scratch_parent` (a temp dir is made
    /// there). Fails without writing anything in the caller's repository when `path` is not in a
    /// git work tree, when a merge, rebase, cherry-pick or revert is in progress, or when the
    /// snapshot would be over `limits`.
    pub async fn take(
        path: &Path,
        limits: Limits,
        scratch_parent: &Path,
    ) -> Result<Snapshot, RepoError> {
        let found = locate(path).await?;
        if let Some(op) = in_progress(&found.git_dir) {
            return Err(RepoError::Busy(format!(
                "{}: a {op} is in progress; finish or abort it first",
                found.root.display()
            )));
        }
        tokio::fs::create_dir_all(scratch_parent)
            .await
            .map_err(|e| RepoError::Io(format!("{}: {e}", scratch_parent.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("snapshot-")
            .tempdir_in(scratch_parent)
            .map_err(|e| RepoError::Io(format!("scratch dir: {e}")))?;
        let scratch = dir.path().join("scratch.git");
        Git::new(dir.path())
            .args(["init", "-q", "--bare"])
            .arg(&scratch)
            .run()
            .await?;
        // Borrow the caller's objects instead of copying them.
        tokio::fs::write(
            scratch.join("objects/info/alternates"),
            format!("{}\n", found.objects.display()),
        )
        .await
        .map_err(|e| RepoError::Io(format!("alternates: {e}")))?;
        // The caller's ignore rules that live outside the work tree.
        let mut exclude = tokio::fs::read(found.git_dir.join("info/exclude"))
            .await
            .unwrap_or_default();
        if let Some(global) = global_excludes() {
            exclude.push(b'\n');
            exclude.extend(tokio::fs::read(global).await.unwrap_or_default());
        }
        tokio::fs::write(scratch.join("info/exclude"), exclude)
            .await
            .map_err(|e| RepoError::Io(format!("exclude: {e}")))?;

        let git = || Git::new(&found.root).dirs(&scratch, Some(&found.root));
        let caller = || Git::new(&found.root).dirs(&found.git_dir, Some(&found.root));
        let head = caller()
            .args(["rev-parse", "--verify", "-q", "HEAD^{commit}"])
            .line()
            .await
            .ok()
            .filter(|s| !s.is_empty());
        let branch = caller()
            .args(["symbolic-ref", "-q", "--short", "HEAD"])
            .line()
            .await
            .ok()
            .filter(|s| !s.is_empty());

        // The index: the caller's copy (its stat data spares rehashing unchanged files), or
        // HEAD's tree when it cannot be used as is.
        let index = dir.path().join("index");
        let copied = tokio::fs::copy(found.git_dir.join("index"), &index)
            .await
            .is_ok()
            && git()
                .env("GIT_INDEX_FILE", &index)
                .args(["ls-files", "--stage", "-z", "--", ":(top)does-not-exist"])
                .ok()
                .await?;
        if !copied {
            let _ = tokio::fs::remove_file(&index).await;
            let mut read_tree = git().env("GIT_INDEX_FILE", &index).arg("read-tree");
            read_tree = match &head {
                Some(h) => read_tree.arg(h),
                None => read_tree.arg("--empty"),
            };
            read_tree.run().await?;
        }

        let head_tree = match &head {
            Some(h) => {
                git()
                    .args(["rev-parse", &format!("{h}^{{tree}}")])
                    .line()
                    .await?
            }
            None => empty_tree(&scratch).await?,
        };
        let source = match (&head, &branch) {
            (Some(h), Some(b)) => format!("{h} ({b})"),
            (Some(h), None) => h.clone(),
            (None, _) => "an empty repository".to_string(),
        };
        let base_commit = git()
            .args(["commit-tree", &head_tree, "-m"])
            .arg(format!(
                "delegate: snapshot of {source}\n\nThe tree of {} at {source}, without its history.",
                found.root.display()
            ))
            .line()
            .await?;

        // Everything in the work tree that is not ignored, as the caller would `git add -A` it.
        git()
            .env("GIT_INDEX_FILE", &index)
            .args(["add", "-A", "--", "."])
            .run()
            .await?;
        let work_tree = git()
            .env("GIT_INDEX_FILE", &index)
            .arg("write-tree")
            .line()
            .await?;
        let dirty = work_tree != head_tree;
        let tip = if dirty {
            git()
                .args(["commit-tree", &work_tree, "-p", &base_commit, "-m"])
                .arg(
                    "delegate: uncommitted changes\n\nTracked files as they were in the work \
                     tree, and untracked files that are not ignored.",
                )
                .line()
                .await?
        } else {
            base_commit.clone()
        };

        // The sandbox's clone checks out the caller's branch name (or `main`).
        let local_branch = format!("refs/heads/{}", branch.as_deref().unwrap_or("main"));
        let in_scratch = || Git::new(dir.path()).dirs(&scratch, None);
        in_scratch()
            .args(["update-ref", &local_branch, &tip])
            .run()
            .await?;
        in_scratch()
            .args(["symbolic-ref", "HEAD", &local_branch])
            .run()
            .await?;
        let bundle = dir.path().join("snapshot.bundle");
        // Fast over small: light compression, and no delta search (deltas already in the
        // caller's packs are reused as they are; new ones between the unrelated files of one
        // tree save little and cost as much as the rest of the snapshot together). Written while
        // the tree is measured (both read every object); stopped (the child killed as its
        // future is dropped) when the measure says no.
        let bundling = tokio::spawn(
            in_scratch()
                .args([
                    "-c",
                    "pack.compression=1",
                    "-c",
                    "pack.window=0",
                    "bundle",
                    "create",
                    "-q",
                ])
                .arg(&bundle)
                .args(["HEAD", &local_branch])
                .run(),
        );
        let stop = |bundling: tokio::task::JoinHandle<_>| async move {
            bundling.abort();
            let _ = bundling.await;
        };
        let measured = match measure_tree(&scratch, &tip, limits).await {
            Ok(measured) => measured,
            Err(e) => {
                stop(bundling).await;
                return Err(e);
            }
        };
        if let Err(e) = measured.check(&found.root.display().to_string(), limits) {
            stop(bundling).await;
            return Err(e);
        }
        let (bytes, files) = (measured.bytes, measured.files);
        bundling
            .await
            .map_err(|e| RepoError::Git(format!("git bundle create: {e}")))??;

        Ok(Snapshot {
            dir: Scratch::Temporary(dir),
            root: found.root.clone(),
            base: Base {
                repo: found.root.display().to_string(),
                commit: head,
                branch,
                dirty,
            },
            base_commit,
            tip,
            bytes,
            files,
        })
    }
}

/// A caller's repository, found from a path inside its work tree.
pub(crate) struct Located {
    pub root: PathBuf,
    pub git_dir: PathBuf,
    pub objects: PathBuf,
}

/// The work tree `path` is in, with its git dir and object store (linked worktrees share the
/// main repository's objects).
pub(crate) async fn locate(path: &Path) -> Result<Located, RepoError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| RepoError::NotARepo(format!("{}: {e}", path.display())))?;
    let dir = if meta.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(path).to_path_buf()
    };
    let out = Git::new(&dir)
        .args([
            "rev-parse",
            "--path-format=absolute",
            "--is-inside-work-tree",
            "--show-toplevel",
            "--git-dir",
            "--git-path",
            "objects",
        ])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    if !out.status.success() || lines.len() < 4 || lines[0] != "true" {
        return Err(RepoError::NotARepo(format!(
            "{} is not inside a git work tree (run `git init` there, or pass repo: \"none\")",
            path.display()
        )));
    }
    Ok(Located {
        root: PathBuf::from(lines[1]),
        git_dir: PathBuf::from(lines[2]),
        objects: PathBuf::from(lines[3]),
    })
}

/// The operation that has the repository in a half-done state, if any.
fn in_progress(git_dir: &Path) -> Option<&'static str> {
    [
        ("MERGE_HEAD", "merge"),
        ("rebase-merge", "rebase"),
        ("rebase-apply", "rebase or am"),
        ("CHERRY_PICK_HEAD", "cherry-pick"),
        ("REVERT_HEAD", "revert"),
        ("BISECT_LOG", "bisect"),
    ]
    .into_iter()
    .find(|(name, _)| git_dir.join(name).exists())
    .map(|(_, op)| op)
}

/// The user's global ignore file at its default place (`core.excludesFile` is not read: global
/// config is never read, so that nothing in it can run).
fn global_excludes() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let file = config.join("git/ignore");
    file.is_file().then_some(file)
}

async fn empty_tree(scratch: &Path) -> Result<String, RepoError> {
    Git::new(scratch)
        .dirs(scratch, None)
        .args(["hash-object", "-t", "tree", "-w", "--stdin"])
        .stdin(Vec::new())
        .line()
        .await
}

/// What a commit's tree holds, as [`measure_tree`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSize {
    /// Bytes of file content (blob sizes).
    pub bytes: u64,
    /// Entries: files, symlinks, gitlinks.
    pub files: u64,
    /// The five largest files, largest first: (size, path).
    pub largest: Vec<(u64, String)>,
    /// Whether every entry was listed; `false` when the listing was stopped far past the file
    /// limit (a tree that repeats one subtree can list billions of entries), so `bytes` and
    /// `files` are lower bounds.
    pub complete: bool,
}

impl TreeSize {
    /// A `repo_too_large` error when over either limit, naming the size and count, the setting
    /// that sets the limit crossed, and the largest paths; `what` names the repository.
    pub fn check(&self, what: &str, limits: Limits) -> Result<(), RepoError> {
        let mut over = Vec::new();
        if self.bytes > limits.max_bytes {
            over.push(format!(
                "over DELEGATE_MAX_REPO_BYTES ({})",
                human(limits.max_bytes)
            ));
        }
        if self.files > limits.max_files {
            over.push(format!(
                "over DELEGATE_MAX_REPO_FILES ({} files)",
                limits.max_files
            ));
        }
        if over.is_empty() {
            return Ok(());
        }
        let at_least = if self.complete { "" } else { "at least " };
        let top: Vec<String> = self
            .largest
            .iter()
            .map(|(size, path)| format!("{path} ({})", human(*size)))
            .collect();
        Err(RepoError::TooLarge(format!(
            "{what}: {at_least}{} in {at_least}{} files, {}; largest: {}",
            human(self.bytes),
            self.files,
            over.join(" and "),
            top.join(", ")
        )))
    }
}

/// The longest `ls-tree` record read (a mode, a type, an id, a size and a path).
const MAX_TREE_RECORD: usize = 64 << 10;

/// Measures `commit`'s tree in the repository `git_dir`, recursively and without checking it
/// out: `git ls-tree -r` is read as it streams (one entry in memory at a time) and stopped once
/// it has listed four times `limits.max_files` entries.
pub async fn measure_tree(
    git_dir: &Path,
    commit: &str,
    limits: Limits,
) -> Result<TreeSize, RepoError> {
    let stop_after = limits.max_files.saturating_mul(4).max(1);
    let mut size = TreeSize {
        bytes: 0,
        files: 0,
        largest: Vec::new(),
        complete: true,
    };
    let finished = Git::new(git_dir)
        .dirs(git_dir, None)
        .args(["ls-tree", "-r", "-l", "-z", "--full-tree", commit])
        .records(0, MAX_TREE_RECORD, |entry| {
            // `<mode> <type> <object> <size>\t<path>`; a gitlink's size is `-`.
            let Some(tab) = entry.iter().position(|b| *b == b'\t') else {
                return true;
            };
            let meta = String::from_utf8_lossy(&entry[..tab]);
            let bytes: u64 = meta
                .split_whitespace()
                .nth(3)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            size.files += 1;
            size.bytes = size.bytes.saturating_add(bytes);
            let smallest_kept = size.largest.last().map_or(0, |e| e.0);
            if size.largest.len() < 5 || bytes > smallest_kept {
                let path = String::from_utf8_lossy(&entry[tab + 1..]).into_owned();
                size.largest.push((bytes, path));
                size.largest.sort_by_key(|e| std::cmp::Reverse(e.0));
                size.largest.truncate(5);
            }
            size.files < stop_after
        })
        .await?;
    size.complete = finished;
    Ok(size)
}

/// `1.5 MiB`-style sizes for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

//! Snapshot uploads: git bundles of a caller's repository, received (over REST, or from a file on
//! this machine) before the `run_in_sandbox` or `create_sandbox` that starts from one.
//!
//! A bundle is hostile input until a sandbox has cloned it: it must look like a git bundle and
//! `git bundle list-heads` (through delegate_repo's hardened runner) must read its refs, and an
//! upload's tip must stay within `DELEGATE_MAX_REPO_FILES` and `DELEGATE_MAX_REPO_BYTES` of file
//! content (counted in a scratch repository the bundle is unpacked into, never checked out), or it
//! is refused and nothing is kept. Each one is a file under `<data_dir>/snapshots/`, registered with
//! its owner (user and workspace) for an hour. Taking one checks the owner and removes it from the
//! registry, so an id works once; the file goes when the taker drops it (after the clone).
//! Leftovers of an earlier process are removed at start, expired ones by a sweep.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use delegate_mcp::types::RepoBase;
use delegate_repo::git::Git;
use delegate_repo::{Limits, RepoError, measure_tree};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Error, Orchestrator, Result, lock};
use crate::ids::new_secret;

/// How long an uploaded snapshot waits for the call that uses it.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(3600);
/// How often expired snapshots are looked for.
pub(super) const SNAPSHOT_SWEEP: Duration = Duration::from_secs(60);
/// The id prefix of uploaded snapshots.
pub const SNAPSHOT_PREFIX: &str = "snp_";
/// The longest header (signature, prerequisites, refs) a snapshot bundle may have.
const MAX_BUNDLE_HEADER: u64 = 1 << 20;

/// The uploaded snapshots of this process.
pub struct Snapshots {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    owner: String,
    workspace_id: String,
    base: RepoBase,
    path: PathBuf,
    bytes: u64,
    expires: Instant,
}

/// Whether a bundle's tree still has to be counted against the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeCheck {
    /// Someone else made it (an upload): its tip's tree is counted.
    Count,
    /// This process made it and measured its tree against the same limits already (a URL clone,
    /// an embedded caller's snapshot): counting again would only double the cost.
    Measured,
}

/// A snapshot taken for one sandbox: its bundle stays on disk until this is dropped (once the
/// sandbox has cloned it, or the call failed).
#[derive(Debug)]
pub struct SnapshotFile {
    /// The snapshot's id (`snp_...`).
    pub id: String,
    /// Where the repository came from.
    pub base: RepoBase,
    /// The bundle, for `SandboxSpec::repo`.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

impl SnapshotFile {
    /// Removes the bundle now (once the sandbox has cloned it).
    pub async fn remove(mut self) {
        let path = std::mem::take(&mut self.path);
        let _ = tokio::fs::remove_file(path).await;
    }

    /// [`Self::remove`] when this is the last holder; otherwise the last one's drop removes it.
    pub async fn release(file: Option<Arc<SnapshotFile>>) {
        if let Some(file) = file.and_then(Arc::into_inner) {
            file.remove().await;
        }
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let path = std::mem::take(&mut self.path);
        // Unlinking is quick but still a file-system call: off the caller's task.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::fs::remove_file(path).await;
            });
        }
    }
}

impl Snapshots {
    /// The registry over `<data_dir>/snapshots`, emptied of an earlier process's files.
    pub(super) async fn open(data_dir: &Path) -> std::io::Result<Snapshots> {
        let dir = data_dir.join("snapshots");
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        tokio::fs::create_dir_all(&dir).await?;
        Ok(Snapshots {
            dir,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The directory uploads are written to; a bundle made elsewhere for [`Self::register`]
    /// should be made here (same file system, so it is renamed, not copied).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh path in [`Self::dir`] for a file on its way in.
    pub fn incoming(&self) -> PathBuf {
        self.dir.join(format!("{}.part", new_secret("in_")))
    }

    /// Registers a bundle already on disk for `owner` in `workspace_id` after checking it (see the
    /// module docs); the file is moved into the snapshots dir (or copied when that fails, e.g.
    /// across file systems) and the original removed. Returns the id to pass as `snapshot`. On
    /// any error the file is removed and nothing is registered.
    pub async fn register(
        &self,
        owner: &str,
        workspace_id: &str,
        base: RepoBase,
        bundle: &Path,
        limits: Limits,
        tree: TreeCheck,
    ) -> Result<(String, u64)> {
        let id = new_secret(SNAPSHOT_PREFIX);
        let path = self.dir.join(format!("{id}.bundle"));
        let moved = tokio::fs::rename(bundle, &path).await;
        if moved.is_err() {
            let copied = tokio::fs::copy(bundle, &path).await;
            let _ = tokio::fs::remove_file(bundle).await;
            if let Err(e) = copied {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Error::Invalid(format!("the snapshot bundle: {e}")));
            }
        }
        self.admit(id, (owner, workspace_id), base, path, limits, tree)
            .await
    }

    /// Links (or copies) a bundle that stays its owner's, e.g. one a local client made, then
    /// registers the copy like [`Self::register`].
    pub async fn register_copy(
        &self,
        owner: &str,
        workspace_id: &str,
        base: RepoBase,
        bundle: &Path,
        limits: Limits,
        tree: TreeCheck,
    ) -> Result<(String, u64)> {
        let meta = tokio::fs::symlink_metadata(bundle)
            .await
            .map_err(|e| Error::Invalid(format!("{}: {e}", bundle.display())))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "{}: not a plain file",
                bundle.display()
            )));
        }
        check_size(meta.len(), limits.max_bytes)?;
        let id = new_secret(SNAPSHOT_PREFIX);
        let path = self.dir.join(format!("{id}.bundle"));
        if tokio::fs::hard_link(bundle, &path).await.is_err()
            && let Err(e) = tokio::fs::copy(bundle, &path).await
        {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Error::Invalid(format!("{}: {e}", bundle.display())));
        }
        self.admit(id, (owner, workspace_id), base, path, limits, tree)
            .await
    }

    /// Streams an upload to a file in the snapshots dir, counting bytes and stopping past
    /// `limits.max_bytes` (`repo_too_large`, the partial file removed), then registers it with
    /// its tree counted ([`TreeCheck::Count`]).
    pub async fn receive<S, E>(
        &self,
        owner: &str,
        workspace_id: &str,
        base: RepoBase,
        mut body: S,
        limits: Limits,
    ) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let part = self.incoming();
        let written = async {
            let mut file = tokio::fs::File::create(&part)
                .await
                .map_err(crate::error::internal)?;
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::Invalid(format!("the upload broke off after {total} bytes: {e}"))
                })?;
                total += chunk.len() as u64;
                check_size(total, limits.max_bytes)?;
                file.write_all(&chunk)
                    .await
                    .map_err(crate::error::internal)?;
            }
            file.flush().await.map_err(crate::error::internal)?;
            Ok::<u64, Error>(total)
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        self.register(owner, workspace_id, base, &part, limits, TreeCheck::Count)
            .await
    }

    /// Checks a bundle now in the snapshots dir and registers it; removes it when it fails.
    /// `owner` is (user, workspace).
    async fn admit(
        &self,
        id: String,
        (owner, workspace_id): (&str, &str),
        base: RepoBase,
        path: PathBuf,
        limits: Limits,
        tree: TreeCheck,
    ) -> Result<(String, u64)> {
        let checked = match check_bundle(&path, limits.max_bytes).await {
            Ok((bytes, head)) if tree == TreeCheck::Count => {
                let scratch = self.dir.join(format!("{id}.count.git"));
                let counted = count_tree(&path, &head, &scratch, limits, &base.repo).await;
                let _ = tokio::fs::remove_dir_all(&scratch).await;
                counted.map(|()| bytes)
            }
            other => other.map(|(bytes, _)| bytes),
        };
        let bytes = match checked {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
        };
        lock(&self.entries).insert(
            id.clone(),
            Entry {
                owner: owner.to_string(),
                workspace_id: workspace_id.to_string(),
                base,
                path,
                bytes,
                expires: Instant::now() + SNAPSHOT_TTL,
            },
        );
        Ok((id, bytes))
    }

    /// Takes a snapshot for one sandbox: only its owner, only in its workspace, only once, only
    /// before it expires. Any other case is not found, alike.
    pub fn take(&self, id: &str, owner: &str, workspace_id: &str) -> Result<SnapshotFile> {
        let not_found = || {
            Error::NotFound(format!(
                "snapshot {id:?} (used, expired, not yours, or uploaded to another replica of \
                 this server: a snapshot is kept by the replica that received it)"
            ))
        };
        let mut entries = lock(&self.entries);
        let ok = entries.get(id).is_some_and(|e| {
            e.owner == owner && e.workspace_id == workspace_id && e.expires > Instant::now()
        });
        if !ok {
            return Err(not_found());
        }
        let e = entries.remove(id).ok_or_else(not_found)?;
        Ok(SnapshotFile {
            id: id.to_string(),
            base: e.base,
            path: e.path,
            bytes: e.bytes,
        })
    }

    /// Removes expired snapshots and their files.
    async fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<PathBuf> = {
            let mut entries = lock(&self.entries);
            let ids: Vec<String> = entries
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| entries.remove(id))
                .map(|e| e.path)
                .collect()
        };
        for path in expired {
            let _ = tokio::fs::remove_file(path).await;
        }
    }
}

fn check_size(bytes: u64, max_bytes: u64) -> Result<()> {
    if bytes > max_bytes {
        return Err(Error::Repo {
            kind: "repo_too_large",
            message: format!(
                "the snapshot is over {} (DELEGATE_MAX_REPO_BYTES); it was not kept",
                human(max_bytes)
            ),
        });
    }
    Ok(())
}

/// `1 GiB`-style sizes for messages.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if value.fract() == 0.0 => format!("{value:.0} {}", UNITS[unit]),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// A file that starts like a git bundle, with no prerequisites (a sandbox clones it alone), whose
/// refs git can read and which names a `HEAD`. Returns its size and its `HEAD` commit.
async fn check_bundle(path: &Path, max_bytes: u64) -> Result<(u64, String)> {
    let not_bundle = |why: &str| Error::Invalid(format!("the snapshot is not a git bundle: {why}"));
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(crate::error::internal)?;
    let bytes = file.metadata().await.map_err(crate::error::internal)?.len();
    check_size(bytes, max_bytes)?;
    let mut header = Vec::new();
    (&mut file)
        .take(MAX_BUNDLE_HEADER)
        .read_to_end(&mut header)
        .await
        .map_err(crate::error::internal)?;
    if !(header.starts_with(b"# v2 git bundle\n") || header.starts_with(b"# v3 git bundle\n")) {
        return Err(not_bundle(
            "it does not start with `# v2 git bundle` or `# v3 git bundle`",
        ));
    }
    // The header ends at its first empty line; the pack follows.
    let end = header
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| not_bundle("its header does not end"))?;
    // After the signature line (and a v3 bundle's `@capability` lines), one line per ref.
    for line in header[..end].split(|b| *b == b'\n').skip(1) {
        if line.starts_with(b"@") {
            continue;
        }
        if line.starts_with(b"-") {
            return Err(not_bundle(
                "it needs commits it does not carry (made with a `^` or `--since` limit)",
            ));
        }
        if !is_ref_line(line) {
            return Err(not_bundle(&format!(
                "a ref line is malformed: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(120)])
            )));
        }
    }
    let heads = Git::new(path.parent().unwrap_or(Path::new("/")))
        .args(["bundle", "list-heads"])
        .arg(path)
        .run()
        .await
        .map_err(|e| not_bundle(&e.to_string()))?;
    let head = String::from_utf8_lossy(&heads)
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            let id = words.next()?;
            (words.next() == Some("HEAD")).then(|| id.to_string())
        })
        .filter(|id| id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| not_bundle("it has no HEAD for the sandbox to check out"))?;
    Ok((bytes, head))
}

/// Unpacks the bundle into a bare repository at `scratch` (its objects only: nothing is checked
/// out) and counts the tree of its `head` against `limits`; `repo` names it in the error.
async fn count_tree(
    bundle: &Path,
    head: &str,
    scratch: &Path,
    limits: Limits,
    repo: &str,
) -> Result<()> {
    let parent = scratch.parent().unwrap_or(Path::new("/"));
    let bad =
        |e: RepoError| Error::Invalid(format!("the snapshot is not a usable git bundle: {e}"));
    Git::new(parent)
        .args(["init", "-q", "--bare"])
        .arg(scratch)
        .run()
        .await
        .map_err(crate::error::internal)?;
    Git::new(scratch)
        .dirs(scratch, None)
        .args(["bundle", "unbundle"])
        .arg(bundle)
        .run()
        .await
        .map_err(bad)?;
    let size = measure_tree(scratch, head, limits).await.map_err(bad)?;
    size.check(&format!("the snapshot of {repo}"), limits)
        .map_err(|e| Error::Repo {
            kind: e.kind(),
            message: e.to_string(),
        })
}

/// `<object id> <ref name>`: a hex id (SHA-1 or SHA-256) and a name git itself would accept
/// (`git check-ref-format`'s rules, for names a bundle can carry: `HEAD` or under `refs/`).
fn is_ref_line(line: &[u8]) -> bool {
    let Some(space) = line.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (id, name) = (&line[..space], &line[space + 1..]);
    let id_ok = matches!(id.len(), 40 | 64) && id.iter().all(u8::is_ascii_hexdigit);
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let name_ok = name == "HEAD"
        || (name.starts_with("refs/")
            && !name.ends_with('/')
            && !name.ends_with('.')
            && !name.ends_with(".lock")
            && !name.contains("..")
            && !name.contains("//")
            && !name.contains("@{")
            && !name.split('/').any(|c| c.is_empty() || c.starts_with('.'))
            && !name
                .chars()
                .any(|c| c.is_control() || " ~^:?*[\\".contains(c)));
    id_ok && name_ok
}

impl Orchestrator {
    /// The uploaded snapshots.
    pub fn snapshots(&self) -> &Arc<Snapshots> {
        &self.inner.snapshots
    }
}

/// Removes expired snapshots (one sweep; see [`Orchestrator::every`]).
pub(super) async fn sweep_snapshots(orch: Orchestrator) {
    orch.inner.snapshots.sweep().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RepoBase {
        RepoBase {
            repo: "/home/a/project".into(),
            commit: None,
            branch: Some("main".into()),
            dirty: false,
        }
    }

    fn limits(max_bytes: u64, max_files: u64) -> Limits {
        Limits {
            max_bytes,
            max_files,
        }
    }

    async fn bundle(dir: &Path) -> PathBuf {
        let repo = dir.join("repo");
        tokio::fs::create_dir_all(&repo).await.unwrap();
        let git = || Git::new(&repo);
        git()
            .args(["init", "-q", "-b", "main"])
            .run()
            .await
            .unwrap();
        tokio::fs::write(repo.join("a.txt"), "a\n").await.unwrap();
        git().args(["add", "-A"]).run().await.unwrap();
        git().args(["commit", "-q", "-m", "a"]).run().await.unwrap();
        let out = dir.join("snap.bundle");
        git()
            .args(["bundle", "create", "-q"])
            .arg(&out)
            .args(["HEAD", "main"])
            .run()
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn a_snapshot_is_taken_once_by_its_owner_in_its_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&tmp.path().join("data")).await.unwrap();
        let made = bundle(tmp.path()).await;
        let (id, bytes) = snaps
            .register_copy(
                "usr_a",
                "wsp_a",
                base(),
                &made,
                limits(1 << 30, 10),
                TreeCheck::Count,
            )
            .await
            .unwrap();
        assert!(id.starts_with(SNAPSHOT_PREFIX) && bytes > 0);
        assert!(made.exists(), "the caller's file stays");
        for (user, ws) in [("usr_b", "wsp_a"), ("usr_a", "wsp_b")] {
            assert!(matches!(snaps.take(&id, user, ws), Err(Error::NotFound(_))));
        }
        let taken = snaps.take(&id, "usr_a", "wsp_a").unwrap();
        assert!(taken.path.exists());
        assert!(matches!(
            snaps.take(&id, "usr_a", "wsp_a"),
            Err(Error::NotFound(_))
        ));
        let path = taken.path.clone();
        SnapshotFile::release(Some(Arc::new(taken))).await;
        assert!(!path.exists(), "the bundle is removed once released");
    }

    #[tokio::test]
    async fn what_is_not_a_bundle_or_too_large_is_refused_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&tmp.path().join("data")).await.unwrap();
        let junk = tmp.path().join("junk");
        tokio::fs::write(&junk, "# v2 git bundle\nnot really\n\nPACK")
            .await
            .unwrap();
        let err = snaps
            .register(
                "usr_a",
                "wsp_a",
                base(),
                &junk,
                limits(1 << 30, 10),
                TreeCheck::Count,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        let made = bundle(tmp.path()).await;
        let err = snaps
            .register_copy(
                "usr_a",
                "wsp_a",
                base(),
                &made,
                limits(10, 10),
                TreeCheck::Count,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Repo { kind: "repo_too_large", message } if message.contains("DELEGATE_MAX_REPO_BYTES")),
            "{err}"
        );
        let body = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 600])),
            Ok(Bytes::from(vec![b'x'; 600])),
        ]);
        let err = snaps
            .receive("usr_a", "wsp_a", base(), body, limits(1000, 10))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Repo {
                    kind: "repo_too_large",
                    ..
                }
            ),
            "{err}"
        );
        let mut left = tokio::fs::read_dir(snaps.dir()).await.unwrap();
        assert!(left.next_entry().await.unwrap().is_none(), "nothing kept");
        assert_eq!(human(1 << 30), "1 GiB");
    }

    /// A bundle of a few bytes whose tip lists many files: the root repeats one subtree, so
    /// only counting the tree (not the bundle's size) finds it.
    async fn tree_bomb(dir: &Path) -> PathBuf {
        let repo = dir.join("bomb");
        tokio::fs::create_dir_all(&repo).await.unwrap();
        let git = || Git::new(&repo);
        git()
            .args(["init", "-q", "-b", "main"])
            .run()
            .await
            .unwrap();
        let blob = git()
            .args(["hash-object", "-w", "--stdin"])
            .stdin(b"big content\n".repeat(100))
            .line()
            .await
            .unwrap();
        let mut leaves = String::new();
        for i in 0..50 {
            leaves.push_str(&format!("100644 blob {blob}\tf{i:02}\n"));
        }
        let sub = git()
            .arg("mktree")
            .stdin(leaves.into_bytes())
            .line()
            .await
            .unwrap();
        let mut dirs = String::new();
        for i in 0..50 {
            dirs.push_str(&format!("040000 tree {sub}\td{i:02}\n"));
        }
        let root = git()
            .arg("mktree")
            .stdin(dirs.into_bytes())
            .line()
            .await
            .unwrap();
        let commit = git()
            .args(["commit-tree", &root, "-m", "bomb"])
            .line()
            .await
            .unwrap();
        git()
            .args(["update-ref", "refs/heads/main", &commit])
            .run()
            .await
            .unwrap();
        let out = dir.join("bomb.bundle");
        git()
            .args(["bundle", "create", "-q"])
            .arg(&out)
            .args(["HEAD", "main"])
            .run()
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn an_upload_over_the_file_count_is_refused_naming_the_setting_and_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&tmp.path().join("data")).await.unwrap();
        let made = tree_bomb(tmp.path()).await;
        let small = tokio::fs::metadata(&made).await.unwrap().len();
        assert!(small < 4096, "the bundle is {small} bytes");
        let body = tokio::fs::read(&made).await.unwrap();
        let upload = || futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body.clone()))]);

        // 2,500 files: over a limit of 1,000 files.
        let err = snaps
            .receive("usr_a", "wsp_a", base(), upload(), limits(1 << 30, 1000))
            .await
            .unwrap_err();
        let Error::Repo { kind, message } = &err else {
            panic!("{err}")
        };
        assert_eq!(*kind, "repo_too_large");
        assert!(message.contains("2500 files"), "{message}");
        assert!(message.contains("DELEGATE_MAX_REPO_FILES"), "{message}");
        assert!(message.contains("d00/f00 (1.2 KiB)"), "{message}");
        assert!(message.contains("/home/a/project"), "{message}");

        // 2.9 MB of content in a bundle of a few hundred bytes: over the byte limit.
        let err = snaps
            .receive("usr_a", "wsp_a", base(), upload(), limits(1 << 20, 10_000))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Repo { kind: "repo_too_large", message } if message.contains("DELEGATE_MAX_REPO_BYTES") && !message.contains("FILES")),
            "{err}"
        );

        // A tree far past the limit is not listed to its end.
        let err = snaps
            .receive("usr_a", "wsp_a", base(), upload(), limits(1 << 30, 10))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at least 40 files"), "{err}");

        let mut left = tokio::fs::read_dir(snaps.dir()).await.unwrap();
        assert!(left.next_entry().await.unwrap().is_none(), "nothing kept");
        assert!(lock(&snaps.entries).is_empty(), "nothing registered");

        // Within both limits it is kept.
        let (id, _) = snaps
            .receive("usr_a", "wsp_a", base(), upload(), limits(1 << 30, 2500))
            .await
            .unwrap();
        assert!(snaps.take(&id, "usr_a", "wsp_a").is_ok());
    }
}

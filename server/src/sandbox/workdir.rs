//! A sandbox's work dir and how delegate learns what a run changed.
//!
//! The work dir is a git repository — a clone of the caller's snapshot, or a new one with the seed
//! files committed — so the agent has history to look at. delegate never runs git over that
//! directory once the sandbox has started: the sandbox can write `.git/config`, hooks, or swap a
//! file for a symlink to a host file at any moment. Instead the sandbox commits its own work
//! (delegate_repo's commit script, run inside it, as its user) and hands back a git bundle, which
//! the host reads as hostile input into its own change repository (`changes.git`, outside the
//! sandbox). Only that repository's objects are ever diffed on the host.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use delegate_mcp::types::{ChangeKind, ChangedFile};
use delegate_repo::ChangeRepo;
use delegate_repo::git::Git;

use super::SandboxError;

/// The most bytes `files` may seed in all.
pub const MAX_SEED_BYTES: usize = 16 << 20;
/// The most files `files` may seed.
pub const MAX_SEED_FILES: usize = 2_000;

/// Checks a `files` map before anything is written: relative paths only, no `..`, no `.git`.
pub fn validate_files(files: &BTreeMap<String, String>) -> Result<(), SandboxError> {
    if files.len() > MAX_SEED_FILES {
        return Err(SandboxError::BadInput(format!(
            "files: {} entries, at most {MAX_SEED_FILES}",
            files.len()
        )));
    }
    let total: usize = files.values().map(String::len).sum();
    if total > MAX_SEED_BYTES {
        return Err(SandboxError::BadInput(format!(
            "files: {total} bytes in all, at most {MAX_SEED_BYTES}"
        )));
    }
    for path in files.keys() {
        let bad = |why: &str| SandboxError::BadInput(format!("files: path {path:?} {why}"));
        if path.is_empty() || path.len() > 4096 {
            return Err(bad("must be 1 to 4096 bytes"));
        }
        if path.contains('\0') || path.contains('\\') {
            return Err(bad("contains a NUL or backslash"));
        }
        let p = Path::new(path);
        for c in p.components() {
            match c {
                Component::Normal(name) if name == ".git" => {
                    return Err(bad("is inside .git"));
                }
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => return Err(bad("contains '..'")),
                Component::RootDir | Component::Prefix(_) => return Err(bad("is absolute")),
            }
        }
        if p.components().all(|c| matches!(c, Component::CurDir)) {
            return Err(bad("names no file"));
        }
    }
    Ok(())
}

/// The directories of one sandbox on the host.
#[derive(Debug, Clone)]
pub struct SandboxDirs {
    /// The sandbox's directory under the data dir; the others are inside it.
    pub root: PathBuf,
    /// The agent's work dir (`/workspace` inside).
    pub workspace: PathBuf,
    /// `$HOME` inside (opencode's data, sessions).
    pub home: PathBuf,
    /// Sockets shared with the sandbox (`/run/delegate` inside); the sandbox writes its change here.
    pub run: PathBuf,
    /// delegate's repository of this sandbox's seed and changes; never visible inside.
    pub changes: PathBuf,
}

/// Where the commit script writes the sandbox's change, inside the sandbox.
pub const IN_CHANGE_BUNDLE: &str = "/run/delegate/changes.bundle";
/// The most bytes one change may take as a bundle.
pub const MAX_CHANGE_BYTES: u64 = 1 << 30;

/// What one run changed: the commit made inside the sandbox on top of `base`, file by file, with
/// a readable preview of the diff (the whole patch stays in the change repository).
#[derive(Debug, Clone)]
pub struct Changes {
    /// The commit the change sits on (the seed, or the previous run's change).
    pub base: String,
    /// The change, committed inside the sandbox.
    pub commit: String,
    /// Files added, modified or deleted, with line counts.
    pub files: Vec<ChangedFile>,
    /// The text diff, at most the asked-for bytes; binary files named, not dumped.
    pub diff: String,
    /// Whether [`Changes::diff`] was cut at the asked-for size.
    pub diff_truncated: bool,
    /// The repository holding `base` and `commit` (for the whole patch or a bundle).
    pub repo: PathBuf,
    /// The snapshot the sandbox was cloned from (its tip, before any seed files), when it was:
    /// a bundle from here to `commit` carries every change since, earlier runs' included.
    pub origin: Option<String>,
}

impl Changes {
    /// Describes the change from `base` to `commit` in `repo` (both imported already): its files
    /// with line counts, and a diff preview of at most `max_diff` bytes. `origin` is the
    /// snapshot the sandbox was cloned from, when it was.
    pub async fn describe(
        repo: &ChangeRepo,
        base: String,
        commit: String,
        max_diff: usize,
        origin: Option<String>,
    ) -> Result<Changes, delegate_repo::RepoError> {
        let files = repo
            .files(&base, &commit)
            .await?
            .into_iter()
            .map(|f| ChangedFile {
                change: match f.change {
                    "added" => ChangeKind::Added,
                    "deleted" => ChangeKind::Deleted,
                    _ => ChangeKind::Modified,
                },
                path: f.path,
                additions: f.additions,
                deletions: f.deletions,
                binary: f.binary,
            })
            .collect();
        let (diff, diff_truncated) = repo.preview(&base, &commit, max_diff).await?;
        Ok(Changes {
            base,
            commit,
            files,
            diff,
            diff_truncated,
            repo: repo.path().to_path_buf(),
            origin,
        })
    }
}

impl SandboxDirs {
    /// The layout under `root`; nothing is created.
    pub fn new(root: PathBuf) -> Self {
        SandboxDirs {
            workspace: root.join("workspace"),
            home: root.join("home"),
            run: root.join("run"),
            changes: root.join("changes.git"),
            root,
        }
    }

    /// Creates the dirs and the agent's repository — a clone of `repo` (a snapshot bundle) or a
    /// new one — writes the seed files and commits them, then starts delegate's change repository
    /// from that state. All of it happens while the work dir is still ours alone.
    pub async fn create(
        &self,
        files: &BTreeMap<String, String>,
        repo: Option<&Path>,
    ) -> Result<(), SandboxError> {
        validate_files(files)?;
        for d in [&self.root, &self.home, &self.run] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(io("create dir"))?;
        }
        let origin = match repo {
            Some(bundle) => {
                // Parallel checkout: a 100,000-file tree is mostly file writes, which overlap.
                git(&self.root)
                    .args(["-c", "checkout.workers=0", "clone", "-q", "--no-hardlinks"])
                    .arg(bundle)
                    .arg(&self.workspace)
                    .run()
                    .await
                    .map_err(repo_err)?;
                git(&self.workspace)
                    .args(["remote", "remove", "origin"])
                    .run()
                    .await
                    .map_err(repo_err)?;
                let head = git(&self.workspace)
                    .args(["rev-parse", "--verify", "-q", "HEAD^{commit}"])
                    .line()
                    .await
                    .map_err(repo_err)?;
                Some(head)
            }
            None => {
                tokio::fs::create_dir_all(&self.workspace)
                    .await
                    .map_err(io("create dir"))?;
                git(&self.workspace)
                    .args(["init", "-q", "-b", "main"])
                    .run()
                    .await
                    .map_err(repo_err)?;
                None
            }
        };
        for (path, content) in files {
            let dest = self.workspace.join(path);
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(io("create dir"))?;
            }
            tokio::fs::write(&dest, content)
                .await
                .map_err(io("write seed file"))?;
        }
        if repo.is_none() || !files.is_empty() {
            git(&self.workspace)
                .args(["add", "-A"])
                .run()
                .await
                .map_err(repo_err)?;
            git(&self.workspace)
                .args([
                    "commit",
                    "-q",
                    "--allow-empty",
                    "--no-verify",
                    "-m",
                    "delegate: seed files",
                ])
                .run()
                .await
                .map_err(repo_err)?;
        }
        // delegate's own copy of the seed, outside anything the sandbox can reach. From a
        // snapshot: the clone's packs, already indexed and checked (indexing the bundle again
        // cost as much as the clone's own fetch), plus the seed files' commit on top when there
        // is one. From nothing: a bundle of the seed commit.
        let changes = match (repo, &origin) {
            (Some(bundle), Some(head)) => {
                let changes = match ChangeRepo::create_from_clone(
                    &self.changes,
                    &self.workspace.join(".git"),
                    head,
                )
                .await
                {
                    Ok(changes) => changes,
                    Err(e) => {
                        tracing::debug!("seeding the change repository from the bundle: {e}");
                        let _ = tokio::fs::remove_dir_all(&self.changes).await;
                        ChangeRepo::create(&self.changes, bundle)
                            .await
                            .map_err(repo_err)?
                    }
                };
                if !files.is_empty() {
                    let seed = self.root.join("seed.bundle");
                    git(&self.workspace)
                        .args(["bundle", "create", "-q"])
                        .arg(&seed)
                        .args(["HEAD", &format!("^{head}")])
                        .run()
                        .await
                        .map_err(repo_err)?;
                    let fetched = changes.fetch_snapshot(&seed).await;
                    let _ = tokio::fs::remove_file(&seed).await;
                    fetched.map_err(repo_err)?;
                }
                changes
            }
            _ => {
                let seed = self.root.join("seed.bundle");
                git(&self.workspace)
                    .args(["bundle", "create", "-q"])
                    .arg(&seed)
                    .arg("HEAD")
                    .run()
                    .await
                    .map_err(repo_err)?;
                let changes = ChangeRepo::create(&self.changes, &seed).await;
                let _ = tokio::fs::remove_file(&seed).await;
                changes.map_err(repo_err)?
            }
        };
        let tip = changes
            .resolve("refs/delegate/snapshot")
            .await
            .map_err(repo_err)?;
        changes.set_ref("tip", &tip).await.map_err(repo_err)?;
        if let Some(origin) = &origin {
            changes.set_ref("origin", origin).await.map_err(repo_err)?;
        }
        Ok(())
    }

    /// Creates the dirs of sandbox `id` under `root`: seeded from `spec` (see [`create`](Self::create)),
    /// or with an empty work dir for the pool when `seeded` is false. A failure removes whatever
    /// was made, so no half-made sandbox dir is left behind.
    pub async fn make_for(
        root: &Path,
        spec: &super::SandboxSpec,
        seeded: bool,
    ) -> Result<Self, SandboxError> {
        let dirs = SandboxDirs::new(root.join(&spec.id));
        let made = if seeded {
            dirs.create(&spec.files, spec.repo.as_deref()).await
        } else {
            dirs.create_empty().await
        };
        match made {
            Ok(()) => Ok(dirs),
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dirs.root).await;
                Err(e)
            }
        }
    }

    /// Creates the dirs of a pooled sandbox with its work dir empty; [`seed_empty`](Self::seed_empty)
    /// makes it the agent's repository when a run claims the sandbox.
    pub async fn create_empty(&self) -> Result<(), SandboxError> {
        for d in [&self.root, &self.workspace, &self.home, &self.run] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(io("create dir"))?;
        }
        Ok(())
    }

    /// Seeds a pooled sandbox's work dir as [`create`](Self::create) seeds a fresh one. Only
    /// `opencode serve` ran in the sandbox so far, with no task; the work dir must still be
    /// empty, so git on the host never reads anything the sandbox wrote.
    pub async fn seed_empty(
        &self,
        files: &BTreeMap<String, String>,
        repo: Option<&Path>,
    ) -> Result<(), SandboxError> {
        validate_files(files)?;
        let mut entries = tokio::fs::read_dir(&self.workspace)
            .await
            .map_err(io("read the pooled work dir"))?;
        if let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io("read the pooled work dir"))?
        {
            return Err(SandboxError::Io(format!(
                "the pooled sandbox's work dir is not empty (it holds {:?})",
                entry.file_name()
            )));
        }
        self.create(files, repo).await
    }

    /// The commit the sandbox's next change must sit on.
    pub async fn tip(&self) -> Result<String, SandboxError> {
        ChangeRepo::open(&self.changes)
            .resolve("refs/delegate/tip")
            .await
            .map_err(repo_err)
    }

    /// Reads the change the commit script left in the run dir (hostile input: size-capped,
    /// every object checked, it must sit on the tip), describes it with a diff preview of at
    /// most `max_diff` bytes, and makes it the new tip.
    pub async fn import_changes(&self, max_diff: usize) -> Result<Changes, SandboxError> {
        let repo = ChangeRepo::open(&self.changes);
        let base = repo.resolve("refs/delegate/tip").await.map_err(repo_err)?;
        let bundle = self.run.join("changes.bundle");
        let imported = repo
            .import(&bundle, &base, MAX_CHANGE_BYTES, &self.root)
            .await;
        let _ = tokio::fs::remove_file(&bundle).await;
        let commit = imported.map_err(repo_err)?;
        let origin = repo.resolve("refs/delegate/origin").await.ok();
        let changes = Changes::describe(&repo, base, commit, max_diff, origin)
            .await
            .map_err(repo_err)?;
        repo.set_ref("tip", &changes.commit)
            .await
            .map_err(repo_err)?;
        Ok(changes)
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> SandboxError {
    move |e| SandboxError::Io(format!("{what}: {e}"))
}

fn repo_err(e: delegate_repo::RepoError) -> SandboxError {
    SandboxError::Io(format!("the work dir's repository: {e}"))
}

/// git in `dir` without global config, hooks or fsmonitor (the work dir is still delegate's
/// alone whenever this runs: before the sandbox starts).
fn git(dir: &Path) -> Git {
    Git::new(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_that_escape() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            ".git/config",
            "",
            ".",
            "a\0b",
        ] {
            let files = BTreeMap::from([(bad.to_string(), "x".to_string())]);
            assert!(validate_files(&files).is_err(), "{bad:?} accepted");
        }
        let ok = BTreeMap::from([("src/main.rs".to_string(), "fn main(){}".to_string())]);
        validate_files(&ok).unwrap();
    }

    /// What a backend does inside the sandbox at the end of a run (here without a sandbox).
    async fn commit_inside(dirs: &SandboxDirs, label: &str) {
        let base = dirs.tip().await.unwrap();
        let status = tokio::process::Command::new("sh")
            .current_dir(&dirs.workspace)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("DELEGATE_BASE", base)
            .env("DELEGATE_OUT", dirs.run.join("changes.bundle"))
            .env("DELEGATE_MESSAGE", label)
            .args(["-c", delegate_repo::COMMIT_SCRIPT])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn tracks_added_modified_and_deleted_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = SandboxDirs::new(tmp.path().join("sbx"));
        let files = BTreeMap::from([
            ("keep.txt".to_string(), "a\n".to_string()),
            ("gone.txt".to_string(), "b\n".to_string()),
        ]);
        dirs.create(&files, None).await.unwrap();
        std::fs::write(dirs.workspace.join("keep.txt"), "a2\n").unwrap();
        std::fs::remove_file(dirs.workspace.join("gone.txt")).unwrap();
        std::fs::write(dirs.workspace.join("new.txt"), "c\n").unwrap();
        std::fs::write(dirs.workspace.join("bytes.bin"), [0u8, 1, 2, 255]).unwrap();
        commit_inside(&dirs, "run 1").await;
        let changes = dirs.import_changes(1 << 20).await.unwrap();
        let mut got: Vec<_> = changes
            .files
            .iter()
            .map(|c| {
                (
                    c.path.as_str(),
                    c.change,
                    c.additions,
                    c.deletions,
                    c.binary,
                )
            })
            .collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            vec![
                ("bytes.bin", ChangeKind::Added, 0, 0, true),
                ("gone.txt", ChangeKind::Deleted, 0, 1, false),
                ("keep.txt", ChangeKind::Modified, 1, 1, false),
                ("new.txt", ChangeKind::Added, 1, 0, false),
            ]
        );
        assert!(changes.diff.contains("+a2") && !changes.diff_truncated);
        assert!(
            !dirs.run.join("changes.bundle").exists(),
            "the bundle is consumed"
        );
        // The next change sits on this one.
        assert_eq!(dirs.tip().await.unwrap(), changes.commit);
        commit_inside(&dirs, "run 2").await;
        let changes = dirs.import_changes(1 << 20).await.unwrap();
        assert!(changes.files.is_empty());
        std::fs::write(dirs.workspace.join("big.txt"), "x".repeat(5000)).unwrap();
        commit_inside(&dirs, "run 3").await;
        let changes = dirs.import_changes(100).await.unwrap();
        assert!(changes.diff_truncated && changes.diff.len() <= 100);
    }

    #[tokio::test]
    async fn a_sandbox_cloned_from_a_snapshot_records_its_origin_below_the_seed_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let g = || git(&src);
        g().args(["init", "-q", "-b", "main"]).run().await.unwrap();
        std::fs::write(src.join("a.txt"), "a\n").unwrap();
        g().args(["add", "-A"]).run().await.unwrap();
        g().args(["commit", "-q", "-m", "a"]).run().await.unwrap();
        let snapshot_tip = g().args(["rev-parse", "HEAD"]).line().await.unwrap();
        let bundle = tmp.path().join("snap.bundle");
        g().args(["bundle", "create", "-q"])
            .arg(&bundle)
            .args(["HEAD", "main"])
            .run()
            .await
            .unwrap();
        let dirs = SandboxDirs::new(tmp.path().join("sbx"));
        let files = BTreeMap::from([("seed.txt".to_string(), "s\n".to_string())]);
        dirs.create(&files, Some(&bundle)).await.unwrap();
        assert_ne!(
            dirs.tip().await.unwrap(),
            snapshot_tip,
            "the seed files sit on top"
        );
        std::fs::write(dirs.workspace.join("a.txt"), "a2\n").unwrap();
        commit_inside(&dirs, "run 1").await;
        let changes = dirs.import_changes(1 << 20).await.unwrap();
        assert_eq!(changes.origin.as_deref(), Some(snapshot_tip.as_str()));
        let empty = SandboxDirs::new(tmp.path().join("empty"));
        empty.create(&BTreeMap::new(), None).await.unwrap();
        commit_inside(&empty, "run 1").await;
        assert_eq!(empty.import_changes(1 << 20).await.unwrap().origin, None);
    }

    #[tokio::test]
    async fn a_change_that_does_not_sit_on_the_tip_is_refused_and_the_tip_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = SandboxDirs::new(tmp.path().join("sbx"));
        dirs.create(&BTreeMap::new(), None).await.unwrap();
        let tip = dirs.tip().await.unwrap();
        // A sandbox that rewrote history and bundled a commit of its own making.
        std::fs::write(dirs.workspace.join("x"), "x").unwrap();
        let status = tokio::process::Command::new("sh")
            .current_dir(&dirs.workspace)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args([
                "-c",
                "git -c user.name=a -c user.email=a@a commit -q --allow-empty -m evil --amend \
                 && git update-ref refs/delegate/result HEAD \
                 && git bundle create -q ../run/changes.bundle refs/delegate/result",
            ])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let err = dirs.import_changes(1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("does not sit on"), "{err}");
        assert_eq!(dirs.tip().await.unwrap(), tip);
    }
}

//! A sandbox's work dir and how delegate learns what a run changed.
//!
//! The work dir is a git repository (seeded files committed first) so the agent has history to look
//! at. delegate itself never runs git against that repository after the sandbox started: the
//! sandbox can write `.git/config` or hooks there. It tracks changes with its own git dir *outside*
//! the work dir (`track.git`, same work tree, hooks and fsmonitor off), so nothing the sandbox
//! writes is ever executed or trusted on the host.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use delegate_mcp::types::{ChangeKind, ChangedFile};
use tokio::process::Command;

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
    pub root: PathBuf,
    /// The agent's work dir (`/workspace` inside).
    pub workspace: PathBuf,
    /// `$HOME` inside (opencode's data, sessions).
    pub home: PathBuf,
    /// Sockets shared with the sandbox (`/run/delegate` inside).
    pub run: PathBuf,
    /// delegate's own git dir for change tracking; never visible inside.
    pub track: PathBuf,
}

impl SandboxDirs {
    pub fn new(root: PathBuf) -> Self {
        SandboxDirs {
            workspace: root.join("workspace"),
            home: root.join("home"),
            run: root.join("run"),
            track: root.join("track.git"),
            root,
        }
    }

    /// Creates the dirs, writes the seed files and commits them in both repositories.
    pub async fn create(&self, files: &BTreeMap<String, String>) -> Result<(), SandboxError> {
        validate_files(files)?;
        for d in [&self.workspace, &self.home, &self.run] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(io("create dir"))?;
        }
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
        // The agent's repository: made while the work dir is still ours alone.
        git(&self.workspace, None, &["init", "-q", "-b", "main"]).await?;
        git(&self.workspace, None, &["add", "-A"]).await?;
        git(
            &self.workspace,
            None,
            &[
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "delegate: seed files",
            ],
        )
        .await?;
        // delegate's own tracking repository.
        git(
            &self.workspace,
            Some(&self.track),
            &["init", "-q", "-b", "main"],
        )
        .await?;
        self.snapshot("delegate: seed files").await?;
        Ok(())
    }

    /// What changed since the last snapshot, as `changed_files` and a unified diff capped at
    /// `max_diff` bytes; then records the new state, so a warm sandbox's next run diffs against it.
    pub async fn collect_changes(
        &self,
        max_diff: usize,
        label: &str,
    ) -> Result<(Vec<ChangedFile>, String, bool), SandboxError> {
        git(&self.workspace, Some(&self.track), &["add", "-A"]).await?;
        let names = git(
            &self.workspace,
            Some(&self.track),
            &[
                "diff",
                "--cached",
                "--name-status",
                "--no-renames",
                "-z",
                "HEAD",
            ],
        )
        .await?;
        let changed = parse_name_status(&names);
        let diff = git(
            &self.workspace,
            Some(&self.track),
            &["diff", "--cached", "--no-renames", "--no-color", "HEAD"],
        )
        .await?;
        let (diff, truncated) = cap(diff, max_diff);
        self.commit(label).await?;
        Ok((changed, diff, truncated))
    }

    async fn snapshot(&self, message: &str) -> Result<(), SandboxError> {
        git(&self.workspace, Some(&self.track), &["add", "-A"]).await?;
        self.commit(message).await
    }

    /// Commits what is staged in the tracking repository.
    async fn commit(&self, message: &str) -> Result<(), SandboxError> {
        git(
            &self.workspace,
            Some(&self.track),
            &[
                "commit",
                "-q",
                "--allow-empty",
                "--no-verify",
                "-m",
                message,
            ],
        )
        .await?;
        Ok(())
    }
}

fn parse_name_status(out: &[u8]) -> Vec<ChangedFile> {
    let mut fields = out.split(|b| *b == 0).filter(|f| !f.is_empty());
    let mut changed = Vec::new();
    while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
        let change = match status.first() {
            Some(b'A') => ChangeKind::Added,
            Some(b'D') => ChangeKind::Deleted,
            _ => ChangeKind::Modified,
        };
        changed.push(ChangedFile {
            path: String::from_utf8_lossy(path).into_owned(),
            change,
        });
    }
    changed
}

/// Cuts `bytes` to at most `max` bytes on a char boundary.
fn cap(bytes: Vec<u8>, max: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> SandboxError {
    move |e| SandboxError::Io(format!("{what}: {e}"))
}

/// Runs git with hooks, fsmonitor and global config out of the way; `git_dir` selects delegate's
/// tracking repository.
async fn git(
    work_tree: &Path,
    git_dir: Option<&Path>,
    args: &[&str],
) -> Result<Vec<u8>, SandboxError> {
    let mut cmd = Command::new("git");
    cmd.current_dir(work_tree)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "safe.directory=*",
            "-c",
            "user.name=delegate",
            "-c",
            "user.email=delegate@localhost",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.quotepath=false",
        ]);
    if let Some(dir) = git_dir {
        cmd.env("GIT_DIR", dir).env("GIT_WORK_TREE", work_tree);
    }
    let out = cmd
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| SandboxError::Io(format!("cannot run git (is it installed?): {e}")))?;
    if !out.status.success() {
        return Err(SandboxError::Io(format!(
            "git {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
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

    #[tokio::test]
    async fn tracks_added_modified_and_deleted_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = SandboxDirs::new(tmp.path().join("sbx"));
        let files = BTreeMap::from([
            ("keep.txt".to_string(), "a\n".to_string()),
            ("gone.txt".to_string(), "b\n".to_string()),
        ]);
        dirs.create(&files).await.unwrap();
        std::fs::write(dirs.workspace.join("keep.txt"), "a2\n").unwrap();
        std::fs::remove_file(dirs.workspace.join("gone.txt")).unwrap();
        std::fs::write(dirs.workspace.join("new.txt"), "c\n").unwrap();
        let (changed, diff, truncated) = dirs.collect_changes(1 << 20, "run 1").await.unwrap();
        let mut got: Vec<_> = changed
            .iter()
            .map(|c| (c.path.as_str(), c.change))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("gone.txt", ChangeKind::Deleted),
                ("keep.txt", ChangeKind::Modified),
                ("new.txt", ChangeKind::Added),
            ]
        );
        assert!(diff.contains("+a2") && !truncated);
        // The next collection diffs against the new state.
        let (changed, _, _) = dirs.collect_changes(1 << 20, "run 2").await.unwrap();
        assert!(changed.is_empty());
        let (_, diff, truncated) = {
            std::fs::write(dirs.workspace.join("big.txt"), "x".repeat(5000)).unwrap();
            dirs.collect_changes(100, "run 3").await.unwrap()
        };
        assert!(truncated && diff.len() <= 100);
    }
}

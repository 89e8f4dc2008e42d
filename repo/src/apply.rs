//! The caller's side of a change: write the agent's work into the caller's repository as a branch
//! whose parent is the caller's HEAD at snapshot time (plus the uncommitted-changes commit when
//! there was one), so `git cherry-pick` of its tip picks exactly the agent's work, and, when asked,
//! apply it to the working tree. The working tree, the index and the current branch are never
//! touched except by that explicit `worktree` apply, and that only when it applies cleanly.

use std::path::Path;

use serde::Serialize;

use crate::RepoError;
use crate::git::Git;
use crate::snapshot::{Snapshot, locate};

/// What to do with the caller's repository at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    /// Write `delegate/<run>` only.
    Branch,
    /// Write the branch and apply the change to the working tree when it applies cleanly.
    Worktree,
}

/// What applying did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The branch written, e.g. `delegate/1a2b3c4d`.
    pub branch: Option<String>,
    /// Its tip commit.
    pub commit: Option<String>,
    /// Whether the working tree now has the change.
    pub applied: bool,
    /// Paths that kept the working tree apply from happening.
    pub conflicts: Vec<String>,
    /// What happened, in words.
    pub message: String,
}

/// Which branch of the caller's repository gets the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchName {
    /// `delegate/<name>`, or the first of `delegate/<name>-2`, `-3`, ... that is free; an
    /// existing branch is never moved.
    Fresh(String),
    /// `delegate/<name>`, moved forward (fast-forward) when its tip is still `from`, the commit
    /// delegate last wrote there (a warm sandbox's earlier run); created when it does not exist;
    /// otherwise, when somebody moved it, a fresh name as for [`BranchName::Fresh`].
    Forward {
        /// The name after `delegate/`.
        name: String,
        /// The commit delegate last wrote to the branch.
        from: String,
    },
}

/// Reads `bundle` (the commits from the snapshot's tip to the agent's result, as the server sent
/// them) into the snapshot's scratch repository, checks them, then writes them into the caller's
/// repository on the branch `branch` names and, for [`ApplyTo::Worktree`], applies the result's
/// own change (from its parent, the previous run or the snapshot) to its working tree.
///
/// The commits are deterministic: author and committer (names, e-mails, dates) and messages are
/// copied from the scratch commits, so applying a later run of the same warm sandbox re-creates
/// the earlier runs' commits with the same ids.
pub async fn apply(
    snapshot: &Snapshot,
    bundle: &Path,
    result: &str,
    branch: &BranchName,
    to: ApplyTo,
) -> Result<Applied, RepoError> {
    let scratch = snapshot.scratch();
    let in_scratch = || Git::new(&scratch).dirs(&scratch, None);
    in_scratch()
        .args(["fetch", "-q", "--no-tags", "--no-write-fetch-head"])
        .arg(bundle)
        .arg("+refs/delegate/export:refs/delegate/result")
        .run()
        .await
        .map_err(|e| RepoError::BadBundle(format!("the change from the server: {e}")))?;
    let fetched = in_scratch()
        .args([
            "rev-parse",
            "--verify",
            "-q",
            "refs/delegate/result^{commit}",
        ])
        .line()
        .await?;
    if fetched != result {
        return Err(RepoError::BadBundle(format!(
            "the server sent {fetched}, not the run's commit {result}"
        )));
    }
    if result == snapshot.tip {
        return Err(RepoError::BadBundle(format!(
            "{result} is the snapshot itself, not a change on top of it"
        )));
    }
    if !in_scratch()
        .args(["merge-base", "--is-ancestor", &snapshot.tip, result])
        .ok()
        .await?
    {
        return Err(RepoError::BadBundle(format!(
            "{result} does not descend from the snapshot {}",
            snapshot.tip
        )));
    }

    let found = locate(&snapshot.root).await?;
    let caller = || Git::new(&found.root).dirs(&found.git_dir, Some(&found.root));
    copy_objects(snapshot, result, caller()).await?;

    // Rebuild the chain on the caller's own commits: the parentless base becomes HEAD.
    let chain = in_scratch()
        .args(["rev-list", "--reverse", "--topo-order", "--parents"])
        .arg(result)
        .arg(format!("^{}", snapshot.base_commit))
        .line()
        .await?;
    let mut map = std::collections::HashMap::new();
    map.insert(snapshot.base_commit.clone(), snapshot.base.commit.clone());
    let mut tip = snapshot.base.commit.clone();
    // Where the result's own change starts: its first parent, rebuilt.
    let mut start = snapshot.base.commit.clone();
    for line in chain.lines() {
        let mut ids = line.split_whitespace();
        let Some(commit) = ids.next() else { continue };
        let mut cmd = caller().args(["commit-tree", &format!("{commit}^{{tree}}")]);
        let mut first_parent = None;
        for parent in ids {
            if let Some(Some(p)) = map.get(parent) {
                first_parent.get_or_insert_with(|| p.clone());
                cmd = cmd.args(["-p", p]);
            }
        }
        let message = in_scratch()
            .args(["log", "-1", "--format=%B", commit])
            .run()
            .await?;
        let who = Identity::of(&scratch, commit).await?;
        let made = cmd
            .env("GIT_AUTHOR_NAME", who.author_name)
            .env("GIT_AUTHOR_EMAIL", who.author_email)
            .env("GIT_AUTHOR_DATE", who.author_date)
            .env("GIT_COMMITTER_NAME", who.committer_name)
            .env("GIT_COMMITTER_EMAIL", who.committer_email)
            .env("GIT_COMMITTER_DATE", who.committer_date)
            .stdin(message)
            .line()
            .await?;
        if commit == result {
            start = first_parent;
        }
        map.insert(commit.to_string(), Some(made.clone()));
        tip = Some(made);
    }
    let Some(tip) = tip else {
        return Err(RepoError::BadBundle("the change has no commit".into()));
    };

    let branch = write_branch(&found.root, &found.git_dir, branch, &tip).await?;
    let mut applied = Applied {
        branch: Some(branch.clone()),
        commit: Some(tip.clone()),
        message: format!("wrote branch {branch}"),
        ..Applied::default()
    };
    if to == ApplyTo::Worktree {
        let from = match start {
            Some(from) => from,
            // The caller's repository had no commit and the change is the first: against the
            // empty tree.
            None => {
                caller()
                    .args(["hash-object", "-t", "tree", "--stdin"])
                    .stdin(Vec::new())
                    .line()
                    .await?
            }
        };
        let patch = caller()
            .args([
                "diff",
                "--binary",
                "--no-renames",
                "--no-color",
                "--full-index",
                &from,
                &tip,
            ])
            .run()
            .await?;
        if patch.is_empty() {
            applied.applied = true;
            applied.message = format!("wrote branch {branch}; the change is empty");
            return Ok(applied);
        }
        let check = caller()
            .args(["apply", "--check", "--binary", "-"])
            .stdin(patch.clone())
            .output()
            .await?;
        if check.status.success() {
            caller()
                .args(["apply", "--binary", "-"])
                .stdin(patch)
                .run()
                .await?;
            applied.applied = true;
            applied.message = format!("wrote branch {branch} and applied it to the working tree");
        } else {
            applied.conflicts = conflict_paths(&String::from_utf8_lossy(&check.stderr));
            applied.message = format!(
                "wrote branch {branch}; the working tree was left as it was: the change does not \
                 apply cleanly to {}",
                if applied.conflicts.is_empty() {
                    "it".to_string()
                } else {
                    applied.conflicts.join(", ")
                }
            );
        }
    }
    Ok(applied)
}

/// Copies into the caller's object store exactly the objects it lacks for `result`: those in the
/// scratch repository's own store (the snapshot's new blobs, trees and commits, and the change
/// as read from the server), never the ones the scratch borrows from the caller.
///
/// A `git fetch` from the scratch repository would do it with the caller's HEAD as its only
/// "have"; the parentless snapshot commit does not descend from it, so upload-pack sent (and
/// delta-searched) every object of the tree again: 12 s for a 1,000-file change in a 100 MB
/// repository. `pack-objects --local` leaves out everything the caller already has, without a
/// delta search (the copy is local, and deltas already in the scratch packs are reused), and
/// `index-pack --strict` checks each object and every link of the result on the caller's side,
/// as a fetch with `fsckObjects` would. No ref, FETCH_HEAD, hook or working tree file is
/// touched; objects nothing points at yet are left to the caller's `git gc`, as after a fetch.
async fn copy_objects(snapshot: &Snapshot, result: &str, caller: Git) -> Result<(), RepoError> {
    let scratch = snapshot.scratch();
    let mut revs = format!("{result}\n");
    // The snapshot's base tree is the caller's HEAD tree: known to be there, not walked.
    // (Without a HEAD it is the empty tree, which the caller may lack: walked and sent.)
    if snapshot.base.commit.is_some() {
        revs += &format!("^{}^{{tree}}\n", snapshot.base_commit);
    }
    Git::new(&scratch)
        .dirs(&scratch, None)
        .args([
            "pack-objects",
            "--revs",
            "--local",
            "--stdout",
            "--window=0",
            "-q",
        ])
        .stdin(revs.into_bytes())
        .pipe(caller.args(["index-pack", "--stdin", "--strict"]))
        .await?;
    Ok(())
}

/// Who made a commit and when, exactly as git stores it (dates raw: seconds and zone).
struct Identity {
    author_name: String,
    author_email: String,
    author_date: String,
    committer_name: String,
    committer_email: String,
    committer_date: String,
}

impl Identity {
    async fn of(scratch: &Path, commit: &str) -> Result<Identity, RepoError> {
        let text = Git::new(scratch)
            .dirs(scratch, None)
            .args([
                "log",
                "-1",
                "--date=raw",
                "--format=%an%x00%ae%x00%ad%x00%cn%x00%ce%x00%cd",
                commit,
            ])
            .line()
            .await?;
        let mut parts = text.split('\0').map(str::to_string);
        let mut next = |fallback: &str| {
            parts
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| fallback.to_string())
        };
        // A commit always has both; the fallbacks only keep a malformed one from failing here
        // (the ids would then differ between applies, nothing worse).
        Ok(Identity {
            author_name: next("delegate agent"),
            author_email: next("agent@delegate.invalid"),
            author_date: next("0 +0000"),
            committer_name: next("delegate agent"),
            committer_email: next("agent@delegate.invalid"),
            committer_date: next("0 +0000"),
        })
    }
}

/// Writes `commit` to the branch `name` asks for; returns the branch's short name. Every update
/// is atomic against its expected old value, so a branch somebody else moved meanwhile is never
/// overwritten.
async fn write_branch(
    root: &Path,
    git_dir: &Path,
    name: &BranchName,
    commit: &str,
) -> Result<String, RepoError> {
    let update = |branch: &str, old: &str| {
        Git::new(root)
            .dirs(git_dir, Some(root))
            .args(["update-ref", "-m", "delegate: the agent's change"])
            .arg(format!("refs/heads/{branch}"))
            .args([commit, old])
            .ok()
    };
    let base = match name {
        BranchName::Fresh(base) => base,
        BranchName::Forward { name, from } => {
            let branch = format!("delegate/{name}");
            // Moved forward from what delegate wrote last, made anew when it is gone, or left
            // where it is when it already has this commit (the same run applied again).
            if update(&branch, from).await?
                || update(&branch, "").await?
                || update(&branch, commit).await?
            {
                return Ok(branch);
            }
            name
        }
    };
    for n in 1..=100 {
        let branch = if n == 1 {
            format!("delegate/{base}")
        } else {
            format!("delegate/{base}-{n}")
        };
        // The empty old value makes the update fail if the ref exists (atomically).
        if update(&branch, "").await? {
            return Ok(branch);
        }
    }
    Err(RepoError::Git(format!(
        "no free branch name delegate/{base}[-N] for the change"
    )))
}

/// The paths `git apply --check` complained about.
fn conflict_paths(stderr: &str) -> Vec<String> {
    let mut paths: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .filter_map(|l| {
            l.strip_prefix("patch failed: ")
                .and_then(|r| r.rsplit_once(':').map(|(p, _)| p))
                .or_else(|| l.split_once(": ").map(|(p, _)| p))
        })
        .map(str::to_string)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

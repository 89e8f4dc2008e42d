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

/// Reads `bundle` (the commits from the snapshot's tip to the agent's result, as the server sent
/// them) into the snapshot's scratch repository, checks them, then writes the branch
/// `delegate/<name>` (the next free name if taken) into the caller's repository and, for
/// [`ApplyTo::Worktree`], applies the change to its working tree.
pub async fn apply(
    snapshot: &Snapshot,
    bundle: &Path,
    result: &str,
    name: &str,
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
    // Objects only: no ref, no FETCH_HEAD, no hook.
    caller()
        .args(["fetch", "-q", "--no-tags", "--no-write-fetch-head"])
        .arg(&scratch)
        .arg(result)
        .run()
        .await?;

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
    let mut start = snapshot.base.commit.clone();
    for line in chain.lines() {
        let mut ids = line.split_whitespace();
        let Some(commit) = ids.next() else { continue };
        let mut cmd = caller().args(["commit-tree", &format!("{commit}^{{tree}}")]);
        for parent in ids {
            if let Some(Some(p)) = map.get(parent) {
                cmd = cmd.args(["-p", p]);
            }
        }
        let message = in_scratch()
            .args(["log", "-1", "--format=%B", commit])
            .run()
            .await?;
        let author = in_scratch()
            .args(["log", "-1", "--format=%an%n%ae%n%aI", commit])
            .line()
            .await?;
        let mut who = author.lines();
        let (an, ae, ad) = (
            who.next().unwrap_or("delegate agent").to_string(),
            who.next().unwrap_or("agent@delegate.invalid").to_string(),
            who.next().unwrap_or("").to_string(),
        );
        let made = cmd
            .env("GIT_AUTHOR_NAME", an)
            .env("GIT_AUTHOR_EMAIL", ae)
            .env("GIT_AUTHOR_DATE", ad)
            .stdin(message)
            .line()
            .await?;
        if *commit == snapshot.tip && snapshot.tip != snapshot.base_commit {
            // The uncommitted-changes commit: the worktree patch starts after it.
            start = Some(made.clone());
        }
        map.insert(commit.to_string(), Some(made.clone()));
        tip = Some(made);
    }
    let Some(tip) = tip else {
        return Err(RepoError::BadBundle("the change has no commit".into()));
    };

    let branch = create_branch(&found.root, &found.git_dir, name, &tip).await?;
    let mut applied = Applied {
        branch: Some(branch.clone()),
        commit: Some(tip.clone()),
        message: format!("wrote branch {branch}"),
        ..Applied::default()
    };
    if to == ApplyTo::Worktree {
        let from = start.unwrap_or_else(|| snapshot.base_commit.clone());
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

/// Creates `delegate/<name>` at `commit`, or the first of `delegate/<name>-2`, `-3`, ... that is
/// free; never moves an existing branch.
async fn create_branch(
    root: &Path,
    git_dir: &Path,
    name: &str,
    commit: &str,
) -> Result<String, RepoError> {
    for n in 1..=100 {
        let branch = if n == 1 {
            format!("delegate/{name}")
        } else {
            format!("delegate/{name}-{n}")
        };
        // The empty old value makes the update fail if the ref exists (atomically).
        let made = Git::new(root)
            .dirs(git_dir, Some(root))
            .args(["update-ref", "-m", "delegate: the agent's change"])
            .arg(format!("refs/heads/{branch}"))
            .args([commit, ""])
            .ok()
            .await?;
        if made {
            return Ok(branch);
        }
    }
    Err(RepoError::Git(format!(
        "no free branch name delegate/{name}[-N] for the change"
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

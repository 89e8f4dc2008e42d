//! A caller's repository through the whole trip with real git: snapshot (dirty, untracked,
//! ignored, binary, symlink, odd names, a submodule), a sandbox clone and the in-sandbox commit,
//! the server's hostile-input import, and the branch and worktree apply on the caller's side.

// The fixtures are plain synchronous git calls made between the awaited steps under test.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;

use delegate_repo::{
    ApplyTo, BranchName, COMMIT_SCRIPT, ChangeRepo, Limits, RepoError, Snapshot, apply,
};

use delegate_testkit::repos::{fingerprint, git, project, write};

/// `git fsck` of the caller's repository finds every object and link whole (dangling objects,
/// which a fetch leaves too until `git gc`, are fine).
fn assert_fsck(root: &Path) {
    git(
        root,
        &[
            "fsck",
            "--strict",
            "--full",
            "--no-dangling",
            "--no-progress",
        ],
    );
}

/// Every ref of the repository but delegate's own branches, with its commit.
fn other_refs(root: &Path) -> String {
    git(root, &["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .filter(|l| !l.starts_with("refs/heads/delegate/"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Objects in the repository's store, loose and packed, counting a copy twice.
fn object_count(root: &Path) -> u64 {
    git(root, &["count-objects", "-v"])
        .lines()
        .filter_map(|l| {
            l.strip_prefix("count: ")
                .or_else(|| l.strip_prefix("in-pack: "))
        })
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

fn fresh(name: &str) -> BranchName {
    BranchName::Fresh(name.into())
}

fn scratch(base: &Path) -> PathBuf {
    base.join("scratch")
}

/// Clones the snapshot as a sandbox would, lets "the agent" change it, and runs the commit script
/// there; returns the bundle it wrote.
fn agent_run(base: &Path, snap: &Snapshot, change: impl Fn(&Path)) -> PathBuf {
    let work = base.join(format!("sandbox-{}", rand_suffix()));
    git(
        base,
        &[
            "clone",
            "-q",
            snap.bundle().to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    change(&work);
    let out = base.join(format!("out-{}.bundle", rand_suffix()));
    let status = Command::new("sh")
        .current_dir(&work)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("DELEGATE_BASE", &snap.tip)
        .env("DELEGATE_OUT", &out)
        .env("DELEGATE_MESSAGE", "delegate: run test")
        .args(["-c", COMMIT_SCRIPT])
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[tokio::test]
async fn a_dirty_project_goes_in_and_the_change_comes_back_as_a_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = project(tmp.path());
    let head = git(&root, &["rev-parse", "HEAD"]);
    let before = fingerprint(&root);
    let refs_before = other_refs(&root);

    let snap = Snapshot::take(&root.join("src"), Limits::default(), &scratch(tmp.path()))
        .await
        .unwrap();
    assert_eq!(snap.root, root.canonicalize().unwrap());
    assert_eq!(snap.base.commit.as_deref(), Some(head.as_str()));
    assert_eq!(snap.base.branch.as_deref(), Some("main"));
    assert!(snap.base.dirty);
    assert_ne!(snap.tip, snap.base_commit);
    assert_eq!(
        fingerprint(&root),
        before,
        "taking a snapshot changed the project"
    );

    // What the sandbox sees.
    let seen = tmp.path().join("seen");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            snap.bundle().to_str().unwrap(),
            seen.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(seen.join("README.md")).unwrap(),
        "# project\n\ndirty line\n"
    );
    assert!(seen.join("notes/untracked.txt").is_file());
    assert!(seen.join("name with spaces ü.txt").is_file());
    assert_eq!(
        std::fs::read(seen.join("data/blob.bin")).unwrap(),
        [0u8, 159, 146, 150, 0, 1, 2, 3]
    );
    assert!(!seen.join("target").exists(), "an ignored dir arrived");
    assert!(!seen.join("debug.log").exists(), "an ignored file arrived");
    let link = std::fs::symlink_metadata(seen.join("link-to-readme")).unwrap();
    assert!(link.file_type().is_symlink());
    // The submodule is a gitlink, not followed: its directory is there but empty.
    assert_eq!(
        git(&seen, &["ls-files", "-s", "vendor/sub"])
            .split(' ')
            .next(),
        Some("160000")
    );
    assert!(!seen.join("vendor/sub/lib.txt").exists());
    let log = git(&seen, &["log", "--format=%s"]);
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.contains(&format!("delegate: snapshot of {head} (main)")),
        "{log}"
    );
    assert_eq!(
        git(&seen, &["diff", "--name-only", "HEAD~1"]),
        "README.md\nnotes/untracked.txt"
    );
    // Nothing of the caller's .git came along: no remote but the bundle, no hooks, no history.
    assert_eq!(git(&seen, &["rev-list", "--all", "--count"]), "2");

    // The agent changes a binary file, adds one, deletes one.
    let out = agent_run(tmp.path(), &snap, |work| {
        write(&work.join("data/blob.bin"), [9u8, 0, 255, 254, 0]);
        write(&work.join("src/new.rs"), "pub fn added() {}\n");
        std::fs::remove_file(work.join("name with spaces ü.txt")).unwrap();
    });

    // The server imports it as hostile input and describes it.
    let server = tmp.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let repo = ChangeRepo::create(&server.join("changes.git"), &snap.bundle())
        .await
        .unwrap();
    let result = repo
        .import(&out, &snap.tip, 1 << 20, &server)
        .await
        .unwrap();
    let files = repo.files(&snap.tip, &result).await.unwrap();
    let by_path = |p: &str| files.iter().find(|f| f.path == p).unwrap().clone();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(by_path("data/blob.bin").binary);
    assert_eq!(by_path("src/new.rs").change, "added");
    assert_eq!(by_path("src/new.rs").additions, 1);
    assert_eq!(by_path("name with spaces ü.txt").change, "deleted");
    let patch = server.join("run.patch");
    let size = repo
        .write_patch(&snap.tip, &result, &patch, 1 << 20)
        .await
        .unwrap();
    assert!(size > 0);
    assert!(
        std::fs::read_to_string(&patch)
            .unwrap()
            .contains("GIT binary patch")
    );
    let (preview, cut) = repo.preview(&snap.tip, &result, 1 << 20).await.unwrap();
    assert!(!cut);
    assert!(preview.contains("+pub fn added() {}"));
    assert!(
        !preview.contains("GIT binary patch"),
        "the preview dumps binary data"
    );
    let (short, cut) = repo.preview(&snap.tip, &result, 10).await.unwrap();
    assert!(cut && short.len() <= 10);

    // Back on the caller's machine: a branch, nothing else touched.
    let export = server.join("export.bundle");
    repo.bundle(&snap.tip, &result, &export).await.unwrap();
    let applied = apply(&snap, &export, &result, &fresh("run1"), ApplyTo::Branch)
        .await
        .unwrap();
    assert_eq!(applied.branch.as_deref(), Some("delegate/run1"));
    assert!(!applied.applied);
    assert_eq!(
        fingerprint(&root),
        before,
        "branch mode touched the working tree or index"
    );
    assert_eq!(other_refs(&root), refs_before, "another ref moved");
    assert_fsck(&root);
    let tip = git(&root, &["rev-parse", "delegate/run1"]);
    // Parents: the agent's commit -> the uncommitted-changes commit -> the caller's HEAD.
    assert_eq!(git(&root, &["rev-parse", "delegate/run1~2"]), head);
    assert_eq!(
        git(&root, &["show", "delegate/run1~1:README.md"]),
        "# project\n\ndirty line"
    );
    assert_eq!(
        git(&root, &["show", "delegate/run1:src/new.rs"]),
        "pub fn added() {}"
    );
    assert_eq!(
        git(
            &root,
            &["diff", "--name-only", "delegate/run1~1", "delegate/run1"]
        )
        .lines()
        .count(),
        3
    );
    // The name is taken now: the next apply picks the next free one and leaves the first alone.
    let again = apply(&snap, &export, &result, &fresh("run1"), ApplyTo::Branch)
        .await
        .unwrap();
    assert_eq!(again.branch.as_deref(), Some("delegate/run1-2"));
    assert_eq!(git(&root, &["rev-parse", "delegate/run1"]), tip);

    // worktree: applies cleanly, so the working tree gets the change; index and HEAD stay.
    let index_before = std::fs::read(root.join(".git/index")).unwrap();
    let applied = apply(&snap, &export, &result, &fresh("run1"), ApplyTo::Worktree)
        .await
        .unwrap();
    assert!(applied.applied, "{applied:?}");
    assert_eq!(
        std::fs::read_to_string(root.join("src/new.rs")).unwrap(),
        "pub fn added() {}\n"
    );
    assert_eq!(
        std::fs::read(root.join("data/blob.bin")).unwrap(),
        [9u8, 0, 255, 254, 0]
    );
    assert!(!root.join("name with spaces ü.txt").exists());
    assert_eq!(git(&root, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        std::fs::read(root.join(".git/index")).unwrap(),
        index_before
    );
    assert_eq!(other_refs(&root), refs_before);
    assert_fsck(&root);
}

/// A change of one file in a repository of a few hundred brings the caller only what it lacks:
/// the new blob, the trees above it and the commits, not the tree it already has (a `git fetch`
/// from the scratch repository sent all of it again, since the snapshot's parentless commit does
/// not descend from anything the caller has).
#[tokio::test]
async fn applying_copies_only_the_objects_the_caller_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("big");
    std::fs::create_dir_all(&root).unwrap();
    git(&root, &["init", "-q"]);
    for i in 0..300 {
        write(
            &root.join(format!("src/d{}/f{i}.txt", i % 3)),
            format!("file {i}\n"),
        );
    }
    git(&root, &["add", "."]);
    git(&root, &["commit", "-q", "-m", "many files"]);
    // Dirty: one tracked file changed, so the snapshot has its own blob, trees and two commits.
    write(&root.join("src/d0/f0.txt"), "changed by the caller\n");
    let snap = Snapshot::take(&root, Limits::default(), &scratch(tmp.path()))
        .await
        .unwrap();
    let out = agent_run(tmp.path(), &snap, |work| {
        write(&work.join("src/d1/f1.txt"), "changed by the agent\n");
    });
    let server = tmp.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let repo = ChangeRepo::create(&server.join("changes.git"), &snap.bundle())
        .await
        .unwrap();
    let result = repo
        .import(&out, &snap.tip, 1 << 20, &server)
        .await
        .unwrap();
    let export = server.join("export.bundle");
    repo.bundle(&snap.tip, &result, &export).await.unwrap();

    let before = object_count(&root);
    let applied = apply(&snap, &export, &result, &fresh("one"), ApplyTo::Branch)
        .await
        .unwrap();
    let added = object_count(&root) - before;
    // Snapshot: base commit, dirty commit, blob, root + src + d0 trees (6). Change: commit,
    // blob, root + src + d1 trees (5). The rebuilt chain: two commits. The old fetch: 300+.
    assert!(
        (8..=20).contains(&added),
        "{added} objects copied for a one-file change"
    );
    assert_eq!(
        git(&root, &["show", "delegate/one:src/d1/f1.txt"]),
        "changed by the agent"
    );
    assert_eq!(
        git(&root, &["show", "delegate/one~1:src/d0/f0.txt"]),
        "changed by the caller"
    );
    assert!(applied.branch.is_some());
    assert_fsck(&root);
}

/// A repository with no commit yet: the snapshot's base is the empty tree, which the caller may
/// not have; the branch it gets is whole all the same.
#[tokio::test]
async fn a_repository_without_commits_gets_a_whole_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("empty");
    std::fs::create_dir_all(&root).unwrap();
    git(&root, &["init", "-q"]);
    write(&root.join("draft.txt"), "first draft\n");
    let snap = Snapshot::take(&root, Limits::default(), &scratch(tmp.path()))
        .await
        .unwrap();
    assert!(snap.base.commit.is_none());
    let out = agent_run(tmp.path(), &snap, |work| {
        write(&work.join("draft.txt"), "second draft\n");
    });
    let server = tmp.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let repo = ChangeRepo::create(&server.join("changes.git"), &snap.bundle())
        .await
        .unwrap();
    let result = repo
        .import(&out, &snap.tip, 1 << 20, &server)
        .await
        .unwrap();
    let export = server.join("export.bundle");
    repo.bundle(&snap.tip, &result, &export).await.unwrap();
    let applied = apply(&snap, &export, &result, &fresh("first"), ApplyTo::Branch)
        .await
        .unwrap();
    assert_eq!(applied.branch.as_deref(), Some("delegate/first"));
    assert_eq!(
        git(&root, &["show", "delegate/first:draft.txt"]),
        "second draft"
    );
    assert_eq!(
        git(&root, &["show", "delegate/first~1:draft.txt"]),
        "first draft"
    );
    assert_fsck(&root);
}

#[tokio::test]
async fn a_change_that_does_not_apply_leaves_the_working_tree_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = project(tmp.path());
    let snap = Snapshot::take(&root, Limits::default(), &scratch(tmp.path()))
        .await
        .unwrap();
    let out = agent_run(tmp.path(), &snap, |work| {
        write(&work.join("README.md"), "# rewritten by the agent\n");
    });
    let server = tmp.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let repo = ChangeRepo::create(&server.join("changes.git"), &snap.bundle())
        .await
        .unwrap();
    let result = repo
        .import(&out, &snap.tip, 1 << 20, &server)
        .await
        .unwrap();
    let export = server.join("export.bundle");
    repo.bundle(&snap.tip, &result, &export).await.unwrap();
    // Meanwhile the caller edits the same file.
    write(&root.join("README.md"), "# the caller's own edit\n");
    let before = fingerprint(&root);
    let applied = apply(&snap, &export, &result, &fresh("r"), ApplyTo::Worktree)
        .await
        .unwrap();
    assert!(!applied.applied);
    assert_eq!(applied.conflicts, ["README.md"]);
    assert!(applied.message.contains("README.md"), "{}", applied.message);
    // Only the new branch differs.
    assert_eq!(fingerprint(&root), before);
    assert!(applied.branch.is_some());
}

#[tokio::test]
async fn bad_repositories_get_their_own_errors_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let err = Snapshot::take(&plain, Limits::default(), &scratch(tmp.path()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "not_a_repo", "{err}");

    let root = project(tmp.path());
    let before = fingerprint(&root);
    let err = Snapshot::take(
        &root,
        Limits {
            max_bytes: 20,
            max_files: 1000,
        },
        &scratch(tmp.path()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "repo_too_large");
    assert!(
        err.to_string().contains("README.md"),
        "names the largest paths: {err}"
    );
    let err = Snapshot::take(
        &root,
        Limits {
            max_bytes: 1 << 30,
            max_files: 3,
        },
        &scratch(tmp.path()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RepoError::TooLarge(_)), "{err}");

    std::fs::write(
        root.join(".git/MERGE_HEAD"),
        git(&root, &["rev-parse", "HEAD"]),
    )
    .unwrap();
    let err = Snapshot::take(&root, Limits::default(), &scratch(tmp.path()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "repo_busy");
    assert!(err.to_string().contains("merge"), "{err}");
    std::fs::remove_file(root.join(".git/MERGE_HEAD")).unwrap();
    assert_eq!(fingerprint(&root), before);
}

#[tokio::test]
async fn what_a_sandbox_hands_back_is_checked_before_it_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let root = project(tmp.path());
    let snap = Snapshot::take(&root, Limits::default(), &scratch(tmp.path()))
        .await
        .unwrap();
    let server = tmp.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let repo = ChangeRepo::create(&server.join("changes.git"), &snap.bundle())
        .await
        .unwrap();

    // Garbage, a missing file, a symlink, and something too large.
    let junk = tmp.path().join("junk.bundle");
    std::fs::write(&junk, b"# v2 git bundle\nnot really\n").unwrap();
    let err = repo
        .import(&junk, &snap.tip, 1 << 20, &server)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "bad_change", "{err}");
    let err = repo
        .import(&tmp.path().join("absent"), &snap.tip, 1 << 20, &server)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "bad_change");
    let link = tmp.path().join("link.bundle");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let err = repo
        .import(&link, &snap.tip, 1 << 20, &server)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "bad_change");
    let out = agent_run(tmp.path(), &snap, |work| write(&work.join("x"), "x"));
    let err = repo.import(&out, &snap.tip, 10, &server).await.unwrap_err();
    assert_eq!(err.kind(), "repo_too_large");

    // A change that claims another base.
    let err = repo
        .import(&out, &snap.base_commit, 1 << 20, &server)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "bad_change", "{err}");
    // The good one still goes in afterwards.
    repo.import(&out, &snap.tip, 1 << 20, &server)
        .await
        .unwrap();
}

/// Clones `from` (a snapshot bundle, or a repository holding the previous run's commit) into a
/// warm sandbox's work dir the first time, then lets "the agent" change it and commits on top of
/// `base` as the in-sandbox script does; returns the bundle and the commit.
fn warm_run(work: &Path, base: &str, out: &Path, change: impl Fn(&Path)) -> String {
    change(work);
    let status = Command::new("sh")
        .current_dir(work)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("DELEGATE_BASE", base)
        .env("DELEGATE_OUT", out)
        .env("DELEGATE_MESSAGE", "delegate: warm run")
        .args(["-c", COMMIT_SCRIPT])
        .status()
        .unwrap();
    assert!(status.success());
    git(work, &["rev-parse", "refs/delegate/result"])
}

/// A warm sandbox: a kept snapshot opened again (as `delegate apply` in another process would),
/// two runs on top of each other, the branch moving forward, and the earlier run's commit
/// re-created with the same id; a branch somebody moved is left alone.
#[tokio::test]
async fn a_warm_sandbox_moves_its_branch_forward_from_a_kept_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = project(tmp.path());
    let head = git(&root, &["rev-parse", "HEAD"]);
    let before = fingerprint(&root);
    let state = tmp.path().join("state");
    let taken = Snapshot::take(&root, Limits::default(), &state.join("tmp"))
        .await
        .unwrap();
    let bundle_copy = tmp.path().join("sent.bundle");
    std::fs::copy(taken.bundle(), &bundle_copy).unwrap();
    let kept = taken.keep(&state.join("snapshots/sbx_1")).await.unwrap();
    let tip = kept.tip.clone();
    drop(kept);
    let snap = Snapshot::open(&state.join("snapshots/sbx_1"))
        .await
        .unwrap();
    assert_eq!(snap.tip, tip, "the kept snapshot survives its value");
    assert_eq!(snap.base.commit.as_deref(), Some(head.as_str()));
    assert!(snap.scratch().is_dir());
    let missing = Snapshot::open(&state.join("snapshots/nope")).await;
    assert!(missing.is_err());

    // The server side: one change repository per sandbox.
    let server = tmp.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    let repo = ChangeRepo::create(&server.join("changes.git"), &bundle_copy)
        .await
        .unwrap();
    let work = tmp.path().join("warm");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            bundle_copy.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );

    let out1 = tmp.path().join("out1.bundle");
    let run1 = warm_run(&work, &snap.tip, &out1, |w| {
        write(&w.join("one.txt"), "1\n");
    });
    assert_eq!(
        repo.import(&out1, &snap.tip, 1 << 20, &server)
            .await
            .unwrap(),
        run1
    );
    let export1 = server.join("export1.bundle");
    repo.bundle(&snap.tip, &run1, &export1).await.unwrap();
    let first = apply(&snap, &export1, &run1, &fresh("sbx1"), ApplyTo::Branch)
        .await
        .unwrap();
    assert_eq!(first.branch.as_deref(), Some("delegate/sbx1"));
    let first_commit = first.commit.clone().unwrap();

    let out2 = tmp.path().join("out2.bundle");
    let run2 = warm_run(&work, &run1, &out2, |w| write(&w.join("two.txt"), "2\n"));
    assert_eq!(
        repo.import(&out2, &run1, 1 << 20, &server).await.unwrap(),
        run2
    );
    let export2 = server.join("export2.bundle");
    // The bundle reaches back to the snapshot: the caller may not have run 1 at all.
    repo.bundle(&snap.tip, &run2, &export2).await.unwrap();
    let forward = BranchName::Forward {
        name: "sbx1".into(),
        from: first_commit.clone(),
    };
    let second = apply(&snap, &export2, &run2, &forward, ApplyTo::Branch)
        .await
        .unwrap();
    assert_eq!(
        second.branch.as_deref(),
        Some("delegate/sbx1"),
        "moved forward"
    );
    let second_commit = second.commit.clone().unwrap();
    assert_eq!(
        git(&root, &["rev-parse", "delegate/sbx1~1"]),
        first_commit,
        "run 1's commit re-created with the same id"
    );
    assert_eq!(git(&root, &["rev-parse", "delegate/sbx1~3"]), head);
    // Applying the same run again changes nothing.
    let same = BranchName::Forward {
        name: "sbx1".into(),
        from: first_commit.clone(),
    };
    let again = apply(&snap, &export2, &run2, &same, ApplyTo::Branch)
        .await
        .unwrap();
    assert_eq!(again.branch.as_deref(), Some("delegate/sbx1"));
    assert_eq!(again.commit.as_deref(), Some(second_commit.as_str()));

    // Somebody moves the branch: the next run goes to a fresh name and theirs stays.
    git(&root, &["branch", "-f", "delegate/sbx1", &head]);
    let moved = apply(
        &snap,
        &export2,
        &run2,
        &BranchName::Forward {
            name: "sbx1".into(),
            from: second_commit.clone(),
        },
        ApplyTo::Branch,
    )
    .await
    .unwrap();
    assert_eq!(moved.branch.as_deref(), Some("delegate/sbx1-2"));
    assert_eq!(git(&root, &["rev-parse", "delegate/sbx1"]), head);

    // The worktree apply of run 2 brings only run 2's own change.
    let applied = apply(&snap, &export2, &run2, &fresh("w"), ApplyTo::Worktree)
        .await
        .unwrap();
    assert!(applied.applied, "{applied:?}");
    assert!(root.join("two.txt").is_file());
    assert!(!root.join("one.txt").exists(), "run 1's change came along");
    std::fs::remove_file(root.join("two.txt")).unwrap();
    assert_eq!(fingerprint(&root), before);
    assert_fsck(&root);
}

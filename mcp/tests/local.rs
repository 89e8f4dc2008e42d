//! [`LocalDelegator`] end to end at unit scale, with real git: a caller's project (history, a
//! dirty tracked file, an untracked file, ignored files, a binary file, a symlink, odd names, a
//! submodule) goes in as an uploaded snapshot, and the change comes back as a branch or into the
//! working tree. The inner delegator plays the server: it clones the uploaded bundle as a sandbox
//! would, lets "the agent" change files, runs the in-sandbox commit script, imports the result
//! with [`ChangeRepo`] as hostile input, and hands back the change bundle.

// The fixtures are plain synchronous git calls made between the awaited steps under test.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use delegate_mcp::{
    Caller, ClientRoots, DelegateError, Delegator, KeepPolicy, LocalDelegator, Progress,
    tools::{
        ApplyChangesInput, ApplyMode, ApplyTarget, CancelRunInput, CancelRunOutput,
        CreateSandboxInput, DeleteSandboxInput, DeleteSandboxOutput, ListSandboxesInput,
        ListSandboxesOutput, RunInSandboxInput, SandboxInfo, StreamSessionInput,
        StreamSessionOutput,
    },
    types::{RepoBase, RunResult, RunStatus, SandboxStatus, Usage},
};
use delegate_repo::{COMMIT_SCRIPT, ChangeRepo, Limits};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use delegate_testkit::repos::{fingerprint, git, project, write};

// ---------------------------------------------------------------- the server double

/// One sandbox's work dir and change repository on the "server".
struct Sandbox {
    work: PathBuf,
    changes: ChangeRepo,
    /// What the sandbox started from (the snapshot's tip).
    start: String,
    /// The last commit in it (the next run's base).
    head: String,
}

#[derive(Default)]
struct ServerState {
    snapshots: HashMap<String, (PathBuf, RepoBase)>,
    sandboxes: HashMap<String, Sandbox>,
    /// run id -> (sandbox id, commit).
    runs: HashMap<String, (String, String)>,
    /// What each run's sandbox saw at the start: file list of the clone.
    seen: Vec<Vec<String>>,
    runs_without_snapshot: u32,
    next: u32,
}

/// Plays the server for [`LocalDelegator`]: snapshots, sandboxes, the agent and change bundles.
struct FakeServer {
    dir: PathBuf,
    state: Mutex<ServerState>,
    /// A task with the step `pause` says so here, then waits for `resume`: a run in flight.
    paused: tokio::sync::Notify,
    resume: tokio::sync::Notify,
}

impl FakeServer {
    fn new(dir: &Path) -> Arc<FakeServer> {
        std::fs::create_dir_all(dir).unwrap();
        Arc::new(FakeServer {
            dir: dir.to_path_buf(),
            state: Mutex::new(ServerState::default()),
            paused: tokio::sync::Notify::new(),
            resume: tokio::sync::Notify::new(),
        })
    }

    fn id(&self, prefix: &str) -> String {
        let mut state = self.state.lock().unwrap();
        state.next += 1;
        format!("{prefix}_0192f3aa00000000000000000000{:04}", state.next)
    }

    /// A sandbox seeded from an uploaded snapshot (used once).
    async fn sandbox_from(&self, snapshot: &str) -> Result<(String, Sandbox), DelegateError> {
        let (bundle, _) = self
            .state
            .lock()
            .unwrap()
            .snapshots
            .remove(snapshot)
            .ok_or_else(|| DelegateError::NotFound(format!("snapshot {snapshot}")))?;
        let id = self.id("sbx");
        let work = self.dir.join(&id);
        git(
            &self.dir,
            &[
                "clone",
                "-q",
                bundle.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        let changes = ChangeRepo::create(&self.dir.join(format!("{id}.git")), &bundle)
            .await
            .unwrap();
        let start = git(&work, &["rev-parse", "HEAD"]);
        Ok((
            id,
            Sandbox {
                work,
                changes,
                head: start.clone(),
                start,
            },
        ))
    }

    /// "The agent" does what the task says, then the commit script runs and the server imports.
    async fn agent(&self, sandbox: &mut Sandbox, task: &str) -> String {
        let work = &sandbox.work;
        for step in task.split(';').map(str::trim) {
            match step.split_once(' ') {
                Some(("write", rest)) => {
                    let (path, text) = rest.split_once('=').unwrap();
                    write(&work.join(path), text);
                }
                Some(("binary", path)) => write(&work.join(path), [9u8, 0, 255, 254, 0]),
                Some(("delete", path)) => std::fs::remove_file(work.join(path)).unwrap(),
                _ => {}
            }
        }
        let out = self.dir.join(format!("{}.out.bundle", self.id("out")));
        let status = tokio::process::Command::new("sh")
            .current_dir(work)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("DELEGATE_BASE", &sandbox.head)
            .env("DELEGATE_OUT", &out)
            .env("DELEGATE_MESSAGE", "delegate: the agent's run")
            .args(["-c", COMMIT_SCRIPT])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let commit = sandbox
            .changes
            .import(&out, &sandbox.head, 1 << 20, &self.dir)
            .await
            .unwrap();
        sandbox.head = commit.clone();
        commit
    }

    fn result(run_id: &str, sandbox_id: &str, commit: Option<String>) -> RunResult {
        RunResult {
            run_id: run_id.into(),
            sandbox_id: sandbox_id.into(),
            status: RunStatus::Succeeded,
            final_message: "done".into(),
            changed_files: Vec::new(),
            diff: String::new(),
            diff_truncated: false,
            usage: Usage::default(),
            duration_ms: 1,
            event_count: 3,
            queue_position: None,
            error: None,
            watch_url: None,
            base: None,
            commit,
            branch: None,
            applied: None,
            conflicts: Vec::new(),
            apply_message: None,
            patch_url: None,
            egress: None,
            parent_run_id: None,
            attempts: Vec::new(),
            omitted: None,
        }
    }

    fn files_of(work: &Path) -> Vec<String> {
        let listing = git(work, &["ls-files"]);
        listing.lines().map(str::to_string).collect()
    }
}

#[async_trait]
impl Delegator for FakeServer {
    async fn run_in_sandbox(
        &self,
        _caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        _cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError> {
        assert!(input.repo.is_none(), "a local path reached the server");
        let _ = progress.try_send(Progress {
            seq: 1,
            message: "agent working".into(),
        });
        let run_id = self.id("run");
        let (sandbox_id, mut sandbox) = match (&input.snapshot, &input.sandbox_id) {
            (Some(snapshot), None) => self.sandbox_from(snapshot).await?,
            (None, Some(id)) => {
                let sandbox = self
                    .state
                    .lock()
                    .unwrap()
                    .sandboxes
                    .remove(id)
                    .ok_or_else(|| DelegateError::NotFound(id.clone()))?;
                (id.clone(), sandbox)
            }
            (None, None) => {
                self.state.lock().unwrap().runs_without_snapshot += 1;
                return Ok(FakeServer::result(&run_id, "sbx_empty", None));
            }
            // As the server answers for a warm sandbox that is not a local agent's.
            (Some(_), Some(_)) => {
                return Err(DelegateError::Invalid(
                    "snapshot: only for a fresh sandbox or a local agent".into(),
                ));
            }
        };
        self.state
            .lock()
            .unwrap()
            .seen
            .push(FakeServer::files_of(&sandbox.work));
        if input.task.split(';').any(|step| step.trim() == "pause") {
            self.paused.notify_one();
            self.resume.notified().await;
        }
        let commit = self.agent(&mut sandbox, &input.task).await;
        let mut state = self.state.lock().unwrap();
        state
            .runs
            .insert(run_id.clone(), (sandbox_id.clone(), commit.clone()));
        state.sandboxes.insert(sandbox_id.clone(), sandbox);
        Ok(FakeServer::result(&run_id, &sandbox_id, Some(commit)))
    }

    async fn create_sandbox(
        &self,
        _caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError> {
        let snapshot = input
            .snapshot
            .expect("the test creates sandboxes with a repo");
        let (id, sandbox) = self.sandbox_from(&snapshot).await?;
        self.state
            .lock()
            .unwrap()
            .sandboxes
            .insert(id.clone(), sandbox);
        Ok(SandboxInfo {
            sandbox_id: id.clone(),
            name: id,
            status: SandboxStatus::Running,
            backend: "process".into(),
            kind: "warm".into(),
            status_reason: None,
            watch_url: None,
            opencode_url: None,
            base: None,
            created_at: 0,
        })
    }

    async fn stream_session(
        &self,
        _caller: &Caller,
        _input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError> {
        Err(DelegateError::Internal("not played by this double".into()))
    }

    async fn list_sandboxes(
        &self,
        _caller: &Caller,
        _input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError> {
        Err(DelegateError::Internal("not played by this double".into()))
    }

    async fn delete_sandbox(
        &self,
        _caller: &Caller,
        _input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError> {
        Err(DelegateError::Internal("not played by this double".into()))
    }

    async fn cancel_run(
        &self,
        _caller: &Caller,
        _input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError> {
        Err(DelegateError::Internal("not played by this double".into()))
    }

    async fn upload_snapshot(
        &self,
        _caller: &Caller,
        _workspace: Option<&str>,
        base: &RepoBase,
        bundle: &Path,
    ) -> Result<String, DelegateError> {
        let id = self.id("snp");
        let copy = self.dir.join(format!("{id}.bundle"));
        tokio::fs::copy(bundle, &copy).await.unwrap();
        self.state
            .lock()
            .unwrap()
            .snapshots
            .insert(id.clone(), (copy, base.clone()));
        Ok(id)
    }

    async fn download_change(
        &self,
        _caller: &Caller,
        run_id: &str,
        out: &Path,
    ) -> Result<String, DelegateError> {
        let (changes, start, commit) = {
            let state = self.state.lock().unwrap();
            let (sandbox_id, commit) = state
                .runs
                .get(run_id)
                .cloned()
                .ok_or_else(|| DelegateError::NotFound(run_id.into()))?;
            let sandbox = &state.sandboxes[&sandbox_id];
            (sandbox.changes.clone(), sandbox.start.clone(), commit)
        };
        changes.bundle(&start, &commit, out).await.unwrap();
        Ok(commit)
    }
}

// ---------------------------------------------------------------- the tests

fn caller() -> Caller {
    Caller {
        user_id: "u".into(),
        token_id: None,
        client: None,
        workspace_id: None,
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    server: Arc<FakeServer>,
    local: LocalDelegator,
    base: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let root = project(&base);
    let server = FakeServer::new(&base.join("server"));
    let local = LocalDelegator::new(server.clone(), base.join("state/local"), Limits::default())
        .with_project_root(&root);
    Setup {
        _tmp: tmp,
        root,
        server,
        local,
        base,
    }
}

async fn run(
    local: &LocalDelegator,
    input: RunInSandboxInput,
) -> (Result<RunResult, DelegateError>, Vec<String>) {
    let (tx, mut rx) = mpsc::channel(64);
    let result = local
        .run_in_sandbox(&caller(), input, tx, CancellationToken::new())
        .await;
    let mut lines = Vec::new();
    while let Ok(p) = rx.try_recv() {
        lines.push(p.message);
    }
    (result, lines)
}

fn task(text: &str) -> RunInSandboxInput {
    RunInSandboxInput {
        task: text.into(),
        ..RunInSandboxInput::default()
    }
}

#[tokio::test]
async fn the_project_goes_in_and_the_change_comes_back_as_a_branch() {
    let s = setup();
    let head = git(&s.root, &["rev-parse", "HEAD"]);
    let before = fingerprint(&s.root);
    let (result, progress) = run(
        &s.local,
        task("binary data/blob.bin; write src/new.rs=pub fn added() {}\n; delete name with spaces ü.txt"),
    )
    .await;
    let result = result.unwrap();

    // What the sandbox saw: the work tree as it is, ignored files left out.
    let seen = s.server.state.lock().unwrap().seen[0].clone();
    for path in [
        "README.md",
        "notes/untracked.txt",
        "name with spaces ü.txt",
        "data/blob.bin",
        "link-to-readme",
        "vendor/sub",
    ] {
        assert!(seen.iter().any(|p| p == path), "{path} missing: {seen:?}");
    }
    assert!(
        !seen
            .iter()
            .any(|p| p.contains("target") || p.ends_with(".log"))
    );
    assert!(
        progress[0].starts_with(&format!("snapshot of {}:", s.root.display()))
            && progress[0].contains("files")
            && progress[0].ends_with("with uncommitted changes"),
        "{progress:?}"
    );

    // The branch: agent's commit -> uncommitted changes -> the caller's HEAD; nothing else moved.
    let branch = result.branch.clone().expect("a branch");
    assert_eq!(branch, "delegate/00000002", "the short run id");
    let base = result.base.clone().expect("base");
    assert_eq!(base.commit.as_deref(), Some(head.as_str()));
    assert!(base.dirty);
    assert_eq!(
        result.applied, None,
        "branch mode says nothing of the worktree"
    );
    assert_eq!(
        result.commit.as_deref(),
        Some(git(&s.root, &["rev-parse", &branch]).as_str()),
        "commit is the caller's commit"
    );
    assert_eq!(git(&s.root, &["rev-parse", &format!("{branch}~2")]), head);
    assert_eq!(
        git(&s.root, &["show", &format!("{branch}~1:README.md")]),
        "# project\n\ndirty line"
    );
    assert_eq!(
        git(
            &s.root,
            &["diff", "--name-only", &format!("{branch}~1"), &branch]
        ),
        "data/blob.bin\nname with spaces ü.txt\nsrc/new.rs"
    );
    assert_eq!(
        git(
            &s.root,
            &["cat-file", "-s", &format!("{branch}:data/blob.bin")]
        ),
        "5",
        "the agent's binary file"
    );
    assert_eq!(
        fingerprint(&s.root),
        before,
        "branch mode touched the caller's tree"
    );
    assert!(
        result.apply_message.as_deref().unwrap().contains(&branch),
        "{:?}",
        result.apply_message
    );

    // Reviewed: into the working tree now. A second apply gets the next free branch name.
    let applied = s
        .local
        .apply_changes(
            &caller(),
            ApplyChangesInput {
                run_id: result.run_id.clone(),
                to: Some(ApplyTarget::Worktree),
            },
        )
        .await
        .unwrap();
    assert_eq!(applied.branch.as_deref(), Some("delegate/00000002-2"));
    assert!(applied.applied, "{applied:?}");
    assert_eq!(
        applied.commit, result.commit,
        "the same commit, re-created deterministically"
    );
    assert_eq!(
        std::fs::read(s.root.join("data/blob.bin")).unwrap(),
        [9u8, 0, 255, 254, 0]
    );
    assert!(s.root.join("src/new.rs").is_file());
    assert!(!s.root.join("name with spaces ü.txt").exists());
    assert_eq!(git(&s.root, &["rev-parse", "HEAD"]), head);
}

#[tokio::test]
async fn worktree_applies_cleanly_or_changes_nothing() {
    let s = setup();
    let (result, _) = run(
        &s.local,
        RunInSandboxInput {
            apply: Some(ApplyMode::Worktree),
            ..task("write src/main.rs=fn main() { println!(\"hi\"); }\n")
        },
    )
    .await;
    let result = result.unwrap();
    assert_eq!(result.applied, Some(true), "{:?}", result.apply_message);
    assert!(
        std::fs::read_to_string(s.root.join("src/main.rs"))
            .unwrap()
            .contains("hi")
    );

    // `none` leaves the repository alone; the caller then edits the same file; the worktree
    // apply is refused and nothing but a new branch appears.
    let before_none = fingerprint(&s.root);
    let branches = git(&s.root, &["branch", "--list"]);
    let (result, _) = run(
        &s.local,
        RunInSandboxInput {
            apply: Some(ApplyMode::None),
            ..task("write README.md=# rewritten by the agent\n")
        },
    )
    .await;
    let result = result.unwrap();
    assert_eq!(result.branch, None);
    assert!(result.commit.is_some(), "the server's commit is reported");
    assert_eq!(fingerprint(&s.root), before_none);
    assert_eq!(
        git(&s.root, &["branch", "--list"]),
        branches,
        "apply: none wrote a branch"
    );

    write(&s.root.join("README.md"), "# the caller's own edit\n");
    let before = fingerprint(&s.root);
    let applied = s
        .local
        .apply_changes(
            &caller(),
            ApplyChangesInput {
                run_id: result.run_id.clone(),
                to: Some(ApplyTarget::Worktree),
            },
        )
        .await
        .unwrap();
    assert!(!applied.applied);
    assert_eq!(applied.conflicts, ["README.md"]);
    assert!(applied.message.contains("README.md"), "{}", applied.message);
    assert!(applied.branch.is_some());
    assert_eq!(
        fingerprint(&s.root),
        before,
        "a refused apply changed the tree"
    );
}

#[tokio::test]
async fn a_warm_sandbox_moves_its_branch_forward() {
    let s = setup();
    let head = git(&s.root, &["rev-parse", "HEAD"]);
    let info = s
        .local
        .create_sandbox(&caller(), CreateSandboxInput::default())
        .await
        .unwrap();
    assert!(info.base.as_ref().is_some_and(|b| b.dirty));
    let in_sandbox = |text: &str| RunInSandboxInput {
        sandbox_id: Some(info.sandbox_id.clone()),
        ..task(text)
    };
    let (first, _) = run(&s.local, in_sandbox("write one.txt=1\n")).await;
    let first = first.unwrap();
    let branch = first.branch.clone().unwrap();
    assert_eq!(branch, "delegate/00000002", "the short sandbox id");
    let (second, _) = run(&s.local, in_sandbox("write two.txt=2\n")).await;
    let second = second.unwrap();
    assert_eq!(
        second.branch.as_deref(),
        Some(branch.as_str()),
        "moved forward"
    );
    assert_eq!(
        git(&s.root, &["rev-parse", &format!("{branch}~1")]),
        first.commit.clone().unwrap()
    );
    assert_eq!(git(&s.root, &["rev-parse", &format!("{branch}~3")]), head);
    assert_eq!(second.base, first.base);

    // A repo with a warm sandbox is snapshotted and sent (a local agent's sandbox takes it); the
    // server refuses it for any other warm sandbox, and nothing is applied.
    let (refused, _) = run(
        &s.local,
        RunInSandboxInput {
            repo: Some(".".into()),
            ..in_sandbox("x")
        },
    )
    .await;
    assert!(
        matches!(refused, Err(DelegateError::Invalid(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn repositories_that_cannot_go_in_get_their_own_errors() {
    let s = setup();
    let before = fingerprint(&s.root);
    let kind = |r: &Result<RunResult, DelegateError>| match r {
        Err(DelegateError::Repo { kind, .. }) => kind.clone(),
        other => panic!("a repository error expected, got {other:?}"),
    };

    // A work tree outside the project (and outside the client's roots).
    let outside = s.base.join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    git(&outside, &["init", "-q"]);
    let (r, _) = run(
        &s.local,
        RunInSandboxInput {
            repo: Some(outside.display().to_string()),
            ..task("t")
        },
    )
    .await;
    assert_eq!(kind(&r), "outside_project");
    // ... unless the client named it as a root.
    let roots = ClientRoots {
        roots: vec![s.root.clone(), outside.clone()],
    };
    let (r, _) = roots
        .scope(run(
            &s.local,
            RunInSandboxInput {
                repo: Some(outside.display().to_string()),
                ..task("write a=1\n")
            },
        ))
        .await;
    assert!(r.unwrap().branch.is_some());

    // Over the limits: the message names sizes and the largest paths; nothing is uploaded.
    let small = LocalDelegator::new(
        s.server.clone(),
        s.base.join("state2"),
        Limits {
            max_bytes: 10,
            max_files: 1000,
        },
    )
    .with_project_root(&s.root);
    let uploads = s.server.state.lock().unwrap().next;
    let (r, _) = run(&small, task("t")).await;
    assert_eq!(kind(&r), "repo_too_large");
    let Err(DelegateError::Repo { message, .. }) = &r else {
        unreachable!()
    };
    assert!(message.contains("README.md"), "{message}");
    assert_eq!(
        s.server.state.lock().unwrap().next,
        uploads,
        "something was uploaded"
    );

    // A merge in progress.
    std::fs::write(
        s.root.join(".git/MERGE_HEAD"),
        git(&s.root, &["rev-parse", "HEAD"]),
    )
    .unwrap();
    let (r, _) = run(&s.local, task("t")).await;
    assert_eq!(kind(&r), "repo_busy");
    std::fs::remove_file(s.root.join(".git/MERGE_HEAD")).unwrap();

    // A project root that is no work tree: the default is an empty sandbox, `.` is an error.
    let plain = s.base.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let empty = LocalDelegator::new(s.server.clone(), s.base.join("state3"), Limits::default())
        .with_project_root(&plain);
    let (r, progress) = run(&empty, task("t")).await;
    assert!(r.unwrap().branch.is_none());
    assert!(progress.iter().all(|p| !p.starts_with("snapshot")));
    assert_eq!(s.server.state.lock().unwrap().runs_without_snapshot, 1);
    let (r, _) = run(
        &empty,
        RunInSandboxInput {
            repo: Some(".".into()),
            ..task("t")
        },
    )
    .await;
    assert_eq!(kind(&r), "not_a_repo");
    let (r, _) = run(
        &s.local,
        RunInSandboxInput {
            repo: Some("none".into()),
            ..task("t")
        },
    )
    .await;
    assert!(r.unwrap().base.is_none());
    assert_eq!(s.server.state.lock().unwrap().runs_without_snapshot, 2);

    // `ref` belongs to URLs; unknown runs cannot be applied.
    let (r, _) = run(
        &s.local,
        RunInSandboxInput {
            git_ref: Some("main".into()),
            ..task("t")
        },
    )
    .await;
    assert!(matches!(r, Err(DelegateError::Invalid(_))), "{r:?}");
    let err = s
        .local
        .apply_changes(
            &caller(),
            ApplyChangesInput {
                run_id: "run_elsewhere".into(),
                to: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DelegateError::NotFound(m) if m.contains("did not start from a repository on this machine")),
        "{err:?}"
    );
    assert_eq!(fingerprint(&s.root), before);
}

// ---------------------------------------------------------------- pruning the kept snapshots

/// Makes a kept snapshot look last used `days` ago (its description's mtime).
fn age_snapshot(state: &Path, key: &str, days: u64) {
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 24 * 3600);
    std::fs::File::options()
        .append(true)
        .open(state.join("snapshots").join(key).join("snapshot.json"))
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// Bytes under `path`.
fn du(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| du(&e.unwrap().path()))
        .sum()
}

/// A delegator on `s`'s state dir with `policy`.
fn keeping(s: &Setup, policy: KeepPolicy) -> LocalDelegator {
    LocalDelegator::new(
        s.server.clone(),
        s.base.join("state/local"),
        Limits::default(),
    )
    .with_project_root(&s.root)
    .with_keep_policy(policy)
}

/// Never prunes (its background prunes after each run must not race the test's own).
const KEEP_ALL: KeepPolicy = KeepPolicy {
    retain_days: 0,
    max_bytes: u64::MAX,
};

async fn apply_error(local: &LocalDelegator, run_id: &str) -> (String, String) {
    match local
        .apply_changes(
            &caller(),
            ApplyChangesInput {
                run_id: run_id.into(),
                to: None,
            },
        )
        .await
    {
        Err(DelegateError::Repo { kind, message }) => (kind, message),
        other => panic!("a repository error expected, got {other:?}"),
    }
}

#[tokio::test]
async fn kept_snapshots_go_after_the_retention_then_oldest_first_over_the_cap() {
    let s = setup();
    let state = s.base.join("state/local");
    let runner = keeping(&s, KEEP_ALL);
    let mut runs = Vec::new();
    for n in 0..4 {
        let (result, _) = run(
            &runner,
            RunInSandboxInput {
                apply: Some(ApplyMode::None),
                ..task(&format!("write out{n}.txt={n}\n"))
            },
        )
        .await;
        runs.push(result.unwrap().run_id);
    }
    let key = |run: &str| format!("run-{run}");
    for run in &runs {
        assert!(state.join("snapshots").join(key(run)).is_dir());
    }
    // Used 40, 10 and 0 days ago; a dead process's half-taken snapshot, and a live one.
    age_snapshot(&state, &key(&runs[0]), 40);
    age_snapshot(&state, &key(&runs[1]), 10);
    let stale = state.join("tmp/snapshot-dead");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("snapshot.bundle"), vec![0u8; 4096]).unwrap();
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400))
        .unwrap();
    let young = state.join("tmp/snapshot-young");
    std::fs::create_dir_all(&young).unwrap();

    let pruner = keeping(
        &s,
        KeepPolicy {
            retain_days: 30,
            max_bytes: u64::MAX,
        },
    );
    let report = pruner.prune().await.unwrap();
    assert_eq!(report.pruned, [key(&runs[0])], "only the one past 30 days");
    assert!(report.freed_bytes >= 4096, "{report:?}");
    assert!(!state.join("snapshots").join(key(&runs[0])).exists());
    assert!(!stale.exists(), "a stale temporary snapshot stayed");
    assert!(young.exists(), "a young temporary snapshot went");
    let (kind, message) = apply_error(&pruner, &runs[0]).await;
    assert_eq!(kind, "snapshot_pruned");
    assert!(
        message.contains("after 30 days") && message.contains("DELEGATE_RETAIN_RUNS_DAYS"),
        "{message}"
    );

    // Over the cap by a byte: the least recently used goes, a newer one stays and applies.
    let total = du(&state.join("snapshots")) + du(&state.join("tmp"));
    let capped = keeping(
        &s,
        KeepPolicy {
            retain_days: 30,
            max_bytes: total - 1,
        },
    );
    let report = capped.prune().await.unwrap();
    assert_eq!(report.pruned, [key(&runs[1])]);
    assert!(report.kept_bytes < total, "{report:?}");
    let (kind, message) = apply_error(&capped, &runs[1]).await;
    assert_eq!(kind, "snapshot_pruned");
    assert!(message.contains("DELEGATE_LOCAL_KEEP_BYTES"), "{message}");
    let applied = capped
        .apply_changes(
            &caller(),
            ApplyChangesInput {
                run_id: runs[2].clone(),
                to: None,
            },
        )
        .await
        .unwrap();
    assert!(applied.branch.is_some(), "{applied:?}");
    assert_eq!(
        capped.prune().await.unwrap().pruned,
        Vec::<String>::new(),
        "under the cap now"
    );

    // Past the retention but not pruned yet: an apply prunes it rather than use it.
    age_snapshot(&state, &key(&runs[3]), 31);
    let (kind, message) = apply_error(&capped, &runs[3]).await;
    assert_eq!(kind, "snapshot_pruned");
    assert!(message.contains("after 30 days"), "{message}");
    assert!(!state.join("snapshots").join(key(&runs[3])).exists());
}

#[tokio::test]
async fn a_snapshot_in_use_here_is_never_pruned() {
    let s = Arc::new(setup());
    let state = s.base.join("state/local");
    let old = KeepPolicy {
        retain_days: 1,
        max_bytes: u64::MAX,
    };
    // A warm sandbox created by another process (not pinned here) ...
    let info = keeping(&s, KEEP_ALL)
        .create_sandbox(&caller(), CreateSandboxInput::default())
        .await
        .unwrap();
    let key = format!("sandbox-{}", info.sandbox_id);
    let local = Arc::new(keeping(&s, old));
    // ... with a run in flight here.
    let in_flight = tokio::spawn({
        let local = local.clone();
        let sandbox_id = info.sandbox_id.clone();
        async move {
            run(
                &local,
                RunInSandboxInput {
                    sandbox_id: Some(sandbox_id),
                    apply: Some(ApplyMode::None),
                    ..task("write late.txt=1\n; pause")
                },
            )
            .await
            .0
        }
    });
    s.server.paused.notified().await;
    age_snapshot(&state, &key, 5);
    let report = local.prune().await.unwrap();
    assert!(report.pruned.is_empty(), "{report:?}");
    assert!(state.join("snapshots").join(&key).is_dir());
    s.server.resume.notify_one();
    let result = in_flight.await.unwrap().unwrap();

    // The run has ended: unused for 5 days it goes, and its change cannot be applied here.
    age_snapshot(&state, &key, 5);
    local.prune().await.unwrap();
    assert!(!state.join("snapshots").join(&key).exists());
    let (kind, message) = apply_error(&local, &result.run_id).await;
    assert_eq!(kind, "snapshot_pruned");
    assert!(message.contains("after 1 day unused"), "{message}");

    // A warm sandbox created here stays for as long as this process does.
    let mine = local
        .create_sandbox(&caller(), CreateSandboxInput::default())
        .await
        .unwrap();
    let key = format!("sandbox-{}", mine.sandbox_id);
    age_snapshot(&state, &key, 5);
    assert!(local.prune().await.unwrap().pruned.is_empty());
    assert!(state.join("snapshots").join(&key).is_dir());
}

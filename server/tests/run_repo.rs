//! `delegate run` and `delegate apply` inside a caller's repository, end to end: the real binary,
//! real git, the real opencode under bubblewrap, and the scripted fake upstream; embedded, and
//! bridged (`--server`) to `delegate serve` on the process and docker backends and on a local
//! agent. The repository goes in as it is now (uncommitted and untracked files, not ignored ones)
//! and the agent's change comes back as a branch; the caller's working tree, index and HEAD stay
//! byte-identical unless the change is applied to the working tree on request.

mod common;
#[path = "support/local_agent.rs"]
mod local_agent;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{CliRun, Harness};
use delegate_mcp::types::{ChangeKind, RunStatus, SandboxStatus};
use delegate_testkit::anthropic::Script;
use delegate_testkit::repos::{fingerprint, git, project, write};

/// What the scripted agent does in the sandbox: looks around (so the test can see what arrived),
/// then modifies a text file, rewrites a binary one, deletes one with an odd name and adds one.
const AGENT: &str = "cat debug.log target/build.o 2>&1; cat notes/untracked.txt; \
    git log --format=%s | cat; \
    printf 'fn main() { println!(\"hi\"); }\\n' > src/main.rs; \
    printf '\\001\\002\\003\\000\\377' > data/blob.bin; \
    rm 'name with spaces ü.txt'; \
    printf 'new\\n' > 'added ö.txt'";

/// The agent's binary file, as `printf` above writes it.
const AGENT_BLOB: &[u8] = &[1, 2, 3, 0, 255];

async fn run_in(h: &Harness, dir: &Path, args: &[&str]) -> CliRun {
    run_in_with(h, dir, &[], args).await
}

/// [`run_in`] with some of the environment changed.
async fn run_in_with(h: &Harness, dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> CliRun {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        h.delegate()
            .current_dir(dir)
            .envs(env.iter().copied())
            .arg("run")
            .arg("--json")
            .args(args)
            .output(),
    )
    .await
    .expect("delegate run finished within 5 minutes")
    .expect("delegate ran");
    CliRun {
        result: serde_json::from_slice(&out.stdout).ok(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// `delegate apply ARGS` in `dir`: exit code and stderr.
async fn apply_in(h: &Harness, dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = h
        .delegate()
        .current_dir(dir)
        .arg("apply")
        .args(args)
        .output()
        .await
        .expect("delegate ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The git blob id `bytes` would have.
fn blob_id(dir: &Path, bytes: &[u8]) -> String {
    let file = dir.join("expected-blob");
    write(&file, bytes);
    git(dir, &["hash-object", file.to_str().unwrap()])
}

fn caller_project(h: &Harness) -> PathBuf {
    let base = h.dir.path().join("caller");
    std::fs::create_dir_all(&base).unwrap();
    project(&base)
}

#[tokio::test]
async fn a_run_inside_a_repository_comes_back_as_a_branch_and_the_repository_is_untouched() {
    let Some(h) = Harness::new(Script::bash(AGENT, "{tool_result}")).await else {
        return;
    };
    let root = caller_project(&h);
    let head = git(&root, &["rev-parse", "HEAD"]);
    let before = fingerprint(&root);

    let run = run_in(&h, &root, &["make the change"]).await;
    assert_came_back_as_a_branch(&h, &root, &head, &before, &run);
}

/// What every run of [`AGENT`] in the caller's project must give, wherever it ran: the caller's
/// repository byte-identical (`before`), the snapshot arrived (uncommitted and untracked files, not
/// ignored ones), and the change came back as a branch whose parents are the caller's HEAD and
/// the uncommitted changes, binary file, symlink and submodule included.
fn assert_came_back_as_a_branch(h: &Harness, root: &Path, head: &str, before: &str, run: &CliRun) {
    let r = run.result();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", run.stderr);
    assert_eq!(fingerprint(root), before, "the caller's repository changed");

    // What arrived: the uncommitted and untracked files, the snapshot's two commits; not the
    // ignored files.
    let seen = &r.final_message;
    assert!(
        seen.contains("not yet added"),
        "untracked file missing: {seen}"
    );
    assert!(!seen.contains("ignored"), "an ignored file arrived: {seen}");
    assert!(
        seen.contains(&head[..12]),
        "the base names its commit: {seen}"
    );

    let base = r.base.as_ref().expect("the result names its base");
    assert_eq!(base.commit.as_deref(), Some(head));
    assert!(base.dirty);
    let branch = r.branch.clone().expect("a branch was written");
    assert!(branch.starts_with("delegate/"), "{branch}");
    assert!(run.stderr.contains(&branch), "{}", run.stderr);
    assert_eq!(
        r.commit.as_deref(),
        Some(git(root, &["rev-parse", &branch]).as_str())
    );

    // Its parents: the uncommitted changes on top of the caller's HEAD.
    assert_eq!(git(root, &["rev-parse", &format!("{branch}~2")]), head);
    assert_eq!(
        git(root, &["show", &format!("{branch}~1:notes/untracked.txt")]),
        "not yet added"
    );
    // Its tip: exactly the agent's work, binary included; the symlink and submodule unchanged.
    let changed = git(
        root,
        &[
            "-c",
            "core.quotepath=false",
            "diff",
            "--name-status",
            "--no-renames",
            &format!("{branch}~1"),
            &branch,
        ],
    );
    let mut changed: Vec<&str> = changed.lines().collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            "A\tadded ö.txt",
            "D\tname with spaces ü.txt",
            "M\tdata/blob.bin",
            "M\tsrc/main.rs",
        ]
    );
    assert_eq!(
        git(root, &["rev-parse", &format!("{branch}:data/blob.bin")]),
        blob_id(h.dir.path(), AGENT_BLOB)
    );
    let tree = git(root, &["ls-tree", "-r", &branch]);
    assert!(
        tree.contains("120000 blob") && tree.contains("link-to-readme"),
        "{tree}"
    );
    assert!(
        tree.contains("160000 commit") && tree.contains("vendor/sub"),
        "{tree}"
    );

    let blob = r
        .changed_files
        .iter()
        .find(|f| f.path == "data/blob.bin")
        .expect("the binary file is listed");
    assert!(
        blob.binary && blob.change == ChangeKind::Modified,
        "{blob:?}"
    );
    let main = r
        .changed_files
        .iter()
        .find(|f| f.path == "src/main.rs")
        .expect("src/main.rs is listed");
    assert_eq!((main.additions, main.deletions), (1, 1));
}

/// Where a bridged run (`delegate run --server`) executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// `delegate serve` with the process backend (bubblewrap).
    Process,
    /// `delegate serve` with the docker backend (needs `DELEGATE_TEST_DOCKER_HOST` and the
    /// sandbox image).
    Docker,
    /// A local agent (`delegate agent connect` in front of its own `opencode serve`) joined to
    /// `delegate serve`; the run goes to its sandbox with `--repo`.
    LocalAgent,
}

/// `delegate run --server URL` inside the caller's repository, against `delegate serve` on
/// `backend`: the repository is snapshotted on the caller's side, streamed to the server, seeded
/// into the sandbox, and the change comes back as a branch exactly as in embedded mode.
async fn bridged_run(backend: Backend) {
    let Some(h) = Harness::new(Script::bash(AGENT, "{tool_result}")).await else {
        return;
    };
    let mut serve = h.serve();
    if backend == Backend::Docker {
        let Some(host) = delegate_testkit::real::docker_host() else {
            return;
        };
        let image = delegate_testkit::real::sandbox_image();
        let docker = bollard::Docker::connect_with_host(&host)
            .unwrap()
            .negotiate_version()
            .await
            .expect("negotiate the Docker API version");
        if docker.inspect_image(&image).await.is_err() {
            let why = format!("{image} is not built (sandbox-image/build --offline --lean)");
            return delegate_testkit::real::unavailable::<()>("the sandbox image", &why)
                .unwrap_or_default();
        }
        serve = serve
            .env("DELEGATE_BACKEND", "docker")
            .env("DOCKER_HOST", host)
            .env("DELEGATE_SANDBOX_IMAGE", image)
            .env("DELEGATE_SANDBOX_MEMORY_MB", "1024");
    }
    let s = serve.start().await;
    let owner = s.account("owner").await;
    let root = caller_project(&h);
    let head = git(&root, &["rev-parse", "HEAD"]);
    let before = fingerprint(&root);

    let mut args = vec![
        "--server".to_string(),
        s.base.clone(),
        "--token".to_string(),
        owner.token.clone(),
    ];
    let mut agent = None;
    let machine = h.dir.path().join("machine");
    if backend == Backend::LocalAgent {
        let (opencode, url) = local_agent::local_opencode(&h, &machine).await;
        let (joined, id) =
            local_agent::join(&s, &owner, &s.base, &machine.join("config"), &url).await;
        local_agent::wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(30)).await;
        args.extend(["--sandbox".into(), id, "--repo".into(), ".".into()]);
        agent = Some((opencode, joined));
    }
    args.push("make the change".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The caller's side keeps its state apart from the server's.
    let client_data = h.dir.path().join("client");
    let run = run_in_with(&h, &root, &[("DELEGATE_DATA_DIR", &client_data)], &args).await;
    assert_came_back_as_a_branch(&h, &root, &head, &before, &run);

    if let Some((_opencode, agent)) = agent {
        // The run had a work dir of its own on the agent's machine, gone once the change was
        // back; the developer's own project there was never touched.
        let runs = machine.join("config/.local/share/delegate/agent/runs");
        let left: Vec<_> = std::fs::read_dir(&runs)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left on the agent's machine: {left:?}");
        let project = machine.join("project");
        assert!(!project.join("src").exists() && !project.join("added ö.txt").exists());
        assert!(
            !h.data_dir()
                .join("local-runs")
                .join(&run.result().run_id)
                .exists(),
            "the server's scratch repository of the run is left"
        );
        // The patch and bundle are kept on the server as for any other backend.
        let patch = s
            .http
            .get(format!("{}/api/runs/{}/patch", s.base, run.result().run_id))
            .bearer_auth(&owner.token)
            .send()
            .await
            .unwrap();
        assert_eq!(patch.status(), 200);
        let patch = patch.text().await.unwrap();
        assert!(patch.contains("GIT binary patch"), "{patch}");
        assert!(!agent.stderr().contains(&owner.token));
    }
}

#[tokio::test]
async fn bridged_mode_on_the_process_backend_comes_back_as_a_branch() {
    bridged_run(Backend::Process).await;
}

#[tokio::test]
async fn bridged_mode_on_the_docker_backend_comes_back_as_a_branch() {
    bridged_run(Backend::Docker).await;
}

#[tokio::test]
async fn bridged_mode_on_a_local_agent_comes_back_as_a_branch() {
    bridged_run(Backend::LocalAgent).await;
}

#[tokio::test]
async fn delegate_apply_lands_a_kept_change_only_when_it_applies_cleanly() {
    let Some(h) = Harness::new(Script::bash(AGENT, "done")).await else {
        return;
    };
    let root = caller_project(&h);
    let run = run_in(&h, &root, &["--apply", "none", "make the change"]).await;
    let r = run.result();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", run.stderr);
    assert!(r.branch.is_none(), "--apply none wrote a branch");
    assert!(r.commit.is_some(), "the change is kept on the server");
    let branches = git(&root, &["branch", "--list", "delegate/*"]);
    assert!(branches.is_empty(), "{branches}");

    // The caller edits a file the agent changed too: the working tree apply must refuse and
    // change nothing.
    write(&root.join("src/main.rs"), "fn main() { todo!() }\n");
    let before = fingerprint(&root);
    let (code, stderr) = apply_in(&h, &root, &["--worktree", &r.run_id]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("src/main.rs"),
        "the conflict is named: {stderr}"
    );
    assert_eq!(
        fingerprint(&root),
        before,
        "a refused apply changed the repository"
    );

    // Once the edit is gone it applies; the branch gets the next free name.
    write(&root.join("src/main.rs"), "fn main() {}\n");
    let (code, stderr) = apply_in(&h, &root, &["--worktree", &r.run_id]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.join("src/main.rs")).unwrap(),
        "fn main() { println!(\"hi\"); }\n"
    );
    assert_eq!(
        std::fs::read(root.join("data/blob.bin")).unwrap(),
        AGENT_BLOB
    );
    assert!(!root.join("name with spaces ü.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("added ö.txt")).unwrap(),
        "new\n"
    );
    // The caller's own uncommitted work is still there.
    assert!(
        std::fs::read_to_string(root.join("README.md"))
            .unwrap()
            .contains("dirty line")
    );
    let branches = git(&root, &["branch", "--list", "delegate/*"]);
    assert_eq!(branches.lines().count(), 2, "{branches}");

    // Unused for longer than the retention, the kept snapshot is pruned: the apply says so.
    let kept = h
        .data_dir()
        .join("local/snapshots")
        .join(format!("run-{}", r.run_id))
        .join("snapshot.json");
    std::fs::File::options()
        .append(true)
        .open(&kept)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3 * 86400))
        .unwrap();
    let before = fingerprint(&root);
    let out = h
        .delegate()
        .current_dir(&root)
        .env("DELEGATE_RETAIN_RUNS_DAYS", "2")
        .args(["apply", &r.run_id])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("snapshot_pruned") && stderr.contains("after 2 days unused"),
        "{stderr}"
    );
    assert!(!kept.exists(), "the expired snapshot is still kept");
    assert_eq!(fingerprint(&root), before);
}

#[tokio::test]
async fn no_repo_gives_an_empty_sandbox_and_a_bad_repo_path_is_refused() {
    let Some(h) = Harness::new(Script::bash(
        "ls -A | grep -v '^.git$' | wc -l",
        "{tool_result}",
    ))
    .await
    else {
        return;
    };
    let root = caller_project(&h);
    let before = fingerprint(&root);
    let run = run_in(&h, &root, &["--no-repo", "count the files"]).await;
    let r = run.result();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", run.stderr);
    assert_eq!(r.final_message.trim(), "0", "the sandbox was not empty");
    assert!(r.base.is_none() && r.branch.is_none());
    assert_eq!(fingerprint(&root), before);

    // A path that is no git work tree: a clear error, no run.
    let plain = h.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let run = run_in(
        &h,
        &root,
        &["--repo", plain.to_str().unwrap(), "count the files"],
    )
    .await;
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("not_a_repo"), "{}", run.stderr);
    assert!(run.result.is_none(), "{}", run.stdout);
}

/// A warm sandbox whose agent leaves a loop behind that keeps swapping a file for a symlink to a
/// host file outside the sandbox while delegate collects each run's change. delegate never reads
/// the sandbox's files on the host (the change is committed inside and read back as a bundle), so
/// the host file's content appears nowhere: not in a result, a patch, an event or the database.
#[tokio::test]
async fn a_symlink_swapped_in_during_collection_never_pulls_a_host_file_in() {
    let Some(h) = Harness::new(Script::text("nothing")).await else {
        return;
    };
    const SECRET: &str = "HOST-SECRET-CONTENT-5d1e0a";
    let secret = h.dir.path().join("host-secret.txt");
    write(&secret, SECRET);
    let swap = format!(
        "nohup sh -c 'while :; do ln -sfn {0} leak; rm -f leak; printf plain > leak; rm -f leak; \
         ln -sfn {0} leak2; done' >/dev/null 2>&1 & echo started",
        secret.display()
    );
    h.fake.set_script(Script::bash(&swap, "the loop runs"));
    let orch = h.orchestrator().await;
    let sandbox = orch
        .create_sandbox(delegate_server::orchestrator::SandboxRequest::default())
        .await
        .expect("create sandbox");
    let mut results = Vec::new();
    for n in 0..4 {
        if n == 1 {
            // Later runs only look while the loop keeps swapping.
            h.fake
                .set_script(Script::bash("ls -la; cat leak2 2>&1", "{tool_result}"));
        }
        let (run, _) = orch
            .start_run(delegate_server::orchestrator::RunRequest {
                task: format!("run {n}"),
                sandbox_id: Some(sandbox.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let r = orch.wait(&run).await.unwrap();
        assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
        results.push(r);
    }
    // The sandbox saw the link, never the file behind it.
    assert!(
        results[1..]
            .iter()
            .any(|r| r.final_message.contains("leak2")),
        "the loop did not run: {:?}",
        results[1].final_message
    );
    for r in &results {
        let json = serde_json::to_string(r).unwrap();
        assert!(
            !json.contains(SECRET),
            "the host file is in a result: {json}"
        );
        let events = orch
            .store()
            .events_after(&r.run_id, 0, 10_000)
            .await
            .unwrap();
        assert!(!serde_json::to_string(&events).unwrap().contains(SECRET));
    }
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .unwrap();
    orch.shutdown().await;
    // Nothing under the data dir (database, patches, bundles, logs) holds it either.
    let mut stack = vec![h.data_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                assert!(
                    !common::contains(&bytes, SECRET),
                    "the host file is in {}",
                    entry.path().display()
                );
            }
        }
    }
}

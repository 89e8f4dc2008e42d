//! Repositories in, changes out, against a real `delegate serve`: a snapshot made with
//! delegate_repo from a real git repository is uploaded over REST, a run (real opencode, the
//! scripted fake model) changes it on the process and docker backends, and the change comes back
//! as a patch `git apply` takes and a bundle `git fetch` takes. Bad input gets its own error.

mod common;

use std::path::{Path, PathBuf};

use common::Harness;
use common::serve::{Account, Server};
use delegate_mcp::types::{ChangeKind, RunResult, RunStatus, SandboxStatus};
use delegate_repo::{Limits, Snapshot};
use delegate_testkit::anthropic::Script;
use delegate_testkit::real;
use reqwest::Method;
use serde_json::json;

/// What the scripted agent does in the sandbox: modify a tracked file, add a binary one, delete one.
const AGENT_CHANGES: &str = "printf 'changed by the agent\\n' > README.md && printf 'PNG\\000\\001\\002\\377' > logo.bin && rm old.txt";

/// git as a test runs it: no global config, a fixed identity.
async fn git(dir: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .await
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with history, a file to change, one to delete, a file name with a space, and an
/// uncommitted change, snapshotted as a caller's client would.
async fn project(root: &Path) -> Snapshot {
    let repo = root.join("project");
    tokio::fs::create_dir_all(&repo).await.unwrap();
    git(&repo, &["init", "-q"]).await;
    tokio::fs::write(repo.join("README.md"), "hello\n")
        .await
        .unwrap();
    tokio::fs::write(repo.join("old.txt"), "old\n")
        .await
        .unwrap();
    git(&repo, &["add", "-A"]).await;
    git(&repo, &["commit", "-q", "-m", "first"]).await;
    tokio::fs::write(repo.join("notes and ideas.txt"), "uncommitted\n")
        .await
        .unwrap();
    Snapshot::take(&repo, Limits::default(), &root.join("scratch"))
        .await
        .expect("a snapshot")
}

async fn upload(s: &Server, who: &Account, snapshot: &Snapshot) -> String {
    let bytes = tokio::fs::read(snapshot.bundle()).await.unwrap();
    let base = &snapshot.base;
    let r = s
        .bearer(Method::POST, "/api/snapshots", &who.token)
        .query(&[
            ("workspace", who.personal.slug.as_str()),
            ("repo", base.repo.as_str()),
            ("commit", base.commit.as_deref().unwrap_or("")),
            ("branch", base.branch.as_deref().unwrap_or("")),
            ("dirty", if base.dirty { "true" } else { "false" }),
        ])
        .header("content-type", "application/x-git-bundle")
        .body(bytes.clone());
    let reply = s.send(r).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert_eq!(reply.body["bytes"], bytes.len() as u64);
    reply.body["snapshot_id"].as_str().unwrap().to_string()
}

async fn run(s: &Server, who: &Account, body: serde_json::Value) -> RunResult {
    let reply = s
        .send(s.bearer(Method::POST, "/api/runs", &who.token).json(&body))
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    serde_json::from_value(reply.body).unwrap()
}

/// Raw bytes and headers of a GET.
async fn download(
    s: &Server,
    who: &Account,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = s
        .bearer(Method::GET, path, &who.token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// A checkout of the snapshot, as the caller's repository holds it.
async fn checkout(snapshot: &Snapshot, at: &Path) -> PathBuf {
    let dir = at.to_path_buf();
    git(
        at.parent().unwrap(),
        &[
            "clone",
            "-q",
            &snapshot.bundle().display().to_string(),
            &dir.display().to_string(),
        ],
    )
    .await;
    dir
}

/// The whole round trip on whatever backend `s` runs.
async fn round_trip(h: &Harness, s: &Server) {
    let alice = s.account("alice").await;
    let snapshot = project(h.dir.path()).await;
    assert!(snapshot.base.dirty);
    let id = upload(s, &alice, &snapshot).await;
    let result = run(
        s,
        &alice,
        json!({ "task": "change the project", "workspace": alice.personal.slug, "snapshot": id, "wait": true }),
    )
    .await;
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
    let commit = result.commit.clone().expect("the agent's commit");
    let base = result.base.clone().expect("the run's base");
    assert_eq!(base.repo, snapshot.base.repo);
    assert_eq!(base.commit, snapshot.base.commit);
    assert!(base.dirty);
    let mut files: Vec<_> = result
        .changed_files
        .iter()
        .map(|f| (f.path.as_str(), f.change, f.binary))
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            ("README.md", ChangeKind::Modified, false),
            ("logo.bin", ChangeKind::Added, true),
            ("old.txt", ChangeKind::Deleted, false),
        ]
    );

    // The bundle: fetched into a repository holding the snapshot, its tip is the run's commit,
    // right on the snapshot's tip.
    let work = h.dir.path().join("caller");
    let repo = checkout(&snapshot, &work).await;
    let (status, headers, bundle) =
        download(s, &alice, &format!("/api/runs/{}/bundle", result.run_id)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-git-bundle");
    assert_eq!(headers["x-delegate-commit"], commit.as_str());
    let bundle_file = h.dir.path().join("change.bundle");
    tokio::fs::write(&bundle_file, &bundle).await.unwrap();
    git(
        &repo,
        &[
            "fetch",
            "-q",
            &bundle_file.display().to_string(),
            "refs/delegate/export:refs/heads/agent",
        ],
    )
    .await;
    assert_eq!(git(&repo, &["rev-parse", "agent"]).await, commit);
    assert_eq!(git(&repo, &["rev-parse", "agent^"]).await, snapshot.tip);

    // The patch: applied to a checkout of the snapshot, it gives the agent's tree exactly.
    let (status, headers, patch) =
        download(s, &alice, &format!("/api/runs/{}/patch", result.run_id)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/x-diff");
    let patch_file = h.dir.path().join("change.patch");
    tokio::fs::write(&patch_file, &patch).await.unwrap();
    git(
        &repo,
        &["apply", "--binary", &patch_file.display().to_string()],
    )
    .await;
    assert_eq!(
        tokio::fs::read(repo.join("logo.bin")).await.unwrap(),
        b"PNG\x00\x01\x02\xff"
    );
    git(&repo, &["add", "-A"]).await;
    assert_eq!(
        git(&repo, &["write-tree"]).await,
        git(&repo, &["rev-parse", "agent^{tree}"]).await,
        "the patch gives the agent's tree"
    );
    // The uploaded bundle is gone once the sandbox cloned it.
    assert!(
        is_empty(&h.data_dir().join("snapshots")).await,
        "no snapshot left"
    );
}

async fn is_empty(dir: &Path) -> bool {
    let mut entries = tokio::fs::read_dir(dir).await.unwrap();
    entries.next_entry().await.unwrap().is_none()
}

#[tokio::test]
async fn a_snapshot_goes_in_and_its_change_comes_out_on_the_process_backend() {
    let Some(h) = Harness::new(Script::bash(AGENT_CHANGES, "changed")).await else {
        return;
    };
    let s = h.serve().start().await;
    round_trip(&h, &s).await;
}

#[tokio::test]
async fn a_snapshot_goes_in_and_its_change_comes_out_on_the_docker_backend() {
    let Some(h) = Harness::new(Script::bash(AGENT_CHANGES, "changed")).await else {
        return;
    };
    let Some(host) = real::docker_host() else {
        return;
    };
    let image = real::sandbox_image();
    let docker = bollard::Docker::connect_with_host(&host)
        .unwrap()
        .negotiate_version()
        .await
        .expect("negotiate the API version");
    if docker.inspect_image(&image).await.is_err() {
        let _: Option<()> = real::unavailable(
            "the sandbox image",
            &format!("{image} is not built (sandbox-image/build --offline --lean)"),
        );
        return;
    }
    let s = h
        .serve()
        .env("DELEGATE_BACKEND", "docker")
        .env("DOCKER_HOST", host)
        .env("DELEGATE_SANDBOX_IMAGE", image)
        .env("DELEGATE_SANDBOX_MEMORY_MB", "1024")
        .start()
        .await;
    round_trip(&h, &s).await;
}

#[tokio::test]
async fn a_warm_sandbox_from_a_snapshot_carries_every_run_in_its_bundle() {
    let Some(h) = Harness::new(Script::bash("echo one > one.txt", "one")).await else {
        return;
    };
    let s = h.serve().start().await;
    let alice = s.account("alice").await;
    let snapshot = project(h.dir.path()).await;
    let id = upload(&s, &alice, &snapshot).await;
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/sandboxes", &alice.token)
                .json(&json!({ "workspace": alice.personal.slug, "snapshot": id })),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert_eq!(reply.body["status"], "running");
    assert_eq!(reply.body["base"]["repo"], snapshot.base.repo.as_str());
    let sandbox_id = reply.body["sandbox_id"].as_str().unwrap().to_string();

    let in_sandbox = |task: &str| json!({ "task": task, "sandbox_id": sandbox_id, "wait": true });
    let first = run(&s, &alice, in_sandbox("write one.txt")).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    h.fake.set_script(Script::bash("echo two > two.txt", "two"));
    let second = run(&s, &alice, in_sandbox("write two.txt")).await;
    assert_eq!(second.status, RunStatus::Succeeded, "{second:?}");
    assert_eq!(second.base, first.base);
    assert_eq!(
        second
            .changed_files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["two.txt"],
        "each run's files are its own"
    );

    let repo = checkout(&snapshot, &h.dir.path().join("caller")).await;
    let (status, headers, bundle) =
        download(&s, &alice, &format!("/api/runs/{}/bundle", second.run_id)).await;
    assert_eq!(status, 200);
    let commit = second.commit.clone().unwrap();
    assert_eq!(headers["x-delegate-commit"], commit.as_str());
    let file = h.dir.path().join("second.bundle");
    tokio::fs::write(&file, &bundle).await.unwrap();
    git(
        &repo,
        &[
            "fetch",
            "-q",
            &file.display().to_string(),
            "refs/delegate/export:refs/heads/agent",
        ],
    )
    .await;
    let commits = git(&repo, &["rev-list", &format!("{}..agent", snapshot.tip)]).await;
    assert_eq!(
        commits.lines().collect::<Vec<_>>(),
        [commit.as_str(), first.commit.as_deref().unwrap()],
        "both runs' commits, the second on the first"
    );
    let del = s
        .send(s.bearer(
            Method::DELETE,
            &format!("/api/sandboxes/{sandbox_id}"),
            &alice.token,
        ))
        .await;
    assert_eq!(del.body["status"], "deleted", "{}", del.body);
}

#[tokio::test]
async fn bad_snapshots_and_missing_changes_get_their_own_errors() {
    let Some(h) = Harness::new(Script::text("nothing to do")).await else {
        return;
    };
    let s = h
        .serve()
        .env("DELEGATE_MAX_REPO_BYTES", "4096")
        .env("DELEGATE_MAX_REPO_FILES", "3")
        .start()
        .await;
    let alice = s.account("alice").await;
    let bob = s.account("bob").await;
    let snapshots_dir = h.data_dir().join("snapshots");
    let post = |who: &Account, body: Vec<u8>| {
        s.bearer(Method::POST, "/api/snapshots", &who.token)
            .query(&[
                ("workspace", who.personal.slug.as_str()),
                ("repo", "/src/p"),
            ])
            .header("content-type", "application/x-git-bundle")
            .body(body)
    };

    // Over DELEGATE_MAX_REPO_BYTES: 413, and nothing kept.
    let reply = s.send(post(&alice, vec![b'x'; 10_000])).await;
    assert_eq!(reply.status.as_u16(), 413, "{}", reply.body);
    assert_eq!(reply.error_code(), "repo_too_large");
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DELEGATE_MAX_REPO_BYTES")
    );
    assert!(
        is_empty(&snapshots_dir).await,
        "the partial upload is removed"
    );
    // Not a bundle: 400, nothing kept.
    let reply = s
        .send(post(&alice, b"# v2 git bundle\nnonsense\n\n".to_vec()))
        .await;
    assert_eq!(reply.status.as_u16(), 400, "{}", reply.body);
    assert_eq!(reply.error_code(), "invalid_input");
    assert!(is_empty(&snapshots_dir).await);

    // A real bundle of five files from a client whose own limits are larger: the server counts
    // its tree against DELEGATE_MAX_REPO_FILES, refuses it naming the largest paths, keeps nothing.
    let many = h.dir.path().join("many");
    tokio::fs::create_dir_all(&many).await.unwrap();
    git(&many, &["init", "-q"]).await;
    for i in 0..5 {
        let body = "x".repeat(10 + i * 10);
        tokio::fs::write(many.join(format!("f{i}.txt")), body)
            .await
            .unwrap();
    }
    git(&many, &["add", "-A"]).await;
    git(&many, &["commit", "-q", "-m", "five"]).await;
    let five = Snapshot::take(&many, Limits::default(), &h.dir.path().join("scratch"))
        .await
        .unwrap();
    let bundle = tokio::fs::read(five.bundle()).await.unwrap();
    let reply = s.send(post(&alice, bundle)).await;
    assert_eq!(reply.status.as_u16(), 413, "{}", reply.body);
    assert_eq!(reply.error_code(), "repo_too_large");
    let said = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        said.contains("5 files")
            && said.contains("DELEGATE_MAX_REPO_FILES (3 files)")
            && said.contains("f4.txt (50 B)"),
        "{said}"
    );
    assert!(is_empty(&snapshots_dir).await, "nothing kept");

    // A real (small) snapshot: someone else's id is unknown, in any workspace.
    let repo = h.dir.path().join("small");
    tokio::fs::create_dir_all(&repo).await.unwrap();
    git(&repo, &["init", "-q"]).await;
    tokio::fs::write(repo.join("a.txt"), "a\n").await.unwrap();
    git(&repo, &["add", "-A"]).await;
    git(&repo, &["commit", "-q", "-m", "a"]).await;
    let snapshot = Snapshot::take(&repo, Limits::default(), &h.dir.path().join("scratch"))
        .await
        .unwrap();
    let id = upload(&s, &alice, &snapshot).await;
    for (who, ws) in [(&bob, &bob.personal.slug), (&bob, &alice.personal.slug)] {
        let reply = s
            .send(
                s.bearer(Method::POST, "/api/runs", &who.token)
                    .json(&json!({ "task": "t", "workspace": ws, "snapshot": id })),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 404, "{}", reply.body);
    }
    // With a warm sandbox: refused, the snapshot kept for a right call.
    let warm = common::sandbox_row(&alice.personal.id, SandboxStatus::Running);
    s.store().insert_sandbox(&warm).await.unwrap();
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/runs", &alice.token)
                .json(&json!({ "task": "t", "sandbox_id": warm.id, "snapshot": id })),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 400, "{}", reply.body);
    assert_eq!(reply.error_code(), "invalid_input");
    // Used once; then it is gone.
    let used = run(
        &s,
        &alice,
        json!({ "task": "t", "workspace": alice.personal.slug, "snapshot": id, "wait": true }),
    )
    .await;
    assert_eq!(used.status, RunStatus::Succeeded, "{used:?}");
    assert!(used.changed_files.is_empty());
    let reply = s
        .send(
            s.bearer(Method::POST, "/api/runs", &alice.token)
                .json(&json!({ "task": "t", "workspace": alice.personal.slug, "snapshot": id })),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 404, "{}", reply.body);

    // Over HTTP a path means nothing to the server; URLs are not cloned yet.
    for (repo, code) in [
        ("/home/alice/project", "not_a_repo"),
        ("https://example.com/a.git", "repo_unreachable"),
    ] {
        let reply = s
            .send(
                s.bearer(Method::POST, "/api/runs", &alice.token)
                    .json(&json!({ "task": "t", "workspace": alice.personal.slug, "repo": repo })),
            )
            .await;
        assert_eq!(reply.status.as_u16(), 400, "{}", reply.body);
        assert_eq!(reply.error_code(), code);
    }

    // A run with no change: no patch, no bundle. Another user's run: not found either.
    let row = common::run_row(&warm, RunStatus::Succeeded);
    s.store().insert_run(&row).await.unwrap();
    for what in ["patch", "bundle"] {
        let path = format!("/api/runs/{}/{what}", row.id);
        let reply = s.send(s.bearer(Method::GET, &path, &alice.token)).await;
        assert_eq!(reply.status.as_u16(), 404, "{what}: {}", reply.body);
        let path = format!("/api/runs/{}/{what}", used.run_id);
        let reply = s.send(s.bearer(Method::GET, &path, &bob.token)).await;
        assert_eq!(reply.status.as_u16(), 404, "{what}: {}", reply.body);
    }
    // The empty change of the used run is still a change: its patch is empty, not missing.
    let (status, _, patch) =
        download(&s, &alice, &format!("/api/runs/{}/patch", used.run_id)).await;
    assert_eq!(status, 200);
    assert!(patch.is_empty());
}

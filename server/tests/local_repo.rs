//! Repositories on local agents, where it can go wrong: an agent that does not take repositories
//! (an older one) gets a clear error and nothing is created; the agent refuses work dirs outside
//! its runs directory and seed bundles over its limit, and answers those requests itself
//! instead of passing them to opencode; and an agent whose change is hostile (a commit that does
//! not sit on the snapshot, a bundle over the cap) fails the run with `bad_change`, with nothing
//! kept. The happy path (bridged `delegate run` on a local agent) is in `run_repo.rs`.

mod common;
#[path = "support/local_agent.rs"]
mod local_agent;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Harness;
use common::serve::{Serve, Server};
use delegate_mcp::types::{ErrorKind, RunResult, RunStatus, SandboxStatus};
use delegate_server::settings::Registration;
use delegate_testkit::anthropic::Script;
use delegate_testkit::repos::{fingerprint, git, project};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// `delegate run --json --server URL --token T ARGS` in `dir`, its state in `client_data`:
/// the exit code, the result (if any) and stderr.
async fn bridged(
    s: &Server,
    token: &str,
    dir: &Path,
    client_data: &Path,
    args: &[&str],
) -> (Option<i32>, Option<RunResult>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_delegate"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DELEGATE_DATA_DIR", client_data)
            .current_dir(dir)
            .args(["run", "--json", "--server", &s.base, "--token", token])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("delegate run finished within 5 minutes")
    .expect("delegate ran");
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).ok(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A listener standing in for the agent's opencode that only counts the connections it gets.
async fn counting_opencode() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((_conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, count)
}

/// One raw request to a local sandbox's endpoint (with its Basic credentials) on a connection of
/// its own: the status and body of the answer.
async fn raw_request(s: &Server, id: &str, head: &str) -> (u16, String) {
    let ep = s.orch.local_endpoint(&id.parse().unwrap()).unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("opencode:{}", ep.password.expose()),
    );
    let mut tcp = tokio::net::TcpStream::connect(ep.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!("{head}\r\nhost: x\r\nauthorization: Basic {auth}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn an_agent_that_does_not_take_repositories_gets_a_clear_error_and_nothing_is_run() {
    let s = Serve::standalone()
        .registration(Registration::Invite)
        .start()
        .await;
    let owner = s.account("owner").await;
    // An agent without a data dir announces no repositories, as agents from before them.
    let created = local_agent::create_code(&s, &owner, serde_json::json!({})).await;
    let code = created.body["code"].as_str().unwrap();
    let registered = delegate_agent::client::register(&s.base, code, "old-laptop")
        .await
        .unwrap();
    let (opencode_url, connections) = counting_opencode().await;
    let stop = CancellationToken::new();
    let agent = tokio::spawn(delegate_agent::client::run(
        delegate_agent::client::AgentConfig {
            server: s.base.clone(),
            sandbox_id: registered.sandbox_id.clone(),
            token: registered.token.clone(),
            opencode_url,
            opencode_password: None,
            data_dir: None,
        },
        stop.clone(),
        |_| {},
    ));
    let id = registered.sandbox_id.clone();
    local_agent::wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(30)).await;

    let dir = tempfile::tempdir().unwrap();
    let root = project(dir.path());
    let before = fingerprint(&root);
    let (code, result, stderr) = bridged(
        &s,
        &owner.token,
        &root,
        &dir.path().join("client"),
        &["--sandbox", &id, "--repo", ".", "change something"],
    )
    .await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(result.is_none(), "a run was made: {result:?}");
    assert!(
        stderr.contains("this agent does not take repositories; update delegate on old-laptop"),
        "{stderr}"
    );
    assert_eq!(fingerprint(&root), before);
    assert!(git(&root, &["branch", "--list", "delegate/*"]).is_empty());
    let runs = s
        .send(s.bearer(
            reqwest::Method::GET,
            &format!("/api/runs?sandbox_id={id}"),
            &owner.token,
        ))
        .await;
    assert_eq!(runs.status, 200, "{}", runs.body);
    assert_eq!(runs.body["runs"], serde_json::json!([]), "{}", runs.body);

    // Such an agent answers a repository request itself, and refuses it: nothing of it is
    // passed on to opencode (which the agent asked for its directory only, when it connected).
    let asked = connections.load(Ordering::SeqCst);
    let (status, body) = raw_request(
        &s,
        &id,
        "PUT /.delegate/runs/run_x/seed HTTP/1.1\r\ncontent-length: 0",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("does not take repositories"), "{body}");
    assert_eq!(connections.load(Ordering::SeqCst), asked);

    stop.cancel();
    agent.await.unwrap().unwrap();
}

/// A `git` for the agent's machine that, told so by a `mode` file beside it, hands back something
/// else than the run's change when the commit script bundles it: an unrelated commit (`orphan`),
/// or a file over the server's cap (`huge`, sparse). Every other git call goes to the real git.
fn hostile_git(dir: &Path) -> PathBuf {
    let real = delegate_testkit::real::on_path("git").expect("git");
    let script = format!(
        r#"#!/bin/sh
mode=$(cat "$(dirname "$0")/mode" 2>/dev/null)
# The bundle's path: the first operand after `bundle create`, whatever `-c` options come first.
seen=; path=
for a in "$@"; do
  if [ "$seen" = create ] && [ -z "$path" ]; then
    case "$a" in -*) ;; *) path=$a ;; esac
  fi
  if [ "$seen" = bundle ] && [ "$a" = create ]; then seen=create; fi
  if [ -z "$seen" ] && [ "$a" = bundle ]; then seen=bundle; fi
done
if [ -n "$path" ] && [ -n "$mode" ]; then
  case "$mode" in
    orphan)
      tree=$("{real}" write-tree) || exit 1
      commit=$(echo hostile | "{real}" commit-tree "$tree") || exit 1
      "{real}" update-ref refs/delegate/result "$commit" || exit 1
      exec "{real}" bundle create -q "$path" refs/delegate/result ;;
    huge)
      exec truncate -s 1073741825 "$path" ;;
  esac
fi
exec "{real}" "$@"
"#,
        real = real.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let git = dir.join("git");
    std::fs::write(&git, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

#[tokio::test]
async fn a_hostile_change_from_an_agent_fails_the_run_with_bad_change_and_nothing_is_kept() {
    let Some(h) = Harness::new(Script::bash(
        "printf 'agent work\\n' > work.txt; echo done",
        "{tool_result}",
    ))
    .await
    else {
        return;
    };
    let s = h.serve().registration(Registration::Invite).start().await;
    let owner = s.account("owner").await;
    let machine = h.dir.path().join("machine");
    let bin = hostile_git(&machine.join("bin"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (_opencode, url) = local_agent::local_opencode(&h, &machine).await;
    let (agent, id) =
        local_agent::join_with_path(&s, &owner, &s.base, &machine.join("config"), &url, &path)
            .await;
    local_agent::wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(30)).await;
    let runs_dir = machine.join("config/.local/share/delegate/agent/runs");

    // The agent keeps work dirs inside its runs directory and takes no seed over its limit.
    for (head, want, says) in [
        (
            "PUT /.delegate/runs/../seed HTTP/1.1\r\ncontent-length: 3",
            400,
            "outside the runs directory",
        ),
        (
            "PUT /.delegate/runs/a%2F..%2F..%2Fx/seed HTTP/1.1\r\ncontent-length: 3",
            400,
            "outside the runs directory",
        ),
        (
            "DELETE /.delegate/runs/.. HTTP/1.1\r\ncontent-length: 0",
            400,
            "outside the runs directory",
        ),
        (
            "PUT /.delegate/runs/run_big/seed HTTP/1.1\r\ncontent-length: 1073741825",
            413,
            "at most 1073741824",
        ),
        (
            "PUT /.delegate/runs/run_x/seed HTTP/1.1\r\ntransfer-encoding: chunked",
            411,
            "Content-Length",
        ),
    ] {
        let (status, body) = raw_request(&s, &id, head).await;
        assert_eq!(status, want, "{head}: {body}");
        assert!(body.contains(says), "{head}: {body}");
    }
    assert!(
        !machine
            .join("config/.local/share/delegate/agent/x")
            .exists()
            && !runs_dir.join("run_big").exists()
    );

    let dir = h.dir.path().join("caller");
    std::fs::create_dir_all(&dir).unwrap();
    let root = project(&dir);
    let before = fingerprint(&root);
    for (mode, says) in [("orphan", "does not sit on"), ("huge", "over")] {
        std::fs::write(bin.join("mode"), mode).unwrap();
        let (code, result, stderr) = bridged(
            &s,
            &owner.token,
            &root,
            &h.dir.path().join("client"),
            &["--sandbox", &id, "--repo", ".", "write work.txt"],
        )
        .await;
        assert_eq!(code, Some(1), "{mode}: {stderr}");
        let r = result.unwrap_or_else(|| panic!("{mode}: no result: {stderr}"));
        assert_eq!(r.status, RunStatus::Failed, "{mode}: {:?}", r.error);
        let error = r.error.as_ref().unwrap();
        assert_eq!(error.kind, ErrorKind::BadChange, "{mode}: {error:?}");
        assert!(error.message.contains(says), "{mode}: {}", error.message);
        // Nothing of it was kept or written anywhere.
        assert!(r.commit.is_none() && r.branch.is_none(), "{mode}: {r:?}");
        assert!(r.changed_files.is_empty(), "{mode}: {r:?}");
        assert!(
            !h.data_dir().join("runs").join(&r.run_id).exists(),
            "{mode}"
        );
        assert!(
            !h.data_dir().join("local-runs").join(&r.run_id).exists(),
            "{mode}"
        );
        let patch = s
            .send(s.bearer(
                reqwest::Method::GET,
                &format!("/api/runs/{}/patch", r.run_id),
                &owner.token,
            ))
            .await;
        assert_eq!(patch.status, 404, "{mode}: {}", patch.body);
        assert_eq!(fingerprint(&root), before, "{mode}");
        assert!(git(&root, &["branch", "--list", "delegate/*"]).is_empty());
        let left: Vec<_> = std::fs::read_dir(&runs_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{mode}: left on the agent: {left:?}");
    }
    drop(agent);
}

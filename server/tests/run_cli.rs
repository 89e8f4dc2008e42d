//! `delegate run` end to end: the real binary, the real opencode under bubblewrap, delegate's
//! proxy, and the scripted fake upstream behind it.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, REAL_KEY, contains, processes_mentioning};
use delegate_mcp::types::{ChangeKind, ErrorKind, RunStatus};
use delegate_server::store::SqliteStore;
use delegate_testkit::anthropic::Script;
use rstest::rstest;

#[tokio::test]
async fn a_delegated_run_writes_hello_through_the_proxy_and_the_key_stays_home() {
    let Some(h) = Harness::new(Script::write_file("hello.txt", "hi\n", "done")).await else {
        return;
    };
    let run = h.run_cli(&["create hello.txt saying hi"]).await;
    let r = run.result();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", run.stderr);
    assert_eq!(run.code, Some(0));
    assert_eq!(r.final_message, "done");
    assert_eq!(r.changed_files.len(), 1);
    assert_eq!(r.changed_files[0].path, "hello.txt");
    assert_eq!(r.changed_files[0].change, ChangeKind::Added);
    assert!(
        r.diff.contains("+++ b/hello.txt") && r.diff.contains("+hi"),
        "{}",
        r.diff
    );
    assert!(
        r.usage.input_tokens > 0 && r.usage.output_tokens > 0,
        "{:?}",
        r.usage
    );
    assert!(r.event_count >= 6);
    assert!(r.error.is_none());
    // Progress went to stderr, one line per event.
    assert!(run.stderr.contains("tool write"), "{}", run.stderr);

    // The upstream saw the real key as x-api-key, on every request, and never a sandbox token.
    let requests = h.fake.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    for req in &requests {
        assert_eq!(req.header("x-api-key"), Some(REAL_KEY));
        assert_eq!(req.header("authorization"), None);
        for (name, value) in &req.headers {
            assert!(
                !value.contains("dsb_"),
                "sandbox token leaked upstream in {name}"
            );
        }
        assert!(!req.body.to_string().contains("dsb_"));
    }

    // The key is in no log line, event, error or database row.
    assert!(!run.stderr.contains(REAL_KEY));
    assert!(!run.stdout.contains(REAL_KEY));
    assert!(
        !contains(&h.database_bytes(), REAL_KEY),
        "the key is in the database"
    );
    let store = SqliteStore::connect(&format!("sqlite://{}/delegate.db", h.data_dir().display()))
        .await
        .unwrap();
    use delegate_server::store::Store;
    let events = store.events_after(&r.run_id, 0, 1000).await.unwrap();
    assert_eq!(events.len() as u64, r.event_count);
    assert!(!serde_json::to_string(&events).unwrap().contains(REAL_KEY));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=r.event_count).collect::<Vec<_>>());
    // The ephemeral sandbox is gone, and so is every process of it.
    let sandbox = store.sandbox(&r.sandbox_id).await.unwrap();
    assert_eq!(sandbox.status.as_str(), "deleted");
    assert!(!h.data_dir().join("sandboxes").join(&r.sandbox_id).exists());
    assert_eq!(processes_mentioning(&r.sandbox_id), Vec::<String>::new());
}

#[tokio::test]
async fn the_sandbox_environment_holds_only_the_sandbox_token() {
    let script = Script::bash(
        "env; echo ---; cat /proc/1/environ | tr '\\0' '\\n'; echo ---; ls -a ~; id -u",
        "{tool_result}",
    );
    let Some(h) = Harness::new(script).await else {
        return;
    };
    let run = h.run_cli(&["show me your environment"]).await;
    let r = run.result();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", run.stderr);
    let seen = &r.final_message;
    assert!(seen.contains("OPENCODE_CONFIG_CONTENT"), "{seen}");
    assert!(
        seen.contains("dsb_"),
        "the sandbox token is in opencode's config: {seen}"
    );
    assert!(
        seen.contains("127.0.0.1:4000/v1"),
        "opencode talks to the relay: {seen}"
    );
    assert!(!seen.contains(REAL_KEY), "the real key reached the sandbox");
    assert!(!seen.contains("ANTHROPIC_API_KEY"), "{seen}");
    assert!(
        !seen.contains(&h.fake.base_url()),
        "the sandbox knows the upstream: {seen}"
    );
    assert!(
        seen.trim_end().ends_with("1000"),
        "runs as uid 1000: {seen}"
    );
}

/// `min_requests`: how many calls reached the upstream at least (opencode retries a 529).
#[rstest]
#[case::upstream_401_fails_with_upstream_auth(Script::status(401), ErrorKind::UpstreamAuth, 1)]
#[case::upstream_529_until_retries_run_out_fails_with_upstream_unavailable(
    Script::overloaded(),
    ErrorKind::UpstreamUnavailable,
    3
)]
#[tokio::test]
async fn an_upstream_error_fails_the_run_with_its_kind(
    #[case] script: Script,
    #[case] kind: ErrorKind,
    #[case] min_requests: usize,
) {
    let Some(h) = Harness::new(script).await else {
        return;
    };
    let run = h.run_cli(&["create hello.txt saying hi"]).await;
    let r = run.result();
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(run.code, Some(1));
    let e = r.error.as_ref().expect("an error");
    assert_eq!(e.kind, kind, "{e:?}");
    assert!(!e.message.contains(REAL_KEY));
    assert!(!run.stderr.contains(REAL_KEY));
    let requests = h.fake.requests().len();
    assert!(requests >= min_requests, "{requests} upstream calls");
}

#[tokio::test]
async fn a_run_past_its_timeout_is_killed_and_leaves_nothing() {
    let Some(h) = Harness::new(Script::Hang).await else {
        return;
    };
    let started = Instant::now();
    let run = h.run_cli(&["--timeout", "3", "hang forever"]).await;
    let elapsed = started.elapsed();
    let r = run.result();
    assert_eq!(r.status, RunStatus::TimedOut, "{}", run.stderr);
    assert_eq!(r.error.as_ref().map(|e| e.kind), Some(ErrorKind::Timeout));
    assert!(
        r.duration_ms <= 8_000,
        "timed out after {} ms",
        r.duration_ms
    );
    assert!(
        elapsed < Duration::from_secs(3 + 5 + 5),
        "the command took {elapsed:?}"
    );
    assert_eq!(processes_mentioning(&r.sandbox_id), Vec::<String>::new());
    assert_eq!(
        processes_mentioning(&h.data_dir().display().to_string()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_missing_opencode_is_a_clear_error_naming_the_setting() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let out = h
        .delegate()
        .args(["run", "do something"])
        .env(
            "DELEGATE_OPENCODE_BIN",
            h.dir.path().join("no-such-opencode"),
        )
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DELEGATE_OPENCODE_BIN"), "{stderr}");
    assert!(stderr.contains("no-such-opencode"), "{stderr}");
    assert!(h.fake.requests().is_empty());
}

/// A PATH with git but without bwrap.
fn path_without_bwrap(dir: &std::path::Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let git = delegate_testkit::real::on_path("git").expect("git");
    std::os::unix::fs::symlink(git, bin.join("git")).unwrap();
    bin.display().to_string()
}

#[tokio::test]
async fn without_bubblewrap_only_isolation_none_runs() {
    let Some(h) = Harness::new(Script::write_file("hello.txt", "hi\n", "done")).await else {
        return;
    };
    let path = path_without_bwrap(h.dir.path());
    let out = h
        .delegate()
        .args(["run", "create hello.txt"])
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bubblewrap"), "{stderr}");
    assert!(stderr.contains("--isolation none"), "{stderr}");
    assert!(h.fake.requests().is_empty());

    let out = h
        .delegate()
        .args(["run", "--json", "--isolation", "none", "create hello.txt"])
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ISOLATION IS OFF"),
        "a loud warning: {stderr}"
    );
    let r: delegate_mcp::types::RunResult =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(r.status, RunStatus::Succeeded, "{stderr}");
    assert_eq!(r.changed_files[0].path, "hello.txt");
}

#[tokio::test]
async fn a_task_over_one_mebibyte_is_refused_and_nothing_is_written() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let mut child = h
        .delegate()
        .args(["run", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &vec![b'x'; (1 << 20) + 1])
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("task") && stderr.contains("1 MiB"),
        "{stderr}"
    );
    let store = SqliteStore::connect(&format!("sqlite://{}/delegate.db", h.data_dir().display()))
        .await
        .unwrap();
    use delegate_server::store::Store;
    let ws = store.workspace_by_slug("default").await.unwrap();
    assert!(store.list_runs(&ws.id, None, 10).await.unwrap().is_empty());
    assert!(store.list_sandboxes(&ws.id).await.unwrap().is_empty());
    assert!(h.fake.requests().is_empty());
}

#[tokio::test]
async fn seed_files_reach_the_sandbox_and_bad_paths_are_refused() {
    let Some(h) = Harness::new(Script::read_file("notes/input.txt")).await else {
        return;
    };
    let local = h.dir.path().join("input.txt");
    std::fs::write(&local, "the seeded content 42\n").unwrap();
    let spec = format!("notes/input.txt={}", local.display());
    let run = h.run_cli(&["--file", &spec, "read notes/input.txt"]).await;
    let r = run.result();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", run.stderr);
    assert!(
        r.final_message.contains("the seeded content 42"),
        "{}",
        r.final_message
    );
    assert!(
        r.changed_files.is_empty(),
        "seeded files are not changes: {:?}",
        r.changed_files
    );

    for bad in ["../escape.txt", "/etc/evil", ".git/config"] {
        let spec = format!("{bad}={}", local.display());
        let out = h
            .delegate()
            .args(["run", "--file", &spec, "x"])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("files: path"), "{bad}: {stderr}");
    }
    assert!(!h.dir.path().join("escape.txt").exists());
}

#[tokio::test]
async fn malformed_opencode_output_is_logged_and_the_run_still_ends() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    // A stand-in for opencode's stdout only: this test is about delegate's parser under garbage.
    let fake_opencode = h.dir.path().join("garbage-opencode");
    std::fs::write(
        &fake_opencode,
        "#!/bin/sh\ncat >/dev/null\necho 'not json at all'\necho '[1,2,3]'\necho '{\"no_type\":1}'\n\
         printf '%s\\n' '{\"type\":\"text\",\"timestamp\":1,\"sessionID\":\"s\",\"part\":{\"type\":\"text\",\"text\":\"still here\"}}'\n\
         echo '{\"type\":\"brand_new_event\",\"x\":1}'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &fake_opencode,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = h
        .delegate()
        .args(["run", "--json", "anything"])
        .env("DELEGATE_OPENCODE_BIN", &fake_opencode)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: delegate_mcp::types::RunResult =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(r.status, RunStatus::Succeeded, "{stderr}");
    assert_eq!(r.final_message, "still here");
    let store = SqliteStore::connect(&format!("sqlite://{}/delegate.db", h.data_dir().display()))
        .await
        .unwrap();
    use delegate_server::store::Store;
    let events = store.events_after(&r.run_id, 0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "status",
            "status",
            "malformed",
            "malformed",
            "malformed",
            "text",
            "brand_new_event",
            "status"
        ],
    );
    assert_eq!(events[2].data["line"], "not json at all");
}

/// A task's first line becomes opencode's session title; one that looks like an option must stay
/// the title's value and never reach opencode as an option of its own.
#[tokio::test]
async fn a_task_that_starts_with_an_option_stays_text() {
    let Some(h) = Harness::new(Script::text("plain answer")).await else {
        return;
    };
    let run = h
        .run_cli(&["--", "--model=anthropic/claude-opus-4-5\nsay hello"])
        .await;
    let r = run.result();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", run.stderr);
    let requests = h.fake.requests();
    let models: Vec<String> = requests
        .iter()
        .filter(|q| !q.is_title_request())
        .map(|q| q.body["model"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!models.is_empty());
    assert!(
        models.iter().all(|m| !m.contains("opus")),
        "the task's first line changed the model: {models:?}"
    );
}

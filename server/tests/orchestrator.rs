//! The orchestrator in-process: warm sandboxes, cancellation, live event streams, bad input.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Harness, processes_mentioning};
use delegate_mcp::types::{ErrorKind, RunStatus, SandboxStatus};
use delegate_server::orchestrator::{Error, RunRequest, SandboxRequest};
use delegate_testkit::anthropic::Script;
use futures::StreamExt;

fn task(text: &str) -> RunRequest {
    RunRequest {
        task: text.into(),
        created_by: Some("test".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_warm_sandbox_keeps_files_between_runs() {
    let Some(h) = Harness::new(Script::write_file(
        "hello.txt",
        "hi from run one\n",
        "written",
    ))
    .await
    else {
        return;
    };
    let orch = h.orchestrator().await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            name: Some("warm test".into()),
            files: BTreeMap::from([("README.md".into(), "# seeded\n".into())]),
            ..Default::default()
        })
        .await
        .expect("create sandbox");
    assert_eq!(sandbox.status, SandboxStatus::Running);
    assert!(orch.opencode_url(&sandbox.id.parse().unwrap()).is_some());

    let first = RunRequest {
        sandbox_id: Some(sandbox.id.clone()),
        ..task("create hello.txt")
    };
    let (run1, sbx) = orch.start_run(first).await.unwrap();
    assert_eq!(sbx.as_str(), sandbox.id);
    let r1 = orch.wait(&run1).await.unwrap();
    assert_eq!(r1.status, RunStatus::Succeeded, "{:?}", r1.error);
    assert_eq!(r1.final_message, "written");
    assert_eq!(r1.changed_files.len(), 1, "{:?}", r1.changed_files);
    assert!(r1.usage.input_tokens > 0);

    h.fake.set_script(Script::read_file("hello.txt"));
    let second = RunRequest {
        sandbox_id: Some(sandbox.id.clone()),
        ..task("read hello.txt")
    };
    let (run2, _) = orch.start_run(second).await.unwrap();
    let r2 = orch.wait(&run2).await.unwrap();
    assert_eq!(r2.status, RunStatus::Succeeded, "{:?}", r2.error);
    assert!(
        r2.final_message.contains("hi from run one"),
        "{}",
        r2.final_message
    );
    assert!(
        r2.changed_files.is_empty(),
        "diffed against the first run: {:?}",
        r2.changed_files
    );

    // The sandbox is still there after its runs, then deleting it ends every process.
    let data_dir = h.data_dir().join("sandboxes").join(&sandbox.id);
    assert!(data_dir.exists());
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .unwrap();
    assert!(!data_dir.exists());
    let row = orch.store().sandbox(&sandbox.id).await.unwrap();
    assert_eq!(row.status, SandboxStatus::Deleted);
    assert_eq!(processes_mentioning(&sandbox.id), Vec::<String>::new());
    // Its proxy token is revoked.
    let runs = orch
        .store()
        .list_runs(&row.workspace_id, Some(&sandbox.id), 10)
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
}

#[tokio::test]
async fn cancel_ends_a_run_within_five_seconds_and_leaves_nothing() {
    let Some(h) = Harness::new(Script::Hang).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let (run_id, sandbox_id) = orch.start_run(task("wait forever")).await.unwrap();
    // Cancel once opencode is talking to the (hanging) model.
    tokio::time::timeout(Duration::from_secs(120), h.fake.wait_for_requests(1))
        .await
        .expect("opencode reached the upstream");
    let asked = Instant::now();
    orch.cancel_run(&run_id).await.unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(r.error.as_ref().map(|e| e.kind), Some(ErrorKind::Cancelled));
    assert!(took < Duration::from_secs(5), "cancel took {took:?}");
    assert_eq!(
        processes_mentioning(sandbox_id.as_str()),
        Vec::<String>::new()
    );
    let sandbox = orch.store().sandbox(sandbox_id.as_str()).await.unwrap();
    assert_eq!(sandbox.status, SandboxStatus::Deleted);
    // Cancelling a finished run is harmless.
    orch.cancel_run(&run_id).await.unwrap();
}

#[tokio::test]
async fn a_late_subscriber_replays_then_follows_every_event_once() {
    let Some(h) = Harness::new(Script::slow(300, Script::write_file("a.txt", "a\n", "ok"))).await
    else {
        return;
    };
    let orch = h.orchestrator().await;
    let (run_id, _) = orch.start_run(task("write a.txt")).await.unwrap();
    let early: Vec<_> = orch.events(&run_id, 0).collect().await;
    // Subscribed after it ended, from a cursor in the middle.
    let late: Vec<_> = orch.events(&run_id, 2).collect().await;
    let early: Vec<u64> = early.into_iter().map(|e| e.unwrap().seq).collect();
    let late: Vec<u64> = late.into_iter().map(|e| e.unwrap().seq).collect();
    let r = orch.result(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(early, (1..=r.event_count).collect::<Vec<_>>());
    assert_eq!(late, (3..=r.event_count).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_written() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let cases: Vec<(RunRequest, &str)> = vec![
        (task(""), "task"),
        (task(&"x".repeat((1 << 20) + 1)), "1 MiB"),
        (
            RunRequest {
                files: BTreeMap::from([("../../etc/passwd".into(), "x".into())]),
                ..task("t")
            },
            "'..'",
        ),
        (
            RunRequest {
                files: BTreeMap::from([("/abs".into(), "x".into())]),
                ..task("t")
            },
            "absolute",
        ),
        (
            RunRequest {
                timeout: Some(Duration::ZERO),
                ..task("t")
            },
            "timeout_seconds",
        ),
        (
            RunRequest {
                model: Some("a model; rm -rf /".into()),
                ..task("t")
            },
            "model",
        ),
    ];
    for (req, needle) in cases {
        match orch.start_run(req).await {
            Err(Error::Invalid(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("expected BadInput mentioning {needle}, got {other:?}"),
        }
    }
    for id in [
        "sbx_nope",
        "sbx_01a21d7c824974e4a6541be89eb1b21d",
        "'; DROP TABLE runs; --",
    ] {
        let req = RunRequest {
            sandbox_id: Some(id.into()),
            ..task("t")
        };
        assert!(
            matches!(orch.start_run(req).await, Err(Error::NotFound(_))),
            "{id}"
        );
    }
    let ws = orch.store().workspace_by_slug("default").await.unwrap();
    assert!(
        orch.store()
            .list_runs(&ws.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        orch.store()
            .list_sandboxes(&ws.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !h.data_dir().join("sandboxes").exists()
            || std::fs::read_dir(h.data_dir().join("sandboxes"))
                .unwrap()
                .next()
                .is_none()
    );
    assert!(h.fake.requests().is_empty());
}

#[tokio::test]
async fn after_a_restart_active_runs_are_lost_and_process_sandboxes_failed() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    // A previous server left a running run in a running sandbox behind.
    let db = h.data_dir().join("delegate.db");
    std::fs::create_dir_all(h.data_dir()).unwrap();
    let seeded = common::seed_sandbox(&db).await;
    let store = &seeded.store;
    let now = delegate_server::ids::now_ms();
    store
        .set_run_status(&seeded.run_id, RunStatus::Queued, RunStatus::Starting, now)
        .await
        .unwrap();
    store
        .set_run_status(&seeded.run_id, RunStatus::Starting, RunStatus::Running, now)
        .await
        .unwrap();

    // Another server on the same database owns a running run of its own: not ours to touch.
    let peer = common::seed_sandbox(&db).await;
    let other = "srv_0000000000000000000000000000beef";
    store.set_run_owner(&peer.run_id, other).await.unwrap();
    store
        .set_sandbox_owner(&peer.sandbox_id, other)
        .await
        .unwrap();
    store
        .set_run_status(&peer.run_id, RunStatus::Queued, RunStatus::Starting, now)
        .await
        .unwrap();
    store
        .set_run_status(&peer.run_id, RunStatus::Starting, RunStatus::Running, now)
        .await
        .unwrap();

    let orch = h.orchestrator().await;
    assert_eq!(orch.reconcile().await.unwrap(), (1, 1));
    assert_eq!(
        orch.run(&peer.run_id.parse().unwrap())
            .await
            .unwrap()
            .status,
        RunStatus::Running
    );
    assert_eq!(
        orch.store().sandbox(&peer.sandbox_id).await.unwrap().status,
        SandboxStatus::Running
    );
    let run = orch.result(&seeded.run_id.parse().unwrap()).await.unwrap();
    assert_eq!(run.status, RunStatus::Lost);
    assert_eq!(run.error.map(|e| e.kind), Some(ErrorKind::Lost));
    let sandbox = orch.store().sandbox(&seeded.sandbox_id).await.unwrap();
    assert_eq!(sandbox.status, SandboxStatus::Failed);
    assert!(sandbox.status_reason.unwrap().contains("restarted"));
    let token = orch
        .store()
        .token_by_hash(&delegate_server::ids::hash_secret(&seeded.token))
        .await
        .unwrap();
    assert!(token.revoked_at.is_some(), "its proxy token is revoked");
    // Nothing left to do the second time.
    assert_eq!(orch.reconcile().await.unwrap(), (0, 0));
}

/// Polls the store until the sandbox has `status` (a state change made by a background task).
async fn wait_for_status(
    orch: &delegate_server::orchestrator::Orchestrator,
    id: &str,
    status: SandboxStatus,
) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if orch.store().sandbox(id).await.unwrap().status == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sandbox {id} never became {status}"));
}

#[tokio::test]
async fn an_idle_warm_sandbox_pauses_keeps_its_files_and_wakes_for_the_next_run() {
    let Some(h) = Harness::new(Script::write_file("kept.txt", "still here\n", "written")).await
    else {
        return;
    };
    let orch = h.orchestrator().await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            idle_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        })
        .await
        .unwrap();
    let (run1, _) = orch
        .start_run(RunRequest {
            sandbox_id: Some(sandbox.id.clone()),
            ..task("write kept.txt")
        })
        .await
        .unwrap();
    assert_eq!(orch.wait(&run1).await.unwrap().status, RunStatus::Succeeded);

    wait_for_status(&orch, &sandbox.id, SandboxStatus::Paused).await;
    assert!(
        orch.opencode_url(&sandbox.id.parse().unwrap()).is_none(),
        "opencode serve stopped"
    );
    assert!(
        processes_mentioning(&sandbox.id).is_empty(),
        "no process of a paused sandbox runs"
    );

    h.fake.set_script(Script::read_file("kept.txt"));
    let (run2, _) = orch
        .start_run(RunRequest {
            sandbox_id: Some(sandbox.id.clone()),
            ..task("read kept.txt")
        })
        .await
        .unwrap();
    let r2 = orch.wait(&run2).await.unwrap();
    assert_eq!(r2.status, RunStatus::Succeeded, "{:?}", r2.error);
    assert!(
        r2.final_message.contains("still here"),
        "{}",
        r2.final_message
    );
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_sandbox_is_never_paused_under_a_running_run() {
    // Every model event takes 400 ms: the run lasts several idle timeouts.
    let slow = Script::slow(400, Script::write_file("slow.txt", "x\n", "done"));
    let Some(h) = Harness::new(slow).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            idle_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let (run, _) = orch
        .start_run(RunRequest {
            sandbox_id: Some(sandbox.id.clone()),
            ..task("write slowly")
        })
        .await
        .unwrap();
    let r = orch.wait(&run).await.unwrap();
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the run outlasted the idle timeout"
    );
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    let events: Vec<_> = orch.events(&run, 0).collect().await;
    assert!(events.iter().all(|e| e.as_ref().unwrap().kind != "error"));
    // Once the run is over, it does pause.
    wait_for_status(&orch, &sandbox.id, SandboxStatus::Paused).await;
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        orch.store().sandbox(&sandbox.id).await.unwrap().status,
        SandboxStatus::Deleted
    );
}

/// Every process's command line on this machine (what any local user can read in /proc).
fn all_command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .collect()
}

#[tokio::test]
async fn a_sandbox_s_secrets_are_never_on_a_command_line_and_its_files_are_private() {
    let Some(h) = Harness::new(Script::text("ok")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let sandbox = orch
        .create_sandbox(SandboxRequest::default())
        .await
        .expect("create sandbox");
    assert_eq!(sandbox.status, SandboxStatus::Running);
    // The warm sandbox's opencode serve and its bubblewrap are running now.
    let password_file = walk(&h.data_dir())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "serve.password"))
        .expect("the sandbox has a serve password file");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&password_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "serve.password is {mode:o}");
    let data_mode = std::fs::metadata(h.data_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(data_mode, 0o700, "the data dir is {data_mode:o}");
    let password = std::fs::read_to_string(&password_file).unwrap();
    assert!(password.len() >= 32);
    // This sandbox's processes (other tests' sandboxes may be running beside it).
    let lines: Vec<String> = all_command_lines()
        .into_iter()
        .filter(|l| l.contains(&sandbox.id))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("bwrap")),
        "no bubblewrap process of the sandbox found to check"
    );
    for line in &lines {
        assert!(
            !line.contains(&password),
            "the serve password is on a command line"
        );
        assert!(
            !line.contains("dsb_"),
            "a sandbox token is on a command line: {line}"
        );
    }
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

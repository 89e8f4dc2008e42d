//! Best-of-N (`run_in_sandbox` with `attempts`): N ordinary runs in N fresh sandboxes under a
//! parent id, with real opencode on the process backend and the scripted fake Anthropic API.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Harness, processes_mentioning};
use delegate_mcp::delegator::{Caller, DelegateError, Delegator, Progress};
use delegate_mcp::tools::{CancelRunInput, RunInSandboxInput, StreamSessionInput};
use delegate_mcp::types::{ErrorKind, RunResult, RunStatus, SandboxStatus};
use delegate_server::delegation::{EmbeddedDelegator, Service};
use delegate_server::orchestrator::Orchestrator;
use delegate_testkit::anthropic::Script;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long any one test waits for its runs.
const PATIENCE: Duration = Duration::from_secs(240);

struct Setup {
    h: Harness,
    orch: Orchestrator,
    delegator: EmbeddedDelegator,
    caller: Caller,
}

async fn setup(script: Script) -> Option<Setup> {
    let h = Harness::new(script).await?;
    let orch = h.orchestrator().await;
    let delegator = EmbeddedDelegator::new(orch.clone());
    let caller = Caller {
        user_id: orch.local_user().id.clone(),
        token_id: None,
        client: None,
        workspace_id: None,
    };
    Some(Setup {
        h,
        orch,
        delegator,
        caller,
    })
}

fn attempts(n: u64, wait: bool) -> RunInSandboxInput {
    RunInSandboxInput {
        task: "create hello.txt".into(),
        attempts: Some(n),
        wait: Some(wait),
        ..Default::default()
    }
}

impl Setup {
    async fn run(
        &self,
        input: RunInSandboxInput,
    ) -> (Result<RunResult, DelegateError>, Vec<Progress>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let result = tokio::time::timeout(
            PATIENCE,
            self.delegator
                .run_in_sandbox(&self.caller, input, tx, CancellationToken::new()),
        )
        .await
        .expect("run_in_sandbox came back in time");
        let mut progress = Vec::new();
        while let Ok(p) = rx.try_recv() {
            progress.push(p);
        }
        (result, progress)
    }

    fn service(&self) -> Service {
        Service::new(self.orch.clone())
    }

    /// Every attempt's sandbox is gone: its row deleted and no process left.
    async fn assert_no_sandbox_left(&self, parent: &RunResult) {
        for attempt in &parent.attempts {
            let row = self
                .orch
                .store()
                .sandbox(&attempt.sandbox_id)
                .await
                .unwrap();
            assert_eq!(row.status, SandboxStatus::Deleted, "{}", attempt.sandbox_id);
            assert_eq!(
                processes_mentioning(&attempt.sandbox_id),
                Vec::<String>::new()
            );
        }
    }
}

#[tokio::test]
async fn three_attempts_succeed_in_three_sandboxes_under_one_parent() {
    let Some(s) = setup(Script::write_file("hello.txt", "hi\n", "written")).await else {
        return;
    };
    let (result, progress) = s.run(attempts(3, true)).await;
    let parent = result.expect("attempts ran");
    assert_eq!(parent.status, RunStatus::Succeeded, "{parent:?}");
    assert!(parent.sandbox_id.is_empty(), "a parent has no sandbox");
    assert_eq!(parent.attempts.len(), 3, "{parent:?}");
    let runs: HashSet<_> = parent.attempts.iter().map(|a| &a.run_id).collect();
    let sandboxes: HashSet<_> = parent.attempts.iter().map(|a| &a.sandbox_id).collect();
    assert_eq!(runs.len(), 3, "distinct run ids");
    assert_eq!(sandboxes.len(), 3, "distinct sandboxes");
    assert!(!runs.contains(&parent.run_id));
    let mut cost = 0.0;
    for a in &parent.attempts {
        assert_eq!(a.status, RunStatus::Succeeded, "{a:?}");
        assert_eq!(
            (a.files_changed, a.additions, a.deletions),
            (1, 1, 0),
            "{a:?}"
        );
        assert!(a.commit.is_some(), "{a:?}");
        assert!(a.duration_ms > 0);
        cost += a.cost_usd;
    }
    assert!((parent.usage.cost_usd - cost).abs() < 1e-9);
    assert!(
        progress
            .iter()
            .any(|p| p.message.starts_with("attempt 3: ")),
        "progress says which attempt: {progress:?}"
    );
    let seqs: Vec<u64> = progress.iter().map(|p| p.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The parent reads back the same through get_run, and each attempt names its parent.
    let service = s.service();
    let again = service
        .get_run(&s.caller, &parent.run_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(again.attempts, parent.attempts);
    for a in &parent.attempts {
        let one = service
            .get_run(&s.caller, &a.run_id.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(one.parent_run_id.as_deref(), Some(parent.run_id.as_str()));
        assert_eq!(one.changed_files.len(), 1);
        // An attempt's change is an ordinary run's: what apply_changes downloads is there.
        let patch = s
            .delegator
            .read_patch(&s.caller, &a.run_id, 1 << 20)
            .await
            .expect("the attempt's patch");
        assert!(String::from_utf8_lossy(&patch).contains("+hi"));
    }
    // The parent's events: one `attempt` event per attempt, and the stream is done.
    let page = s
        .delegator
        .stream_session(
            &s.caller,
            StreamSessionInput {
                run_id: Some(parent.run_id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.events.len(), 3, "{page:?}");
    assert!(page.events.iter().all(|e| e.kind == "attempt"));
    assert!(page.done);
    s.assert_no_sandbox_left(&parent).await;
    s.orch.shutdown().await;
}

#[tokio::test]
async fn cancelling_the_parent_cancels_every_attempt_and_leaves_no_sandbox() {
    let Some(s) = setup(Script::Hang).await else {
        return;
    };
    let (result, _) = s.run(attempts(3, false)).await;
    let parent = result.expect("attempts started");
    assert!(!parent.status.is_terminal(), "{parent:?}");
    assert_eq!(parent.attempts.len(), 3);
    // Mid-way: the model has been asked (and hangs).
    tokio::time::timeout(PATIENCE, s.h.fake.wait_for_requests(1))
        .await
        .expect("an attempt reached the model");
    let out = s
        .delegator
        .cancel_run(
            &s.caller,
            CancelRunInput {
                run_id: parent.run_id.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Cancelled);
    let ended = s
        .service()
        .get_run(&s.caller, &parent.run_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(ended.status, RunStatus::Cancelled);
    assert_eq!(
        ended.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::Cancelled)
    );
    for a in &ended.attempts {
        assert_eq!(a.status, RunStatus::Cancelled, "{a:?}");
    }
    s.assert_no_sandbox_left(&ended).await;
    s.orch.shutdown().await;
}

/// The parent id answers from the moment the start call returns it: every attempt's row
/// carries the parent from its insert, so get_run, stream_session and cancel_run on the parent
/// right after the start call find all of them.
#[tokio::test]
async fn the_parent_answers_get_stream_and_cancel_right_after_the_start_call() {
    let Some(s) = setup(Script::Hang).await else {
        return;
    };
    let service = s.service();
    let (result, _) = s.run(attempts(4, false)).await;
    let started = result.expect("attempts started");
    let parent: delegate_server::ids::RunId = started.run_id.parse().unwrap();
    let now = service.get_run(&s.caller, &parent).await.unwrap();
    assert_eq!(now.attempts.len(), 4, "{now:?}");
    assert!(!now.status.is_terminal(), "{now:?}");
    for a in &now.attempts {
        let row = s.orch.run(&a.run_id.parse().unwrap()).await.unwrap();
        assert_eq!(row.parent_run_id.as_deref(), Some(started.run_id.as_str()));
    }
    let page = s
        .delegator
        .stream_session(
            &s.caller,
            StreamSessionInput {
                run_id: Some(started.run_id.clone()),
                wait_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("the parent's events");
    assert!(!page.done, "{page:?}");
    let out = s
        .delegator
        .cancel_run(
            &s.caller,
            CancelRunInput {
                run_id: started.run_id.clone(),
            },
        )
        .await
        .expect("the parent cancels");
    assert_eq!(out.status, RunStatus::Cancelled);
    let ended = service.get_run(&s.caller, &parent).await.unwrap();
    assert_eq!(ended.attempts.len(), 4);
    assert!(
        ended
            .attempts
            .iter()
            .all(|a| a.status == RunStatus::Cancelled),
        "{ended:?}"
    );
    s.assert_no_sandbox_left(&ended).await;
    s.orch.shutdown().await;
}

#[tokio::test]
async fn one_attempt_failing_leaves_the_others_and_the_parent_shows_both() {
    let Some(s) = setup(Script::write_file("hello.txt", "hi\n", "written")).await else {
        return;
    };
    let (result, _) = s.run(attempts(3, false)).await;
    let started = result.expect("attempts started");
    // The first attempt's proxy token is revoked before its opencode has started, so its model
    // calls are refused (401) while the other two go through.
    let doomed = started.attempts[0].clone();
    s.orch
        .proxy()
        .revoke_sandbox(&doomed.sandbox_id)
        .await
        .unwrap();
    let parent = tokio::time::timeout(
        PATIENCE,
        s.service()
            .wait_run(&s.caller, &started.run_id.parse().unwrap()),
    )
    .await
    .expect("the attempts ended in time")
    .unwrap();
    assert_eq!(parent.status, RunStatus::Succeeded, "{parent:?}");
    assert!(parent.error.is_none());
    let failed: Vec<_> = parent
        .attempts
        .iter()
        .filter(|a| a.status == RunStatus::Failed)
        .collect();
    let succeeded: Vec<_> = parent
        .attempts
        .iter()
        .filter(|a| a.status == RunStatus::Succeeded)
        .collect();
    assert_eq!(failed.len(), 1, "{parent:?}");
    assert_eq!(succeeded.len(), 2, "{parent:?}");
    assert_eq!(failed[0].run_id, doomed.run_id);
    assert!(failed[0].error.is_some(), "{:?}", failed[0]);
    assert_eq!(failed[0].files_changed, 0);
    assert!(succeeded.iter().all(|a| a.files_changed == 1));
    assert!(
        parent.final_message.contains("2 succeeded"),
        "{}",
        parent.final_message
    );
    assert!(
        parent.final_message.contains("1 failed"),
        "{}",
        parent.final_message
    );
    s.assert_no_sandbox_left(&parent).await;
    s.orch.shutdown().await;
}

#[tokio::test]
async fn bad_attempts_are_refused_and_nothing_is_written() {
    let Some(s) = setup(Script::text("never asked")).await else {
        return;
    };
    for (n, sandbox) in [
        (0, None),
        (9, None),
        (2, Some("sbx_0123456789abcdef0123456789abcdef")),
    ] {
        let input = RunInSandboxInput {
            sandbox_id: sandbox.map(str::to_string),
            ..attempts(n, true)
        };
        let (result, _) = s.run(input).await;
        let err = result.expect_err("refused");
        assert!(
            matches!(&err, DelegateError::Invalid(m) if m.starts_with("attempts: ")),
            "{n}: {err}"
        );
    }
    // Not a whole number: the input does not even parse, naming the field.
    for bad in [
        serde_json::json!(2.5),
        serde_json::json!("3"),
        serde_json::json!(-1),
    ] {
        let parsed = serde_json::from_value::<RunInSandboxInput>(
            serde_json::json!({"task": "x", "attempts": bad}),
        );
        assert!(parsed.is_err(), "{bad}");
    }
    let default = s
        .service()
        .list_runs(&s.caller, None, None, 10)
        .await
        .unwrap();
    assert!(default.is_empty(), "{default:?}");
    let sandboxes = s
        .delegator
        .list_sandboxes(&s.caller, Default::default())
        .await
        .unwrap();
    assert!(sandboxes.sandboxes.is_empty());
    assert!(s.h.fake.requests().is_empty());
    s.orch.shutdown().await;
}

/// The migration, the parent written with the row and the attempts query, the same on SQLite and
/// PostgreSQL.
#[tokio::test]
async fn the_store_links_attempts_to_their_parent_on_both_databases() {
    async fn check(store: &dyn delegate_server::store::Store) -> serde_json::Value {
        use delegate_server::ids::{new_id, now_ms};
        use delegate_server::store::{User, Workspace};
        let now = now_ms();
        let user = User {
            id: new_id("usr"),
            email: "a@example.com".into(),
            name: "a".into(),
            created_at: now,
        };
        store.create_user(&user).await.unwrap();
        let ws = Workspace {
            id: new_id("wsp"),
            slug: "w".into(),
            name: "w".into(),
            created_at: now,
        };
        store.create_workspace(&ws, &user.id).await.unwrap();
        let parents = [new_id("run"), new_id("run")];
        // Two attempts of the first parent, one of the second, one single run.
        let mut runs = Vec::new();
        for (i, (status, parent)) in [
            (RunStatus::Succeeded, Some(&parents[0])),
            (RunStatus::Failed, Some(&parents[0])),
            (RunStatus::Running, Some(&parents[1])),
            (RunStatus::Running, None),
        ]
        .into_iter()
        .enumerate()
        {
            let sandbox = common::sandbox_row(&ws.id, SandboxStatus::Running);
            store.insert_sandbox(&sandbox).await.unwrap();
            let run = delegate_server::store::Run {
                created_at: now + i as i64,
                parent_run_id: parent.cloned(),
                ..common::run_row(&sandbox, status)
            };
            store.insert_run(&run).await.unwrap();
            runs.push(run);
        }
        let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let of = |found: Vec<delegate_server::store::Run>| {
            found.into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        let read_back = store.run(&ids[0]).await.unwrap().parent_run_id;
        serde_json::json!({
            "first": of(store.runs_of_parents(&parents[..1]).await.unwrap()) == ids[..2],
            "both": of(store.runs_of_parents(&parents).await.unwrap()) == ids[..3],
            "statuses": store.runs_of_parents(&parents[..1]).await.unwrap().iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
            "read_back": read_back == Some(parents[0].clone()),
            "single": store.run(&ids[3]).await.unwrap().parent_run_id,
            "no_parent": store.runs_of_parents(&[new_id("run")]).await.unwrap().len(),
            "none_asked": store.runs_of_parents(&[]).await.unwrap().len(),
        })
    }
    let sqlite = delegate_server::store::connect("sqlite::memory:")
        .await
        .unwrap();
    let on_sqlite = check(sqlite.as_ref()).await;
    assert_eq!(
        on_sqlite,
        serde_json::json!({
            "first": true,
            "both": true,
            "statuses": ["succeeded", "failed"],
            "read_back": true,
            "single": null,
            "no_parent": 0,
            "none_asked": 0,
        })
    );
    if let Some(on_postgres) =
        common::on_postgres(|store| async move { check(store.as_ref()).await }).await
    {
        assert_eq!(on_postgres, on_sqlite);
    }
}

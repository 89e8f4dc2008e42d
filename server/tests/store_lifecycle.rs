//! One walk through everything the store keeps — users, workspaces, sandboxes, runs, events, tokens,
//! usage — run unchanged against SQLite and a real PostgreSQL, so the two cannot drift apart.

mod common;

use delegate_mcp::types::{
    ChangeKind, ChangedFile, ErrorKind, RunError, RunStatus, SandboxStatus, Usage,
};
use delegate_server::store::{
    NewEvent, Role, Run, RunOutcome, Sandbox, SandboxKind, SqliteStore, Store, StoreError,
    TokenKind, TokenRecord, UsageRecord, User, Workspace, WorkspaceLimits,
};
use serde_json::json;

fn sandbox(id: &str, ws: &str, created_at: i64) -> Sandbox {
    Sandbox {
        id: id.into(),
        workspace_id: ws.into(),
        name: format!("box-{id}"),
        kind: SandboxKind::Warm,
        backend: "process".into(),
        status: SandboxStatus::Creating,
        status_reason: None,
        idle_timeout_s: Some(600),
        meta: json!({"work_dir": "/tmp/x", "n": 1}),
        created_by: Some("user:u1".into()),
        created_at,
        updated_at: created_at,
        base: None,
    }
}

fn event(run: &str, seq: u64, raw: bool) -> NewEvent {
    NewEvent {
        run_id: run.into(),
        seq,
        ts: 1_000 + seq as i64,
        kind: "text".into(),
        data: json!({"text": format!("part {seq}")}),
        raw: raw.then(|| json!({"type": "text", "seq": seq})),
    }
}

async fn lifecycle(store: &dyn Store) {
    // Users and workspaces.
    let user = User {
        id: "u1".into(),
        email: "ada@example.com".into(),
        name: "Ada".into(),
        created_at: 100,
    };
    store.create_user(&user).await.unwrap();
    assert_eq!(store.user_by_id("u1").await.unwrap(), user);
    assert_eq!(store.user_by_email("ada@example.com").await.unwrap(), user);
    assert!(matches!(
        store.create_user(&user).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.user_by_id("nobody").await,
        Err(StoreError::NotFound("user"))
    ));

    let ws = Workspace {
        id: "w1".into(),
        slug: "acme".into(),
        name: "Acme".into(),
        created_at: 110,
    };
    store.create_workspace(&ws, "u1").await.unwrap();
    assert_eq!(store.workspace_by_id("w1").await.unwrap(), ws);
    assert_eq!(store.workspace_by_slug("acme").await.unwrap(), ws);
    // A workspace's egress choice: unset, set, cleared; an unknown workspace is not found.
    assert_eq!(store.workspace_egress(&ws.id).await.unwrap(), None);
    let choice = serde_json::json!({"allowed": ["none", "npm"], "default": "npm"});
    store
        .set_workspace_egress(&ws.id, Some(&choice))
        .await
        .unwrap();
    assert_eq!(store.workspace_egress(&ws.id).await.unwrap(), Some(choice));
    store.set_workspace_egress(&ws.id, None).await.unwrap();
    assert_eq!(store.workspace_egress(&ws.id).await.unwrap(), None);
    assert!(matches!(
        store.set_workspace_egress("ws_missing", None).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.member_role("w1", "u1").await.unwrap(),
        Some(Role::Owner)
    );
    let other = User {
        id: "u2".into(),
        email: "bob@example.com".into(),
        name: "Bob".into(),
        created_at: 120,
    };
    store.create_user(&other).await.unwrap();
    assert_eq!(store.member_role("w1", "u2").await.unwrap(), None);
    store.set_member("w1", "u2", Role::Guest).await.unwrap();
    store.set_member("w1", "u2", Role::Developer).await.unwrap();
    assert_eq!(
        store.member_role("w1", "u2").await.unwrap(),
        Some(Role::Developer)
    );

    // Sandboxes: insert, get, list (newest first, deleted hidden).
    let sb1 = sandbox("s1", "w1", 200);
    let sb2 = sandbox("s2", "w1", 210);
    let mut gone = sandbox("s3", "w1", 220);
    gone.status = SandboxStatus::Deleted;
    for s in [&sb1, &sb2, &gone] {
        store.insert_sandbox(s).await.unwrap();
    }
    assert_eq!(store.sandbox("s1").await.unwrap(), sb1);
    let listed: Vec<String> = store
        .list_sandboxes("w1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ["s2", "s1"]);

    // Sandbox compare-and-set: legal move, then a stale one that changes nothing.
    store
        .set_sandbox_status(
            "s1",
            SandboxStatus::Creating,
            SandboxStatus::Running,
            None,
            300,
        )
        .await
        .unwrap();
    let stale = store
        .set_sandbox_status(
            "s1",
            SandboxStatus::Creating,
            SandboxStatus::Failed,
            Some("boom"),
            310,
        )
        .await;
    match stale {
        Err(StoreError::StaleStatus {
            entity,
            id,
            expected,
            actual,
        }) => {
            assert_eq!((entity, id.as_str()), ("sandbox", "s1"));
            assert_eq!(
                (expected.as_str(), actual.as_str()),
                ("creating", "running")
            );
        }
        other => panic!("expected StaleStatus, got {other:?}"),
    }
    let s1 = store.sandbox("s1").await.unwrap();
    assert_eq!(s1.status, SandboxStatus::Running);
    assert_eq!(s1.status_reason, None);
    assert_eq!(s1.updated_at, 300);
    assert!(matches!(
        store
            .set_sandbox_status(
                "nope",
                SandboxStatus::Creating,
                SandboxStatus::Running,
                None,
                1
            )
            .await,
        Err(StoreError::NotFound("sandbox"))
    ));
    store
        .set_sandbox_meta("s1", &json!({"pid": 42}), 320)
        .await
        .unwrap();
    assert_eq!(store.sandbox("s1").await.unwrap().meta, json!({"pid": 42}));
    let running: Vec<String> = store
        .sandboxes_with_status(&[SandboxStatus::Running, SandboxStatus::Deleted])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(running, ["s1", "s3"]);

    // Runs: insert, queued -> starting -> running.
    let run = Run {
        id: "r1".into(),
        sandbox_id: "s1".into(),
        workspace_id: "w1".into(),
        task: "fix the bug".into(),
        model: Some("claude-sonnet".into()),
        agent: None,
        status: RunStatus::Queued,
        timeout_s: 900,
        created_by: Some("mcp:test".into()),
        created_at: 400,
        started_at: None,
        finished_at: None,
        parent_run_id: None,
        // A budget is the one outcome field besides `base` known when the run is recorded.
        outcome: RunOutcome {
            max_cost_usd: Some(2.5),
            ..RunOutcome::default()
        },
    };
    store.insert_run(&run).await.unwrap();
    assert_eq!(store.run("r1").await.unwrap(), run);
    assert!(matches!(
        store.insert_run(&run).await,
        Err(StoreError::Conflict(_))
    ));
    let mut r2 = run.clone();
    r2.id = "r2".into();
    r2.sandbox_id = "s2".into();
    r2.created_at = 410;
    store.insert_run(&r2).await.unwrap();

    store
        .set_run_status("r1", RunStatus::Queued, RunStatus::Starting, 450)
        .await
        .unwrap();
    assert_eq!(store.run("r1").await.unwrap().started_at, None);
    store
        .set_run_status("r1", RunStatus::Starting, RunStatus::Running, 500)
        .await
        .unwrap();
    let r1 = store.run("r1").await.unwrap();
    assert_eq!(r1.status, RunStatus::Running);
    assert_eq!(r1.started_at, Some(500));
    assert!(matches!(
        store
            .set_run_status("r1", RunStatus::Queued, RunStatus::Starting, 510)
            .await,
        Err(StoreError::StaleStatus { .. })
    ));

    let all: Vec<String> = store
        .list_runs("w1", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all, ["r2", "r1"]);
    let of_s1: Vec<String> = store
        .list_runs("w1", Some("s1"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(of_s1, ["r1"]);
    assert_eq!(store.list_runs("w1", None, 1).await.unwrap().len(), 1);

    // Events: a batch, then a batch with one duplicate that writes nothing.
    store
        .append_events(&[
            event("r1", 1, true),
            event("r1", 2, false),
            event("r1", 3, true),
        ])
        .await
        .unwrap();
    assert!(matches!(
        store
            .append_events(&[event("r1", 4, false), event("r1", 2, false)])
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.event_count("r1").await.unwrap(), 3);
    let after = store.events_after("r1", 1, 100).await.unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(after[0].kind, "text");
    assert_eq!(after[0].ts, 1_002);
    assert_eq!(after[0].data, json!({"text": "part 2"}));
    assert_eq!(after[0].raw, None);
    assert_eq!(after[1].raw, Some(json!({"type": "text", "seq": 3})));

    // Several servers on one database: all event counts of a page in one query, and cancel
    // requests for active runs, which the executing process polls for.
    let ids = ["r1".to_string(), "r2".to_string(), "nope".to_string()];
    assert_eq!(
        store.event_counts(&ids).await.unwrap(),
        [("r1".to_string(), 3)]
    );
    assert!(store.event_counts(&[]).await.unwrap().is_empty());
    assert!(store.cancel_requested(&ids).await.unwrap().is_empty());
    assert!(store.request_cancel("r1", 520).await.unwrap());
    assert!(store.request_cancel("r1", 530).await.unwrap());
    assert!(!store.request_cancel("nope", 530).await.unwrap());
    assert_eq!(store.cancel_requested(&ids).await.unwrap(), ["r1"]);
    assert!(store.cancel_requested(&[]).await.unwrap().is_empty());
    assert_eq!(store.events_after("r1", 0, 1).await.unwrap().len(), 1);

    // Tokens.
    let token = TokenRecord {
        id: "t1".into(),
        kind: TokenKind::Sandbox,
        hash: "ab".repeat(32),
        name: Some("proxy".into()),
        user_id: None,
        sandbox_id: Some("s1".into()),
        workspace_id: Some("w1".into()),
        created_at: 600,
        expires_at: Some(10_000),
        revoked_at: None,
    };
    store.insert_token(&token).await.unwrap();
    assert_eq!(store.token_by_hash(&token.hash).await.unwrap(), token);
    let mut dup = token.clone();
    dup.id = "t2".into();
    assert!(matches!(
        store.insert_token(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    store.revoke_token("t1", 650).await.unwrap();
    store.revoke_token("t1", 660).await.unwrap();
    assert_eq!(
        store.token_by_hash(&token.hash).await.unwrap().revoked_at,
        Some(650)
    );
    assert!(matches!(
        store.revoke_token("t9", 1).await,
        Err(StoreError::NotFound("token"))
    ));
    let mut api = token.clone();
    api.id = "t3".into();
    api.kind = TokenKind::Api;
    api.hash = "cd".repeat(32);
    api.user_id = Some("u1".into());
    store.insert_token(&api).await.unwrap();
    store.revoke_sandbox_tokens("s1", 700).await.unwrap();
    assert_eq!(
        store.token_by_hash(&api.hash).await.unwrap().revoked_at,
        Some(700)
    );
    assert!(matches!(
        store.token_by_hash("missing").await,
        Err(StoreError::NotFound("token"))
    ));

    // One-time tokens (agent registration codes): claimed once, never when expired or of
    // another kind.
    let code = |id: &str, hash: &str, expires_at| TokenRecord {
        id: id.into(),
        kind: TokenKind::AgentCode,
        hash: hash.repeat(32),
        name: None,
        user_id: Some("u1".into()),
        sandbox_id: None,
        workspace_id: Some("w1".into()),
        created_at: 800,
        expires_at: Some(expires_at),
        revoked_at: None,
    };
    store.insert_token(&code("c1", "e1", 2_000)).await.unwrap();
    store.insert_token(&code("c2", "e2", 900)).await.unwrap();
    let claimed = store
        .claim_token(&"e1".repeat(32), TokenKind::AgentCode, 1_000)
        .await
        .unwrap();
    assert_eq!(claimed.id, "c1");
    assert_eq!(claimed.revoked_at, Some(1_000));
    for (hash, kind) in [
        ("e1", TokenKind::AgentCode),
        ("e2", TokenKind::AgentCode),
        ("cd", TokenKind::AgentCode),
        ("e1", TokenKind::Tunnel),
    ] {
        assert!(matches!(
            store.claim_token(&hash.repeat(32), kind, 1_001).await,
            Err(StoreError::NotFound("token"))
        ));
    }

    // Usage: two calls, summed; the first call without a TTFT does not count for it.
    assert_eq!(
        store.run_usage("r1").await.unwrap(),
        (Usage::default(), None)
    );
    let call = |id: &str, at: i64, ttft: Option<i64>, input: u64| UsageRecord {
        id: id.into(),
        sandbox_id: "s1".into(),
        run_id: Some("r1".into()),
        workspace_id: "w1".into(),
        model: Some("claude-sonnet".into()),
        usage: Usage {
            input_tokens: input,
            output_tokens: 10,
            cache_read_tokens: 5,
            cache_write_tokens: 1,
            cost_usd: 0.25,
        },
        status_code: 200,
        ttft_ms: ttft,
        duration_ms: 900,
        created_at: at,
    };
    store.record_usage(&call("c0", 790, None, 1)).await.unwrap();
    store
        .record_usage(&call("c1", 800, Some(120), 100))
        .await
        .unwrap();
    store
        .record_usage(&call("c2", 810, Some(80), 50))
        .await
        .unwrap();
    let (sum, ttft) = store.run_usage("r1").await.unwrap();
    assert_eq!(
        sum,
        Usage {
            input_tokens: 151,
            output_tokens: 30,
            cache_read_tokens: 15,
            cache_write_tokens: 3,
            cost_usd: 0.75,
        }
    );
    assert_eq!(ttft, Some(120));

    // Today's spend of a workspace is a sum over its usage rows from a moment on.
    assert!((store.workspace_spend_since("w1", 0).await.unwrap() - 0.75).abs() < 1e-9);
    assert!((store.workspace_spend_since("w1", 800).await.unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(store.workspace_spend_since("w1", 811).await.unwrap(), 0.0);
    assert_eq!(store.workspace_spend_since("w404", 0).await.unwrap(), 0.0);
    // Workspace limits: none until set, then replaced whole.
    assert_eq!(
        store.workspace_limits("w1").await.unwrap(),
        WorkspaceLimits::default()
    );
    let limits = WorkspaceLimits {
        max_run_cost_usd: Some(1.5),
        daily_budget_usd: Some(20.0),
        max_concurrent_runs: Some(3),
        max_warm_sandboxes: None,
    };
    store
        .set_workspace_limits("w1", &limits, Some("u1"), 820)
        .await
        .unwrap();
    assert_eq!(store.workspace_limits("w1").await.unwrap(), limits);
    let fewer = WorkspaceLimits {
        max_warm_sandboxes: Some(2),
        ..WorkspaceLimits::default()
    };
    store
        .set_workspace_limits("w1", &fewer, None, 830)
        .await
        .unwrap();
    assert_eq!(store.workspace_limits("w1").await.unwrap(), fewer);
    assert!(matches!(
        store.set_workspace_limits("w404", &fewer, None, 830).await,
        Err(StoreError::Conflict(_))
    ));

    // Finish with an outcome; read it back whole.
    let outcome = RunOutcome {
        final_message: "Fixed it.".into(),
        changed_files: vec![
            ChangedFile {
                path: "src/a.rs".into(),
                change: ChangeKind::Modified,
                additions: 3,
                deletions: 1,
                binary: false,
            },
            ChangedFile {
                binary: true,
                ..ChangedFile::new("src/b.png", ChangeKind::Added)
            },
        ],
        diff: "--- a\n+++ b\n".into(),
        diff_truncated: true,
        usage: sum,
        error: Some(RunError {
            kind: ErrorKind::UpstreamUnavailable,
            message: "529 overloaded".into(),
        }),
        ttft_ms: ttft,
        // Written by finish_run; `base` is the inserted run's and stays.
        commit: Some("0f3a".repeat(10)),
        base: None,
        egress: Some(delegate_mcp::types::EgressSummary {
            allowed: 3,
            denied: 2,
            bytes: 4096,
        }),
        max_cost_usd: Some(2.5),
    };
    store
        .finish_run("r1", RunStatus::Running, RunStatus::Failed, &outcome, 900)
        .await
        .unwrap();
    let done = store.run("r1").await.unwrap();
    // An ended run takes no cancel request.
    assert!(!store.request_cancel("r1", 910).await.unwrap());
    assert_eq!(
        done,
        Run {
            status: RunStatus::Failed,
            started_at: Some(500),
            finished_at: Some(900),
            outcome: outcome.clone(),
            ..run.clone()
        }
    );
    assert!(matches!(
        store
            .finish_run(
                "r1",
                RunStatus::Running,
                RunStatus::Succeeded,
                &outcome,
                910
            )
            .await,
        Err(StoreError::StaleStatus { .. })
    ));
    assert!(matches!(
        store
            .finish_run(
                "r404",
                RunStatus::Running,
                RunStatus::Succeeded,
                &outcome,
                910
            )
            .await,
        Err(StoreError::NotFound("run"))
    ));

    // Reconciliation queries.
    let queued: Vec<String> = store
        .runs_with_status(&[RunStatus::Queued, RunStatus::Running])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(queued, ["r2"]);
    let failed = store.runs_with_status(&[RunStatus::Failed]).await.unwrap();
    assert_eq!(failed, [done]);
    assert!(store.runs_with_status(&[]).await.unwrap().is_empty());
}

/// Retention's queries: which runs may go (ended before the cut-off; never one still going nor
/// the latest run of a live warm sandbox), events in small deletes, a run with its usage, and
/// usage rows of no run.
async fn retention(store: &dyn Store) {
    use common::{run_row, sandbox_row};
    store
        .create_user(&User {
            id: "ru".into(),
            email: "ret@example.com".into(),
            name: "R".into(),
            created_at: 1,
        })
        .await
        .unwrap();
    let ws = Workspace {
        id: "rw".into(),
        slug: "ret".into(),
        name: "R".into(),
        created_at: 1,
    };
    store.create_workspace(&ws, "ru").await.unwrap();
    let ephemeral = Sandbox {
        kind: SandboxKind::Ephemeral,
        ..sandbox_row(&ws.id, SandboxStatus::Deleted)
    };
    let warm = sandbox_row(&ws.id, SandboxStatus::Running);
    let gone = sandbox_row(&ws.id, SandboxStatus::Deleted);
    for s in [&ephemeral, &warm, &gone] {
        store.insert_sandbox(s).await.unwrap();
    }
    let ended = |sandbox: &Sandbox, id: &str, created_at: i64, finished: Option<i64>| Run {
        id: id.into(),
        created_at,
        started_at: Some(created_at),
        finished_at: finished,
        status: if finished.is_some() {
            RunStatus::Succeeded
        } else {
            RunStatus::Running
        },
        ..run_row(sandbox, RunStatus::Succeeded)
    };
    let runs = [
        ended(&ephemeral, "old", 10, Some(1000)),
        ended(&warm, "warm-older", 20, Some(1001)),
        // The warm sandbox's latest: its next run starts from this one's work.
        ended(&warm, "warm-latest", 30, Some(1002)),
        // The latest of a deleted warm sandbox may go.
        ended(&gone, "gone", 40, Some(1003)),
        ended(&ephemeral, "going", 50, None),
        ended(&ephemeral, "recent", 60, Some(5000)),
    ];
    for r in &runs {
        store.insert_run(r).await.unwrap();
    }
    let events: Vec<NewEvent> = (1..=5).map(|seq| event("old", seq, true)).collect();
    store.append_events(&events).await.unwrap();
    let usage = |id: &str, run: Option<&str>, created_at: i64| UsageRecord {
        id: id.into(),
        sandbox_id: ephemeral.id.clone(),
        run_id: run.map(str::to_string),
        workspace_id: ws.id.clone(),
        model: None,
        usage: Usage::default(),
        status_code: 200,
        ttft_ms: None,
        duration_ms: 1,
        created_at,
    };
    store
        .record_usage(&usage("u-old", Some("old"), 900))
        .await
        .unwrap();
    store
        .record_usage(&usage("u-none-old", None, 900))
        .await
        .unwrap();
    store
        .record_usage(&usage("u-none-new", None, 9000))
        .await
        .unwrap();

    assert_eq!(
        store.expired_runs(2000, 100).await.unwrap(),
        ["old", "warm-older", "gone"]
    );
    assert_eq!(
        store.expired_runs(2000, 2).await.unwrap(),
        ["old", "warm-older"]
    );
    assert_eq!(store.expired_runs(6000, 100).await.unwrap().len(), 4);

    // Events go a few per statement.
    assert_eq!(store.prune_run_events("old", 2).await.unwrap(), 2);
    assert_eq!(store.event_count("old").await.unwrap(), 3);
    assert_eq!(store.prune_run_events("old", 2).await.unwrap(), 2);
    assert_eq!(store.prune_run_events("old", 2).await.unwrap(), 1);
    assert_eq!(store.prune_run_events("old", 2).await.unwrap(), 0);

    assert_eq!(store.delete_ended_run("old").await.unwrap(), (1, 1));
    assert!(matches!(
        store.run("old").await,
        Err(StoreError::NotFound("run"))
    ));
    // A run still going is never deleted, nor its usage.
    assert_eq!(store.delete_ended_run("going").await.unwrap(), (0, 0));
    assert_eq!(store.run("going").await.unwrap().status, RunStatus::Running);

    assert_eq!(store.prune_usage(2000, 10).await.unwrap(), 1);
    assert_eq!(store.prune_usage(2000, 10).await.unwrap(), 0);
    let (_, runs_left) = store.workspace_usage(&ws.id).await.unwrap();
    assert_eq!(runs_left, 5);
}

/// Workspace git credentials: set, replaced, listed without tokens, removed, per workspace.
async fn git_credentials(store: &dyn Store) {
    store
        .create_user(&User {
            id: "gu".into(),
            email: "git@example.com".into(),
            name: "G".into(),
            created_at: 1,
        })
        .await
        .unwrap();
    for id in ["gw1", "gw2"] {
        let ws = Workspace {
            id: id.into(),
            slug: id.into(),
            name: id.into(),
            created_at: 1,
        };
        store.create_workspace(&ws, "gu").await.unwrap();
    }
    assert_eq!(
        store.git_credential("gw1", "github.com").await.unwrap(),
        None
    );
    store
        .put_git_credential("gw1", "github.com", "bot", "sealed-1", Some("gu"), 100)
        .await
        .unwrap();
    store
        .put_git_credential("gw1", "github.com", "bot2", "sealed-2", None, 200)
        .await
        .unwrap();
    store
        .put_git_credential("gw1", "git.corp:8443", "me", "sealed-3", None, 300)
        .await
        .unwrap();
    assert_eq!(
        store.git_credential("gw1", "github.com").await.unwrap(),
        Some(("bot2".to_string(), "sealed-2".to_string()))
    );
    assert_eq!(
        store.git_credential("gw2", "github.com").await.unwrap(),
        None
    );
    let listed = store.git_credentials("gw1").await.unwrap();
    let hosts: Vec<(&str, &str, i64, i64)> = listed
        .iter()
        .map(|c| {
            (
                c.host.as_str(),
                c.username.as_str(),
                c.created_at,
                c.updated_at,
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            ("git.corp:8443", "me", 300, 300),
            ("github.com", "bot2", 100, 200)
        ]
    );
    assert!(
        store
            .delete_git_credential("gw1", "github.com")
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_git_credential("gw1", "github.com")
            .await
            .unwrap()
    );
    assert_eq!(store.git_credentials("gw1").await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_retention_and_git_credentials() {
    let store = delegate_server::store::connect("sqlite::memory:")
        .await
        .unwrap();
    retention(store.as_ref()).await;
    git_credentials(store.as_ref()).await;
}

#[tokio::test]
async fn postgres_retention_and_git_credentials() {
    common::on_postgres(|store| async move {
        retention(store.as_ref()).await;
        git_credentials(store.as_ref()).await;
    })
    .await;
}

#[tokio::test]
async fn sqlite_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("delegate.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    assert_eq!(store.kind(), "sqlite");
    lifecycle(&store).await;
    // Reopening runs the (already applied) migrations again and sees the same data.
    drop(store);
    let again = SqliteStore::connect(&url).await.unwrap();
    assert_eq!(again.event_count("r1").await.unwrap(), 3);
}

#[tokio::test]
async fn sqlite_in_memory_lifecycle() {
    let store = delegate_server::store::connect("sqlite::memory:")
        .await
        .unwrap();
    lifecycle(store.as_ref()).await;
}

#[tokio::test]
async fn postgres_lifecycle() {
    common::on_postgres(|store| async move { lifecycle(store.as_ref()).await }).await;
}

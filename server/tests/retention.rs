//! Retention against a real orchestrator: runs that ended before the cut-off go with their
//! events, usage and files under `<data>/runs/<id>/`; a warm sandbox's latest run and a run still
//! going stay; the counters `/metrics` shows move; `DELEGATE_RETAIN_RUNS_DAYS=0` keeps everything.

mod common;

use delegate_mcp::types::{RunStatus, SandboxStatus};
use delegate_server::orchestrator::{PruneReport, run_dir};
use delegate_server::store::{NewEvent, Run, SandboxKind};
use delegate_testkit::anthropic::Script;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn ended_runs_go_with_their_files_and_the_rest_stays() {
    let Some(h) = common::Harness::new(Script::text("unused")).await else {
        return;
    };
    let mut settings = h.settings();
    settings.retain_runs_days = 0;
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    let store = orch.store().clone();
    let (ws, _) = store
        .workspaces_of_user(&orch.local_user().id)
        .await
        .unwrap()
        .remove(0);
    let ephemeral = delegate_server::store::Sandbox {
        kind: SandboxKind::Ephemeral,
        ..common::sandbox_row(&ws.id, SandboxStatus::Deleted)
    };
    let warm = common::sandbox_row(&ws.id, SandboxStatus::Running);
    store.insert_sandbox(&ephemeral).await.unwrap();
    store.insert_sandbox(&warm).await.unwrap();
    let old = |sandbox, created_at: i64, status| Run {
        created_at,
        finished_at: (status != RunStatus::Running).then_some(created_at + 1),
        ..common::run_row(sandbox, status)
    };
    let gone = old(&ephemeral, 10, RunStatus::Succeeded);
    let warm_older = old(&warm, 20, RunStatus::Failed);
    let warm_latest = old(&warm, 30, RunStatus::Succeeded);
    let going = old(&ephemeral, 40, RunStatus::Running);
    for r in [&gone, &warm_older, &warm_latest, &going] {
        store.insert_run(r).await.unwrap();
        let dir = run_dir(&h.data_dir(), &r.id);
        tokio::fs::create_dir_all(&dir).await.unwrap();
        tokio::fs::write(dir.join("change.patch"), "x")
            .await
            .unwrap();
    }
    let events: Vec<NewEvent> = (1..=7)
        .map(|seq| NewEvent {
            run_id: gone.id.clone(),
            seq,
            ts: 11,
            kind: "text".into(),
            data: serde_json::json!({ "seq": seq }),
            raw: None,
        })
        .collect();
    store.append_events(&events).await.unwrap();

    // 0 days: nothing is pruned, whatever its age.
    assert_eq!(orch.prune_expired().await.unwrap(), PruneReport::default());
    assert!(store.run(&gone.id).await.is_ok());

    let report = orch.prune_before(1_000).await.unwrap();
    assert_eq!(
        report,
        PruneReport {
            runs: 2,
            events: 7,
            usage: 0
        }
    );
    for (run, kept) in [
        (&gone, false),
        (&warm_older, false),
        (&warm_latest, true),
        (&going, true),
    ] {
        assert_eq!(store.run(&run.id).await.is_ok(), kept, "{}", run.id);
        assert_eq!(
            run_dir(&h.data_dir(), &run.id).exists(),
            kept,
            "the files of {}",
            run.id
        );
    }
    assert_eq!(store.event_count(&gone.id).await.unwrap(), 0);
    assert_eq!(orch.pruned().runs.load(Ordering::Relaxed), 2);
    assert_eq!(orch.pruned().events.load(Ordering::Relaxed), 7);
    // A second sweep finds nothing more.
    assert_eq!(
        orch.prune_before(1_000).await.unwrap(),
        PruneReport::default()
    );
    orch.shutdown().await;
}

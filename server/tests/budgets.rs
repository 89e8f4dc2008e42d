//! Budgets and quotas, enforced: a run's `max_cost_usd` and its workspace's daily budget stop
//! model calls at the proxy; runs over a workspace's concurrency quota wait in `queued`, in order,
//! and can be cancelled there; the warm sandbox quota refuses one more. Real opencode against the
//! scripted fake Anthropic API.

mod common;

use std::time::Duration;

use common::Harness;
use delegate_mcp::types::{ErrorKind, RunStatus};
use delegate_server::orchestrator::{Error, Orchestrator, RunRequest, SandboxRequest};
use delegate_server::store::WorkspaceLimits;
use delegate_testkit::anthropic::Script;

fn task(text: &str) -> RunRequest {
    RunRequest {
        task: text.into(),
        created_by: Some("test".into()),
        ..Default::default()
    }
}

async fn default_workspace(orch: &Orchestrator) -> String {
    orch.store()
        .workspace_by_slug("default")
        .await
        .expect("the default workspace")
        .id
}

async fn set_limits(orch: &Orchestrator, limits: WorkspaceLimits) {
    let ws = default_workspace(orch).await;
    orch.set_workspace_limits(&ws, limits, None)
        .await
        .expect("limits are valid");
}

/// The fake's main (non-title) requests, and how many of them carried a tool result.
fn main_requests(h: &Harness) -> (usize, usize) {
    let main: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| !r.is_title_request())
        .collect();
    let with_tool_result = main
        .iter()
        .filter(|r| r.body.to_string().contains("tool_result"))
        .count();
    (main.len(), with_tool_result)
}

#[tokio::test]
async fn a_run_over_its_max_cost_is_refused_its_next_call_and_fails_budget_exceeded() {
    // Two model calls to finish: the tool call, then (with its result) the final text.
    let Some(h) = Harness::new(Script::write_file("a.txt", "a\n", "done")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    // One call of the fake costs $0.0006 on sonnet (100 in, 20 out): the first crosses this.
    let (run_id, _) = orch
        .start_run(RunRequest {
            max_cost_usd: Some(0.0001),
            ..task("write a.txt")
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    let error = r.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::BudgetExceeded, "{error:?}");
    assert!(error.message.contains("max_cost_usd"), "{}", error.message);
    assert!(
        r.usage.cost_usd >= 0.0001,
        "the call that crossed the budget completed and counts: {:?}",
        r.usage
    );
    // The follow-up call with the tool's result never reached the upstream.
    let (main, with_tool_result) = main_requests(&h);
    assert_eq!(
        with_tool_result, 0,
        "a call after the budget was spent went through"
    );
    assert!(main <= 1, "{main} main calls reached the upstream");
    let stored = orch.run(&run_id).await.unwrap();
    assert_eq!(stored.outcome.max_cost_usd, Some(0.0001));
}

#[tokio::test]
async fn a_workspace_over_its_daily_budget_refuses_new_runs() {
    let Some(h) = Harness::new(Script::text("done")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    set_limits(
        &orch,
        WorkspaceLimits {
            daily_budget_usd: Some(0.0001),
            ..Default::default()
        },
    )
    .await;
    // Under budget when it starts; its first call spends the day.
    let (first, _) = orch.start_run(task("say done")).await.unwrap();
    let r = orch.wait(&first).await.unwrap();
    assert!(r.usage.cost_usd > 0.0001, "{r:?}");
    let seen = h.fake.requests().len();
    let refused = orch.start_run(task("one more")).await;
    match refused {
        Err(Error::BudgetExceeded(m)) => {
            assert!(m.contains("resets at 00:00 UTC"), "{m}");
            assert!(m.contains("$0.00"), "{m}");
        }
        other => panic!("expected budget_exceeded, got {other:?}"),
    }
    assert_eq!(
        h.fake.requests().len(),
        seen,
        "nothing reached the upstream"
    );
    let (spent, _) = orch
        .spent_today(&default_workspace(&orch).await)
        .await
        .unwrap();
    assert!(
        (spent - r.usage.cost_usd).abs() < 1e-9,
        "{spent} vs {:?}",
        r.usage
    );
}

#[tokio::test]
async fn runs_over_the_concurrency_quota_queue_in_order_and_can_be_cancelled_there() {
    let Some(h) = Harness::new(Script::Hang).await else {
        return;
    };
    let orch = h.orchestrator().await;
    set_limits(
        &orch,
        WorkspaceLimits {
            max_concurrent_runs: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (first, _) = orch.start_run(task("hang")).await.unwrap();
    let (second, _) = orch.start_run(task("second")).await.unwrap();
    let (third, _) = orch.start_run(task("third")).await.unwrap();
    let r2 = orch.result(&second).await.unwrap();
    assert_eq!(r2.status, RunStatus::Queued);
    assert_eq!(r2.queue_position, Some(1));
    assert_eq!(orch.result(&third).await.unwrap().queue_position, Some(2));
    // The first is talking to the (hanging) model; the others are still waiting.
    tokio::time::timeout(Duration::from_secs(120), h.fake.wait_for_requests(1))
        .await
        .expect("the first run reached the upstream");
    assert_eq!(orch.result(&third).await.unwrap().status, RunStatus::Queued);

    // Cancelling a queued run ends it at once and frees its place.
    orch.cancel_run(&second).await.unwrap();
    let r2 = orch.wait(&second).await.unwrap();
    assert_eq!(r2.status, RunStatus::Cancelled, "{r2:?}");
    assert_eq!(orch.run(&second).await.unwrap().started_at, None);
    let r3 = orch.result(&third).await.unwrap();
    assert_eq!((r3.status, r3.queue_position), (RunStatus::Queued, Some(1)));

    // When the first ends, the third gets its slot and runs.
    h.fake.set_script(Script::text("third done"));
    orch.cancel_run(&first).await.unwrap();
    let r1 = orch.wait(&first).await.unwrap();
    assert_eq!(r1.status, RunStatus::Cancelled);
    let r3 = orch.wait(&third).await.unwrap();
    assert_eq!(r3.status, RunStatus::Succeeded, "{r3:?}");
    assert_eq!(r3.final_message, "third done");
    let (a, c) = (
        orch.run(&first).await.unwrap(),
        orch.run(&third).await.unwrap(),
    );
    assert!(
        c.started_at.unwrap() >= a.finished_at.unwrap(),
        "the third started only after the first ended"
    );
}

#[tokio::test]
async fn the_warm_sandbox_quota_refuses_the_next_create_sandbox() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    set_limits(
        &orch,
        WorkspaceLimits {
            max_warm_sandboxes: Some(1),
            ..Default::default()
        },
    )
    .await;
    let first = orch
        .create_sandbox(SandboxRequest::default())
        .await
        .expect("the first is within the quota");
    match orch.create_sandbox(SandboxRequest::default()).await {
        Err(Error::Limit(m)) => assert!(m.contains("max_warm_sandboxes"), "{m}"),
        other => panic!("expected a limit error, got {other:?}"),
    }
    // Deleting one makes room again.
    orch.delete_sandbox(&first.id.parse().unwrap())
        .await
        .unwrap();
    let again = orch
        .create_sandbox(SandboxRequest::default())
        .await
        .expect("room after the delete");
    orch.delete_sandbox(&again.id.parse().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_limits_and_budgets_are_refused_before_anything_is_written() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let ws = default_workspace(&orch).await;
    for bad in [
        WorkspaceLimits {
            daily_budget_usd: Some(-1.0),
            ..Default::default()
        },
        WorkspaceLimits {
            max_run_cost_usd: Some(f64::NAN),
            ..Default::default()
        },
        WorkspaceLimits {
            max_concurrent_runs: Some(0),
            ..Default::default()
        },
    ] {
        let e = orch.set_workspace_limits(&ws, bad, None).await;
        assert!(matches!(e, Err(Error::Invalid(_))), "{bad:?}: {e:?}");
    }
    assert_eq!(
        orch.store().workspace_limits(&ws).await.unwrap(),
        WorkspaceLimits::default()
    );
    for max in [0.0, -3.0, f64::INFINITY] {
        let e = orch
            .start_run(RunRequest {
                max_cost_usd: Some(max),
                ..task("x")
            })
            .await;
        assert!(
            matches!(&e, Err(Error::Invalid(m)) if m.contains("max_cost_usd")),
            "{max}: {e:?}"
        );
    }
    assert!(h.fake.requests().is_empty());
}

//! Two real `delegate serve` processes on one PostgreSQL: a run started through one is listed,
//! streamed (SSE) and cancelled through the other. Runs execute in the process that started them;
//! the other reads them from the store and hands a cancel over through it.

mod common;

use std::time::{Duration, Instant};

use common::served::{Served, api_token};
use common::{Harness, processes_mentioning};
use delegate_mcp::rest::RunList;
use delegate_mcp::tools::CancelRunOutput;
use delegate_mcp::types::{RunResult, RunStatus};
use delegate_testkit::anthropic::Script;
use delegate_testkit::postgres::TestPostgres;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_on_one_server_is_listed_streamed_and_cancelled_through_another() {
    let Some(pg) = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
    else {
        return;
    };
    // The model never answers: the run stays `running` until it is cancelled.
    let Some(h) = Harness::new(Script::Hang).await else {
        return;
    };
    let a = Served::start(&h, &[("DATABASE_URL", pg.url.as_str())], "a").await;
    let b = Served::start(&h, &[("DATABASE_URL", pg.url.as_str())], "b").await;
    let token = api_token(
        &h,
        &[("DATABASE_URL", pg.url.as_str())],
        &h.dir.path().join("admin"),
    )
    .await;
    let http = reqwest::Client::new();

    // Started through A.
    let resp = http
        .post(format!("{}/api/runs", a.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "task": "say hi", "wait": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", a.log());
    let started: RunResult = resp.json().await.unwrap();
    let run_id = started.run_id.clone();

    // Listed through B.
    let listed: RunList = http
        .get(format!("{}/api/runs", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.runs.iter().any(|r| r.run_id == run_id), "{listed:?}");

    // Streamed through B: the status events up to `running`, which A writes while B follows.
    let resp = http
        .get(format!("{}/api/runs/{run_id}/events", b.base))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = resp.bytes_stream().eventsource();
    let mut statuses = Vec::new();
    while !statuses.iter().any(|s| s == "running") {
        let event = tokio::time::timeout(Duration::from_secs(120), sse.next())
            .await
            .unwrap_or_else(|_| panic!("no SSE event through B for 120 s\nA:\n{}", a.log()))
            .expect("the SSE stream stays open while the run is active")
            .expect("SSE event");
        if event.event == "status" {
            let e: delegate_mcp::types::Event = serde_json::from_str(&event.data).unwrap();
            statuses.push(e.data["status"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(statuses, ["starting", "running"]);

    // Cancelled through B: the call returns once A has ended the run.
    let t = Instant::now();
    let resp = http
        .post(format!("{}/api/runs/{run_id}/cancel", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", b.log());
    let cancelled: CancelRunOutput = resp.json().await.unwrap();
    let took = t.elapsed();
    assert_eq!(
        cancelled.status,
        RunStatus::Cancelled,
        "A:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert!(took < Duration::from_secs(10), "the cancel took {took:?}");

    // B's SSE stream sees the end too.
    let mut end = None;
    while end.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(30), sse.next())
            .await
            .expect("the stream ends after the run")
            .expect("an `end` event before the stream closes")
            .unwrap();
        if event.event == "end" {
            end = Some(event.data);
        }
    }
    assert!(end.unwrap().contains("cancelled"));

    // Nothing of the run's sandbox is left in A's data dir.
    let marker = a.data.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_mentioning(&marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(processes_mentioning(&marker), Vec::<String>::new());
    // A did the cancelling, on B's request.
    assert!(
        a.log().contains("cancelling on another server's request"),
        "{}",
        a.log()
    );

    a.stop().await;
    b.stop().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_process_sandbox_is_not_marked_deleted_while_it_runs() {
    let Some(pg) = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
    else {
        return;
    };
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let db = [("DATABASE_URL", pg.url.as_str())];
    let a = Served::start(&h, &db, "a").await;
    let b = Served::start(&h, &db, "b").await;
    let token = api_token(&h, &db, &h.dir.path().join("admin")).await;
    let http = reqwest::Client::new();

    // A warm process sandbox, made (and run) by A.
    let resp = http
        .post(format!("{}/api/sandboxes", a.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "on-a" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", a.log());
    let sandbox: serde_json::Value = resp.json().await.unwrap();
    let id = sandbox["sandbox_id"]
        .as_str()
        .or_else(|| sandbox["id"].as_str())
        .unwrap_or_else(|| panic!("no id in {sandbox}"))
        .to_string();
    let a_id = std::fs::read_to_string(a.data.join("instance-id")).unwrap();
    let a_id = a_id.trim();

    // B cannot stop A's processes: it refuses, naming A, and the sandbox stays as it is.
    let resp = http
        .delete(format!("{}/api/sandboxes/{id}", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT, "{}", b.log());
    let body: serde_json::Value = resp.json().await.unwrap();
    let message = body["error"]["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(message.contains(a_id), "{body}");
    let status = |base: String| {
        let http = http.clone();
        let token = token.clone();
        let id = id.clone();
        async move {
            let v: serde_json::Value = http
                .get(format!("{base}/api/sandboxes/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["status"].as_str().unwrap_or_default().to_string()
        }
    };
    assert_eq!(status(b.base.clone()).await, "running");
    assert!(
        !processes_mentioning(&a.data.display().to_string()).is_empty(),
        "A's sandbox still runs"
    );

    // Through A it goes, processes and all.
    let resp = http
        .delete(format!("{}/api/sandboxes/{id}", a.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", a.log());
    assert_eq!(status(b.base.clone()).await, "deleted");
    let marker = a.data.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_mentioning(&marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(processes_mentioning(&marker), Vec::<String>::new());

    a.stop().await;
    b.stop().await;
    drop(pg);
}

/// Starts a run through `base` (not waiting for it) and returns its first result.
async fn post_run(http: &reqwest::Client, base: &str, token: &str, task: &str) -> RunResult {
    let resp = http
        .post(format!("{base}/api/runs"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "task": task, "wait": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.unwrap()
}

/// A run's result as `base` reports it.
async fn get_run(http: &reqwest::Client, base: &str, token: &str, run_id: &str) -> RunResult {
    http.get(format!("{base}/api/runs/{run_id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `(status, queue_position)` of a run, as every server in `bases` reports it; they must agree.
async fn place(
    http: &reqwest::Client,
    bases: &[&str],
    token: &str,
    run_id: &str,
) -> (RunStatus, Option<u64>) {
    let mut seen = Vec::new();
    for base in bases {
        let r = get_run(http, base, token, run_id).await;
        seen.push((r.status, r.queue_position));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    seen[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_run_quota_holds_across_servers_and_their_line_is_one() {
    let Some(pg) = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
    else {
        return;
    };
    // The model never answers: a run holds its slot until it is cancelled.
    let Some(h) = Harness::new(Script::Hang).await else {
        return;
    };
    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        ("DELEGATE_WORKSPACE_MAX_CONCURRENT_RUNS", "1"),
    ];
    let a = Served::start(&h, &env, "a").await;
    let b = Served::start(&h, &env, "b").await;
    let token = api_token(&h, &env, &h.dir.path().join("admin")).await;
    let http = reqwest::Client::new();
    let both = [a.base.as_str(), b.base.as_str()];

    // A's run takes the workspace's one slot and talks to the model.
    let on_a = post_run(&http, &a.base, &token, "first, on A").await;
    tokio::time::timeout(Duration::from_secs(120), h.fake.wait_for_requests(1))
        .await
        .unwrap_or_else(|_| panic!("A's run never reached the model\n{}", a.log()));
    // B has slots of its own, but not the workspace's: its run waits, first in line, and A sees
    // the same line.
    let on_b = post_run(&http, &b.base, &token, "second, on B").await;
    assert_eq!(
        (on_b.status, on_b.queue_position),
        (RunStatus::Queued, Some(1))
    );
    // A later run on A waits behind it, although A is where the slot will free.
    let later_on_a = post_run(&http, &a.base, &token, "third, on A").await;
    assert_eq!(
        place(&http, &both, &token, &later_on_a.run_id).await,
        (RunStatus::Queued, Some(2))
    );
    assert_eq!(
        place(&http, &both, &token, &on_b.run_id).await,
        (RunStatus::Queued, Some(1))
    );
    // Past B's polling interval (1 s) twice: had B counted only its own runs, its run would
    // have started by now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        place(&http, &both, &token, &on_b.run_id).await,
        (RunStatus::Queued, Some(1))
    );
    assert_eq!(
        h.fake.requests().len(),
        1,
        "only A's first run reached the model"
    );

    // A's run ends: B's (the oldest waiting) starts, not A's own later one.
    let resp = http
        .post(format!("{}/api/runs/{}/cancel", a.base, on_a.run_id))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", a.log());
    tokio::time::timeout(Duration::from_secs(120), h.fake.wait_for_requests(2))
        .await
        .unwrap_or_else(|_| panic!("B's run never started\nA:\n{}\nB:\n{}", a.log(), b.log()));
    assert_eq!(
        place(&http, &both, &token, &on_b.run_id).await.0,
        RunStatus::Running
    );
    assert_eq!(
        place(&http, &both, &token, &later_on_a.run_id).await,
        (RunStatus::Queued, Some(1))
    );

    for (server, run) in [(&b, &on_b), (&a, &later_on_a)] {
        let resp = http
            .post(format!("{}/api/runs/{}/cancel", server.base, run.run_id))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{}", server.log());
    }
    assert_eq!(h.fake.requests().len(), 2, "the third run never started");
    a.stop().await;
    b.stop().await;
    drop(pg);
}

/// Creates a warm sandbox through `base`: its id, or the error code and message.
async fn create_warm(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
) -> Result<String, (StatusCode, String, String)> {
    let resp = http
        .post(format!("{base}/api/sandboxes"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    if status == StatusCode::CREATED {
        return Ok(body["sandbox_id"]
            .as_str()
            .or_else(|| body["id"].as_str())
            .unwrap_or_else(|| panic!("no id in {body}"))
            .to_string());
    }
    Err((
        status,
        common::error_code(status, &body),
        body["error"]["message"].as_str().unwrap_or_default().into(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_sandbox_quota_holds_across_servers_even_for_racing_creates() {
    let Some(pg) = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
    else {
        return;
    };
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        ("DELEGATE_WORKSPACE_MAX_WARM_SANDBOXES", "1"),
    ];
    let a = Served::start(&h, &env, "a").await;
    let b = Served::start(&h, &env, "b").await;
    let token = api_token(&h, &env, &h.dir.path().join("admin")).await;
    let http = reqwest::Client::new();

    // One on A fills the quota; B refuses the next with the quota's error.
    let first = create_warm(&http, &a.base, &token, "first")
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", a.log()));
    let (status, code, message) = create_warm(&http, &b.base, &token, "second")
        .await
        .expect_err("B must see A's sandbox in the quota");
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "limit")
    );
    assert!(message.contains("max_warm_sandboxes"), "{message}");
    let resp = http
        .delete(format!("{}/api/sandboxes/{first}", a.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", a.log());

    // Six creates at once, three on each server, into a quota of one: exactly one is made.
    let racing: Vec<_> = (0..6)
        .map(|i| {
            let server = if i % 2 == 0 { &a } else { &b };
            let (http, base, token) = (http.clone(), server.base.clone(), token.clone());
            tokio::spawn(async move {
                (
                    i % 2,
                    create_warm(&http, &base, &token, &format!("race-{i}")).await,
                )
            })
        })
        .collect();
    let mut made = Vec::new();
    for outcome in futures::future::join_all(racing).await {
        match outcome.unwrap() {
            (server, Ok(id)) => made.push((server, id)),
            (_, Err((status, code, _))) => {
                assert_eq!(
                    (status, code.as_str()),
                    (StatusCode::TOO_MANY_REQUESTS, "limit")
                );
            }
        }
    }
    assert_eq!(made.len(), 1, "{made:?}");
    for (server, id) in made {
        let base = if server == 0 { &a.base } else { &b.base };
        let resp = http
            .delete(format!("{base}/api/sandboxes/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    a.stop().await;
    b.stop().await;
    drop(pg);
}

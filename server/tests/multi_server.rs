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

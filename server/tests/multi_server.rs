//! Two real `delegate serve` processes on one PostgreSQL: a run started through one is listed,
//! streamed (SSE) and cancelled through the other. Runs execute in the process that started them;
//! the other reads them from the store and hands a cancel over through it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Harness, processes_mentioning};
use delegate_mcp::rest::RunList;
use delegate_mcp::tools::CancelRunOutput;
use delegate_mcp::types::{RunResult, RunStatus};
use delegate_testkit::anthropic::Script;
use delegate_testkit::postgres::TestPostgres;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::StatusCode;
use tokio::io::AsyncBufReadExt;

/// One `delegate serve` child process.
struct Served {
    child: tokio::process::Child,
    base: String,
    data: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    async fn start(h: &Harness, database_url: &str, name: &str) -> Served {
        let data = h.dir.path().join(name);
        let mut child = serve_command(h, database_url, &data)
            .arg("serve")
            .spawn()
            .expect("spawn delegate serve");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening on ").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!(
                "delegate serve {name} exited before listening:\n{}",
                log.lock().unwrap().join("\n")
            );
        })
        .await
        .expect("delegate serve listens within 60 s");
        // Keep draining stderr (a full pipe would stall the server), and keep it for failures.
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Served {
            child,
            base,
            data,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM (a graceful shutdown), then the exit.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => assert!(status.unwrap().success(), "{}", self.log()),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!("delegate serve did not stop within 30 s:\n{}", self.log());
            }
        }
    }
}

/// `delegate` against the shared database, with its own data dir.
fn serve_command(h: &Harness, database_url: &str, data: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_delegate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(h.env())
        .env("DELEGATE_DATA_DIR", data)
        .env("DATABASE_URL", database_url)
        .env("DELEGATE_LISTEN", "127.0.0.1:0")
        .env("DELEGATE_LOG", "info")
        .current_dir(h.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

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
    let a = Served::start(&h, &pg.url, "a").await;
    let b = Served::start(&h, &pg.url, "b").await;
    let token = serve_command(&h, &pg.url, &h.dir.path().join("admin"))
        .args(["token", "create", "--name", "multi-server"])
        .output()
        .await
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
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

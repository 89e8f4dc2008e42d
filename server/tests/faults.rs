//! Fault injection (issue 14): `delegate serve` killed mid-run, PostgreSQL restarted under a
//! running run, and the data dir's disk filled by a sandbox. Each ends in a defined state, no
//! event written before the fault is lost, and the server (or its successor) takes the next run.
//! (Killed sandbox processes and containers are in `leaks.rs`; an allocation past the memory
//! limit in `docker.rs` and the process backend's cgroup tests; upstream 401, 429, 5xx and a
//! stream broken mid-way in `proxy.rs` and `run_cli.rs`.)

mod common;

use std::time::Duration;

use common::served::{Served, api_token};
use common::{Harness, processes_mentioning};
use delegate_mcp::types::{Event, RunResult, RunStatus};
use delegate_testkit::anthropic::Script;
use delegate_testkit::postgres::TestPostgres;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn start_run(&self, task: &str) -> RunResult {
        let resp = self
            .http
            .post(format!("{}/api/runs", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "task": task, "wait": false }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.unwrap()
    }

    /// The run's events, waiting (long polls) until there are at least `n` or it ended.
    async fn events(&self, run_id: &str, n: usize) -> Vec<Event> {
        let mut events: Vec<Event> = Vec::new();
        for _ in 0..120 {
            let page: Value = self
                .get(&format!(
                    "/api/runs/{run_id}/events?after={}&wait_seconds=2",
                    events.last().map_or(0, |e| e.seq)
                ))
                .await;
            let batch: Vec<Event> = serde_json::from_value(page["events"].clone()).unwrap();
            events.extend(batch);
            if events.len() >= n || page["done"] == true {
                break;
            }
        }
        events
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.json().await.unwrap()
    }

    /// Polls until the run has ended (a server restart or a database failover in between is
    /// answered by retrying), returning its result.
    async fn ended(&self, run_id: &str) -> RunResult {
        for _ in 0..480 {
            let resp = self
                .http
                .get(format!("{}/api/runs/{run_id}", self.base))
                .bearer_auth(&self.token)
                .send()
                .await;
            if let Ok(resp) = resp
                && resp.status() == StatusCode::OK
            {
                let r: RunResult = resp.json().await.unwrap();
                if !matches!(
                    r.status,
                    RunStatus::Queued | RunStatus::Starting | RunStatus::Running
                ) {
                    return r;
                }
            }
            // Polled: across a failover there is no stream to wait on.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("run {run_id} did not end within two minutes");
    }
}

/// The events before the fault are all still there, in order, as the first events of the run.
fn assert_kept(before: &[Event], after: &[Event]) {
    assert!(!before.is_empty());
    let seqs = |e: &[Event]| e.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert!(
        after.len() >= before.len(),
        "{} < {}",
        after.len(),
        before.len()
    );
    assert_eq!(seqs(&after[..before.len()]), seqs(before));
    for (a, b) in before.iter().zip(after) {
        assert_eq!(a.data, b.data, "event {} changed", a.seq);
    }
}

fn slow_write() -> Script {
    Script::slow(200, Script::write_file("out.txt", "written\n", "done"))
}

#[tokio::test]
async fn a_killed_server_s_run_is_lost_with_its_events_kept_and_its_successor_works() {
    let Some(h) = Harness::new(slow_write()).await else {
        return;
    };
    let token = api_token(&h, &[], &h.dir.path().join("s")).await;
    let served = Served::start(&h, &[], "s").await;
    let api = Api {
        http: reqwest::Client::new(),
        base: served.base.clone(),
        token,
    };
    let run = api.start_run("write out.txt").await;
    let before = api.events(&run.run_id, 3).await;
    served.crash().await;
    // The sandbox dies with the server that ran it.
    let sandbox_id = run.sandbox_id.clone();
    for _ in 0..50 {
        if processes_mentioning(&sandbox_id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processes_mentioning(&sandbox_id), Vec::<String>::new());

    let served = Served::start(&h, &[], "s").await;
    let api = Api {
        base: served.base.clone(),
        ..api
    };
    let lost = api.ended(&run.run_id).await;
    assert_eq!(lost.status, RunStatus::Lost, "{lost:?}");
    let after = api.events(&run.run_id, usize::MAX).await;
    assert_kept(&before, &after);
    let next = api.start_run("write out.txt").await;
    assert_eq!(api.ended(&next.run_id).await.status, RunStatus::Succeeded);
    served.stop().await;
}

#[tokio::test]
async fn a_postgres_failover_mid_run_ends_the_run_defined_and_loses_no_event() {
    let Some(pg) = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
    else {
        return;
    };
    let Some(h) = Harness::new(slow_write()).await else {
        return;
    };
    let env = [("DATABASE_URL", pg.url.as_str())];
    let token = api_token(&h, &env, &h.dir.path().join("s")).await;
    let served = Served::start(&h, &env, "s").await;
    let api = Api {
        http: reqwest::Client::new(),
        base: served.base.clone(),
        token,
    };
    let run = api.start_run("write out.txt").await;
    let before = api.events(&run.run_id, 3).await;
    let pg = tokio::task::spawn_blocking(move || pg.restart().map(|()| pg))
        .await
        .unwrap()
        .expect("restart PostgreSQL");
    let ended = api.ended(&run.run_id).await;
    assert!(
        matches!(ended.status, RunStatus::Succeeded | RunStatus::Failed),
        "{ended:?}\n{}",
        served.log()
    );
    if ended.status == RunStatus::Failed {
        assert!(ended.error.is_some(), "a failure says why: {ended:?}");
    }
    let after = api.events(&run.run_id, usize::MAX).await;
    assert_kept(&before, &after);
    let next = api.start_run("write out.txt").await;
    let next = api.ended(&next.run_id).await;
    assert_eq!(next.status, RunStatus::Succeeded, "{}", served.log());
    served.stop().await;
    drop(pg);
}

/// A tmpfs of `mb` MiB mounted on `dir` (root only: `None`, after saying why, elsewhere);
/// unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    async fn mount(dir: &std::path::Path, mb: u64) -> Option<SmallDisk> {
        tokio::fs::create_dir_all(dir).await.unwrap();
        let out = tokio::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .await
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            return delegate_testkit::real::unavailable("a small tmpfs (root)", &why);
        }
        Some(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    #[allow(clippy::disallowed_methods)] // a drop cannot await; umount -l returns at once
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_sandbox_that_fills_the_data_disk_fails_its_run_and_the_server_recovers() {
    let Some(h) = Harness::new(Script::slow(
        100,
        Script::bash(
            "head -c 200000000 /dev/zero > fill.bin; echo filled",
            "tried",
        ),
    ))
    .await
    else {
        return;
    };
    let data = h.dir.path().join("s");
    let Some(_disk) = SmallDisk::mount(&data, 96).await else {
        return;
    };
    let token = api_token(&h, &[], &data).await;
    let served = Served::start(&h, &[], "s").await;
    let api = Api {
        http: reqwest::Client::new(),
        base: served.base.clone(),
        token,
    };
    let run = api.start_run("fill the disk").await;
    let before = api.events(&run.run_id, 2).await;
    let ended = tokio::time::timeout(Duration::from_secs(90), api.ended(&run.run_id))
        .await
        .unwrap_or_else(|_| panic!("the run did not end:\n{}", served.log()));
    assert!(
        matches!(ended.status, RunStatus::Succeeded | RunStatus::Failed),
        "{ended:?}\n{}",
        served.log()
    );
    let after = api.events(&run.run_id, usize::MAX).await;
    assert_kept(&before, &after);
    // The ephemeral sandbox's files went with it: the disk has room again, and the next run
    // works.
    h.fake.set_script(Script::slow(
        100,
        Script::write_file("ok.txt", "ok\n", "done"),
    ));
    let next = api.start_run("write ok.txt").await;
    let next = api.ended(&next.run_id).await;
    assert_eq!(
        next.status,
        RunStatus::Succeeded,
        "{next:?}\n{}",
        served.log()
    );
    served.stop().await;
}

//! The list endpoints with a large database: 1,000 sandboxes and 10,000 runs in one workspace,
//! `GET /api/sandboxes` and `GET /api/runs?limit=50` against a real `delegate serve` (the release
//! build under `cargo bench`), on SQLite and on PostgreSQL, and the server's memory at rest.
//! Prints a Markdown section for BENCHMARKS.md.
//!
//!   DELEGATE_OPENCODE_BIN=.tools/node_modules/opencode-linux-x64/bin/opencode \
//!     cargo bench -p delegate-server --bench lists [-- --requests 500]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{arg, percentile};

use delegate_mcp::types::{
    ChangeKind, ChangedFile, ErrorKind, RunError, RunStatus, SandboxStatus, Usage,
};
use delegate_server::ids::{new_id, now_ms};
use delegate_server::store::{NewEvent, Run, RunOutcome, Sandbox, SandboxKind, Store};
use delegate_testkit::postgres::TestPostgres;
use tokio::io::AsyncBufReadExt;

const SANDBOXES: usize = 1_000;
const RUNS_PER_SANDBOX: usize = 10;
const EVENTS_PER_RUN: u64 = 8;

#[tokio::main]
async fn main() {
    delegate_server::net::install_crypto();
    let requests = arg("--requests", 500);
    let opencode = std::env::var("DELEGATE_OPENCODE_BIN").unwrap_or_else(|_| "opencode".into());
    let tmp = tempfile::tempdir().unwrap();

    let mut rows = Vec::new();
    let sqlite = format!("sqlite://{}/lists.db", tmp.path().display());
    rows.push(measure("SQLite", &sqlite, tmp.path(), &opencode, requests).await);
    let pg = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
        .expect("PostgreSQL is needed for this benchmark");
    rows.push(measure("PostgreSQL", &pg.url, tmp.path(), &opencode, requests).await);

    let mut out = format!(
        "## List endpoints with 1,000 sandboxes and 10,000 runs\n\n\
         One workspace holding {SANDBOXES} sandboxes (500 paused warm, 100 failed, 400 deleted \
         ephemeral: 600 listed) and {} runs (10 per sandbox; 85% succeeded with a final message, \
         two changed files, a diff and usage; 10% failed, 5% cancelled; {EVENTS_PER_RUN} events \
         each), written through the Store. A release `delegate serve` answers {requests} requests \
         of each endpoint, alternating, from one in-process client with bearer auth (after 20 \
         warm-up requests each).\n\n\
         | database | `GET /api/sandboxes` p50 / p99 | `GET /api/runs?limit=50` p50 / p99 | \
         response sizes | RSS after start-up | RSS after the load |\n\
         |---|---|---|---|---|---|\n",
        SANDBOXES * RUNS_PER_SANDBOX
    );
    for r in &rows {
        out += r;
    }
    out += "\n";
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    drop(pg);
}

/// Seeds a fresh database, serves it, and measures; one table row.
async fn measure(
    name: &str,
    database_url: &str,
    tmp: &Path,
    opencode: &str,
    requests: usize,
) -> String {
    let t = Instant::now();
    let store = delegate_server::store::connect(database_url).await.unwrap();
    seed(store.as_ref()).await;
    eprintln!("{name}: seeded in {:.1} s", t.elapsed().as_secs_f64());
    drop(store);
    if database_url.starts_with("postgres") {
        // What autovacuum does within a minute of a bulk load: without statistics the planner
        // takes the 10,000 rows for a few dozen and sorts them instead of walking the index.
        let pool = sqlx::PgPool::connect(database_url).await.unwrap();
        sqlx::query("ANALYZE").execute(&pool).await.unwrap();
        pool.close().await;
    }

    let data = tmp.join(name);
    let env = [
        ("DELEGATE_DATA_DIR", data.display().to_string()),
        ("DATABASE_URL", database_url.to_string()),
        ("ANTHROPIC_API_KEY", "sk-ant-bench".to_string()),
        ("DELEGATE_OPENCODE_BIN", opencode.to_string()),
        ("DELEGATE_BACKEND", "process".to_string()),
        ("DELEGATE_LISTEN", "127.0.0.1:0".to_string()),
        ("DELEGATE_LOG", "info".to_string()),
    ];
    let delegate = env!("CARGO_BIN_EXE_delegate");
    let token = tokio::process::Command::new(delegate)
        .args(["token", "create"])
        .envs(env.iter().cloned())
        .output()
        .await
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let mut serve = tokio::process::Command::new(delegate)
        .arg("serve")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = serve.id().unwrap();
    let mut lines = tokio::io::BufReader::new(serve.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("delegate serve printed its address");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Settled: start-up allocations done, nothing asked yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start = rss_kib(pid);

    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let get = |path: &'static str| {
        let (client, url, token) = (client.clone(), format!("{base}{path}"), token.clone());
        async move {
            let t = Instant::now();
            let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            let body = resp.bytes().await.unwrap();
            (t.elapsed().as_secs_f64() * 1000.0, body)
        }
    };
    let (_, body) = get("/api/sandboxes").await;
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 600);
    let sandboxes_bytes = body.len();
    let (_, body) = get("/api/runs?limit=50").await;
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let runs = listed["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 50);
    assert_eq!(runs[0]["event_count"], EVENTS_PER_RUN);
    let runs_bytes = body.len();

    let (mut sandboxes, mut runs) = (Vec::new(), Vec::new());
    for i in 0..requests + 20 {
        let (s, _) = get("/api/sandboxes").await;
        let (r, _) = get("/api/runs?limit=50").await;
        if i >= 20 {
            sandboxes.push(s);
            runs.push(r);
        }
    }
    let rss_load = rss_kib(pid);
    let _ = serve.start_kill();
    let _ = serve.wait().await;
    format!(
        "| {name} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {} KiB / {} KiB | {:.1} MiB | {:.1} MiB |\n",
        percentile(&mut sandboxes, 0.5),
        percentile(&mut sandboxes, 0.99),
        percentile(&mut runs, 0.5),
        percentile(&mut runs, 0.99),
        sandboxes_bytes / 1024,
        runs_bytes / 1024,
        rss_start as f64 / 1024.0,
        rss_load as f64 / 1024.0,
    )
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 1,000 sandboxes and 10,000 runs in the `default` workspace, spread over the last 30 days.
async fn seed(store: &dyn Store) {
    let (_, ws) = delegate_server::bootstrap::ensure_local_user(store)
        .await
        .unwrap();
    let start = now_ms() - 30 * 86_400_000;
    let step = 30 * 86_400_000 / (SANDBOXES * RUNS_PER_SANDBOX) as i64;
    for i in 0..SANDBOXES {
        let (kind, status) = match i % 10 {
            0..5 => (SandboxKind::Warm, SandboxStatus::Paused),
            5 => (SandboxKind::Warm, SandboxStatus::Failed),
            _ => (SandboxKind::Ephemeral, SandboxStatus::Deleted),
        };
        let created = start + (i * RUNS_PER_SANDBOX) as i64 * step;
        let sandbox = Sandbox {
            id: new_id("sbx"),
            workspace_id: ws.id.clone(),
            name: format!("sandbox {i}"),
            kind,
            backend: "process".into(),
            status,
            status_reason: (status == SandboxStatus::Failed)
                .then(|| "the server restarted and the sandbox's processes ended with it".into()),
            idle_timeout_s: None,
            meta: serde_json::json!({}),
            created_by: Some("cli".into()),
            created_at: created,
            updated_at: created,
            base: None,
        };
        store.insert_sandbox(&sandbox).await.unwrap();
        for j in 0..RUNS_PER_SANDBOX {
            let n = i * RUNS_PER_SANDBOX + j;
            let created = start + n as i64 * step;
            let (status, error) = match n % 20 {
                0 | 1 => (
                    RunStatus::Failed,
                    Some(RunError {
                        kind: ErrorKind::AgentFailed,
                        message: "opencode exited with code 1: model refused".into(),
                    }),
                ),
                2 => (
                    RunStatus::Cancelled,
                    Some(RunError {
                        kind: ErrorKind::Cancelled,
                        message: "the run was cancelled".into(),
                    }),
                ),
                _ => (RunStatus::Succeeded, None),
            };
            let succeeded = status == RunStatus::Succeeded;
            let run = Run {
                id: new_id("run"),
                sandbox_id: sandbox.id.clone(),
                workspace_id: ws.id.clone(),
                task: format!("Add input validation to handler {n} and a test for it."),
                model: Some("anthropic/claude-sonnet-4-5".into()),
                agent: None,
                status,
                timeout_s: 1800,
                created_by: Some("mcp:claude-code".into()),
                created_at: created,
                started_at: Some(created + 40),
                finished_at: Some(created + 45_000),
                parent_run_id: None,
                outcome: RunOutcome {
                    final_message: if succeeded {
                        "Added validation for empty names and a test covering it.".into()
                    } else {
                        String::new()
                    },
                    changed_files: if succeeded {
                        vec![
                            ChangedFile::new("src/handler.rs", ChangeKind::Modified),
                            ChangedFile::new("tests/handler.rs", ChangeKind::Added),
                        ]
                    } else {
                        Vec::new()
                    },
                    diff: if succeeded {
                        "--- a/src/handler.rs\n+++ b/src/handler.rs\n@@ -1,3 +1,6 @@\n \
                         fn handle(name: &str) {\n+    if name.is_empty() {\n+        return;\n+    }\n"
                            .repeat(4)
                    } else {
                        String::new()
                    },
                    diff_truncated: false,
                    usage: Usage {
                        input_tokens: 12_000,
                        output_tokens: 800,
                        cache_read_tokens: 30_000,
                        cache_write_tokens: 2_000,
                        cost_usd: 0.05,
                    },
                    error,
                    ttft_ms: Some(900),
                    base: None,
                    commit: None,
                    egress: None,
                    max_cost_usd: None,
                },
            };
            store.insert_run(&run).await.unwrap();
            let events: Vec<NewEvent> = (1..=EVENTS_PER_RUN)
                .map(|seq| NewEvent {
                    run_id: run.id.clone(),
                    seq,
                    ts: created + seq as i64 * 1000,
                    kind: "text".into(),
                    data: serde_json::json!({ "text": "working on it" }),
                    raw: None,
                })
                .collect();
            store.append_events(&events).await.unwrap();
        }
    }
}

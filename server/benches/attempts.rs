//! Best-of-N: `run_in_sandbox` with `attempts: 4` ÷ the same task as one run, wall time, with
//! the scripted model at a model's pace (every streamed event delayed, about 1.5 s a turn), the
//! two interleaved in one process so machine noise hits both alike. Prints a Markdown report for
//! BENCHMARKS.md ("Attempts").
//!
//!   DELEGATE_OPENCODE_BIN=.tools/node_modules/opencode-linux-x64/bin/opencode \
//!     nice -n 10 cargo bench -p delegate-server --bench attempts \
//!       [-- --runs 5 --attempts 4 --delay-ms 150 --pool 4]
//!   DOCKER_HOST=unix:///run/delegate-dockerd/docker.sock ... adds the docker backend.
//!
//! `--pool N` measures each backend twice, without a warm pool and with `DELEGATE_WARM_POOL=N`
//! (refilled, untimed, before every call, so each call finds it full).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Env, arg, median};

use delegate_mcp::delegator::{Caller, Delegator};
use delegate_mcp::tools::RunInSandboxInput;
use delegate_mcp::types::RunStatus;
use delegate_server::delegation::EmbeddedDelegator;
use delegate_server::settings::{BackendChoice, Settings};
use delegate_testkit::anthropic::{FakeAnthropic, Script};
use tokio_util::sync::CancellationToken;

const TASK: &str = "create hello.txt saying hi";

#[tokio::main]
async fn main() {
    delegate_server::net::install_crypto();
    let opencode = std::env::var_os("DELEGATE_OPENCODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .expect("set DELEGATE_OPENCODE_BIN to the opencode binary");
    let runs = arg("--runs", 5);
    let attempts = arg("--attempts", 4) as u64;
    let delay_ms = arg("--delay-ms", 150) as u64;
    let pool = arg("--pool", 0);
    let fake = FakeAnthropic::start(Script::slow(
        delay_ms,
        Script::write_file("hello.txt", "hi\n", "done"),
    ))
    .await
    .unwrap();
    let turn = one_turn(&fake).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut backends = vec![("process", BackendChoice::Process)];
    if std::env::var_os("DOCKER_HOST").is_some() {
        backends.push(("docker", BackendChoice::Docker));
    }
    let mut out = format!(
        "Machine: {} cores; {runs} rounds per backend after one to warm up; every streamed event \
         of the fake model delayed {delay_ms} ms: one tool-call turn takes {turn:.2} s.\n\n\
         | backend | warm pool | one run, median | {attempts} attempts, median | **ratio** (target <= 1.5) |\n\
         |---|---|---|---|---|\n",
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(0),
    );
    let pools = if pool > 0 { vec![0, pool] } else { vec![0] };
    for (name, backend) in backends {
        for &pool in &pools {
            let data = tmp.path().join(format!("{name}-{pool}"));
            let (one, many) = measure(backend, &opencode, &fake, &data, runs, attempts, pool).await;
            out += &format!(
                "| {name} | {} | {one:.2} s | {many:.2} s | **{:.3}** |\n",
                if pool > 0 {
                    pool.to_string()
                } else {
                    "none".into()
                },
                many / one
            );
        }
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
}

/// Medians of one run and of `attempts` attempts, interleaved on one orchestrator with a warm
/// pool of `pool` sandboxes (none for 0).
async fn measure(
    backend: BackendChoice,
    opencode: &Path,
    fake: &FakeAnthropic,
    data: &Path,
    runs: usize,
    attempts: u64,
    pool: usize,
) -> (f64, f64) {
    let mut pairs = vec![
        ("DELEGATE_DATA_DIR".into(), data.display().to_string()),
        ("ANTHROPIC_API_KEY".into(), "sk-ant-bench".into()),
        ("ANTHROPIC_BASE_URL".into(), fake.base_url()),
        (
            "DELEGATE_OPENCODE_BIN".into(),
            opencode.display().to_string(),
        ),
        ("DELEGATE_SANDBOX_LIMITS".into(), "optional".into()),
    ];
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        pairs.push(("DOCKER_HOST".into(), host));
    }
    let mut settings = Settings::load(None, &Env(pairs)).unwrap();
    settings.backend = backend;
    settings.relay_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_delegate")));
    settings.warm_pool = pool;
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    let delegator = EmbeddedDelegator::new(orch.clone());
    let caller = Caller {
        user_id: orch.local_user().id.clone(),
        token_id: None,
        client: None,
        workspace_id: None,
    };
    let mut single = Vec::new();
    let mut fanned = Vec::new();
    for round in 0..runs + 1 {
        for n in [1, attempts] {
            let (progress, _) = tokio::sync::mpsc::channel(1);
            let input = RunInSandboxInput {
                task: TASK.into(),
                attempts: Some(n),
                ..Default::default()
            };
            tokio::time::timeout(Duration::from_secs(300), orch.pool_ready(pool))
                .await
                .expect("the warm pool refills");
            let t = Instant::now();
            let r = delegator
                .run_in_sandbox(&caller, input, progress, CancellationToken::new())
                .await
                .unwrap();
            let s = t.elapsed().as_secs_f64();
            assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
            if n > 1 {
                assert_eq!(r.attempts.len() as u64, n);
                assert!(r.attempts.iter().all(|a| a.status == RunStatus::Succeeded));
            }
            if round > 0 {
                if n == 1 {
                    single.push(s);
                } else {
                    fanned.push(s);
                }
            }
        }
    }
    orch.shutdown().await;
    (median(&mut single), median(&mut fanned))
}

/// How long the scripted model takes for one tool-call turn, streamed to its end.
async fn one_turn(fake: &FakeAnthropic) -> f64 {
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": true,
        "tools": [{"name": "write", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": TASK}],
    });
    let t = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "sk-ant-bench")
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let _ = resp.bytes().await.unwrap();
    t.elapsed().as_secs_f64()
}

//! The warm pool (`DELEGATE_WARM_POOL`), on the process backend and (with DOCKER_HOST) docker,
//! side by side in one process, interleaved so machine noise hits all sides alike. Prints a
//! Markdown report for BENCHMARKS.md ("Warm pool").
//!
//!   DOCKER_HOST=unix:///run/delegate-dockerd/docker.sock \
//!   DELEGATE_OPENCODE_BIN=.tools/node_modules/opencode-linux-x64/bin/opencode \
//!     nice -n 10 cargo bench -p delegate-server --bench pool [-- --runs 9]
//!
//! Per backend, each round (the first only warms up):
//! 1. an ephemeral run that claims a pooled sandbox (the pool refilled, untimed, before it);
//! 2. the same run in a warm sandbox (`sandbox_id`);
//! 3. the same run ephemeral without a pool (a fresh sandbox), for reference.
//!
//! Then: claim → sandbox ready for the task (the call to the run's `running` event, which comes
//! once the pooled sandbox is seeded), p50 and p90; and the memory an idle pooled sandbox holds
//! (process: RSS and PSS summed over its processes; docker: the container's memory usage).

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;
use support::{Env, arg, median, percentile};

use delegate_mcp::types::RunStatus;
use delegate_server::ids::now_ms;
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxRequest};
use delegate_server::settings::{BackendChoice, Settings};
use delegate_testkit::anthropic::{FakeAnthropic, Script};
use futures::StreamExt;

const TASK: &str = "create hello.txt saying hi";

async fn orchestrator(
    backend: BackendChoice,
    pool: usize,
    opencode: &Path,
    fake: &FakeAnthropic,
    data: &Path,
) -> Orchestrator {
    let mut env = vec![
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
        env.push(("DOCKER_HOST".into(), host));
    }
    let mut s: Settings = Settings::load(None, &Env(env)).unwrap();
    s.backend = backend;
    s.warm_pool = pool;
    s.relay_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_delegate")));
    delegate_server::app::embedded(s).await.unwrap()
}

/// A run's wall time (seconds) and the time from the call to its `running` event (ms).
async fn timed_run(orch: &Orchestrator, sandbox_id: Option<String>) -> (f64, f64, String) {
    let called = now_ms();
    let t = Instant::now();
    let (id, sandbox) = orch
        .start_run(RunRequest {
            task: TASK.into(),
            sandbox_id,
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&id).await.unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    let running = orch
        .events(&id, 0)
        .filter_map(|e| async move {
            e.ok()
                .filter(|e| e.kind == "status" && e.data["status"] == "running")
                .map(|e| e.ts)
        })
        .boxed()
        .next()
        .await
        .expect("a running event");
    (wall, (running - called) as f64, sandbox.to_string())
}

/// Memory of an idle pooled sandbox in MiB: (RSS summed, PSS summed) over the processes under
/// the bubblewrap process that mentions its id.
fn process_memory(sandbox_id: &str) -> (f64, f64) {
    let mut parent = std::collections::HashMap::<u32, Vec<u32>>::new();
    let mut roots = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command's closing parenthesis: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        parent.entry(ppid).or_default().push(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(sandbox_id) {
            roots.push(pid);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut todo = roots;
    while let Some(pid) = todo.pop() {
        if seen.insert(pid) {
            todo.extend(parent.get(&pid).into_iter().flatten());
        }
    }
    let (mut rss, mut pss) = (0u64, 0u64);
    for pid in seen {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        for line in rollup.lines() {
            let kib = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("Rss:") {
                rss += kib(line);
            } else if line.starts_with("Pss:") {
                pss += kib(line);
            }
        }
    }
    (rss as f64 / 1024.0, pss as f64 / 1024.0)
}

/// A docker sandbox container's memory usage in MiB, as `docker stats` counts it (usage minus
/// the inactive page cache).
async fn docker_memory(sandbox_id: &str) -> f64 {
    use bollard::query_parameters::StatsOptionsBuilder;
    let docker = bollard::Docker::connect_with_host(&std::env::var("DOCKER_HOST").unwrap())
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let options = StatsOptionsBuilder::new()
        .stream(false)
        .one_shot(false)
        .build();
    let stats = docker
        .stats(&format!("delegate-{sandbox_id}"), Some(options))
        .next()
        .await
        .expect("stats")
        .expect("stats of the pooled container");
    let memory = stats.memory_stats.unwrap_or_default();
    let usage = memory.usage.unwrap_or(0);
    let inactive = memory
        .stats
        .as_ref()
        .and_then(|s| s.get("inactive_file").copied())
        .unwrap_or(0);
    usage.saturating_sub(inactive) as f64 / (1024.0 * 1024.0)
}

struct Figures {
    name: &'static str,
    pooled: f64,
    warm: f64,
    fresh: f64,
    ready_p50: f64,
    ready_p90: f64,
    fresh_ready_p50: f64,
    memory: String,
}

async fn measure(
    backend: BackendChoice,
    name: &'static str,
    runs: usize,
    opencode: &Path,
    fake: &FakeAnthropic,
    tmp: &Path,
) -> Figures {
    let pooled = orchestrator(
        backend,
        1,
        opencode,
        fake,
        &tmp.join(format!("{name}-pool")),
    )
    .await;
    let fresh = orchestrator(
        backend,
        0,
        opencode,
        fake,
        &tmp.join(format!("{name}-fresh")),
    )
    .await;
    let warm = pooled
        .create_sandbox(SandboxRequest::default())
        .await
        .unwrap();

    // Idle memory of one pooled sandbox, measured before any run (settled: serve listening).
    pooled.pool_ready(1).await;
    let idle = pooled.pooled_sandbox_ids().remove(0);
    let memory = match backend {
        BackendChoice::Docker => format!("{:.0} MiB (container usage)", docker_memory(&idle).await),
        _ => {
            let (rss, pss) = process_memory(&idle);
            format!("{rss:.0} MiB RSS, {pss:.0} MiB PSS (summed over its processes)")
        }
    };

    let (mut on_pool, mut on_warm, mut on_fresh) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ready, mut fresh_ready) = (Vec::new(), Vec::new());
    for i in 0..runs + 1 {
        pooled.pool_ready(1).await;
        let waiting = pooled.pooled_sandbox_ids();
        let (p, p_ready, sandbox) = timed_run(&pooled, None).await;
        assert!(
            waiting.contains(&sandbox),
            "the run claimed the pooled sandbox"
        );
        let (w, _, _) = timed_run(&pooled, Some(warm.id.clone())).await;
        let (f, f_ready, _) = timed_run(&fresh, None).await;
        if i > 0 {
            on_pool.push(p);
            on_warm.push(w);
            on_fresh.push(f);
            ready.push(p_ready);
            fresh_ready.push(f_ready);
        }
    }
    pooled
        .delete_sandbox(&warm.id.parse().unwrap())
        .await
        .unwrap();
    pooled.shutdown().await;
    fresh.shutdown().await;
    Figures {
        name,
        pooled: median(&mut on_pool),
        warm: median(&mut on_warm),
        fresh: median(&mut on_fresh),
        ready_p50: percentile(&mut ready, 0.5),
        ready_p90: percentile(&mut ready, 0.9),
        fresh_ready_p50: percentile(&mut fresh_ready, 0.5),
        memory,
    }
}

#[tokio::main]
async fn main() {
    delegate_server::net::install_crypto();
    let opencode = std::env::var_os("DELEGATE_OPENCODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .expect("set DELEGATE_OPENCODE_BIN to the opencode binary");
    let runs = arg("--runs", 9);
    let fake = FakeAnthropic::start(Script::write_file("hello.txt", "hi\n", "done"))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut all = vec![
        measure(
            BackendChoice::Process,
            "process",
            runs,
            &opencode,
            &fake,
            tmp.path(),
        )
        .await,
    ];
    if std::env::var_os("DOCKER_HOST").is_some() {
        all.push(
            measure(
                BackendChoice::Docker,
                "docker",
                runs,
                &opencode,
                &fake,
                tmp.path(),
            )
            .await,
        );
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "Machine: {} cores; {runs} rounds per backend (medians), the first round not counted.\n",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
        );
        println!(
            "| backend | ephemeral, pool hit | warm sandbox | **hit ÷ warm** (target <= 1.2) | ephemeral, no pool | no pool ÷ warm |"
        );
        println!("|---|---|---|---|---|---|");
        for f in &all {
            println!(
                "| {} | {:.2} s | {:.2} s | **{:.2}** | {:.2} s | {:.1} |",
                f.name,
                f.pooled,
                f.warm,
                f.pooled / f.warm,
                f.fresh,
                f.fresh / f.warm
            );
        }
        println!(
            "\n| backend | claim → ready p50 (target <= 100 ms) | p90 | fresh sandbox → ready p50 | idle pooled sandbox memory |"
        );
        println!("|---|---|---|---|---|");
        for f in &all {
            println!(
                "| {} | **{:.0} ms** | {:.0} ms | {:.0} ms | {} |",
                f.name, f.ready_p50, f.ready_p90, f.fresh_ready_p50, f.memory
            );
        }
    }
}

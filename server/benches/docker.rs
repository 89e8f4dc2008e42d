//! The docker backend, side by side with the process backend in one process, interleaved so
//! machine noise hits both alike. Prints a Markdown report for BENCHMARKS.md.
//!
//!   DOCKER_HOST=$(scripts/dockerd start) sandbox-image/build --offline --lean
//!   DOCKER_HOST=unix:///run/delegate-dockerd/docker.sock \
//!   DELEGATE_OPENCODE_BIN=.tools/node_modules/opencode-linux-x64/bin/opencode \
//!     cargo bench -p delegate-server --bench docker [-- --runs 7 --creates 20]
//!
//! 1. An ephemeral run via docker ÷ the same run via the process backend (bubblewrap).
//! 2. A run in a warm docker sandbox ÷ an ephemeral docker run.
//! 3. `create_sandbox` until `running` (opencode serve listening) on docker: p50 over 20.

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;
use support::{Env, arg, median, percentile};

use delegate_mcp::types::RunStatus;
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxRequest};
use delegate_server::settings::{BackendChoice, Settings};
use delegate_testkit::anthropic::{FakeAnthropic, Script};

const TASK: &str = "create hello.txt saying hi";

async fn orchestrator(
    backend: BackendChoice,
    opencode: &Path,
    fake: &FakeAnthropic,
    data: &Path,
) -> Orchestrator {
    let env = Env(vec![
        ("DELEGATE_DATA_DIR".into(), data.display().to_string()),
        ("ANTHROPIC_API_KEY".into(), "sk-ant-bench".into()),
        ("ANTHROPIC_BASE_URL".into(), fake.base_url()),
        (
            "DELEGATE_OPENCODE_BIN".into(),
            opencode.display().to_string(),
        ),
        (
            "DOCKER_HOST".into(),
            std::env::var("DOCKER_HOST").expect("set DOCKER_HOST to the engine"),
        ),
    ]);
    let mut s: Settings = Settings::load(None, &env).unwrap();
    s.backend = backend;
    s.relay_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_delegate")));
    delegate_server::app::embedded(s).await.unwrap()
}

async fn timed_run(orch: &Orchestrator, sandbox_id: Option<String>) -> f64 {
    let t = Instant::now();
    let (id, _) = orch
        .start_run(RunRequest {
            task: TASK.into(),
            sandbox_id,
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    delegate_server::net::install_crypto();
    let opencode = std::env::var_os("DELEGATE_OPENCODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .expect("set DELEGATE_OPENCODE_BIN to the opencode binary");
    let runs = arg("--runs", 7);
    let creates = arg("--creates", 20);
    let fake = FakeAnthropic::start(Script::write_file("hello.txt", "hi\n", "done"))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let process = orchestrator(
        BackendChoice::Process,
        &opencode,
        &fake,
        &tmp.path().join("p"),
    )
    .await;
    let docker = orchestrator(
        BackendChoice::Docker,
        &opencode,
        &fake,
        &tmp.path().join("d"),
    )
    .await;
    let warm = docker
        .create_sandbox(SandboxRequest::default())
        .await
        .unwrap();

    // 1 and 2, interleaved; the first round warms caches and is not counted.
    let (mut on_process, mut on_docker, mut on_warm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs + 1 {
        let p = timed_run(&process, None).await;
        let d = timed_run(&docker, None).await;
        let w = timed_run(&docker, Some(warm.id.clone())).await;
        if i > 0 {
            on_process.push(p);
            on_docker.push(d);
            on_warm.push(w);
        }
    }
    docker
        .delete_sandbox(&warm.id.parse().unwrap())
        .await
        .unwrap();

    // 3: create → running, each deleted before the next.
    let mut create = Vec::new();
    for _ in 0..creates {
        let t = Instant::now();
        let s = docker
            .create_sandbox(SandboxRequest::default())
            .await
            .unwrap();
        create.push(t.elapsed().as_secs_f64());
        docker.delete_sandbox(&s.id.parse().unwrap()).await.unwrap();
    }
    process.shutdown().await;
    docker.shutdown().await;

    let (p, d, w) = (
        median(&mut on_process),
        median(&mut on_docker),
        median(&mut on_warm),
    );
    let c50 = percentile(&mut create, 0.5);
    let c90 = percentile(&mut create, 0.9);
    #[allow(clippy::print_stdout)]
    {
        println!(
            "Machine: {} cores; {runs} runs per side (medians), {creates} creates.\n\n\
             ## Ephemeral run: docker ÷ process backend\n\n\
             | | median run time |\n|---|---|\n\
             | process backend (bubblewrap) | {p:.2} s |\n\
             | docker backend (container, `--network none`) | {d:.2} s |\n\
             | **ratio** docker ÷ process | **{:.3}** |\n\n\
             ## Docker: warm run ÷ ephemeral run\n\n\
             | | median run time |\n|---|---|\n\
             | ephemeral (fresh container) | {d:.2} s |\n\
             | warm (`opencode serve` in a running container) | {w:.2} s |\n\
             | **ratio** warm ÷ ephemeral | **{:.3}** |\n\n\
             ## Docker: `create_sandbox` until running\n\n\
             p50 {c50:.2} s, p90 {c90:.2} s over {creates} (volumes, container, seed upload, \
             start, opencode serve listening).\n",
            std::thread::available_parallelism()
                .map(std::num::NonZero::get)
                .unwrap_or(0),
            d / p,
            w / d,
        );
    }
}

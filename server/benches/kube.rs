//! The kubernetes backend on the fake cluster of `delegate_testkit::kube` (pods run as
//! containers on the same Docker Engine) side by side with the docker backend in one process,
//! interleaved so machine noise hits both alike. Prints a Markdown report for BENCHMARKS.md.
//!
//!   DOCKER_HOST=unix:///run/delegate-dockerd/docker.sock \
//!   DELEGATE_OPENCODE_BIN=.tools/node_modules/opencode-linux-x64/bin/opencode \
//!     cargo bench -p delegate-server --bench kube [-- --runs 5 --creates 10]
//!
//! 1. An ephemeral run via kubernetes ÷ the same run via docker.
//! 2. `create_sandbox` until `running` (opencode serve listening): kubernetes ÷ docker, p50.

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;
use support::{Env, arg, median, percentile};

use delegate_mcp::types::RunStatus;
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxRequest};
use delegate_server::settings::{BackendChoice, Settings};
use delegate_testkit::anthropic::{FakeAnthropic, Script};
use delegate_testkit::kube::FakeCluster;

const TASK: &str = "create hello.txt saying hi";

async fn orchestrator(
    backend: BackendChoice,
    opencode: &Path,
    fake: &FakeAnthropic,
    data: &Path,
    kubeconfig: Option<PathBuf>,
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
    s.kube.kubeconfig = kubeconfig;
    s.kube.namespace = Some("bench".into());
    // The fake's pods share the host's network: the proxy on loopback stands in for the Service.
    s.kube.proxy_url = Some("loopback".into());
    delegate_server::app::embedded(s).await.unwrap()
}

async fn timed_run(orch: &Orchestrator) -> f64 {
    let t = Instant::now();
    let (id, _) = orch
        .start_run(RunRequest {
            task: TASK.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    t.elapsed().as_secs_f64()
}

async fn timed_create(orch: &Orchestrator) -> f64 {
    let t = Instant::now();
    let s = orch
        .create_sandbox(SandboxRequest::default())
        .await
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    orch.delete_sandbox(&s.id.parse().unwrap()).await.unwrap();
    took
}

#[tokio::main]
async fn main() {
    delegate_server::net::install_crypto();
    let opencode = std::env::var_os("DELEGATE_OPENCODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .expect("set DELEGATE_OPENCODE_BIN to the opencode binary");
    let host = std::env::var("DOCKER_HOST").expect("set DOCKER_HOST to the engine");
    let runs = arg("--runs", 5);
    let creates = arg("--creates", 10);
    let fake = FakeAnthropic::start(Script::write_file("hello.txt", "hi\n", "done"))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cluster = FakeCluster::start(&host).await.unwrap();
    let kubeconfig = cluster.kubeconfig(tmp.path(), "bench").unwrap();
    let docker = orchestrator(
        BackendChoice::Docker,
        &opencode,
        &fake,
        &tmp.path().join("d"),
        None,
    )
    .await;
    let kube = orchestrator(
        BackendChoice::Kubernetes,
        &opencode,
        &fake,
        &tmp.path().join("k"),
        Some(kubeconfig),
    )
    .await;

    // Interleaved; the first round warms caches and is not counted.
    let (mut on_docker, mut on_kube) = (Vec::new(), Vec::new());
    for i in 0..runs + 1 {
        let d = timed_run(&docker).await;
        let k = timed_run(&kube).await;
        if i > 0 {
            on_docker.push(d);
            on_kube.push(k);
        }
    }
    let (mut create_docker, mut create_kube) = (Vec::new(), Vec::new());
    for _ in 0..creates {
        create_docker.push(timed_create(&docker).await);
        create_kube.push(timed_create(&kube).await);
    }
    docker.shutdown().await;
    kube.shutdown().await;
    cluster.shutdown().await;

    let (d, k) = (median(&mut on_docker), median(&mut on_kube));
    let (cd, ck) = (
        percentile(&mut create_docker, 0.5),
        percentile(&mut create_kube, 0.5),
    );
    #[allow(clippy::print_stdout)]
    {
        println!(
            "Machine: {} cores; {runs} runs per side (medians), {creates} creates per side.\n\n\
             | | docker | kubernetes (fake cluster) | kubernetes ÷ docker |\n|---|---|---|---|\n\
             | ephemeral run, median | {d:.2} s | {k:.2} s | **{:.3}** |\n\
             | `create_sandbox` until running, p50 | {cd:.2} s | {ck:.2} s | **{:.3}** |\n",
            std::thread::available_parallelism()
                .map(std::num::NonZero::get)
                .unwrap_or(0),
            k / d,
            ck / cd,
        );
    }
}

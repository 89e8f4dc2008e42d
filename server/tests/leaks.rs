//! The leak check (issue 14): many runs on the process backend and on docker, each ending one of
//! four ways chosen by a seeded generator: it finishes; it is cancelled; its sandbox's processes
//! or container are killed under it; its sandbox is deleted under it. Each fault is injected
//! once the run has logged a chosen number of events (not after a sleep). Afterwards nothing of
//! any of them is left (processes, containers, volumes, work dirs, cgroups), the database agrees
//! (every run ended, every sandbox deleted), and the real key is in no file of the data dir, no
//! event, no result and no log line, although every run's agent dumped its environment.
//!
//! `DELEGATE_LEAK_RUNS` (default 24 per backend) sets the count; RELIABILITY.md has the figure
//! for 200.

mod common;

use std::time::Duration;

use common::docker::DockerHarness;
use common::{Harness, REAL_KEY, processes_mentioning};
use delegate_mcp::types::{RunStatus, SandboxStatus};
use delegate_server::orchestrator::{Orchestrator, RunRequest};
use delegate_testkit::anthropic::Script;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Finishes,
    Cancelled,
    Killed,
    Deleted,
}

/// A small deterministic generator (xorshift), so a failing mix can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

fn runs() -> usize {
    std::env::var("DELEGATE_LEAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

/// Each run's agent dumps what its sandbox can see of secrets, slowly enough to be interrupted.
fn script() -> Script {
    Script::slow(
        100,
        Script::bash(
            "env | sort > seen.txt; cat ~/.config/opencode/* /proc/self/environ >> seen.txt 2>&1; \
             cat seen.txt",
            "dumped",
        ),
    )
}

enum Kill<'a> {
    Processes,
    Container(&'a DockerHarness),
}

async fn kill_sandbox(how: &Kill<'_>, sandbox_id: &str) {
    match how {
        Kill::Processes => {
            for line in processes_mentioning(sandbox_id) {
                let pid: i32 = line.split(':').next().unwrap().parse().unwrap();
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Kill::Container(d) => {
            let _ = d
                .docker
                .kill_container(
                    &format!("delegate-{sandbox_id}"),
                    None::<bollard::query_parameters::KillContainerOptions>,
                )
                .await;
        }
    }
}

/// Runs `n` tasks, four at a time, each ended as the dice say; returns every run's text as the
/// world saw it (events and result) and the sandbox ids.
async fn churn(orch: &Orchestrator, kill: &Kill<'_>, n: usize, seed: u64) -> (String, Vec<String>) {
    let mut dice = Dice(seed);
    let plan: Vec<(Ending, u64)> = (0..n)
        .map(|_| {
            let ending = match dice.roll(4) {
                0 => Ending::Finishes,
                1 => Ending::Cancelled,
                2 => Ending::Killed,
                _ => Ending::Deleted,
            };
            (ending, dice.roll(4))
        })
        .collect();
    let mut seen = String::new();
    let mut sandboxes = Vec::new();
    for batch in plan.chunks(4) {
        let mut running = FuturesUnordered::new();
        for &(ending, after_events) in batch {
            running.push(async move {
                let (run_id, sandbox_id) = orch
                    .start_run(RunRequest {
                        task: "dump the environment".into(),
                        created_by: Some("leak-check".into()),
                        ..Default::default()
                    })
                    .await
                    .expect("start a run");
                let mut events = std::pin::pin!(orch.events(&run_id, 0));
                let mut log = String::new();
                let mut acted = ending == Ending::Finishes;
                let mut count = 0;
                while let Some(event) = events.next().await {
                    let event = event.expect("an event");
                    log.push_str(&serde_json::to_string(&event).unwrap());
                    count += 1;
                    if !acted && count > after_events {
                        acted = true;
                        match ending {
                            Ending::Cancelled => orch.cancel_run(&run_id).await.unwrap(),
                            Ending::Killed => kill_sandbox(kill, sandbox_id.as_str()).await,
                            Ending::Deleted => orch.delete_sandbox(&sandbox_id).await.unwrap(),
                            Ending::Finishes => {}
                        }
                    }
                }
                let result = tokio::time::timeout(Duration::from_secs(120), orch.wait(&run_id))
                    .await
                    .expect("the run ends")
                    .expect("its result");
                assert!(
                    matches!(
                        result.status,
                        RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
                    ),
                    "{ending:?}: {:?}",
                    result.status
                );
                if ending == Ending::Finishes {
                    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
                }
                log.push_str(&serde_json::to_string(&result).unwrap());
                eprintln!(
                    "{sandbox_id}: {ending:?} after {after_events} events: {:?}",
                    result.status
                );
                (log, sandbox_id.into_string())
            });
        }
        while let Some((log, sandbox_id)) = running.next().await {
            seen.push_str(&log);
            sandboxes.push(sandbox_id);
        }
    }
    (seen, sandboxes)
}

/// Every file under `dir` (links not followed).
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(files(&p));
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out
}

/// Cgroup directories (any controller, two levels down) named after one of `ids`.
fn cgroups_of(ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                found.push(p.display().to_string());
            } else if depth < 3 {
                dirs.push((p, depth + 1));
            }
        }
    }
    found
}

/// What must hold after the churn, on any backend.
async fn assert_nothing_left(h: &Harness, orch: &Orchestrator, seen: &str, sandboxes: &[String]) {
    assert!(!seen.is_empty());
    assert!(
        !seen.contains(REAL_KEY),
        "the real key reached a sandbox (an event or result shows it)"
    );
    for id in sandboxes {
        let sandbox = orch.store().sandbox(id).await.unwrap();
        assert_eq!(sandbox.status, SandboxStatus::Deleted, "{id}");
        assert_eq!(processes_mentioning(id), Vec::<String>::new(), "{id}");
    }
    assert_eq!(orch.live_run_count(), 0);
    assert_eq!(cgroups_of(sandboxes), Vec::<String>::new());
    let work = h.data_dir().join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&work)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    let inside: Vec<_> = left.iter().flat_map(|d| files(d)).collect();
    assert_eq!(
        left,
        Vec::<std::path::PathBuf>::new(),
        "work dirs left, holding {inside:?}"
    );
    for file in files(&h.data_dir()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !common::contains(&bytes, REAL_KEY),
            "the real key is in {}",
            file.display()
        );
    }
    let logs = common::serve::logs();
    assert!(
        !common::contains(&logs.lock().unwrap(), REAL_KEY),
        "the real key is in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_runs_that_finish_or_are_cancelled_killed_or_deleted_leave_nothing() {
    common::serve::logs();
    let Some(h) = Harness::new(script()).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let n = runs();
    let (seen, sandboxes) = churn(&orch, &Kill::Processes, n, 0x5eed_1eaf).await;
    assert_eq!(sandboxes.len(), n);
    assert_nothing_left(&h, &orch, &seen, &sandboxes).await;
    eprintln!("leak check, process backend: {n} runs, nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_runs_that_finish_or_are_cancelled_killed_or_deleted_leave_nothing() {
    common::serve::logs();
    let Some(d) = DockerHarness::new(script()).await else {
        return;
    };
    let orch = d.orchestrator(d.settings()).await;
    let n = runs();
    let (seen, sandboxes) = churn(&orch, &Kill::Container(&d), n, 0xd0c_4e12).await;
    assert_eq!(sandboxes.len(), n);
    for id in &sandboxes {
        assert_eq!(d.leftovers(id).await, Vec::<String>::new(), "{id}");
    }
    assert_nothing_left(&d.h, &orch, &seen, &sandboxes).await;
    eprintln!("leak check, docker backend: {n} runs, nothing left");
}

//! The leak check (issue 14): many runs on the process backend and on docker, each ending one of
//! four ways chosen by a seeded generator: it finishes; it is cancelled; its sandbox's processes
//! or container are killed under it; its sandbox is deleted under it. Each fault is injected
//! once the run has logged a chosen number of events (not after a sleep). Afterwards nothing of
//! any of them is left (processes, containers, volumes, work dirs, cgroups), the database agrees
//! (every run ended, every sandbox deleted), and no secret is where it must not be, although
//! every run's agent dumped its environment: the real key, a workspace secret no sandbox asked
//! for and a git credential's token are in no file of the data dir, no event, no result and no
//! log line, and a secret the sandboxes were given is in no event or result (redacted).
//!
//! The secret scan goes further where the churn cannot look: a live docker sandbox's whole file
//! system, mounts and environment, and a dump of a PostgreSQL database after runs on it
//! (`common::secret_scan`).
//!
//! `DELEGATE_LEAK_RUNS` (default 24 per backend) sets the count; RELIABILITY.md has the figure
//! for 200.

mod common;

use std::time::Duration;

use common::docker::DockerHarness;
use common::secret_scan::{Needle, Scanner, canary, files, scan_container, scan_dir};
use common::{Harness, REAL_KEY, processes_mentioning};
use delegate_mcp::types::{RunStatus, SandboxStatus};
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxInputs};
use delegate_server::settings::{SecretKey, Settings};
use delegate_testkit::anthropic::Script;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// The workspace secret every churned run asks for: its sandbox sees it, nothing else may.
const GIVEN: &str = "LEAK_CHECK_GIVEN_SECRET";
/// A workspace secret no sandbox asks for.
const KEPT: &str = "LEAK_CHECK_KEPT_SECRET";

/// The secrets of a leak check, with distinctive values.
struct Secrets {
    given: String,
    kept: String,
    git_token: String,
}

impl Secrets {
    fn new() -> Secrets {
        Secrets {
            given: canary("given"),
            kept: canary("kept"),
            git_token: canary("git-token"),
        }
    }

    /// What no sandbox may see: found nowhere but in memory.
    fn never_seen(&self) -> Vec<Needle> {
        vec![
            Needle::new("the real key", REAL_KEY),
            Needle::new("a workspace secret no sandbox asked for", &self.kept),
            Needle::new("a git credential's token", &self.git_token),
        ]
    }

    /// Everything that must not be stored or logged in clear.
    fn at_rest(&self) -> Vec<Needle> {
        let mut all = self.never_seen();
        all.push(Needle::new(
            "the secret the sandboxes were given",
            &self.given,
        ));
        all
    }

    /// Settings that can store secrets.
    fn settings(mut settings: Settings) -> Settings {
        settings.secret_key = Some(SecretKey([0x1e; 32]));
        settings
    }

    /// Stores them in the local user's workspace.
    async fn store(&self, orch: &Orchestrator) {
        let ws = orch
            .store()
            .workspaces_of_user(&orch.local_user().id)
            .await
            .unwrap()
            .remove(0)
            .0;
        orch.set_secret(&ws, GIVEN, &self.given, None)
            .await
            .unwrap();
        orch.set_secret(&ws, KEPT, &self.kept, None).await.unwrap();
        orch.set_git_credential(&ws, "https://git.example.com", "bot", &self.git_token, None)
            .await
            .unwrap();
    }
}

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
                        inputs: SandboxInputs {
                            secrets: vec![GIVEN.into()],
                            ..Default::default()
                        },
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
async fn assert_nothing_left(
    h: &Harness,
    orch: &Orchestrator,
    secrets: &Secrets,
    seen: &str,
    sandboxes: &[String],
) {
    assert!(!seen.is_empty());
    let in_events = common::secret_scan::scan_bytes(&secrets.at_rest(), seen.as_bytes());
    assert!(
        in_events.is_empty(),
        "an event or result shows {in_events:?}"
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
    assert_at_rest_nowhere(h, secrets);
}

/// No secret in clear in the data dir (the SQLite database included) or the log. A secret the
/// sandboxes were given may be in a change they made (their files, kept as git objects) but
/// nowhere the server writes by itself; the others are nowhere at all.
fn assert_at_rest_nowhere(h: &Harness, secrets: &Secrets) {
    let mut scanner = Scanner::new(&secrets.at_rest());
    scan_dir(&mut scanner, &h.data_dir());
    let allowed = |hit: &common::secret_scan::Hit| {
        hit.label.starts_with("the secret the sandboxes")
            && std::path::Path::new(&hit.place).starts_with(h.data_dir().join("runs"))
    };
    let hits: Vec<_> = scanner.hits().into_iter().filter(|h| !allowed(h)).collect();
    assert_eq!(hits, Vec::new(), "secrets in the data dir");
    assert!(scanner.bytes() > 0, "nothing scanned in the data dir");
    let logs = common::serve::logs();
    let mut scanner = Scanner::new(&secrets.at_rest());
    scanner.at("the log");
    scanner.feed(&logs.lock().unwrap());
    assert_eq!(scanner.hits(), Vec::new(), "secrets in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_runs_that_finish_or_are_cancelled_killed_or_deleted_leave_nothing() {
    common::serve::logs();
    let Some(h) = Harness::new(script()).await else {
        return;
    };
    let orch = delegate_server::app::embedded(Secrets::settings(h.settings()))
        .await
        .unwrap();
    let secrets = Secrets::new();
    secrets.store(&orch).await;
    let n = runs();
    let (seen, sandboxes) = churn(&orch, &Kill::Processes, n, 0x5eed_1eaf).await;
    assert_eq!(sandboxes.len(), n);
    assert_nothing_left(&h, &orch, &secrets, &seen, &sandboxes).await;
    eprintln!("leak check, process backend: {n} runs, nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_runs_that_finish_or_are_cancelled_killed_or_deleted_leave_nothing() {
    common::serve::logs();
    let Some(d) = DockerHarness::new(script()).await else {
        return;
    };
    let orch = d.orchestrator(Secrets::settings(d.settings())).await;
    let secrets = Secrets::new();
    secrets.store(&orch).await;
    let n = runs();
    let (seen, sandboxes) = churn(&orch, &Kill::Container(&d), n, 0xd0c_4e12).await;
    assert_eq!(sandboxes.len(), n);
    for id in &sandboxes {
        assert_eq!(d.leftovers(id).await, Vec::<String>::new(), "{id}");
    }
    assert_nothing_left(&d.h, &orch, &secrets, &seen, &sandboxes).await;
    eprintln!("leak check, docker backend: {n} runs, nothing left");
}

#[test]
fn the_scanner_finds_a_planted_secret_split_across_chunks_or_amid_binary() {
    let needles = [
        Needle::new("a", "canary-a-0123456789abcdef"),
        Needle::new("b", "canary-b-0123456789abcdef"),
    ];
    let mut s = Scanner::new(&needles);
    s.at("file");
    s.feed(b"\xff\xfe\x00binary canary-a-01234");
    assert!(s.labels().is_empty());
    s.feed(b"56789abcdef\xc3 more");
    assert_eq!(s.labels(), ["a".to_string()].into());
    // A new place does not continue the old one.
    s.at("other");
    s.feed(b"canary-b-01234567");
    s.at("third");
    s.feed(b"89abcdef");
    assert_eq!(s.labels(), ["a".to_string()].into());

    // A planted copy in a control file, deep in a tree, beside large files.
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("x/y");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(dir.path().join("big"), vec![b'z'; 3 << 20]).unwrap();
    let mut control = vec![0u8; (64 << 10) - 5];
    control.extend_from_slice(b"canary-b-0123456789abcdef");
    std::fs::write(deep.join("control"), control).unwrap();
    let mut s = Scanner::new(&needles);
    scan_dir(&mut s, dir.path());
    let hits = s.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].label, "b");
    assert!(hits[0].place.ends_with("x/y/control"), "{hits:?}");
    assert_eq!(files(dir.path()).len(), 2);
}

/// Dumps what the sandbox sees of secrets, then (once the fake answers the next call with
/// nothing) stays live until cancelled.
const DUMP: &str = "env | sort > seen.txt; cat ~/.config/opencode/* /proc/self/environ \
     >> seen.txt 2>&1; echo dumped";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_docker_sandbox_holds_no_secret_but_its_own_in_its_files_mounts_or_env() {
    common::serve::logs();
    // Slow, so the script is switched before the agent's next call: that one hangs.
    let Some(d) = DockerHarness::new(Script::slow(40, Script::bash(DUMP, "dumped"))).await else {
        return;
    };
    let orch = d.orchestrator(Secrets::settings(d.settings())).await;
    let secrets = Secrets::new();
    secrets.store(&orch).await;
    let (run_id, sandbox_id) = orch
        .start_run(RunRequest {
            task: "dump the environment".into(),
            inputs: SandboxInputs {
                secrets: vec![GIVEN.into()],
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    // Generous: the container starts first, on a machine other builds share.
    tokio::time::timeout(Duration::from_secs(300), d.h.fake.wait_for_requests(1))
        .await
        .expect("the agent called the model");
    d.h.fake.set_script(Script::Hang);
    // The second call carries the dump's output: the file is written and the run is live.
    tokio::time::timeout(Duration::from_secs(300), d.h.fake.wait_for_requests(2))
        .await
        .expect("the agent ran the dump");

    let container = format!("delegate-{sandbox_id}");
    let env = d
        .docker
        .inspect_container(&container, None)
        .await
        .unwrap()
        .config
        .and_then(|c| c.env)
        .unwrap_or_default();
    // opencode's configuration (in its environment) carries the proxy token as the API key.
    let config = env
        .iter()
        .find_map(|e| e.strip_prefix("OPENCODE_CONFIG_CONTENT="))
        .expect("opencode's configuration is in the environment");
    let config: serde_json::Value = serde_json::from_str(config).unwrap();
    let token = config["provider"]["anthropic"]["options"]["apiKey"]
        .as_str()
        .expect("the sandbox's proxy token")
        .to_string();
    let mut needles = secrets.never_seen();
    needles.push(Needle::new("control: its own proxy token", &token));
    needles.push(Needle::new(
        "control: the secret it was given",
        &secrets.given,
    ));
    needles.push(Needle::new(
        "control: the image's os-release",
        "Debian GNU/Linux",
    ));
    let mut scanner = Scanner::new(&needles);
    let t = std::time::Instant::now();
    let scan = scan_container(&mut scanner, &d.docker, &container).await;
    eprintln!(
        "scanned {container} live in {:?}: export {} MB, mounts {:?} {} KB, {} env entries",
        t.elapsed(),
        scan.export_bytes >> 20,
        scan.mounts,
        scan.mount_bytes >> 10,
        scan.env_entries
    );
    let hits = scanner.hits();
    let at = |label: &str, place: &str| {
        hits.iter()
            .any(|h| h.label == label && h.place.starts_with(place))
    };
    // The scan can fail: what is there on purpose is found, in each part.
    assert!(
        at("control: its own proxy token", "the environment"),
        "{hits:?}"
    );
    assert!(at("control: its own proxy token", "the mounts"), "{hits:?}");
    assert!(
        at("control: the secret it was given", "the environment"),
        "{hits:?}"
    );
    assert!(
        at("control: the image's os-release", "docker export"),
        "{hits:?}"
    );
    assert!(scan.mounts.iter().any(|m| m == "/tmp"), "{:?}", scan.mounts);
    let leaked: Vec<_> = hits
        .iter()
        .filter(|h| !h.label.starts_with("control:"))
        .collect();
    assert_eq!(leaked, Vec::<&common::secret_scan::Hit>::new());

    orch.cancel_run(&run_id).await.unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Cancelled, "{r:?}");
    assert_eq!(d.leftovers(sandbox_id.as_str()).await, Vec::<String>::new());
    assert_at_rest_nowhere(&d.h, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_on_postgresql_leave_no_secret_in_clear_in_a_dump_of_the_database() {
    common::serve::logs();
    let Some(pg) = tokio::task::spawn_blocking(delegate_testkit::postgres::TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
    else {
        return;
    };
    let Some(h) = Harness::new(script()).await else {
        return;
    };
    let mut settings = Secrets::settings(h.settings());
    settings.database_url = delegate_server::settings::Secret::new(pg.url.clone());
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    assert_eq!(orch.store().kind(), "postgres");
    let secrets = Secrets::new();
    secrets.store(&orch).await;
    let n = runs().min(8);
    let (seen, sandboxes) = churn(&orch, &Kill::Processes, n, 0x9e_5eed).await;
    assert_nothing_left(&h, &orch, &secrets, &seen, &sandboxes).await;

    // The dump holds every table: the secrets' names are there, their values only sealed.
    let mut needles = secrets.at_rest();
    needles.push(Needle::new("control: a secret's name", KEPT));
    let mut scanner = Scanner::new(&needles);
    if common::secret_scan::scan_pg_dump(&mut scanner, &pg.url)
        .await
        .is_none()
    {
        let _: Option<()> = delegate_testkit::real::unavailable(
            "pg_dump",
            "it is not on PATH or in /usr/lib/postgresql/*/bin",
        );
        return;
    }
    let hits = scanner.hits();
    eprintln!(
        "pg_dump after {n} runs: {} KB searched",
        scanner.bytes() >> 10
    );
    assert!(
        hits.iter().any(|h| h.label == "control: a secret's name"),
        "{hits:?}"
    );
    let leaked: Vec<_> = hits
        .iter()
        .filter(|h| !h.label.starts_with("control:"))
        .collect();
    assert_eq!(
        leaked,
        Vec::<&common::secret_scan::Hit>::new(),
        "in the dump"
    );

    // And the dump scan can fail: a copy planted in a row is found.
    orch.store()
        .create_user(&delegate_server::store::User {
            id: delegate_server::ids::new_id("usr"),
            email: "control@example.com".into(),
            name: REAL_KEY.into(),
            created_at: delegate_server::ids::now_ms(),
        })
        .await
        .unwrap();
    let mut scanner = Scanner::new(&secrets.at_rest());
    common::secret_scan::scan_pg_dump(&mut scanner, &pg.url).await;
    assert_eq!(scanner.labels(), ["the real key".to_string()].into());
    drop(orch);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

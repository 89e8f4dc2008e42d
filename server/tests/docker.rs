//! The docker backend against a real Docker Engine (`scripts/dockerd`) running delegate's real
//! sandbox image (`sandbox-image/build`) with the real opencode inside; only the model is the
//! scripted fake, reached through delegate's proxy.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::docker::DockerHarness;
use common::served::{Served, api_token};
use delegate_mcp::types::{ChangeKind, ErrorKind, RunResult, RunStatus, SandboxStatus};
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxRequest};
use delegate_server::settings::DockerNetwork;
use delegate_testkit::anthropic::{Script, TOOL_RESULT_PLACEHOLDER};
use delegate_testkit::real;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The REST API of a `delegate serve`, with a bearer token.
struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn get<T: serde::de::DeserializeOwned>(&self, base: &str, path: &str) -> T {
        self.http
            .get(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, base: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }
}

fn task(text: &str) -> RunRequest {
    RunRequest {
        task: text.into(),
        timeout: Some(Duration::from_secs(180)),
        created_by: Some("test".into()),
        ..Default::default()
    }
}

async fn run(orch: &Orchestrator, req: RunRequest) -> RunResult {
    let (run_id, _) = orch.start_run(req).await.expect("start the run");
    tokio::time::timeout(Duration::from_secs(240), orch.wait(&run_id))
        .await
        .expect("the run ends within 4 minutes")
        .expect("wait for the run")
}

async fn wait_for_status(orch: &Orchestrator, id: &str, want: SandboxStatus, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = orch.store().sandbox(id).await.unwrap().status;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox {id} is {status}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_run_returns_its_result_and_leaves_nothing_behind() {
    let Some(d) = DockerHarness::new(Script::write_file(
        "hello.txt",
        "hi from docker\n",
        "Wrote it.",
    ))
    .await
    else {
        return;
    };
    for network in [DockerNetwork::None, DockerNetwork::Host] {
        let mut settings = d.settings();
        settings.docker.network = network.clone();
        let orch = d.orchestrator(settings).await;
        let result = run(
            &orch,
            RunRequest {
                files: BTreeMap::from([("seed.md".to_string(), "# seeded\n".to_string())]),
                ..task("write hello.txt")
            },
        )
        .await;
        assert_eq!(
            result.status,
            RunStatus::Succeeded,
            "{network:?}: {result:?}"
        );
        assert_eq!(result.final_message, "Wrote it.");
        assert_eq!(result.changed_files.len(), 1, "{:?}", result.changed_files);
        assert_eq!(result.changed_files[0].path, "hello.txt");
        assert_eq!(result.changed_files[0].change, ChangeKind::Added);
        assert!(result.diff.contains("+hi from docker"), "{}", result.diff);
        assert!(result.usage.input_tokens > 0 && result.usage.output_tokens > 0);
        // The model saw only the proxy's token, never the real key.
        for request in d.h.fake.requests() {
            assert_eq!(request.header("x-api-key"), Some(common::REAL_KEY));
        }
        assert_eq!(d.leftovers(&result.sandbox_id).await, Vec::<String>::new());
        assert!(
            !d.h.data_dir()
                .join("docker")
                .join(&result.sandbox_id)
                .exists()
        );
        let sandbox = orch.store().sandbox(&result.sandbox_id).await.unwrap();
        assert_eq!(sandbox.status, SandboxStatus::Deleted);
        assert_eq!(sandbox.backend, "docker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_sandbox_keeps_its_files_across_runs_pause_and_resume() {
    let Some(d) =
        DockerHarness::new(Script::write_file("first.txt", "from run one\n", "done")).await
    else {
        return;
    };
    let orch = d.orchestrator(d.settings()).await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            name: Some("warm".into()),
            files: BTreeMap::from([("seed.txt".to_string(), "seeded\n".to_string())]),
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("create a warm sandbox");
    assert_eq!(sandbox.status, SandboxStatus::Running);
    assert!(d.container_running(&sandbox.id).await);
    let in_sandbox = |text: &str| RunRequest {
        sandbox_id: Some(sandbox.id.clone()),
        ..task(text)
    };

    let first = run(&orch, in_sandbox("write first.txt")).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    assert_eq!(first.changed_files[0].path, "first.txt");

    // The second run sees the first run's file and the seed.
    d.h.fake.set_script(Script::bash(
        "cat seed.txt first.txt",
        TOOL_RESULT_PLACEHOLDER,
    ));
    let second = run(&orch, in_sandbox("show both files")).await;
    assert_eq!(second.status, RunStatus::Succeeded, "{second:?}");
    let message = second.final_message;
    assert!(
        message.contains("seeded") && message.contains("from run one"),
        "{message}"
    );

    // Pause stops the container; resume starts it with its files.
    orch.pause_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("pause");
    wait_for_status(
        &orch,
        &sandbox.id,
        SandboxStatus::Paused,
        Duration::from_secs(5),
    )
    .await;
    assert!(!d.container_running(&sandbox.id).await);
    orch.resume_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("resume");
    assert!(d.container_running(&sandbox.id).await);
    d.h.fake.set_script(Script::bash(
        "cat first.txt && echo more >> first.txt",
        TOOL_RESULT_PLACEHOLDER,
    ));
    let third = run(&orch, in_sandbox("after resume")).await;
    assert_eq!(third.status, RunStatus::Succeeded, "{third:?}");
    assert!(third.final_message.contains("from run one"));
    assert_eq!(third.changed_files[0].path, "first.txt");
    assert_eq!(third.changed_files[0].change, ChangeKind::Modified);
    assert!(third.diff.contains("+more"), "{}", third.diff);

    // A run wakes a paused sandbox by itself.
    orch.pause_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("pause again");
    d.h.fake
        .set_script(Script::bash("cat first.txt", TOOL_RESULT_PLACEHOLDER));
    let woken = run(&orch, in_sandbox("wake up")).await;
    assert_eq!(woken.status, RunStatus::Succeeded, "{woken:?}");
    assert!(woken.final_message.contains("more"));

    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("delete");
    assert_eq!(d.leftovers(&sandbox.id).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_is_paused_but_never_under_a_long_run() {
    // Each SSE event of the model's answer takes 400 ms: a run of several seconds.
    let slow = Script::Slow {
        per_event_delay_ms: 400,
        then: Box::new(Script::text("slow and steady")),
    };
    let Some(d) = DockerHarness::new(slow).await else {
        return;
    };
    let orch = d.orchestrator(d.settings()).await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            idle_timeout: Some(Duration::from_secs(2)),
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("create a warm sandbox");
    let (run_id, _) = orch
        .start_run(RunRequest {
            sandbox_id: Some(sandbox.id.clone()),
            ..task("take your time")
        })
        .await
        .unwrap();
    // While the run goes on, well past the idle timeout, the sandbox stays up.
    let mut checked = 0;
    while !orch.run(&run_id).await.unwrap().status.is_terminal() {
        assert_eq!(
            orch.store().sandbox(&sandbox.id).await.unwrap().status,
            SandboxStatus::Running,
            "paused under a run"
        );
        assert!(d.container_running(&sandbox.id).await);
        checked += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let result = orch.wait(&run_id).await.unwrap();
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
    assert!(
        result.duration_ms > 4_000 && checked > 8,
        "the run must outlast the idle timeout to show anything: {} ms, {checked} checks",
        result.duration_ms
    );
    // Once idle, it is paused: the container stops, its volume stays.
    wait_for_status(
        &orch,
        &sandbox.id,
        SandboxStatus::Paused,
        Duration::from_secs(30),
    )
    .await;
    assert!(!d.container_running(&sandbox.id).await);
    assert!(!d.leftovers(&sandbox.id).await.is_empty());
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_hardened_from_the_inside() {
    // No capabilities, no new privileges, a read-only root, uid 1000, and a pids limit that a
    // fork loop runs into. The findings go to a file: when the loop exhausts the pids, opencode
    // itself may die for want of a thread, and the file still comes back in the diff.
    // dash gives up at the first fork that fails (bash would retry for a long time); the
    // sleeps are then counted and killed with builtins only, since nothing can fork meanwhile.
    let probe = r#"probe() {
  grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
  touch /usr/probe
  echo uid=$(id -u)
  read max < /sys/fs/cgroup/pids/pids.max || read max < /sys/fs/cgroup/pids.max
  echo pids.max=$max
  sh -c 'i=0; while [ $i -lt 400 ]; do sleep 60 & i=$((i+1)); done'
  n=0
  for p in /proc/[0-9]*; do
    c=; read -r c < $p/comm 2>/dev/null
    if [ "$c" = sleep ]; then n=$((n+1)); kill -9 ${p#/proc/}; fi
  done
  echo sleeps=$n
}
probe > probe.txt 2>&1; cat probe.txt"#;
    let Some(d) = DockerHarness::new(Script::bash(probe, TOOL_RESULT_PLACEHOLDER)).await else {
        return;
    };
    let mut settings = d.settings();
    settings.sandbox_pids_max = 128;
    let orch = d.orchestrator(settings).await;
    let result = run(&orch, task("probe the sandbox")).await;
    assert!(result.status.is_terminal(), "{result:?}");
    let out: String = result
        .diff
        .lines()
        .filter_map(|l| l.strip_prefix('+'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("uid=1000"), "{out}");
    assert!(out.contains("pids.max=128"), "{out}");
    assert!(out.contains("Cannot fork"), "{out}");
    let spawned: usize = out
        .split("sleeps=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out}"));
    assert!(
        spawned < 128,
        "the pids limit did not hold: {spawned} processes"
    );
    assert_eq!(d.leftovers(&result.sandbox_id).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_over_the_memory_limit_ends_the_run_oom() {
    // `tail` keeps a whole line in memory, and /dev/zero has no newline.
    let Some(d) = DockerHarness::new(Script::bash(
        "head -c 3000m /dev/zero | tail > /dev/null; echo survived",
        "done",
    ))
    .await
    else {
        return;
    };
    let mut settings = d.settings();
    settings.sandbox_memory_mb = 600;
    let orch = d.orchestrator(settings).await;
    let result = run(&orch, task("use too much memory")).await;
    assert_eq!(result.status, RunStatus::Failed, "{result:?}");
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Oom, "{error:?}");
    assert!(error.message.contains("600 MiB"), "{}", error.message);
    assert_eq!(d.leftovers(&result.sandbox_id).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_fast_and_the_sandbox_keeps_its_reason() {
    let Some(d) = DockerHarness::new(Script::text("never asked")).await else {
        return;
    };
    let mut settings = d.settings();
    settings.docker.image = "delegate-sandbox:no-such-tag".into();
    let orch = d.orchestrator(settings).await;
    let started = Instant::now();
    let result = run(&orch, task("anything")).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(result.status, RunStatus::Failed, "{result:?}");
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::ImageMissing, "{error:?}");
    assert!(
        error.message.contains("sandbox-image/build"),
        "{}",
        error.message
    );
    let sandbox = orch.store().sandbox(&result.sandbox_id).await.unwrap();
    assert_eq!(sandbox.status, SandboxStatus::Failed);
    assert!(
        sandbox
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("delegate-sandbox:no-such-tag")),
        "{sandbox:?}"
    );
    // A warm sandbox fails the same way, and says so.
    let err = orch
        .create_sandbox(SandboxRequest::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-tag"), "{err}");
    assert_eq!(d.leftovers(&result.sandbox_id).await, Vec::<String>::new());
    assert!(d.h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_ends_the_run_lost_adopts_warm_sandboxes_and_sweeps_orphans() {
    let Some(d) = DockerHarness::new(Script::Hang).await else {
        return;
    };
    let env: Vec<(&str, String)> = d.serve_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Served::start(&d.h, &env, "srv").await;
    let api = Api {
        http: reqwest::Client::new(),
        token: api_token(&d.h, &env, &a.data).await,
    };

    // A warm sandbox, and a run that is mid-way when the server dies.
    let warm: Value = api
        .post(
            &a.base,
            "/api/sandboxes",
            &json!({ "name": "survivor", "files": { "keep.txt": "kept\n" } }),
        )
        .await
        .1;
    let warm_id = warm["sandbox_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{warm}"))
        .to_string();
    let started: RunResult = serde_json::from_value(
        api.post(
            &a.base,
            "/api/runs",
            &json!({ "task": "hang", "wait": false }),
        )
        .await
        .1,
    )
    .unwrap();
    d.h.fake.wait_for_requests(1).await;
    let running: RunResult = api
        .get(&a.base, &format!("/api/runs/{}", started.run_id))
        .await;
    assert_eq!(running.status, RunStatus::Running);
    let data = a.data.clone();
    a.crash().await;
    // The crash left the run's container behind.
    assert!(!d.leftovers(&started.sandbox_id).await.is_empty());
    // Volumes of delegate's that no database row knows: one this server made (swept), one
    // another installation on the same engine made (left alone).
    let me = std::fs::read_to_string(data.join("instance-id")).unwrap();
    let orphan = "sbx_0rphan0000000000000000000";
    let foreign = "sbx_f0reign000000000000000000";
    for (id, owner) in [(orphan, me.trim()), (foreign, "srv_someone_else")] {
        d.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(format!("delegate-{id}-work")),
                labels: Some(HashMap::from([
                    ("delegate.sandbox".to_string(), id.to_string()),
                    ("delegate.owner".to_string(), owner.to_string()),
                ])),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    d.h.fake
        .set_script(Script::bash("cat keep.txt", TOOL_RESULT_PLACEHOLDER));
    let b = Served::start(&d.h, &env, "srv").await;
    let lost: RunResult = api
        .get(&b.base, &format!("/api/runs/{}", started.run_id))
        .await;
    assert_eq!(lost.status, RunStatus::Lost, "{lost:?}\n{}", b.log());
    let error = lost.error.expect("a reason");
    assert_eq!(error.kind, ErrorKind::Lost);
    assert!(error.message.contains("restarted"), "{}", error.message);
    let gone: Value = api
        .get(&b.base, &format!("/api/sandboxes/{}", started.sandbox_id))
        .await;
    assert_eq!(gone["status"], "failed", "{gone}");
    assert!(
        gone["status_reason"]
            .as_str()
            .unwrap_or("")
            .contains("restarted"),
        "{gone}"
    );
    assert_eq!(d.leftovers(&started.sandbox_id).await, Vec::<String>::new());
    assert_eq!(d.leftovers(orphan).await, Vec::<String>::new());
    assert_eq!(d.leftovers(foreign).await.len(), 1);
    d.docker
        .remove_volume(
            &format!("delegate-{foreign}-work"),
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await
        .unwrap();

    // The warm sandbox was adopted: it still runs, and a run in it works.
    let (status, after) = api
        .post(
            &b.base,
            "/api/runs",
            &json!({ "task": "read it", "sandbox_id": warm_id, "wait": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", b.log());
    let after: RunResult = serde_json::from_value(after).unwrap();
    assert_eq!(after.status, RunStatus::Succeeded, "{after:?}\n{}", b.log());
    assert!(after.final_message.contains("kept"));

    let deleted = api
        .http
        .delete(format!("{}/api/sandboxes/{warm_id}", b.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", b.log());
    assert_eq!(d.leftovers(&warm_id).await, Vec::<String>::new());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_headless_runs_one_hardened_task_through_the_proxy() {
    let Some(d) = DockerHarness::new(Script::write_file(
        "from-compose.txt",
        "composed\n",
        "All done.",
    ))
    .await
    else {
        return;
    };
    let Some(compose) = real::on_path("docker-compose").or_else(|| {
        real::unavailable(
            "docker-compose",
            "not on PATH (apt-get install docker-compose)",
        )
    }) else {
        return;
    };
    // A server's proxy on loopback and a token for a sandbox it does not run itself.
    let orch = d.orchestrator(d.settings()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let proxy = delegate_server::net::serve_loopback(orch.proxy().router(), stop.clone())
        .await
        .unwrap();
    let (_, workspace) = delegate_server::bootstrap::ensure_local_user(orch.store().as_ref())
        .await
        .unwrap();
    let (sandbox, token) = delegate_server::orchestrator::register_external_sandbox(
        orch.store().as_ref(),
        &workspace,
        Some("compose".into()),
        None,
        None,
    )
    .await
    .unwrap();
    // The work dir belongs to the sandbox's user, as compose.headless.yml says.
    let work = d.h.dir.path().join("compose-work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("README.md"), "# existing\n").unwrap();
    for p in [work.clone(), work.join("README.md")] {
        std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
    }
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(compose)
            .args([
                "-f",
                "compose.headless.yml",
                "-p",
                &sandbox.id.to_lowercase(),
            ])
            .args(["run", "--rm", "-T", "sandbox"])
            .current_dir(real::repo_root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DOCKER_HOST", &d.host)
            .env("TASK", "write from-compose.txt")
            .env("WORKDIR", &work)
            // The test's proxy is on loopback: the host's network, not the file's bridge default.
            .env("DELEGATE_DOCKER_NETWORK", "host")
            .env("DELEGATE_PROXY_URL", format!("http://{proxy}/v1"))
            .env("DELEGATE_PROXY_TOKEN", &token)
            .env("DELEGATE_SANDBOX_IMAGE", real::sandbox_image())
            .env("DELEGATE_SANDBOX_MEMORY", "1g")
            .output(),
    )
    .await
    .expect("compose run ends within 4 minutes")
    .expect("run docker-compose");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // opencode's JSON events, one per line.
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(events.len() >= 3, "{stdout}\n{stderr}");
    assert!(events.iter().all(|e| e["type"].is_string()), "{stdout}");
    assert!(events.iter().any(|e| e["type"] == "tool_use"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(work.join("from-compose.txt")).unwrap(),
        "composed\n"
    );
    // Through the proxy: the fake saw the real key, the container only its token.
    let requests = d.h.fake.requests();
    assert!(!requests.is_empty());
    for request in requests {
        assert_eq!(request.header("x-api-key"), Some(common::REAL_KEY));
    }
    stop.cancel();
}

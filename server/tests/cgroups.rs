//! The process backend's memory, pids and CPU limits on this host's real cgroups (v1 or v2,
//! whichever `Hierarchy::detect` finds), with real opencode under bubblewrap and the scripted
//! model: an allocation over the limit is OOM-killed and the run says so, a fork loop hits the
//! pids limit, a busy loop is throttled to its CPU quota, a sandbox that cannot be limited refuses
//! to start unless limits are optional, and no group outlives its sandbox.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Harness;
use delegate_mcp::types::{ErrorKind, RunResult, RunStatus};
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxRequest};
use delegate_server::sandbox::cgroup::Hierarchy;
use delegate_server::settings::{SandboxLimits, Settings};
use delegate_testkit::anthropic::{Script, TOOL_RESULT_PLACEHOLDER};
use delegate_testkit::real;

/// A harness whose sandboxes must be limited; `None` (after saying why) on a host where this
/// process cannot make cgroups.
async fn limited(script: Script) -> Option<(Harness, Hierarchy)> {
    let hierarchy = match Hierarchy::detect() {
        Ok(h) => h,
        Err(why) => return real::unavailable("cgroups", &why),
    };
    let h = Harness::new(script).await?;
    Some((h, hierarchy))
}

fn settings(h: &Harness) -> Settings {
    let mut s = h.settings();
    s.sandbox_limits = SandboxLimits::Required;
    s
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

/// Where a sandbox's groups are on `hierarchy` (one dir on v2, memory, pids and cpu on v1).
fn group_dirs(hierarchy: &Hierarchy, sandbox_id: &str) -> Vec<PathBuf> {
    let name = format!("delegate-{sandbox_id}");
    match hierarchy {
        Hierarchy::V2 { mount, base } => vec![mount.join(base.trim_start_matches('/')).join(name)],
        Hierarchy::V1 { mount, own } => ["memory", "pids", "cpu"]
            .into_iter()
            .map(|c| {
                let group = own.get(c).map(String::as_str).unwrap_or("/");
                mount
                    .join(c)
                    .join(group.trim_start_matches('/'))
                    .join(&name)
            })
            .collect(),
    }
}

fn assert_no_groups(hierarchy: &Hierarchy, sandbox_id: &str) {
    let left: Vec<PathBuf> = group_dirs(hierarchy, sandbox_id)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_over_the_memory_limit_is_oom_killed_and_the_run_says_so() {
    // `tail` keeps a whole line in memory, and /dev/zero has no newline.
    let Some((h, hierarchy)) = limited(Script::bash(
        "head -c 3000m /dev/zero | tail > /dev/null; echo survived",
        "done",
    ))
    .await
    else {
        return;
    };
    let mut s = settings(&h);
    s.sandbox_memory_mb = 600;
    let orch = delegate_server::app::embedded(s).await.unwrap();
    let result = run(&orch, task("use too much memory")).await;
    assert_eq!(result.status, RunStatus::Failed, "{result:?}");
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Oom, "{error:?}");
    assert!(error.message.contains("600 MiB"), "{}", error.message);
    assert_no_groups(&hierarchy, &result.sandbox_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_loop_runs_into_the_pids_limit() {
    // dash gives up at the first fork that fails; the sleeps are then counted (in the sandbox's
    // own pid namespace) and killed with builtins only, since nothing can fork meanwhile. The
    // findings go to a file that comes back in the diff.
    let probe = r#"probe() {
  sh -c 'i=0; while [ $i -lt 400 ]; do sleep 60 & i=$((i+1)); done'
  n=0
  for p in /proc/[0-9]*; do
    c=; read -r c < $p/comm 2>/dev/null
    if [ "$c" = sleep ]; then n=$((n+1)); kill -9 ${p#/proc/}; fi
  done
  echo sleeps=$n
}
probe > probe.txt 2>&1; cat probe.txt"#;
    let Some((h, hierarchy)) = limited(Script::bash(probe, TOOL_RESULT_PLACEHOLDER)).await else {
        return;
    };
    let mut s = settings(&h);
    s.sandbox_pids_max = 128;
    let orch = delegate_server::app::embedded(s).await.unwrap();
    let result = run(&orch, task("probe the sandbox")).await;
    assert!(result.status.is_terminal(), "{result:?}");
    let out: String = result
        .diff
        .lines()
        .filter_map(|l| l.strip_prefix('+'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(out.contains("Cannot fork"), "{out}");
    let spawned: usize = out
        .split("sleeps=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out}"));
    assert!(spawned < 128, "the pids limit did not hold: {spawned}");
    assert!(spawned > 10, "the loop did fork: {spawned}");
    assert_no_groups(&hierarchy, &result.sandbox_id);
}

/// `usage_usec` and `nr_throttled` of a group's cpu accounting (v2 `cpu.stat`; v1 `cpu.stat`
/// has `nr_throttled` and `cpuacct` the usage, so only throttling is compared there).
fn throttled(hierarchy: &Hierarchy, dirs: &[PathBuf]) -> u64 {
    let cpu = match hierarchy {
        Hierarchy::V2 { .. } => &dirs[0],
        Hierarchy::V1 { .. } => &dirs[2],
    };
    std::fs::read_to_string(cpu.join("cpu.stat"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
        .expect("nr_throttled in cpu.stat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_sandbox_has_its_limits_on_the_host_and_a_busy_loop_is_throttled() {
    // Two seconds of a busy loop at a fifth of a CPU.
    let Some((h, hierarchy)) = limited(Script::bash(
        "timeout 2 sh -c 'while :; do :; done'; echo spun",
        "done",
    ))
    .await
    else {
        return;
    };
    let mut s = settings(&h);
    s.sandbox_memory_mb = 700;
    s.sandbox_pids_max = 300;
    s.docker.cpus = 0.2;
    let orch = delegate_server::app::embedded(s).await.unwrap();
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("a warm sandbox");
    let dirs = group_dirs(&hierarchy, &sandbox.id);
    let read = |d: &PathBuf, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    match &hierarchy {
        Hierarchy::V2 { .. } => {
            assert_eq!(
                read(&dirs[0], "memory.max").trim(),
                (700u64 << 20).to_string()
            );
            assert_eq!(read(&dirs[0], "pids.max").trim(), "300");
            assert_eq!(read(&dirs[0], "cpu.max").trim(), "20000 100000");
        }
        Hierarchy::V1 { .. } => {
            assert_eq!(
                read(&dirs[0], "memory.limit_in_bytes").trim(),
                (700u64 << 20).to_string()
            );
            assert_eq!(read(&dirs[1], "pids.max").trim(), "300");
            assert_eq!(read(&dirs[2], "cpu.cfs_quota_us").trim(), "20000");
            assert_eq!(read(&dirs[2], "cpu.cfs_period_us").trim(), "100000");
        }
    }
    // opencode serve lives in the group.
    let procs = read(&dirs[0], "cgroup.procs");
    assert!(!procs.trim().is_empty(), "serve runs inside the group");
    let before = throttled(&hierarchy, &dirs);
    let result = run(
        &orch,
        RunRequest {
            sandbox_id: Some(sandbox.id.clone()),
            ..task("spin")
        },
    )
    .await;
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
    let after = throttled(&hierarchy, &dirs);
    // Two seconds at 20 ms per 100 ms period: throttled in most of the 20 periods, at least.
    assert!(
        after - before >= 10,
        "throttled {before} -> {after}: the quota did not hold"
    );
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("delete");
    assert_no_groups(&hierarchy, &sandbox.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_cannot_be_limited_refuses_unless_limits_are_optional() {
    let Some((h, hierarchy)) = limited(Script::text("unlimited")).await else {
        return;
    };
    // The kernel refuses a pids.max this large: the limits cannot be applied.
    let mut s = settings(&h);
    s.sandbox_pids_max = 1 << 40;
    let orch = delegate_server::app::embedded(s.clone()).await.unwrap();
    let result = run(&orch, task("say hi")).await;
    assert_eq!(result.status, RunStatus::Failed, "{result:?}");
    let error = result.error.expect("an error");
    assert!(
        error.message.contains("cannot be limited")
            && error.message.contains("DELEGATE_SANDBOX_LIMITS=optional"),
        "{error:?}"
    );
    assert_no_groups(&hierarchy, &result.sandbox_id);

    // Optional: the run goes ahead without limits.
    drop(orch);
    s.sandbox_limits = SandboxLimits::Optional;
    let orch = delegate_server::app::embedded(s).await.unwrap();
    let result = run(&orch, task("say hi")).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
    assert_no_groups(&hierarchy, &result.sandbox_id);
}

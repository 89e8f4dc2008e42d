//! delegate's benchmarks, each a side-by-side comparison inside this one process, interleaved so
//! machine noise hits both sides alike. Prints a Markdown report for BENCHMARKS.md.
//!
//!   DELEGATE_OPENCODE_BIN=.tools/node_modules/opencode-linux-x64/bin/opencode \
//!     cargo bench -p delegate-server --bench bench [-- --runs 5 --requests 200 --repo-mb 10]
//!       [--only overhead,warm,repo,proxy,lists]
//!
//! 1. Overhead: `delegate run` (bubblewrap, proxy, git, event log) ÷ bare `opencode run` on the same
//!    task against the same fake upstream.
//! 2. Warm ÷ ephemeral: a run in a warm sandbox (opencode serve) ÷ a run in a fresh sandbox.
//! 3. Repository: `delegate run` started in a git repository (snapshot, seed, the change back as
//!    a branch) ÷ the same run with `--no-repo`, and the difference in seconds
//!    (`--repo-mb 10`: MB of files in the repository, about 10 KB each).
//! 4. Proxy: 200 streamed requests direct to the upstream, through a plain byte relay, a bare HTTP
//!    pass-through, nginx (if installed) and delegate's proxy: added p50 latency, and time to
//!    first byte ÷ direct for each.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Env, arg, median, percentile};

use delegate_mcp::types::RunStatus;
use delegate_server::orchestrator::{RunRequest, SandboxRequest};
use delegate_server::proxy::{ActiveRuns, Proxy};
use delegate_server::settings::{Secret, Settings, Upstream, UpstreamCredential};
use delegate_server::store::Store;
use delegate_testkit::anthropic::{FakeAnthropic, Script};

#[path = "../tests/common/mod.rs"]
mod common;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const KEY: &str = "sk-ant-bench";
const TASK: &str = "create hello.txt saying hi";

#[tokio::main]
async fn main() {
    delegate_server::net::install_crypto();
    let opencode = std::env::var_os("DELEGATE_OPENCODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .expect("set DELEGATE_OPENCODE_BIN to the opencode binary");
    let runs = arg("--runs", 5);
    let requests = arg("--requests", 200);
    let fake = FakeAnthropic::start(Script::write_file("hello.txt", "hi\n", "done"))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let mut out = String::new();
    out += &format!(
        "Machine: {} cores; opencode {}; {} runs per side, {} proxy requests.\n\n",
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(0),
        opencode_version(&opencode).await,
        runs,
        requests
    );
    // `--only overhead,warm,repo,proxy,lists` runs some of them.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let wanted = |name: &str| {
        only.as_ref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    if wanted("overhead") {
        out += &overhead(&opencode, &fake, tmp.path(), runs).await;
    }
    if wanted("warm") {
        out += &warm_vs_ephemeral(&opencode, &fake, tmp.path(), runs).await;
    }
    if wanted("repo") {
        out += &repo_overhead(&opencode, &fake, tmp.path(), runs, arg("--repo-mb", 10)).await;
    }
    if wanted("proxy") {
        out += &proxy(&fake, tmp.path(), requests).await;
    }
    if wanted("lists") {
        out += &list_sandboxes_under_load(&opencode, &fake, tmp.path()).await;
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
}

async fn opencode_version(bin: &Path) -> String {
    tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `delegate run` ÷ bare `opencode run`, interleaved.
async fn overhead(opencode: &Path, fake: &FakeAnthropic, tmp: &Path, runs: usize) -> String {
    let mut bare = Vec::new();
    let mut delegated = Vec::new();
    for i in 0..runs + 1 {
        // Bare: opencode alone, a fresh HOME and work dir, straight to the fake upstream.
        let dir = tmp.join(format!("bare{i}"));
        let (home, work) = (dir.join("home"), dir.join("work"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        // The same starting point delegate gives opencode: a git repository with one commit
        // (opencode does more work in a repository, so a bare dir would flatter the baseline).
        for args in [
            &["init", "-q"][..],
            &[
                "-c",
                "user.name=b",
                "-c",
                "user.email=b@b",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "seed",
            ],
        ] {
            assert!(
                tokio::process::Command::new("git")
                    .args(args)
                    .current_dir(&work)
                    .status()
                    .await
                    .unwrap()
                    .success()
            );
        }
        let env = delegate_server::opencode::environment(
            &home.display().to_string(),
            &format!("{}/v1", fake.base_url()),
            KEY,
            "anthropic/claude-sonnet-4-5",
            "anthropic/claude-haiku-4-5",
        );
        let t = Instant::now();
        let mut child = tokio::process::Command::new(opencode)
            .args([
                "run",
                "--format",
                "json",
                "--auto",
                "--model",
                "anthropic/claude-sonnet-4-5",
                "--title",
                TASK,
            ])
            .env_clear()
            .envs(env)
            .current_dir(&work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(TASK.as_bytes()).await.unwrap();
        drop(stdin);
        let o = child.wait_with_output().await.unwrap();
        let bare_s = t.elapsed().as_secs_f64();
        assert!(
            o.status.success() && work.join("hello.txt").exists(),
            "bare opencode run failed"
        );

        // delegate run: the real binary, bubblewrap, proxy, git, event log.
        let data = tmp.join(format!("delegate{i}"));
        let t = Instant::now();
        let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_delegate"))
            .args(["run", "--json", "--quiet", TASK])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DELEGATE_DATA_DIR", &data)
            .env("ANTHROPIC_API_KEY", KEY)
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .env("DELEGATE_OPENCODE_BIN", opencode)
            .env("DELEGATE_BACKEND", "process")
            .output()
            .await
            .unwrap();
        let delegated_s = t.elapsed().as_secs_f64();
        assert!(
            o.status.success(),
            "delegate run failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // The first pair warms the page cache for both; it is not counted.
        if i > 0 {
            bare.push(bare_s);
            delegated.push(delegated_s);
        }
    }
    let (b, d) = (median(&mut bare), median(&mut delegated));
    format!(
        "## delegate run ÷ bare opencode run\n\n\
         | | median wall time |\n|---|---|\n\
         | bare `opencode run` (no sandbox, direct to upstream, work dir a git repo as in delegate) | {b:.2} s |\n\
         | `delegate run` (bubblewrap, proxy, git, event log, SQLite) | {d:.2} s |\n\
         | **ratio** (target <= 1.05) | **{:.3}** |\n\n",
        d / b
    )
}

fn settings(opencode: &Path, fake: &FakeAnthropic, data: &Path) -> Settings {
    let env = Env(vec![
        ("DELEGATE_DATA_DIR".into(), data.display().to_string()),
        ("ANTHROPIC_API_KEY".into(), KEY.into()),
        ("ANTHROPIC_BASE_URL".into(), fake.base_url()),
        (
            "DELEGATE_OPENCODE_BIN".into(),
            opencode.display().to_string(),
        ),
        ("DELEGATE_BACKEND".into(), "process".into()),
    ]);
    let mut s = Settings::load(None, &env).unwrap();
    s.relay_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_delegate")));
    s
}

/// A run in a warm sandbox ÷ a run in a fresh one, interleaved, same orchestrator.
async fn warm_vs_ephemeral(
    opencode: &Path,
    fake: &FakeAnthropic,
    tmp: &Path,
    runs: usize,
) -> String {
    let orch = delegate_server::app::embedded(settings(opencode, fake, &tmp.join("warm")))
        .await
        .unwrap();
    let t = Instant::now();
    let sandbox = orch
        .create_sandbox(SandboxRequest::default())
        .await
        .unwrap();
    let create_s = t.elapsed().as_secs_f64();
    let mut warm = Vec::new();
    let mut ephemeral = Vec::new();
    for i in 0..runs + 1 {
        for warm_run in [true, false] {
            let req = RunRequest {
                task: TASK.into(),
                sandbox_id: warm_run.then(|| sandbox.id.clone()),
                ..Default::default()
            };
            let t = Instant::now();
            let (id, _) = orch.start_run(req).await.unwrap();
            let r = orch.wait(&id).await.unwrap();
            let s = t.elapsed().as_secs_f64();
            assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
            if i > 0 {
                if warm_run {
                    warm.push(s);
                } else {
                    ephemeral.push(s);
                }
            }
        }
    }
    orch.shutdown().await;
    let (w, e) = (median(&mut warm), median(&mut ephemeral));
    format!(
        "## Warm sandbox run ÷ ephemeral run (process backend)\n\n\
         | | median run time |\n|---|---|\n\
         | ephemeral (fresh sandbox, `opencode run`) | {e:.2} s |\n\
         | warm (`opencode serve`, HTTP API) | {w:.2} s |\n\
         | **ratio** (target <= 0.4) | **{:.3}** |\n\n\
         Creating the warm sandbox (to `running`, opencode serve listening): {create_s:.2} s.\n\n",
        w / e
    )
}

/// `delegate run` in a repository of `mb` MB ÷ the same run with `--no-repo`, interleaved: the
/// time a `repo` adds (snapshot, upload, the sandbox's clone, the commit inside it, the import,
/// the branch written back).
async fn repo_overhead(
    opencode: &Path,
    fake: &FakeAnthropic,
    tmp: &Path,
    runs: usize,
    mb: usize,
) -> String {
    let repo = tmp.join("bench-repo");
    make_repo(&repo, mb).await;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..runs + 1 {
        for use_repo in [true, false] {
            let data = tmp.join(format!("repo-run{i}-{use_repo}"));
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_delegate"));
            cmd.args(["run", "--json", "--quiet"]);
            if !use_repo {
                cmd.arg("--no-repo");
            }
            let t = Instant::now();
            let o = cmd
                .arg(TASK)
                .current_dir(&repo)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("DELEGATE_DATA_DIR", &data)
                .env("ANTHROPIC_API_KEY", KEY)
                .env("ANTHROPIC_BASE_URL", fake.base_url())
                .env("DELEGATE_OPENCODE_BIN", opencode)
                .env("DELEGATE_BACKEND", "process")
                .output()
                .await
                .unwrap();
            let s = t.elapsed().as_secs_f64();
            let json = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && json.contains("succeeded"),
                "delegate run failed: {json} {}",
                String::from_utf8_lossy(&o.stderr)
            );
            if use_repo {
                assert!(json.contains("delegate/"), "no branch written back: {json}");
            }
            // The first pair warms the page cache for both; it is not counted.
            if i > 0 {
                if use_repo { &mut with } else { &mut without }.push(s);
            }
        }
    }
    let (w, n) = (median(&mut with), median(&mut without));
    format!(
        "## The time a repository adds to a run (`delegate run`, process backend)\n\n\
         | | median wall time |\n|---|---|\n\
         | `delegate run --no-repo` | {n:.2} s |\n\
         | `delegate run` in a {mb} MB repository ({} files, one dirty, one untracked; the \
         change comes back as a branch) | {w:.2} s |\n\
         | **added** | **{:.2} s (ratio {:.3})** |\n\n",
        mb * 100,
        w - n,
        w / n
    )
}

/// A committed repository of `mb` MB in files of about 10 KB of source-like text, plus a dirty
/// tracked file and an untracked one.
async fn make_repo(root: &Path, mb: usize) {
    for i in 0..mb * 100 {
        let path = root.join(format!("src/m{}/f{i}.rs", i % 20));
        tokio::fs::create_dir_all(path.parent().unwrap())
            .await
            .unwrap();
        let mut x = (i as u64).wrapping_mul(2) | 1;
        let mut text = String::with_capacity(10_100);
        while text.len() < 10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text += &format!("    let v{:x} = {x:016x};\n", x % 4096);
        }
        tokio::fs::write(path, text).await.unwrap();
    }
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-q",
            "-m",
            "all",
        ],
    ] {
        let ok = tokio::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .await
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    tokio::fs::write(root.join("src/m0/f0.rs"), "changed\n")
        .await
        .unwrap();
    tokio::fs::write(root.join("NOTES.txt"), "untracked\n")
        .await
        .unwrap();
}

/// Streams `requests` requests straight to the fake and through each relay, alternating: a plain
/// byte relay and a bare HTTP pass-through (the floor any extra hop has on this machine), nginx if
/// installed (a standard reverse proxy), and delegate's proxy.
async fn proxy(fake: &FakeAnthropic, tmp: &Path, requests: usize) -> String {
    let seeded = common::seed_sandbox(&tmp.join("proxy.db")).await;
    let (store, token) = (seeded.store, seeded.token);
    let fast = side_by_side(&store, &token, fake, &tmp.join("nginx-fast"), requests).await;
    // A model answers its first token after a while; 25 ms per SSE event models that.
    let slow_fake = FakeAnthropic::start(Script::slow(25, Script::text("hi")))
        .await
        .unwrap();
    let slow = side_by_side(&store, &token, &slow_fake, &tmp.join("nginx-slow"), 50).await;
    let mut out = format!(
        "## Anthropic proxy, streamed requests, alternating direct and through each relay\n\n\
         Each request goes straight to the fake, then through each relay in turn, on one \
         keep-alive connection per path (reqwest, TCP_NODELAY). The byte relay only copies \
         (what one more loopback hop costs by itself); the bare HTTP relay is the same server \
         and reqwest client settings as delegate's proxy with nothing else (no token check, \
         budget, metering or header rewrite); nginx {} streams with keep-alive upstream.\n\n\
         | upstream | path | requests | total p50 / p99 | **added p50** | TTFB p50 | **TTFB ratio** |\n\
         |---|---|---|---|---|---|---|\n",
        if fast.has("nginx") {
            "(one worker)"
        } else {
            "(not installed: left out)"
        }
    );
    out += &fast.rows("instant", requests);
    out += &slow.rows("25 ms per event", 50);
    out += "\nTargets: added p50 <= 0.1 ms; TTFB ratio <= 1.2 on the instant fake.\n\n";
    out
}

/// Per path: total times and times to first byte, in ms.
struct Sides {
    paths: Vec<(&'static str, Vec<f64>, Vec<f64>)>,
}

impl Sides {
    fn p(v: &[f64], q: f64) -> f64 {
        percentile(&mut v.to_vec(), q)
    }
    fn has(&self, name: &str) -> bool {
        self.paths.iter().any(|(n, _, _)| *n == name)
    }
    fn rows(&self, upstream: &str, requests: usize) -> String {
        let (_, direct_total, direct_ttfb) = &self.paths[0];
        let (d50, dt50) = (Self::p(direct_total, 0.5), Self::p(direct_ttfb, 0.5));
        let mut out = String::new();
        for (name, total, ttfb) in &self.paths {
            out += &format!(
                "| {upstream} | {name} | {requests} | {:.3} / {:.3} ms | **{:.3}** ms | {:.3} ms | **{:.2}** |\n",
                Self::p(total, 0.5),
                Self::p(total, 0.99),
                Self::p(total, 0.5) - d50,
                Self::p(ttfb, 0.5),
                Self::p(ttfb, 0.5) / dt50,
            );
        }
        out
    }
}

async fn side_by_side(
    store: &Arc<dyn Store>,
    token: &str,
    fake: &FakeAnthropic,
    nginx_dir: &Path,
    requests: usize,
) -> Sides {
    let upstream = fake.base_url();
    let proxy = Proxy::new(
        store.clone(),
        Upstream {
            base_url: upstream.clone(),
            credential: Some(UpstreamCredential::ApiKey(Secret::new(KEY))),
        },
        ActiveRuns::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(delegate_server::net::serve_tcp(
        listener,
        proxy.router(),
        std::future::pending(),
    ));
    let byte_relay = support::relays::byte_relay(fake.addr()).await;
    let bare = support::relays::bare_http_relay(upstream.clone()).await;
    let nginx = support::relays::nginx(fake.addr(), nginx_dir).await;

    let mut paths: Vec<(&'static str, String, &str)> = vec![
        ("direct", upstream.clone(), KEY),
        ("byte relay", format!("http://{byte_relay}"), KEY),
        ("bare HTTP relay", format!("http://{bare}"), KEY),
    ];
    if let Some((_, addr)) = &nginx {
        paths.push(("nginx", format!("http://{addr}"), KEY));
    }
    paths.push(("delegate proxy", proxy_url, token));
    // One client per path, so each keeps its own warm connection.
    let clients: Vec<reqwest::Client> = paths
        .iter()
        .map(|_| {
            reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .unwrap()
        })
        .collect();
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true,
        "messages": [{ "role": "user", "content": "hello" }],
    });
    let mut sides = Sides {
        paths: paths
            .iter()
            .map(|(n, _, _)| (*n, Vec::new(), Vec::new()))
            .collect(),
    };
    for i in 0..requests + 10 {
        for (k, (_, url, key)) in paths.iter().enumerate() {
            let t = Instant::now();
            let resp = clients[k]
                .post(format!("{url}/v1/messages"))
                .header("x-api-key", *key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut stream = resp.bytes_stream();
            let mut ttfb = None;
            while let Some(chunk) = stream.next().await {
                chunk.unwrap();
                ttfb.get_or_insert_with(|| t.elapsed());
            }
            let total = t.elapsed();
            // The first 10 of each warm up connections and caches.
            if i >= 10 {
                sides.paths[k].1.push(ms(total));
                sides.paths[k].2.push(ms(ttfb.unwrap_or(total)));
            }
        }
    }
    drop(nginx);
    sides
}

/// `list_sandboxes` through `delegate serve`'s /mcp (stateless 2026-07-28 requests, JSON replies):
/// one client, then 50 concurrent clients, on the same server with two warm sandboxes.
async fn list_sandboxes_under_load(opencode: &Path, fake: &FakeAnthropic, tmp: &Path) -> String {
    let data = tmp.join("serve");
    let env = [
        ("DELEGATE_DATA_DIR", data.display().to_string()),
        ("ANTHROPIC_API_KEY", KEY.to_string()),
        ("ANTHROPIC_BASE_URL", fake.base_url()),
        ("DELEGATE_OPENCODE_BIN", opencode.display().to_string()),
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
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let mut serve = tokio::process::Command::new(delegate)
        .arg("serve")
        .envs(env.iter().cloned())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(serve.stderr.take().unwrap()));
    let url = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("delegate serve printed its address");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break format!("{}/mcp", rest.split_whitespace().next().unwrap());
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let call = move |name: &'static str, args: serde_json::Value| {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            let body = serde_json::json!({
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": { "name": name, "arguments": args, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": { "name": "bench", "version": "1" },
                    "io.modelcontextprotocol/clientCapabilities": {},
                } },
            });
            let t = Instant::now();
            let resp = client
                .post(&url)
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", name)
                .json(&body)
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["result"]["isError"], false, "{v}");
            (ms(t.elapsed()), v)
        }
    };
    for _ in 0..2 {
        call("create_sandbox", serde_json::json!({ "name": "bench" })).await;
    }
    let (_, listed) = call("list_sandboxes", serde_json::json!({})).await;
    assert_eq!(
        listed["result"]["structuredContent"]["sandboxes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let mut single = Vec::new();
    for i in 0..210 {
        let (t, _) = call("list_sandboxes", serde_json::json!({})).await;
        if i >= 10 {
            single.push(t);
        }
    }
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut v = Vec::new();
                for _ in 0..40 {
                    v.push(call("list_sandboxes", serde_json::json!({})).await.0);
                }
                v
            })
        })
        .collect();
    let mut many = Vec::new();
    for t in tasks {
        many.extend(t.await.unwrap());
    }
    for s in listed["result"]["structuredContent"]["sandboxes"]
        .as_array()
        .unwrap()
    {
        call(
            "delete_sandbox",
            serde_json::json!({ "sandbox_id": s["sandbox_id"] }),
        )
        .await;
    }
    let _ = serve.start_kill();
    let _ = serve.wait().await;
    format!(
        "## `list_sandboxes` over HTTP under concurrent clients\n\n\
         `delegate serve` (release build) with two warm sandboxes; stateless 2026-07-28 requests \
         with bearer auth from an in-process client.\n\n\
         | clients | calls | p50 | p99 |\n|---|---|---|---|\n\
         | 1 | {} | {:.2} ms | {:.2} ms |\n\
         | 50 concurrent | {} | {:.2} ms | {:.2} ms |\n\n",
        single.len(),
        percentile(&mut single, 0.5),
        percentile(&mut single, 0.99),
        many.len(),
        percentile(&mut many, 0.5),
        percentile(&mut many, 0.99),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

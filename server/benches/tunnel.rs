//! The tunnel's cost, side by side in one run: a 200 MiB download and small-request latency
//! (p50/p99, one keep-alive connection) straight to an HTTP server on loopback, through delegate's
//! tunnel (`delegate serve` in this process, a real `delegate agent connect` process, the server's
//! loopback endpoint), through `bore` (`bore server` + `bore local`, the reference tunnel), and
//! through two plain byte relays chained in this process (the floor: the two extra loopback hops
//! any tunnel of this shape makes, with nothing but copies).
//! Prints a Markdown section for BENCHMARKS.md.
//!
//!   DELEGATE_OPENCODE_BIN=.tools/node_modules/opencode-linux-x64/bin/opencode \
//!     cargo bench -p delegate-server --bench tunnel [-- --requests 2000 --downloads 3]
//!       [--only direct,floor,delegate,bore]
//!
//! `DELEGATE_BENCH_AGENT` names another `delegate` binary to run as the agent (a copy of an older
//! build, to alternate old and new builds side by side; the server side is this bench's own).
//!
//! Needs `bore` on PATH (`cargo install bore-cli`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::routing::get;
use delegate_mcp::types::SandboxStatus;
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;

#[path = "../tests/common/mod.rs"]
mod common;
use common::serve::Serve;

mod support;
use support::{arg, percentile};

const DOWNLOAD: usize = 200 << 20;
const SMALL: usize = 1024;

/// The HTTP server every path ends at: `/blob/{n}` streams n bytes, `/small` answers 1 KiB.
async fn target() -> u16 {
    let app = axum::Router::new()
        .route(
            "/blob/{size}",
            get(
                |axum::extract::Path(size): axum::extract::Path<usize>| async move {
                    let chunk = bytes::Bytes::from(vec![0x5a; 64 * 1024]);
                    let stream =
                        futures::stream::iter((0..size).step_by(chunk.len()).map(move |off| {
                            Ok::<_, std::io::Error>(chunk.slice(..chunk.len().min(size - off)))
                        }));
                    axum::body::Body::from_stream(stream)
                },
            ),
        )
        .route("/small", get(|| async { vec![b'x'; SMALL] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(delegate_server::net::serve_tcp(
        listener,
        app,
        std::future::pending(),
    ));
    port
}

/// One path's figures: MiB/s of the download (median of `downloads`), p50/p99 ms of small requests.
struct Figures {
    mib_s: f64,
    p50: f64,
    p99: f64,
}

async fn measure(
    base: &str,
    client: &reqwest::Client,
    requests: usize,
    downloads: usize,
) -> Figures {
    let mut rates = Vec::new();
    for _ in 0..downloads {
        let t = Instant::now();
        let mut body = client
            .get(format!("{base}/blob/{DOWNLOAD}"))
            .send()
            .await
            .unwrap()
            .bytes_stream();
        let mut n = 0;
        while let Some(c) = body.next().await {
            n += c.unwrap().len();
        }
        assert_eq!(n, DOWNLOAD);
        rates.push(DOWNLOAD as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64());
    }
    let mut lat = Vec::new();
    for i in 0..requests + 100 {
        let t = Instant::now();
        let body = client
            .get(format!("{base}/small"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len(), SMALL);
        if i >= 100 {
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Figures {
        mib_s: percentile(&mut rates, 0.5),
        p50: percentile(&mut lat, 0.5),
        p99: percentile(&mut lat, 0.99),
    }
}

fn client(auth: Option<String>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = auth {
        headers.insert("authorization", a.parse().unwrap());
    }
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .default_headers(headers)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

/// Waits for a line containing `marker` on a child's stdout or stderr; returns the rest of it.
async fn line_after(child: &mut tokio::process::Child, marker: &str) -> String {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let forward = |pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                // Lines after the marker are drained and dropped.
                let _ = tx.try_send(l);
            }
        });
    };
    forward(Box::new(child.stdout.take().unwrap()));
    forward(Box::new(child.stderr.take().unwrap()));
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = rx.recv().await {
            if let Some(rest) = l.split(marker).nth(1) {
                return rest.trim().to_string();
            }
        }
        panic!("{marker:?} never printed");
    })
    .await
    .expect("in time")
}

#[tokio::main]
async fn main() {
    delegate_server::net::install_crypto();
    let requests = arg("--requests", 2000);
    let downloads = arg("--downloads", 3);
    let tmp = tempfile::tempdir().unwrap();
    let port = target().await;
    let direct = format!("http://127.0.0.1:{port}");

    // delegate: a served router here, a real agent process joined with a registration code. The
    // sandbox is the agent's, so no opencode or bubblewrap runs on this side.
    let s = Serve::standalone()
        .env("ANTHROPIC_API_KEY", "sk-ant-unused")
        .env(
            "DELEGATE_OPENCODE_BIN",
            std::env::var("DELEGATE_OPENCODE_BIN").unwrap_or_else(|_| "opencode".into()),
        )
        .start()
        .await;
    let server = s.base.clone();
    let store = s.orch.store();
    let bench = s.account("bench").await;
    let (token, ws) = (bench.token, bench.personal);
    let code: serde_json::Value = reqwest::Client::new()
        .post(format!("{server}/api/workspaces/{}/agent-codes", ws.slug))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_bin = std::env::var("DELEGATE_BENCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_delegate").to_string());
    let mut agent = tokio::process::Command::new(agent_bin)
        .args(["agent", "connect", "--server", &server, "--name", "bench"])
        .args(["--code", code["code"].as_str().unwrap()])
        .args(["--opencode-url", &direct])
        .env("XDG_CONFIG_HOME", tmp.path().join("config"))
        .env("DELEGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let registered = line_after(&mut agent, "registered as sandbox ").await;
    let sandbox = registered.split_whitespace().next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.sandbox(&sandbox).await.unwrap().status != SandboxStatus::Running {
        assert!(Instant::now() < deadline, "the agent did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let endpoint = s.orch.local_endpoint(&sandbox.parse().unwrap()).unwrap();
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("opencode:{}", endpoint.password.expose())
        )
    );

    // bore: its server and a client exposing the same target.
    let mut bore_server = tokio::process::Command::new("bore")
        .args([
            "server",
            "--bind-addr",
            "127.0.0.1",
            "--min-port",
            "20000",
            "--max-port",
            "60000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bore on PATH (cargo install bore-cli)");
    line_after(&mut bore_server, "server listening").await;
    let mut bore_local = tokio::process::Command::new("bore")
        .args([
            "local",
            &port.to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bore_addr = line_after(&mut bore_local, "listening at ").await;
    let bore = format!("http://{bore_addr}");

    // The floor: client -> relay -> relay -> target, each relay a plain copy both ways.
    let target_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let inner = support::relays::byte_relay(target_addr).await;
    let floor = format!("http://{}", support::relays::byte_relay(inner).await);

    // `--only delegate` (say, under a profiler) measures one path; the others read as zero.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    let skipped = || Figures {
        mib_s: 0.0,
        p50: 0.0,
        p99: 0.0,
    };
    let mut d = skipped();
    let mut f = skipped();
    let mut t = skipped();
    let mut b = skipped();
    if wanted("direct") {
        d = measure(&direct, &client(None), requests, downloads).await;
    }
    if wanted("floor") {
        f = measure(&floor, &client(None), requests, downloads).await;
    }
    if wanted("delegate") {
        t = measure(&endpoint.url, &client(Some(auth)), requests, downloads).await;
    }
    if wanted("bore") {
        b = measure(&bore, &client(None), requests, downloads).await;
    }

    let row = |name: &str, f: &Figures| {
        format!(
            "| {name} | {:.0} MiB/s | **{:.2}** | {:.3} / {:.3} ms | **{:.2}** / **{:.2}** |\n",
            f.mib_s,
            f.mib_s / d.mib_s,
            f.p50,
            f.p99,
            f.p50 / d.p50,
            f.p99 / d.p99
        )
    };
    let mut out = format!(
        "## The tunnel: delegate ÷ direct loopback ÷ bore\n\n\
         One HTTP server on loopback; the client (reqwest, TCP_NODELAY, one keep-alive \
         connection) reaches it directly, through delegate's tunnel (this process serves the \
         router; a real `delegate agent connect` process connects the streams to the server; \
         the client talks to the sandbox's loopback endpoint with its Basic credentials), and \
         through `bore` (`bore server` + `bore local` on loopback), and through two plain byte \
         relays chained in the bench process (the floor of two extra hops). Download: {} MiB, median of \
         {downloads}. Small requests: {SMALL} B replies, {requests} after 100 warm-up.\n\n\
         | path | 200 MiB download | ÷ direct | small p50 / p99 | ÷ direct (p50 / p99) |\n\
         |---|---|---|---|---|\n",
        DOWNLOAD >> 20
    );
    out += &row("direct loopback", &d);
    out += &row("two byte relays (floor)", &f);
    out += &row("delegate tunnel", &t);
    out += &row("bore", &b);
    out += &format!(
        "\ndelegate ÷ bore: throughput **{:.2}**, small p50 **{:.2}**, p99 **{:.2}**.\n",
        t.mib_s / b.mib_s,
        t.p50 / b.p50,
        t.p99 / b.p99
    );
    out += &format!(
        "delegate ÷ floor: throughput **{:.2}**, small p50 **{:.2}**.\n",
        t.mib_s / f.mib_s,
        t.p50 / f.p50,
    );
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    drop(agent);
    s.orch.shutdown().await;
}

//! The egress proxy's cost, side by side in one run: a 200 MiB download and the connection
//! set-up time straight to an HTTP server on loopback, through delegate's egress proxy, and
//! through stock forward proxies packaged for Debian (tinyproxy, squid). Each download goes
//! both ways a sandbox's clients use a proxy: a CONNECT tunnel (HTTPS: npm, pip, cargo, git) and
//! plain-HTTP forwarding (`GET http://...`). Prints a Markdown section for BENCHMARKS.md.
//!
//!   apt-get install tinyproxy squid     # the reference proxies (a proxy missing is skipped)
//!   nice -n 10 cargo bench -p delegate-server --bench egress [-- --downloads 3 --setups 2000]
//!
//! The egress proxy runs on a runtime (and threads) of its own, as a separate proxy process
//! would; the client and the HTTP server share the main runtime. It listens on loopback TCP
//! here; in a sandbox the same code serves a unix socket the sandbox's relay connects to.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use delegate_server::egress::{Egress, Limits, Policy};
use delegate_server::settings::EgressPolicySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

mod support;
use support::{arg, percentile};

const DOWNLOAD: usize = 200 << 20;
/// The client's read buffer.
const READ: usize = 256 * 1024;

/// The HTTP server every path ends at: `/blob/{n}` streams n bytes with a Content-Length.
async fn target() -> SocketAddr {
    let app = axum::Router::new().route(
        "/blob/{size}",
        get(
            |axum::extract::Path(size): axum::extract::Path<usize>| async move {
                let chunk = bytes::Bytes::from(vec![0x5a; 64 * 1024]);
                let stream =
                    futures::stream::iter((0..size).step_by(chunk.len()).map(move |off| {
                        Ok::<_, std::io::Error>(chunk.slice(..chunk.len().min(size - off)))
                    }));
                (
                    [(http::header::CONTENT_LENGTH, size.to_string())],
                    axum::body::Body::from_stream(stream),
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(delegate_server::net::serve_tcp(
        listener,
        app,
        std::future::pending(),
    ));
    addr
}

/// How a client reaches the target.
#[derive(Clone, Copy)]
enum Route {
    Direct,
    /// `CONNECT` through the proxy at this address, then the request in the tunnel.
    Connect(SocketAddr),
    /// `GET http://target/...` to the proxy at this address.
    Forward(SocketAddr),
}

/// Reads up to the end of a response head; returns what was read past it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; READ];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
    }
}

/// A connection to `target` ready for a request: the TCP connection, plus the tunnel for CONNECT.
async fn open(route: Route, target: SocketAddr) -> TcpStream {
    match route {
        Route::Direct => connected(target).await,
        Route::Forward(proxy) => connected(proxy).await,
        Route::Connect(proxy) => {
            let mut s = connected(proxy).await;
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let (head, rest) = read_head(&mut s).await;
            assert!(head.contains(" 200"), "CONNECT refused: {head}");
            assert!(rest.is_empty(), "bytes before the request: {rest:?}");
            s
        }
    }
}

async fn connected(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// One download of `DOWNLOAD` bytes over a fresh connection; MiB/s from connect to the last byte.
async fn download(route: Route, target: SocketAddr) -> f64 {
    let t = Instant::now();
    let mut s = open(route, target).await;
    let path = format!("/blob/{DOWNLOAD}");
    let uri = match route {
        Route::Forward(_) => format!("http://{target}{path}"),
        _ => path,
    };
    s.write_all(
        format!("GET {uri} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, rest) = read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    let mut n = rest.len();
    let mut chunk = vec![0u8; READ];
    while n < DOWNLOAD {
        let r = s.read(&mut chunk).await.unwrap();
        assert!(r > 0, "the download ended at {n} bytes");
        n += r;
    }
    assert_eq!(n, DOWNLOAD);
    DOWNLOAD as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

/// Milliseconds from starting to connect to a connection ready for a request (for a proxy:
/// the tunnel established), `n` times after 100 warm-up; p50 and p99.
async fn setups(route: Route, target: SocketAddr, n: usize) -> (f64, f64) {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        let s = open(route, target).await;
        let took = t.elapsed().as_secs_f64() * 1000.0;
        drop(s);
        if i >= 100 {
            ms.push(took);
        }
    }
    (percentile(&mut ms, 0.5), percentile(&mut ms, 0.99))
}

/// delegate's egress proxy, allowing the target by host and (loopback) address, on its own
/// runtime; its address.
fn egress(target: SocketAddr, stop: CancellationToken) -> SocketAddr {
    let policy = Policy::parse(
        "bench",
        &EgressPolicySettings {
            hosts: vec![target.to_string()],
            allow_addresses: vec![target.ip().to_string()],
        },
    )
    .unwrap();
    let egress = Egress::new(Arc::new(policy), Limits::with_max_bytes(u64::MAX));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            egress.serve(listener, stop).await;
        });
    });
    rx.recv().unwrap()
}

/// A loopback port free right now, for a proxy that cannot be told to pick one.
async fn free_port() -> u16 {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addr` accepts connections.
async fn listening(addr: SocketAddr, child: &mut tokio::process::Child, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited ({status}) before listening on {addr}");
        }
        assert!(
            Instant::now() < deadline,
            "{name} is not listening on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// tinyproxy in the foreground on a free loopback port; `None` when it is not installed.
async fn tinyproxy(dir: &std::path::Path) -> Option<(tokio::process::Child, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let conf = dir.join("tinyproxy.conf");
    tokio::fs::write(
        &conf,
        format!(
            "User nobody\nGroup nogroup\nPort {}\nListen 127.0.0.1\nTimeout 600\nMaxClients 200\n\
             LogLevel Critical\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            addr.port()
        ),
    )
    .await
    .unwrap();
    let mut child = tokio::process::Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    listening(addr, &mut child, "tinyproxy").await;
    Some((child, addr))
}

/// squid in the foreground, no cache, on a free loopback port; `None` when it is not installed.
async fn squid(dir: &std::path::Path) -> Option<(tokio::process::Child, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().await));
    let run = dir.join("squid");
    tokio::fs::create_dir_all(&run).await.unwrap();
    // Squid drops to its own user, which must write its log here.
    tokio::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .await
        .unwrap();
    let conf = dir.join("squid.conf");
    tokio::fs::write(
        &conf,
        format!(
            "http_port {addr}\nhttp_access allow all\ncache deny all\ncache_mem 8 MB\n\
             access_log none\ncache_log {run}/cache.log\npid_filename {run}/squid.pid\n\
             coredump_dir {run}\nshutdown_lifetime 0 seconds\nvia off\n\
             forwarded_for delete\n",
            run = run.display()
        ),
    )
    .await
    .unwrap();
    let mut child = tokio::process::Command::new("squid")
        .args(["-N", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    listening(addr, &mut child, "squid").await;
    Some((child, addr))
}

/// One proxy's figures (or direct's).
struct Figures {
    connect_mib_s: f64,
    forward_mib_s: f64,
    setup_p50: f64,
    setup_p99: f64,
}

async fn measure(
    proxy: Option<SocketAddr>,
    target: SocketAddr,
    downloads: usize,
    n: usize,
) -> Figures {
    let median = |mut v: Vec<f64>| percentile(&mut v, 0.5);
    let (connect, forward, setup) = match proxy {
        None => (Route::Direct, Route::Direct, Route::Direct),
        Some(p) => (Route::Connect(p), Route::Forward(p), Route::Connect(p)),
    };
    let mut c = Vec::new();
    let mut f = Vec::new();
    for _ in 0..downloads {
        c.push(download(connect, target).await);
        f.push(download(forward, target).await);
    }
    let (setup_p50, setup_p99) = setups(setup, target, n).await;
    Figures {
        connect_mib_s: median(c),
        forward_mib_s: median(f),
        setup_p50,
        setup_p99,
    }
}

#[tokio::main]
async fn main() {
    let downloads = arg("--downloads", 3);
    let n = arg("--setups", 2000);
    let tmp = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let target = target().await;
    let delegate = egress(target, stop.clone());
    let tiny = tinyproxy(tmp.path()).await;
    let squid = squid(tmp.path()).await;

    let d = measure(None, target, downloads, n).await;
    let mut rows = vec![(
        "delegate egress proxy",
        measure(Some(delegate), target, downloads, n).await,
    )];
    match &tiny {
        Some((_, addr)) => rows.push((
            "tinyproxy",
            measure(Some(*addr), target, downloads, n).await,
        )),
        None => eprintln!(
            "egress bench: tinyproxy is not installed (apt-get install tinyproxy); skipped"
        ),
    }
    match &squid {
        Some((_, addr)) => rows.push(("squid", measure(Some(*addr), target, downloads, n).await)),
        None => eprintln!("egress bench: squid is not installed (apt-get install squid); skipped"),
    }

    let mut out = format!(
        "## The egress proxy: delegate ÷ direct loopback ÷ tinyproxy and squid\n\n\
         One HTTP server on loopback; a raw client (TCP_NODELAY, {} KiB reads, a fresh \
         connection per download) reaches it directly, through delegate's egress proxy (its \
         own runtime, policy allowing the server's address) and through tinyproxy {} and squid \
         {} (Debian packages, no cache). Download: {} MiB, median of {downloads}, once in a \
         CONNECT tunnel and once forwarded as `GET http://...`. Set-up: from connect to a \
         connection ready for the request (through a proxy: `200 Connection established`), \
         {n} after 100 warm-up.\n\n\
         | path | CONNECT download | ÷ direct | forwarded download | ÷ direct | set-up p50 / p99 | added p50 / p99 |\n\
         |---|---|---|---|---|---|---|\n",
        READ >> 10,
        version("tinyproxy", &["-v"]).await,
        version("squid", &["-v"]).await,
        DOWNLOAD >> 20
    );
    out += &format!(
        "| direct loopback | {:.0} MiB/s | 1 | {:.0} MiB/s | 1 | {:.3} / {:.3} ms | — |\n",
        d.connect_mib_s, d.forward_mib_s, d.setup_p50, d.setup_p99
    );
    for (name, f) in &rows {
        out += &format!(
            "| {name} | {:.0} MiB/s | **{:.2}** | {:.0} MiB/s | **{:.2}** | {:.3} / {:.3} ms | {:.3} / {:.3} ms |\n",
            f.connect_mib_s,
            f.connect_mib_s / d.connect_mib_s,
            f.forward_mib_s,
            f.forward_mib_s / d.forward_mib_s,
            f.setup_p50,
            f.setup_p99,
            f.setup_p50 - d.setup_p50,
            f.setup_p99 - d.setup_p99
        );
    }
    let ours = &rows[0].1;
    for (name, f) in rows.iter().skip(1) {
        out += &format!(
            "\ndelegate ÷ {name}: CONNECT throughput **{:.2}**, forwarded **{:.2}**, set-up p50 **{:.2}**, p99 **{:.2}**.\n",
            ours.connect_mib_s / f.connect_mib_s,
            ours.forward_mib_s / f.forward_mib_s,
            ours.setup_p50 / f.setup_p50,
            ours.setup_p99 / f.setup_p99
        );
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    stop.cancel();
    drop((tiny, squid));
}

/// The first line of `bin args` with the program's name dropped, or "(missing)".
async fn version(bin: &str, args: &[&str]) -> String {
    tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .next()
                .and_then(|l| l.split_whitespace().last())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(missing)".into())
}

//! Baselines for the relay benchmarks: the least work a relay of each shape must do, measured
//! beside delegate's in the same run, so a ratio can be read against what is reachable at all on
//! this machine.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;

/// Buffer of each direction of a byte relay: large enough that a bulk transfer is not held up by
/// it (tokio's default is 8 KiB).
const COPY_BUFFER: usize = 256 * 1024;

/// A plain byte relay on a fresh loopback port to `target`: accept, connect, copy both ways. No
/// parsing, no framing: what an extra loopback hop costs by itself.
pub async fn byte_relay(target: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = inbound.set_nodelay(true);
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut inbound,
                    &mut outbound,
                    COPY_BUFFER,
                    COPY_BUFFER,
                )
                .await;
            });
        }
    });
    addr
}

/// Headers a pass-through must not copy (hop-by-hop, and the ones hyper sets itself).
const HOP_BY_HOP: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// A bare HTTP pass-through on a fresh loopback port to `upstream` (`http://host:port`): the same
/// server (`net::serve_tcp`) and the same reqwest client settings as delegate's proxy, and
/// nothing else: no token check, no budget, no metering, no header rewrite beyond hop-by-hop.
pub async fn bare_http_relay(upstream: String) -> SocketAddr {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    async fn relay(
        State((client, upstream)): State<(reqwest::Client, String)>,
        request: Request,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 32 << 20).await.unwrap();
        let mut headers = header::HeaderMap::new();
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let reply = client
            .request(parts.method, format!("{upstream}{path}"))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        let mut response = Response::builder().status(reply.status());
        for (name, value) in reply.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) && name != header::CONTENT_LENGTH {
                response = response.header(name, value);
            }
        }
        response
            .body(Body::from_stream(reply.bytes_stream()))
            .unwrap()
    }
    let app = axum::Router::new()
        .fallback(relay)
        .with_state((client, upstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(delegate_server::net::serve_tcp(
        listener,
        app,
        std::future::pending(),
    ));
    addr
}

/// nginx as a streaming reverse proxy to `upstream` (one worker, keep-alive to the upstream, no
/// buffering, TCP_NODELAY), if `nginx` is installed; `None` (with a note on stderr) if not. The
/// child is killed when the handle drops.
pub async fn nginx(
    upstream: SocketAddr,
    dir: &Path,
) -> Option<(tokio::process::Child, SocketAddr)> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).is_file())?;
    // nginx binds the port itself: take a free one and hand it over.
    let port = {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    tokio::fs::create_dir_all(dir).await.unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           upstream up {{ server {upstream}; keepalive 16; }}\n\
           server {{\n\
             listen 127.0.0.1:{port}; tcp_nodelay on;\n\
             location / {{\n\
               proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
               proxy_buffering off; proxy_request_buffering off;\n\
             }}\n\
           }}\n\
         }}\n"
    );
    let path = dir.join("nginx.conf");
    tokio::fs::write(&path, conf).await.unwrap();
    let child = tokio::process::Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Ready when it accepts a connection.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Some((child, addr));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    eprintln!("nginx did not start listening; see {d}/error.log");
    None
}

//! Loopback stand-ins for what a sandbox's real clients fetch through delegate's egress proxy
//! (issue 12): a PEP 503 simple index holding one real wheel (for `pip download`), a repository
//! behind `git http-backend` (for `git clone` over HTTP), and the same routes over HTTPS with a
//! certificate from a CA made for the test by the `openssl` CLI (for `curl`, and pip, trusting
//! it through `CURL_CA_BUNDLE` / `PIP_CERT`). Everything listens on 127.0.0.1, port 0.
//!
//! These are fixtures: making the CA, the wheel and the repository blocks, before anything
//! under test runs.

#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use crate::real;

/// The package the index offers (its normalized PEP 503 name).
pub const PACKAGE: &str = "delegate-probe";
/// Its one version.
pub const VERSION: &str = "1.0.0";
/// The wheel's file name.
pub const WHEEL: &str = "delegate_probe-1.0.0-py3-none-any.whl";
/// The body of `/hello`.
pub const GREETING: &str = "hello from the registry";
/// A line of the served repository's README.
pub const REPO_LINE: &str = "cloned through delegate's egress proxy";
/// A request body over this is refused (the git CGI reads it whole).
const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The running stand-ins; they stop when this is dropped.
pub struct Registry {
    /// Plain HTTP: `/hello`, `/redirect` (to `localhost`, on this same port),
    /// `/redirect-loopback` (to `127.0.0.2`, on this same port), `/simple/...`,
    /// `/files/WHEEL` and `/git/project.git` (git's smart HTTP).
    pub http: SocketAddr,
    /// The same routes over TLS, for a certificate valid for `127.0.0.1` only.
    pub https: SocketAddr,
    /// The test CA's certificate (PEM), what clients must trust for [`https`](Self::https).
    pub ca_pem: String,
    /// The wheel's SHA-256 (hex), as the index announces it: pip checks it.
    pub wheel_sha256: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared {
    wheel: Bytes,
    wheel_sha256: String,
    git_root: PathBuf,
    http_port: OnceLock<u16>,
}

impl Registry {
    /// Starts both servers; `None` (after saying why) when git's http-backend or openssl is
    /// missing and skipping is allowed.
    pub async fn start() -> Option<Registry> {
        let openssl = real::on_path("openssl").or_else(|| {
            real::unavailable(
                "openssl",
                "the openssl CLI makes the test CA (apt install openssl)",
            )
        })?;
        let git_core = git_exec_path()?;
        if !git_core.join("git-http-backend").is_file() {
            return real::unavailable(
                "git http-backend",
                &format!("not in {} (apt install git)", git_core.display()),
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("dlg-registry")
            .tempdir()
            .expect("temp dir");
        let ca = make_ca(&openssl, dir.path());
        let git_root = dir.path().join("git");
        make_repository(&git_root);
        let wheel = Bytes::from(make_wheel());
        let wheel_sha256 = hex::encode(Sha256::digest(&wheel));
        let shared = Arc::new(Shared {
            wheel,
            wheel_sha256: wheel_sha256.clone(),
            git_root,
            http_port: OnceLock::new(),
        });
        let router = routes(shared.clone());
        let stop = CancellationToken::new();

        let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = plain.local_addr().expect("addr");
        shared.http_port.set(http.port()).expect("set once");
        let serving = router.clone();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(plain, serving)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });

        let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let https = tls.local_addr().expect("addr");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![ca.leaf_der.into()],
            ca.key_der.try_into().expect("key"),
        )
        .expect("the test certificate");
        let listener = TlsListener {
            tcp: tls,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });
        Some(Registry {
            http,
            https,
            ca_pem: ca.ca_pem,
            wheel_sha256,
            stop,
            _dir: dir,
        })
    }
}

fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/hello", get(|| async { GREETING }))
        .route("/redirect", get(redirect))
        .route("/redirect-loopback", get(redirect_loopback))
        .route("/simple/", get(index))
        .route("/simple/{name}/", get(project))
        .route("/files/{file}", get(file))
        .route("/git/{*path}", any(git_cgi))
        .with_state(shared)
}

async fn redirect(State(shared): State<Arc<Shared>>) -> Response {
    let port = shared.http_port.get().copied().unwrap_or(0);
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("http://localhost:{port}/hello"))],
    )
        .into_response()
}

/// To another loopback address (nothing listens there: the proxy must refuse before any
/// connection).
async fn redirect_loopback(State(shared): State<Arc<Shared>>) -> Response {
    let port = shared.http_port.get().copied().unwrap_or(0);
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("http://127.0.0.2:{port}/hello"))],
    )
        .into_response()
}

fn html(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<!DOCTYPE html><html><body>\n{body}</body></html>\n"),
    )
        .into_response()
}

async fn index() -> Response {
    html(format!("<a href=\"/simple/{PACKAGE}/\">{PACKAGE}</a>\n"))
}

async fn project(State(shared): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    if name != PACKAGE {
        return StatusCode::NOT_FOUND.into_response();
    }
    html(format!(
        "<a href=\"/files/{WHEEL}#sha256={}\">{WHEEL}</a>\n",
        shared.wheel_sha256
    ))
}

async fn file(State(shared): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    if name != WHEEL {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        shared.wheel.clone(),
    )
        .into_response()
}

/// Runs `git http-backend` as a CGI for one request: the request body on its stdin, its CGI
/// headers turned into the response's, the rest streamed as the body.
async fn git_cgi(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let path_info = parts
        .uri
        .path()
        .strip_prefix("/git")
        .unwrap_or("/")
        .to_string();
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &shared.git_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_PROTOCOL", {
            parts
                .headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = command.spawn() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot run git http-backend",
        )
            .into_response();
    };
    let mut stdin = child.stdin.take().expect("piped");
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    loop {
        let mut line = String::new();
        match stdout.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            headers.append(name, value);
        }
    }
    // The child is reaped when the body's stream (which owns it) ends.
    let stream = async_stream::stream! {
        let mut child = child;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => yield Ok::<Bytes, std::io::Error>(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => { yield Err(e); break; }
            }
        }
        let _ = child.wait().await;
    };
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// TLS on a loopback listener for `axum::serve`: a failed handshake drops that connection only.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(stream);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn git_exec_path() -> Option<PathBuf> {
    let out = Command::new("git").arg("--exec-path").output();
    match out {
        Ok(out) if out.status.success() => Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )),
        _ => real::unavailable("git", "git is not on PATH (apt install git)"),
    }
}

struct TestCa {
    ca_pem: String,
    leaf_der: Vec<u8>,
    key_der: Vec<u8>,
}

/// A CA and a leaf certificate for IP 127.0.0.1 signed by it, with the openssl CLI.
fn make_ca(openssl: &Path, dir: &Path) -> TestCa {
    let run = |args: &[&str]| {
        let out = Command::new(openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .expect("write leaf.ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=delegate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-outform",
        "DER",
        "-out",
        "leaf.der",
    ]);
    run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "leaf.key",
        "-outform",
        "DER",
        "-out",
        "leaf.key.der",
    ]);
    let read = |name: &str| std::fs::read(dir.join(name)).expect("read what openssl wrote");
    TestCa {
        ca_pem: String::from_utf8(read("ca.pem")).expect("PEM is text"),
        leaf_der: read("leaf.der"),
        key_der: read("leaf.key.der"),
    }
}

/// A bare repository `project.git` under `root` with one commit (README).
fn make_repository(root: &Path) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    crate::repos::write(&work.join("README"), format!("{REPO_LINE}\n"));
    crate::repos::git(&work, &["init", "-q"]);
    crate::repos::git(&work, &["add", "README"]);
    crate::repos::git(&work, &["commit", "-qm", "the served repository"]);
    crate::repos::git(root, &["clone", "-q", "--bare", "work", "project.git"]);
}

/// A real, minimal wheel: a module and its dist-info (METADATA, WHEEL, RECORD), zipped
/// uncompressed.
pub fn make_wheel() -> Vec<u8> {
    let info = format!("delegate_probe-{VERSION}.dist-info");
    let files = [
        (
            "delegate_probe/__init__.py".to_string(),
            format!("GREETING = {GREETING:?}\n"),
        ),
        (
            format!("{info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n"),
        ),
        (
            format!("{info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: delegate-testkit\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_string(),
        ),
    ];
    let mut record: String = files
        .iter()
        .map(|(name, _)| format!("{name},,\n"))
        .collect();
    record.push_str(&format!("{info}/RECORD,,\n"));
    let mut entries: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .map(|(n, c)| (n, c.into_bytes()))
        .collect();
    entries.push((format!("{info}/RECORD"), record.into_bytes()));
    stored_zip(&entries)
}

/// A zip archive of `entries`, stored (no compression).
fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let name_len = name.len() as u16;
        // Local file header: version 2.0, no flags, stored, a fixed 1980 timestamp.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for v in [20u16, 0, 0, 0, 0x21] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc, size, size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        for v in [20u16, 20, 0, 0, 0, 0x21] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc, size, size] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [name_len, 0, 0, 0, 0] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = out.len() as u32;
    let central_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    let count = entries.len() as u16;
    for v in [0u16, 0, count, count] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&central_size.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// CRC-32 (IEEE), as zip wants it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_a_known_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}

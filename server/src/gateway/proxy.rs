//! The forwarding to a sandbox's `opencode serve`: HTTP with streamed bodies (SSE included) and
//! WebSocket upgrades spliced through, with opencode's Basic credentials injected and delegate's
//! own cookies and credentials held back; an open stream keeps the sandbox awake.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{COOKIE, Gateway, SECURE_COOKIE};
use crate::credentials;
use crate::ids::SandboxId;

/// While a stream (SSE, WebSocket) to a sandbox is open, its viewer counts as activity this often,
/// so a watched sandbox is not paused for idleness (the idle sweep looks every second).
const VIEWER_TOUCH: Duration = Duration::from_secs(1);

impl Gateway {
    /// Touches the sandbox every [`VIEWER_TOUCH`] until the returned guard is dropped (with the
    /// response body or the spliced WebSocket).
    pub(super) fn keep_awake(&self, sandbox_id: &SandboxId) -> DropGuard {
        let stop = CancellationToken::new();
        let orch = self.orch().clone();
        let id = sandbox_id.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(VIEWER_TOUCH);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tick.tick() => orch.touch_sandbox(&id),
                }
            }
        });
        stop.drop_guard()
    }
}

/// Headers that belong to one connection, not to the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwards one request to opencode serve at `base` (`http://127.0.0.1:PORT`) with its Basic
/// credentials, streaming both bodies; a WebSocket (any `Upgrade`) is spliced through after 101.
/// `lost` resolves when the viewer's access ends (removed from the workspace, signed out): an
/// open WebSocket or streamed body is then cut.
pub(super) async fn forward(
    base: &str,
    password: &str,
    mut request: Request,
    viewing: DropGuard,
    lost: futures::future::BoxFuture<'static, ()>,
) -> Result<Response, String> {
    let authority = base
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .ok_or_else(|| format!("not an http URL: {base}"))?
        .to_string();
    let upgrade = request.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));

    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(http::uri::PathAndQuery::as_str)
        .unwrap_or("/");
    let uri: Uri = path.parse().map_err(|e| format!("uri: {e}"))?;
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
        .map_err(|e| e.to_string())?;
    let headers = out.headers_mut();
    for (name, value) in &parts.headers {
        if HOP_BY_HOP.contains(&name.as_str())
            || name == header::HOST
            || name == header::AUTHORIZATION
            || name == header::COOKIE
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    // The browser's delegate cookies stay here; opencode's own cookies (if any) go on.
    let kept: Vec<String> = credentials::cookies(&parts.headers)
        .filter(|(k, _)| *k != COOKIE && *k != SECURE_COOKIE && *k != crate::auth::sessions::COOKIE)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("opencode:{password}"));
    let mut auth = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|e| e.to_string())?;
    auth.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, auth);
    if let Some(up) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up.clone());
    }

    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "gateway: upstream connection ended");
        }
    });
    let mut response = sender
        .send_request(out)
        .await
        .map_err(|e| format!("request: {e}"))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let _viewing = viewing;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        // Dropping both ends closes the terminal the member no longer may use.
                        _ = lost => tracing::info!("gateway: closed a WebSocket whose viewer lost access"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "gateway: upgrade failed"),
            }
        });
        let (mut parts, _) = response.into_parts();
        parts.headers.remove(header::SET_COOKIE);
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(HeaderName::from_static(name));
    }
    // The sandbox controls this answer, and its host is same-site with delegate's: a cookie it
    // sets could shadow or toss delegate's own (or a sibling sandbox's). None pass.
    parts.headers.remove(header::SET_COOKIE);
    // opencode asks for Basic credentials only if ours failed; the browser must not prompt.
    parts.headers.remove(header::WWW_AUTHENTICATE);
    // The viewer stays "active" for as long as the body streams (an SSE stream: as long as open).
    let body = Body::new(body)
        .into_data_stream()
        .map(move |chunk| {
            let _ = &viewing;
            chunk
        })
        .take_until(lost);
    Ok(Response::from_parts(parts, Body::from_stream(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::page;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stand-in for opencode serve that records the request head, answers a WebSocket
    /// handshake with 101 and then echoes bytes: enough to see what the gateway forwards.
    async fn upstream() -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                sock.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            sock.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Set-Cookie: delegate_session=planted; Domain=example; Path=/\r\n\r\n",
            )
            .await
            .unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn websocket_upgrades_are_spliced_with_credentials_injected_and_cookies_stripped() {
        let (upstream_url, head) = upstream().await;
        let revoke = CancellationToken::new();
        let revoked = revoke.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let upstream_url = upstream_url.clone();
            let revoked = revoked.clone();
            async move {
                forward(
                    &upstream_url,
                    "serve-pass",
                    req,
                    CancellationToken::new().drop_guard(),
                    Box::pin(revoked.cancelled_owned()),
                )
                .await
                .unwrap_or_else(|e| page(StatusCode::BAD_GATEWAY, &e))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(
                b"GET /pty/x/connect?a=1 HTTP/1.1\r\nHost: oc-sbx.example\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Version: 13\r\nAuthorization: Bearer dlg_browser\r\n\
                  Cookie: delegate_gateway=dgc_secret; theme=dark; delegate_session=dss_secret\r\n\r\n",
            )
            .await
            .unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n\r\n") {
            client.read_exact(&mut byte).await.unwrap();
            reply.push(byte[0]);
        }
        let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
        assert!(reply.starts_with("http/1.1 101"), "{reply}");
        assert!(
            !reply.contains("set-cookie"),
            "the sandbox set a cookie: {reply}"
        );
        client.write_all(b"ping through").await.unwrap();
        let mut echo = [0u8; 12];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping through");
        // Access lost (member removed, signed out): the spliced connection ends.
        revoke.cancel();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the WebSocket closes when access is lost");
        assert!(read.is_err() || rest.is_empty(), "{rest:?}");

        let head = head.await.unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(
            head.starts_with("GET /pty/x/connect?a=1 HTTP/1.1"),
            "{head}"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("opencode:serve-pass");
        assert!(head.contains(&format!("Basic {basic}")), "{head}");
        assert!(lower.contains("upgrade: websocket"), "{head}");
        assert!(
            lower.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
            "{head}"
        );
        for secret in ["dlg_browser", "dgc_secret", "dss_secret"] {
            assert!(!head.contains(secret), "{secret} reached opencode: {head}");
        }
        assert!(
            head.contains("theme=dark"),
            "opencode's own cookies pass: {head}"
        );
    }
}

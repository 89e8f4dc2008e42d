//! The browser gateway to a warm sandbox's own opencode web UI: requests for the host
//! `oc-{sandbox_id}.{BASE_DOMAIN}` are proxied (HTTP, streamed SSE, WebSocket upgrades) to that
//! sandbox's `opencode serve`, with its Basic credentials injected here so the browser never
//! learns them.
//!
//! How a browser gets in without a long-lived token in any URL: the signed-in UI asks
//! `POST /api/sandboxes/{id}/open` (session cookie + CSRF check) for a one-time [`TICKET_TTL`]
//! ticket, then navigates to `oc-{id}.{BASE_DOMAIN}/_delegate/auth?ticket=...`. The gateway
//! redeems it once and sets a host-only (no `Domain`), HttpOnly, SameSite=Lax cookie bound to
//! (user, sandbox), valid [`COOKIE_TTL`]. Every request then re-checks the user's role in the
//! sandbox's workspace, so a removed member is out on the next request. Tickets and gateway
//! cookies live in this process's memory: the sandbox's opencode runs in this process too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use delegate_mcp::delegator::Caller;
use delegate_mcp::types::SandboxStatus;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::credentials;
use crate::delegation::{Action, Service};
use crate::error::Error;
use crate::ids::{hash_secret, new_secret};
use crate::orchestrator::Orchestrator;

/// How long a ticket from `POST /api/sandboxes/{id}/open` can be redeemed.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// How long a gateway cookie lasts; the role is re-checked on every request regardless.
pub const COOKIE_TTL: Duration = Duration::from_secs(3600);
/// The gateway's cookie on `oc-{id}` hosts.
pub const COOKIE: &str = "delegate_gateway";
/// The gateway's own path on `oc-{id}` hosts (never forwarded to opencode).
pub const AUTH_PATH: &str = "/_delegate/auth";
/// Host label prefix of sandbox hosts.
/// Entries kept at most (tickets, cookies): a flood of opens cannot grow memory without bound.
const MAX_ENTRIES: usize = 100_000;
/// While a stream (SSE, WebSocket) to a sandbox is open, its viewer counts as activity this often,
/// so a watched sandbox is not paused for idleness (the idle sweep looks every second).
const VIEWER_TOUCH: Duration = Duration::from_secs(1);

/// Who a ticket or cookie admits, and until when.
#[derive(Clone)]
struct Grant {
    user_id: String,
    sandbox_id: String,
    /// Hash of the session (or API token) that asked for the ticket: signing out (revoking it)
    /// closes the gateway too.
    credential_hash: String,
    expires: Instant,
}

/// The gateway: tickets, cookies, and the forwarding; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    service: Service,
    /// Ticket hash -> grant; removed when redeemed.
    tickets: Mutex<HashMap<String, Grant>>,
    /// Cookie hash -> grant.
    cookies: Mutex<HashMap<String, Grant>>,
}

/// A one-time ticket and where to take it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct OpenTicket {
    /// Navigate the browser here (within `expires_in_seconds`); it works once.
    pub url: String,
    pub expires_in_seconds: u64,
}

impl Gateway {
    pub fn new(orch: Orchestrator) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                service: Service::new(orch),
                tickets: Mutex::default(),
                cookies: Mutex::default(),
            }),
        }
    }

    fn orch(&self) -> &Orchestrator {
        self.inner.service.orchestrator()
    }

    /// The gateway origin of a sandbox; `None` without `BASE_DOMAIN`.
    pub fn sandbox_origin(&self, sandbox_id: &str) -> Option<String> {
        self.orch().settings().sandbox_origin(sandbox_id)
    }

    /// Where the sign-in page lives: the public URL, else the base domain itself.
    fn main_origin(&self) -> Option<String> {
        let s = self.orch().settings();
        match (&s.public_url, &s.base_domain) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
            (None, Some(domain)) => Some(format!("{}://{domain}", s.base_scheme)),
            (None, None) => None,
        }
    }

    /// A ticket for `caller` to open `sandbox_id` (developers and up: opencode's UI can change
    /// files). The sandbox must be running in this process.
    pub async fn open(
        &self,
        caller: &Caller,
        credential: &str,
        sandbox_id: &str,
    ) -> Result<OpenTicket, Error> {
        let sandbox = self
            .inner
            .service
            .sandbox(caller, sandbox_id, Action::Write)
            .await?;
        let origin = self.sandbox_origin(&sandbox.id).ok_or_else(|| {
            Error::Conflict(
                "the opencode gateway is off: set BASE_DOMAIN (e.g. localhost:8080)".into(),
            )
        })?;
        if sandbox.status != SandboxStatus::Running
            || self.orch().serve_endpoint(&sandbox.id).is_none()
        {
            return Err(Error::Conflict(format!(
                "sandbox {} is {}: only a running warm sandbox opens",
                sandbox.id, sandbox.status
            )));
        }
        let ticket = new_secret("dgt_");
        insert(
            &self.inner.tickets,
            hash_secret(&ticket),
            Grant {
                user_id: caller.user_id.clone(),
                sandbox_id: sandbox.id.clone(),
                credential_hash: hash_secret(credential),
                expires: Instant::now() + TICKET_TTL,
            },
        );
        Ok(OpenTicket {
            url: format!("{origin}{AUTH_PATH}?ticket={ticket}"),
            expires_in_seconds: TICKET_TTL.as_secs(),
        })
    }

    /// The sandbox id a `Host` header names, if it is a gateway host.
    pub fn sandbox_of_host(&self, host: &str) -> Option<String> {
        let domain = self.orch().settings().base_domain.as_deref()?;
        let host = host.trim().to_ascii_lowercase();
        let label = host.strip_suffix(domain)?.strip_suffix('.')?;
        let id = label.strip_prefix(crate::settings::SANDBOX_HOST_PREFIX)?;
        crate::ids::is_id("sbx", id).then(|| id.to_string())
    }

    /// Redeems a ticket (once) for a cookie on this sandbox's host.
    fn redeem(&self, sandbox_id: &str, query: Option<&str>) -> Response {
        let ticket = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("ticket="));
        let grant = ticket.and_then(|t| lock(&self.inner.tickets).remove(&hash_secret(t)));
        let Some(grant) =
            grant.filter(|g| g.sandbox_id == sandbox_id && g.expires > Instant::now())
        else {
            return page(
                StatusCode::FORBIDDEN,
                "This link has expired or was used already. Open the sandbox again from delegate.",
            );
        };
        let secret = new_secret("dgc_");
        insert(
            &self.inner.cookies,
            hash_secret(&secret),
            Grant {
                expires: Instant::now() + COOKIE_TTL,
                ..grant
            },
        );
        let secure = if self.orch().settings().base_scheme == "https" {
            "; Secure"
        } else {
            ""
        };
        // No Domain attribute: the cookie stays on this one sandbox host.
        let cookie = format!(
            "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            COOKIE_TTL.as_secs()
        );
        let mut r = redirect("/");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    /// The grant a request's gateway cookie holds for this sandbox, if any.
    fn cookie_grant(&self, sandbox_id: &str, headers: &HeaderMap) -> Option<Grant> {
        let secret = credentials::cookie(headers, COOKIE)?;
        let mut cookies = lock(&self.inner.cookies);
        let hash = hash_secret(secret);
        let grant = cookies.get(&hash)?;
        if grant.expires <= Instant::now() {
            cookies.remove(&hash);
            return None;
        }
        (grant.sandbox_id == sandbox_id).then(|| grant.clone())
    }

    /// Whether the session or token the gateway was opened with still stands (not signed out,
    /// revoked or expired).
    async fn credential_stands(&self, grant: &Grant) -> Result<bool, crate::store::StoreError> {
        match self
            .orch()
            .store()
            .token_by_hash(&grant.credential_hash)
            .await
        {
            Ok(t) => Ok(t.revoked_at.is_none()
                && t.expires_at.is_none_or(|e| e > crate::ids::now_ms())
                && t.user_id.as_deref() == Some(grant.user_id.as_str())),
            Err(crate::store::StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends the browser to sign in on the main host; it comes back through `Open`.
    fn to_sign_in(&self, sandbox_id: &str) -> Response {
        match self.main_origin() {
            Some(main) => redirect(&format!("{main}/signin?next=/sandboxes/{sandbox_id}")),
            None => page(StatusCode::UNAUTHORIZED, "Sign in to delegate first."),
        }
    }

    /// Touches the sandbox every [`VIEWER_TOUCH`] until the returned guard is dropped (with the
    /// response body or the spliced WebSocket).
    fn keep_awake(&self, sandbox_id: &str) -> DropGuard {
        let stop = CancellationToken::new();
        let orch = self.orch().clone();
        let id = sandbox_id.to_string();
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

    /// Everything for a gateway host.
    async fn handle(&self, sandbox_id: String, request: Request) -> Response {
        if request.uri().path() == AUTH_PATH {
            return self.redeem(&sandbox_id, request.uri().query());
        }
        let Some(grant) = self.cookie_grant(&sandbox_id, request.headers()) else {
            return self.to_sign_in(&sandbox_id);
        };
        match self.credential_stands(&grant).await {
            Ok(true) => {}
            Ok(false) => return self.to_sign_in(&sandbox_id),
            Err(e) => {
                tracing::error!(error = %e, "gateway: cannot check the session");
                return page(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment.");
            }
        }
        let caller = Caller {
            user_id: grant.user_id,
            token_id: None,
            client: None,
            workspace_id: None,
        };
        // Membership and role, now: a removed member or a demoted guest is out at once.
        match self
            .inner
            .service
            .sandbox(&caller, &sandbox_id, Action::Write)
            .await
        {
            Ok(_) => {}
            Err(Error::NotFound(_)) => return self.to_sign_in(&sandbox_id),
            Err(Error::Forbidden(m)) => return page(StatusCode::FORBIDDEN, &m),
            Err(e) => return page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
        let Some(endpoint) = self.orch().serve_endpoint(&sandbox_id) else {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This sandbox's opencode is not running (paused or gone). Resume it in delegate.",
            );
        };
        // Sibling hosts are same-site: a page on another sandbox's host could otherwise post here
        // (or open a WebSocket) with this host's cookie.
        if !same_origin_or_safe(&request, self.sandbox_origin(&sandbox_id).as_deref()) {
            return page(
                StatusCode::FORBIDDEN,
                "a change or WebSocket through the gateway must come from the sandbox's own page",
            );
        }
        self.orch().touch_sandbox(&sandbox_id);
        let viewing = self.keep_awake(&sandbox_id);
        match forward(&endpoint.url, endpoint.password.expose(), request, viewing).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(sandbox = %sandbox_id, error = %e, "gateway: opencode did not answer");
                page(
                    StatusCode::BAD_GATEWAY,
                    "The sandbox's opencode did not answer.",
                )
            }
        }
    }
}

/// Whether a request may go through: reads always; a change (unsafe method) or a WebSocket only
/// without an `Origin`, or with the sandbox host's own (browsers always send one on both).
fn same_origin_or_safe(request: &Request, own: Option<&str>) -> bool {
    let upgrade = request.headers().contains_key(header::UPGRADE);
    if !upgrade && !crate::auth::csrf::is_unsafe(request.method()) {
        return true;
    }
    match request.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let claimed = origin.to_str().ok().and_then(crate::auth::csrf::origin_of);
            let own = own.and_then(crate::auth::csrf::origin_of);
            claimed.is_some() && claimed == own
        }
    }
}

/// Middleware in front of the whole router: a gateway host is handled here, anything else goes on.
pub async fn route_by_host(
    State(gateway): State<Gateway>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host.and_then(|h| gateway.sandbox_of_host(h)) {
        Some(sandbox_id) => gateway.handle(sandbox_id, request).await,
        None => next.run(request).await,
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
async fn forward(
    base: &str,
    password: &str,
    mut request: Request,
    viewing: DropGuard,
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
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = path.parse().map_err(|e| format!("uri: {e}"))?;
    let mut out = axum::http::Request::builder()
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
        .filter(|(k, _)| *k != COOKIE && *k != crate::auth::sessions::COOKIE)
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
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!(error = %e, "gateway: upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(HeaderName::from_static(name));
    }
    // opencode asks for Basic credentials only if ours failed; the browser must not prompt.
    parts.headers.remove(header::WWW_AUTHENTICATE);
    // The viewer stays "active" for as long as the body streams (an SSE stream: as long as open).
    let body = Body::new(body).into_data_stream().map(move |chunk| {
        let _ = &viewing;
        chunk
    });
    Ok(Response::from_parts(parts, Body::from_stream(body)))
}

fn insert(map: &Mutex<HashMap<String, Grant>>, key: String, grant: Grant) {
    let mut map = lock(map);
    if map.len() >= MAX_ENTRIES {
        let now = Instant::now();
        map.retain(|_, g| g.expires > now);
        if map.len() >= MAX_ENTRIES {
            // Still full of live entries: the oldest-expiring go first.
            let mut by_expiry: Vec<(String, Instant)> =
                map.iter().map(|(k, g)| (k.clone(), g.expires)).collect();
            by_expiry.sort_by_key(|(_, e)| *e);
            for (k, _) in by_expiry.into_iter().take(MAX_ENTRIES / 10) {
                map.remove(&k);
            }
        }
    }
    map.insert(key, grant);
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    // The ticket in the redeeming URL must not travel on as a Referer.
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// A small plain-text page for the gateway's own answers (the browser is not on delegate's UI).
fn page(status: StatusCode, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!("delegate: {message}\n"),
    )
        .into_response()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
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
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
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
        let app = axum::Router::new().fallback(move |req: Request| {
            let upstream_url = upstream_url.clone();
            async move {
                forward(
                    &upstream_url,
                    "serve-pass",
                    req,
                    CancellationToken::new().drop_guard(),
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
        client.write_all(b"ping through").await.unwrap();
        let mut echo = [0u8; 12];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping through");

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

//! The Anthropic proxy: the only way a sandbox reaches a model.
//!
//! A sandbox holds a per-sandbox token, never the real key. The proxy accepts that token as
//! `x-api-key` or `Authorization: Bearer`, checks its hash against the store (cached briefly),
//! requires the sandbox to be running, strips every inbound credential header, injects the real
//! credential, streams the reply through chunk by chunk, and records usage per model call. Errors it
//! makes itself use Anthropic's JSON error shape, so opencode reports them like the real API's.
//! When the client goes away, the response stream is dropped, which drops the upstream request.
//! Before relaying a call it checks the budgets of the calling run and its workspace
//! (`budget.rs`).

mod budget;
pub mod usage;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use delegate_mcp::types::SandboxStatus;
use futures::Stream;

pub use budget::{Budgets, DAY_MS, OverBudget, day_start, resets_in};
pub use usage::{UsageScanner, cost_usd};

use crate::credentials::{self, AuthError};
use crate::ids::{hash_secret, new_id, now_ms};
use crate::settings::{Upstream, UpstreamCredential};
use crate::store::{Store, TokenKind, UsageRecord};

/// How long a checked token stays trusted without asking the store again.
const GRANT_TTL: Duration = Duration::from_secs(5);
/// The largest request body the proxy accepts (Anthropic's own limit is 32 MB).
const MAX_REQUEST_BODY: usize = 32 << 20;

/// Which run a sandbox is executing right now, so usage lands on that run.
pub type ActiveRuns = Arc<RwLock<HashMap<String, String>>>;

/// A checked sandbox token: whose it is.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The sandbox the token was issued to.
    pub sandbox_id: String,
    /// The sandbox's workspace.
    pub workspace_id: String,
}

/// The proxy's state; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    /// Usage records still being written; [`Proxy::flush`] waits for them.
    pending: tokio::sync::watch::Sender<usize>,
    store: Arc<dyn Store>,
    /// The upstream URL of each call in [`ALLOWED`], in its order, joined onto the base URL once
    /// (not on every call); `None` if the base URL is not a URL (every call answers 502).
    targets: Option<Vec<reqwest::Url>>,
    /// The credential header sent upstream, built once and marked sensitive.
    credential: Option<(HeaderName, HeaderValue)>,
    client: reqwest::Client,
    grants: Mutex<HashMap<String, (Instant, Arc<Grant>)>>,
    active_runs: ActiveRuns,
    budgets: Budgets,
}

impl Proxy {
    /// A proxy that checks sandbox tokens against `store`, forwards to `upstream` and books usage
    /// on the run `active_runs` names for the sandbox.
    pub fn new(store: Arc<dyn Store>, upstream: Upstream, active_runs: ActiveRuns) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a reqwest client with static options builds");
        Proxy {
            inner: Arc::new(Inner {
                pending: tokio::sync::watch::channel(0).0,
                store,
                targets: upstream_targets(&upstream.base_url),
                credential: credential_header(upstream.credential.as_ref()),
                client,
                grants: Mutex::new(HashMap::new()),
                active_runs,
                budgets: Budgets::default(),
            }),
        }
    }

    /// Routes `/v1/...` to the upstream; mount it wherever sandboxes connect.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/{*rest}", axum::routing::any(forward))
            .fallback(|| async {
                anthropic_error(StatusCode::NOT_FOUND, "not_found_error", "not found")
            })
            .with_state(self.clone())
    }

    /// The budgets this proxy enforces; the orchestrator registers its runs here.
    pub fn budgets(&self) -> &Budgets {
        &self.inner.budgets
    }

    /// Waits (at most `limit`) until every usage record of finished model calls is written, so a
    /// run's totals are complete when it ends.
    pub async fn flush(&self, limit: Duration) {
        let mut rx = self.inner.pending.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }

    /// Revokes every token of a sandbox and drops the cached grants for it, so its proxy token
    /// stops working at once rather than when the cache entry runs out. The grants go even if
    /// the store fails: the store error is returned for the caller to report.
    pub async fn revoke_sandbox(&self, sandbox_id: &str) -> Result<(), crate::store::StoreError> {
        let revoked = self
            .inner
            .store
            .revoke_sandbox_tokens(sandbox_id, now_ms())
            .await;
        self.forget_sandbox(sandbox_id);
        revoked
    }

    /// Drops cached grants of a sandbox, so a revoked token stops working at once.
    pub fn forget_sandbox(&self, sandbox_id: &str) {
        if let Ok(mut grants) = self.inner.grants.lock() {
            grants.retain(|_, (_, g)| g.sandbox_id != sandbox_id);
        }
    }

    async fn authorize(&self, headers: &HeaderMap) -> Result<Arc<Grant>, Response> {
        let token = presented_token(headers).ok_or_else(|| {
            anthropic_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing credential: send the sandbox token as x-api-key or Authorization: Bearer",
            )
        })?;
        self.check_token(token)
            .await
            .map_err(|refused| match refused {
                TokenRefused::Invalid => anthropic_error(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "invalid or revoked sandbox token",
                ),
                TokenRefused::NotRunning(why) => {
                    anthropic_error(StatusCode::FORBIDDEN, "permission_error", &why)
                }
                TokenRefused::Unavailable => anthropic_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    "delegate could not check the token",
                ),
            })
    }

    /// The running sandbox a sandbox token belongs to (the model proxy's check, which the
    /// egress listener shares): its hash against the store, cached for [`GRANT_TTL`].
    pub async fn check_token(&self, token: &str) -> Result<Arc<Grant>, TokenRefused> {
        let hash = hash_secret(token);
        if let Ok(grants) = self.inner.grants.lock()
            && let Some((at, grant)) = grants.get(&hash)
            && at.elapsed() < GRANT_TTL
        {
            return Ok(grant.clone());
        }
        let record =
            match credentials::verify(self.inner.store.as_ref(), TokenKind::Sandbox, token).await {
                Ok(r) => r,
                Err(AuthError::Store(e)) => {
                    tracing::error!(error = %e, "proxy: token lookup failed");
                    return Err(TokenRefused::Unavailable);
                }
                Err(_) => return Err(TokenRefused::Invalid),
            };
        let Some(sandbox_id) = record.sandbox_id else {
            return Err(TokenRefused::Invalid);
        };
        let Ok(sandbox) = self.inner.store.sandbox(&sandbox_id).await else {
            return Err(TokenRefused::Invalid);
        };
        if sandbox.status != SandboxStatus::Running {
            return Err(TokenRefused::NotRunning(format!(
                "sandbox {} is {}, not running",
                sandbox.id, sandbox.status
            )));
        }
        let grant = Arc::new(Grant {
            sandbox_id,
            workspace_id: sandbox.workspace_id,
        });
        if let Ok(mut grants) = self.inner.grants.lock() {
            grants.insert(hash, (Instant::now(), grant.clone()));
        }
        Ok(grant)
    }
}

/// Why a sandbox token was not accepted.
#[derive(Debug)]
pub enum TokenRefused {
    /// Unknown, revoked, or not a sandbox's.
    Invalid,
    /// Its sandbox is not running; the text says which and how it is.
    NotRunning(String),
    /// The store could not be asked.
    Unavailable,
}

/// The sandbox token: `x-api-key` as Anthropic's clients send it, else `Authorization: Bearer`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim()).filter(|v| !v.is_empty());
    }
    credentials::bearer(headers)
}

/// Headers never forwarded upstream: credentials (replaced by the real one), hop-by-hop headers,
/// and `accept-encoding` (the proxy reads usage out of the stream, so it asks for identity).
const DROP_REQUEST_HEADERS: &[&str] = &[
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
];

const DROP_RESPONSE_HEADERS: &[&str] = &[
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "set-cookie",
];

/// The model API calls a sandbox may make, and nothing else: each of them is metered. Paths match
/// exactly (no dot segments, encoded slashes, doubled or trailing slashes), so no request can
/// reach another API of the upstream or leave its base path.
const ALLOWED: &[(Method, &str)] = &[
    (Method::POST, "/v1/messages"),
    (Method::POST, "/v1/messages/count_tokens"),
    (Method::GET, "/v1/models"),
];

/// Why a call is not relayed: the status, Anthropic's error type and the message.
type Refusal = (StatusCode, &'static str, String);

/// Which of [`ALLOWED`] a call is (its index), or why it is refused.
fn allowed_call(method: &Method, uri: &Uri) -> Result<usize, Refusal> {
    let path = uri.path();
    let Some((_, allowed)) = ALLOWED.iter().find(|(_, p)| *p == path) else {
        return Err((
            StatusCode::NOT_FOUND,
            "not_found_error",
            "delegate's proxy relays only POST /v1/messages, POST /v1/messages/count_tokens and \
             GET /v1/models"
                .into(),
        ));
    };
    ALLOWED
        .iter()
        .position(|(m, p)| m == method && p == allowed)
        .ok_or_else(|| {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!("{method} is not allowed on {allowed}"),
            )
        })
}

/// The upstream URL of each call in [`ALLOWED`]: its fixed path joined onto the base URL
/// (keeping any path prefix the base has); `None` if the base is not a URL.
fn upstream_targets(base: &str) -> Option<Vec<reqwest::Url>> {
    let base = reqwest::Url::parse(&format!("{}/", base.trim_end_matches('/'))).ok()?;
    ALLOWED
        .iter()
        .map(|(_, path)| base.join(path.trim_start_matches('/')).ok())
        .collect()
}

/// The upstream URL of an allowed call, with the request's query; or why it is refused.
fn upstream_url(
    targets: Option<&[reqwest::Url]>,
    method: &Method,
    uri: &Uri,
) -> Result<reqwest::Url, Refusal> {
    let call = allowed_call(method, uri)?;
    let Some(target) = targets.and_then(|t| t.get(call)) else {
        return Err((
            StatusCode::BAD_GATEWAY,
            "api_error",
            "delegate's model API base URL is not a URL".to_string(),
        ));
    };
    let mut url = target.clone();
    url.set_query(uri.query());
    Ok(url)
}

/// The header that carries the real credential upstream, marked sensitive (hyper never logs or
/// compresses it); `None` without a credential or if it cannot be a header value.
fn credential_header(credential: Option<&UpstreamCredential>) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = match credential? {
        UpstreamCredential::ApiKey(key) => (
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_str(key.expose()),
        ),
        UpstreamCredential::AuthToken(token) => (
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", token.expose())),
        ),
    };
    let mut value = value.ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let grant = match proxy.authorize(&parts.headers).await {
        Ok(g) => g,
        Err(response) => return response,
    };
    let url = match upstream_url(proxy.inner.targets.as_deref(), &parts.method, &parts.uri) {
        Ok(url) => url,
        Err((status, kind, message)) => return anthropic_error(status, kind, &message),
    };
    let run_id = proxy
        .inner
        .active_runs
        .read()
        .ok()
        .and_then(|m| m.get(&grant.sandbox_id).cloned());
    match proxy
        .inner
        .budgets
        .check(
            proxy.inner.store.as_ref(),
            &grant.workspace_id,
            run_id.as_deref(),
        )
        .await
    {
        Ok(()) => {}
        // 402 `billing_error`: Anthropic's answer when spending is not allowed, which clients
        // report and do not retry.
        Err(budget::CheckError::Over(OverBudget(why))) => {
            return anthropic_error(
                StatusCode::PAYMENT_REQUIRED,
                "billing_error",
                &format!("delegate: {why}"),
            );
        }
        Err(budget::CheckError::Store(e)) => {
            tracing::error!(error = %e, "proxy: budget lookup failed");
            return anthropic_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "delegate could not check the budget",
            );
        }
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BODY).await else {
        return anthropic_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "request body too large",
        );
    };
    let requested_model = serde_json::from_slice::<RequestedModel<'_>>(&body)
        .ok()
        .and_then(|r| r.model)
        .map(std::borrow::Cow::into_owned);

    let inner = &proxy.inner;
    // The request's own headers, less the dropped ones, in place (no copy of the rest).
    let mut headers = std::mem::take(&mut parts.headers);
    for name in DROP_REQUEST_HEADERS {
        headers.remove(*name);
    }
    if let Some((name, value)) = &inner.credential {
        headers.insert(name.clone(), value.clone());
    }
    let upstream = inner
        .client
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let mut upstream = match upstream {
        Ok(r) => r,
        Err(e) => {
            // reqwest errors name the URL, never headers: safe to log.
            tracing::warn!(error = %e, "proxy: upstream unreachable");
            return anthropic_error(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "delegate could not reach the model API",
            );
        }
    };

    let status = upstream.status();
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut headers = std::mem::take(upstream.headers_mut());
    for name in DROP_RESPONSE_HEADERS {
        headers.remove(*name);
    }
    let metered = MeteredBody {
        inner: Box::pin(upstream.bytes_stream()),
        scanner: UsageScanner::new(&content_type),
        unscanned: None,
        recorder: Some(Recorder {
            pending: inner.pending.clone(),
            store: inner.store.clone(),
            budgets: inner.budgets.clone(),
            sandbox_id: grant.sandbox_id.clone(),
            workspace_id: grant.workspace_id.clone(),
            run_id,
            model: requested_model,
            status: status.as_u16(),
            started,
            ttft: None,
        }),
    };
    let mut response = Response::new(Body::from_stream(metered));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The `model` of a request body, read without building the rest (a long conversation is
/// skipped over, not copied into a tree).
#[derive(serde::Deserialize)]
struct RequestedModel<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
}

/// The upstream body on its way to the client: every chunk is passed on as it arrives and fed to
/// the usage scanner; when the stream ends or the client drops it, usage is recorded once.
///
/// A chunk is scanned at the next poll, after the client has it: reading usage (a JSON parse of
/// each SSE event) never delays the bytes, the first ones included.
struct MeteredBody {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    scanner: UsageScanner,
    /// The last chunk handed on and not yet scanned, with when it arrived.
    unscanned: Option<(Bytes, Instant)>,
    recorder: Option<Recorder>,
}

struct Recorder {
    pending: tokio::sync::watch::Sender<usize>,
    store: Arc<dyn Store>,
    budgets: Budgets,
    sandbox_id: String,
    workspace_id: String,
    run_id: Option<String>,
    model: Option<String>,
    status: u16,
    started: Instant,
    ttft: Option<Duration>,
}

impl Stream for MeteredBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.scan_unscanned();
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.unscanned = Some((chunk.clone(), Instant::now()));
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "proxy: upstream stream broke");
                Poll::Ready(Some(Err(std::io::Error::other("upstream stream broke"))))
            }
            Poll::Ready(None) => {
                self.record();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl MeteredBody {
    /// Feeds the chunk handed on last to the scanner; the first token's time is when it arrived.
    fn scan_unscanned(&mut self) {
        if let Some((chunk, arrived)) = self.unscanned.take()
            && self.scanner.feed(&chunk)
            && let Some(r) = self.recorder.as_mut()
        {
            r.ttft = Some(arrived.duration_since(r.started));
        }
    }

    fn record(&mut self) {
        self.scan_unscanned();
        let Some(r) = self.recorder.take() else {
            return;
        };
        self.scanner.finish();
        let model = self.scanner.model.clone().or(r.model);
        let record = UsageRecord {
            id: new_id("use"),
            sandbox_id: r.sandbox_id,
            run_id: r.run_id,
            workspace_id: r.workspace_id,
            model,
            usage: self.scanner.usage,
            status_code: r.status as i64,
            ttft_ms: r.ttft.map(|d| d.as_millis() as i64),
            duration_ms: r.started.elapsed().as_millis() as i64,
            created_at: now_ms(),
        };
        let store = r.store;
        let pending = r.pending;
        let budgets = r.budgets;
        let cost = record.usage.cost_usd;
        // Booked before the row is written, so the next call's budget check already sees it.
        budgets.ended(record.run_id.as_deref(), &record.workspace_id, cost);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            pending.send_modify(|n| *n += 1);
            handle.spawn(async move {
                if let Err(e) = store.record_usage(&record).await {
                    tracing::warn!(error = %e, "proxy: could not record usage");
                }
                budgets.written(&record.workspace_id, cost);
                pending.send_modify(|n| *n -= 1);
            });
        } else {
            budgets.written(&record.workspace_id, cost);
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away mid-stream: what was used so far still counts.
        self.record();
    }
}

/// An error in Anthropic's JSON shape, so clients report it like the real API's.
pub fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "type": "error",
        "error": { "type": kind, "message": message },
    });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_url_keeps_the_base_path_and_only_the_fixed_call() {
        let url = |base: &str, method: &Method, uri: &str| {
            let targets = upstream_targets(base);
            upstream_url(targets.as_deref(), method, &uri.parse().unwrap())
        };
        let prefixed = "https://gw.example/anthropic/v1/messages?beta=true";
        let got = url(
            "https://gw.example/anthropic",
            &Method::POST,
            "/v1/messages?beta=true",
        );
        assert_eq!(got.unwrap().as_str(), prefixed);
        let got = url(
            "https://gw.example/anthropic/",
            &Method::POST,
            "/v1/messages?beta=true",
        );
        assert_eq!(got.unwrap().as_str(), prefixed);
        // The query of one call never sticks to the next.
        let got = url("https://gw.example", &Method::POST, "/v1/messages");
        assert_eq!(got.unwrap().as_str(), "https://gw.example/v1/messages");
        for bad in ["/v1/../secret", "/v1/files", "/v1/messages/batches", "/"] {
            assert!(
                url("https://gw.example", &Method::POST, bad).is_err(),
                "{bad}"
            );
        }
        assert!(url("https://gw.example", &Method::GET, "/v1/models").is_ok());
        assert!(url("https://gw.example", &Method::POST, "/v1/models").is_err());
        let (status, _, _) = url("not a url", &Method::POST, "/v1/messages").unwrap_err();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn the_credential_header_is_sensitive() {
        let key = UpstreamCredential::ApiKey(crate::settings::Secret::new("sk-ant-x"));
        let (name, value) = credential_header(Some(&key)).unwrap();
        assert_eq!(name, "x-api-key");
        assert!(value.is_sensitive());
        let token = UpstreamCredential::AuthToken(crate::settings::Secret::new("t"));
        let (name, value) = credential_header(Some(&token)).unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer t")
        );
        assert!(credential_header(None).is_none());
    }
}

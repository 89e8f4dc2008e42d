//! The embedded mode's watch UI (`DELEGATE_WATCH`): `delegate mcp` and `delegate run` have no
//! server, so they serve the web UI's run page themselves, on loopback only, for the person at
//! the keyboard to follow a delegated run live.
//!
//! A run's `watch_url` is `http://127.0.0.1:PORT/watch/TICKET`: a one-time ticket, random, kept
//! only as its SHA-256 in this process's memory, redeemable once within [`TICKET_TTL`]. Redeeming
//! it sets an HttpOnly, SameSite=Strict cookie for this origin and redirects to the run's page, so
//! no lasting secret sits in a URL, a terminal's scrollback or a model's context. The cookie
//! stands for the embedded local user and opens only what the run page uses: reading the runs of
//! this data dir, their events and patches, and cancelling them. Any other API path answers 404;
//! every request must name this listener in `Host` (no DNS rebinding); there is no CORS. The
//! listener, the tickets and the cookies end with the process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use delegate_mcp::delegator::Caller;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::api::ops::HttpMetrics;
use crate::delegation::WatchLinks;
use crate::envelope::json_error;
use crate::ids::{hash_secret, new_secret};
use crate::orchestrator::Orchestrator;

/// How long a watch link can be redeemed: long enough to open it from a terminal or a chat, short
/// enough that one found later in a log opens nothing.
pub const TICKET_TTL: Duration = Duration::from_secs(10 * 60);
/// How long the cookie a ticket is exchanged for lasts (the process usually ends first).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The error code of an API call without a valid watch cookie; the page says to open a link.
pub const LINK_REQUIRED: &str = "watch_link_required";
/// Tickets and cookies kept at most each: minting links can not grow memory without bound.
const MAX_ENTRIES: usize = 10_000;
/// The API calls the run page makes (by `operationId`, see [`crate::api::table`]); nothing else
/// is served here.
const WATCH_ROUTES: [&str; 5] = [
    "getRunDetail",
    "getRun",
    "runEvents",
    "getRunPatch",
    "cancelRun",
];
/// How long open pages (an SSE stream) get to finish once the process stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Secrets by their SHA-256, each with a value and an expiry.
struct Expiring<V> {
    entries: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> Expiring<V> {
    fn new() -> Self {
        Expiring {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (V, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, secret: &str, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                // Still full of live entries: those expiring first go.
                let mut by_expiry: Vec<(String, Instant)> =
                    entries.iter().map(|(k, (_, e))| (k.clone(), *e)).collect();
                by_expiry.sort_by_key(|(_, e)| *e);
                for (k, _) in by_expiry.into_iter().take(MAX_ENTRIES / 10) {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(hash_secret(secret), (value, now + ttl));
    }

    /// The value of `secret` if it is live, removed either way (a ticket works once).
    fn take(&self, secret: &str) -> Option<V> {
        let (value, expires) = self.lock().remove(&hash_secret(secret))?;
        (expires > Instant::now()).then_some(value)
    }

    /// The value of `secret` if it is live; an expired one is dropped.
    fn get(&self, secret: &str) -> Option<V> {
        let hash = hash_secret(secret);
        let mut entries = self.lock();
        let (value, expires) = entries.get(&hash)?;
        if *expires <= Instant::now() {
            entries.remove(&hash);
            return None;
        }
        Some(value.clone())
    }
}

/// The watch UI's tickets and cookies, for one loopback listener.
pub struct Watch {
    /// `http://127.0.0.1:PORT`: where the links point.
    origin: String,
    /// The `Host` values this listener answers to.
    hosts: Vec<String>,
    /// The cookie's name, with the port in it: browsers share cookies across a host's ports, and
    /// two embedded processes must not overwrite each other's.
    cookie: String,
    /// The embedded local user every cookie stands for.
    user_id: String,
    ticket_ttl: Duration,
    /// Ticket -> the run it opens.
    tickets: Expiring<String>,
    /// Cookie secrets.
    sessions: Expiring<()>,
}

impl Watch {
    /// Tickets and cookies for the listener at `local`, admitting `user_id`; tickets last
    /// `ticket_ttl`.
    pub fn new(local: SocketAddr, user_id: String, ticket_ttl: Duration) -> Self {
        let port = local.port();
        Watch {
            origin: format!("http://{local}"),
            hosts: vec![local.to_string(), format!("localhost:{port}")],
            cookie: format!("delegate_watch_{port}"),
            user_id,
            ticket_ttl,
            tickets: Expiring::new(),
            sessions: Expiring::new(),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Redeems a ticket: a cookie and a redirect to the run's page, or a page saying the link no
    /// longer opens anything.
    fn redeem(&self, ticket: &str) -> Response {
        let Some(run_id) = self.tickets.take(ticket) else {
            return refused_page(self.ticket_ttl);
        };
        let secret = new_secret("dwc_");
        self.sessions.insert(&secret, (), SESSION_TTL);
        // No Domain: the cookie stays on this host. Strict: no other site's page can make the
        // browser send it.
        let cookie = format!(
            "{}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.cookie,
            SESSION_TTL.as_secs()
        );
        let mut r = StatusCode::SEE_OTHER.into_response();
        let h = r.headers_mut();
        // Run ids are `run_` and hex: nothing to escape.
        if let Ok(v) = HeaderValue::from_str(&format!("/runs/{run_id}")) {
            h.insert(header::LOCATION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert(header::SET_COOKIE, v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The ticket in the URL must not travel on as a Referer.
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        r
    }

    /// Whether `headers` carry a live watch cookie; the cookie's secret when they do.
    fn session<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        crate::credentials::cookie(headers, &self.cookie)
            .filter(|secret| self.sessions.get(secret).is_some())
    }

    fn answers_to(&self, host: Option<&str>) -> bool {
        host.is_some_and(|h| self.hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h)))
    }
}

impl WatchLinks for Watch {
    fn link(&self, run_id: &str) -> Option<String> {
        let ticket = new_secret("dwt_");
        self.tickets
            .insert(&ticket, run_id.to_string(), self.ticket_ttl);
        Some(format!("{}/watch/{ticket}", self.origin))
    }
}

/// The watch UI's router: `/watch/{ticket}`, the run page's API calls behind the watch cookie,
/// the web UI's files and pages, all behind the `Host` check.
pub fn router(orch: Orchestrator, watch: Arc<Watch>) -> Router {
    let state = ApiState::new(orch, Arc::new(HttpMetrics::default()));
    let mut api = Router::new();
    for route in crate::api::table() {
        if WATCH_ROUTES.contains(&route.operation_id) {
            let path = route.path.strip_prefix("/api").unwrap_or(route.path);
            api = api.route(path, route.handler);
        }
    }
    let api = api
        .route("/auth/me", get(me))
        .fallback(not_here)
        .layer(axum::middleware::from_fn_with_state(
            watch.clone(),
            require_cookie,
        ))
        .layer(DefaultBodyLimit::max(crate::api::MAX_BODY_BYTES))
        .with_state(state);
    let redeeming = watch.clone();
    Router::new()
        .nest("/api", api)
        .route(
            "/watch/{ticket}",
            get(move |Path(ticket): Path<String>| async move { redeeming.redeem(&ticket) }),
        )
        .merge(crate::web::routes())
        .fallback(crate::web::fallback)
        .layer(axum::middleware::from_fn_with_state(watch, loopback_host))
}

/// Refuses any request whose `Host` is not this listener: a page on another site that rebinds its
/// name to 127.0.0.1 still says its own name.
async fn loopback_host(State(watch): State<Arc<Watch>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(http::uri::Authority::as_str));
    if watch.answers_to(host) {
        return next.run(request).await;
    }
    json_error(
        StatusCode::FORBIDDEN,
        "host",
        &format!(
            "this watch UI answers only at its loopback address ({})",
            watch.origin
        ),
    )
}

/// The API's gate: a live watch cookie (and, for a change, this origin) becomes the local user.
async fn require_cookie(
    State(watch): State<Arc<Watch>>,
    mut request: Request,
    next: Next,
) -> Response {
    if watch.session(request.headers()).is_none() {
        return json_error(
            StatusCode::UNAUTHORIZED,
            LINK_REQUIRED,
            &format!(
                "This is the watch view of a delegate process on this machine. Open the watch \
                 link of a run (in its first progress line, or its result's watch_url); each \
                 link opens once, within {} minutes.",
                watch.ticket_ttl.as_secs() / 60
            ),
        );
    }
    if !crate::auth::csrf::allowed(request.method(), request.headers(), None) {
        return json_error(
            StatusCode::FORBIDDEN,
            "csrf",
            "a change must come from this watch UI's own origin (Origin or Referer header)",
        );
    }
    request.extensions_mut().insert(Caller {
        user_id: watch.user_id.clone(),
        token_id: None,
        client: None,
        workspace_id: None,
    });
    next.run(request).await
}

/// `GET /api/auth/me` as the server answers it, marked `"watch": true` so the page leaves out
/// the links to what the watch UI does not serve.
async fn me(state: State<ApiState>, caller: crate::api::Authed) -> Response {
    match crate::api::accounts::me(state, caller).await {
        Ok(axum::Json(me)) => match serde_json::to_value(me) {
            Ok(mut me) => {
                me["watch"] = serde_json::Value::Bool(true);
                axum::Json(me).into_response()
            }
            Err(e) => json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &crate::error::logged(e),
            ),
        },
        Err(e) => e.into_response(),
    }
}

async fn not_here() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "the watch UI of `delegate mcp` and `delegate run` serves runs only; `delegate serve` \
         serves the whole UI",
    )
}

/// A reused, expired or made-up ticket: a page that says so, and no run.
fn refused_page(ttl: Duration) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>This watch link no longer opens · delegate</title></head>\
         <body><h1 id=\"watch-refused\">This watch link no longer opens</h1>\
         <p>A watch link opens its run once, within {} minutes; this one was used already or \
         has expired. The browser that opened it first can still follow the run. Every run \
         started later gives a new link.</p></body></html>\n",
        ttl.as_secs() / 60
    );
    let mut r = (StatusCode::GONE, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The watch UI serving in this process; [`WatchServer::stop`] ends it.
pub struct WatchServer {
    watch: Arc<Watch>,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl WatchServer {
    /// Binds `addr` (loopback; port 0 picks one) and serves the watch UI of `orch` there.
    pub async fn start(orch: &Orchestrator, addr: SocketAddr) -> std::io::Result<WatchServer> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let watch = Arc::new(Watch::new(local, orch.local_user().id.clone(), TICKET_TTL));
        let app = router(orch.clone(), watch.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::net::serve_tcp(
            listener,
            app,
            stop.clone().cancelled_owned(),
        ));
        Ok(WatchServer { watch, stop, task })
    }

    /// What makes the runs' watch links.
    pub fn links(&self) -> Arc<dyn WatchLinks> {
        self.watch.clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> &str {
        self.watch.origin()
    }

    /// Stops listening; open pages get [`SHUTDOWN_GRACE`] to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the watch UI stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the watch UI's task failed"),
            Err(_) => task.abort(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(ttl: Duration) -> Watch {
        Watch::new("127.0.0.1:4567".parse().unwrap(), "usr_x".into(), ttl)
    }

    fn ticket_of(link: &str) -> &str {
        link.rsplit('/').next().unwrap()
    }

    #[test]
    fn a_ticket_opens_its_run_once_and_sets_a_strict_cookie() {
        let w = watch(TICKET_TTL);
        let link = w.link("run_1").unwrap();
        assert!(
            link.starts_with("http://127.0.0.1:4567/watch/dwt_"),
            "{link}"
        );
        let r = w.redeem(ticket_of(&link));
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/runs/run_1");
        let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("delegate_watch_4567=dwc_"), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Domain"));
        // Only hashes are kept.
        assert!(w.tickets.lock().is_empty());
        assert!(
            !w.sessions
                .lock()
                .keys()
                .any(|k| cookie.contains(k.as_str()))
        );
        // Twice: refused.
        assert_eq!(w.redeem(ticket_of(&link)).status(), StatusCode::GONE);
        assert_eq!(w.redeem("dwt_made_up").status(), StatusCode::GONE);
        // The cookie is live.
        let secret = cookie.split(['=', ';']).nth(1).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; delegate_watch_4567={secret}")
                .parse()
                .unwrap(),
        );
        assert_eq!(w.session(&headers), Some(secret));
        // Another port's cookie of the same shape is not this one's.
        let mut elsewhere = HeaderMap::new();
        elsewhere.insert(
            header::COOKIE,
            format!("delegate_watch_4568={secret}").parse().unwrap(),
        );
        assert_eq!(w.session(&elsewhere), None);
    }

    #[test]
    fn an_expired_ticket_opens_nothing() {
        let w = watch(Duration::ZERO);
        let link = w.link("run_1").unwrap();
        assert_eq!(w.redeem(ticket_of(&link)).status(), StatusCode::GONE);
    }

    #[test]
    fn only_the_loopback_address_is_answered() {
        let w = watch(TICKET_TTL);
        assert!(w.answers_to(Some("127.0.0.1:4567")));
        assert!(w.answers_to(Some("LOCALHOST:4567")));
        assert!(!w.answers_to(Some("127.0.0.1:4568")));
        assert!(!w.answers_to(Some("evil.example:4567")));
        assert!(!w.answers_to(None));
    }

    #[test]
    fn minting_links_has_a_ceiling() {
        let w = watch(TICKET_TTL);
        for _ in 0..MAX_ENTRIES + 5 {
            w.link("run_1");
        }
        assert!(w.tickets.lock().len() <= MAX_ENTRIES);
    }
}

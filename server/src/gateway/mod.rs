//! The browser gateway to a warm sandbox's own opencode web UI: requests for the host
//! `oc-{sandbox_id}.{BASE_DOMAIN}` are proxied (HTTP, streamed SSE, WebSocket upgrades) to that
//! sandbox's `opencode serve`, with its Basic credentials injected here so the browser never
//! learns them.
//!
//! How a browser gets in without a long-lived token in any URL: the signed-in UI asks
//! `POST /api/sandboxes/{id}/open` (session cookie + CSRF check) for a one-time [`TICKET_TTL`]
//! ticket, then navigates to `oc-{id}.{BASE_DOMAIN}/_delegate/auth?ticket=...`. The gateway
//! redeems it once and sets a host-only (no `Domain`), HttpOnly, SameSite=Lax cookie bound to
//! (user, sandbox), valid [`COOKIE_TTL`] (`__Host-` prefixed over https). Every request then
//! re-checks the user's role in the sandbox's workspace, so a removed member is out on the next
//! request, and open WebSockets and streams re-check every [`RECHECK_EVERY`] and end. The sandbox
//! can set no cookie: upstream `Set-Cookie` is dropped. Tickets and gateway
//! cookies live in this process's memory: the sandbox's opencode runs in this process too.
//!
//! This file routes by host and gates each request; `grants.rs` holds the tickets and cookies,
//! `proxy.rs` the forwarding to opencode.

mod grants;
mod proxy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use delegate_mcp::delegator::Caller;

use grants::Grant;
pub use grants::{COOKIE, COOKIE_TTL, OpenTicket, RECHECK_EVERY, SECURE_COOKIE, TICKET_TTL};
use proxy::forward;

use crate::delegation::{Action, Service};
use crate::error::Error;
use crate::ids::SandboxId;
use crate::orchestrator::Orchestrator;

/// The gateway's own path on `oc-{id}` hosts (never forwarded to opencode).
pub const AUTH_PATH: &str = "/_delegate/auth";

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

impl Gateway {
    /// A gateway with no tickets or cookies yet; grants live only in this process's memory.
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

    /// The sandbox id a `Host` header names, if it is a gateway host.
    pub fn sandbox_of_host(&self, host: &str) -> Option<SandboxId> {
        let domain = self.orch().settings().base_domain.as_deref()?;
        let host = host.trim().to_ascii_lowercase();
        let label = host.strip_suffix(domain)?.strip_suffix('.')?;
        let id = label.strip_prefix(crate::settings::SANDBOX_HOST_PREFIX)?;
        SandboxId::parse(id)
    }

    /// Sends the browser to sign in on the main host; it comes back through `Open`.
    fn to_sign_in(&self, sandbox_id: &str) -> Response {
        match self.main_origin() {
            Some(main) => redirect(&format!("{main}/signin?next=/sandboxes/{sandbox_id}")),
            None => page(StatusCode::UNAUTHORIZED, "Sign in to delegate first."),
        }
    }

    /// Everything for a gateway host.
    async fn handle(&self, id: SandboxId, request: Request) -> Response {
        let sandbox_id = id.as_str();
        if request.uri().path() == AUTH_PATH {
            return self.redeem(sandbox_id, request.uri().query());
        }
        let Some(grant) = self.cookie_grant(sandbox_id, request.headers()) else {
            return self.to_sign_in(sandbox_id);
        };
        match self.credential_stands(&grant).await {
            Ok(true) => {}
            Ok(false) => return self.to_sign_in(sandbox_id),
            Err(e) => {
                tracing::error!(error = %e, "gateway: cannot check the session");
                return page(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment.");
            }
        }
        let caller = Caller {
            user_id: grant.user_id.clone(),
            token_id: None,
            client: None,
            workspace_id: None,
        };
        // Membership and role, now: a removed member or a demoted guest is out at once.
        match self
            .inner
            .service
            .sandbox(&caller, &id, Action::Write)
            .await
        {
            Ok(_) => {}
            Err(Error::NotFound(_)) => return self.to_sign_in(sandbox_id),
            Err(Error::Forbidden(m)) => return page(StatusCode::FORBIDDEN, &m),
            Err(e) => return page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
        let Some(endpoint) = self.orch().serve_endpoint(&id) else {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This sandbox's opencode is not running (paused or gone). Resume it in delegate.",
            );
        };
        // Sibling hosts are same-site: a page on another sandbox's host could otherwise post here
        // (or open a WebSocket) with this host's cookie.
        if !same_origin_or_safe(&request, self.sandbox_origin(sandbox_id).as_deref()) {
            return page(
                StatusCode::FORBIDDEN,
                "a change or WebSocket through the gateway must come from the sandbox's own page",
            );
        }
        self.orch().touch_sandbox(&id);
        let viewing = self.keep_awake(&id);
        // Open streams end when the viewer loses access, not only at their next request.
        let lost = Box::pin(self.clone().access_lost(grant, id.clone()));
        match forward(
            &endpoint.url,
            endpoint.password.expose(),
            request,
            viewing,
            lost,
        )
        .await
        {
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
        .or_else(|| request.uri().authority().map(http::uri::Authority::as_str));
    match host.and_then(|h| gateway.sandbox_of_host(h)) {
        Some(sandbox_id) => gateway.handle(sandbox_id, request).await,
        None => next.run(request).await,
    }
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
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

//! Who may open a sandbox's gateway host: one-time tickets (`POST /api/sandboxes/{id}/open`),
//! redeemed once for a host-only cookie, each bound to a user, a sandbox and the credential that
//! asked, in this process's memory with a bounded size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use delegate_mcp::delegator::Caller;
use delegate_mcp::types::SandboxStatus;

use super::{AUTH_PATH, Gateway, lock, page, redirect};
use crate::credentials;
use crate::delegation::Action;
use crate::error::Error;
use crate::ids::{SandboxId, hash_secret, new_secret};

/// How long a ticket from `POST /api/sandboxes/{id}/open` can be redeemed.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// How long a gateway cookie lasts; the role is re-checked on every request regardless.
pub const COOKIE_TTL: Duration = Duration::from_secs(3600);
/// The gateway's cookie on `oc-{id}` hosts served over http (loopback, tests).
pub const COOKIE: &str = "delegate_gateway";
/// The gateway's cookie over https: the `__Host-` prefix makes browsers refuse it unless it is
/// `Secure`, `Path=/` and without `Domain`, so a sibling host can not plant or shadow it.
pub const SECURE_COOKIE: &str = "__Host-delegate_gateway";
/// How often an open stream (WebSocket, SSE) re-checks that its viewer still may see the sandbox.
pub const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// Entries kept at most (tickets, cookies): a flood of opens cannot grow memory without bound.
const MAX_ENTRIES: usize = 100_000;

/// Who a ticket or cookie admits, and until when.
#[derive(Clone)]
pub(super) struct Grant {
    pub(super) user_id: String,
    pub(super) sandbox_id: String,
    /// Hash of the session (or API token) that asked for the ticket: signing out (revoking it)
    /// closes the gateway too.
    pub(super) credential_hash: String,
    pub(super) expires: Instant,
}

/// A one-time ticket and where to take it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct OpenTicket {
    /// Navigate the browser here (within `expires_in_seconds`); it works once.
    pub url: String,
    /// How long the ticket stays valid, in seconds.
    pub expires_in_seconds: u64,
}

impl Gateway {
    /// A ticket for `caller` to open `sandbox_id` (developers and up: opencode's UI can change
    /// files). The sandbox must be running in this process.
    pub async fn open(
        &self,
        caller: &Caller,
        credential: &str,
        sandbox_id: &SandboxId,
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
            || self.orch().serve_endpoint(sandbox_id).is_none()
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

    /// Redeems a ticket (once) for a cookie on this sandbox's host.
    pub(super) fn redeem(&self, sandbox_id: &str, query: Option<&str>) -> Response {
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
        let (name, secure) = if self.https() {
            (SECURE_COOKIE, "; Secure")
        } else {
            (COOKIE, "")
        };
        // No Domain attribute: the cookie stays on this one sandbox host.
        let cookie = format!(
            "{name}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            COOKIE_TTL.as_secs()
        );
        let mut r = redirect("/");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    /// The grant a request's gateway cookie holds for this sandbox, if any.
    pub(super) fn cookie_grant(&self, sandbox_id: &str, headers: &HeaderMap) -> Option<Grant> {
        let name = if self.https() { SECURE_COOKIE } else { COOKIE };
        let secret = credentials::cookie(headers, name)?;
        let mut cookies = lock(&self.inner.cookies);
        let hash = hash_secret(secret);
        let grant = cookies.get(&hash)?;
        if grant.expires <= Instant::now() {
            cookies.remove(&hash);
            return None;
        }
        (grant.sandbox_id == sandbox_id).then(|| grant.clone())
    }

    /// Whether the gateway is served over https (`BASE_SCHEME`).
    fn https(&self) -> bool {
        self.orch().settings().base_scheme == "https"
    }

    /// Resolves once `grant` no longer admits its viewer to the sandbox (signed out, session
    /// revoked or expired, removed from the workspace, demoted below developer), checked every
    /// [`RECHECK_EVERY`]; a store that does not answer keeps the stream (the next check decides).
    pub(super) async fn access_lost(self, grant: Grant, id: SandboxId) {
        let mut every = tokio::time::interval(RECHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            match self.still_admits(&grant, &id).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "gateway: cannot re-check a viewer"),
            }
        }
    }

    async fn still_admits(&self, grant: &Grant, id: &SandboxId) -> Result<bool, String> {
        if !self
            .credential_stands(grant)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        let caller = Caller {
            user_id: grant.user_id.clone(),
            token_id: None,
            client: None,
            workspace_id: None,
        };
        match self.inner.service.sandbox(&caller, id, Action::Write).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_) | Error::Forbidden(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether the session or token the gateway was opened with still stands (not signed out,
    /// revoked or expired).
    pub(super) async fn credential_stands(
        &self,
        grant: &Grant,
    ) -> Result<bool, crate::store::StoreError> {
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

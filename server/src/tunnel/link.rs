//! One agent's link: authenticate the upgrade, run the handshake, expose the agent's opencode on
//! a loopback listener while the link lasts, and tell the orchestrator when it comes and goes.

use std::io;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use delegate_agent::mux::{Mux, Role, Transport, pump, recv_frame, send_frame};
use delegate_agent::protocol::{
    CAP_REPOS, CAPABILITIES_HEADER, Frame, Header, Limits, MAX_FRAME, MIN_VERSION, VERSION,
    VERSIONS_HEADER, versions_offered,
};
use delegate_mcp::types::SandboxStatus;
use futures::{SinkExt, StreamExt, future};
use tokio_util::sync::CancellationToken;

use super::Tunnels;
use crate::credentials::{self, AuthError};
use crate::envelope::json_error;
use crate::ids::{SandboxId, new_secret};
use crate::sandbox::ServeEndpoint;
use crate::settings::Secret;
use crate::store::{StoreError, TokenKind};

/// How long a new link has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a live link checks that its token still stands and its user is still a developer (or
/// more) of the workspace; a removed member's tunnel closes within this.
pub(super) const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// Whether a tunnel token still admits its link: live (not revoked or expired), and its user still
/// a member of its workspace who may run things there (`Write`).
async fn still_admitted(
    store: &dyn crate::store::Store,
    record: &crate::store::TokenRecord,
) -> Result<bool, StoreError> {
    let token = match store.token_by_hash(&record.hash).await {
        Ok(t) => t,
        Err(StoreError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    if token.revoked_at.is_some() || token.expires_at.is_some_and(|t| t <= crate::ids::now_ms()) {
        return Ok(false);
    }
    let (Some(user_id), Some(workspace_id)) = (&token.user_id, &token.workspace_id) else {
        return Ok(false);
    };
    let role = store.member_role(workspace_id, user_id).await?;
    Ok(role.is_some_and(|r| crate::roles::allows(r, crate::roles::Action::Write)))
}

/// Resolves when the link's token stops admitting it (checked every [`RECHECK_EVERY`]); a store
/// that does not answer keeps the link (the next check decides).
async fn access_lost(
    store: std::sync::Arc<dyn crate::store::Store>,
    record: crate::store::TokenRecord,
) {
    let mut every = tokio::time::interval(RECHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        match still_admitted(store.as_ref(), &record).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "tunnel: cannot re-check the token"),
        }
    }
}

/// `GET /api/tunnel/{sandbox_id}`: checks the tunnel token before anything else, then upgrades.
pub(super) async fn upgrade(
    State(tunnels): State<Tunnels>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let unauthorized = || {
        json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer dlt_...`, the tunnel token `delegate agent connect` saved",
        )
    };
    let Some(token) = credentials::bearer(&headers) else {
        return unauthorized();
    };
    let store = tunnels.inner.orch.store();
    let record = match credentials::verify(store.as_ref(), TokenKind::Tunnel, token).await {
        Ok(r) => r,
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "tunnel token check failed");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            );
        }
        Err(_) => return unauthorized(),
    };
    // Parsed after the token check: a malformed id is just another sandbox's.
    let sandbox_id = match SandboxId::parse(&raw_id) {
        Some(id) if record.sandbox_id.as_deref() == Some(id.as_str()) => id,
        _ => {
            return json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this tunnel token belongs to another sandbox",
            );
        }
    };
    // A token whose user left the workspace (or may no longer run things there) is refused.
    match still_admitted(store.as_ref(), &record).await {
        Ok(true) => {}
        Ok(false) => {
            return json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this tunnel token's user is no longer a developer of the workspace",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "tunnel membership check failed");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            );
        }
    }
    match store.sandbox(sandbox_id.as_str()).await {
        Ok(s)
            if !matches!(
                s.status,
                SandboxStatus::Deleting | SandboxStatus::Deleted | SandboxStatus::Failed
            ) => {}
        Ok(_) | Err(StoreError::NotFound(_)) => {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "this sandbox was deleted; register again with a new code",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "tunnel sandbox lookup failed");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            );
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("a WebSocket upgrade is required here: {rejection}"),
            );
        }
    };
    let takes_repos = takes_repos(&headers);
    let mut response = ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| session(tunnels, sandbox_id, record, takes_repos, socket))
        .into_response();
    // The versions this server speaks; the agent says the newest it shares in its hello.
    if let Ok(v) = HeaderValue::from_str(&versions_offered()) {
        response.headers_mut().insert(VERSIONS_HEADER, v);
    }
    response
}

/// Whether the agent says (in its upgrade request) that it takes repositories. Agents older than
/// that send nothing, and runs with a repository are refused for them with a clear error.
fn takes_repos(headers: &HeaderMap) -> bool {
    headers
        .get_all(CAPABILITIES_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| c.trim() == CAP_REPOS)
}

/// Runs one link until it drops, is replaced, or its sandbox is deleted.
async fn session(
    tunnels: Tunnels,
    sandbox_id: SandboxId,
    record: crate::store::TokenRecord,
    takes_repos: bool,
    socket: WebSocket,
) {
    let mut link = adapt(socket);
    let refuse = |reason: String| {
        Frame::new(Header::Goodbye {
            code: "protocol".into(),
            reason,
        })
    };
    let (version, directory, password) = match recv_frame(&mut link, HELLO_TIMEOUT).await {
        Ok(Frame {
            header:
                Header::Hello {
                    version,
                    directory,
                    password,
                    ..
                },
            ..
        }) => (version, directory, password),
        Ok(other) => {
            let reason = format!("expected hello, got {:?}", other.header);
            let _ = send_frame(&mut link, refuse(reason)).await;
            return;
        }
        Err(e) => {
            tracing::warn!(sandbox = %sandbox_id, error = %e, "tunnel handshake failed");
            return;
        }
    };
    let Some(limits) = Limits::of(version) else {
        let reason = format!(
            "protocol version {version} is not supported (this server speaks {MIN_VERSION} to \
             {VERSION}); update delegate on the agent's machine"
        );
        let _ = send_frame(&mut link, refuse(reason)).await;
        return;
    };
    // The agent's opencode, as an HTTP endpoint on this host for runs and the gateway.
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot bind a loopback listener for a tunnel");
            let _ = send_frame(&mut link, refuse("the server cannot take links now".into())).await;
            return;
        }
    };
    let url = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(_) => return,
    };
    let welcome = Frame::new(Header::Welcome {
        sandbox_id: sandbox_id.to_string(),
    });
    if send_frame(&mut link, welcome).await.is_err() {
        return;
    }
    let (mux, _) = Mux::start(link, Role::Opener, limits);
    let generation = tunnels.install(sandbox_id.as_str(), mux.clone());
    let revoked = CancellationToken::new();
    // opencode without a password of its own ignores this one; the guard checks it either way.
    let password = password.unwrap_or_else(|| new_secret(""));
    let endpoint = ServeEndpoint {
        url,
        password: Secret::new(password.clone()),
        directory: directory.unwrap_or_else(|| ".".into()),
    };
    let orch = tunnels.inner.orch.clone();
    if let Err(e) = orch
        .local_up(
            &sandbox_id,
            endpoint,
            generation,
            takes_repos,
            revoked.clone(),
        )
        .await
    {
        tracing::warn!(sandbox = %sandbox_id, error = %e, "refused a local agent's link");
        mux.close("revoked", &e.to_string());
        tunnels.remove(sandbox_id.as_str(), generation);
        return;
    }
    tracing::info!(sandbox = %sandbox_id, "local agent connected");
    let accept = async {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, most likely: do not spin.
                    tracing::warn!(error = %e, "loopback accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let mux = mux.clone();
            let password = password.clone();
            tokio::spawn(async move {
                let mut tcp = tcp;
                let Some(head) = super::guard::admit(&mut tcp, &password).await else {
                    return;
                };
                match mux.open().await {
                    Ok(stream) => {
                        if stream.send(head.into()).await.is_ok() {
                            pump(stream, tcp).await;
                        }
                    }
                    // Dropping the connection is the answer: the link is gone or full.
                    Err(e) => tracing::debug!(error = %e, "no stream for a loopback connection"),
                }
            });
        }
    };
    let closed = tokio::select! {
        c = mux.closed() => c,
        _ = revoked.cancelled() => {
            mux.close("revoked", "the sandbox was deleted");
            mux.closed().await
        }
        _ = access_lost(orch.store().clone(), record) => {
            mux.close(
                "revoked",
                "the tunnel token was revoked or its user left the workspace",
            );
            mux.closed().await
        }
        _ = accept => unreachable_accept(),
    };
    drop(listener);
    tunnels.remove(sandbox_id.as_str(), generation);
    if let Err(e) = orch.local_down(&sandbox_id, generation).await {
        tracing::warn!(sandbox = %sandbox_id, error = %e, "could not mark a local sandbox offline");
    }
    tracing::info!(sandbox = %sandbox_id, code = %closed.code, reason = %closed.reason, "local agent disconnected");
}

fn unreachable_accept() -> delegate_agent::mux::Closed {
    delegate_agent::mux::Closed {
        code: "local".into(),
        reason: "the loopback listener stopped".into(),
    }
}

/// axum's WebSocket as a tunnel [`Transport`]: binary messages are frames, text is refused, and
/// pings, pongs and close are the library's business.
fn adapt(ws: WebSocket) -> impl Transport {
    ws.sink_map_err(io::Error::other)
        .with(|b: Bytes| future::ready(Ok::<_, io::Error>(Message::Binary(b))))
        .filter_map(|m| {
            future::ready(match m {
                Ok(Message::Binary(b)) => Some(Ok(b)),
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a text message on the tunnel",
                ))),
                Ok(_) => None,
                Err(e) => Some(Err(io::Error::other(e))),
            })
        })
}

//! `/api/auth/...`: password sign-up and sign-in (argon2id), the session cookie, sign-out, who am
//! I, and the caller's browser sessions. Sign-up follows `DELEGATE_REGISTRATION`; sign-in is rate
//! limited per email and per client IP ([`crate::auth::limits`]).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, ApiState, Authed, Json, Path};
use crate::auth::accounts::{self, AccountError};
use crate::auth::{csrf, sessions};
use crate::store::TokenRecord;

/// `POST /api/auth/signup` body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupInput {
    /// The address to sign in with; one account per address.
    pub email: String,
    /// 10 to 1024 characters.
    pub password: String,
    /// Display name [default: the email's local part].
    #[serde(default)]
    pub name: Option<String>,
    /// An invite code (`dli_...`); required when registration is `invite`.
    #[serde(default)]
    pub invite: Option<String>,
}

/// `POST /api/auth/login` body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    /// The account's email address.
    pub email: String,
    /// The account's password.
    pub password: String,
}

/// A workspace as its member sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceInfo {
    /// The workspace's stable id.
    pub id: String,
    /// The short name used in URLs and `workspace` parameters; unique on the server.
    pub slug: String,
    /// The display name.
    pub name: String,
    /// `owner`, `maintainer`, `developer` or `guest`.
    pub role: String,
}

/// `GET /api/auth/me` reply (also the reply of sign-up and sign-in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Me {
    /// The signed-in user's id.
    pub user_id: String,
    /// The user's email address.
    pub email: String,
    /// The user's display name.
    pub name: String,
    /// The workspaces the user is a member of, with their role in each; only the token's workspace
    /// when the token is limited to one.
    pub workspaces: Vec<WorkspaceInfo>,
}

/// A browser session (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInfo {
    /// The session's id, for `DELETE /api/auth/sessions/{id}`.
    pub id: String,
    /// When the session started, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it stops being accepted, in milliseconds since the Unix epoch; `null` never expires.
    pub expires_at: Option<i64>,
    /// When it was ended (sign-out or revoke), in milliseconds since the Unix epoch; `null` while live.
    pub revoked_at: Option<i64>,
    /// The session this request came with.
    pub current: bool,
}

/// `GET /api/auth/sessions` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionList {
    /// Newest first.
    pub sessions: Vec<SessionInfo>,
}

/// The client's address: the peer the listener saw, or, when that peer is one of
/// `DELEGATE_TRUSTED_PROXIES`, the address its `X-Forwarded-For` names (the right-most entry that
/// is not itself a trusted proxy). From any other peer the header is ignored: a client could
/// otherwise pick a fresh address for every failed sign-in.
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl FromRequestParts<ApiState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let trusted = &state.orch().settings().trusted_proxies;
        Ok(ClientIp(
            peer.map(|p| client_ip(p, &parts.headers, trusted)),
        ))
    }
}

/// [`ClientIp`]'s rule, on its own for tests.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    trusted: &[crate::settings::IpRange],
) -> std::net::IpAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Each proxy appends the address it saw; walk back from ours past trusted hops.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // Garbage from further out: the last good hop is the best answer.
            Err(_) => break,
        }
    }
    client
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Invalid(m) => ApiError::invalid(m),
            AccountError::Unauthorized(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
            }
            AccountError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            AccountError::NotFound(m) => ApiError::not_found(m),
            AccountError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            AccountError::Limit(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit", m),
            AccountError::Denied(e) => e.into(),
            AccountError::Store(e) => ApiError::internal(e),
            AccountError::Internal(m) => ApiError::internal(m),
        }
    }
}

/// `POST /api/auth/signup`: creates an account (as the registration policy allows) and signs it in.
pub async fn signup(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(input): Json<SignupInput>,
) -> ApiResult<Response> {
    same_origin(&state, &headers)?;
    let input = accounts::SignUp {
        email: &input.email,
        password: &input.password,
        name: input.name.as_deref(),
        invite: input.invite.as_deref(),
    };
    let policy = state.orch().settings().registration;
    let user = accounts::sign_up(state.orch().store().as_ref(), policy, input).await?;
    tracing::info!(user = %user.id, "account created by sign-up");
    signed_in(&state, &user.id, StatusCode::CREATED).await
}

/// `POST /api/auth/login`: checks the password (rate limited) and starts a browser session.
pub async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(input): Json<LoginInput>,
) -> ApiResult<Response> {
    same_origin(&state, &headers)?;
    let user_id = accounts::log_in(
        state.orch().store().as_ref(),
        &state.logins,
        &input.email,
        &input.password,
        ip,
    )
    .await?;
    signed_in(&state, &user_id, StatusCode::OK).await
}

/// Sign-up and sign-in set a cookie without one: a browser's `Origin`, when sent, must still be this
/// server's (no signing a victim's browser into an attacker's account from another site). Clients
/// without `Origin` (curl, the CLI) are not browsers and pass.
fn same_origin(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let public = state.orch().settings().public_url.clone();
    let claimed = origin.to_str().ok().and_then(csrf::origin_of);
    if claimed.is_some_and(|o| csrf::allowed_origins(public.as_deref(), headers).contains(&o)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "sign-in from another site's page is refused",
        ))
    }
}

/// A new session for `user_id`: the cookie in `Set-Cookie`, [`Me`] in the body.
async fn signed_in(state: &ApiState, user_id: &str, status: StatusCode) -> ApiResult<Response> {
    let store = state.orch().store();
    let (secret, _) = sessions::start_session(store.as_ref(), user_id)
        .await
        .map_err(ApiError::internal)?;
    let me = me_of(state, user_id, None).await?;
    let mut response = (status, axum::Json(me)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        sessions::session_cookie(&secret, secure(state)),
    );
    Ok(response)
}

/// Cookies are `Secure` when browsers reach the server over https.
fn secure(state: &ApiState) -> bool {
    state
        .orch()
        .settings()
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
}

async fn me_of(state: &ApiState, user_id: &str, scope: Option<&str>) -> ApiResult<Me> {
    let store = state.orch().store();
    let user = store
        .user_by_id(user_id)
        .await
        .map_err(ApiError::internal)?;
    let workspaces = store
        .workspaces_of_user(user_id)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|(ws, _)| scope.is_none_or(|s| s == ws.id))
        .map(|(ws, role)| WorkspaceInfo {
            id: ws.id,
            slug: ws.slug,
            name: ws.name,
            role: role.as_str().to_string(),
        })
        .collect();
    Ok(Me {
        user_id: user.id,
        email: user.email,
        name: user.name,
        workspaces,
    })
}

/// `POST /api/auth/logout`: revokes the caller's session, if it came with one, and clears the cookie.
pub async fn logout(State(state): State<ApiState>, Authed(caller): Authed) -> ApiResult<Response> {
    accounts::sign_out(state.orch().store().as_ref(), &caller).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, sessions::clear_cookie());
    Ok(response)
}

/// `GET /api/auth/me`: who the caller is and which workspaces they can reach.
pub async fn me(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> ApiResult<axum::Json<Me>> {
    Ok(axum::Json(
        me_of(&state, &caller.user_id, caller.workspace_id.as_deref()).await?,
    ))
}

fn session_info(t: TokenRecord, current: Option<&str>) -> SessionInfo {
    SessionInfo {
        current: current == Some(t.id.as_str()),
        id: t.id,
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
    }
}

/// `GET /api/auth/sessions`: the caller's browser sessions, so they can spot and end stray ones.
pub async fn list_sessions(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> ApiResult<axum::Json<SessionList>> {
    let sessions = accounts::sessions(state.orch().store().as_ref(), &caller).await?;
    Ok(axum::Json(SessionList {
        sessions: sessions
            .into_iter()
            .map(|t| session_info(t, caller.token_id.as_deref()))
            .collect(),
    }))
}

/// `DELETE /api/auth/sessions/{id}`: ends one of the caller's sessions; ending the current one
/// also clears the cookie.
pub async fn revoke_session(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    accounts::revoke_session(state.orch().store().as_ref(), &caller, &id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if caller.token_id.as_deref() == Some(id.as_str()) {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, sessions::clear_cookie());
    }
    Ok(response)
}

#[cfg(test)]
mod client_ip_tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted: Vec<crate::settings::IpRange> =
            vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap(),
        );
        // From the trusted proxy: the right-most untrusted hop.
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // From anyone else: the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
        // No header, or garbage: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        h.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }
}

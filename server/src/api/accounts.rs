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
use crate::auth::{csrf, passwords, sessions};
use crate::ids::{hash_secret, now_ms};
use crate::settings::Registration;
use crate::store::{StoreError, TokenRecord};

/// `POST /api/auth/signup` body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupInput {
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
    pub email: String,
    pub password: String,
}

/// A workspace as its member sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceInfo {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// `owner`, `maintainer`, `developer` or `guest`.
    pub role: String,
}

/// `GET /api/auth/me` reply (also the reply of sign-up and sign-in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Me {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub workspaces: Vec<WorkspaceInfo>,
}

/// A browser session (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInfo {
    pub id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
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

/// The client's address as the listener saw it (no `X-Forwarded-For`: it is not trusted).
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A normalised email address, or a 400.
pub fn normalise_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if ok {
        Ok(email)
    } else {
        Err(ApiError::invalid("email: not an email address"))
    }
}

/// A display name: 1 to 200 characters, no control characters.
pub fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name: 1 to 200 characters, no control characters",
        ));
    }
    Ok(name.to_string())
}

pub async fn signup(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(input): Json<SignupInput>,
) -> ApiResult<Response> {
    same_origin(&state, &headers)?;
    let policy = state.orch().settings().registration;
    if policy == Registration::Disabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "sign-up is disabled on this server; ask an administrator",
        ));
    }
    if policy == Registration::Invite && input.invite.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "sign-up needs an invite on this server",
        ));
    }
    let email = normalise_email(&input.email)?;
    let name = input.name.as_deref().map(check_name).transpose()?;
    passwords::check_policy(&input.password).map_err(|e| ApiError::invalid(e.to_string()))?;
    let store = state.orch().store();
    match store.user_by_email(&email).await {
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "an account with this email exists; sign in instead",
            ));
        }
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(ApiError::internal(e)),
    }
    let password_hash = passwords::hash(&input.password)
        .await
        .map_err(ApiError::internal)?;
    // Claimed before the account exists: a code works once even under concurrent sign-ups.
    let invite = match &input.invite {
        None => None,
        Some(code) => match store
            .claim_invite(&hash_secret(code.trim()), now_ms())
            .await
        {
            Ok(i) => Some(i),
            Err(StoreError::NotFound(_)) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the invite is unknown, used or expired",
                ));
            }
            Err(e) => return Err(ApiError::internal(e)),
        },
    };
    let (user, _) = crate::auth::create_user(store.as_ref(), &email, name.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "an account with this email exists; sign in instead",
            ),
            e => ApiError::internal(e),
        })?;
    store
        .set_password_hash(&user.id, &password_hash)
        .await
        .map_err(ApiError::internal)?;
    if let Some(invite) = invite {
        store
            .set_member(&invite.workspace_id, &user.id, invite.role)
            .await
            .map_err(ApiError::internal)?;
    }
    tracing::info!(user = %user.id, "account created by sign-up");
    signed_in(&state, &user.id, StatusCode::CREATED).await
}

pub async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(input): Json<LoginInput>,
) -> ApiResult<Response> {
    same_origin(&state, &headers)?;
    let email = input.email.trim().to_lowercase();
    let email_key = format!("email:{email}");
    let mut keys = vec![email_key.clone()];
    if let Some(ip) = ip {
        keys.push(format!("ip:{ip}"));
    }
    let limiter = &state.logins;
    if limiter.blocked(&keys) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "limit",
            "too many failed sign-ins; try again in 15 minutes",
        ));
    }
    let store = state.orch().store();
    let (user_id, hash) = match store.user_by_email(&email).await {
        Ok(user) => {
            let hash = store
                .password_hash(&user.id)
                .await
                .map_err(ApiError::internal)?;
            (Some(user.id), hash)
        }
        Err(StoreError::NotFound(_)) => (None, None),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let matches = passwords::check_policy(&input.password).is_ok()
        && passwords::verify(&input.password, hash).await;
    match user_id {
        Some(user_id) if matches => {
            limiter.succeeded(&email_key);
            signed_in(&state, &user_id, StatusCode::OK).await
        }
        _ => {
            limiter.failed(&keys);
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong email or password",
            ))
        }
    }
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

/// Whether a caller's token id is a browser session's.
fn is_session(token_id: Option<&str>) -> bool {
    token_id.is_some_and(|t| crate::ids::is_id("ses", t))
}

pub async fn logout(State(state): State<ApiState>, Authed(caller): Authed) -> ApiResult<Response> {
    if let Some(id) = caller.token_id.as_deref().filter(|t| is_session(Some(t))) {
        state
            .orch()
            .store()
            .revoke_token(id, now_ms())
            .await
            .map_err(ApiError::internal)?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, sessions::clear_cookie());
    Ok(response)
}

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

pub async fn list_sessions(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> ApiResult<axum::Json<SessionList>> {
    let sessions = state
        .orch()
        .store()
        .sessions_of_user(&caller.user_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(SessionList {
        sessions: sessions
            .into_iter()
            .filter(|t| super::tokens::in_scope(&caller, t))
            .map(|t| session_info(t, caller.token_id.as_deref()))
            .collect(),
    }))
}

pub async fn revoke_session(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let store = state.orch().store();
    let own = store
        .sessions_of_user(&caller.user_id)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .any(|t| t.id == id && super::tokens::in_scope(&caller, &t));
    if !own {
        return Err(ApiError::not_found(format!("session {id:?} not found")));
    }
    store
        .revoke_token(&id, now_ms())
        .await
        .map_err(ApiError::internal)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if caller.token_id.as_deref() == Some(id.as_str()) {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, sessions::clear_cookie());
    }
    Ok(response)
}

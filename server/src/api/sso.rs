//! Single sign-on routes (no token needed): which providers are on, and for each provider a
//! `start` that redirects the browser to it and a `callback` that finishes the sign-in
//! ([`crate::auth::oidc`]), starts a session and redirects to `return_to`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::accounts::ClientIp;
use super::{ApiError, ApiResult, ApiState, Query};
use crate::auth::oidc::{BROWSER_COOKIE, Callback, PENDING_TTL, Provider, SsoError, link_identity};
use crate::auth::sessions::{session_cookie, start_session};
use crate::credentials;

/// Which sign-in providers this server offers (the web UI shows a button for each).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Providers {
    /// Sign-in with the configured OpenID Connect provider is available.
    pub oidc: bool,
    /// Sign-in with GitHub is available.
    pub github: bool,
}

/// `?return_to=/path`: where to land after signing in (a path on this server; default `/`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    /// A path on this server to land on after signing in; `/` when omitted.
    pub return_to: Option<String>,
}

/// `GET /api/auth/providers`: which single sign-on providers are configured.
pub async fn providers(State(state): State<ApiState>) -> axum::Json<Providers> {
    axum::Json(Providers {
        oidc: state.sso.enabled(Provider::Oidc),
        github: state.sso.enabled(Provider::Github),
    })
}

/// `GET /api/auth/oidc/start`: redirects the browser to the OpenID Connect provider.
pub async fn oidc_start(
    state: State<ApiState>,
    ip: ClientIp,
    headers: HeaderMap,
    q: Query<StartQuery>,
) -> ApiResult<Response> {
    start(state, ip, headers, q, Provider::Oidc).await
}

/// `GET /api/auth/oidc/callback`: the provider's redirect back; signs in and redirects to `return_to`.
pub async fn oidc_callback(
    state: State<ApiState>,
    headers: HeaderMap,
    q: Query<Callback>,
) -> ApiResult<Response> {
    callback(state, headers, q, Provider::Oidc).await
}

/// `GET /api/auth/github/start`: redirects the browser to GitHub.
pub async fn github_start(
    state: State<ApiState>,
    ip: ClientIp,
    headers: HeaderMap,
    q: Query<StartQuery>,
) -> ApiResult<Response> {
    start(state, ip, headers, q, Provider::Github).await
}

/// `GET /api/auth/github/callback`: GitHub's redirect back; signs in and redirects to `return_to`.
pub async fn github_callback(
    state: State<ApiState>,
    headers: HeaderMap,
    q: Query<Callback>,
) -> ApiResult<Response> {
    callback(state, headers, q, Provider::Github).await
}

async fn start(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Query(q): Query<StartQuery>,
    provider: Provider,
) -> ApiResult<Response> {
    if !state.sso.enabled(provider) {
        return Err(SsoError::NotConfigured(provider).into());
    }
    let (url, browser) = state
        .sso
        .start(
            state.orch().store().as_ref(),
            provider,
            q.return_to.as_deref(),
            browser_cookie(&headers),
            ip,
        )
        .await?;
    let secure = if state.sso.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    // Lax: the provider's redirect back is a top-level navigation, which carries it.
    let cookie = HeaderValue::from_str(&format!(
        "{BROWSER_COOKIE}={browser}; Path=/api/auth; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        PENDING_TTL.as_secs()
    ))
    .map_err(ApiError::internal)?;
    Ok(see_other(&url, Some(cookie)))
}

/// The [`BROWSER_COOKIE`] a request carries.
fn browser_cookie(headers: &HeaderMap) -> Option<&str> {
    credentials::cookie(headers, BROWSER_COOKIE)
}

async fn callback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
    provider: Provider,
) -> ApiResult<Response> {
    let store = state.orch().store().as_ref();
    let (who, return_to) = state
        .sso
        .finish(store, provider, &q, browser_cookie(&headers))
        .await?;
    let user = link_identity(store, &who, state.orch().settings().registration).await?;
    let (secret, session) = start_session(store, &user.id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(
        provider = provider.as_str(),
        user_id = %user.id,
        session_id = %session.id,
        "signed in with single sign-on"
    );
    let cookie = session_cookie(&secret, state.sso.secure_cookies());
    Ok(see_other(&return_to, Some(cookie)))
}

/// `303 See Other` to `location`, optionally setting a cookie; never cached.
fn see_other(location: &str, cookie: Option<HeaderValue>) -> Response {
    let mut headers = HeaderMap::new();
    match HeaderValue::from_str(location) {
        Ok(v) => headers.insert(header::LOCATION, v),
        Err(_) => headers.insert(header::LOCATION, HeaderValue::from_static("/")),
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(cookie) = cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    (StatusCode::SEE_OTHER, headers).into_response()
}

impl From<SsoError> for ApiError {
    fn from(e: SsoError) -> Self {
        let message = e.to_string();
        match e {
            SsoError::NotConfigured(_) => ApiError::not_found(message),
            SsoError::BadState
            | SsoError::OtherBrowser
            | SsoError::BadRequest(_)
            | SsoError::InvalidToken(_) => ApiError::invalid(message),
            SsoError::Refused(_) => ApiError::new(StatusCode::FORBIDDEN, "sso_refused", message),
            SsoError::NotLinked(_) => ApiError::new(StatusCode::FORBIDDEN, "not_linked", message),
            SsoError::NotAllowed(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            SsoError::Busy => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit", message),
            SsoError::Upstream => ApiError::new(StatusCode::BAD_GATEWAY, "upstream", message),
            SsoError::Store(cause) => ApiError::internal(cause),
        }
    }
}

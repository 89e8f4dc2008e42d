//! Browser sessions: a random secret in an HttpOnly cookie, stored as a hashed `session` token row
//! (so sign-out and revocation are one row update), with a fixed lifetime.

use axum::http::{HeaderMap, HeaderValue};
use delegate_mcp::delegator::Caller;

use super::AuthError;
use crate::credentials::{self, Holder};
use crate::ids::now_ms;
use crate::store::{Store, StoreError, TokenKind, TokenRecord};

/// The session cookie's name.
pub const COOKIE: &str = "delegate_session";
/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 14 * 24 * 3600 * 1000;

/// Starts a session for `user_id`; returns the cookie value (shown to the browser only) and the
/// session's token row.
pub async fn start_session(
    store: &dyn Store,
    user_id: &str,
) -> Result<(String, TokenRecord), StoreError> {
    let holder = Holder {
        user_id: Some(user_id.to_string()),
        ..Holder::default()
    };
    let (secret, record) =
        credentials::issue(TokenKind::Session, holder, Some(now_ms() + SESSION_TTL_MS));
    store.user_by_id(user_id).await?;
    store.insert_token(&record).await?;
    Ok((secret, record))
}

/// `Set-Cookie` for a new session (`secure` when the server is reached over https).
pub fn session_cookie(value: &str, secure: bool) -> HeaderValue {
    let max_age = SESSION_TTL_MS / 1000;
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("delegate_session=; Path=/; Max-Age=0"))
}

/// `Set-Cookie` that removes the session cookie (sign-out).
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("delegate_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The session secret a request's cookies carry, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    credentials::cookie(headers, COOKIE)
}

/// The caller a session cookie stands for; the token id is the session's row id.
pub async fn caller_from_session(store: &dyn Store, secret: &str) -> Result<Caller, AuthError> {
    let record = credentials::verify(store, TokenKind::Session, secret).await?;
    Ok(Caller {
        user_id: record.user_id.ok_or(AuthError::Invalid)?,
        token_id: Some(record.id),
        client: None,
        workspace_id: None,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::header;

    use super::*;

    #[test]
    fn finds_the_session_among_other_cookies() {
        let cookies = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::COOKIE, v.parse().unwrap());
            }
            h
        };
        assert_eq!(
            cookie_value(&cookies(Some("a=1; delegate_session=dss_x; b=2"))),
            Some("dss_x")
        );
        assert_eq!(cookie_value(&cookies(Some("a=1"))), None);
        assert_eq!(cookie_value(&cookies(Some("delegate_session="))), None);
        assert_eq!(cookie_value(&cookies(None)), None);
        let c = session_cookie("v", true).to_str().unwrap().to_string();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("Secure"));
    }
}

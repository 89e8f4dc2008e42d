//! Browser sessions: a random secret in an HttpOnly cookie, stored as a hashed `session` token row
//! (so sign-out and revocation are one row update), with a fixed lifetime.

use axum::http::HeaderValue;
use delegate_mcp::delegator::Caller;

use super::AuthError;
use crate::ids::{hash_secret, new_id, new_secret, now_ms};
use crate::store::{Store, StoreError, TokenKind, TokenRecord};

/// The session cookie's name.
pub const COOKIE: &str = "delegate_session";
/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 14 * 24 * 3600 * 1000;

/// Starts a session for `user_id`; returns the cookie value (shown to the browser only) and the
/// session's token row id.
pub async fn start_session(
    store: &dyn Store,
    user_id: &str,
) -> Result<(String, TokenRecord), StoreError> {
    let secret = new_secret("dss_");
    let now = now_ms();
    let record = TokenRecord {
        id: new_id("ses"),
        kind: TokenKind::Session,
        hash: hash_secret(&secret),
        name: None,
        user_id: Some(user_id.to_string()),
        sandbox_id: None,
        workspace_id: None,
        created_at: now,
        expires_at: Some(now + SESSION_TTL_MS),
        revoked_at: None,
    };
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

/// The session secret in a `Cookie` header, if any.
pub fn cookie_value(cookie_header: Option<&str>) -> Option<&str> {
    cookie_header?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The caller a session cookie stands for; the token id is the session's row id.
pub async fn caller_from_session(store: &dyn Store, secret: &str) -> Result<Caller, AuthError> {
    let record = match store.token_by_hash(&hash_secret(secret)).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(AuthError::Invalid),
        Err(e) => return Err(e.into()),
    };
    if record.kind != TokenKind::Session
        || record.revoked_at.is_some()
        || record.expires_at.is_some_and(|t| t <= now_ms())
    {
        return Err(AuthError::Invalid);
    }
    Ok(Caller {
        user_id: record.user_id.ok_or(AuthError::Invalid)?,
        token_id: Some(record.id),
        client: None,
        workspace_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_among_other_cookies() {
        assert_eq!(
            cookie_value(Some("a=1; delegate_session=dss_x; b=2")),
            Some("dss_x")
        );
        assert_eq!(cookie_value(Some("a=1")), None);
        assert_eq!(cookie_value(Some("delegate_session=")), None);
        assert_eq!(cookie_value(None), None);
        let c = session_cookie("v", true).to_str().unwrap().to_string();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("Secure"));
    }
}

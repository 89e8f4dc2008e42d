//! Every credential delegate issues and checks, in one place: the secrets' prefixes, issuing a
//! secret with its hashed record, verifying a presented secret, and reading credentials out of
//! `Authorization` and `Cookie` headers. Only SHA-256 hashes of secrets reach the store.
//!
//! | kind                 | prefix | record                      |
//! |----------------------|--------|-----------------------------|
//! | API token            | `dlg_` | `tokens`, kind `api`        |
//! | browser session      | `dss_` | `tokens`, kind `session`    |
//! | sandbox proxy token  | `dsb_` | `tokens`, kind `sandbox`    |
//! | tunnel token         | `dlt_` | `tokens`, kind `tunnel`     |
//! | agent code (1 use)   | `dac_` | `tokens`, kind `agent_code` |
//! | invite code (1 use)  | `dli_` | `invites`                   |

use axum::http::{HeaderMap, header};

use crate::ids::{hash_secret, new_id, new_secret, now_ms};
use crate::store::{Invite, Millis, Role, Store, StoreError, TokenKind, TokenRecord};

/// Why a presented token was refused. Deliberately vague towards the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request carried no credential.
    #[error("missing bearer token")]
    Missing,
    /// The credential is unknown, of another kind, expired or revoked; which is not said.
    #[error("invalid, expired or revoked token")]
    Invalid,
    /// The store failed while looking it up.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// Prefix of invite codes (the only secret kept outside the `tokens` table).
pub const INVITE_PREFIX: &str = "dli_";

/// The prefix every secret of `kind` starts with, so secrets are recognisable (and greppable by
/// secret scanners) and a secret of one kind is refused as another before any lookup.
pub const fn prefix(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Api => "dlg_",
        TokenKind::Session => "dss_",
        TokenKind::Sandbox => "dsb_",
        TokenKind::Tunnel => "dlt_",
        TokenKind::AgentCode => "dac_",
    }
}

/// Whom a new token stands for and what it reaches; every field is optional, by kind.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    /// The user the token acts for (API tokens, sessions, agent codes, tunnel tokens).
    pub user_id: Option<String>,
    /// The sandbox the token is bound to (sandbox proxy and tunnel tokens).
    pub sandbox_id: Option<String>,
    /// The workspace the token is limited to; `None` for an unscoped API token or a session.
    pub workspace_id: Option<String>,
    /// A label for lists.
    pub name: Option<String>,
}

/// A new secret of `kind` and the record to store for it. The secret is shown once and never
/// stored; the caller inserts the record.
pub fn issue(kind: TokenKind, holder: Holder, expires_at: Option<Millis>) -> (String, TokenRecord) {
    let secret = new_secret(prefix(kind));
    let record = record_for(kind, &secret, holder, expires_at);
    (secret, record)
}

/// The record to store for `secret`, a secret of `kind` minted earlier (with [`new_secret`] and
/// [`prefix`]) but not valid until this record is stored: a pooled sandbox gets its proxy token
/// in its environment when it starts, and the token starts working only once a run claims it.
pub fn record_for(
    kind: TokenKind,
    secret: &str,
    holder: Holder,
    expires_at: Option<Millis>,
) -> TokenRecord {
    TokenRecord {
        // Session ids are told apart by their prefix ("is this request's token a session?").
        id: new_id(if kind == TokenKind::Session {
            "ses"
        } else {
            "tok"
        }),
        kind,
        hash: hash_secret(secret),
        name: holder.name,
        user_id: holder.user_id,
        sandbox_id: holder.sandbox_id,
        workspace_id: holder.workspace_id,
        created_at: now_ms(),
        expires_at,
        revoked_at: None,
    }
}

/// A new invite code for `workspace_id` with `role`, valid for `ttl_ms`, and its record.
pub fn issue_invite(
    workspace_id: &str,
    role: Role,
    created_by: &str,
    ttl_ms: Millis,
) -> (String, Invite) {
    let code = new_secret(INVITE_PREFIX);
    let now = now_ms();
    let invite = Invite {
        id: new_id("inv"),
        hash: hash_secret(&code),
        workspace_id: workspace_id.to_string(),
        role,
        created_by: created_by.to_string(),
        created_at: now,
        expires_at: now + ttl_ms,
        used_at: None,
    };
    (code, invite)
}

/// The live record behind a presented secret of `kind`: right prefix, known hash, same kind, not
/// expired, not revoked. Every refusal is the same [`AuthError::Invalid`].
pub async fn verify(
    store: &dyn Store,
    kind: TokenKind,
    secret: &str,
) -> Result<TokenRecord, AuthError> {
    if !secret.starts_with(prefix(kind)) {
        return Err(AuthError::Invalid);
    }
    let record = match store.token_by_hash(&hash_secret(secret)).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(AuthError::Invalid),
        Err(e) => return Err(e.into()),
    };
    if record.kind != kind || record.revoked_at.is_some() || expired(record.expires_at) {
        return Err(AuthError::Invalid);
    }
    Ok(record)
}

fn expired(expires_at: Option<Millis>) -> bool {
    expires_at.is_some_and(|t| t <= now_ms())
}

/// Uses up a one-time secret of `kind` (an agent code): [`verify`]'s checks and the revocation in
/// one store statement, so it works once even under concurrent use.
pub async fn claim(
    store: &dyn Store,
    kind: TokenKind,
    secret: &str,
) -> Result<TokenRecord, AuthError> {
    if !secret.starts_with(prefix(kind)) {
        return Err(AuthError::Invalid);
    }
    match store
        .claim_token(&hash_secret(secret), kind, now_ms())
        .await
    {
        Ok(r) => Ok(r),
        Err(StoreError::NotFound(_)) => Err(AuthError::Invalid),
        Err(e) => Err(e.into()),
    }
}

/// Uses up an invite code, once: unknown, used and expired codes are [`AuthError::Invalid`].
pub async fn claim_invite(store: &dyn Store, code: &str) -> Result<Invite, AuthError> {
    let code = code.trim();
    if !code.starts_with(INVITE_PREFIX) {
        return Err(AuthError::Invalid);
    }
    match store.claim_invite(&hash_secret(code), now_ms()).await {
        Ok(i) => Ok(i),
        Err(StoreError::NotFound(_)) => Err(AuthError::Invalid),
        Err(e) => Err(e.into()),
    }
}

/// The token of an `Authorization: Bearer <token>` header: the scheme in any case, any spaces
/// around the token; `None` without the header, with another scheme, or with an empty token.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the first cookie called `name`, unless it is empty.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookies(headers)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Every `name=value` pair of every `Cookie` header, in order, trimmed.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{User, Workspace};

    async fn store() -> (Arc<dyn Store>, String) {
        let store = crate::store::connect("sqlite::memory:").await.unwrap();
        let user = User {
            id: new_id("usr"),
            email: "a@example.com".into(),
            name: "A".into(),
            created_at: now_ms(),
        };
        store.create_user(&user).await.unwrap();
        (store, user.id)
    }

    fn for_user(user_id: &str) -> Holder {
        Holder {
            user_id: Some(user_id.to_string()),
            ..Holder::default()
        }
    }

    #[test]
    fn each_kind_has_its_own_prefix() {
        let kinds = [
            TokenKind::Api,
            TokenKind::Session,
            TokenKind::Sandbox,
            TokenKind::Tunnel,
            TokenKind::AgentCode,
        ];
        let mut prefixes: Vec<_> = kinds.iter().map(|k| prefix(*k)).collect();
        prefixes.push(INVITE_PREFIX);
        for kind in kinds {
            let (secret, record) = issue(kind, Holder::default(), None);
            assert!(secret.starts_with(prefix(kind)), "{secret}");
            assert_eq!(record.hash, hash_secret(&secret));
            assert_eq!(record.kind, kind);
        }
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), kinds.len() + 1, "prefixes are distinct");
        let (_, session) = issue(TokenKind::Session, Holder::default(), None);
        assert!(crate::ids::is_id("ses", &session.id));
    }

    #[tokio::test]
    async fn verify_accepts_a_live_token_of_its_kind_only() {
        let (store, user) = store().await;
        let store = store.as_ref();
        let (secret, record) = issue(TokenKind::Api, for_user(&user), None);
        store.insert_token(&record).await.unwrap();
        assert_eq!(
            verify(store, TokenKind::Api, &secret).await.unwrap().id,
            record.id
        );

        // Wrong kind: the prefix alone refuses it, and so does the record's kind.
        assert!(matches!(
            verify(store, TokenKind::Session, &secret).await,
            Err(AuthError::Invalid)
        ));
        let (session, mut as_api) = issue(TokenKind::Session, for_user(&user), None);
        as_api.hash = hash_secret(&format!("dlg_{}", &session[4..]));
        store.insert_token(&as_api).await.unwrap();
        assert!(matches!(
            verify(store, TokenKind::Api, &format!("dlg_{}", &session[4..])).await,
            Err(AuthError::Invalid)
        ));

        // Bad prefix, unknown secret.
        for bad in [
            "",
            "dlg_",
            "xyz",
            &secret[4..],
            &format!("dlg_{}", "0".repeat(64)),
        ] {
            assert!(
                matches!(
                    verify(store, TokenKind::Api, bad).await,
                    Err(AuthError::Invalid)
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn verify_refuses_expired_and_revoked_tokens() {
        let (store, user) = store().await;
        let store = store.as_ref();
        let (expired, record) = issue(TokenKind::Api, for_user(&user), Some(now_ms() - 1));
        store.insert_token(&record).await.unwrap();
        assert!(matches!(
            verify(store, TokenKind::Api, &expired).await,
            Err(AuthError::Invalid)
        ));
        let (later, record) = issue(TokenKind::Api, for_user(&user), Some(now_ms() + 60_000));
        store.insert_token(&record).await.unwrap();
        assert!(verify(store, TokenKind::Api, &later).await.is_ok());
        store.revoke_token(&record.id, now_ms()).await.unwrap();
        assert!(matches!(
            verify(store, TokenKind::Api, &later).await,
            Err(AuthError::Invalid)
        ));
    }

    #[tokio::test]
    async fn one_time_secrets_work_once() {
        let (store, user) = store().await;
        let store = store.as_ref();
        let ws = Workspace {
            id: new_id("wsp"),
            slug: "w".into(),
            name: "W".into(),
            created_at: now_ms(),
        };
        store.create_workspace(&ws, &user).await.unwrap();
        let (code, record) = issue(
            TokenKind::AgentCode,
            for_user(&user),
            Some(now_ms() + 60_000),
        );
        store.insert_token(&record).await.unwrap();
        assert!(matches!(
            claim(store, TokenKind::AgentCode, &format!("x{code}")).await,
            Err(AuthError::Invalid)
        ));
        assert_eq!(
            claim(store, TokenKind::AgentCode, &code).await.unwrap().id,
            record.id
        );
        assert!(matches!(
            claim(store, TokenKind::AgentCode, &code).await,
            Err(AuthError::Invalid)
        ));

        let (invite, record) = issue_invite(&ws.id, Role::Guest, &user, 60_000);
        store.insert_invite(&record).await.unwrap();
        assert!(invite.starts_with(INVITE_PREFIX));
        assert_eq!(
            claim_invite(store, &format!(" {invite} "))
                .await
                .unwrap()
                .id,
            record.id
        );
        assert!(matches!(
            claim_invite(store, &invite).await,
            Err(AuthError::Invalid)
        ));
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_tolerates_case_and_spacing_but_not_other_schemes() {
        let auth = |v: &str| headers(&[(header::AUTHORIZATION, v)]);
        assert_eq!(bearer(&auth("Bearer dlg_x")), Some("dlg_x"));
        assert_eq!(bearer(&auth("bearer dlg_x")), Some("dlg_x"));
        assert_eq!(bearer(&auth("BEARER   dlg_x  ")), Some("dlg_x"));
        assert_eq!(bearer(&auth("  Bearer\tdlg_x")), Some("dlg_x"));
        assert_eq!(bearer(&auth("Bearer")), None);
        assert_eq!(bearer(&auth("Bearer   ")), None);
        assert_eq!(bearer(&auth("Basic b3BlbmNvZGU6eA==")), None);
        assert_eq!(bearer(&auth("Bearerdlg_x")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    // Moved from the gateway, which strips its own cookies with [`cookies`].
    #[test]
    fn finds_cookies_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; delegate_gateway=dgc_x".parse().unwrap(),
        );
        h.append(header::COOKIE, "b=2".parse().unwrap());
        let all: Vec<_> = cookies(&h).collect();
        assert_eq!(all, [("a", "1"), ("delegate_gateway", "dgc_x"), ("b", "2")]);
    }

    #[test]
    fn cookies_are_found_among_others_across_headers() {
        let h = headers(&[
            (header::COOKIE, "a=1; delegate_session=dss_x;b = 2"),
            (header::COOKIE, "empty=; c=3"),
        ]);
        assert_eq!(cookie(&h, "delegate_session"), Some("dss_x"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "empty"), None);
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(cookie(&HeaderMap::new(), "a"), None);
        let all: Vec<_> = cookies(&h).collect();
        assert_eq!(
            all,
            [
                ("a", "1"),
                ("delegate_session", "dss_x"),
                ("b", "2"),
                ("empty", ""),
                ("c", "3")
            ]
        );
        // The first of two same-named cookies wins, even if it is empty.
        let h = headers(&[(header::COOKIE, "s=; s=2")]);
        assert_eq!(cookie(&h, "s"), None);
    }
}

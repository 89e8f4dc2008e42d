//! API tokens (`dlg_...`): issued once, stored as SHA-256 hashes, resolved to a [`Caller`] by the
//! HTTP layer. Users: created by `delegate user create`, each with a personal workspace. Browser
//! sessions: [`sessions`].

pub mod csrf;
pub mod limits;
mod middleware;
pub mod oidc;
pub mod passwords;
pub mod sessions;

pub use middleware::require_token;

use delegate_mcp::delegator::Caller;

use crate::ids::{hash_secret, new_id, new_secret, now_ms};
use crate::store::{Store, StoreError, TokenKind, TokenRecord, User, Workspace};

/// Why a presented token was refused. Deliberately vague towards the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid, expired or revoked token")]
    Invalid,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// Prefix of API tokens, so they are recognisable (and greppable by secret scanners).
pub const API_TOKEN_PREFIX: &str = "dlg_";
/// Prefix of tunnel tokens (a local agent's credential for its sandbox's link).
pub const TUNNEL_TOKEN_PREFIX: &str = "dlt_";

/// Issues an API token for `user_id`; the secret is returned once and never stored.
pub async fn create_api_token(
    store: &dyn Store,
    user_id: &str,
    name: Option<String>,
    expires_at: Option<i64>,
) -> Result<(String, TokenRecord), StoreError> {
    create_scoped_api_token(store, user_id, name, expires_at, None).await
}

/// [`create_api_token`], optionally limited to one workspace (id): the token then acts only there.
pub async fn create_scoped_api_token(
    store: &dyn Store,
    user_id: &str,
    name: Option<String>,
    expires_at: Option<i64>,
    workspace_id: Option<String>,
) -> Result<(String, TokenRecord), StoreError> {
    let secret = new_secret(API_TOKEN_PREFIX);
    let record = TokenRecord {
        id: new_id("tok"),
        kind: TokenKind::Api,
        hash: hash_secret(&secret),
        name,
        user_id: Some(user_id.to_string()),
        sandbox_id: None,
        workspace_id,
        created_at: now_ms(),
        expires_at,
        revoked_at: None,
    };
    store.user_by_id(user_id).await?;
    store.insert_token(&record).await?;
    Ok((secret, record))
}

/// The caller a `Authorization: Bearer dlg_...` header stands for.
pub async fn caller_from_bearer(
    store: &dyn Store,
    authorization: Option<&str>,
) -> Result<Caller, AuthError> {
    let token = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?;
    if !token.starts_with(API_TOKEN_PREFIX) {
        return Err(AuthError::Invalid);
    }
    let record = match store.token_by_hash(&hash_secret(token)).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(AuthError::Invalid),
        Err(e) => return Err(e.into()),
    };
    if record.kind != TokenKind::Api
        || record.revoked_at.is_some()
        || record.expires_at.is_some_and(|t| t <= now_ms())
    {
        return Err(AuthError::Invalid);
    }
    let user_id = record.user_id.ok_or(AuthError::Invalid)?;
    Ok(Caller {
        user_id,
        token_id: Some(record.id),
        client: None,
        workspace_id: record.workspace_id,
    })
}

/// Creates a user and a personal workspace they own (slug from the email's local part).
pub async fn create_user(
    store: &dyn Store,
    email: &str,
    name: Option<&str>,
) -> Result<(User, Workspace), StoreError> {
    let email = email.trim().to_lowercase();
    if !email.contains('@') || email.len() > 254 || email.chars().any(char::is_whitespace) {
        return Err(StoreError::Conflict(format!(
            "{email:?} is not an email address"
        )));
    }
    let local = email.split('@').next().unwrap_or("user");
    let user = User {
        id: new_id("usr"),
        email: email.clone(),
        name: name
            .map(str::to_string)
            .unwrap_or_else(|| local.to_string()),
        created_at: now_ms(),
    };
    store.create_user(&user).await?;
    let base: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut slug = base.clone();
    for n in 2.. {
        match store.workspace_by_slug(&slug).await {
            Err(StoreError::NotFound(_)) => break,
            Ok(_) => slug = format!("{base}-{n}"),
            Err(e) => return Err(e),
        }
    }
    let ws = Workspace {
        id: new_id("wsp"),
        slug,
        name: format!("{}'s workspace", user.name),
        created_at: now_ms(),
    };
    // The owner's membership comes with the workspace.
    store.create_workspace(&ws, &user.id).await?;
    Ok((user, ws))
}

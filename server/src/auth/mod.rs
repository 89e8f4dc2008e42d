//! API tokens (`dlg_...`): issued once, stored as SHA-256 hashes ([`credentials`]), resolved to a
//! [`Caller`] by the HTTP layer. Users: created by `delegate user create`, each with a personal workspace. Browser
//! sessions: [`sessions`].

pub mod accounts;
pub mod csrf;
pub mod limits;
mod middleware;
pub mod oidc;
pub mod passwords;
pub mod sessions;

pub use middleware::require_token;

use delegate_mcp::delegator::Caller;

use crate::credentials::{self, Holder};
use crate::ids::{new_id, now_ms};
use crate::names::Email;
use crate::store::{Store, StoreError, TokenKind, TokenRecord, User, Workspace};

pub use crate::credentials::AuthError;

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
    let holder = Holder {
        user_id: Some(user_id.to_string()),
        workspace_id,
        name,
        ..Holder::default()
    };
    let (secret, record) = credentials::issue(TokenKind::Api, holder, expires_at);
    store.user_by_id(user_id).await?;
    store.insert_token(&record).await?;
    Ok((secret, record))
}

/// The caller an API token (the `Bearer` of a request) stands for.
pub async fn caller_from_bearer(
    store: &dyn Store,
    token: Option<&str>,
) -> Result<Caller, AuthError> {
    let token = token.ok_or(AuthError::Missing)?;
    let record = credentials::verify(store, TokenKind::Api, token).await?;
    Ok(Caller {
        user_id: record.user_id.ok_or(AuthError::Invalid)?,
        token_id: Some(record.id),
        client: None,
        workspace_id: record.workspace_id,
    })
}

/// Creates a user and a personal workspace they own (slug from the email's local part), with the
/// email marked verified: the caller (an administrator, a provider that verified the email) vouches
/// for it. Password sign-ups use [`create_user_with`] and stay unverified.
pub async fn create_user(
    store: &dyn Store,
    email: &str,
    name: Option<&str>,
) -> Result<(User, Workspace), StoreError> {
    create_user_with(store, email, name, true).await
}

/// [`create_user`], saying whether the email is known to be the user's (single sign-on links only
/// to accounts whose email is).
pub async fn create_user_with(
    store: &dyn Store,
    email: &str,
    name: Option<&str>,
    email_verified: bool,
) -> Result<(User, Workspace), StoreError> {
    let email = Email::parse(email)
        .map_err(|_| StoreError::Conflict(format!("{email:?} is not an email address")))?;
    let local = email.local_part();
    let user = User {
        id: new_id("usr"),
        email: email.as_str().to_string(),
        name: name
            .map(str::to_string)
            .unwrap_or_else(|| local.to_string()),
        created_at: now_ms(),
    };
    store.create_user(&user).await?;
    // The column defaults to unverified, so a failure here never leaves a verified account behind.
    if email_verified {
        store.set_email_verified(&user.id, true).await?;
    }
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

//! The account rules behind the REST handlers and the admin CLI: sign-up and sign-in, API tokens,
//! browser sessions, workspaces with their members and invites, and local agents' registration
//! codes. Each function takes the [`Caller`] (or, for the CLI, the user) and plain inputs and
//! returns domain values or an [`AccountError`]; HTTP shapes stay in `crate::api`.

use std::net::IpAddr;

use delegate_mcp::delegator::Caller;

use super::{AuthError, limits::LoginLimiter, passwords};
use crate::credentials::{self, Holder};
use crate::delegation::{Action, Service};
use crate::error::Error;
use crate::ids::{Origin, new_id, now_ms};
use crate::names::{Email, Name};
use crate::roles::{allows, may_assign, may_invite};
use crate::settings::Registration;
use crate::store::{
    Invite, Role, Sandbox, Store, StoreError, TokenKind, TokenRecord, User, Workspace,
};

/// The longest lifetime an API token may ask for: ten years.
pub const MAX_TOKEN_EXPIRY_SECONDS: u64 = 10 * 365 * 86_400;
/// How long an invite code works.
pub const INVITE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// How long an agent registration code is valid unless asked otherwise.
pub const DEFAULT_CODE_TTL_S: u64 = 600;
/// The longest an agent registration code may be valid.
pub use delegate_agent::wire::MAX_CODE_TTL_SECONDS as MAX_CODE_TTL_S;

/// Why an account operation was refused. The messages are the API's.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input breaks a rule (email, name, password policy, role); the message says which.
    #[error("{0}")]
    Invalid(String),
    /// A credential (password, registration code) was refused.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not do this (sign-up closed, invite refused, role too low).
    #[error("{0}")]
    Forbidden(String),
    /// The message is complete (unlike [`Error::NotFound`]'s).
    #[error("{0}")]
    NotFound(String),
    /// The change collides with existing data (email or slug taken, already a member, last owner).
    #[error("{0}")]
    Conflict(String),
    /// Too many failed sign-ins.
    #[error("{0}")]
    Limit(String),
    /// The workspace lookup or role check refused.
    #[error(transparent)]
    Denied(#[from] Error),
    /// The store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Something below failed; the cause is for the log only.
    #[error("{0}")]
    Internal(String),
}

type Result<T, E = AccountError> = std::result::Result<T, E>;

fn forbidden(message: &str) -> AccountError {
    AccountError::Forbidden(message.to_string())
}

fn name(s: &str) -> Result<Name> {
    Name::parse(s).map_err(|e| AccountError::Invalid(e.to_string()))
}

fn email(s: &str) -> Result<Email> {
    Email::parse(s).map_err(|e| AccountError::Invalid(e.to_string()))
}

/// A role as the API spells it.
pub fn role(s: &str) -> Result<Role> {
    Role::parse(s.trim()).ok_or_else(|| {
        AccountError::Invalid("role: one of owner, maintainer, developer, guest".into())
    })
}

/// A workspace-scoped token sees (and revokes) only tokens of its own workspace.
pub fn in_scope(caller: &Caller, t: &TokenRecord) -> bool {
    caller.workspace_id.is_none() || caller.workspace_id == t.workspace_id
}

// ---- Users: sign-up, sign-in, the admin's `user create` ----

/// What sign-up asks for.
pub struct SignUp<'a> {
    /// The address to sign in with; normalised before use.
    pub email: &'a str,
    /// The plain password; checked against the policy, then only its hash is kept.
    pub password: &'a str,
    /// Display name; the email's local part when `None`.
    pub name: Option<&'a str>,
    /// An invite code (`dli_...`), required when registration is `invite`.
    pub invite: Option<&'a str>,
}

/// Creates an account under the server's registration `policy`, with its personal workspace and,
/// with an invite, the invited membership.
pub async fn sign_up(store: &dyn Store, policy: Registration, input: SignUp<'_>) -> Result<User> {
    if policy == Registration::Disabled {
        return Err(forbidden(
            "sign-up is disabled on this server; ask an administrator",
        ));
    }
    if policy == Registration::Invite && input.invite.is_none() {
        return Err(forbidden("sign-up needs an invite on this server"));
    }
    let email = email(input.email)?;
    let name = input.name.map(name).transpose()?;
    passwords::check_policy(input.password).map_err(|e| AccountError::Invalid(e.to_string()))?;
    let exists =
        || AccountError::Conflict("an account with this email exists; sign in instead".into());
    match store.user_by_email(email.as_str()).await {
        Ok(_) => return Err(exists()),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // The invite is checked (and claimed, before the account exists: a code works once even under
    // concurrent sign-ups) before the password is hashed, so a bad code costs no argon2 time.
    let invite = match input.invite {
        None => None,
        Some(code) => Some(claim_invite(store, code).await?),
    };
    let password_hash = passwords::hash(input.password)
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    // Unverified: nothing showed that the address is the signer's (see `auth::oidc`).
    let (user, _) = super::create_user_with(
        store,
        email.as_str(),
        name.as_ref().map(Name::as_str),
        false,
    )
    .await
    .map_err(|e| match e {
        StoreError::Conflict(_) => exists(),
        e => e.into(),
    })?;
    store.set_password_hash(&user.id, &password_hash).await?;
    if let Some(invite) = invite {
        store
            .set_member(&invite.workspace_id, &user.id, invite.role)
            .await?;
    }
    Ok(user)
}

/// Uses up an invite code and checks that its creator still stands behind it: still a member whose
/// role may invite with the invite's role (a demoted or removed maintainer's codes die with their
/// rights). Every refusal reads the same.
async fn claim_invite(store: &dyn Store, code: &str) -> Result<Invite> {
    let refused = || forbidden("the invite is unknown, used or expired");
    let invite = match credentials::claim_invite(store, code).await {
        Ok(i) => i,
        Err(AuthError::Store(e)) => return Err(e.into()),
        Err(_) => return Err(refused()),
    };
    let creator = store
        .member_role(&invite.workspace_id, &invite.created_by)
        .await?;
    if !creator.is_some_and(|r| may_invite(r, invite.role)) {
        return Err(forbidden(
            "the invite is no longer valid: whoever created it can no longer invite with that \
             role; ask for a new one",
        ));
    }
    Ok(invite)
}

/// Creates a user with a personal workspace they own (`Conflict` if the email is taken), the
/// email marked verified (an administrator creates it).
pub async fn create_user(
    store: &dyn Store,
    email: &Email,
    name: Option<&Name>,
) -> Result<(User, Workspace), StoreError> {
    super::create_user(store, email.as_str(), name.map(Name::as_str)).await
}

/// Checks a password sign-in, rate limited per email and per client IP; returns the user id.
pub async fn log_in(
    store: &dyn Store,
    limiter: &LoginLimiter,
    email: &str,
    password: &str,
    ip: Option<IpAddr>,
) -> Result<String> {
    let email = email.trim().to_lowercase();
    let email_key = format!("email:{email}");
    let mut keys = vec![email_key.clone()];
    if let Some(ip) = ip {
        keys.push(format!("ip:{ip}"));
    }
    if limiter.blocked(&keys) {
        return Err(AccountError::Limit(
            "too many failed sign-ins; try again in 15 minutes".into(),
        ));
    }
    let (user_id, hash) = match store.user_by_email(&email).await {
        Ok(user) => {
            let hash = store.password_hash(&user.id).await?;
            (Some(user.id), hash)
        }
        Err(StoreError::NotFound(_)) => (None, None),
        Err(e) => return Err(e.into()),
    };
    let matches =
        passwords::check_policy(password).is_ok() && passwords::verify(password, hash).await;
    match user_id {
        Some(user_id) if matches => {
            limiter.succeeded(&email_key);
            Ok(user_id)
        }
        _ => {
            limiter.failed(&keys);
            Err(AccountError::Unauthorized("wrong email or password".into()))
        }
    }
}

// ---- API tokens and sessions ----

/// Issues an API token for `user_id`: an optional name, an optional lifetime (1 s to ten years),
/// optionally limited to a workspace (id).
pub async fn issue_api_token(
    store: &dyn Store,
    user_id: &str,
    name: Option<&str>,
    expires_in_seconds: Option<u64>,
    workspace_id: Option<String>,
) -> Result<(String, TokenRecord)> {
    let name = name.map(self::name).transpose()?;
    let expires_at = token_expiry(expires_in_seconds)?;
    Ok(super::create_scoped_api_token(
        store,
        user_id,
        name.map(Name::into_string),
        expires_at,
        workspace_id,
    )
    .await?)
}

/// A caller's new API token. A `workspace` (slug or id) limits it, resolved through the caller's
/// memberships and scope: no scoping to a foreign workspace, and a scoped token can not mint a
/// wider one.
pub async fn create_token(
    svc: &Service,
    caller: &Caller,
    name: &str,
    expires_in_seconds: Option<u64>,
    workspace: Option<&str>,
) -> Result<(String, TokenRecord)> {
    // Checked before the workspace, so a bad name is a 400 whatever the workspace.
    self::name(name)?;
    token_expiry(expires_in_seconds)?;
    let workspace_id = match workspace {
        Some(w) => Some(svc.authorize(caller, Some(w), Action::Read).await?.id),
        None => caller.workspace_id.clone(),
    };
    let store = svc.orchestrator().store();
    // A token that expires can not mint one that outlives it (a stolen short-lived token would
    // otherwise buy a permanent one): the new token expires no later than the caller's, and
    // without a lifetime of its own it takes the caller's.
    let ceiling = match caller.token_id.as_deref().filter(|t| !is_session(Some(t))) {
        Some(id) => store
            .tokens_of_user(&caller.user_id)
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .and_then(|t| t.expires_at),
        None => None,
    };
    let expires_at = match (token_expiry(expires_in_seconds)?, ceiling) {
        (None, ceiling) => ceiling,
        (Some(at), Some(ceiling)) if at > ceiling => {
            return Err(AccountError::Invalid(format!(
                "expires_in_seconds: the token you call with expires in {} s, and a token it \
                 makes can not outlive it",
                ((ceiling - now_ms()) / 1000).max(0)
            )));
        }
        (Some(at), _) => Some(at),
    };
    Ok(super::create_scoped_api_token(
        store.as_ref(),
        &caller.user_id,
        Some(self::name(name)?.into_string()),
        expires_at,
        workspace_id,
    )
    .await?)
}

/// When a token asking for `expires_in_seconds` expires (1 s to ten years; `None`: never).
fn token_expiry(expires_in_seconds: Option<u64>) -> Result<Option<i64>> {
    match expires_in_seconds {
        None => Ok(None),
        Some(s) if (1..=MAX_TOKEN_EXPIRY_SECONDS).contains(&s) => {
            Ok(Some(now_ms() + (s as i64) * 1000))
        }
        Some(_) => Err(AccountError::Invalid(format!(
            "expires_in_seconds: between 1 and {MAX_TOKEN_EXPIRY_SECONDS}"
        ))),
    }
}

/// The caller's API tokens in its scope, newest first, revoked and expired ones included.
pub async fn tokens(store: &dyn Store, caller: &Caller) -> Result<Vec<TokenRecord>> {
    let tokens = store.tokens_of_user(&caller.user_id).await?;
    Ok(tokens.into_iter().filter(|t| in_scope(caller, t)).collect())
}

/// Revokes one of the caller's API tokens; anyone else's look unknown.
pub async fn revoke_token(store: &dyn Store, caller: &Caller, id: &str) -> Result<()> {
    if !tokens(store, caller).await?.iter().any(|t| t.id == id) {
        return Err(AccountError::NotFound(format!("token {id:?} not found")));
    }
    store.revoke_token(id, now_ms()).await?;
    Ok(())
}

/// Whether a caller's token id is a browser session's.
pub fn is_session(token_id: Option<&str>) -> bool {
    token_id.is_some_and(|t| crate::ids::is_id("ses", t))
}

/// Ends the caller's session, if it came with one (an API token is left alone).
pub async fn sign_out(store: &dyn Store, caller: &Caller) -> Result<()> {
    if let Some(id) = caller.token_id.as_deref().filter(|t| is_session(Some(t))) {
        store.revoke_token(id, now_ms()).await?;
    }
    Ok(())
}

/// The caller's browser sessions in its scope, newest first.
pub async fn sessions(store: &dyn Store, caller: &Caller) -> Result<Vec<TokenRecord>> {
    let sessions = store.sessions_of_user(&caller.user_id).await?;
    Ok(sessions
        .into_iter()
        .filter(|t| in_scope(caller, t))
        .collect())
}

/// Revokes one of the caller's sessions; anyone else's look unknown.
pub async fn revoke_session(store: &dyn Store, caller: &Caller, id: &str) -> Result<()> {
    if !sessions(store, caller).await?.iter().any(|t| t.id == id) {
        return Err(AccountError::NotFound(format!("session {id:?} not found")));
    }
    store.revoke_token(id, now_ms()).await?;
    Ok(())
}

// ---- Workspaces, members, invites ----

fn is_slug(s: &str) -> bool {
    (2..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The caller's workspaces (in its scope) with its role in each, oldest first.
pub async fn workspaces(store: &dyn Store, caller: &Caller) -> Result<Vec<(Workspace, Role)>> {
    Ok(store
        .workspaces_of_user(&caller.user_id)
        .await?
        .into_iter()
        .filter(|(ws, _)| caller.workspace_id.as_ref().is_none_or(|id| *id == ws.id))
        .collect())
}

/// A new workspace the caller owns.
pub async fn create_workspace(
    store: &dyn Store,
    caller: &Caller,
    slug: &str,
    name: &str,
) -> Result<Workspace> {
    if caller.workspace_id.is_some() {
        return Err(forbidden(
            "a workspace-scoped token can not create workspaces",
        ));
    }
    if !is_slug(slug) {
        return Err(AccountError::Invalid(
            "slug: 2 to 40 of a-z, 0-9 and -".into(),
        ));
    }
    let ws = Workspace {
        id: new_id("wsp"),
        slug: slug.to_string(),
        name: self::name(name)?.into_string(),
        created_at: now_ms(),
    };
    let conflict = || AccountError::Conflict("that slug is taken".into());
    match store.workspace_by_slug(&ws.slug).await {
        Ok(_) => return Err(conflict()),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match store.create_workspace(&ws, &caller.user_id).await {
        Ok(()) => Ok(ws),
        Err(StoreError::Conflict(_)) => Err(conflict()),
        Err(e) => Err(e.into()),
    }
}

/// A workspace's members, highest role first.
pub async fn members(svc: &Service, caller: &Caller, ws: &str) -> Result<Vec<(User, Role)>> {
    let (ws, _) = svc.authorize_role(caller, Some(ws), Action::Read).await?;
    Ok(svc.orchestrator().store().workspace_members(&ws.id).await?)
}

/// Adds an existing user (by email) to a workspace with `role`. An email without an account gets
/// the same answer and nothing happens (see `docs/hardening.md`); returns the email and role.
pub async fn add_member(
    svc: &Service,
    caller: &Caller,
    ws: &str,
    email: &str,
    role: &str,
) -> Result<(String, Role)> {
    let (ws, actor) = svc
        .authorize_role(caller, Some(ws), Action::ManageMembers)
        .await?;
    let new = self::role(role)?;
    let email = self::email(email)?;
    if !may_assign(actor, None, Some(new)) {
        return Err(forbidden("your role can not add members with that role"));
    }
    let store = svc.orchestrator().store();
    // An unknown email answers like a known one: anyone may own a workspace, so a different
    // answer would tell anyone which emails have accounts here.
    let user = match store.user_by_email(email.as_str()).await {
        Ok(u) => u,
        Err(StoreError::NotFound(_)) => return Ok((email.as_str().to_string(), new)),
        Err(e) => return Err(e.into()),
    };
    // Members are listed to the caller anyway: this tells nothing new.
    if store.member_role(&ws.id, &user.id).await?.is_some() {
        return Err(AccountError::Conflict(
            "already a member; change the role with PATCH".into(),
        ));
    }
    store.set_member(&ws.id, &user.id, new).await?;
    Ok((email.as_str().to_string(), new))
}

/// The target's current role, or `NotFound` when they are not a member.
async fn current_role(store: &dyn Store, ws: &Workspace, user_id: &str) -> Result<Role> {
    store
        .member_role(&ws.id, user_id)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("member {user_id:?} not found")))
}

/// The store's refusals of a membership change (the last owner, say) as the caller sees them.
fn membership_refused(e: StoreError) -> AccountError {
    match e {
        StoreError::Conflict(m) => AccountError::Conflict(m),
        StoreError::NotFound(m) => AccountError::NotFound(format!("{m} not found")),
        e => e.into(),
    }
}

/// Changes a member's role.
pub async fn change_member(
    svc: &Service,
    caller: &Caller,
    ws: &str,
    user_id: &str,
    role: &str,
) -> Result<(User, Role)> {
    let (ws, actor) = svc
        .authorize_role(caller, Some(ws), Action::ManageMembers)
        .await?;
    let new = self::role(role)?;
    let store = svc.orchestrator().store();
    let from = current_role(store.as_ref(), &ws, user_id).await?;
    if !may_assign(actor, Some(from), Some(new)) {
        return Err(forbidden("your role can not make this change"));
    }
    store
        .change_member_role(&ws.id, user_id, new)
        .await
        .map_err(membership_refused)?;
    Ok((store.user_by_id(user_id).await?, new))
}

/// Removes a member from a workspace.
pub async fn remove_member(svc: &Service, caller: &Caller, ws: &str, user_id: &str) -> Result<()> {
    let (ws, actor) = svc
        .authorize_role(caller, Some(ws), Action::ManageMembers)
        .await?;
    let store = svc.orchestrator().store();
    let from = current_role(store.as_ref(), &ws, user_id).await?;
    if !may_assign(actor, Some(from), None) {
        return Err(forbidden("your role can not remove this member"));
    }
    store
        .remove_member(&ws.id, user_id)
        .await
        .map_err(membership_refused)?;
    // What they held for this workspace dies with the membership; a live tunnel notices on its
    // next check (`tunnel::link`) and closes.
    store
        .revoke_member_tokens(&ws.id, user_id, now_ms())
        .await?;
    Ok(())
}

/// A new invite code into a workspace with `role` (shown once), its record and the workspace.
pub async fn create_invite(
    svc: &Service,
    caller: &Caller,
    ws: &str,
    role: &str,
) -> Result<(String, Invite, Workspace)> {
    let (ws, actor) = svc.authorize_role(caller, Some(ws), Action::Invite).await?;
    let new = self::role(role)?;
    if new == Role::Owner {
        return Err(forbidden(
            "invites can not make owners: invite with a lower role, then change the role",
        ));
    }
    if !may_invite(actor, new) {
        return Err(forbidden("your role can not invite with that role"));
    }
    let (code, invite) = credentials::issue_invite(&ws.id, new, &caller.user_id, INVITE_TTL_MS);
    svc.orchestrator().store().insert_invite(&invite).await?;
    Ok((code, invite, ws))
}

/// A workspace's invites (never their codes), newest first; for those who may invite.
pub async fn invites(svc: &Service, caller: &Caller, ws: &str) -> Result<(Workspace, Vec<Invite>)> {
    let ws = svc.authorize(caller, Some(ws), Action::Invite).await?;
    let invites = svc
        .orchestrator()
        .store()
        .invites_of_workspace(&ws.id)
        .await?;
    Ok((ws, invites))
}

/// Revokes an unused invite; used, unknown and other workspaces' invites are `NotFound`.
pub async fn revoke_invite(svc: &Service, caller: &Caller, ws: &str, id: &str) -> Result<()> {
    let ws = svc.authorize(caller, Some(ws), Action::Invite).await?;
    match svc.orchestrator().store().delete_invite(&ws.id, id).await {
        Ok(()) => Ok(()),
        Err(StoreError::NotFound(_)) => Err(AccountError::NotFound(format!(
            "no unused invite {id:?} in this workspace"
        ))),
        Err(e) => Err(e.into()),
    }
}

// ---- Local agents ----

/// A one-time code that registers a local agent in a workspace (developers and up), valid
/// `expires_in_seconds` (default [`DEFAULT_CODE_TTL_S`]); returns the code, its record and the
/// workspace.
pub async fn create_agent_code(
    svc: &Service,
    caller: &Caller,
    ws: &str,
    expires_in_seconds: Option<u64>,
) -> Result<(String, TokenRecord, Workspace)> {
    let ws = svc.authorize(caller, Some(ws), Action::Write).await?;
    let ttl = expires_in_seconds.unwrap_or(DEFAULT_CODE_TTL_S);
    if ttl == 0 || ttl > MAX_CODE_TTL_S {
        return Err(AccountError::Invalid(format!(
            "expires_in_seconds: between 1 and {MAX_CODE_TTL_S}"
        )));
    }
    let holder = Holder {
        user_id: Some(caller.user_id.clone()),
        workspace_id: Some(ws.id.clone()),
        ..Holder::default()
    };
    let (code, record) = credentials::issue(
        TokenKind::AgentCode,
        holder,
        Some(now_ms() + ttl as i64 * 1000),
    );
    svc.orchestrator().store().insert_token(&record).await?;
    Ok((code, record, ws))
}

/// Trades a registration code, once, for a new local sandbox named `name` and its tunnel token
/// (shown once). The code acts with its creator's rights as they are now.
pub async fn register_agent(
    svc: &Service,
    code: &str,
    name: &str,
) -> Result<(Sandbox, Workspace, String)> {
    let refused = || {
        AccountError::Unauthorized(
            "unknown, used or expired registration code: ask for a new one".into(),
        )
    };
    let orch = svc.orchestrator();
    let store = orch.store();
    let claimed = match credentials::claim(store.as_ref(), TokenKind::AgentCode, code.trim()).await
    {
        Ok(c) => c,
        Err(AuthError::Store(e)) => return Err(e.into()),
        Err(_) => return Err(refused()),
    };
    let (Some(user_id), Some(workspace_id)) = (claimed.user_id, claimed.workspace_id) else {
        return Err(refused());
    };
    let role = store.member_role(&workspace_id, &user_id).await?;
    if !role.is_some_and(|r| allows(r, Action::Write)) {
        return Err(refused());
    }
    let ws = store.workspace_by_id(&workspace_id).await?;
    let sandbox = orch
        .register_local(&ws, name, Some(Origin::User(user_id.clone())))
        .await
        .map_err(|e| match e {
            Error::Invalid(m) => AccountError::Invalid(m),
            other => AccountError::Internal(other.to_string()),
        })?;
    let holder = Holder {
        user_id: Some(user_id),
        sandbox_id: Some(sandbox.id.clone()),
        workspace_id: Some(ws.id.clone()),
        name: Some(sandbox.name.clone()),
    };
    let (token, record) = credentials::issue(TokenKind::Tunnel, holder, None);
    store.insert_token(&record).await?;
    Ok((sandbox, ws, token))
}

//! `delegate user create` and `delegate token create`: admin commands against the configured
//! database.

use std::process::ExitCode;

use anyhow::Context;
use delegate_server::auth::accounts::{self, AccountError};
use delegate_server::names::{Email, Name};
use delegate_server::settings::{Settings, parse_duration};
use delegate_server::store::{Store, StoreError};

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user with a personal workspace they own; prints the user id and workspace.
    Create {
        /// The user's email address (their identity).
        #[arg(long)]
        email: String,
        /// Display name [default: the email's local part].
        #[arg(long)]
        name: Option<String>,
        /// Read a password for signing in (10 to 1024 characters) from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue an API token (`dlg_...`) for MCP over HTTP and the REST API. It is printed once, on
    /// stdout; only its hash is stored.
    Create {
        /// The user the token acts as (email) [default: the local user of embedded mode].
        #[arg(long)]
        user: Option<String>,
        /// A label to recognise the token by.
        #[arg(long)]
        name: Option<String>,
        /// Expire after this long (e.g. 30d, 12h, 90m); never by default.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Register a sandbox you run yourself (e.g. `compose.headless.yml`) and print its proxy
    /// token (`dsb_...`) once: the container gets it as DELEGATE_PROXY_TOKEN and reaches the
    /// model only through this server's proxy at /v1, never with the real key. Usage is
    /// recorded against the sandbox; delete it (DELETE /api/sandboxes/ID) to revoke the token.
    Proxy {
        /// The workspace it belongs to [default: the `default` workspace].
        #[arg(long)]
        workspace: Option<String>,
        /// A name to recognise the sandbox by.
        #[arg(long)]
        name: Option<String>,
        /// Expire after this long (e.g. 12h); never by default.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
}

async fn store(settings: &Settings) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    delegate_server::net::install_crypto();
    Ok(delegate_server::app::open_store(settings).await?)
}

pub async fn user(settings: Settings, cmd: &UserCommand) -> anyhow::Result<ExitCode> {
    let store = store(&settings).await?;
    match cmd {
        UserCommand::Create {
            email,
            name,
            password_stdin,
        } => {
            // Hashed before the user exists, so a bad password leaves nothing behind.
            let password_hash = if *password_stdin {
                Some(read_password_hash().await?)
            } else {
                None
            };
            let email = Email::parse(email).context("--email")?;
            let name = name
                .as_deref()
                .map(Name::parse)
                .transpose()
                .context("--name")?;
            let (user, ws) = accounts::create_user(store.as_ref(), &email, name.as_ref())
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(_) => {
                        anyhow::anyhow!("a user with email {email} already exists")
                    }
                    e => e.into(),
                })?;
            if let Some(hash) = password_hash {
                store.set_password_hash(&user.id, &hash).await?;
            }
            eprintln!(
                "delegate: created user {} ({}) with workspace {}",
                user.email, user.id, ws.slug
            );
            super::out(&format!("{}\n", user.id))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn token(settings: Settings, cmd: &TokenCommand) -> anyhow::Result<ExitCode> {
    let store = store(&settings).await?;
    match cmd {
        TokenCommand::Create {
            user,
            name,
            expires_in,
        } => {
            let user_id = match user {
                Some(email) => store
                    .user_by_email(&email.trim().to_lowercase())
                    .await
                    .with_context(|| {
                        format!(
                            "no user {email}: create it with `delegate user create --email {email}`"
                        )
                    })?
                    .id,
                // The local user of embedded mode (made, with its workspace, if need be).
                None => {
                    delegate_server::bootstrap::ensure_local_user(store.as_ref())
                        .await?
                        .0
                        .id
                }
            };
            let expires_in_seconds = expires_in
                .as_deref()
                .map(|d| parse_expiry(d).map(|d| d.as_secs()))
                .transpose()?;
            let (secret, record) = accounts::issue_api_token(
                store.as_ref(),
                &user_id,
                name.as_deref(),
                expires_in_seconds,
                None,
            )
            .await
            .map_err(|e| match e {
                AccountError::Invalid(m) => anyhow::anyhow!("--name or --expires-in: {m}"),
                e => e.into(),
            })?;
            eprintln!(
                "delegate: token {} for user {user_id}{}; shown once, store it now",
                record.id,
                expires_in
                    .as_ref()
                    .map(|d| format!(", expires in {d}"))
                    .unwrap_or_default()
            );
            super::out(&format!("{secret}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Proxy {
            workspace,
            name,
            expires_in,
        } => {
            let workspace = match workspace {
                Some(slug) => store
                    .workspace_by_slug(slug)
                    .await
                    .with_context(|| format!("no workspace {slug:?}"))?,
                None => {
                    delegate_server::bootstrap::ensure_local_user(store.as_ref())
                        .await?
                        .1
                }
            };
            let expires_at = match expires_in {
                Some(d) => {
                    Some(delegate_server::ids::now_ms() + parse_expiry(d)?.as_millis() as i64)
                }
                None => None,
            };
            let (sandbox, token) = delegate_server::orchestrator::register_external_sandbox(
                store.as_ref(),
                &workspace,
                name.clone(),
                Some(delegate_server::ids::Origin::Cli),
                expires_at,
            )
            .await?;
            eprintln!(
                "delegate: sandbox {} in workspace {}: its proxy token is shown once; \
                 delete the sandbox to revoke it",
                sandbox.id, workspace.slug
            );
            super::out(&format!("{token}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `30d` too, on top of the settings' s/m/h durations.
fn parse_expiry(v: &str) -> anyhow::Result<std::time::Duration> {
    if let Some(days) = v.trim().strip_suffix('d') {
        let n: u64 = days
            .parse()
            .with_context(|| format!("--expires-in {v:?}: not a duration"))?;
        return Ok(std::time::Duration::from_secs(n * 86_400));
    }
    Ok(parse_duration("--expires-in", v)?)
}

/// The first line of stdin (without its line ending), hashed with argon2id.
async fn read_password_hash() -> anyhow::Result<String> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    let password = line.trim_end_matches(['\n', '\r']);
    Ok(delegate_server::auth::passwords::hash(password).await?)
}

//! `delegate agent connect`: join this machine's `opencode serve` to a team server as a local
//! sandbox. The first run registers with a one-time code and saves the credentials (mode 0600);
//! later runs need only `--server`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use delegate_agent::client::{self, AgentConfig, LinkEvent};
use delegate_agent::credentials::{self, ServerCredentials};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register (first time, with --code) and keep a tunnel to the server open, reconnecting by
    /// itself; stop with Ctrl-C.
    Connect(ConnectArgs),
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The delegate server's URL, e.g. <https://delegate.example.com>.
    #[arg(long, env = "DELEGATE_SERVER", value_name = "URL")]
    server: String,
    /// A one-time registration code from the server (web UI or
    /// `POST /api/workspaces/{ws}/agent-codes`); only for the first connection.
    #[arg(
        long,
        env = "DELEGATE_AGENT_CODE",
        hide_env_values = true,
        value_name = "CODE"
    )]
    code: Option<String>,
    /// The name this machine's sandbox gets (with --code).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The local `opencode serve` to expose [saved at registration; default http://127.0.0.1:4096].
    #[arg(long, value_name = "URL")]
    opencode_url: Option<String>,
    /// The local opencode's password, if it has one (opencode's own variable).
    #[arg(
        long,
        env = "OPENCODE_SERVER_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    opencode_password: Option<String>,
    /// Where credentials are kept [default: $XDG_CONFIG_HOME/delegate/agent.json].
    #[arg(long, env = "DELEGATE_AGENT_CREDENTIALS", value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Where runs delegated here with a repository get their own work dir, `runs/<run id>`
    /// (removed when the run ends) [default: $XDG_DATA_HOME/delegate/agent].
    #[arg(long, env = "DELEGATE_AGENT_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

const DEFAULT_OPENCODE_URL: &str = "http://127.0.0.1:4096";

pub async fn main(cmd: &AgentCommand) -> anyhow::Result<ExitCode> {
    let AgentCommand::Connect(args) = cmd;
    delegate_server::net::install_crypto();
    let path = match &args.credentials {
        Some(p) => p.clone(),
        None => credentials::default_path()?,
    };
    let server = credentials::server_key(&args.server);
    let mut saved = match &args.code {
        Some(code) => {
            let Some(name) = args.name.as_deref() else {
                bail!("--name NAME is required with --code (how this machine shows up)");
            };
            let registered = client::register(&server, code, name).await?;
            let creds = ServerCredentials {
                sandbox_id: registered.sandbox_id,
                token: registered.token,
                name: name.to_string(),
                opencode_url: args
                    .opencode_url
                    .clone()
                    .unwrap_or_else(|| DEFAULT_OPENCODE_URL.into()),
            };
            credentials::save(&path, &server, &creds)
                .with_context(|| "registered, but could not save the credentials")?;
            eprintln!(
                "delegate agent: registered as sandbox {} ({}); credentials saved in {}",
                creds.sandbox_id,
                creds.name,
                path.display()
            );
            creds
        }
        None => credentials::load(&path, &server)?.with_context(|| {
            format!(
                "no saved credentials for {server} in {}: register first with --code CODE --name NAME",
                path.display()
            )
        })?,
    };
    if let Some(url) = &args.opencode_url
        && *url != saved.opencode_url
    {
        saved.opencode_url = url.clone();
        credentials::save(&path, &server, &saved)?;
    }
    let config = AgentConfig {
        server: server.clone(),
        sandbox_id: saved.sandbox_id.clone(),
        token: saved.token.clone(),
        opencode_url: saved.opencode_url.clone(),
        opencode_password: args.opencode_password.clone(),
        data_dir: args.data_dir.clone().or_else(credentials::default_data_dir),
    };
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let signalled = super::serve::shutdown_signal();
    tokio::spawn(async move {
        signalled.await;
        stopping.cancel();
    });
    let sandbox = saved.sandbox_id.clone();
    let opencode = saved.opencode_url.clone();
    client::run(config, stop, move |event| match event {
        LinkEvent::Connected => tracing::info!(
            "connected to {server} as sandbox {sandbox}; serving opencode at {opencode}"
        ),
        LinkEvent::Disconnected { reason, retry_in } => tracing::warn!(
            "disconnected ({reason}); reconnecting in {}s",
            retry_in.as_secs()
        ),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

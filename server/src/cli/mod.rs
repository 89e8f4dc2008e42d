//! The command line: one module per subcommand.

mod admin;
mod agent;
mod apply;
mod mcp;
mod relay;
mod remote;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use delegate_server::settings::{DEFAULT_CONFIG, ProcessEnv, Settings};

/// delegate hands coding tasks to opencode running in a sandbox, streams progress, and returns a
/// structured result: final message, changed files, diff, usage, timings.
#[derive(Debug, Parser)]
#[command(name = "delegate", version, propagate_version = true)]
pub struct Cli {
    /// Settings file (TOML; see `delegate default-config`). Environment variables win over it.
    #[arg(long, global = true, env = "DELEGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log filter for stderr, e.g. `info` or `delegate_server=debug`.
    #[arg(long, global = true, env = "DELEGATE_LOG", value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Delegate one task: run it in a fresh sandbox with live progress, then print the result.
    // Boxed: its many flags make it far the largest variant.
    Run(Box<run::RunArgs>),
    /// Write a finished run's change into your repository as a branch (or, with --worktree, also
    /// into the working tree): for runs started with `--apply none`, or to apply again.
    Apply(apply::ApplyArgs),
    /// Serve MCP over stdio (for Claude Code, Codex, ...): `claude mcp add delegate -- delegate
    /// mcp`. The orchestrator is embedded, or with --server/--token a running server does the work.
    Mcp(mcp::McpArgs),
    /// Run the HTTP server: MCP (streamable HTTP) at /mcp with bearer tokens, the REST API, the
    /// web UI, /healthz. The Anthropic proxy is at /v1 only with DELEGATE_PROXY_PUBLIC=true or
    /// docker on a named network. Process sandboxes refuse to start without memory, pids and CPU
    /// limits (cgroups) unless DELEGATE_SANDBOX_LIMITS=optional; settings: `delegate default-config`.
    Serve,
    /// Manage users.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage API tokens, and proxy tokens for sandboxes you run yourself (`token proxy`).
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Join this machine's opencode to a server as a local sandbox (reverse tunnel).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Create or update the database schema, then exit.
    Migrate,
    /// Print a commented example settings file.
    DefaultConfig,
    /// Inside a sandbox: relay sockets, then run a command (used by the process backend).
    #[command(hide = true)]
    SandboxRelay(relay::RelayArgs),
}

pub fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        // Progress lines are the CLI's output; logs only when something is wrong.
        Command::Run(_) | Command::Apply(_) | Command::SandboxRelay(_) | Command::Mcp(_) => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    Ok(Settings::load(cli.config.as_deref(), &ProcessEnv)?)
}

/// The delegator a command on the caller's machine uses: `inner` (embedded or remote), with the
/// caller's repositories snapshotted on the way in and changes written back on the way out.
///
/// Every command uses the same state dir (the data dir's `local/`), so `delegate apply` and the
/// `apply_changes` tool find the snapshot a run started from, whichever command started it.
///
/// `project` is the project root when the person at the keyboard named one (`--repo`); a
/// repository they name is theirs to hand over, wherever it is.
///
/// Kept snapshots older than the run retention, or over `DELEGATE_LOCAL_KEEP_BYTES`, are pruned
/// now in the background, and after every run.
fn local_repositories(
    inner: std::sync::Arc<dyn delegate_mcp::Delegator>,
    settings: &Settings,
    project: Option<&std::path::Path>,
) -> std::sync::Arc<dyn delegate_mcp::Delegator> {
    let local = delegate_mcp::LocalDelegator::new(
        inner,
        settings.data_dir.join("local"),
        settings.repo_limits(),
    )
    .with_keep_policy(settings.keep_policy());
    let local = match project {
        Some(root) => local.with_project_root(root),
        None => local,
    };
    local.prune_in_background();
    std::sync::Arc::new(local)
}

/// Starts the watch UI (`DELEGATE_WATCH`) of an embedded orchestrator and returns the MCP tools'
/// delegator over it, its runs carrying watch links. A listener that can not start costs the
/// links, not the command: it says why on stderr and goes on.
async fn embedded_delegator(
    orch: &delegate_server::orchestrator::Orchestrator,
    settings: &Settings,
) -> (
    delegate_server::delegation::EmbeddedDelegator,
    Option<delegate_server::watch::WatchServer>,
) {
    let delegator = delegate_server::delegation::EmbeddedDelegator::new(orch.clone());
    let Some(addr) = settings.watch else {
        return (delegator, None);
    };
    match delegate_server::watch::WatchServer::start(orch, addr).await {
        Ok(watch) => (delegator.with_watch(watch.links()), Some(watch)),
        Err(e) => {
            tracing::warn!(
                "the watch UI could not listen on {addr}: {e}; runs get no watch_url \
                 (DELEGATE_WATCH_ADDR picks another address, DELEGATE_WATCH=off turns it off)"
            );
            (delegator, None)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Writes a command's output to stdout (logs and progress go to stderr).
fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::DefaultConfig => {
            out(DEFAULT_CONFIG)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SandboxRelay(args) => relay::main(args),
        Command::Migrate => {
            let settings = load_settings(&cli)?;
            runtime()?.block_on(async {
                delegate_server::net::install_crypto();
                let store = delegate_server::app::open_store(&settings).await?;
                eprintln!("delegate: {} database is up to date", store.kind());
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Run(args) => {
            let settings = load_settings(&cli)?;
            match args.remote.delegator()? {
                Some(remote) => runtime()?.block_on(run::remote(remote, &settings, args)),
                None => runtime()?.block_on(run::main(settings, args)),
            }
        }
        Command::Apply(args) => {
            let settings = load_settings(&cli)?;
            runtime()?.block_on(apply::main(settings, args))
        }
        Command::Mcp(args) => {
            let settings = load_settings(&cli)?;
            match args.remote.delegator()? {
                Some(remote) => runtime()?.block_on(mcp::remote(remote, &settings)),
                None => runtime()?.block_on(mcp::main(settings)),
            }
        }
        Command::Serve => runtime()?.block_on(serve::main(load_settings(&cli)?)),
        Command::User(cmd) => runtime()?.block_on(admin::user(load_settings(&cli)?, cmd)),
        Command::Token(cmd) => runtime()?.block_on(admin::token(load_settings(&cli)?, cmd)),
        Command::Agent(cmd) => runtime()?.block_on(agent::main(cmd)),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }
}

//! `--server URL --token T`: the flags that turn `delegate mcp` and `delegate run` into clients of a
//! running `delegate serve` (its REST API) instead of embedding an orchestrator.

use anyhow::bail;
use delegate_mcp::RemoteDelegator;

#[derive(Clone, clap::Args)]
pub struct RemoteArgs {
    /// Forward to a running `delegate serve` at this base URL (e.g. <https://delegate.example.com>)
    /// instead of embedding an orchestrator. Needs --token.
    #[arg(long, env = "DELEGATE_SERVER", value_name = "URL", requires = "token")]
    pub server: Option<String>,

    /// API token for --server (`delegate token create` on the server prints one). Prefer the
    /// environment variable: a flag is visible to other users in `ps`.
    #[arg(
        long,
        env = "DELEGATE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        requires = "server"
    )]
    pub token: Option<String>,
}

// Never print the token, even in a debug dump of the command line.
impl std::fmt::Debug for RemoteArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RemoteArgs {
    /// The remote client when `--server` was given; `None` for the embedded mode.
    pub fn delegator(&self) -> anyhow::Result<Option<RemoteDelegator>> {
        match (&self.server, &self.token) {
            (None, None) => Ok(None),
            (Some(server), Some(token)) => {
                delegate_server::net::install_crypto();
                Ok(Some(RemoteDelegator::new(server, token)?))
            }
            // clap's `requires` catches these first; kept for callers that build the args.
            (Some(_), None) => bail!("--server needs --token (or DELEGATE_TOKEN)"),
            (None, Some(_)) => bail!("--token needs --server (or DELEGATE_SERVER)"),
        }
    }
}

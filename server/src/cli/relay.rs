//! `delegate sandbox-relay`: the first process inside a bubblewrap sandbox. It binds the relays
//! (the proxy's unix socket as 127.0.0.1:4000; for warm sandboxes opencode serve's port as a unix
//! socket), runs the command with inherited stdio, and exits with its exit code.

use std::process::ExitCode;

use delegate_server::relay::{self, Forward, Listener};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// LISTEN=TARGET, each tcp:HOST:PORT or unix:PATH. Repeatable.
    #[arg(long = "forward", value_name = "LISTEN=TARGET")]
    forwards: Vec<Forward>,
    /// The command to run once the relays listen.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn main(args: &RelayArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        for f in &args.forwards {
            let listener = Listener::bind(&f.listen)
                .await
                .map_err(|e| anyhow::anyhow!("relay: bind {:?}: {e}", f.listen))?;
            tokio::spawn(relay::serve(listener, f.target.clone(), stop.clone()));
        }
        let (program, rest) = args
            .command
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("relay: no command"))?;
        let status = tokio::process::Command::new(program)
            .args(rest)
            .status()
            .await
            .map_err(|e| anyhow::anyhow!("relay: cannot run {program}: {e}"))?;
        stop.cancel();
        Ok(ExitCode::from(
            status.code().unwrap_or(128).clamp(0, 255) as u8
        ))
    })
}

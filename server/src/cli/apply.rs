//! `delegate apply RUN_ID [--worktree]`: write a finished run's change into the repository it
//! started from, on this machine: as branch `delegate/<run>`, and with `--worktree` also into the
//! working tree when it applies cleanly. The run's change comes from the embedded store or, with
//! `--server`, from the server that ran it.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use delegate_mcp::delegator::{CLI_CLIENT, Caller, Delegator};
use delegate_mcp::tools::{ApplyChangesInput, ApplyTarget};
use delegate_server::delegation::EmbeddedDelegator;
use delegate_server::settings::Settings;

use super::remote::RemoteArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  delegate run --apply none \"refactor the parser\"   # prints the run id
  delegate apply run_...                            # branch delegate/<run>, nothing else touched
  delegate apply --worktree run_...                 # ... and the change in your working tree

It works on runs started on this machine from a repository (`delegate run` or `delegate mcp`):
the snapshot they started from is kept here. Exit code: 0 when applied as asked, 1 when the
working tree was left alone because the change conflicts, 2 on bad usage.")]
pub struct ApplyArgs {
    /// The run whose change to write (`run_...`).
    run_id: String,

    /// Also apply the change to the working tree, when it applies cleanly; otherwise nothing in
    /// the working tree changes and the conflicting paths are listed.
    #[arg(long)]
    worktree: bool,

    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn main(settings: Settings, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let mut caller = Caller {
        user_id: "remote".into(),
        token_id: None,
        client: Some(CLI_CLIENT.into()),
        workspace_id: None,
    };
    let (inner, orch): (Arc<dyn Delegator>, _) = match args.remote.delegator()? {
        Some(remote) => (Arc::new(remote), None),
        None => {
            let orch = delegate_server::app::embedded(settings.clone()).await?;
            caller.user_id = orch.local_user().id.clone();
            (Arc::new(EmbeddedDelegator::new(orch.clone())), Some(orch))
        }
    };
    let delegator = super::local_repositories(inner, &settings, None);
    let input = ApplyChangesInput {
        run_id: args.run_id.clone(),
        to: Some(if args.worktree {
            ApplyTarget::Worktree
        } else {
            ApplyTarget::Branch
        }),
    };
    let outcome = delegator.apply_changes(&caller, input).await;
    if let Some(orch) = orch {
        orch.shutdown().await;
    }
    let out = match outcome {
        Ok(out) => out,
        Err(e) => bail!("{e}"),
    };
    if args.json {
        super::out(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        eprintln!("{}", out.message);
        if let Some(branch) = &out.branch {
            eprintln!("see the change: git show {branch}");
        }
    }
    Ok(if args.worktree && !out.applied {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

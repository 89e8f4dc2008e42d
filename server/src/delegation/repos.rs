//! Repositories on behalf of a caller: what a fresh sandbox starts from (an uploaded snapshot,
//! nothing, or, later, an `https://` URL), snapshot uploads, and a finished run's change as a
//! patch or a bundle.
//!
//! The server never reads a path on the caller's machine: a local repository is snapshotted by
//! delegate's own client there (`delegate mcp`, `delegate run`, also with `--server`), which
//! uploads the bundle and passes its id as `snapshot`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use delegate_mcp::delegator::Caller;
use delegate_mcp::types::RepoBase;
use futures::Stream;

use super::{Action, Error, Result, Service};
use crate::ids::RunId;
use crate::orchestrator::{SnapshotFile, TreeCheck, bundle_path, patch_path};
use crate::store::{Sandbox, Workspace};

/// What a caller asked a sandbox to start from (the `repo`, `ref` and `snapshot` inputs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RepoInput<'a> {
    /// `repo`: `none`, an `https://` URL, or (only meaningful on the caller's machine) a path.
    pub repo: Option<&'a str>,
    /// `ref` of an `https://` repo.
    pub git_ref: Option<&'a str>,
    /// An uploaded snapshot's id; when given, `repo` only named it and is not read again.
    pub snapshot: Option<&'a str>,
}

/// A run's change as kept on the server.
#[derive(Debug, Clone)]
pub struct RunChange {
    /// The agent's commit.
    pub commit: String,
    /// The file holding it (a patch or a bundle).
    pub path: PathBuf,
    /// The file's size.
    pub bytes: u64,
}

impl Service {
    /// What a sandbox in `ws` starts from: the caller's uploaded snapshot, or nothing. `warm` is
    /// the sandbox a run borrows, which already has its files unless it is a local agent's.
    pub(super) async fn starting_point(
        &self,
        caller: &Caller,
        ws: &Workspace,
        warm: Option<&Sandbox>,
        input: RepoInput<'_>,
    ) -> Result<Option<Arc<SnapshotFile>>> {
        let repo = input.repo.map(str::trim).filter(|r| *r != "none");
        let wants_repo = input.snapshot.is_some() || repo.is_some();
        // A local agent takes a repository per run (in a work dir of its own); any other warm
        // sandbox already has its files.
        if warm.is_some_and(|s| wants_repo && !self.orch.takes_repo_per_run(s)) {
            return Err(Error::Invalid(
                "repo, snapshot: only for a fresh sandbox or a local agent; a warm sandbox \
                 already has its files (give the repository to create_sandbox instead)"
                    .into(),
            ));
        }
        if let Some(id) = input.snapshot {
            let taken = self.orch.snapshots().take(id, &caller.user_id, &ws.id)?;
            return Ok(Some(Arc::new(taken)));
        }
        match repo {
            None if input.git_ref.is_some() => {
                Err(Error::Invalid("ref: only with an https:// repo".into()))
            }
            None => Ok(None),
            // Plain http only reaches hosts an admin listed; `clone_url` decides.
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => self
                .clone_repository(caller, ws, url, input.git_ref)
                .await
                .map(Some),
            Some(other) => Err(Error::Repo {
                kind: "not_a_repo",
                message: format!(
                    "repo {other:?}: a local path needs delegate on the caller's machine, which \
                     snapshots the repository there (`delegate mcp`, or `delegate mcp --server \
                     URL` for this server); over HTTP, give an https:// git URL or \"none\""
                ),
            }),
        }
    }

    /// Clones an `https://` repository outside any sandbox into a snapshot for one sandbox.
    /// The clone happens in a scratch dir next to the uploads; its bundle is then registered and
    /// taken like an upload, so every backend seeds it the same way.
    async fn clone_repository(
        &self,
        caller: &Caller,
        ws: &Workspace,
        url: &str,
        git_ref: Option<&str>,
    ) -> Result<Arc<SnapshotFile>> {
        let settings = self.orch.settings();
        let snapshots = self.orch.snapshots();
        let credential = match super::clone::credential_host(url) {
            Some(host) => self.orch.git_credential(ws, &host).await?,
            None => None,
        };
        let policy = super::clone::ClonePolicy::from_settings(settings).with_credential(credential);
        let snapshot = super::clone::clone_url(
            url,
            git_ref,
            settings.repo_limits(),
            &snapshots.dir().join("clones"),
            &policy,
        )
        .await?;
        let (id, _) = snapshots
            .register(
                &caller.user_id,
                &ws.id,
                RepoBase::from(&snapshot.base),
                &snapshot.bundle(),
                settings.repo_limits(),
                TreeCheck::Measured,
            )
            .await?;
        // The bundle has moved out; dropping the snapshot removes its scratch dir (blocking I/O).
        tokio::task::spawn_blocking(move || drop(snapshot));
        Ok(Arc::new(snapshots.take(&id, &caller.user_id, &ws.id)?))
    }

    /// Receives a snapshot upload for the caller in `workspace` (Write needed): streamed to disk,
    /// capped at `DELEGATE_MAX_REPO_BYTES`, checked as a git bundle whose tip holds at most
    /// `DELEGATE_MAX_REPO_FILES` files and `DELEGATE_MAX_REPO_BYTES` of content. Returns its id
    /// and size.
    pub async fn receive_snapshot<S, E>(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        base: RepoBase,
        body: S,
    ) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let ws = self.authorize(caller, workspace, Action::Write).await?;
        let limits = self.orch.settings().repo_limits();
        self.orch
            .snapshots()
            .receive(&caller.user_id, &ws.id, base, body, limits)
            .await
    }

    /// [`Self::receive_snapshot`] for a bundle file on this machine (embedded mode): linked or
    /// copied, never moved, so the caller's file stays theirs.
    pub async fn snapshot_from_file(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        base: RepoBase,
        bundle: &Path,
    ) -> Result<String> {
        let ws = self.authorize(caller, workspace, Action::Write).await?;
        // The caller's own client in this process made and measured it with these limits.
        let limits = self.orch.settings().repo_limits();
        let (id, _) = self
            .orch
            .snapshots()
            .register_copy(
                &caller.user_id,
                &ws.id,
                base,
                bundle,
                limits,
                TreeCheck::Measured,
            )
            .await?;
        Ok(id)
    }

    /// A run's whole patch (Read needed); not found while it has no change.
    pub async fn run_patch(&self, caller: &Caller, id: &RunId) -> Result<RunChange> {
        self.run_change(caller, id, patch_path).await
    }

    /// A run's bundle (Read needed); not found when it has no change or its sandbox did not start
    /// from a snapshot.
    pub async fn run_bundle(&self, caller: &Caller, id: &RunId) -> Result<RunChange> {
        self.run_change(caller, id, bundle_path).await
    }

    async fn run_change(
        &self,
        caller: &Caller,
        id: &RunId,
        file: fn(&Path, &str) -> PathBuf,
    ) -> Result<RunChange> {
        let run = self.run(caller, id, Action::Read).await?;
        let none = || Error::NotFound(format!("a change of run {:?}", run.id));
        let commit = run.outcome.commit.clone().ok_or_else(none)?;
        let path = file(&self.orch.settings().data_dir, &run.id);
        // Not following a link: only delegate writes here, but a file is all it serves.
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|_| none())?;
        if !meta.is_file() {
            return Err(none());
        }
        Ok(RunChange {
            commit,
            path,
            bytes: meta.len(),
        })
    }
}

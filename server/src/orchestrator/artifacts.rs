//! Each run's change, kept after its sandbox is gone: under `<data_dir>/runs/<run_id>/`,
//! `change.patch` (the whole binary-safe patch, `git apply` takes it) and, for a sandbox that
//! started from a repository snapshot, `change.bundle` (every commit since the snapshot, up to
//! the run's, as ref `refs/delegate/export`: a caller holding the snapshot fetches it and gets
//! the agent's commits, earlier runs' in a warm sandbox included).
//!
//! Both are written from delegate's own change repository (never the sandbox's), under a
//! temporary name and renamed into place, so a reader sees a whole file or none.

use std::path::{Path, PathBuf};

use delegate_repo::{ChangeRepo, RepoError};

use crate::sandbox::Changes;
use crate::sandbox::workdir::MAX_CHANGE_BYTES;

/// The file name of a run's whole patch.
const PATCH: &str = "change.patch";
/// The file name of a run's bundle.
const BUNDLE: &str = "change.bundle";

/// Where a run's change is kept.
pub fn run_dir(data_dir: &Path, run_id: &str) -> PathBuf {
    data_dir.join("runs").join(run_id)
}

/// A run's whole patch, when it was kept.
pub fn patch_path(data_dir: &Path, run_id: &str) -> PathBuf {
    run_dir(data_dir, run_id).join(PATCH)
}

/// A run's bundle, when it was kept (only for sandboxes that started from a snapshot).
pub fn bundle_path(data_dir: &Path, run_id: &str) -> PathBuf {
    run_dir(data_dir, run_id).join(BUNDLE)
}

/// Writes the patch of `changes` and, when the sandbox came from a snapshot, its bundle.
pub(super) async fn keep(
    data_dir: &Path,
    run_id: &str,
    changes: &Changes,
) -> Result<(), RepoError> {
    let dir = run_dir(data_dir, run_id);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| RepoError::Io(format!("{}: {e}", dir.display())))?;
    let repo = ChangeRepo::open(&changes.repo);
    let patch = dir.join(format!("{PATCH}.tmp"));
    repo.write_patch(&changes.base, &changes.commit, &patch, MAX_CHANGE_BYTES)
        .await?;
    publish(&patch, &dir.join(PATCH)).await?;
    if let Some(origin) = &changes.origin {
        let bundle = dir.join(format!("{BUNDLE}.tmp"));
        let made = repo.bundle(origin, &changes.commit, &bundle).await;
        if let Err(e) = made {
            let _ = tokio::fs::remove_file(&bundle).await;
            return Err(e);
        }
        publish(&bundle, &dir.join(BUNDLE)).await?;
    }
    Ok(())
}

async fn publish(tmp: &Path, to: &Path) -> Result<(), RepoError> {
    if let Err(e) = tokio::fs::rename(tmp, to).await {
        let _ = tokio::fs::remove_file(tmp).await;
        return Err(RepoError::Io(format!("{}: {e}", to.display())));
    }
    Ok(())
}

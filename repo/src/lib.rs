//! How a caller's repository travels through delegate, in three steps:
//!
//! 1. [`snapshot`]: on the caller's machine, the work tree as it is now (uncommitted changes and
//!    untracked files included) becomes a git bundle of at most two commits;
//! 2. [`changes`]: on the server, the change a sandbox hands back is read as hostile input into
//!    a repository only delegate writes, and described (files, line counts, patch, preview);
//! 3. [`apply`](mod@apply): on the caller's machine again, the change becomes a branch, and,
//!    when asked, lands in the working tree.
//!
//! Every git call goes through [`git::Git`], which runs git without global config, hooks or
//! external drivers.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod apply;
pub mod changes;
pub mod git;
pub mod snapshot;

pub use apply::{Applied, ApplyTo, BranchName, apply};
pub use changes::{COMMIT_SCRIPT, ChangeRepo, FileChange, PreviewCut, RESULT_REF};
pub use snapshot::{Base, Limits, Snapshot, TreeSize, measure_tree};

/// Why a repository operation failed; [`RepoError::kind`] is the error kind a result reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// The path is not in a git work tree.
    #[error("{0}")]
    NotARepo(String),
    /// A merge, rebase or similar is half done.
    #[error("{0}")]
    Busy(String),
    /// Over a size or file-count limit.
    #[error("{0}")]
    TooLarge(String),
    /// What came back is not a well-formed change on top of what went in.
    #[error("{0}")]
    BadBundle(String),
    /// git itself failed.
    #[error("{0}")]
    Git(String),
    /// Reading or writing a file around git failed (copying a bundle, writing a patch).
    #[error("{0}")]
    Io(String),
}

impl RepoError {
    /// The error kind a run result or a tool error names.
    pub fn kind(&self) -> &'static str {
        match self {
            RepoError::NotARepo(_) => "not_a_repo",
            RepoError::Busy(_) => "repo_busy",
            RepoError::TooLarge(_) => "repo_too_large",
            RepoError::BadBundle(_) => "bad_change",
            RepoError::Git(_) | RepoError::Io(_) => "repo_failed",
        }
    }
}

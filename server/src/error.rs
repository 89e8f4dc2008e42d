//! The one error of delegate's domain: what the orchestrator and the service layer both return.
//! Each surface maps it to its own shape once (`DelegateError` here for the MCP tools, `ApiError`
//! in `crate::api::error` for REST); the variants say what went wrong, the surfaces decide how it
//! is told.

use delegate_mcp::delegator::DelegateError;
use delegate_mcp::types::SandboxStatus;

use crate::sandbox::SandboxError;
use crate::state::IllegalTransition;
use crate::store::StoreError;

/// What a caller learns about an internal failure; the cause goes to the log.
pub const INTERNAL_MESSAGE: &str = "delegate hit an internal error; the server log has details";

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The caller's role does not allow this (guests only read).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown, or in a workspace the caller is not a member of (the two look the same).
    #[error("{0} not found")]
    NotFound(String),
    /// The sandbox already has an operation going (a run, a pause, a resume).
    #[error("sandbox {0} is busy with another run; wait for it or use another sandbox")]
    Busy(String),
    /// The sandbox is not in the state this needs.
    #[error("sandbox {id} is {status}, not running")]
    NotRunning {
        /// The sandbox's id.
        id: String,
        /// The state it is in instead.
        status: SandboxStatus,
    },
    /// Another reason the sandbox cannot take this now; the message is complete.
    #[error("{0}")]
    Conflict(String),
    /// A quota or concurrency limit.
    #[error("{0}")]
    Limit(String),
    /// A workspace's budget for the day is spent; the message says when it resets.
    #[error("{0}")]
    BudgetExceeded(String),
    /// A repository could not be used or changed. `kind` is the error kind callers branch on:
    /// `not_a_repo`, `repo_busy`, `repo_too_large`, `repo_unreachable`, `bad_change`, `conflict`
    /// or `repo_failed`.
    #[error("{message}")]
    Repo {
        /// The error kind.
        kind: &'static str,
        /// What went wrong and what to do, in words.
        message: String,
    },
    /// The sandbox backend failed.
    #[error(transparent)]
    Sandbox(SandboxError),
    /// Internal: a status change the state machine forbids. Logged when a surface reports it.
    #[error(transparent)]
    Transition(#[from] IllegalTransition),
    /// Internal: the store failed. Logged when a surface reports it.
    #[error("storage: {0}")]
    Store(StoreError),
    /// Internal, logged once where it happened; the message is [`INTERNAL_MESSAGE`].
    #[error("{0}")]
    Internal(String),
}

/// Results of the orchestrator and the service layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::ids::MalformedId> for Error {
    /// A malformed id is not found, exactly as an unknown one.
    fn from(e: crate::ids::MalformedId) -> Self {
        Error::NotFound(e.what())
    }
}

/// Logs the cause once; the caller gets [`INTERNAL_MESSAGE`].
pub fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(logged(e))
}

/// Logs an internal cause where a surface reports it; returns [`INTERNAL_MESSAGE`].
pub fn logged(e: impl std::fmt::Display) -> String {
    tracing::error!(error = %e, "internal error");
    INTERNAL_MESSAGE.into()
}

impl From<SandboxError> for Error {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::BadInput(msg) => Error::Invalid(msg),
            other => Error::Sandbox(other),
        }
    }
}

impl From<delegate_repo::RepoError> for Error {
    fn from(e: delegate_repo::RepoError) -> Self {
        Error::Repo {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Error::NotFound(what.to_string()),
            other => Error::Store(other),
        }
    }
}

/// The MCP tools' error: forbidden reads as invalid, every "not now" as unavailable.
impl From<Error> for DelegateError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) | Error::Forbidden(m) => DelegateError::Invalid(m),
            Error::NotFound(m) => DelegateError::NotFound(m),
            e @ (Error::Busy(_) | Error::NotRunning { .. }) => {
                DelegateError::Unavailable(e.to_string())
            }
            Error::Conflict(m) => DelegateError::Unavailable(m),
            Error::Sandbox(e) => DelegateError::Unavailable(format!("the sandbox failed: {e}")),
            Error::Limit(m) => DelegateError::Limit(m),
            Error::BudgetExceeded(m) => DelegateError::BudgetExceeded(m),
            Error::Repo { kind, message } => DelegateError::Repo {
                kind: kind.to_string(),
                message,
            },
            Error::Internal(m) => DelegateError::Internal(m),
            e @ (Error::Store(_) | Error::Transition(_)) => DelegateError::Internal(logged(e)),
        }
    }
}

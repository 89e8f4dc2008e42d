//! Wire types of `delegate serve`'s REST API that both the server and the remote client use (the
//! tool inputs and outputs in [`crate::tools`] double as request and response bodies).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{RunResult, RunStatus};

/// `GET /api/runs` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunResult>,
}

/// The error envelope every failure uses: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorEnvelope {
    /// What failed.
    pub error: ErrorBody,
}

/// The error inside the envelope: a code to branch on and a message for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// `invalid_input`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `limit`,
    /// `payload_too_large`, `unavailable`, `method_not_allowed`, `internal`.
    pub code: String,
    /// What went wrong, in words.
    #[serde(default)]
    pub message: String,
}

/// The `data` of the last SSE event of a run's event stream (`event: end`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StreamEnd {
    /// How the run ended.
    pub status: RunStatus,
}

/// `POST /api/snapshots` reply: a snapshot bundle the server now holds for one
/// `run_in_sandbox` or `create_sandbox` (pass `snapshot_id` as their `snapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotUploaded {
    /// Pass as `snapshot`; it is used once and expires after an hour.
    pub snapshot_id: String,
    /// Bytes received.
    pub bytes: u64,
}

//! The REST bodies of agent registration, shared by the server's routes and the agent client.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest a registration code may be valid: one day.
pub const MAX_CODE_TTL_SECONDS: u64 = 86_400;

/// `POST /api/workspaces/{ws}/agent-codes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCodeInput {
    /// How long the code stays valid (default 600, at most 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
}

/// A new registration code, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CreatedCode {
    /// Give it to `delegate agent connect --code`; it works once.
    pub code: String,
    /// The workspace the registered sandbox will belong to.
    pub workspace_id: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
    /// The command to run on the machine that joins.
    pub command: String,
}

/// `POST /api/agents/register`: the code is the credential.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterInput {
    /// The one-time code from `POST /api/workspaces/{ws}/agent-codes`.
    pub code: String,
    /// The sandbox's name (1 to 200 characters).
    pub name: String,
}

/// A registered local sandbox and its tunnel token, shown once.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct Registered {
    /// The new local sandbox; the tunnel URL names it.
    pub sandbox_id: String,
    /// The workspace the code was made for.
    pub workspace_id: String,
    /// `dlt_...`: send it as `Authorization: Bearer` to `/api/tunnel/{sandbox_id}`.
    pub token: String,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("sandbox_id", &self.sandbox_id)
            .field("workspace_id", &self.workspace_id)
            .field("token", &"[redacted]")
            .finish()
    }
}

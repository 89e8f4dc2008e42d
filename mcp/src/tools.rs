//! Inputs and outputs of the MCP tools (names and fields are a contract: docs/architecture.md, "Wire contracts"). The doc
//! comments become the JSON Schema descriptions a calling model reads, so they are written for it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{Detail, Event, RunStatus, SandboxStatus};

/// The longest a run may take (`timeout_seconds`): one day. The server enforces it.
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;

/// Input of `run_in_sandbox`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInSandboxInput {
    /// The whole task for the delegated agent, in plain words, as you would brief a colleague: what
    /// to do, where, and how to know it is done. At most 1 MiB; put large inputs in `files`.
    pub task: String,
    /// Run in this warm sandbox (from `create_sandbox`), keeping its files and history. Omit to run
    /// in a fresh sandbox that is destroyed after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Workspace to run in (slug or id). Omit for your default workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Files to write into the fresh sandbox's work dir before the run: relative path -> text
    /// content. Only for fresh sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
    /// Model as provider/model, e.g. `anthropic/claude-sonnet-4-5`. Omit for the server default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// opencode agent to use, e.g. `build` (default) or `plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Give up after this many seconds (default 900, at most 86400). The run then ends `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// In a warm sandbox, continue its previous opencode session (the agent remembers the earlier
    /// conversation) instead of starting a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_session: Option<bool>,
    /// Stop the run once its model calls cost this many US dollars (list prices) [the
    /// workspace's or server's default, if any]. The call that crosses it completes; the next is
    /// refused and the run ends `failed` with `budget_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Wait for the run to end (default true). With false the call returns at once with
    /// `status: "running"`; follow the run with `stream_session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// What the sandbox starts from. Where delegate runs on your machine (`delegate mcp`, with or
    /// without `--server`): a path to a git work tree, `.` for your project root (the client's
    /// root, else `CLAUDE_PROJECT_DIR`, else the current directory). Omitted: the project root
    /// when it is a git work tree, else an empty sandbox. `none`: an empty sandbox. The sandbox
    /// gets the work tree as it is now, uncommitted and untracked (not ignored) files included;
    /// your repository is never changed unless `apply` says so. Over HTTP: an `https://` git URL.
    /// With `sandbox_id` only when given, and only a local agent's sandbox takes it (in a fresh
    /// work dir of its own for this run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Branch, tag or commit of an `https://` `repo` [its default branch].
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// What happens to your repository when the run ends: `branch` (default) writes the change as
    /// branch `delegate/<run>` without touching your working tree, index or current branch;
    /// `worktree` also applies it to the working tree when it applies cleanly; `none` leaves the
    /// repository alone (apply later with `apply_changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplyMode>,
    /// Set by delegate's own clients, not by models: a snapshot uploaded with
    /// `POST /api/snapshots`, consumed by this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub snapshot: Option<String>,
    /// Network access for the sandbox: the name of an egress policy the workspace allows
    /// [the workspace's default, usually `none`: no network at all]. With a policy, HTTP and
    /// HTTPS clients in the sandbox (npm, pip, cargo, git, curl) go through delegate's egress
    /// proxy, which allows only the policy's hosts; a refused connection gets HTTP 403 with a
    /// body naming the policy and host. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Environment variables for the sandbox: NAME -> value, not secret (use `secrets` for
    /// credentials). Names are identifiers (`[A-Za-z_][A-Za-z0-9_]*`) other than the ones
    /// delegate sets (`HOME`, `PATH`, the proxy variables, `DELEGATE_*`, `OPENCODE_*`,
    /// `ANTHROPIC_*`); at most 64 of them, 64 KiB in all. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Names of workspace secrets (set by its maintainers) to put in the sandbox's environment
    /// under the same names. Their values are never shown: anything the sandbox prints of them
    /// reads `[secret NAME]`. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    /// A shell script (`sh`, at most 64 KiB) run in the work dir before the task, with the
    /// sandbox's environment and network, e.g. `npm ci`. Its output becomes `setup` events; a
    /// non-zero exit ends the run `failed` (`setup_failed`) with the output's tail. A warm
    /// sandbox runs it once, when created. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// Container image of the sandbox: one of the images the server's admin lists
    /// (`DELEGATE_SANDBOX_IMAGES`) [the default sandbox image]. Only on container backends, and
    /// only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Run the same task this many times (1 to 8, default 1), each in a fresh sandbox of its own,
    /// in parallel within the workspace's run quota (attempts past it wait in line). The result
    /// is then a parent: `run_id` is the parent's (`get_run`, `cancel_run` and `stream_session`
    /// take it; cancelling it cancels every attempt) and `attempts` lists each attempt
    /// compactly (status, files changed, lines added and removed, cost, duration, branch or
    /// patch) so you can compare them and apply one with `apply_changes` and its `run_id`.
    /// Only for fresh sandboxes (not with `sandbox_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub attempts: Option<u64>,
    /// How much of the result to return: `normal` (default; at most about 20,000 characters:
    /// status, the final message's first and last 4,000 characters, changed files with counts,
    /// the diff of whole files smallest first, then per-file summaries in `omitted`), `summary`
    /// (about 4,000 characters) or `full` (everything; can be hundreds of KB). What is left out
    /// stays available: the whole patch as resource delegate://runs/{run_id}/patch, every event
    /// with `stream_session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

/// Input of `create_sandbox`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxInput {
    /// Workspace to create it in (slug or id). Omit for your default workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// A name people will recognise in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Files to write into the work dir: relative path -> text content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
    /// Pause the sandbox after this many seconds without a run (default: the server's
    /// IDLE_TIMEOUT, 30 minutes). A paused sandbox keeps its files and wakes up for the next
    /// `run_in_sandbox`; it is never paused while a run is in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    /// What the sandbox starts from, as for `run_in_sandbox`: a git work tree on your machine
    /// (omitted: your project root when it is one; `none`: empty), or over HTTP an `https://`
    /// git URL. Each run's change then sits on top of the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Branch, tag or commit of an `https://` `repo` [its default branch].
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Set by delegate's own clients, not by models: a snapshot uploaded with
    /// `POST /api/snapshots`, consumed by this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub snapshot: Option<String>,
    /// Network access for the sandbox: the name of an egress policy the workspace allows
    /// [the workspace's default, usually `none`: no network at all]. With a policy, HTTP and
    /// HTTPS clients in the sandbox (npm, pip, cargo, git, curl) go through delegate's egress
    /// proxy, which allows only the policy's hosts; a refused connection gets HTTP 403 with a
    /// body naming the policy and host. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Environment variables for the sandbox: NAME -> value, not secret (use `secrets` for
    /// credentials). Names are identifiers (`[A-Za-z_][A-Za-z0-9_]*`) other than the ones
    /// delegate sets (`HOME`, `PATH`, the proxy variables, `DELEGATE_*`, `OPENCODE_*`,
    /// `ANTHROPIC_*`); at most 64 of them, 64 KiB in all. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Names of workspace secrets (set by its maintainers) to put in the sandbox's environment
    /// under the same names. Their values are never shown: anything the sandbox prints of them
    /// reads `[secret NAME]`. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    /// A shell script (`sh`, at most 64 KiB) run in the work dir before the task, with the
    /// sandbox's environment and network, e.g. `npm ci`. Its output becomes `setup` events; a
    /// non-zero exit ends the run `failed` (`setup_failed`) with the output's tail. A warm
    /// sandbox runs it once, when created. Only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// Container image of the sandbox: one of the images the server's admin lists
    /// (`DELEGATE_SANDBOX_IMAGES`) [the default sandbox image]. Only on container backends, and
    /// only for a fresh sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// What happens to the caller's repository when a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMode {
    /// Write branch `delegate/<run>`; never touch the working tree, index or current branch.
    Branch,
    /// Also apply the change to the working tree when it applies cleanly.
    Worktree,
    /// Leave the repository alone.
    None,
}

/// Where `apply_changes` puts a run's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTarget {
    /// Write branch `delegate/<run>` only.
    Branch,
    /// Write the branch and apply the change to the working tree when it applies cleanly.
    Worktree,
}

/// Input of `apply_changes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyChangesInput {
    /// The run whose change to apply (it must have started from your repository).
    pub run_id: String,
    /// `branch` (default): write `delegate/<run>`, touching nothing else; `worktree`: also apply
    /// the change to your working tree when it applies cleanly (else nothing changes and
    /// `conflicts` names the paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ApplyTarget>,
}

/// Output of `apply_changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApplyChangesOutput {
    /// The run applied.
    pub run_id: String,
    /// The branch written in your repository, e.g. `delegate/1a2b3c4d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The branch's tip: the agent's commit in your repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether the change is now in your working tree.
    pub applied: bool,
    /// Paths that kept the working tree apply from happening (nothing was changed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// What happened, in words.
    pub message: String,
}

/// Input of `stream_session`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSessionInput {
    /// The run to follow. Give this or `sandbox_id`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Follow the latest run of this sandbox instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Return events after this sequence number: 0 (default) from the start, or the previous
    /// call's `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// How long to wait for new events when there are none yet (default 20, at most 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u64>,
    /// How much of each event to return: `normal` (default; at most 200 events and about
    /// 20,000 characters a reply, strings in `data` cut to 1,000 characters, no `raw`),
    /// `summary` (at most 50 events, about 4,000 characters, strings cut to 200) or `full`
    /// (up to 500 events with opencode's original JSON in `raw`). A reply cut short has
    /// `done: false`; call again from `next_cursor` for the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

/// `stream_session`'s long poll when `wait_seconds` is not given.
pub const DEFAULT_WAIT_SECONDS: u64 = 20;
/// The longest `stream_session` long poll; embedded and remote modes cap `wait_seconds` at it.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// Input of `list_sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSandboxesInput {
    /// Workspace to list (slug or id). Omit for your default workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// Input of `delete_sandbox`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteSandboxInput {
    /// The sandbox to delete, with its files. A run in it is cancelled first.
    pub sandbox_id: String,
}

/// Input of `cancel_run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRunInput {
    /// The run to cancel. It ends `cancelled` once its processes are gone.
    pub run_id: String,
}

/// A sandbox as the tools report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxInfo {
    /// Pass as `sandbox_id` to `run_in_sandbox`, `stream_session` or `delete_sandbox`.
    pub sandbox_id: String,
    /// The name given at creation; its id when none was given.
    pub name: String,
    /// Whether it can take a run now; a `paused` sandbox wakes up for the next run.
    pub status: SandboxStatus,
    /// `process`, `docker`, `kubernetes` or `local`.
    pub backend: String,
    /// `ephemeral` (one run) or `warm`.
    pub kind: String,
    /// Why the sandbox is `failed`, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Where people can watch it in a browser, when the server has a public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_url: Option<String>,
    /// opencode's own web UI for this sandbox, when reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opencode_url: Option<String>,
    /// The repository it started from, when it started from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::types::RepoBase>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// Output of `create_sandbox` (`sandbox_id, status, backend, watch_url, opencode_url`).
pub type CreateSandboxOutput = SandboxInfo;

/// Output of `list_sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListSandboxesOutput {
    /// Newest first; deleted sandboxes are not listed.
    pub sandboxes: Vec<SandboxInfo>,
}

/// Output of `stream_session`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StreamSessionOutput {
    /// The run followed (the sandbox's latest run when `sandbox_id` was given).
    pub run_id: String,
    /// The run's status now.
    pub status: RunStatus,
    /// New events in order: each has `seq`, `ts` (ms), `type` and normalized `data`.
    pub events: Vec<Event>,
    /// Pass as `after` in the next call.
    pub next_cursor: u64,
    /// True when the run has ended and every event was returned: stop calling.
    pub done: bool,
}

/// Output of `delete_sandbox`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeleteSandboxOutput {
    /// The sandbox deleted.
    pub sandbox_id: String,
    /// Its status after the delete: `deleted` when it is gone.
    pub status: SandboxStatus,
}

/// Output of `cancel_run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelRunOutput {
    /// The run cancelled.
    pub run_id: String,
    /// The run's status after the cancel took effect.
    pub status: RunStatus,
}

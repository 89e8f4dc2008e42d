//! Wire types shared by the server, the MCP tools, remote clients and tests.
//!
//! Field names here are a contract (docs/architecture.md, "Wire contracts"): renaming one
//! breaks the build of every user instead of a user at run time.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a run is in its life. Transitions are checked by the server's run state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, not started yet.
    Queued,
    /// The sandbox and the agent are being prepared.
    Starting,
    /// The agent is working on the task.
    Running,
    /// The agent finished the task.
    Succeeded,
    /// The run ended with an error; `error` says why.
    Failed,
    /// Somebody cancelled the run.
    Cancelled,
    /// The run went past its `timeout_seconds`.
    TimedOut,
    /// The server restarted while the run was active and could not reattach to it.
    Lost,
}

impl RunStatus {
    /// Every status, for exhaustive tables (metrics, transition checks).
    pub const ALL: [RunStatus; 8] = [
        Self::Queued,
        Self::Starting,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
        Self::Lost,
    ];

    /// The wire name (`timed_out`), as serde writes it and the store keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
        }
    }

    /// The status named by [`as_str`](Self::as_str)'s wire name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A terminal run never changes status again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Starting | Self::Running)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// Being set up; not ready for runs yet.
    Creating,
    /// Up and ready for runs.
    Running,
    /// Being paused; its files are kept.
    Pausing,
    /// Asleep with its files kept; the next run wakes it up.
    Paused,
    /// Waking up from `paused`.
    Resuming,
    /// A local agent's tunnel is down.
    Offline,
    /// Something went wrong; the sandbox keeps its reason and is never silently deleted.
    Failed,
    /// Being deleted, with its files.
    Deleting,
    /// Gone; kept as a row so runs still point at something.
    Deleted,
}

impl SandboxStatus {
    /// Every status, for exhaustive tables (metrics).
    pub const ALL: [SandboxStatus; 9] = [
        Self::Creating,
        Self::Running,
        Self::Pausing,
        Self::Paused,
        Self::Resuming,
        Self::Offline,
        Self::Failed,
        Self::Deleting,
        Self::Deleted,
    ];

    /// The wire name (`paused`), as serde writes it and the store keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
            Self::Offline => "offline",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
        }
    }

    /// The status named by [`as_str`](Self::as_str)'s wire name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a file changed during a run, as git sees it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The file did not exist before the run.
    Added,
    /// The file exists before and after the run, with different content.
    Modified,
    /// The run removed the file.
    Deleted,
}

/// One file the run changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChangedFile {
    /// Path relative to the sandbox's work dir.
    pub path: String,
    /// Whether the file was added, modified or deleted.
    pub change: ChangeKind,
    /// Lines added (0 for a binary file).
    #[serde(default)]
    pub additions: u64,
    /// Lines removed (0 for a binary file).
    #[serde(default)]
    pub deletions: u64,
    /// A binary file: named here, its bytes only in the whole patch.
    #[serde(default)]
    pub binary: bool,
}

impl ChangedFile {
    /// A change with no line counts (where nothing counted them).
    pub fn new(path: impl Into<String>, change: ChangeKind) -> ChangedFile {
        ChangedFile {
            path: path.into(),
            change,
            additions: 0,
            deletions: 0,
            binary: false,
        }
    }
}

/// Token usage and cost of a run, summed over its model calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Prompt tokens the model read, outside the prompt cache.
    pub input_tokens: u64,
    /// Tokens the model wrote.
    pub output_tokens: u64,
    /// Prompt tokens served from the prompt cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the prompt cache.
    pub cache_write_tokens: u64,
    /// What the model calls cost, in US dollars.
    pub cost_usd: f64,
}

impl Usage {
    /// Adds another call's (or step's) usage to this total.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.cost_usd += other.cost_usd;
    }

    /// Every kind of token together; zero means no model call was counted.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}

/// Why a run did not succeed, in words a calling agent can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The LLM upstream refused delegate's credential (401/403).
    UpstreamAuth,
    /// The LLM upstream stayed overloaded or failing (429/5xx/529) after retries.
    UpstreamUnavailable,
    /// Any other error the model API reported.
    UpstreamError,
    /// The run went past its `timeout_seconds`.
    Timeout,
    /// Somebody cancelled the run.
    Cancelled,
    /// The sandbox could not be created or started.
    SandboxFailed,
    /// The sandbox ran out of memory.
    Oom,
    /// The sandbox image is missing (container backends).
    ImageMissing,
    /// opencode exited non-zero or reported an error of its own.
    AgentFailed,
    /// The `setup` script exited non-zero or ran out of time; the message ends with its
    /// output's tail.
    SetupFailed,
    /// The change the agent handed back is not a well-formed commit on top of the repository it
    /// was given, or is over the size limit; nothing of it was kept.
    BadChange,
    /// The server restarted and could not reattach to the run.
    Lost,
    /// The run's `max_cost_usd`, or its workspace's budget for the day, was spent: the model
    /// proxy refused the next call and the run was stopped.
    BudgetExceeded,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorKind {
    /// The wire name (`upstream_auth`), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamAuth => "upstream_auth",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::SandboxFailed => "sandbox_failed",
            Self::Oom => "oom",
            Self::ImageMissing => "image_missing",
            Self::AgentFailed => "agent_failed",
            Self::SetupFailed => "setup_failed",
            Self::BadChange => "bad_change",
            Self::Lost => "lost",
            Self::BudgetExceeded => "budget_exceeded",
            Self::Internal => "internal",
        }
    }
}

/// Why a run did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunError {
    /// What kind of failure, to decide what to do next (retry, fix credentials, give more time).
    pub kind: ErrorKind,
    /// What went wrong, in words.
    pub message: String,
}

/// The result of `run_in_sandbox` (and `delegate run --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunResult {
    /// Pass to `stream_session` or `cancel_run`.
    pub run_id: String,
    /// The sandbox the run used; pass it as `sandbox_id` to run again there (warm sandboxes only:
    /// a fresh sandbox is destroyed after its run).
    pub sandbox_id: String,
    /// `queued` (waiting for a free run slot, see `queue_position`) or `running` (only with
    /// `wait: false`), or how the run ended.
    pub status: RunStatus,
    /// The last text the agent wrote; empty while running or when it wrote none.
    pub final_message: String,
    /// Files the run added, modified or deleted in the work dir.
    pub changed_files: Vec<ChangedFile>,
    /// Unified diff of the run's changes, capped; see `diff_truncated`.
    pub diff: String,
    /// True when `diff` was cut short; read the files themselves for the rest.
    pub diff_truncated: bool,
    /// Tokens and cost of the run's model calls.
    pub usage: Usage,
    /// Wall time of the run so far, in milliseconds.
    pub duration_ms: u64,
    /// Events in the run's log; `stream_session` returns them.
    pub event_count: u64,
    /// While the run waits for a free slot (`status: "queued"`): its place in line, 1 for next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    /// Why the run did not succeed; absent when it succeeded or is still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// Where people can watch the run in a browser, when the server has a public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_url: Option<String>,
    /// The repository the sandbox started from, when it started from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<RepoBase>,
    /// The agent's commit: in your repository (on `branch`) once written there, else on the
    /// server (fetch it with `apply_changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The branch written into your repository, e.g. `delegate/1a2b3c4d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Whether the change was applied to your working tree (`apply: worktree`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// Paths that kept `apply: worktree` from applying (nothing was changed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// What happened to your repository at the end, in words: the branch written, why the
    /// working tree was left alone, or why nothing was written (the run's result stands either
    /// way; retry with `apply_changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_message: Option<String>,
    /// The whole binary-safe patch of the run's change (`git apply` takes it), over HTTP; MCP
    /// clients can also read `delegate://runs/{run_id}/patch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_url: Option<String>,
    /// Connections the sandbox made through delegate's egress proxy during the run; absent
    /// when its network policy is `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSummary>,
    /// The parent this run is an attempt of (`run_in_sandbox` with `attempts`): its id lists
    /// every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// On a parent of attempts (`run_in_sandbox` with `attempts: N`): each attempt, compactly, to
    /// compare them; apply the one you choose with `apply_changes` and its `run_id`. A parent
    /// has no sandbox, diff or files of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// What this result leaves out to stay within its `detail`'s size, and how to get it;
    /// absent when nothing was left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omitted>,
}

/// The most attempts one `run_in_sandbox` call may ask for.
pub const MAX_ATTEMPTS: u64 = 8;

/// One attempt of a best-of-N run, as its parent's result lists it: enough to compare them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    /// The attempt's own run: `get_run`, `stream_session`, `apply_changes` take it.
    pub run_id: String,
    /// The fresh sandbox it ran in.
    pub sandbox_id: String,
    /// How it ended, or `queued` / `running`.
    pub status: RunStatus,
    /// How many files it added, modified or deleted.
    pub files_changed: u64,
    /// Lines added over all its files.
    pub additions: u64,
    /// Lines removed over all its files.
    pub deletions: u64,
    /// What its model calls cost, in US dollars.
    pub cost_usd: f64,
    /// Its wall time so far, in milliseconds.
    pub duration_ms: u64,
    /// The start of its final message, cut short.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// Its commit, when it changed something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The branch written into your repository for it, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Its whole patch over HTTP, when the server has a public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_url: Option<String>,
    /// Its page in a browser, when the server has a public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_url: Option<String>,
    /// Why it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

/// How much of an attempt's final message its [`Attempt::summary`] keeps, in characters.
pub const ATTEMPT_SUMMARY_CHARS: usize = 200;

impl Attempt {
    /// The compact line of one attempt's full result.
    pub fn of(run: &RunResult) -> Attempt {
        let summary: String = run
            .final_message
            .trim()
            .chars()
            .take(ATTEMPT_SUMMARY_CHARS)
            .collect();
        Attempt {
            run_id: run.run_id.clone(),
            sandbox_id: run.sandbox_id.clone(),
            status: run.status,
            files_changed: run.changed_files.len() as u64,
            additions: run.changed_files.iter().map(|f| f.additions).sum(),
            deletions: run.changed_files.iter().map(|f| f.deletions).sum(),
            cost_usd: run.usage.cost_usd,
            duration_ms: run.duration_ms,
            summary,
            commit: run.commit.clone(),
            branch: run.branch.clone(),
            patch_url: run.patch_url.clone(),
            watch_url: run.watch_url.clone(),
            error: run.error.clone(),
        }
    }

    /// One line for people: `run_… succeeded: 3 files +10 -2, $0.0123, 4.2 s`.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} {}: {} files +{} -{}, ${:.4}, {:.1} s",
            self.run_id,
            self.status,
            self.files_changed,
            self.additions,
            self.deletions,
            self.cost_usd,
            self.duration_ms as f64 / 1000.0
        );
        if let Some(branch) = &self.branch {
            line.push_str(&format!(", branch {branch}"));
        } else if let Some(url) = &self.patch_url {
            line.push_str(&format!(", patch {url}"));
        }
        if let Some(error) = &self.error {
            line.push_str(&format!(" ({})", error.kind.as_str()));
        }
        line
    }
}

/// The status of a parent from its attempts': running while any runs (queued while all wait),
/// succeeded when any succeeded, else the status they all share, else cancelled when any was
/// cancelled, else failed.
pub fn parent_status(attempts: &[RunStatus]) -> RunStatus {
    if attempts.iter().any(|s| !s.is_terminal()) {
        return if attempts.iter().all(|s| *s == RunStatus::Queued) {
            RunStatus::Queued
        } else {
            RunStatus::Running
        };
    }
    if attempts.contains(&RunStatus::Succeeded) {
        return RunStatus::Succeeded;
    }
    match attempts.first() {
        Some(first) if attempts.iter().all(|s| s == first) => *first,
        _ if attempts.contains(&RunStatus::Cancelled) => RunStatus::Cancelled,
        _ => RunStatus::Failed,
    }
}

/// How much of a result a tool returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// At most about 4,000 characters: status, the final message's first and last 1,000
    /// characters, the first changed files, only small diffs.
    Summary,
    /// At most about 20,000 characters (the default): status, the final message's first and
    /// last 4,000 characters, changed files with their counts, the diff of whole files smallest
    /// first and then per-file summaries.
    #[default]
    Normal,
    /// Everything, however large (the diff is still capped by the server).
    Full,
}

impl Detail {
    /// The wire name (`normal`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Summary => "summary",
            Self::Normal => "normal",
            Self::Full => "full",
        }
    }
}

/// What a [`RunResult`] left out to fit its `detail`, and where the rest is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Omitted {
    /// The `detail` the result was cut to.
    pub detail: Detail,
    /// Characters cut from the middle of `final_message` (marked `[… N characters left out …]`).
    #[serde(default)]
    pub final_message_chars: u64,
    /// Changed files not listed in `changed_files` (the list keeps the first ones).
    #[serde(default)]
    pub changed_files: u64,
    /// Files whose diff is not in `diff`, or only its start (`partial`): per-file summaries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff_files: Vec<OmittedDiff>,
    /// Further files whose diff is left out, beyond those in `diff_files`.
    #[serde(default)]
    pub more_diff_files: u64,
    /// Conflicting paths not listed in `conflicts`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conflicts: u64,
    /// Where to get everything: the whole patch and the run's events.
    pub rest: String,
}

/// One file whose diff a budgeted result leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OmittedDiff {
    /// Path of the file, as in `changed_files`.
    pub path: String,
    /// Characters of its diff left out.
    pub diff_chars: u64,
    /// Lines it adds, and removes (0 when not known or binary).
    #[serde(default)]
    pub additions: u64,
    /// Lines it removes.
    #[serde(default)]
    pub deletions: u64,
    /// True when the start of its diff is at the end of `diff`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A run's traffic through the egress proxy (each connection is also an `egress` event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EgressSummary {
    /// Connections the policy let through.
    pub allowed: u64,
    /// Connections refused (host not in the policy, a forbidden address, a limit).
    pub denied: u64,
    /// Bytes both ways through allowed connections.
    pub bytes: u64,
}

impl From<&delegate_repo::Base> for RepoBase {
    fn from(base: &delegate_repo::Base) -> Self {
        RepoBase {
            repo: base.repo.clone(),
            commit: base.commit.clone(),
            branch: base.branch.clone(),
            dirty: base.dirty,
        }
    }
}

/// Where a sandbox's repository came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoBase {
    /// The work tree's root on the caller's machine, or the URL cloned.
    pub repo: String,
    /// The commit snapshotted (the caller's HEAD); absent in a repository with no commit yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The caller's branch, or the URL's ref, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Whether uncommitted changes or untracked files went along (as a second commit).
    pub dirty: bool,
}

/// One entry of a run's append-only event log.
///
/// `type` is one of the normalized kinds (`text`, `tool`, `step_start`, `step_finish`, `reasoning`,
/// `error`, `status`, `stderr`) or, for opencode events delegate does not interpret, the original type
/// prefixed by nothing: unknown events are kept, never dropped. `data` holds the normalized fields;
/// `raw` the original JSON when the event came from opencode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Position in the run's log, from 1; `stream_session`'s `after` counts in it.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// The event's kind: `text`, `tool`, `step_start`, `step_finish`, `reasoning`, `error`,
    /// `status`, `stderr`, `setup`, `egress`, `attempt` (on a parent of attempts: one attempt
    /// ended), or an opencode type delegate passes through as is.
    #[serde(rename = "type")]
    pub kind: String,
    /// The normalized fields of this kind of event (e.g. `text` for `text`; `tool`, `title` and
    /// `status` for `tool`).
    #[serde(default)]
    #[schemars(schema_with = "object_schema")]
    pub data: Value,
    /// The original opencode event, when the event came from opencode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "object_schema")]
    pub raw: Option<Value>,
}

impl Event {
    /// Whether the event is worth a progress notification: everything but bookkeeping
    /// (`step_start`, `stderr`). Embedded and remote modes both follow this rule.
    pub fn is_progress(&self) -> bool {
        !matches!(self.kind.as_str(), "step_start" | "stderr")
    }

    /// One short human line for this event (CLI progress, MCP progress notifications): newlines
    /// flattened, at most 160 characters.
    pub fn describe(&self) -> String {
        let e = self;
        let s = |k: &str| e.data.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let line = match e.kind.as_str() {
            "status" => match e.data.get("error") {
                Some(err) => format!(
                    "{} ({}: {})",
                    s("status"),
                    err.get("kind").and_then(|v| v.as_str()).unwrap_or(""),
                    err.get("message").and_then(|v| v.as_str()).unwrap_or("")
                ),
                None => s("status").to_string(),
            },
            "text" => format!("text: {}", s("text")),
            "reasoning" => format!("thinking: {}", s("text")),
            "tool" => {
                let title = s("title");
                format!("tool {} {} ({})", s("tool"), title, s("status"))
            }
            "step_start" => "step started".into(),
            "step_finish" => {
                let u = &e.data["usage"];
                let tokens = ["input_tokens", "output_tokens"]
                    .iter()
                    .filter_map(|k| u.get(*k).and_then(Value::as_u64))
                    .sum::<u64>();
                format!("step finished ({}, {tokens} tokens)", s("reason"))
            }
            "error" => format!("error {}: {}", s("name"), s("message")),
            "stderr" => format!("opencode: {}", s("line")),
            "setup" => format!("setup: {}", s("line")),
            "egress" => {
                let n = |k: &str| e.data.get(k).and_then(Value::as_u64).unwrap_or(0);
                let target = format!("{}:{}", s("host"), n("port"));
                match e.data.get("reason").and_then(|v| v.as_str()) {
                    Some(reason) => format!("egress {} {target}: {reason}", s("decision")),
                    None => format!(
                        "egress {} {target} ({} bytes up, {} down)",
                        s("decision"),
                        n("bytes_up"),
                        n("bytes_down")
                    ),
                }
            }
            "attempt" => match serde_json::from_value::<Attempt>(e.data.clone()) {
                Ok(attempt) => format!("attempt {}", attempt.describe()),
                Err(_) => "attempt".into(),
            },
            "malformed" => format!("unreadable opencode output: {}", s("error")),
            other => other.to_string(),
        };
        let line = line.replace('\n', " ");
        if line.chars().count() > 160 {
            format!("{}…", line.chars().take(159).collect::<String>())
        } else {
            line
        }
    }
}

/// `data` and `raw` are JSON objects of any shape; say so explicitly (a bare `true` schema is not
/// portable across MCP clients).
fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object" })
}

#[cfg(test)]
mod tests {
    use super::Event;
    use serde_json::json;

    fn event(kind: &str, data: serde_json::Value) -> Event {
        Event {
            seq: 1,
            ts: 0,
            kind: kind.into(),
            data,
            raw: None,
        }
    }

    #[test]
    fn egress_and_setup_events_read_as_what_happened() {
        let denied = event(
            "egress",
            json!({"host": "registry.invalid", "port": 443, "decision": "denied",
                   "reason": "policy `none` does not allow registry.invalid:443",
                   "bytes_up": 0, "bytes_down": 0, "duration_ms": 1}),
        );
        assert_eq!(
            denied.describe(),
            "egress denied registry.invalid:443: policy `none` does not allow registry.invalid:443"
        );
        let allowed = event(
            "egress",
            json!({"host": "pypi.internal", "port": 443, "decision": "allowed",
                   "bytes_up": 812, "bytes_down": 40960, "duration_ms": 30}),
        );
        assert_eq!(
            allowed.describe(),
            "egress allowed pypi.internal:443 (812 bytes up, 40960 down)"
        );
        let setup = event("setup", json!({"stream": "stdout", "line": "npm ci"}));
        assert_eq!(setup.describe(), "setup: npm ci");
    }
}

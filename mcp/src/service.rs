//! The MCP server: seven tools and one resource template over a [`Delegator`], as an rmcp
//! [`ServerHandler`].
//!
//! The handler is written by hand (no `#[tool]` macros) so every protocol decision is visible
//! here: how arguments are checked (serde, `deny_unknown_fields`, JSON-RPC invalid params naming
//! the field), how domain failures become tool errors (`isError: true`) the calling model can read,
//! how progress is forwarded without ever stalling a run, and how a cancelled request cancels the
//! run while still letting the delegator clean up, how the client's roots reach a delegator that
//! reads repositories on the caller's machine, and how a run's patch is read as a resource.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    handler::server::tool::{schema_for_input, schema_for_output, schema_for_type},
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
        ClientCapabilities, ContentBlock, CreateTaskResult, CustomRequest, CustomResult, ErrorCode,
        GetTaskParams, GetTaskResult, Implementation, JsonObject, ListResourceTemplatesResult,
        ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
        ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig, TaskPayload, Tool,
        ToolAnnotations,
    },
    service::{Peer, RequestContext},
};
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::budget;
use crate::delegator::{Caller, ClientRoots, DelegateError, Delegator, Progress};
use crate::tasks::{RETAIN_ENDED, RunTasks, TaskEnd};
use crate::tools::{
    ApplyChangesInput, ApplyChangesOutput, CancelRunInput, CancelRunOutput, CreateSandboxInput,
    CreateSandboxOutput, DeleteSandboxInput, DeleteSandboxOutput, ListSandboxesInput,
    ListSandboxesOutput, MAX_TIMEOUT_SECONDS, RunInSandboxInput, StreamSessionInput,
    StreamSessionOutput,
};
use crate::types::{Detail, RunResult, RunStatus};

/// Capacity of the progress queues between a run and the client. A full queue drops progress
/// (the events stay in the run's log) instead of slowing the run down.
const PROGRESS_QUEUE: usize = 64;
/// Cap on the text rendering of `stream_session` events (the full events are structured).
const SUMMARY_EVENTS_CHARS: usize = 4000;
/// How long a tool call waits for the client's answer to `roots/list`; without one, the project
/// root falls back to `CLAUDE_PROJECT_DIR` or the cwd.
const ROOTS_WAIT: Duration = Duration::from_secs(5);
/// The most of a patch `resources/read` returns; past it, the client downloads `patch_url`.
pub const MAX_PATCH_RESOURCE_BYTES: u64 = 8 << 20;
/// The resource template of a run's whole patch.
pub const PATCH_URI_TEMPLATE: &str = "delegate://runs/{run_id}/patch";
/// How often a run with a progress token sends a progress notification when it has nothing
/// else to say ([`McpOptions::heartbeat`]'s default).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// The shortest heartbeat interval honoured.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// Settings of the MCP service, the same on every transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McpOptions {
    /// While a run is active and the client sent a progress token, a progress notification
    /// (elapsed time, last activity) goes out at least this often, even when the agent is
    /// silent, so clients and proxies with idle timeouts keep waiting.
    pub heartbeat: Duration,
}

impl Default for McpOptions {
    fn default() -> Self {
        Self {
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

/// What the server tells a calling model in `initialize` / `server/discover`.
pub const INSTRUCTIONS: &str = "\
delegate hands a whole coding task to another agent (opencode) that works in an isolated sandbox \
and reports back. Use it for self-contained, well-specified work you can describe completely up \
front (implement a feature, fix a failing test, write a script, explore a codebase): brief it as \
you would a colleague - what to do, where, and how to know it is done. You get back the agent's \
final message, the changed files, a unified diff and token usage; the sandbox's files stay there \
only if it is a warm sandbox.

Runs take minutes. `run_in_sandbox` waits for the end by default; if your client shows progress, \
send a progressToken and watch one progress notification per step. To do other work meanwhile, \
call it with `wait: false` (it returns at once with `status: \"running\"` and a `run_id`), then \
call `stream_session` with that `run_id`, passing each reply's `next_cursor` as `after`, until \
`done` is true. `cancel_run` stops a run.

A fresh sandbox is created and destroyed for each run unless you pass `sandbox_id`. For several \
related runs, `create_sandbox` once (optionally with `files`), pass its `sandbox_id` to each \
`run_in_sandbox`, and set `continue_session: true` to let the agent remember the earlier \
conversation. Delete warm sandboxes with `delete_sandbox` when you are done; idle ones are paused.

Repositories: where delegate runs on the user's machine (`delegate mcp`), the sandbox starts from \
the project root by default (the client's first root, else CLAUDE_PROJECT_DIR, else the current \
directory, when it is a git work tree) as it is now, uncommitted and untracked (not ignored) \
files included, so the agent sees `git log` and `git diff HEAD~1`. `repo` picks another work tree \
(a path inside the project), or `none` for an empty sandbox; over HTTP it can be an https:// git \
URL with `ref`. The user's repository is never changed except by `apply`: `branch` (default) \
writes the agent's commit as branch `delegate/<run>` on top of the user's HEAD (plus a commit of \
the uncommitted changes), touching neither the working tree, the index nor the current branch; \
`worktree` also applies it to the working tree when it applies cleanly (else `conflicts` names \
the paths and nothing changes); `none` leaves it alone, to review first and then call \
`apply_changes` {run_id, to}. The result names `base` (what the sandbox started from), `commit`, \
`branch`, `applied` and `apply_message`; the whole binary-safe patch is the resource \
delegate://runs/{run_id}/patch (`resources/read`) and `patch_url`. Warm sandboxes made with a \
repo move their branch forward run after run.

Result `status`: succeeded, failed, cancelled, timed_out, running (only with `wait: false`), lost \
(the server restarted). When not succeeded, `error.kind` says why: upstream_auth (the model \
provider refused delegate's credential; retrying will not help), upstream_unavailable (provider \
overloaded; retry later), upstream_error, timeout (past `timeout_seconds`; give more time or a \
smaller task), cancelled, sandbox_failed, oom (out of memory), image_missing, agent_failed (the \
agent itself failed; see `error.message`), bad_change (the change that came back was malformed \
or too large; nothing of it was kept), lost, internal. A tool result with isError means the \
request itself was refused (not found, invalid input, sandbox busy or paused, a limit reached); \
its text says what to change.";

const RUN_IN_SANDBOX: &str = "\
Delegate one coding task to an agent in an isolated sandbox and (by default) wait for it to \
finish, typically minutes. The sandbox starts from your project's git work tree as it is now \
(uncommitted work included; `repo` for another one, `none` for an empty sandbox), and your \
repository is never changed except by `apply`: by default the change comes back as branch \
`delegate/<run>` (see `branch`, `commit`, `base`), `worktree` also applies it to your working tree, \
`none` leaves it for `apply_changes`. Returns the agent's final message, changed files, a diff \
preview, the whole patch as resource delegate://runs/{run_id}/patch, usage and status. Omit \
`sandbox_id` for a fresh sandbox destroyed afterwards; pass one from `create_sandbox` to keep \
files between runs. With `wait: false` it returns at once; follow the run with `stream_session`.";
const CREATE_SANDBOX: &str = "\
Create a warm sandbox that keeps its files and agent session across several `run_in_sandbox` \
calls (pass its `sandbox_id`). It starts from your project's git work tree as it is now, like \
`run_in_sandbox` (`repo` to pick another, `none` for empty); each run's change goes on top of the \
previous one and its branch moves forward. Delete it with `delete_sandbox` when done.";
const APPLY_CHANGES: &str = "\
Write a finished run's change into your repository after reviewing it (e.g. a run made with \
`apply: none`): `to: branch` (default) writes a new branch `delegate/<run>` (the next free name \
if taken) without touching your working tree, index or current branch; `to: worktree` also \
applies the change to your working tree when it applies cleanly, else changes nothing and names \
the conflicting paths. Only for runs that started from a repository on this machine.";
const STREAM_SESSION: &str = "\
Follow a run (by `run_id`, or the latest run of a `sandbox_id`): returns its events after the \
cursor `after`, waiting up to `wait_seconds` for new ones. Call again with `after` = `next_cursor` \
until `done` is true.";
const LIST_SANDBOXES: &str = "List your sandboxes (warm and running ephemeral ones), newest first.";
const DELETE_SANDBOX: &str =
    "Delete a sandbox and its files. A run still in it is cancelled first.";
const CANCEL_RUN: &str =
    "Cancel a running run. It ends with status `cancelled` once its processes are gone.";

/// delegate's MCP server: seven tools, each a thin call into a [`Delegator`], and a run's patch as
/// a resource.
///
/// One value serves one connection (stdio) or is cloned per HTTP session/request; it holds no
/// per-connection state itself.
#[derive(Clone)]
pub struct DelegateMcp {
    delegator: Arc<dyn Delegator>,
    fixed_caller: Option<Caller>,
    tools: Arc<[Tool]>,
    options: McpOptions,
    /// `run_in_sandbox` calls running as MCP tasks; shared by every clone, so a task outlives
    /// the HTTP request and session that started it.
    tasks: RunTasks,
}

impl std::fmt::Debug for DelegateMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegateMcp")
            .field("fixed_caller", &self.fixed_caller)
            .finish_non_exhaustive()
    }
}

impl DelegateMcp {
    /// `fixed_caller` is who every request runs as over stdio. Over HTTP pass `None`: the caller
    /// is then taken from each HTTP request's extensions (a [`Caller`] the server's auth middleware
    /// inserted), and a request without one is refused.
    pub fn new(delegator: Arc<dyn Delegator>, fixed_caller: Option<Caller>) -> Self {
        Self {
            delegator,
            fixed_caller,
            tools: tool_definitions().into(),
            options: McpOptions::default(),
            tasks: RunTasks::default(),
        }
    }

    /// The `run_in_sandbox` calls running as MCP tasks (shared with every clone).
    pub fn tasks(&self) -> RunTasks {
        self.tasks.clone()
    }

    /// The same server with these options.
    pub fn with_options(mut self, options: McpOptions) -> Self {
        self.options = options;
        self
    }

    /// Resolves who is calling: the HTTP request's [`Caller`] first, else the fixed one; the MCP
    /// client's name fills `client` when the transport did not.
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
        let from_http = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned();
        let mut caller = from_http
            .or_else(|| self.fixed_caller.clone())
            .ok_or_else(|| {
                ErrorData::internal_error(
                    "unauthorized: no authenticated caller for this request",
                    None,
                )
            })?;
        if caller.client.is_none() {
            caller.client = client_name(ctx);
        }
        Ok(caller)
    }

    /// The client's roots, for a delegator that reads repositories here, when `repo` may need
    /// them (absent, `.` or a path). Asked only of clients that declared the roots capability,
    /// and for at most [`ROOTS_WAIT`]; no answer is no roots, not an error.
    ///
    /// Roots are deprecated for the 2026-07-28 era (which has no server-to-client requests, so
    /// the call fails at once there); Claude Code and other current clients answer it.
    #[allow(deprecated)]
    async fn client_roots(
        &self,
        repo: Option<&str>,
        ctx: &RequestContext<RoleServer>,
    ) -> ClientRoots {
        let needed = self.delegator.local_repositories()
            && !repo.is_some_and(|r| r.trim() == "none" || r.contains("://"));
        let declared = ctx
            .client_capabilities()
            .is_some_and(|capabilities| capabilities.roots.is_some());
        if !needed || !declared {
            return ClientRoots::default();
        }
        let asked = tokio::time::timeout(ROOTS_WAIT, ctx.peer.list_roots()).await;
        match asked {
            Ok(Ok(listed)) => ClientRoots {
                roots: listed
                    .roots
                    .iter()
                    .filter_map(|root| file_path(&root.uri))
                    .collect(),
            },
            Ok(Err(error)) => {
                tracing::debug!(%error, "roots/list failed; using the default project root");
                ClientRoots::default()
            }
            Err(_) => {
                tracing::debug!("roots/list unanswered; using the default project root");
                ClientRoots::default()
            }
        }
    }

    async fn run_in_sandbox(
        &self,
        caller: Caller,
        input: RunInSandboxInput,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let roots = self.client_roots(input.repo.as_deref(), &ctx).await;
        let detail = input.detail.unwrap_or_default();
        // The delegator's token is a child of the request's: `notifications/cancelled` (or the
        // connection going away) cancels the run, while the delegator cancelling its own token
        // touches nothing else.
        let cancel = ctx.ct.child_token();
        let (progress_tx, progress_rx) = mpsc::channel::<Progress>(PROGRESS_QUEUE);
        let delegator = self.delegator.clone();
        // Spawned, not awaited in place: whatever happens to this request's future, the run is
        // driven to its end and the delegator gets to clean up.
        let run = tokio::spawn(roots.scope(async move {
            delegator
                .run_in_sandbox(&caller, input, progress_tx, cancel)
                .await
        }));
        let forward = forward_progress(
            progress_rx,
            ctx.meta.get_progress_token(),
            ctx.peer,
            self.options.heartbeat,
        );
        let (joined, ()) = tokio::join!(run, forward);
        run_tool_result(joined, detail)
    }

    /// `run_in_sandbox` as an MCP task: returns at once with the task; the run goes on with the
    /// task's own cancellation (`tasks/cancel`), not the request's, and its last activity becomes
    /// the task's `statusMessage`. The task's result is the same budgeted result a plain call
    /// returns.
    async fn start_run_task(
        &self,
        caller: Caller,
        input: RunInSandboxInput,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let roots = self.client_roots(input.repo.as_deref(), &ctx).await;
        let detail = input.detail.unwrap_or_default();
        // The server's default timeout is not known here: without one, the longest a run may take.
        let timeout = input
            .timeout_seconds
            .unwrap_or(MAX_TIMEOUT_SECONDS)
            .min(MAX_TIMEOUT_SECONDS);
        let ttl = Duration::from_secs(timeout) + RETAIN_ENDED;
        let delegator = self.delegator.clone();
        let owner = caller.user_id.clone();
        let task = self.tasks.start(&owner, ttl, move |handle| async move {
            let cancel = handle.cancel_token();
            let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(PROGRESS_QUEUE);
            let run = tokio::spawn(roots.scope(async move {
                delegator
                    .run_in_sandbox(&caller, input, progress_tx, cancel)
                    .await
            }));
            let activity = async {
                while let Some(progress) = progress_rx.recv().await {
                    handle.set_activity(&progress.message);
                }
            };
            let (joined, ()) = tokio::join!(run, activity);
            match joined {
                Ok(Ok(run)) if handle.cancel_requested() && run.status == RunStatus::Cancelled => {
                    TaskEnd::Cancelled(format!("run {} cancelled", run.run_id))
                }
                joined => match run_tool_result(joined, detail) {
                    Ok(result) => TaskEnd::Completed(result),
                    Err(error) => TaskEnd::Failed(error),
                },
            }
        })?;
        tracing::info!(task = %task.task_id, "run_in_sandbox started as an MCP task");
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    /// The caller's id for the task methods, which also need the client to have declared the
    /// tasks extension (rmcp checks it for `tasks/get` and `tasks/cancel`).
    fn task_owner(&self, ctx: &RequestContext<RoleServer>) -> Result<String, ErrorData> {
        if !client_wants_tasks(ctx) {
            return Err(ErrorData::missing_required_client_capability(
                ClientCapabilities::builder().enable_tasks().build(),
            ));
        }
        Ok(self.caller(ctx)?.user_id)
    }

    async fn dispatch(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let name = request.name.as_ref();
        let arguments = request.arguments;
        // Arguments first: a malformed call is a protocol fault whoever sends it.
        match name {
            "run_in_sandbox" => {
                let input: RunInSandboxInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                self.run_in_sandbox(caller, input, ctx).await
            }
            "create_sandbox" => {
                let input: CreateSandboxInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                let roots = self.client_roots(input.repo.as_deref(), &ctx).await;
                let result = roots
                    .scope(self.delegator.create_sandbox(&caller, input))
                    .await;
                to_tool_result(result, summarize_sandbox)
            }
            "apply_changes" => {
                let input: ApplyChangesInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                let result = self.delegator.apply_changes(&caller, input).await;
                to_tool_result(result, |out: &ApplyChangesOutput| out.message.clone())
            }
            "stream_session" => {
                let input: StreamSessionInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                let detail = input.detail.unwrap_or_default();
                // A read-only long poll: when the request is cancelled there is nothing to finish,
                // so stop waiting at once.
                let result = tokio::select! {
                    result = self.delegator.stream_session(&caller, input) => result,
                    () = ctx.ct.cancelled() => {
                        return Err(ErrorData::internal_error("request cancelled", None));
                    }
                };
                let result = result.map(|page| budget::stream_page(page, detail));
                to_tool_result(result, summarize_stream)
            }
            "list_sandboxes" => {
                let input: ListSandboxesInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                let result = self.delegator.list_sandboxes(&caller, input).await;
                to_tool_result(result, summarize_list)
            }
            "delete_sandbox" => {
                let input: DeleteSandboxInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                let result = self.delegator.delete_sandbox(&caller, input).await;
                to_tool_result(result, |out: &DeleteSandboxOutput| {
                    format!("sandbox {} {}", out.sandbox_id, out.status)
                })
            }
            "cancel_run" => {
                let input: CancelRunInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                let result = self.delegator.cancel_run(&caller, input).await;
                to_tool_result(result, |out: &CancelRunOutput| {
                    format!("run {} {}", out.run_id, out.status)
                })
            }
            other => Err(ErrorData::invalid_params(
                format!(
                    "unknown tool `{}`; the tools are {}",
                    truncate_chars(other, 100),
                    TOOL_NAMES.join(", ")
                ),
                None,
            )),
        }
    }
}

impl ServerHandler for DelegateMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_tasks()
                .build(),
        )
        .with_server_info(
            Implementation::new("delegate", env!("CARGO_PKG_VERSION")).with_title("delegate"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|tool| tool.name == name).cloned()
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(PATCH_URI_TEMPLATE, "run-patch")
            .with_title("A run's whole patch")
            .with_description(
                "The whole binary-safe patch of a run's change (`git apply` takes it), from the \
                 snapshot the sandbox started from to the run's commit.",
            )
            .with_mime_type("text/x-diff");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let Some(run_id) = patch_run_id(&uri) else {
            return Err(ErrorData::resource_not_found(
                format!(
                    "no resource {}; runs' patches are {PATCH_URI_TEMPLATE}",
                    truncate_chars(&uri, 200)
                ),
                None,
            ));
        };
        let caller = self.caller(&ctx)?;
        let patch = self
            .delegator
            .read_patch(&caller, run_id, MAX_PATCH_RESOURCE_BYTES)
            .await
            .map_err(|error| match error {
                DelegateError::NotFound(message) => ErrorData::resource_not_found(message, None),
                DelegateError::Limit(message) => ErrorData::invalid_params(
                    format!(
                        "the patch of run {run_id} is over {} MiB ({message}); download it from \
                         the run's patch_url (GET /api/runs/{run_id}/patch)",
                        MAX_PATCH_RESOURCE_BYTES >> 20
                    ),
                    None,
                ),
                other => ErrorData::internal_error(other.to_string(), None),
            })?;
        // A patch is text unless a file name or a text hunk is not UTF-8: then the bytes go as
        // they are (base64) rather than mangled.
        let contents = match String::from_utf8(patch) {
            Ok(text) => ResourceContents::text(text, uri.clone()),
            Err(bytes) => {
                use base64::Engine;
                let blob = base64::engine::general_purpose::STANDARD.encode(bytes.into_bytes());
                ResourceContents::blob(blob, uri.clone())
            }
        };
        Ok(ReadResourceResult::new(vec![contents.with_mime_type("text/x-diff")]).into())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // A client that declared the tasks extension gets a task for a run it would otherwise
        // wait for; `wait: false` already returns at once, and the other tools are quick.
        if request.name == "run_in_sandbox" && client_wants_tasks(&ctx) {
            let input: RunInSandboxInput =
                parse_arguments("run_in_sandbox", request.arguments.clone())?;
            if input.wait != Some(false) {
                let caller = self.caller(&ctx)?;
                return self.start_run_task(caller, input, ctx).await;
            }
        }
        self.dispatch(request, ctx)
            .await
            .map(CallToolResponse::from)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let owner = self.task_owner(&ctx)?;
        self.tasks
            .get(&owner, &request.task_id)
            .map(GetTaskResult::new)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let owner = self.task_owner(&ctx)?;
        self.tasks.cancel(&owner, &request.task_id)
    }

    /// `tasks/result`, the 2025-11-25 protocol's blocking read of a task's result, for clients
    /// that would rather wait than poll `tasks/get`: the tool's result once the run ended, or
    /// the task's error.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        if request.method != TASKS_RESULT {
            return Err(ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!("unknown method `{}`", truncate_chars(&request.method, 100)),
                None,
            ));
        }
        let owner = self.task_owner(&ctx)?;
        let params: TaskIdParams = request
            .params_as()
            .map_err(|error| ErrorData::invalid_params(format!("{TASKS_RESULT}: {error}"), None))?
            .ok_or_else(|| {
                ErrorData::invalid_params(format!("{TASKS_RESULT} needs params.taskId"), None)
            })?;
        let task = tokio::select! {
            task = self.tasks.wait(&owner, &params.task_id) => task?,
            () = ctx.ct.cancelled() => {
                return Err(ErrorData::internal_error("request cancelled", None));
            }
        };
        let message = task.task.status_message.clone().unwrap_or_default();
        match task.payload {
            TaskPayload::Completed { result } => Ok(CustomResult::new(result.into())),
            TaskPayload::Failed { error } => Err(serde_json::from_value(error.into())
                .unwrap_or_else(|_| ErrorData::internal_error(message, None))),
            _ => Err(ErrorData::invalid_request(
                format!("task {} ended without a result: {message}", params.task_id),
                None,
            )),
        }
    }
}

/// The 2025-11-25 method that blocks until a task ended and returns its result.
const TASKS_RESULT: &str = "tasks/result";

/// The params of `tasks/result`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskIdParams {
    task_id: String,
}

/// Whether the client declared the tasks extension (at `initialize` or in this request's `_meta`).
fn client_wants_tasks(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities()
        .is_some_and(|capabilities| capabilities.supports_tasks())
}

/// A finished `run_in_sandbox` as its tool result: the budgeted run plus a link to its patch, or
/// the tool error the model reads.
fn run_tool_result(
    joined: Result<Result<RunResult, DelegateError>, tokio::task::JoinError>,
    detail: Detail,
) -> Result<CallToolResult, ErrorData> {
    match joined {
        Ok(result) => {
            let link = result
                .as_ref()
                .ok()
                .filter(|run| run.commit.is_some())
                .map(|run| patch_link(&run.run_id));
            let result = result.map(|run| budget::run_result(&run, detail));
            let mut answer = to_tool_result(result, budget::run_text)?;
            answer.content.extend(link);
            Ok(answer)
        }
        Err(join_error) => {
            tracing::error!(error = %join_error, "run_in_sandbox task failed");
            Ok(error_result(&DelegateError::Internal(
                "the run's task failed; see the server log".into(),
            )))
        }
    }
}

/// The tool names, in the order `tools/list` returns them.
pub const TOOL_NAMES: [&str; 7] = [
    "run_in_sandbox",
    "create_sandbox",
    "stream_session",
    "list_sandboxes",
    "delete_sandbox",
    "cancel_run",
    "apply_changes",
];

fn tool_definitions() -> Vec<Tool> {
    vec![
        tool::<RunInSandboxInput, RunResult>(TOOL_NAMES[0], RUN_IN_SANDBOX, "Delegate a task")
            .annotate(
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
        tool::<CreateSandboxInput, CreateSandboxOutput>(
            TOOL_NAMES[1],
            CREATE_SANDBOX,
            "Create a warm sandbox",
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .idempotent(false),
        ),
        tool::<StreamSessionInput, StreamSessionOutput>(
            TOOL_NAMES[2],
            STREAM_SESSION,
            "Follow a run",
        )
        .annotate(ToolAnnotations::new().read_only(true)),
        tool::<ListSandboxesInput, ListSandboxesOutput>(
            TOOL_NAMES[3],
            LIST_SANDBOXES,
            "List sandboxes",
        )
        .annotate(ToolAnnotations::new().read_only(true)),
        tool::<DeleteSandboxInput, DeleteSandboxOutput>(
            TOOL_NAMES[4],
            DELETE_SANDBOX,
            "Delete a sandbox",
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true),
        ),
        tool::<CancelRunInput, CancelRunOutput>(TOOL_NAMES[5], CANCEL_RUN, "Cancel a run")
            .annotate(
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .idempotent(true),
            ),
        tool::<ApplyChangesInput, ApplyChangesOutput>(
            TOOL_NAMES[6],
            APPLY_CHANGES,
            "Apply a run's change",
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .idempotent(false),
        ),
    ]
}

fn tool<I, O>(name: &'static str, description: &'static str, title: &'static str) -> Tool
where
    I: JsonSchema + 'static,
    O: JsonSchema + 'static,
{
    // Every input type is a struct, so `schema_for_input` (which insists on an object root)
    // succeeds; falling back to the raw schema keeps this free of panics all the same.
    let input_schema = schema_for_input::<I>().unwrap_or_else(|_| schema_for_type::<I>());
    Tool::new(name, description, input_schema)
        .with_title(title)
        .with_raw_output_schema(schema_for_output::<O>())
}

/// Deserializes a tool's arguments; a failure is a JSON-RPC invalid-params error whose message
/// names the field: "missing field `task`", "unknown field `foo`", or "`timeout_seconds`: invalid
/// type ..." (the path comes from serde_path_to_error; serde's own message lacks it).
fn parse_arguments<T: DeserializeOwned>(
    tool: &str,
    arguments: Option<JsonObject>,
) -> Result<T, ErrorData> {
    let arguments = serde_json::Value::Object(arguments.unwrap_or_default());
    serde_path_to_error::deserialize(arguments).map_err(|error| {
        let path = error.path().to_string();
        let message = match path.as_str() {
            "." | "" => format!("invalid arguments for {tool}: {}", error.inner()),
            field => format!("invalid arguments for {tool}: `{field}`: {}", error.inner()),
        };
        ErrorData::invalid_params(message, None)
    })
}

/// A delegator's answer as a tool result: structured content plus a short text for clients that
/// ignore structured content; a [`DelegateError`] as `isError` with its message.
fn to_tool_result<T: Serialize>(
    result: Result<T, DelegateError>,
    summarize: impl FnOnce(&T) -> String,
) -> Result<CallToolResult, ErrorData> {
    match result {
        Ok(output) => {
            let text = summarize(&output);
            let structured = serde_json::to_value(&output).map_err(|error| {
                ErrorData::internal_error(format!("could not encode the result: {error}"), None)
            })?;
            let mut result = CallToolResult::structured(structured);
            result.content = vec![ContentBlock::text(text)];
            Ok(result)
        }
        Err(error) => Ok(error_result(&error)),
    }
}

fn error_result(error: &DelegateError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_string())])
}

/// Forwards a run's progress to the client until the run drops its sender, with a heartbeat
/// (elapsed time and the last activity) whenever nothing was sent for `heartbeat`.
///
/// Two hops keep the run from ever waiting on the client: the run's queue is drained at once into
/// a second bounded queue with `try_send` (dropping progress when the client is behind), and only
/// that second queue waits on the transport.
async fn forward_progress(
    mut from_run: mpsc::Receiver<Progress>,
    token: Option<ProgressToken>,
    peer: Peer<RoleServer>,
    heartbeat: Duration,
) {
    let Some(token) = token else {
        // Nobody asked for progress: drain so the run's sends never fill up.
        while from_run.recv().await.is_some() {}
        return;
    };
    let (to_client, mut outbox) = mpsc::channel::<Progress>(PROGRESS_QUEUE);
    let pump = async move {
        let mut dropped = 0u64;
        while let Some(progress) = from_run.recv().await {
            if to_client.try_send(progress).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::debug!(dropped, "progress notifications dropped for a slow client");
        }
        // `to_client` drops here, which ends the sender below once it has sent what is queued.
    };
    let send = async move {
        let every = heartbeat.max(MIN_HEARTBEAT);
        let started = Instant::now();
        let mut ticks = tokio::time::interval_at(started + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_activity = (started, String::from("starting"));
        // MCP wants `progress` to increase with every notification: events count by their
        // sequence number, heartbeats add a thousandth.
        let mut progress_value = 0f64;
        let mut client_gone = false;
        loop {
            let (value, message) = tokio::select! {
                next = outbox.recv() => match next {
                    Some(progress) => {
                        ticks.reset();
                        last_activity = (Instant::now(), progress.message.clone());
                        (progress.seq as f64, progress.message)
                    }
                    None => break,
                },
                _ = ticks.tick() => {
                    let (at, what) = &last_activity;
                    (0.0, format!(
                        "still working, {}s elapsed; last activity {}s ago: {what}",
                        started.elapsed().as_secs(),
                        at.elapsed().as_secs(),
                    ))
                }
            };
            if client_gone {
                continue;
            }
            progress_value = if value > progress_value {
                value
            } else {
                progress_value + 0.001
            };
            let notification =
                ProgressNotificationParam::new(token.clone(), progress_value).with_message(message);
            if let Err(error) = peer.notify_progress(notification).await {
                tracing::debug!(%error, "progress notification not delivered; stopping progress");
                client_gone = true;
            }
        }
    };
    tokio::join!(pump, send);
}

/// The MCP client's name, from the request's own metadata (2026-07-28) or the `initialize`
/// handshake. rmcp fills a session-less peer with its own build identity; that is not the client.
fn client_name(ctx: &RequestContext<RoleServer>) -> Option<String> {
    ctx.client_info()
        .filter(|info| *info != Implementation::from_build_env())
        .map(|info| info.name)
        .filter(|name| !name.is_empty())
}

/// The local directory a `file://` root names; other roots say nothing about this machine.
fn file_path(uri: &str) -> Option<PathBuf> {
    let url = reqwest::Url::parse(uri).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    url.to_file_path().ok()
}

/// The run id of `delegate://runs/{run_id}/patch`.
fn patch_run_id(uri: &str) -> Option<&str> {
    let run_id = uri
        .strip_prefix("delegate://runs/")?
        .strip_suffix("/patch")?;
    let plain = !run_id.is_empty()
        && run_id.len() <= 128
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then_some(run_id)
}

/// The `resource_link` a run's result carries to its whole patch.
fn patch_link(run_id: &str) -> ContentBlock {
    ContentBlock::resource_link(
        Resource::new(format!("delegate://runs/{run_id}/patch"), "run-patch")
            .with_title(format!("Patch of run {run_id}"))
            .with_description("The run's whole binary-safe patch (`git apply` takes it).")
            .with_mime_type("text/x-diff"),
    )
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn summarize_sandbox(sandbox: &CreateSandboxOutput) -> String {
    let mut text = format!(
        "sandbox {} ({}) is {} on {}",
        sandbox.sandbox_id, sandbox.name, sandbox.status, sandbox.backend
    );
    if let Some(url) = &sandbox.watch_url {
        text.push_str(&format!("; watch: {url}"));
    }
    if let Some(url) = &sandbox.opencode_url {
        text.push_str(&format!("; opencode: {url}"));
    }
    text
}

fn summarize_list(list: &ListSandboxesOutput) -> String {
    if list.sandboxes.is_empty() {
        return "no sandboxes".into();
    }
    let lines: Vec<String> = list
        .sandboxes
        .iter()
        .map(|s| format!("{} ({}, {}, {})", s.sandbox_id, s.name, s.kind, s.status))
        .collect();
    format!("{} sandboxes: {}", lines.len(), lines.join("; "))
}

fn summarize_stream(out: &StreamSessionOutput) -> String {
    let mut text = format!(
        "run {} {}: {} new events, next_cursor {}, done: {}",
        out.run_id,
        out.status,
        out.events.len(),
        out.next_cursor,
        out.done
    );
    for event in &out.events {
        if text.len() > SUMMARY_EVENTS_CHARS {
            text.push_str("\n…");
            break;
        }
        let data = match &event.data {
            serde_json::Value::Null => String::new(),
            data => truncate_chars(&data.to_string(), 200),
        };
        text.push_str(&format!("\n#{} {} {}", event.seq, event.kind, data));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_uris() {
        assert_eq!(patch_run_id("delegate://runs/run_1/patch"), Some("run_1"));
        for bad in [
            "delegate://runs//patch",
            "delegate://runs/a/b/patch",
            "delegate://runs/../patch",
            "delegate://runs/run_1",
            "file:///etc/passwd",
        ] {
            assert_eq!(patch_run_id(bad), None, "{bad}");
        }
        assert_eq!(
            file_path("file:///home/u/p"),
            Some(PathBuf::from("/home/u/p"))
        );
        assert_eq!(file_path("https://x/y"), None);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("hé", 5), "hé");
    }

    #[test]
    fn every_tool_has_object_schemas() {
        for tool in tool_definitions() {
            assert_eq!(tool.input_schema.get("type"), Some(&"object".into()));
            let output = tool.output_schema.expect("output schema");
            assert_eq!(output.get("type"), Some(&"object".into()), "{}", tool.name);
        }
    }
}

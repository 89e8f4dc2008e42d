//! The MCP server: six tools over a [`Delegator`], as an rmcp [`ServerHandler`].
//!
//! The handler is written by hand (no `#[tool]` macros) so every protocol decision is visible
//! here: how arguments are checked (serde, `deny_unknown_fields`, JSON-RPC invalid params naming
//! the field), how domain failures become tool errors (`isError: true`) the calling model can read,
//! how progress is forwarded without ever stalling a run, and how a cancelled request cancels the
//! run while still letting the delegator clean up.

use std::sync::Arc;

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    handler::server::tool::{schema_for_input, schema_for_output, schema_for_type},
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
        ProgressToken, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
    },
    service::{Peer, RequestContext},
};
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;

use crate::delegator::{Caller, DelegateError, Delegator, Progress};
use crate::tools::{
    CancelRunInput, CancelRunOutput, CreateSandboxInput, CreateSandboxOutput, DeleteSandboxInput,
    DeleteSandboxOutput, ListSandboxesInput, ListSandboxesOutput, RunInSandboxInput,
    StreamSessionInput, StreamSessionOutput,
};
use crate::types::RunResult;

/// Capacity of the progress queues between a run and the client. A full queue drops progress
/// (the events stay in the run's log) instead of slowing the run down.
const PROGRESS_QUEUE: usize = 64;
/// How much of the final message the text summary of a run quotes.
const SUMMARY_MESSAGE_CHARS: usize = 500;
/// Cap on the text rendering of `stream_session` events (the full events are structured).
const SUMMARY_EVENTS_CHARS: usize = 4000;

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

Result `status`: succeeded, failed, cancelled, timed_out, running (only with `wait: false`), lost \
(the server restarted). When not succeeded, `error.kind` says why: upstream_auth (the model \
provider refused delegate's credential; retrying will not help), upstream_unavailable (provider \
overloaded; retry later), upstream_error, timeout (past `timeout_seconds`; give more time or a \
smaller task), cancelled, sandbox_failed, oom (out of memory), image_missing, agent_failed (the \
agent itself failed; see `error.message`), lost, internal. A tool result with isError means the \
request itself was refused (not found, invalid input, sandbox busy or paused, a limit reached); \
its text says what to change.";

const RUN_IN_SANDBOX: &str = "\
Delegate one coding task to an agent in an isolated sandbox and (by default) wait for it to \
finish, typically minutes. Returns the agent's final message, changed files, a unified diff, usage \
and status. Omit `sandbox_id` for a fresh sandbox destroyed afterwards; pass one from \
`create_sandbox` to keep files between runs. With `wait: false` it returns at once; follow the run \
with `stream_session`.";
const CREATE_SANDBOX: &str = "\
Create a warm sandbox that keeps its files and agent session across several `run_in_sandbox` \
calls (pass its `sandbox_id`). Delete it with `delete_sandbox` when done.";
const STREAM_SESSION: &str = "\
Follow a run (by `run_id`, or the latest run of a `sandbox_id`): returns its events after the \
cursor `after`, waiting up to `wait_seconds` for new ones. Call again with `after` = `next_cursor` \
until `done` is true.";
const LIST_SANDBOXES: &str = "List your sandboxes (warm and running ephemeral ones), newest first.";
const DELETE_SANDBOX: &str =
    "Delete a sandbox and its files. A run still in it is cancelled first.";
const CANCEL_RUN: &str =
    "Cancel a running run. It ends with status `cancelled` once its processes are gone.";

/// delegate's MCP server: six tools, each a thin call into a [`Delegator`].
///
/// One value serves one connection (stdio) or is cloned per HTTP session/request; it holds no
/// per-connection state itself.
#[derive(Clone)]
pub struct DelegateMcp {
    delegator: Arc<dyn Delegator>,
    fixed_caller: Option<Caller>,
    tools: Arc<[Tool]>,
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
        }
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

    async fn run_in_sandbox(
        &self,
        caller: Caller,
        input: RunInSandboxInput,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        // The delegator's token is a child of the request's: `notifications/cancelled` (or the
        // connection going away) cancels the run, while the delegator cancelling its own token
        // touches nothing else.
        let cancel = ctx.ct.child_token();
        let (progress_tx, progress_rx) = mpsc::channel::<Progress>(PROGRESS_QUEUE);
        let delegator = self.delegator.clone();
        // Spawned, not awaited in place: whatever happens to this request's future, the run is
        // driven to its end and the delegator gets to clean up.
        let run = tokio::spawn(async move {
            delegator
                .run_in_sandbox(&caller, input, progress_tx, cancel)
                .await
        });
        let forward = forward_progress(progress_rx, ctx.meta.get_progress_token(), ctx.peer);
        let (joined, ()) = tokio::join!(run, forward);
        match joined {
            Ok(result) => to_tool_result(result, summarize_run),
            Err(join_error) => {
                tracing::error!(error = %join_error, "run_in_sandbox task failed");
                Ok(error_result(&DelegateError::Internal(
                    "the run's task failed; see the server log".into(),
                )))
            }
        }
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
                let result = self.delegator.create_sandbox(&caller, input).await;
                to_tool_result(result, summarize_sandbox)
            }
            "stream_session" => {
                let input: StreamSessionInput = parse_arguments(name, arguments)?;
                let caller = self.caller(&ctx)?;
                // A read-only long poll: when the request is cancelled there is nothing to finish,
                // so stop waiting at once.
                let result = tokio::select! {
                    result = self.delegator.stream_session(&caller, input) => result,
                    () = ctx.ct.cancelled() => {
                        return Err(ErrorData::internal_error("request cancelled", None));
                    }
                };
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
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
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

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.dispatch(request, ctx)
            .await
            .map(CallToolResponse::from)
    }
}

/// The tool names, in the order `tools/list` returns them.
pub const TOOL_NAMES: [&str; 6] = [
    "run_in_sandbox",
    "create_sandbox",
    "stream_session",
    "list_sandboxes",
    "delete_sandbox",
    "cancel_run",
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

/// Forwards a run's progress to the client until the run drops its sender.
///
/// Two hops keep the run from ever waiting on the client: the run's queue is drained at once into
/// a second bounded queue with `try_send` (dropping progress when the client is behind), and only
/// that second queue waits on the transport.
async fn forward_progress(
    mut from_run: mpsc::Receiver<Progress>,
    token: Option<ProgressToken>,
    peer: Peer<RoleServer>,
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
        let mut client_gone = false;
        while let Some(progress) = outbox.recv().await {
            if client_gone {
                continue;
            }
            let notification = ProgressNotificationParam::new(token.clone(), progress.seq as f64)
                .with_message(progress.message);
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

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn summarize_run(run: &RunResult) -> String {
    if !run.status.is_terminal() {
        return format!(
            "run {} is {} in sandbox {}; follow it with stream_session(run_id: \"{}\")",
            run.run_id, run.status, run.sandbox_id, run.run_id
        );
    }
    let mut text = format!("run {} {}", run.run_id, run.status);
    if let Some(error) = &run.error {
        text.push_str(&format!(" ({}: {})", error.kind.as_str(), error.message));
    }
    let message = run.final_message.trim();
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(&truncate_chars(message, SUMMARY_MESSAGE_CHARS));
    }
    if run.changed_files.is_empty() {
        text.push_str("; no files changed");
    } else {
        let files: Vec<&str> = run.changed_files.iter().map(|f| f.path.as_str()).collect();
        text.push_str("; changed: ");
        text.push_str(&truncate_chars(&files.join(", "), SUMMARY_MESSAGE_CHARS));
    }
    text.push_str(&format!("; sandbox {}", run.sandbox_id));
    if let Some(url) = &run.watch_url {
        text.push_str(&format!("; watch: {url}"));
    }
    text
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

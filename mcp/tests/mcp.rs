//! The MCP surface end to end in-process: a real rmcp client against [`DelegateMcp`], over an
//! in-memory stdio-like pipe and over streamable HTTP mounted in axum, in both protocol eras.
//! The executor behind the tools is a recording [`Delegator`] double.

// roots/list is deprecated for the 2026-07-28 era; clients of the 2025 era (Claude Code) still
// answer it, and the service asks them.
#![allow(deprecated)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use delegate_mcp::{
    Caller, ClientRoots, DelegateError, DelegateMcp, Delegator, HttpConfig, Progress, http_service,
    tools::{
        CancelRunInput, CancelRunOutput, CreateSandboxInput, DeleteSandboxInput,
        DeleteSandboxOutput, ListSandboxesInput, ListSandboxesOutput, RunInSandboxInput,
        SandboxInfo, StreamSessionInput, StreamSessionOutput,
    },
    types::{ChangeKind, ChangedFile, Event, RunResult, RunStatus, SandboxStatus, Usage},
};
use rmcp::{
    ClientHandler, ClientServiceExt, RoleClient, ServiceError, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
        ErrorCode, Implementation, JsonObject, ListRootsResult, ProgressNotificationParam,
        ProtocolVersion, ReadResourceRequestParams, Request, ResourceContents, Root, ServerResult,
    },
    service::{ClientLifecycleMode, NotificationContext, PeerRequestOptions, RunningService},
    transport::StreamableHttpClientTransport,
};
use rstest::rstest;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const PROGRESS_STEPS: u64 = 20;

// ---------------------------------------------------------------- the executor double

/// What the double saw.
#[derive(Default)]
struct Recorded {
    /// (tool, caller) per call, in order.
    calls: Vec<(String, Caller)>,
    run_cancelled: bool,
    cleanup_done: bool,
}

/// A [`Delegator`] double whose behaviour is picked by the task text.
#[derive(Default)]
struct Recorder {
    recorded: Mutex<Recorded>,
    /// Claims to read repositories on the caller's machine (as `LocalDelegator` does).
    local: bool,
    /// The client roots each `run_in_sandbox` saw.
    roots_seen: Mutex<Vec<ClientRoots>>,
    /// Signalled when a `hang` run has started.
    hanging: Notify,
    /// Signalled when a `hang` run has finished its cleanup.
    cleaned_up: Notify,
}

impl Recorder {
    fn record(&self, tool: &str, caller: &Caller) {
        self.recorded
            .lock()
            .unwrap()
            .calls
            .push((tool.to_owned(), caller.clone()));
    }

    fn calls(&self) -> Vec<(String, Caller)> {
        self.recorded.lock().unwrap().calls.clone()
    }
}

fn run_result(status: RunStatus) -> RunResult {
    RunResult {
        run_id: "run_1".into(),
        sandbox_id: "sbx_1".into(),
        status,
        final_message: "I wrote hello.txt.".into(),
        changed_files: vec![ChangedFile::new("hello.txt", ChangeKind::Added)],
        diff: "+hello\n".into(),
        diff_truncated: false,
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 1,
            cache_write_tokens: 2,
            cost_usd: 0.25,
        },
        duration_ms: 1234,
        event_count: 7,
        queue_position: None,
        error: None,
        watch_url: Some("https://delegate.example/runs/run_1".into()),
        base: None,
        commit: None,
        branch: None,
        applied: None,
        conflicts: Vec::new(),
        apply_message: None,
        patch_url: None,
        egress: None,
        parent_run_id: None,
        attempts: Vec::new(),
        omitted: None,
    }
}

fn sandbox(id: &str) -> SandboxInfo {
    SandboxInfo {
        sandbox_id: id.into(),
        name: "warm one".into(),
        status: SandboxStatus::Running,
        backend: "process".into(),
        kind: "warm".into(),
        status_reason: None,
        watch_url: None,
        opencode_url: Some("http://127.0.0.1:4096".into()),
        base: None,
        created_at: 1_700_000_000_000,
    }
}

#[async_trait]
impl Delegator for Recorder {
    async fn run_in_sandbox(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError> {
        self.record("run_in_sandbox", caller);
        self.roots_seen.lock().unwrap().push(ClientRoots::current());
        match input.task.as_str() {
            "commit" => Ok(RunResult {
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                ..run_result(RunStatus::Succeeded)
            }),
            "progress" => {
                for seq in 1..=PROGRESS_STEPS {
                    let message = format!("step {seq}");
                    // The double behaves like the orchestrator: it never waits on a reader.
                    let _ = progress.try_send(Progress { seq, message });
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(run_result(RunStatus::Succeeded))
            }
            "hang" => {
                self.hanging.notify_one();
                cancel.cancelled().await;
                self.recorded.lock().unwrap().run_cancelled = true;
                // Cleanup takes a while; the service must let it finish.
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.recorded.lock().unwrap().cleanup_done = true;
                self.cleaned_up.notify_one();
                Ok(run_result(RunStatus::Cancelled))
            }
            "too big" => Err(DelegateError::Invalid("task is over 1 MiB".into())),
            _ => Ok(run_result(RunStatus::Succeeded)),
        }
    }

    async fn create_sandbox(
        &self,
        caller: &Caller,
        _input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError> {
        self.record("create_sandbox", caller);
        Ok(sandbox("sbx_new"))
    }

    async fn stream_session(
        &self,
        caller: &Caller,
        input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError> {
        self.record("stream_session", caller);
        let after = input.after.unwrap_or(0);
        Ok(StreamSessionOutput {
            run_id: input.run_id.unwrap_or_else(|| "run_1".into()),
            status: RunStatus::Succeeded,
            events: vec![Event {
                seq: after + 1,
                ts: 1_700_000_000_000,
                kind: "text".into(),
                data: json!({"text": "done"}),
                raw: None,
            }],
            next_cursor: after + 1,
            done: true,
        })
    }

    async fn list_sandboxes(
        &self,
        caller: &Caller,
        _input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError> {
        self.record("list_sandboxes", caller);
        Ok(ListSandboxesOutput {
            sandboxes: vec![sandbox("sbx_1")],
        })
    }

    async fn delete_sandbox(
        &self,
        caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError> {
        self.record("delete_sandbox", caller);
        if input.sandbox_id == "sbx_missing" {
            return Err(DelegateError::NotFound("sandbox sbx_missing".into()));
        }
        Ok(DeleteSandboxOutput {
            sandbox_id: input.sandbox_id,
            status: SandboxStatus::Deleted,
        })
    }

    async fn cancel_run(
        &self,
        caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError> {
        self.record("cancel_run", caller);
        Ok(CancelRunOutput {
            run_id: input.run_id,
            status: RunStatus::Cancelled,
        })
    }

    fn local_repositories(&self) -> bool {
        self.local
    }

    async fn read_patch(
        &self,
        caller: &Caller,
        run_id: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, DelegateError> {
        self.record("read_patch", caller);
        match run_id {
            "run_1" => Ok(PATCH.as_bytes().to_vec()),
            "run_big" => Err(DelegateError::Limit(format!("over {max_bytes} bytes"))),
            other => Err(DelegateError::NotFound(format!(
                "run {other} has no change"
            ))),
        }
    }
}

const PATCH: &str = "diff --git a/hello.txt b/hello.txt\nnew file mode 100644\n--- /dev/null\n+++ b/hello.txt\n@@ -0,0 +1 @@\n+hello\n";

// ---------------------------------------------------------------- the client

/// An MCP client that records the progress notifications it gets, and, when it has `roots`,
/// declares the roots capability and answers `roots/list` with them.
#[derive(Clone, Default)]
struct TestClient {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    roots: Option<Vec<&'static str>>,
    roots_asked: Arc<Mutex<u32>>,
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        let capabilities = match self.roots {
            Some(_) => serde_json::from_value(json!({"roots": {"listChanged": false}})).unwrap(),
            None => ClientCapabilities::default(),
        };
        ClientConfig::new(capabilities, Implementation::new("test-client", "1.2.3"))
    }

    async fn list_roots(
        &self,
        _context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, rmcp::ErrorData> {
        *self.roots_asked.lock().unwrap() += 1;
        let roots = self.roots.clone().unwrap_or_default();
        Ok(ListRootsResult::new(
            roots.into_iter().map(Root::new).collect(),
        ))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

type Client = RunningService<RoleClient, TestClient>;

fn stdio_caller() -> Caller {
    Caller {
        user_id: "local-user".into(),
        token_id: None,
        client: None,
        workspace_id: None,
    }
}

/// A client connected to the service over an in-memory pipe, as over stdio.
async fn connect_pipe(
    lifecycle: ClientLifecycleMode,
) -> (
    Client,
    TestClient,
    Arc<Recorder>,
    tokio::task::JoinHandle<()>,
) {
    connect_pipe_with(Recorder::default(), TestClient::default(), lifecycle).await
}

async fn connect_pipe_with(
    recorder: Recorder,
    handler: TestClient,
    lifecycle: ClientLifecycleMode,
) -> (
    Client,
    TestClient,
    Arc<Recorder>,
    tokio::task::JoinHandle<()>,
) {
    let recorder = Arc::new(recorder);
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let server = DelegateMcp::new(recorder.clone(), Some(stdio_caller()));
    let server_task = tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let client = handler
        .clone()
        .serve_with_lifecycle(client_io, lifecycle)
        .await
        .expect("client connects");
    (client, handler, recorder, server_task)
}

fn legacy() -> ClientLifecycleMode {
    ClientLifecycleMode::Initialize
}

fn modern() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    }
}

fn call(name: &'static str, arguments: Value) -> CallToolRequestParams {
    let Value::Object(arguments) = arguments else {
        panic!("arguments must be an object");
    };
    CallToolRequestParams::new(name).with_arguments(arguments)
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn invalid_params(error: ServiceError) -> String {
    match error {
        ServiceError::McpError(data) => {
            assert_eq!(data.code, ErrorCode::INVALID_PARAMS, "{data:?}");
            data.message.to_string()
        }
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- tools/list

async fn check_tools_list(client: &Client) {
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "run_in_sandbox",
            "create_sandbox",
            "stream_session",
            "list_sandboxes",
            "delete_sandbox",
            "cancel_run",
            "apply_changes"
        ]
    );
    let apply = tools[6].annotations.as_ref().expect("annotations");
    assert_eq!(
        (
            apply.read_only_hint,
            apply.destructive_hint,
            apply.idempotent_hint
        ),
        (Some(false), Some(false), Some(false))
    );
    for tool in &tools {
        let description = tool.description.as_deref().unwrap_or_default();
        assert!(description.len() > 20, "{} has a description", tool.name);
        let input = &tool.input_schema;
        assert_eq!(input.get("type"), Some(&json!("object")), "{}", tool.name);
        assert_eq!(
            input.get("additionalProperties"),
            Some(&json!(false)),
            "{} rejects unknown fields",
            tool.name
        );
        let properties = input
            .get("properties")
            .and_then(Value::as_object)
            .expect("input properties");
        assert!(!properties.is_empty(), "{}", tool.name);
        for (field, schema) in properties {
            let described = schema
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty());
            assert!(described, "{}.{field} has a description", tool.name);
        }
        let output = tool.output_schema.as_ref().expect("an output schema");
        assert_eq!(output.get("type"), Some(&json!("object")), "{}", tool.name);
    }
    let run = &tools[0];
    assert_eq!(
        run.input_schema.get("required"),
        Some(&json!(["task"])),
        "only `task` is required"
    );
    let output_properties = run.output_schema.as_ref().unwrap()["properties"]
        .as_object()
        .unwrap();
    for field in [
        "run_id",
        "sandbox_id",
        "status",
        "final_message",
        "changed_files",
        "diff",
        "diff_truncated",
        "usage",
        "duration_ms",
        "event_count",
        "error",
        "watch_url",
    ] {
        assert!(output_properties.contains_key(field), "RunResult.{field}");
    }
}

#[tokio::test]
async fn tools_list_has_seven_documented_tools() {
    let (client, _, _, _) = connect_pipe(legacy()).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().unwrap().name, "delegate");
    let instructions = info.instructions.as_deref().unwrap_or_default();
    for needle in [
        "stream_session",
        "next_cursor",
        "upstream_auth",
        "delete_sandbox",
        "apply_changes",
        "delegate://runs/{run_id}/patch",
        "CLAUDE_PROJECT_DIR",
        "`worktree`",
    ] {
        assert!(
            instructions.contains(needle),
            "instructions mention {needle}"
        );
    }
    check_tools_list(&client).await;
    client.cancel().await.unwrap();
}

// ---------------------------------------------------------------- calls

async fn check_run_call(client: &Client) {
    let result = client
        .call_tool(call("run_in_sandbox", json!({"task": "write hello.txt"})))
        .await
        .expect("tools/call");
    assert_eq!(result.is_error, Some(false));
    let expected = serde_json::to_value(run_result(RunStatus::Succeeded)).unwrap();
    assert_eq!(result.structured_content.as_ref(), Some(&expected));
    let text = text_of(&result);
    assert!(
        text.starts_with("run run_1 succeeded: I wrote hello.txt."),
        "{text}"
    );
    assert!(text.contains("changed: hello.txt"), "{text}");
    let typed: RunResult = result.into_typed().unwrap();
    assert_eq!(typed, run_result(RunStatus::Succeeded));
}

#[tokio::test]
async fn run_returns_structured_content_and_a_summary() {
    let (client, _, recorder, _) = connect_pipe(legacy()).await;
    check_run_call(&client).await;
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "run_in_sandbox");
    assert_eq!(
        calls[0].1,
        Caller {
            user_id: "local-user".into(),
            token_id: None,
            client: Some("test-client".into()),
            workspace_id: None,
        },
        "the fixed caller, with the client's name from initialize"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn every_tool_answers_with_its_output() {
    let (client, _, _, _) = connect_pipe(legacy()).await;
    let cases = [
        (
            "create_sandbox",
            json!({"name": "warm one", "files": {"a.txt": "x"}}),
            serde_json::to_value(sandbox("sbx_new")).unwrap(),
        ),
        (
            "stream_session",
            json!({"run_id": "run_9", "after": 3}),
            json!({"run_id": "run_9", "status": "succeeded", "events": [
                {"seq": 4, "ts": 1_700_000_000_000i64, "type": "text", "data": {"text": "done"}}
            ], "next_cursor": 4, "done": true}),
        ),
        (
            "list_sandboxes",
            json!({}),
            json!({"sandboxes": [serde_json::to_value(sandbox("sbx_1")).unwrap()]}),
        ),
        (
            "delete_sandbox",
            json!({"sandbox_id": "sbx_1"}),
            json!({"sandbox_id": "sbx_1", "status": "deleted"}),
        ),
        (
            "cancel_run",
            json!({"run_id": "run_1"}),
            json!({"run_id": "run_1", "status": "cancelled"}),
        ),
    ];
    for (tool, arguments, expected) in cases {
        let result = client.call_tool(call(tool, arguments)).await.expect(tool);
        assert_eq!(result.is_error, Some(false), "{tool}");
        assert_eq!(result.structured_content, Some(expected), "{tool}");
        assert!(!text_of(&result).is_empty(), "{tool} has a text summary");
    }
    // No arguments at all is the same as `{}` for a tool without required fields.
    let result = client
        .call_tool(CallToolRequestParams::new("list_sandboxes"))
        .await
        .expect("list_sandboxes without arguments");
    assert_eq!(result.is_error, Some(false));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn domain_errors_are_tool_errors() {
    let (client, _, _, _) = connect_pipe(legacy()).await;
    let result = client
        .call_tool(call("delete_sandbox", json!({"sandbox_id": "sbx_missing"})))
        .await
        .expect("a tool error is a result");
    assert_eq!(result.is_error, Some(true));
    assert_eq!(text_of(&result), "not found: sandbox sbx_missing");

    let result = client
        .call_tool(call("run_in_sandbox", json!({"task": "too big"})))
        .await
        .expect("a tool error is a result");
    assert_eq!(result.is_error, Some(true));
    assert_eq!(text_of(&result), "invalid input: task is over 1 MiB");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn bad_arguments_are_invalid_params() {
    let (client, _, recorder, _) = connect_pipe(legacy()).await;
    let error = client
        .call_tool(call("run_in_sandbox", json!({"model": "x"})))
        .await
        .expect_err("missing task");
    let message = invalid_params(error);
    assert!(message.contains("`task`"), "{message}");

    let error = client
        .call_tool(call(
            "run_in_sandbox",
            json!({"task": "t", "colour": "red"}),
        ))
        .await
        .expect_err("unknown field");
    let message = invalid_params(error);
    assert!(message.contains("unknown field `colour`"), "{message}");

    let error = client
        .call_tool(call(
            "run_in_sandbox",
            json!({"task": "t", "timeout_seconds": -5}),
        ))
        .await
        .expect_err("ill-typed field");
    invalid_params(error);

    let error = client
        .call_tool(call("delete_sandbox", json!({"sandbox_id": 7})))
        .await
        .expect_err("ill-typed field");
    invalid_params(error);

    let error = client
        .call_tool(call("no_such_tool", json!({})))
        .await
        .expect_err("unknown tool");
    let message = invalid_params(error);
    assert!(message.contains("no_such_tool"), "{message}");

    assert!(recorder.calls().is_empty(), "nothing reached the executor");
    // The connection is still usable.
    check_run_call(&client).await;
    client.cancel().await.unwrap();
}

// ---------------------------------------------------------------- progress and cancellation

async fn check_progress(client: &Client, handler: &TestClient) {
    handler.progress.lock().unwrap().clear();
    let request = ClientRequest::CallToolRequest(Request::new(call(
        "run_in_sandbox",
        json!({"task": "progress"}),
    )));
    let handle = client
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .expect("request sent");
    let token = handle.progress_token.clone();
    let response = tokio::time::timeout(WAIT, handle.await_response())
        .await
        .expect("in time")
        .expect("response");
    assert!(matches!(response, ServerResult::CallToolResult(_)));
    // Progress is sent before the response; give the client's dispatch a moment to record it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while handler.progress.lock().unwrap().len() < PROGRESS_STEPS as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "all progress arrives"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let progress = handler.progress.lock().unwrap().clone();
    let seqs: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    let expected: Vec<f64> = (1..=PROGRESS_STEPS).map(|s| s as f64).collect();
    assert_eq!(seqs, expected, "in order, none lost");
    for p in &progress {
        assert_eq!(p.progress_token, token);
        assert_eq!(
            p.message.as_deref(),
            Some(format!("step {}", p.progress).as_str())
        );
    }
}

#[tokio::test]
async fn progress_is_forwarded_in_order() {
    let (client, handler, _, _) = connect_pipe(legacy()).await;
    check_progress(&client, &handler).await;
    client.cancel().await.unwrap();
}

async fn check_cancel(client: &Client, recorder: &Recorder) {
    let request = ClientRequest::CallToolRequest(Request::new(call(
        "run_in_sandbox",
        json!({"task": "hang"}),
    )));
    let handle = client
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .expect("request sent");
    tokio::time::timeout(WAIT, recorder.hanging.notified())
        .await
        .expect("the run started");
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .expect("cancel sent");
    tokio::time::timeout(WAIT, recorder.cleaned_up.notified())
        .await
        .expect("the run was cancelled and cleaned up");
    let recorded = recorder.recorded.lock().unwrap();
    assert!(recorded.run_cancelled && recorded.cleanup_done);
}

#[tokio::test]
async fn cancelling_the_call_cancels_the_run() {
    let (client, _, recorder, _) = connect_pipe(legacy()).await;
    check_cancel(&client, &recorder).await;
    // The connection survives a cancelled call.
    check_run_call(&client).await;
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn closing_the_connection_cancels_a_running_call() {
    let (client, _, recorder, server_task) = connect_pipe(legacy()).await;
    let peer = client.peer().clone();
    let run = tokio::spawn(async move {
        let _ = peer
            .call_tool(call("run_in_sandbox", json!({"task": "hang"})))
            .await;
    });
    tokio::time::timeout(WAIT, recorder.hanging.notified())
        .await
        .expect("the run started");
    client.cancel().await.unwrap();
    tokio::time::timeout(WAIT, recorder.cleaned_up.notified())
        .await
        .expect("the run was cancelled and cleaned up");
    tokio::time::timeout(WAIT, server_task)
        .await
        .expect("the server stops when the client goes")
        .unwrap();
    run.abort();
}

// ---------------------------------------------------------------- the 2026-07-28 era over a pipe

#[tokio::test]
async fn discover_era_over_a_pipe() {
    let (client, handler, recorder, _) = connect_pipe(modern()).await;
    check_tools_list(&client).await;
    check_run_call(&client).await;
    check_progress(&client, &handler).await;
    check_cancel(&client, &recorder).await;
    assert_eq!(
        recorder.calls()[0].1.client.as_deref(),
        Some("test-client"),
        "the client's name from the request's _meta"
    );
    client.cancel().await.unwrap();
}

// ---------------------------------------------------------------- HTTP

/// The server's auth middleware, as far as MCP cares: a `Caller` in the request's extensions.
async fn insert_caller(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    request.extensions_mut().insert(Caller {
        user_id: "http-user".into(),
        token_id: Some("tok_1".into()),
        client: None,
        workspace_id: None,
    });
    next.run(request).await
}

struct HttpServer {
    url: String,
    recorder: Arc<Recorder>,
    shutdown: CancellationToken,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_http(with_auth: bool) -> HttpServer {
    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let mcp = http_service(
        recorder.clone(),
        HttpConfig {
            allowed_hosts: vec!["127.0.0.1".into(), "localhost".into()],
            shutdown: shutdown.clone(),
            max_sessions: None,
            options: Default::default(),
        },
    );
    let mut app = axum::Router::new().nest_service("/mcp", mcp);
    if with_auth {
        app = app.layer(axum::middleware::from_fn(insert_caller));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    HttpServer {
        url: format!("http://{address}/mcp"),
        recorder,
        shutdown,
    }
}

async fn connect_http(server: &HttpServer, lifecycle: ClientLifecycleMode) -> (Client, TestClient) {
    let handler = TestClient::default();
    let transport = StreamableHttpClientTransport::from_uri(server.url.clone());
    let client = handler
        .clone()
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("client connects over HTTP");
    (client, handler)
}

fn http_caller() -> Caller {
    Caller {
        user_id: "http-user".into(),
        token_id: Some("tok_1".into()),
        client: Some("test-client".into()),
        workspace_id: None,
    }
}

/// Each protocol era over HTTP: tools, a run, progress, cancellation (without a session, the call's
/// HTTP stream closing is its cancellation) and bad arguments, every call under the middleware's
/// caller. `negotiated`: the protocol version the era's handshake settles on.
#[rstest]
#[case::http_session_era(legacy(), Some(ProtocolVersion::V_2025_11_25))]
#[case::http_stateless_era(modern(), None)]
#[tokio::test]
async fn http_era(
    #[case] lifecycle: ClientLifecycleMode,
    #[case] negotiated: Option<ProtocolVersion>,
) {
    let server = start_http(true).await;
    let (client, handler) = connect_http(&server, lifecycle).await;
    if let Some(version) = negotiated {
        assert_eq!(client.peer_info().unwrap().protocol_version, version);
    }
    check_tools_list(&client).await;
    check_run_call(&client).await;
    check_progress(&client, &handler).await;
    check_cancel(&client, &server.recorder).await;
    for (_, caller) in server.recorder.calls() {
        assert_eq!(caller, http_caller(), "the middleware's caller, named");
    }
    let error = client
        .call_tool(call("run_in_sandbox", json!({})))
        .await
        .expect_err("missing task");
    assert!(invalid_params(error).contains("`task`"));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn http_without_a_caller_is_refused() {
    let server = start_http(false).await;
    let (client, _) = connect_http(&server, legacy()).await;
    // Listing needs no caller; running does.
    check_tools_list(&client).await;
    let error = client
        .call_tool(call("list_sandboxes", json!({})))
        .await
        .expect_err("no caller");
    match error {
        ServiceError::McpError(data) => {
            assert_eq!(data.code, ErrorCode::INTERNAL_ERROR);
            assert!(data.message.contains("unauthorized"), "{}", data.message);
        }
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
    assert!(server.recorder.calls().is_empty());
    client.cancel().await.unwrap();
}

/// Raw requests straight into the tower service: host checking and the plain-JSON reply of the
/// stateless era, as a client without an MCP SDK sees them.
#[tokio::test]
async fn http_raw_requests() {
    let recorder = Arc::new(Recorder::default());
    let service = http_service(
        recorder.clone(),
        HttpConfig {
            allowed_hosts: vec!["delegate.example".into()],
            shutdown: CancellationToken::new(),
            max_sessions: None,
            options: Default::default(),
        },
    );
    let post = |host: &str, body: Value| {
        let method = body["method"].as_str().unwrap_or_default().to_owned();
        let mut request = http::Request::post("http://delegate.example/mcp")
            .header("host", host)
            .header("mcp-method", method)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .body(body.to_string())
            .unwrap();
        // As the auth middleware inserts it: the client's name is for the MCP layer to fill.
        request.extensions_mut().insert(Caller {
            client: None,
            ..http_caller()
        });
        request
    };
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}
    }}});
    let response = service.handle(post("evil.example", list.clone())).await;
    assert_eq!(
        response.status(),
        http::StatusCode::FORBIDDEN,
        "DNS rebinding"
    );

    let response = service.handle(post("delegate.example", list)).await;
    let status = response.status();
    let body = body_json(response).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["result"]["tools"].as_array().map(Vec::len), Some(7));

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "delete_sandbox", "arguments": {"sandbox_id": "sbx_missing"}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}
    }}});
    let mut request = post("delegate.example", call);
    let name = http::HeaderValue::from_static("delete_sandbox");
    request.headers_mut().insert("mcp-name", name);
    let response = service.handle(request).await;
    let status = response.status();
    let body = body_json(response).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!(body["result"]["isError"], json!(true), "{body}");
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1.client.as_deref(), Some("raw"));
}

async fn body_json<B>(response: http::Response<B>) -> Value
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let body = axum::body::Body::new(response.into_body());
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Any JSON object as arguments must come back as a result or a JSON-RPC error, never a panic or
/// a dead connection.
#[tokio::test]
async fn odd_arguments_never_break_the_server() {
    let (client, _, _, _) = connect_pipe(legacy()).await;
    let odd: Vec<JsonObject> = [
        json!({"task": null}),
        json!({"task": ""}),
        json!({"task": "t", "files": {"../x": 5}}),
        json!({"task": "t", "files": []}),
        json!({"task": "t", "timeout_seconds": 1e300}),
        json!({"task": "t", "wait": "yes"}),
        json!({"task": {"nested": [1, 2, {"deep": null}]}}),
        json!({"task": "\u{0}\u{ffff}"}),
    ]
    .into_iter()
    .map(|v| v.as_object().unwrap().clone())
    .collect();
    for arguments in odd {
        for tool in [
            "run_in_sandbox",
            "stream_session",
            "delete_sandbox",
            "cancel_run",
        ] {
            let _ = client
                .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments.clone()))
                .await;
        }
    }
    check_run_call(&client).await;
    client.cancel().await.unwrap();
}

// ---------------------------------------------------------------- repositories: roots, patches

#[tokio::test]
async fn roots_are_asked_only_for_a_delegator_that_reads_local_repositories() {
    let handler = TestClient {
        roots: Some(vec![
            "file:///work/project",
            "https://example.com/not-a-dir",
        ]),
        ..TestClient::default()
    };
    let local = Recorder {
        local: true,
        ..Recorder::default()
    };
    let (client, handler, recorder, _) = connect_pipe_with(local, handler, legacy()).await;
    check_run_call(&client).await;
    assert_eq!(*handler.roots_asked.lock().unwrap(), 1);
    // `none` and URLs need no local root.
    for repo in ["none", "https://example.com/r.git"] {
        let result = client
            .call_tool(call("run_in_sandbox", json!({"task": "t", "repo": repo})))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(false));
    }
    assert_eq!(
        *handler.roots_asked.lock().unwrap(),
        1,
        "asked only when needed"
    );
    let seen = recorder.roots_seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].roots,
        [std::path::PathBuf::from("/work/project")],
        "file:// roots only, in order"
    );
    assert_eq!(seen[1], ClientRoots::default());
    client.cancel().await.unwrap();

    // A delegator that cannot read local files never asks.
    let handler = TestClient {
        roots: Some(vec!["file:///work/project"]),
        ..TestClient::default()
    };
    let (client, handler, recorder, _) =
        connect_pipe_with(Recorder::default(), handler, legacy()).await;
    check_run_call(&client).await;
    assert_eq!(*handler.roots_asked.lock().unwrap(), 0);
    assert_eq!(
        recorder.roots_seen.lock().unwrap()[0],
        ClientRoots::default()
    );
    client.cancel().await.unwrap();

    // A client without the roots capability is not asked; the call still runs.
    let local = Recorder {
        local: true,
        ..Recorder::default()
    };
    let (client, handler, recorder, _) =
        connect_pipe_with(local, TestClient::default(), legacy()).await;
    check_run_call(&client).await;
    assert_eq!(*handler.roots_asked.lock().unwrap(), 0);
    assert_eq!(
        recorder.roots_seen.lock().unwrap()[0],
        ClientRoots::default()
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_runs_patch_is_a_resource() {
    let (client, _, recorder, _) = connect_pipe(legacy()).await;
    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].uri_template, "delegate://runs/{run_id}/patch");
    assert_eq!(templates[0].mime_type.as_deref(), Some("text/x-diff"));

    let read = client
        .read_resource(ReadResourceRequestParams::new(
            "delegate://runs/run_1/patch",
        ))
        .await
        .expect("resources/read");
    match &read.contents[..] {
        [
            ResourceContents::TextResourceContents {
                uri,
                mime_type,
                text,
                ..
            },
        ] => {
            assert_eq!(uri, "delegate://runs/run_1/patch");
            assert_eq!(mime_type.as_deref(), Some("text/x-diff"));
            assert_eq!(text, PATCH);
        }
        other => panic!("one text content expected, got {other:?}"),
    }
    let calls = recorder.calls();
    assert_eq!(calls.last().unwrap().0, "read_patch");

    let error = client
        .read_resource(ReadResourceRequestParams::new(
            "delegate://runs/run_big/patch",
        ))
        .await
        .expect_err("over the cap");
    let ServiceError::McpError(data) = error else {
        panic!("a JSON-RPC error")
    };
    assert!(data.message.contains("patch_url"), "{}", data.message);
    for uri in [
        "delegate://runs/run_none/patch",
        "delegate://runs/../patch",
        "file:///etc/passwd",
    ] {
        let error = client
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .expect_err(uri);
        let ServiceError::McpError(data) = error else {
            panic!("a JSON-RPC error")
        };
        assert_eq!(data.code, ErrorCode::RESOURCE_NOT_FOUND, "{uri}: {data:?}");
    }

    // A run with a commit links to its patch; one without does not.
    let result = client
        .call_tool(call("run_in_sandbox", json!({"task": "commit"})))
        .await
        .unwrap();
    let links: Vec<String> = result
        .content
        .iter()
        .filter_map(|c| c.as_resource_link().map(|l| l.uri.clone()))
        .collect();
    assert_eq!(links, ["delegate://runs/run_1/patch"]);
    let result = client
        .call_tool(call("run_in_sandbox", json!({"task": "no commit"})))
        .await
        .unwrap();
    assert!(
        result
            .content
            .iter()
            .all(|c| c.as_resource_link().is_none())
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn apply_changes_needs_delegate_on_the_callers_machine() {
    let (client, _, _, _) = connect_pipe(legacy()).await;
    let result = client
        .call_tool(call(
            "apply_changes",
            json!({"run_id": "run_1", "to": "worktree"}),
        ))
        .await
        .expect("a tool error is a result");
    assert_eq!(result.is_error, Some(true));
    let text = text_of(&result);
    assert!(text.contains("needs delegate on your machine"), "{text}");
    assert!(text.contains("patch_url"), "{text}");
    let error = client
        .call_tool(call(
            "apply_changes",
            json!({"run_id": "r", "to": "nowhere"}),
        ))
        .await
        .expect_err("bad target");
    assert!(invalid_params(error).contains("`to`"));
    client.cancel().await.unwrap();
}

/// Sessions over HTTP are capped: past the limit `initialize` is refused with a message that
/// says why, and closing a session frees its slot.
#[tokio::test]
async fn http_sessions_are_capped() {
    let service = http_service(
        Arc::new(Recorder::default()),
        HttpConfig {
            allowed_hosts: vec!["delegate.example".into()],
            shutdown: CancellationToken::new(),
            max_sessions: Some(2),
            options: Default::default(),
        },
    );
    let initialize = || {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}});
        let mut request = http::Request::post("http://delegate.example/mcp")
            .header("host", "delegate.example")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string())
            .unwrap();
        request.extensions_mut().insert(http_caller());
        request
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = service.handle(initialize()).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        ids.push(response.headers()["mcp-session-id"].clone());
    }
    let refused = service.handle(initialize()).await;
    assert!(!refused.status().is_success(), "{}", refused.status());
    let body = body_json(refused).await;
    assert!(body.to_string().contains("too many MCP sessions"), "{body}");

    let mut close = http::Request::delete("http://delegate.example/mcp")
        .header("host", "delegate.example")
        .header("mcp-session-id", ids[0].clone())
        .body(String::new())
        .unwrap();
    close.extensions_mut().insert(http_caller());
    assert!(service.handle(close).await.status().is_success());
    let again = service.handle(initialize()).await;
    assert_eq!(again.status(), http::StatusCode::OK);
}

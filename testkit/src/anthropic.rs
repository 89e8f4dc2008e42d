//! Scripted fake Anthropic upstream.
//!
//! [`FakeAnthropic`] is an HTTP server that speaks the Anthropic Messages API wire format closely
//! enough that the real opencode binary (through delegate's proxy) cannot tell it from the real
//! thing: `POST /v1/messages` answers with a `text/event-stream` of `message_start`, `ping`,
//! `content_block_start`, `content_block_delta` (`text_delta` / `input_json_delta`),
//! `content_block_stop`, `message_delta` and `message_stop` events, each flushed separately, and
//! errors come in Anthropic's JSON error shape with a `request-id` header.
//!
//! What it answers is chosen by a [`Script`], per request and from the request body alone, so
//! several concurrent opencode runs can share one fake:
//! - a request without `tools` is opencode's title request and gets a short text ("Test title"),
//!   except that error, mid-stream-error and hang scripts apply to every request, as a broken real
//!   API would;
//! - for [`Script::Tool`], a request whose last user message carries a `tool_result` gets the final
//!   text, any other request gets the `tool_use`.
//!
//! Every request is recorded ([`FakeAnthropic::requests`]), including ones answered with errors.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted; opencode's requests are tens of KiB.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The text every title request (a request without `tools`) gets.
pub const TITLE_TEXT: &str = "Test title";
/// Placeholder in [`Script::Tool`]'s `final_text` replaced by the text of the tool result.
pub const TOOL_RESULT_PLACEHOLDER: &str = "{tool_result}";
/// `usage.input_tokens` reported in every `message_start`.
pub const INPUT_TOKENS: u64 = 100;
/// `usage.output_tokens` reported in every `message_delta`.
pub const OUTPUT_TOKENS: u64 = 20;
/// Characters per `text_delta` / `input_json_delta` chunk, so clients really reassemble pieces.
const CHUNK_CHARS: usize = 12;

/// What the fake answers. Applied to each request independently; see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub enum Script {
    /// Main requests: the first step answers a `tool_use` of `tool` with `input`; once a
    /// `tool_result` arrives, answer `final_text`, in which [`TOOL_RESULT_PLACEHOLDER`] is replaced
    /// by the tool result's text.
    Tool {
        /// Tool name as opencode offers it (`write`, `read`, `bash`, ...).
        tool: String,
        /// Tool input, streamed as `input_json_delta` chunks.
        input: Value,
        /// Text answered after the tool ran.
        final_text: String,
    },
    /// Answer this text and stop (`end_turn`).
    Text(String),
    /// Answer every request with an HTTP error in Anthropic's error shape.
    Status {
        /// HTTP status, e.g. 401, 500, 529.
        status: u16,
        /// Anthropic error type, e.g. `authentication_error`, `api_error`, `overloaded_error`.
        error_type: String,
        /// Human-readable message.
        message: String,
        /// Sent as the `retry-after-ms` header; `Some(0)` makes opencode retry at once.
        retry_after_ms: Option<u64>,
    },
    /// Start a stream, send one text delta, then an SSE `event: error` (`overloaded_error`).
    MidStreamError,
    /// Like `then`, but every SSE event (or the error reply) is delayed by `per_event_delay_ms`.
    Slow {
        /// Delay before each event, in milliseconds.
        per_event_delay_ms: u64,
        /// What to answer, slowly.
        then: Box<Script>,
    },
    /// Send the response headers and `message_start`, then nothing until the client goes away
    /// (or the fake is dropped, which aborts the connection).
    Hang,
}

impl Script {
    /// `write` tool call creating `path` with `content`, then `final_text`.
    pub fn write_file(path: &str, content: &str, final_text: &str) -> Script {
        Script::Tool {
            tool: "write".to_owned(),
            input: json!({ "filePath": path, "content": content }),
            final_text: final_text.to_owned(),
        }
    }

    /// `read` tool call of `path`; the final text is exactly what the tool returned.
    pub fn read_file(path: &str) -> Script {
        Script::Tool {
            tool: "read".to_owned(),
            input: json!({ "filePath": path }),
            final_text: TOOL_RESULT_PLACEHOLDER.to_owned(),
        }
    }

    /// `bash` tool call running `command`, then `final_text`.
    pub fn bash(command: &str, final_text: &str) -> Script {
        Script::Tool {
            tool: "bash".to_owned(),
            input: json!({ "command": command, "description": "Run a command" }),
            final_text: final_text.to_owned(),
        }
    }

    /// Plain text answer.
    pub fn text(text: &str) -> Script {
        Script::Text(text.to_owned())
    }

    /// HTTP error `status` with the error type and message the real API uses for it, no
    /// `retry-after-ms`.
    pub fn status(status: u16) -> Script {
        let (error_type, message) = match status {
            400 => ("invalid_request_error", "Invalid request"),
            401 => ("authentication_error", "invalid x-api-key"),
            403 => (
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            404 => ("not_found_error", "Not found"),
            413 => (
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
            ),
            429 => ("rate_limit_error", "Rate limited"),
            529 => ("overloaded_error", "Overloaded"),
            _ => ("api_error", "Internal server error"),
        };
        Script::Status {
            status,
            error_type: error_type.to_owned(),
            message: message.to_owned(),
            retry_after_ms: None,
        }
    }

    /// 529 `overloaded_error` with `retry-after-ms: 0`, so opencode's retries are immediate.
    pub fn overloaded() -> Script {
        Script::Status {
            status: 529,
            error_type: "overloaded_error".to_owned(),
            message: "Overloaded".to_owned(),
            retry_after_ms: Some(0),
        }
    }

    /// `then`, with every SSE event delayed by `per_event_delay_ms`.
    pub fn slow(per_event_delay_ms: u64, then: Script) -> Script {
        Script::Slow {
            per_event_delay_ms,
            then: Box::new(then),
        }
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 1-based arrival number; also used in `request-id: req_fake_N`.
    pub number: u64,
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path without the query, e.g. `/v1/messages`.
    pub path: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Value::Null` if it was not JSON.
    pub body: Value,
    /// When the request (with its whole body) had arrived.
    pub at: Instant,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A `POST /v1/messages` without tools: opencode's title request.
    pub fn is_title_request(&self) -> bool {
        self.path == "/v1/messages" && !has_tools(&self.body)
    }

    /// Text of the last user message: its text blocks and tool results, joined by newlines.
    pub fn last_user_text(&self) -> String {
        last_user_content(&self.body)
            .map(content_text)
            .unwrap_or_default()
    }
}

/// A running fake; dropping it stops the server and aborts streams still open.
pub struct FakeAnthropic {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    script: Mutex<Script>,
    requests: Mutex<Vec<RecordedRequest>>,
    request_count: watch::Sender<usize>,
    shutdown: CancellationToken,
}

impl FakeAnthropic {
    /// Starts the fake on `127.0.0.1` with an ephemeral port.
    pub async fn start(script: Script) -> io::Result<FakeAnthropic> {
        FakeAnthropic::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), script).await
    }

    /// Starts the fake on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr, script: Script) -> io::Result<FakeAnthropic> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            requests: Mutex::new(Vec::new()),
            request_count: watch::Sender::new(0),
            shutdown: CancellationToken::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let stop = shared.shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            // An accept error ends the fake; the test then sees connection errors.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await;
        });
        Ok(FakeAnthropic { addr, shared })
    }

    /// `http://127.0.0.1:PORT`, without `/v1`, as `ANTHROPIC_BASE_URL` expects.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until at least `n` requests have arrived and returns all of them. Wrap it in a
    /// timeout: it waits forever if they never come.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<RecordedRequest> {
        let mut rx = self.shared.request_count.subscribe();
        // Cannot fail: the sender lives in `self.shared`.
        let _ = rx.wait_for(|count| *count >= n).await;
        self.requests()
    }

    /// Replaces the script for requests arriving from now on.
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl std::fmt::Debug for FakeAnthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAnthropic")
            .field("addr", &self.addr)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let parsed = match &bytes {
        Ok(b) => serde_json::from_slice::<Value>(b).ok(),
        Err(_) => None,
    };
    // The script is read before the request is counted: a test that waits for request n and
    // then switches the script must not change the reply to request n itself.
    let script = lock(&shared.script).clone();
    let number = {
        let mut requests = lock(&shared.requests);
        let number = requests.len() as u64 + 1;
        requests.push(RecordedRequest {
            number,
            method: method.to_string(),
            path: uri.path().to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: parsed.clone().unwrap_or(Value::Null),
            at: Instant::now(),
        });
        shared.request_count.send_replace(requests.len());
        number
    };
    let request_id = format!("req_fake_{number}");

    let route = (method == Method::POST, uri.path());
    let is_messages = route == (true, "/v1/messages");
    let is_count = route == (true, "/v1/messages/count_tokens");
    if !is_messages && !is_count {
        return error_response(
            &request_id,
            &ErrorReply::new(404, "not_found_error", "Not found"),
        );
    }
    if bytes.is_err() {
        let reply = ErrorReply::new(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        );
        return error_response(&request_id, &reply);
    }
    let Some(body) = parsed.filter(Value::is_object) else {
        let reply = ErrorReply::new(
            400,
            "invalid_request_error",
            "Request body is not valid JSON",
        );
        return error_response(&request_id, &reply);
    };
    if body.get("messages").and_then(Value::as_array).is_none() {
        let reply = ErrorReply::new(400, "invalid_request_error", "messages: Field required");
        return error_response(&request_id, &reply);
    }
    if is_count {
        return with_request_id(
            json_body(StatusCode::OK, &json!({ "input_tokens": 10 })),
            &request_id,
        );
    }
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        let reply = ErrorReply::new(400, "invalid_request_error", "model: Field required");
        return error_response(&request_id, &reply);
    };

    let plan = plan(&script, &body, number);
    let ctx = Reply {
        request_id,
        message_id: format!("msg_fake_{number}"),
        model: model.to_owned(),
        shutdown: shared.shutdown.clone(),
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        stream_response(ctx, plan).await
    } else {
        json_response(ctx, plan).await
    }
}

/// Per-request constants of a reply.
struct Reply {
    request_id: String,
    message_id: String,
    model: String,
    shutdown: CancellationToken,
}

struct ErrorReply {
    status: u16,
    error_type: String,
    message: String,
    retry_after_ms: Option<u64>,
}

impl ErrorReply {
    fn new(status: u16, error_type: &str, message: &str) -> ErrorReply {
        ErrorReply {
            status,
            error_type: error_type.to_owned(),
            message: message.to_owned(),
            retry_after_ms: None,
        }
    }
}

enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

enum PlanKind {
    Error(ErrorReply),
    Message {
        blocks: Vec<Block>,
        stop_reason: &'static str,
    },
    MidStreamError,
    Hang,
}

struct Plan {
    delay: Duration,
    kind: PlanKind,
}

fn plan(script: &Script, body: &Value, number: u64) -> Plan {
    let text = |t: &str| PlanKind::Message {
        blocks: vec![Block::Text(t.to_owned())],
        stop_reason: "end_turn",
    };
    let title = !has_tools(body);
    let kind = match script {
        Script::Tool { .. } | Script::Text(_) if title => text(TITLE_TEXT),
        Script::Tool {
            tool,
            input,
            final_text,
        } => match last_tool_result(body) {
            Some(result) => text(&final_text.replace(TOOL_RESULT_PLACEHOLDER, &result)),
            None => PlanKind::Message {
                blocks: vec![Block::ToolUse {
                    id: format!("toolu_{number:04}"),
                    name: tool.clone(),
                    input: input.clone(),
                }],
                stop_reason: "tool_use",
            },
        },
        Script::Text(t) => text(t),
        Script::Status {
            status,
            error_type,
            message,
            retry_after_ms,
        } => PlanKind::Error(ErrorReply {
            status: *status,
            error_type: error_type.clone(),
            message: message.clone(),
            retry_after_ms: *retry_after_ms,
        }),
        Script::MidStreamError => PlanKind::MidStreamError,
        Script::Hang => PlanKind::Hang,
        Script::Slow {
            per_event_delay_ms,
            then,
        } => {
            let inner = plan(then, body, number);
            return Plan {
                delay: inner.delay + Duration::from_millis(*per_event_delay_ms),
                kind: inner.kind,
            };
        }
    };
    Plan {
        delay: Duration::ZERO,
        kind,
    }
}

fn has_tools(body: &Value) -> bool {
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| !tools.is_empty())
}

fn last_user_content(body: &Value) -> Option<&Value> {
    body.get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?
        .get("content")
}

/// Text of the `tool_result` blocks in the last user message, if it has any.
fn last_tool_result(body: &Value) -> Option<String> {
    let blocks = last_user_content(body)?.as_array()?;
    let results: Vec<String> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|b| b.get("content").map(content_text).unwrap_or_default())
        .collect();
    (!results.is_empty()).then(|| results.join("\n"))
}

/// Text of a message or tool-result `content`: a string, or blocks whose text parts are joined.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b.get("text").and_then(Value::as_str).map(str::to_owned),
                Some("tool_result") => b.get("content").map(content_text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Splits `s` into pieces of at most `max` characters.
fn chunks(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (count, (i, _)) in s.char_indices().enumerate() {
        if count > 0 && count % max == 0 {
            out.push(&s[start..i]);
            start = i;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

fn error_body(error_type: &str, message: &str) -> Value {
    json!({ "type": "error", "error": { "type": error_type, "message": message } })
}

fn error_response(request_id: &str, error: &ErrorReply) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_body(status, &error_body(&error.error_type, &error.message));
    if let Some(ms) = error.retry_after_ms {
        response
            .headers_mut()
            .insert("retry-after-ms", HeaderValue::from(ms));
    }
    with_request_id(response, request_id)
}

/// Sleeps `delay`; false if the fake was stopped meanwhile.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    if delay.is_zero() {
        return !shutdown.is_cancelled();
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

fn stopped_response(request_id: &str) -> Response {
    error_response(
        request_id,
        &ErrorReply::new(503, "api_error", "fake Anthropic stopped"),
    )
}

fn usage_start() -> Value {
    json!({
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    })
}

fn sse(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {}\n\n", type_first(data)))
}

/// Compact JSON with `"type"` first in every object, as the real API writes it (serde_json's map
/// is sorted, and a proxy sniffing `data: {"type":...` should not be fooled by key order).
fn type_first(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                out.push('{');
                let typed = map.get_key_value("type");
                let rest = map.iter().filter(|(k, _)| k.as_str() != "type");
                for (i, (key, v)) in typed.into_iter().chain(rest).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn json_body(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        type_first(value),
    )
        .into_response()
}

/// The SSE events of `kind`, and whether the stream then hangs.
fn sse_events(ctx: &Reply, kind: &PlanKind) -> (Vec<Bytes>, bool) {
    let mut events = vec![
        sse(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": ctx.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": ctx.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": usage_start(),
                },
            }),
        ),
        sse("ping", &json!({ "type": "ping" })),
    ];
    let start = |index: usize, block: Value| {
        sse(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index, "content_block": block }),
        )
    };
    let delta = |index: usize, delta: Value| {
        sse(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        )
    };
    match kind {
        PlanKind::Hang => return (events, true),
        PlanKind::MidStreamError => {
            events.push(start(0, json!({ "type": "text", "text": "" })));
            events.push(delta(0, json!({ "type": "text_delta", "text": "Working" })));
            events.push(sse("error", &error_body("overloaded_error", "Overloaded")));
        }
        PlanKind::Message {
            blocks,
            stop_reason,
        } => {
            for (index, block) in blocks.iter().enumerate() {
                match block {
                    Block::Text(text) => {
                        events.push(start(index, json!({ "type": "text", "text": "" })));
                        for piece in chunks(text, CHUNK_CHARS) {
                            events
                                .push(delta(index, json!({ "type": "text_delta", "text": piece })));
                        }
                    }
                    Block::ToolUse { id, name, input } => {
                        events.push(start(
                            index,
                            json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                        ));
                        // The real API opens with an empty partial_json; clients must cope.
                        let json = input.to_string();
                        for piece in std::iter::once("").chain(chunks(&json, CHUNK_CHARS)) {
                            events.push(delta(
                                index,
                                json!({ "type": "input_json_delta", "partial_json": piece }),
                            ));
                        }
                    }
                }
                events.push(sse(
                    "content_block_stop",
                    &json!({ "type": "content_block_stop", "index": index }),
                ));
            }
            events.push(sse(
                "message_delta",
                &json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": stop_reason, "stop_sequence": null },
                    "usage": { "output_tokens": OUTPUT_TOKENS },
                }),
            ));
            events.push(sse("message_stop", &json!({ "type": "message_stop" })));
        }
        PlanKind::Error(_) => {}
    }
    (events, false)
}

async fn stream_response(ctx: Reply, plan: Plan) -> Response {
    if let PlanKind::Error(error) = &plan.kind {
        if !pause(plan.delay, &ctx.shutdown).await {
            return stopped_response(&ctx.request_id);
        }
        return error_response(&ctx.request_id, error);
    }
    let (events, hang) = sse_events(&ctx, &plan.kind);
    let shutdown = ctx.shutdown.clone();
    let delay = plan.delay;
    let stream = async_stream::stream! {
        for event in events {
            if !pause(delay, &shutdown).await {
                yield Err(io::Error::other("fake Anthropic stopped"));
                return;
            }
            yield Ok::<Bytes, io::Error>(event);
        }
        if hang {
            shutdown.cancelled().await;
            // An error aborts the connection, as a dying server would.
            yield Err(io::Error::other("fake Anthropic stopped"));
        }
    };
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| stopped_response(&ctx.request_id));
    with_request_id(response, &ctx.request_id)
}

async fn json_response(ctx: Reply, plan: Plan) -> Response {
    if !pause(plan.delay, &ctx.shutdown).await {
        return stopped_response(&ctx.request_id);
    }
    let (blocks, stop_reason) = match plan.kind {
        PlanKind::Error(error) => return error_response(&ctx.request_id, &error),
        PlanKind::MidStreamError => {
            let error = ErrorReply::new(529, "overloaded_error", "Overloaded");
            return error_response(&ctx.request_id, &error);
        }
        PlanKind::Hang => {
            ctx.shutdown.cancelled().await;
            return stopped_response(&ctx.request_id);
        }
        PlanKind::Message {
            blocks,
            stop_reason,
        } => (blocks, stop_reason),
    };
    let content: Vec<Value> = blocks
        .into_iter()
        .map(|block| match block {
            Block::Text(text) => json!({ "type": "text", "text": text }),
            Block::ToolUse { id, name, input } => {
                json!({ "type": "tool_use", "id": id, "name": name, "input": input })
            }
        })
        .collect();
    let mut usage = usage_start();
    usage["output_tokens"] = json!(OUTPUT_TOKENS);
    let message = json!({
        "id": ctx.message_id,
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage,
    });
    with_request_id(json_body(StatusCode::OK, &message), &ctx.request_id)
}

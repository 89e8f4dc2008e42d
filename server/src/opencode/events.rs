//! Normalizes opencode output into delegate events.
//!
//! opencode (1.18.x) reports progress two ways, and both end up in one append-only event log:
//!
//! * `opencode run --format json` prints one JSON object per stdout line
//!   (`{"type", "timestamp", "sessionID", "part" | "error"}`); [`parse_run_line`] turns one line into a
//!   [`ParsedEvent`].
//! * `opencode serve` streams `GET /event` as server-sent events whose data is
//!   `{"id", "type", "properties"}`; a [`ServeTracker`] (one per watched session) turns each into a
//!   [`ServeEvent`]. The serve stream is far chattier than `run` (deltas, pending/running tool states,
//!   message and session bookkeeping, every other session of the server), so the tracker folds it down
//!   to the same finished parts `run` prints, which makes both paths produce the same log.
//!
//! Event types delegate does not interpret are never dropped: they become [`AgentEvent::Other`] with
//! their original type, and every [`ParsedEvent`] keeps the original JSON in `raw`.
//!
//! Errors are classified into delegate's [`ErrorKind`] by [`classify_error`].

use std::collections::HashSet;

use delegate_mcp::types::{ErrorKind, Event, Usage};
use serde_json::{Map, Value, json};

/// How many characters of an unparsable line a [`ParseError`] quotes: enough to recognise the line in
/// a log, short enough that a 1 MiB garbage line does not end up in an error message.
const EXCERPT_CHARS: usize = 200;

/// How many characters [`AgentEvent::summary`] keeps: one terminal line of progress.
const SUMMARY_CHARS: usize = 100;

/// One normalized opencode event.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// A finished text part written by the model (the last one is the run's final message).
    Text {
        /// The part's full text.
        text: String,
    },
    /// A finished reasoning part (only when opencode runs with `--thinking`).
    Reasoning {
        /// The reasoning as opencode reported it.
        text: String,
    },
    /// A tool call. From `run` and from the tracker only in a final state (`completed` or `error`).
    Tool {
        /// The tool's name (`bash`, `read`, `edit`, ...).
        tool: String,
        /// opencode's id of the call, unique within the session.
        call_id: String,
        /// `completed`, `error`, `running` or `pending`, as opencode reports it.
        status: String,
        /// opencode's short description of the call, when it gives one.
        title: Option<String>,
        /// The tool's arguments as the model sent them.
        input: Value,
        /// What the tool returned, when it completed.
        output: Option<String>,
        /// Why the tool failed, when its status is `error`.
        error: Option<String>,
    },
    /// A model call began.
    StepStart,
    /// A model call ended; `usage` is that call's tokens and cost.
    StepFinish {
        /// Why the model stopped, as opencode reports it (`stop`, `tool-calls`, ...).
        reason: Option<String>,
        /// That call's tokens and cost.
        usage: Usage,
    },
    /// opencode reported that the session failed.
    Error {
        /// opencode's error name (e.g. `APIError`).
        name: String,
        /// opencode's message, for people.
        message: String,
        /// The HTTP status of the provider's reply, for API errors.
        status_code: Option<u16>,
        /// Whether opencode considers the error worth retrying.
        retryable: Option<bool>,
    },
    /// Any event type delegate does not interpret: kept with its original type, never dropped.
    Other {
        /// The event's original `type`.
        kind: String,
    },
}

/// One event parsed from opencode, with where and when it happened and the JSON it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent {
    /// What happened, normalised.
    pub event: AgentEvent,
    /// The opencode session the event belongs to, when the event names one.
    pub session_id: Option<String>,
    /// Milliseconds since the Unix epoch as opencode stamped the event (`timestamp` of a `run` line,
    /// `properties.time`/`properties.timestamp` of a serve event); `None` when it carries no time.
    pub ts: Option<i64>,
    /// The original JSON object.
    pub raw: Value,
}

impl ParsedEvent {
    /// Builds the wire [`Event`] for the log: `ts` falls back to `now_ms` when opencode gave none.
    pub fn to_event(&self, seq: u64, now_ms: i64) -> Event {
        Event {
            seq,
            ts: self.ts.unwrap_or(now_ms),
            kind: self.event.kind().to_owned(),
            data: self.event.data(),
            raw: Some(self.raw.clone()),
        }
    }
}

/// Why a line or SSE payload from opencode could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The input was empty or only whitespace. `run` callers skip blank lines before parsing; this
    /// variant exists so that one slipping through is reported rather than misread.
    #[error("empty opencode event line")]
    Empty,
    /// The input is not JSON at all (e.g. a stray log line on stdout).
    #[error("opencode event is not JSON ({error}): {excerpt:?}")]
    NotJson {
        /// serde_json's reason, with line and column.
        error: String,
        /// The start of the input, at most ~200 characters, cut on a character boundary.
        excerpt: String,
    },
    /// The input is JSON but not an object.
    #[error("opencode event is JSON {found}, not an object")]
    NotObject {
        /// The JSON type it is instead (`array`, `string`, ...).
        found: &'static str,
    },
    /// The object has no string `type` field.
    #[error("opencode event has no string \"type\" field")]
    MissingType,
}

/// Parses one stdout line of `opencode run --format json`.
///
/// Blank lines give [`ParseError::Empty`]; callers are expected to skip them. Unknown `type`s give
/// [`AgentEvent::Other`]. A known type whose payload lacks its `part` object also becomes `Other`
/// (with `raw` kept) instead of a made-up event; an `error` line always becomes
/// [`AgentEvent::Error`], even without details, because it decides whether the run failed.
pub fn parse_run_line(line: &str) -> Result<ParsedEvent, ParseError> {
    let raw = parse_object(line)?;
    let kind = raw
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ParseError::MissingType)?;
    let part = raw.get("part").filter(|p| p.is_object());

    let event = match (kind, part) {
        ("step_start", Some(_)) => AgentEvent::StepStart,
        ("step_finish", Some(part)) => step_finish(part),
        ("text", Some(part)) => AgentEvent::Text {
            text: str_field(part, "text").unwrap_or_default(),
        },
        ("reasoning", Some(part)) => AgentEvent::Reasoning {
            text: str_field(part, "text").unwrap_or_default(),
        },
        ("tool_use", Some(part)) => tool(part),
        ("error", _) => error_event(raw.get("error")),
        (other, _) => AgentEvent::Other {
            kind: other.to_owned(),
        },
    };

    let session_id =
        str_field(&raw, "sessionID").or_else(|| part.and_then(|p| str_field(p, "sessionID")));
    let ts = raw.get("timestamp").and_then(as_millis);
    Ok(ParsedEvent {
        event,
        session_id,
        ts,
        raw,
    })
}

impl AgentEvent {
    /// The log's `type` for this event: `text`, `reasoning`, `tool`, `step_start`, `step_finish`,
    /// `error`, or for [`AgentEvent::Other`] the original opencode type verbatim.
    pub fn kind(&self) -> &str {
        match self {
            Self::Text { .. } => "text",
            Self::Reasoning { .. } => "reasoning",
            Self::Tool { .. } => "tool",
            Self::StepStart => "step_start",
            Self::StepFinish { .. } => "step_finish",
            Self::Error { .. } => "error",
            Self::Other { kind } => kind,
        }
    }

    /// The normalized fields as a JSON object with snake_case keys (the log's `data`):
    ///
    /// * `text`, `reasoning`: `{"text"}`
    /// * `tool`: `{"tool", "call_id", "status", "title", "input", "output", "error"}`
    /// * `step_start`: `{}`
    /// * `step_finish`: `{"reason", "usage": {"input_tokens", "output_tokens", "cache_read_tokens",
    ///   "cache_write_tokens", "cost_usd"}}`
    /// * `error`: `{"name", "message", "status_code", "retryable", "error_kind"}` where `error_kind` is
    ///   [`classify_error`]'s verdict
    /// * anything else: `{}` (the original is in `raw`)
    pub fn data(&self) -> Value {
        match self {
            Self::Text { text } | Self::Reasoning { text } => json!({ "text": text }),
            Self::Tool {
                tool,
                call_id,
                status,
                title,
                input,
                output,
                error,
            } => json!({
                "tool": tool,
                "call_id": call_id,
                "status": status,
                "title": title,
                "input": input,
                "output": output,
                "error": error,
            }),
            Self::StepStart | Self::Other { .. } => Value::Object(Map::new()),
            Self::StepFinish { reason, usage } => json!({
                "reason": reason,
                "usage": usage,
            }),
            Self::Error {
                name,
                message,
                status_code,
                retryable,
            } => json!({
                "name": name,
                "message": message,
                "status_code": status_code,
                "retryable": retryable,
                "error_kind": classify_error(name, *status_code, message).as_str(),
            }),
        }
    }

    /// One short human line for CLI progress, at most ~100 characters, e.g.
    /// `tool write hello.txt (completed)`, `text: done`, `step finished (stop, 120 tokens)`,
    /// `error APIError: invalid x-api-key`.
    pub fn summary(&self) -> String {
        let line = match self {
            Self::Text { text } => format!("text: {text}"),
            Self::Reasoning { text } => format!("reasoning: {text}"),
            Self::Tool {
                tool,
                status,
                title,
                error,
                ..
            } => {
                let mut s = format!("tool {tool}");
                if let Some(title) = title.as_deref().filter(|t| !t.is_empty()) {
                    s.push(' ');
                    s.push_str(title);
                }
                s.push_str(&format!(" ({status})"));
                if let Some(error) = error {
                    s.push_str(": ");
                    s.push_str(error);
                }
                s
            }
            Self::StepStart => "step started".to_owned(),
            Self::StepFinish { reason, usage } => match reason {
                Some(reason) => {
                    format!("step finished ({reason}, {} tokens)", usage.total_tokens())
                }
                None => format!("step finished ({} tokens)", usage.total_tokens()),
            },
            Self::Error { name, message, .. } => format!("error {name}: {message}"),
            Self::Other { kind } => format!("event {kind}"),
        };
        // Multi-line text would break a one-line progress display.
        let flat: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        truncate_chars(flat.trim(), SUMMARY_CHARS)
    }

    /// For an [`AgentEvent::Error`], delegate's classification of it; `None` for other events.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Error {
                name,
                message,
                status_code,
                ..
            } => Some(classify_error(name, *status_code, message)),
            _ => None,
        }
    }
}

/// Classifies an opencode error into delegate's [`ErrorKind`].
///
/// * `ProviderAuthError`, or `APIError` with status 401/403 → [`ErrorKind::UpstreamAuth`].
/// * `APIError` with status 429 or 5xx (529 included), or message `Overloaded` →
///   [`ErrorKind::UpstreamUnavailable`]: opencode has already retried those, so they stayed down.
/// * Any other `APIError` → [`ErrorKind::UpstreamError`].
/// * An error of another name whose message is an Anthropic error object (opencode reports an SSE
///   `event: error` received mid-stream as `UnknownError` with the upstream JSON as message, e.g.
///   `{"type":"overloaded_error","message":"Overloaded"}`) → by that error's type:
///   `overloaded_error`/`api_error`/`rate_limit_error` → unavailable,
///   `authentication_error`/`permission_error` → auth, other types → upstream error.
/// * Anything else → [`ErrorKind::AgentFailed`].
pub fn classify_error(name: &str, status_code: Option<u16>, message: &str) -> ErrorKind {
    match name {
        "APIError" => match status_code {
            Some(401 | 403) => ErrorKind::UpstreamAuth,
            Some(429 | 500..=599) => ErrorKind::UpstreamUnavailable,
            _ if is_overloaded(message) => ErrorKind::UpstreamUnavailable,
            _ => ErrorKind::UpstreamError,
        },
        "ProviderAuthError" => ErrorKind::UpstreamAuth,
        _ => upstream_error_type(message)
            .map(|t| match t.as_str() {
                "overloaded_error" | "api_error" | "rate_limit_error" => {
                    ErrorKind::UpstreamUnavailable
                }
                "authentication_error" | "permission_error" => ErrorKind::UpstreamAuth,
                _ => ErrorKind::UpstreamError,
            })
            .unwrap_or(ErrorKind::AgentFailed),
    }
}

fn is_overloaded(message: &str) -> bool {
    message.trim().eq_ignore_ascii_case("overloaded")
}

/// The `type` of an Anthropic error object carried as a message: either the inner
/// `{"type": "overloaded_error", "message"}` or the whole `{"type": "error", "error": {...}}` body.
fn upstream_error_type(message: &str) -> Option<String> {
    let trimmed = message.trim();
    if !trimmed.starts_with('{') {
        return None;
    }
    let value: Value = serde_json::from_str(trimmed).ok()?;
    let inner = match value.get("error") {
        Some(inner) if value.get("type").and_then(Value::as_str) == Some("error") => inner,
        _ => &value,
    };
    let kind = inner.get("type").and_then(Value::as_str)?;
    // Only the `*_error` types name an upstream failure; any other JSON message is opencode's own.
    kind.ends_with("_error").then(|| kind.to_owned())
}

/// What one `GET /event` payload of `opencode serve` means for the watched session.
// Not boxed: a `ServeEvent` lives only from `push` to the caller's match, so its size costs nothing,
// and an unboxed `Event(ParsedEvent)` keeps patterns simple.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ServeEvent {
    /// A finished part of the watched session (normalized like a `run` line), a `session.error`, or
    /// an event delegate does not interpret (as [`AgentEvent::Other`]): store it.
    Event(ParsedEvent),
    /// The session went idle (`session.status` idle, or `session.idle`): the prompt's turn is over.
    /// opencode may announce idleness both ways; act on the first.
    Idle,
    /// The session is busy or retrying; the text is for progress display and is not stored.
    Status(String),
    /// Streaming noise that the finished part or the final state already carries; see
    /// [`ServeTracker::push`] for the list.
    Ignore,
    /// An event of another session of the same opencode server.
    OtherSession,
}

/// Turns `opencode serve`'s `GET /event` stream into [`ServeEvent`]s for one session.
///
/// It is stateful because the server echoes the user's own prompt back as a text part; the tracker
/// remembers which messages are the user's (from `message.updated`) and drops their parts.
#[derive(Debug, Clone)]
pub struct ServeTracker {
    session_id: String,
    user_messages: HashSet<String>,
}

impl ServeTracker {
    /// A tracker for the opencode session `session_id` (`ses_...`).
    pub fn new(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            user_messages: HashSet::new(),
        }
    }

    /// The session this tracker watches.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Interprets one SSE `data` payload.
    ///
    /// * Events naming another session (`properties.sessionID`, or the part's or message's
    ///   `sessionID`) → [`ServeEvent::OtherSession`].
    /// * `message.part.updated`: `text`/`reasoning` parts once finished (`time.end` set), `tool` parts
    ///   in state `completed` or `error`, `step-start`, `step-finish` → [`ServeEvent::Event`] with the
    ///   same [`AgentEvent`] a `run` line gives. Parts of user messages, unfinished text/reasoning
    ///   and pending/running tools → [`ServeEvent::Ignore`], because the finished update of the same
    ///   part carries the whole text or tool result. Other part types (`patch`, `file`, `retry`,
    ///   ...) → `Event(Other { kind: "message.part.updated" })` with `raw` kept: the original event
    ///   type, so an unknown kind can never collide with a normalized one.
    /// * `session.error` → `Event(Error)`, also without a `sessionID` (a failure must not be missed).
    /// * `session.status` idle and `session.idle` → [`ServeEvent::Idle`]; busy/retry →
    ///   [`ServeEvent::Status`].
    /// * Ignored as noise: `server.connected` and `server.heartbeat` (connection keep-alive),
    ///   `message.part.delta` and `session.next.*.delta` (streamed fragments of parts reported whole
    ///   later), `message.updated` (message bookkeeping; tokens and finish reason come with
    ///   `step-finish`), `session.created`, `session.updated` (title/token totals),
    ///   `session.diff` (delegate diffs the workspace itself) and `file.watcher.updated` (a
    ///   filesystem echo that also fires for changes nobody in the session made).
    /// * Everything else — of this session or naming no session, e.g. `file.edited`,
    ///   `permission.asked`, `todo.updated` → `Event(Other)` with `raw` kept: unknown events are
    ///   preserved.
    pub fn push(&mut self, data: &str) -> Result<ServeEvent, ParseError> {
        let raw = parse_object(data)?;
        let kind = raw
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ParseError::MissingType)?
            .to_owned();
        let empty = Value::Object(Map::new());
        let props = raw
            .get("properties")
            .filter(|p| p.is_object())
            .unwrap_or(&empty);
        let part = props.get("part").filter(|p| p.is_object());

        let session_id = str_field(props, "sessionID")
            .or_else(|| part.and_then(|p| str_field(p, "sessionID")))
            .or_else(|| props.get("info").and_then(|i| str_field(i, "sessionID")));
        if session_id.as_deref().is_some_and(|s| s != self.session_id) {
            return Ok(ServeEvent::OtherSession);
        }

        let event = match kind.as_str() {
            "server.connected"
            | "server.heartbeat"
            | "message.part.delta"
            | "session.created"
            | "session.updated"
            | "session.diff"
            | "file.watcher.updated" => {
                return Ok(ServeEvent::Ignore);
            }
            k if k.starts_with("session.next.") && k.ends_with(".delta") => {
                return Ok(ServeEvent::Ignore);
            }
            "message.updated" => {
                if let Some(info) = props.get("info")
                    && info.get("role").and_then(Value::as_str) == Some("user")
                    && let Some(id) = str_field(info, "id")
                {
                    self.user_messages.insert(id);
                }
                return Ok(ServeEvent::Ignore);
            }
            "session.idle" => return Ok(ServeEvent::Idle),
            "session.status" => return Ok(session_status(props.get("status"))),
            "session.error" => error_event(props.get("error")),
            "message.part.updated" => match part {
                Some(part) => match self.part_event(part) {
                    Some(event) => event,
                    None => return Ok(ServeEvent::Ignore),
                },
                None => AgentEvent::Other { kind },
            },
            _ => AgentEvent::Other { kind },
        };

        let ts = props
            .get("time")
            .and_then(as_millis)
            .or_else(|| props.get("timestamp").and_then(as_millis));
        Ok(ServeEvent::Event(ParsedEvent {
            event,
            session_id,
            ts,
            raw,
        }))
    }

    /// The event for a `message.part.updated` part, or `None` when it is noise.
    fn part_event(&self, part: &Value) -> Option<AgentEvent> {
        if str_field(part, "messageID").is_some_and(|m| self.user_messages.contains(&m)) {
            return None;
        }
        let finished = || part.pointer("/time/end").is_some_and(|e| !e.is_null());
        match part.get("type").and_then(Value::as_str) {
            Some("text") => finished().then(|| AgentEvent::Text {
                text: str_field(part, "text").unwrap_or_default(),
            }),
            Some("reasoning") => finished().then(|| AgentEvent::Reasoning {
                text: str_field(part, "text").unwrap_or_default(),
            }),
            Some("tool") => {
                let status = part.pointer("/state/status").and_then(Value::as_str);
                matches!(status, Some("completed" | "error")).then(|| tool(part))
            }
            Some("step-start") => Some(AgentEvent::StepStart),
            Some("step-finish") => Some(step_finish(part)),
            _ => Some(AgentEvent::Other {
                kind: "message.part.updated".to_owned(),
            }),
        }
    }
}

fn session_status(status: Option<&Value>) -> ServeEvent {
    let Some(status) = status else {
        return ServeEvent::Status("unknown".to_owned());
    };
    match status.get("type").and_then(Value::as_str) {
        Some("idle") => ServeEvent::Idle,
        Some("retry") => {
            let mut text = "retrying".to_owned();
            if let Some(attempt) = status.get("attempt").and_then(Value::as_u64) {
                text.push_str(&format!(" (attempt {attempt})"));
            }
            if let Some(message) = str_field(status, "message").filter(|m| !m.is_empty()) {
                text.push_str(": ");
                text.push_str(&message);
            }
            ServeEvent::Status(truncate_chars(&text, SUMMARY_CHARS))
        }
        Some(other) => ServeEvent::Status(other.to_owned()),
        None => ServeEvent::Status("unknown".to_owned()),
    }
}

/// Parses `input` as a JSON object, with the errors of [`ParseError`].
fn parse_object(input: &str) -> Result<Value, ParseError> {
    if input.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let value: Value = serde_json::from_str(input).map_err(|e| ParseError::NotJson {
        error: e.to_string(),
        excerpt: truncate_chars(input.trim(), EXCERPT_CHARS),
    })?;
    if !value.is_object() {
        return Err(ParseError::NotObject {
            found: json_type(&value),
        });
    }
    Ok(value)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A tool part (`{tool, callID, state {status, input, output, title, error}}`).
fn tool(part: &Value) -> AgentEvent {
    let state = part.get("state");
    let state_field = |key| state.and_then(|s| s.get(key));
    AgentEvent::Tool {
        tool: str_field(part, "tool").unwrap_or_default(),
        call_id: str_field(part, "callID").unwrap_or_default(),
        status: state_field("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned(),
        title: state_field("title")
            .and_then(Value::as_str)
            .map(str::to_owned),
        input: state_field("input").cloned().unwrap_or(Value::Null),
        output: state_field("output").and_then(text_of),
        error: state_field("error").and_then(text_of),
    }
}

/// A step-finish part (`{reason, tokens {input, output, cache {read, write}}, cost}`).
fn step_finish(part: &Value) -> AgentEvent {
    let tokens = |pointer| part.pointer(pointer).map(as_count).unwrap_or(0);
    AgentEvent::StepFinish {
        reason: str_field(part, "reason"),
        usage: Usage {
            input_tokens: tokens("/tokens/input"),
            output_tokens: tokens("/tokens/output"),
            cache_read_tokens: tokens("/tokens/cache/read"),
            cache_write_tokens: tokens("/tokens/cache/write"),
            cost_usd: part
                .get("cost")
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite())
                .unwrap_or(0.0),
        },
    }
}

/// An opencode error object (`{name, data {message, statusCode?, isRetryable?}}`), as found in a
/// `run` `error` line and in `session.error`.
fn error_event(error: Option<&Value>) -> AgentEvent {
    let data = error.and_then(|e| e.get("data"));
    let message = data
        .and_then(|d| d.get("message"))
        .or_else(|| error.and_then(|e| e.get("message")))
        .and_then(text_of)
        .or_else(|| {
            // No message field: say what there is rather than nothing.
            data.filter(|d| !d.is_null())
                .map(|d| truncate_chars(&d.to_string(), EXCERPT_CHARS))
        })
        .unwrap_or_else(|| "opencode reported an error without details".to_owned());
    AgentEvent::Error {
        name: error
            .and_then(|e| str_field(e, "name"))
            .unwrap_or_else(|| "UnknownError".to_owned()),
        message,
        status_code: data
            .and_then(|d| d.get("statusCode"))
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok()),
        retryable: data
            .and_then(|d| d.get("isRetryable"))
            .and_then(Value::as_bool),
    }
}

fn str_field(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A string as is; any other non-null JSON as its compact text (outputs are strings today, but a
/// future structured one should still show up).
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A token count: opencode's schema says `number`, so accept floats, and clamp nonsense to 0.
fn as_count(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            // `as` saturates at u64::MAX, which is what we want for absurd values.
            .map(|f| f.round() as u64)
            .unwrap_or(0)
    })
}

/// A millisecond timestamp, integer or float.
fn as_millis(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && f.abs() < 9.0e15)
            .map(|f| f.round() as i64)
    })
}

/// At most `max` characters of `s`, with `…` when cut; never splits a character.
fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().nth(max).is_none() {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

//! The remote client's wire handling against a tiny in-test server that speaks just the REST
//! routes `RemoteDelegator` uses, with canned JSON and SSE: following a run's SSE stream across a
//! dropped connection (resuming with `Last-Event-ID`), progress lines, cancel, the error envelope
//! mapping, and that the token never shows up in an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use bytes::Bytes;
use delegate_mcp::{
    Caller, DelegateError, Delegator, Progress, RemoteDelegator,
    tools::{
        CancelRunInput, CreateSandboxInput, DeleteSandboxInput, ListSandboxesInput,
        RunInSandboxInput, StreamSessionInput,
    },
    types::RunStatus,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const GOOD: &str = "dlg_good_secret_token_0123456789";
const BAD: &str = "dlg_bad_secret_token_9876543210";

#[derive(Default)]
struct Seen {
    /// Bodies of `POST /api/runs`.
    run_bodies: Vec<Value>,
    /// `Last-Event-ID` of each SSE connection, per run.
    sse_connects: HashMap<String, Vec<Option<String>>>,
    cancels: Vec<String>,
    /// Query strings of JSON event pages and run lists.
    queries: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn seen(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn caller() -> Caller {
    Caller {
        user_id: "remote".into(),
        token_id: None,
        client: None,
        workspace_id: None,
    }
}

fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn run_result(run_id: &str, status: &str) -> Value {
    let done = status != "running";
    json!({
        "run_id": run_id,
        "sandbox_id": "sbx_1",
        "status": status,
        "final_message": if done { "done" } else { "" },
        "changed_files": if done { json!([{"path": "hello.txt", "change": "added"}]) } else { json!([]) },
        "diff": "",
        "diff_truncated": false,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_tokens": 0,
                  "cache_write_tokens": 0, "cost_usd": 0.001},
        "duration_ms": 1234,
        "event_count": 5,
    })
}

fn sse_event(seq: u64, kind: &str, data: Value) -> String {
    let event =
        json!({"seq": seq, "ts": 1_700_000_000_000i64 + seq as i64, "type": kind, "data": data});
    format!("id: {seq}\nevent: {kind}\ndata: {event}\n\n")
}

async fn auth(req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {GOOD}"));
    if !ok {
        return envelope(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid or revoked API token",
        );
    }
    next.run(req).await
}

async fn create_run(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let task = body["task"].as_str().unwrap_or("").to_string();
    seen(&s).run_bodies.push(body);
    let id = match task.as_str() {
        "reconnect" => "run_1",
        "cancel" => "run_2",
        "too big" => {
            return envelope(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "task over 1 MiB",
            );
        }
        _ => "run_3",
    };
    (StatusCode::CREATED, Json(run_result(id, "running"))).into_response()
}

async fn get_run(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let status = match id.as_str() {
        "run_1" => "succeeded",
        "run_2" if seen(&s).cancels.contains(&id) => "cancelled",
        "run_2" | "run_3" => "running",
        _ => {
            return envelope(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("run {id} not found"),
            );
        }
    };
    Json(run_result(&id, status)).into_response()
}

async fn list_runs(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut pairs: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    seen(&s).queries.push(pairs.join("&"));
    match q.get("sandbox_id").map(String::as_str) {
        Some("sbx_1") => Json(json!({"runs": [run_result("run_3", "running")]})).into_response(),
        _ => Json(json!({"runs": []})).into_response(),
    }
}

async fn cancel_run(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    seen(&s).cancels.push(id.clone());
    Json(json!({"run_id": id, "status": "cancelled"})).into_response()
}

async fn events(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !sse {
        if id != "run_3" {
            return envelope(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("run {id} not found"),
            );
        }
        let mut pairs: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        seen(&s).queries.push(pairs.join("&"));
        return Json(json!({
            "run_id": id, "status": "running", "next_cursor": 7, "done": false,
            "events": [{"seq": 7, "ts": 1, "type": "text", "data": {"text": "hi"}}],
        }))
        .into_response();
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let attempt = {
        let mut seen = seen(&s);
        let list = seen.sse_connects.entry(id.clone()).or_default();
        list.push(last);
        list.len()
    };
    let sse_response = |body: Body| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(body)
            .unwrap_or_default()
    };
    match (id.as_str(), attempt) {
        // First connection: three events and half of a fourth, then the connection breaks.
        ("run_1", 1) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from(": keep-alive\n\n")),
                Ok(Bytes::from(sse_event(
                    1,
                    "status",
                    json!({"status": "running"}),
                ))),
                Ok(Bytes::from(sse_event(2, "step_start", json!({})))),
                Ok(Bytes::from(sse_event(
                    3,
                    "text",
                    json!({"text": "hello\nworld"}),
                ))),
                Ok(Bytes::from("id: 4\nevent: tool\ndata: {\"seq\": 4, \"ts\"")),
                Err(std::io::Error::other("connection reset")),
            ];
            // A pause before the error, so what was sent reaches the client before the reset.
            let paced = futures::stream::iter(chunks).then(|chunk| async move {
                if chunk.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                chunk
            });
            sse_response(Body::from_stream(paced))
        }
        // Second: resumes (repeating event 3, which must not be repeated as progress), then the
        // server closes without `end`.
        ("run_1", 2) => sse_response(Body::from(format!(
            "{}{}",
            sse_event(3, "text", json!({"text": "hello\nworld"})),
            sse_event(4, "stderr", json!({"line": "noise"})),
        ))),
        ("run_1", _) => sse_response(Body::from(format!(
            "{}{}: keep-alive\n\n{}event: end\ndata: {{\"status\": \"succeeded\"}}\n\n",
            sse_event(
                5,
                "tool",
                json!({"tool": "write", "title": "hello.txt", "status": "completed"})
            ),
            sse_event(
                6,
                "step_finish",
                json!({"reason": "stop", "usage": {"input_tokens": 10, "output_tokens": 5}})
            ),
            sse_event(7, "status", json!({"status": "succeeded"})),
        ))),
        // A run that keeps going until it is cancelled.
        ("run_2", _) => {
            let first = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(
                sse_event(1, "status", json!({"status": "running"})),
            ))]);
            sse_response(Body::from_stream(first.chain(futures::stream::pending())))
        }
        _ => envelope(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("run {id} not found"),
        ),
    }
}

async fn create_sandbox() -> Response {
    envelope(
        StatusCode::TOO_MANY_REQUESTS,
        "limit",
        "workspace default has 10 sandboxes, the most allowed",
    )
}

async fn list_sandboxes(Query(q): Query<HashMap<String, String>>) -> Response {
    let name = q.get("workspace").cloned().unwrap_or_else(|| "none".into());
    Json(json!({"sandboxes": [{
        "sandbox_id": "sbx_1", "name": name, "status": "running", "backend": "process",
        "kind": "warm", "created_at": 1,
    }]}))
    .into_response()
}

async fn delete_sandbox(Path(id): Path<String>) -> Response {
    match id.as_str() {
        "sbx_busy" => envelope(
            StatusCode::CONFLICT,
            "conflict",
            "sandbox sbx_busy is deleting",
        ),
        "sbx_bad" => envelope(StatusCode::BAD_REQUEST, "invalid_input", "bad sandbox id"),
        "sbx_boom" => (StatusCode::BAD_GATEWAY, "upstream went away").into_response(),
        _ => Json(json!({"sandbox_id": id, "status": "deleted"})).into_response(),
    }
}

async fn start() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/api/runs", post(create_run).get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/events", get(events))
        .route("/api/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route("/api/sandboxes/{id}", delete(delete_sandbox))
        .layer(middleware::from_fn(auth))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), state)
}

fn assert_no_token(e: &DelegateError) {
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains(GOOD) && !text.contains(BAD) && !text.contains("secret_token"),
        "the token leaked into an error: {text}"
    );
}

#[tokio::test]
async fn run_follows_sse_across_drops_and_returns_the_result() {
    let (url, state) = start().await;
    let d = RemoteDelegator::new(&url, GOOD).expect("client");
    let (tx, mut rx) = mpsc::channel::<Progress>(64);
    let input = RunInSandboxInput {
        task: "reconnect".into(),
        timeout_seconds: Some(60),
        ..Default::default()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        d.run_in_sandbox(&caller(), input, tx, CancellationToken::new()),
    )
    .await
    .expect("run_in_sandbox hung")
    .expect("run_in_sandbox failed");
    assert_eq!(result.run_id, "run_1");
    assert_eq!(result.status, RunStatus::Succeeded);
    assert_eq!(result.final_message, "done");
    assert_eq!(result.changed_files[0].path, "hello.txt");

    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    let seqs: Vec<u64> = progress.iter().map(|p| p.seq).collect();
    // step_start (2) and stderr (4) are not progress; 3 came twice but is reported once.
    assert_eq!(seqs, vec![1, 3, 5, 6, 7], "{progress:?}");
    assert_eq!(progress[0].message, "running");
    assert_eq!(progress[1].message, "text: hello world");
    assert_eq!(progress[2].message, "tool write hello.txt (completed)");
    assert_eq!(progress[3].message, "step finished (stop, 15 tokens)");
    assert_eq!(progress[4].message, "succeeded");

    let seen = seen(&state);
    // The run was started without waiting, whatever the caller asked.
    assert_eq!(seen.run_bodies[0]["wait"], json!(false));
    assert_eq!(seen.run_bodies[0]["timeout_seconds"], json!(60));
    // Reconnected twice, each time after the last event it had.
    assert_eq!(
        seen.sse_connects["run_1"],
        vec![None, Some("3".to_string()), Some("4".to_string())]
    );
    assert!(seen.cancels.is_empty());
}

#[tokio::test]
async fn cancelling_the_call_cancels_the_run() {
    let (url, state) = start().await;
    let d = RemoteDelegator::new(&url, GOOD).expect("client");
    let (tx, mut rx) = mpsc::channel::<Progress>(64);
    let cancel = CancellationToken::new();
    let call = {
        let cancel = cancel.clone();
        let input = RunInSandboxInput {
            task: "cancel".into(),
            ..Default::default()
        };
        tokio::spawn(async move { d.run_in_sandbox(&caller(), input, tx, cancel).await })
    };
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no progress")
        .expect("progress closed");
    assert_eq!(first.seq, 1);
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call did not end after cancel")
        .expect("join")
        .expect("run_in_sandbox failed");
    assert_eq!(result.status, RunStatus::Cancelled);
    assert_eq!(seen(&state).cancels, vec!["run_2".to_string()]);
}

#[tokio::test]
async fn wait_false_and_stream_session() {
    let (url, state) = start().await;
    let d = RemoteDelegator::new(&format!("{url}/"), GOOD).expect("client");
    let (tx, _rx) = mpsc::channel::<Progress>(4);
    let input = RunInSandboxInput {
        task: "other".into(),
        wait: Some(false),
        ..Default::default()
    };
    let r = d
        .run_in_sandbox(&caller(), input, tx, CancellationToken::new())
        .await
        .expect("run");
    assert_eq!((r.run_id.as_str(), r.status), ("run_3", RunStatus::Running));
    assert!(
        seen(&state).sse_connects.is_empty(),
        "wait: false must not follow the stream"
    );

    let page = d
        .stream_session(
            &caller(),
            StreamSessionInput {
                sandbox_id: Some("sbx_1".into()),
                after: Some(6),
                wait_seconds: Some(500),
                ..Default::default()
            },
        )
        .await
        .expect("stream_session");
    assert_eq!((page.run_id.as_str(), page.next_cursor), ("run_3", 7));
    assert_eq!(page.events[0].kind, "text");
    assert_eq!(
        seen(&state).queries,
        vec![
            "limit=1&sandbox_id=sbx_1".to_string(),
            "after=6&wait_seconds=60".to_string()
        ]
    );

    let e = d
        .stream_session(
            &caller(),
            StreamSessionInput {
                sandbox_id: Some("sbx_empty".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("no runs");
    assert!(matches!(e, DelegateError::NotFound(_)), "{e:?}");
    let e = d
        .stream_session(&caller(), StreamSessionInput::default())
        .await
        .expect_err("no ids");
    assert!(matches!(e, DelegateError::Invalid(_)), "{e:?}");

    let listed = d
        .list_sandboxes(
            &caller(),
            ListSandboxesInput {
                workspace: Some("team a".into()),
            },
        )
        .await
        .expect("list");
    assert_eq!(listed.sandboxes[0].name, "team a");
    let deleted = d
        .delete_sandbox(
            &caller(),
            DeleteSandboxInput {
                sandbox_id: "sbx_9".into(),
            },
        )
        .await
        .expect("delete");
    assert_eq!(deleted.sandbox_id, "sbx_9");
    let cancelled = d
        .cancel_run(
            &caller(),
            CancelRunInput {
                run_id: "run_3".into(),
            },
        )
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn errors_map_by_code_and_never_show_the_token() {
    let (url, _state) = start().await;
    let good = RemoteDelegator::new(&url, GOOD).expect("client");
    let bad = RemoteDelegator::new(&url, BAD).expect("client");

    let e = bad
        .list_sandboxes(&caller(), ListSandboxesInput::default())
        .await
        .expect_err("bad token");
    assert!(
        matches!(&e, DelegateError::Invalid(m) if m.contains("refused the token") && m.contains("revoked")),
        "{e:?}"
    );
    assert_no_token(&e);

    let (tx, _rx) = mpsc::channel::<Progress>(4);
    let e = bad
        .run_in_sandbox(
            &caller(),
            RunInSandboxInput {
                task: "x".into(),
                ..Default::default()
            },
            tx,
            CancellationToken::new(),
        )
        .await
        .expect_err("bad token");
    assert!(matches!(e, DelegateError::Invalid(_)), "{e:?}");
    assert_no_token(&e);

    let e = good
        .create_sandbox(&caller(), CreateSandboxInput::default())
        .await
        .expect_err("limit");
    assert!(
        matches!(&e, DelegateError::Limit(m) if m.contains("10 sandboxes")),
        "{e:?}"
    );

    let (tx, _rx) = mpsc::channel::<Progress>(4);
    let e = good
        .run_in_sandbox(
            &caller(),
            RunInSandboxInput {
                task: "too big".into(),
                ..Default::default()
            },
            tx,
            CancellationToken::new(),
        )
        .await
        .expect_err("too big");
    assert!(matches!(e, DelegateError::Invalid(_)), "{e:?}");

    let delete = |id: &str| DeleteSandboxInput {
        sandbox_id: id.into(),
    };
    let e = good
        .delete_sandbox(&caller(), delete("sbx_busy"))
        .await
        .expect_err("conflict");
    assert!(matches!(e, DelegateError::Unavailable(_)), "{e:?}");
    let e = good
        .delete_sandbox(&caller(), delete("sbx_bad"))
        .await
        .expect_err("invalid");
    assert!(
        matches!(&e, DelegateError::Invalid(m) if m == "bad sandbox id"),
        "{e:?}"
    );
    let e = good
        .delete_sandbox(&caller(), delete("sbx_boom"))
        .await
        .expect_err("502 without an envelope");
    assert!(
        matches!(&e, DelegateError::Internal(m) if m.contains("502") && m.contains("upstream went away")),
        "{e:?}"
    );
    // An id that is not a path segment stays one (percent-encoded), and 404s.
    let e = good
        .stream_session(
            &caller(),
            StreamSessionInput {
                run_id: Some("../sandboxes".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("not found");
    assert!(matches!(e, DelegateError::NotFound(_)), "{e:?}");

    // Nobody listening.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    };
    let gone = RemoteDelegator::new(&format!("http://127.0.0.1:{port}"), GOOD).expect("client");
    let e = gone
        .list_sandboxes(&caller(), ListSandboxesInput::default())
        .await
        .expect_err("unreachable");
    assert!(
        matches!(&e, DelegateError::Unavailable(m) if m.contains("cannot reach delegate server at http://127.0.0.1")),
        "{e:?}"
    );
    assert_no_token(&e);

    let debug = format!("{good:?}");
    assert!(!debug.contains(GOOD), "{debug}");
}

#[test]
fn bad_server_urls_are_refused_without_the_token() {
    for url in [
        "",
        "localhost:8080",
        "ftp://h",
        "http://h/mcp",
        "http://h/x?y",
    ] {
        let e = RemoteDelegator::new(url, GOOD).expect_err(url);
        assert!(matches!(e, DelegateError::Invalid(_)), "{url}: {e:?}");
        assert_no_token(&e);
    }
    let e = RemoteDelegator::new("http://h", "  ").expect_err("empty token");
    assert!(matches!(e, DelegateError::Invalid(_)), "{e:?}");
}

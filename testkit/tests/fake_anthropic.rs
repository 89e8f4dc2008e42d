//! Wire-level tests of the fake Anthropic Messages API, driven by a plain HTTP client.

use std::time::{Duration, Instant};

use delegate_testkit::anthropic::{FakeAnthropic, Script};
use futures::StreamExt;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider; plain http still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("http client")
}

fn tools() -> Value {
    json!([
        { "name": "write", "description": "Write a file", "input_schema": { "type": "object" } },
        { "name": "read", "description": "Read a file", "input_schema": { "type": "object" } },
    ])
}

/// The shape of opencode's title request: small model, no tools.
fn title_body() -> Value {
    json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 48000,
        "system": [{ "type": "text", "text": "You are a title generator." }],
        "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "Generate a title for this conversation:\n" },
            { "type": "text", "text": "create hello.txt saying hi" },
        ]}],
        "stream": true,
    })
}

/// The shape of opencode's first step request.
fn step_body() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "create hello.txt saying hi" },
        ]}],
        "tools": tools(),
        "tool_choice": { "type": "auto" },
        "stream": true,
    })
}

/// The shape of opencode's step request after a tool ran.
fn after_tool_body(result: &str) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "messages": [
            { "role": "user", "content": [{ "type": "text", "text": "create hello.txt saying hi" }] },
            { "role": "assistant", "content": [{ "type": "tool_use", "id": "toolu_0002",
                "name": "write", "input": { "filePath": "hello.txt", "content": "hi\n" } }] },
            { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "toolu_0002",
                "content": result }] },
        ],
        "tools": tools(),
        "stream": true,
    })
}

async fn post(fake: &FakeAnthropic, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", fake.base_url()))
        .header("x-api-key", "test-key-123")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("request")
}

#[derive(Debug)]
struct Event {
    name: String,
    data: Value,
}

/// Parses one SSE frame (`event: NAME\ndata: JSON`).
fn parse_frame(frame: &str) -> Event {
    let mut name = String::new();
    let mut data = String::new();
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            name = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            // The real API writes "type" first; proxies may rely on it.
            assert!(v.starts_with(r#"{"type":""#), "{v}");
            data.push_str(v);
        } else {
            panic!("unexpected SSE line {line:?} in {frame:?}");
        }
    }
    let data = serde_json::from_str(&data).expect("SSE data is JSON");
    Event { name, data }
}

/// Splits a complete SSE body into events, checking the framing.
fn parse_sse(body: &str) -> Vec<Event> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.trim_end_matches('\n')
        .split("\n\n")
        .map(parse_frame)
        .collect()
}

async fn read_sse(response: reqwest::Response) -> Vec<Event> {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    parse_sse(&response.text().await.expect("body"))
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// Concatenation of the text deltas of all text blocks.
fn streamed_text(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.data["delta"]["type"] == "text_delta")
        .map(|e| e.data["delta"]["text"].as_str().unwrap())
        .collect()
}

/// Asserts the event sequence of a complete one-block message.
fn assert_message_sequence(events: &[Event], delta: &str) {
    let names = names(events);
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let deltas = &events[3..events.len() - 3];
    assert!(!deltas.is_empty());
    for e in deltas {
        assert_eq!(e.name, "content_block_delta");
        assert_eq!(e.data["type"], "content_block_delta");
        assert_eq!(e.data["index"], 0);
        assert_eq!(e.data["delta"]["type"], delta);
    }
    for e in events {
        assert_eq!(
            e.data["type"],
            e.name.as_str(),
            "data.type matches the event name"
        );
    }
    let usage = &events[0].data["message"]["usage"];
    assert_eq!(usage["input_tokens"], 100);
    assert_eq!(usage["output_tokens"], 1);
    assert_eq!(usage["cache_read_input_tokens"], 0);
    assert_eq!(usage["cache_creation_input_tokens"], 0);
    assert_eq!(events[events.len() - 2].data["usage"]["output_tokens"], 20);
}

#[tokio::test]
async fn title_request_gets_a_short_text() {
    let fake = FakeAnthropic::start(Script::write_file("hello.txt", "hi\n", "done"))
        .await
        .unwrap();
    let response = post(&fake, "/v1/messages", &title_body()).await;
    assert_eq!(response.headers()["request-id"], "req_fake_1");
    let events = read_sse(response).await;
    assert_message_sequence(&events, "text_delta");
    let message = &events[0].data["message"];
    assert_eq!(message["model"], "claude-haiku-4-5");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], json!([]));
    assert_eq!(
        events[2].data["content_block"],
        json!({ "type": "text", "text": "" })
    );
    assert_eq!(streamed_text(&events), "Test title");
    assert_eq!(
        events[events.len() - 2].data["delta"]["stop_reason"],
        "end_turn"
    );
    assert!(fake.requests()[0].is_title_request());
}

#[tokio::test]
async fn tool_script_streams_tool_use_then_final_text() {
    let fake = FakeAnthropic::start(Script::write_file("hello.txt", "hi\n", "All done."))
        .await
        .unwrap();

    let events = read_sse(post(&fake, "/v1/messages", &step_body()).await).await;
    assert_message_sequence(&events, "input_json_delta");
    assert_eq!(events[0].data["message"]["model"], "claude-sonnet-4-5");
    let block = &events[2].data["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "write");
    assert_eq!(block["input"], json!({}));
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    let partial: Vec<&str> = events
        .iter()
        .filter(|e| e.data["delta"]["type"] == "input_json_delta")
        .map(|e| e.data["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert!(
        partial.len() > 2,
        "input is streamed in several chunks: {partial:?}"
    );
    let input: Value = serde_json::from_str(&partial.concat()).expect("reassembled input");
    assert_eq!(input, json!({ "filePath": "hello.txt", "content": "hi\n" }));
    assert_eq!(
        events[events.len() - 2].data["delta"]["stop_reason"],
        "tool_use"
    );

    let events = read_sse(
        post(
            &fake,
            "/v1/messages",
            &after_tool_body("Wrote file successfully."),
        )
        .await,
    )
    .await;
    assert_message_sequence(&events, "text_delta");
    assert_eq!(streamed_text(&events), "All done.");
    assert_eq!(
        events[events.len() - 2].data["delta"]["stop_reason"],
        "end_turn"
    );
}

#[tokio::test]
async fn read_script_echoes_the_tool_result() {
    let fake = FakeAnthropic::start(Script::read_file("hello.txt"))
        .await
        .unwrap();
    let events = read_sse(post(&fake, "/v1/messages", &step_body()).await).await;
    assert_eq!(events[2].data["content_block"]["name"], "read");

    let read = "<file>\n00001| hi, ünïcødé and a long line to be chunked\n</file>";
    let events = read_sse(post(&fake, "/v1/messages", &after_tool_body(read)).await).await;
    assert_eq!(streamed_text(&events), read);
}

#[tokio::test]
async fn text_script_and_set_script() {
    let fake = FakeAnthropic::start(Script::text("plain answer"))
        .await
        .unwrap();
    let events = read_sse(post(&fake, "/v1/messages", &step_body()).await).await;
    assert_eq!(streamed_text(&events), "plain answer");

    fake.set_script(Script::bash("sleep 30", "done"));
    let events = read_sse(post(&fake, "/v1/messages", &step_body()).await).await;
    let block = &events[2].data["content_block"];
    assert_eq!(block["name"], "bash");
    let input: String = events
        .iter()
        .filter_map(|e| e.data["delta"]["partial_json"].as_str())
        .collect();
    let input: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(input["command"], "sleep 30");
    assert!(input["description"].is_string());
}

#[tokio::test]
async fn unauthorized_applies_to_every_request() {
    let fake = FakeAnthropic::start(Script::status(401)).await.unwrap();
    for body in [title_body(), step_body()] {
        let response = post(&fake, "/v1/messages", &body).await;
        assert_eq!(response.status(), 401);
        assert!(
            response.headers()["request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_fake_")
        );
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(response.headers().get("retry-after-ms").is_none());
        let raw = response.text().await.unwrap();
        assert_eq!(
            raw,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#
        );
        let body: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            body,
            json!({ "type": "error", "error": { "type": "authentication_error", "message": "invalid x-api-key" } })
        );
    }
}

#[tokio::test]
async fn overloaded_carries_retry_after_ms() {
    let fake = FakeAnthropic::start(Script::overloaded()).await.unwrap();
    let response = post(&fake, "/v1/messages", &step_body()).await;
    assert_eq!(response.status(), 529);
    assert_eq!(response.headers()["retry-after-ms"], "0");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");

    fake.set_script(Script::Status {
        status: 500,
        error_type: "api_error".into(),
        message: "boom".into(),
        retry_after_ms: Some(250),
    });
    let response = post(&fake, "/v1/messages", &title_body()).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["retry-after-ms"], "250");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        json!({ "type": "api_error", "message": "boom" })
    );
}

#[tokio::test]
async fn midstream_error_after_one_delta() {
    let fake = FakeAnthropic::start(Script::MidStreamError).await.unwrap();
    let events = read_sse(post(&fake, "/v1/messages", &step_body()).await).await;
    assert_eq!(
        names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        events[4].data,
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })
    );
}

#[tokio::test]
async fn records_requests_in_order() {
    let fake = FakeAnthropic::start(Script::write_file("a", "b", "c"))
        .await
        .unwrap();
    post(&fake, "/v1/messages", &title_body())
        .await
        .text()
        .await
        .unwrap();
    post(&fake, "/v1/messages", &after_tool_body("ok"))
        .await
        .text()
        .await
        .unwrap();

    let requests = fake.wait_for_requests(2).await;
    assert_eq!(requests.len(), 2);
    let (title, step) = (&requests[0], &requests[1]);
    assert_eq!((title.number, step.number), (1, 2));
    assert!(title.at <= step.at);
    assert_eq!(title.method, "POST");
    assert_eq!(title.path, "/v1/messages");
    assert_eq!(title.header("x-api-key"), Some("test-key-123"));
    assert_eq!(title.header("Anthropic-Version"), Some("2023-06-01"));
    assert!(title.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(title.body, title_body());
    assert!(title.is_title_request());
    assert!(!step.is_title_request());
    assert_eq!(
        title.last_user_text(),
        "Generate a title for this conversation:\n\ncreate hello.txt saying hi"
    );
    assert_eq!(step.last_user_text(), "ok");
}

#[tokio::test]
async fn other_endpoints_and_bad_input() {
    let fake = FakeAnthropic::start(Script::text("x")).await.unwrap();
    let http = client();

    let response = http
        .get(format!("{}/v1/models", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");

    let response = post(&fake, "/v1/messages/count_tokens", &step_body()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "input_tokens": 10 })
    );

    for bad in ["{not json", "[1,2]", "{\"model\":\"m\"}", ""] {
        let response = http
            .post(format!("{}/v1/messages", fake.base_url()))
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    // opencode's step requests are tens of KiB; a few MiB must still be fine.
    let mut big = step_body();
    big["system"] = json!("x".repeat(3 * 1024 * 1024));
    let events = read_sse(post(&fake, "/v1/messages", &big).await).await;
    assert_eq!(streamed_text(&events), "x");

    let requests = fake.requests();
    assert_eq!(requests[0].path, "/v1/models");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[2].body, Value::Null);
}

#[tokio::test]
async fn non_streaming_request_gets_a_message() {
    let fake = FakeAnthropic::start(Script::write_file("a.txt", "b", "c"))
        .await
        .unwrap();
    let mut body = step_body();
    body["stream"] = json!(false);
    let response = post(&fake, "/v1/messages", &body).await;
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["content"][0]["input"],
        json!({ "filePath": "a.txt", "content": "b" })
    );
    assert_eq!(message["usage"]["output_tokens"], 20);
}

#[tokio::test]
async fn slow_trickles_one_event_per_chunk() {
    let delay = Duration::from_millis(30);
    let fake = FakeAnthropic::start(Script::slow(30, Script::text("slow")))
        .await
        .unwrap();
    let started = Instant::now();
    let response = post(&fake, "/v1/messages", &title_body()).await;
    assert_eq!(response.status(), 200);
    let mut chunks = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunks.push(String::from_utf8(chunk.unwrap().to_vec()).unwrap());
    }
    // Events are delayed one by one, so they cannot all arrive in one read.
    assert!(chunks.len() > 1, "{chunks:?}");
    let events = parse_sse(&chunks.concat());
    assert_message_sequence(&events, "text_delta");
    assert_eq!(streamed_text(&events), "Test title");
    assert!(started.elapsed() >= delay * events.len() as u32);
}

#[tokio::test]
async fn hang_sends_message_start_then_aborts_when_dropped() {
    let fake = FakeAnthropic::start(Script::Hang).await.unwrap();
    let response = post(&fake, "/v1/messages", &step_body()).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["request-id"].to_str().is_ok());
    let mut stream = response.bytes_stream();
    let mut received = String::new();
    while !received.contains("event: ping\n") {
        let chunk = tokio::time::timeout(TIMEOUT, stream.next()).await.unwrap();
        received.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    }
    let events = parse_sse(&received);
    assert_eq!(names(&events), ["message_start", "ping"]);
    assert_eq!(fake.wait_for_requests(1).await.len(), 1);

    drop(fake);
    let end = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .expect("stream ends");
    assert!(
        matches!(end, Some(Err(_))),
        "connection is aborted, not finished cleanly: {end:?}"
    );
}

#[tokio::test]
async fn concurrent_runs_are_independent() {
    let fake = FakeAnthropic::start(Script::write_file("hello.txt", "hi\n", "done"))
        .await
        .unwrap();
    let bodies = [step_body(), after_tool_body("ok"), title_body()];
    let (a, b, c) = tokio::join!(
        post(&fake, "/v1/messages", &bodies[0]),
        post(&fake, "/v1/messages", &bodies[1]),
        post(&fake, "/v1/messages", &bodies[2]),
    );
    let (a, b, c) = (read_sse(a).await, read_sse(b).await, read_sse(c).await);
    assert_eq!(a[2].data["content_block"]["type"], "tool_use");
    assert_eq!(streamed_text(&b), "done");
    assert_eq!(streamed_text(&c), "Test title");
}

//! The Anthropic proxy on its own: credentials in and out, errors in Anthropic's shape, streaming,
//! usage. The upstream is the scripted fake; the client is plain HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use delegate_mcp::types::SandboxStatus;
use delegate_server::ids::now_ms;
use delegate_server::proxy::{ActiveRuns, Proxy};
use delegate_server::settings::{Secret, Upstream, UpstreamCredential};
use delegate_server::store::Store;
use delegate_testkit::anthropic::{FakeAnthropic, Script};
use rstest::rstest;
use serde_json::{Value, json};

const REAL_KEY: &str = "sk-ant-real-proxy-test-key";

struct Setup {
    store: Arc<dyn Store>,
    proxy: Proxy,
    url: String,
    token: String,
    sandbox_id: String,
    run_id: String,
    fake: FakeAnthropic,
    _dir: tempfile::TempDir,
}

async fn setup(script: Script) -> Setup {
    delegate_server::net::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let common::Seeded {
        store,
        sandbox_id,
        run_id,
        token,
    } = common::seed_sandbox(&dir.path().join("t.db")).await;
    let fake = FakeAnthropic::start(script).await.unwrap();
    let active = ActiveRuns::default();
    active
        .write()
        .unwrap()
        .insert(sandbox_id.clone(), run_id.clone());
    let proxy = Proxy::new(
        store.clone(),
        Upstream {
            base_url: fake.base_url(),
            credential: Some(UpstreamCredential::ApiKey(Secret::new(REAL_KEY))),
        },
        active,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = proxy.router();
    tokio::spawn(delegate_server::net::serve_tcp(
        listener,
        router,
        std::future::pending(),
    ));
    Setup {
        store,
        proxy,
        url,
        token,
        sandbox_id,
        run_id,
        fake,
        _dir: dir,
    }
}

fn body() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": true,
        "messages": [{ "role": "user", "content": "hello" }],
        "tools": [{ "name": "write", "input_schema": { "type": "object" } }],
    })
}

async fn post(s: &Setup, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/messages", s.url))
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "structured-outputs-2025-11-13")
        .json(&body());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn assert_anthropic_error(resp: reqwest::Response, status: u16, kind: &str) {
    assert_eq!(resp.status().as_u16(), status);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn a_valid_token_is_swapped_for_the_real_key_and_the_stream_passes_through() {
    let s = setup(Script::write_file("hello.txt", "hi\n", "done")).await;
    let token = s.token.clone();
    let resp = post(&s, &[("x-api-key", &token), ("cookie", "session=abc")]).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(resp.headers().get("request-id").is_some());
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: message_start") && text.contains("event: message_stop"));
    assert!(text.contains("\"name\":\"write\""));

    let reqs = s.fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.header("x-api-key"), Some(REAL_KEY));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("cookie"), None, "inbound credentials are dropped");
    assert_eq!(
        r.header("anthropic-beta"),
        Some("structured-outputs-2025-11-13")
    );
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert!(r.headers.iter().all(|(_, v)| !v.contains(&token)));

    // Usage lands on the sandbox's active run (recorded when the stream ends).
    let usage = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (u, ttft) = s.store.run_usage(&s.run_id).await.unwrap();
            if u.input_tokens > 0 {
                return (u, ttft);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("usage recorded");
    assert_eq!(usage.0.input_tokens, 100);
    assert_eq!(usage.0.output_tokens, 20);
    assert!(usage.0.cost_usd > 0.0);
    assert!(usage.1.is_some(), "time to first token measured");
}

#[tokio::test]
async fn bearer_tokens_work_too() {
    let s = setup(Script::text("hello")).await;
    let bearer = format!("Bearer {}", s.token);
    let resp = post(&s, &[("authorization", &bearer)]).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    assert_eq!(s.fake.requests()[0].header("x-api-key"), Some(REAL_KEY));
    assert_eq!(s.fake.requests()[0].header("authorization"), None);
}

#[rstest]
#[case::no_credential(&[])]
#[case::an_unknown_sandbox_token(&[("x-api-key", "dsb_wrong")])]
#[case::the_real_key_itself(&[("x-api-key", REAL_KEY)])]
#[case::basic_credentials(&[("authorization", "Basic Zm9vOmJhcg==")])]
#[tokio::test]
async fn a_missing_or_wrong_credential_gets_401_in_anthropic_shape(
    #[case] headers: &[(&str, &str)],
) {
    let s = setup(Script::text("hello")).await;
    assert_anthropic_error(post(&s, headers).await, 401, "authentication_error").await;
    assert!(
        s.fake.requests().is_empty(),
        "refused calls never reach the upstream"
    );
}

#[tokio::test]
async fn a_revoked_token_gets_401_in_anthropic_shape() {
    let s = setup(Script::text("hello")).await;
    // Valid (and now cached), then revoked: refused at once.
    let token = s.token.clone();
    let ok = post(&s, &[("x-api-key", &token)]).await;
    assert_eq!(ok.status(), 200);
    ok.text().await.unwrap();
    s.store
        .revoke_sandbox_tokens(&s.sandbox_id, now_ms())
        .await
        .unwrap();
    s.proxy.forget_sandbox(&s.sandbox_id);
    assert_anthropic_error(
        post(&s, &[("x-api-key", &token)]).await,
        401,
        "authentication_error",
    )
    .await;
    assert_eq!(
        s.fake.requests().len(),
        1,
        "refused calls never reach the upstream"
    );
}

#[tokio::test]
async fn a_sandbox_that_is_not_running_gets_403() {
    let s = setup(Script::text("hello")).await;
    s.store
        .set_sandbox_status(
            &s.sandbox_id,
            SandboxStatus::Running,
            SandboxStatus::Pausing,
            None,
            now_ms(),
        )
        .await
        .unwrap();
    let token = s.token.clone();
    assert_anthropic_error(
        post(&s, &[("x-api-key", &token)]).await,
        403,
        "permission_error",
    )
    .await;
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn upstream_errors_pass_through_and_an_unreachable_upstream_is_502() {
    let s = setup(Script::overloaded()).await;
    let token = s.token.clone();
    let resp = post(&s, &[("x-api-key", &token)]).await;
    assert_eq!(
        resp.headers()
            .get("retry-after-ms")
            .map(|v| v.to_str().unwrap()),
        Some("0")
    );
    assert_anthropic_error(resp, 529, "overloaded_error").await;

    // Point the proxy at a port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let proxy = Proxy::new(
        s.store.clone(),
        Upstream {
            base_url: dead,
            credential: Some(UpstreamCredential::ApiKey(Secret::new(REAL_KEY))),
        },
        ActiveRuns::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/messages", listener.local_addr().unwrap());
    tokio::spawn(delegate_server::net::serve_tcp(
        listener,
        proxy.router(),
        std::future::pending(),
    ));
    let resp = reqwest::Client::new()
        .post(url)
        .header("x-api-key", &token)
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(REAL_KEY));
    assert!(text.contains("api_error"), "{text}");
}

#[tokio::test]
async fn a_client_that_goes_away_still_gets_its_usage_recorded() {
    let s = setup(Script::Hang).await;
    let token = s.token.clone();
    let resp = post(&s, &[("x-api-key", &token)]).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    use futures::StreamExt;
    let first = stream.next().await.expect("first chunk").unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(stream);
    // Usage of the abandoned call is still recorded, with what was seen (the input tokens).
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (u, _) = s.store.run_usage(&s.run_id).await.unwrap();
            if u.input_tokens == 100 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("usage of the abandoned call recorded");
}

/// Sends one request exactly as written (no client normalizes its path) and returns the status
/// code and the body.
async fn raw(s: &Setup, method: &str, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body().to_string();
    let addr = s.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        s.token,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, reply)
}

#[tokio::test]
async fn only_the_metered_model_calls_are_relayed_and_no_path_leaves_v1() {
    let s = setup(Script::text("hi")).await;
    for (method, target) in [
        // Other APIs the meter never sees.
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_1/results"),
        ("POST", "/v1/complete"),
        // Ways out of /v1, or around the exact match.
        ("POST", "/v1/../v1/messages"),
        ("POST", "/v1/./messages"),
        ("POST", "/v1/%2e%2e/admin"),
        ("POST", "/v1/messages%2fbatches"),
        ("POST", "/v1//messages"),
        ("POST", "/v1/messages/"),
        ("POST", "/V1/messages"),
        // A known path with another method.
        ("DELETE", "/v1/messages"),
        ("PUT", "/v1/messages/count_tokens"),
    ] {
        let (status, reply) = raw(&s, method, target).await;
        assert!(
            status == 404 || status == 405 || status == 400,
            "{method} {target} got {status}: {reply}"
        );
        assert!(!reply.contains(REAL_KEY));
    }
    assert!(
        s.fake.requests().is_empty(),
        "a refused request reached the upstream: {:?}",
        s.fake
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    // The allowed call still goes through, query string and all.
    let (status, _) = raw(&s, "POST", "/v1/messages?beta=true").await;
    assert_eq!(status, 200);
    let seen = s.fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/messages");
}

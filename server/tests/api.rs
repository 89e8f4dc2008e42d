//! The REST API end to end: a real `delegate serve` router on 127.0.0.1:0, driven with reqwest.

mod common;

use common::error_code;

use std::time::Duration;

use common::Harness;
use common::serve::Server;
use delegate_mcp::tools::{CancelRunOutput, ListSandboxesOutput, StreamSessionOutput};
use delegate_mcp::types::{Event, RunResult, RunStatus, SandboxStatus};
use delegate_server::api::{Access, table};
use delegate_server::store::{Role, Workspace};
use delegate_testkit::anthropic::Script;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A served router and user A ("alice") with a token.
struct Api {
    server: Server,
    token: String,
    workspace: Workspace,
}

impl std::ops::Deref for Api {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Api {
    async fn start(h: &Harness) -> Api {
        let server = h.serve().start().await;
        let alice = server.account("alice").await;
        Api {
            server,
            token: alice.token,
            workspace: alice.personal,
        }
    }

    fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.server.req(method, path);
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// As user A.
    fn a(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req(method, path, Some(&self.token))
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let reply = self.send(r).await;
        (reply.status, reply.body)
    }
}

/// Reads SSE events until `stop` events were read or the stream ended.
async fn read_sse(
    s: &Api,
    run_id: &str,
    last_event_id: Option<u64>,
    stop: usize,
) -> Vec<eventsource_stream::Event> {
    let mut r = s
        .a(Method::GET, &format!("/api/runs/{run_id}/events"))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        r = r.header("last-event-id", id.to_string());
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    while out.len() < stop {
        match tokio::time::timeout(Duration::from_secs(120), stream.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("SSE broke: {e}"),
            Ok(None) => break,
            Err(_) => panic!("no SSE event for 120 s"),
        }
    }
    out
}

#[tokio::test]
async fn a_run_streams_over_sse_with_resume_and_matches_the_json_pages() {
    let Some(h) = Harness::new(Script::write_file("hello.txt", "hello\n", "written")).await else {
        return;
    };
    let s = Api::start(&h).await;
    let (status, body) = s
        .json(
            s.a(Method::POST, "/api/runs")
                .json(&json!({ "task": "write hello.txt" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let started: RunResult = serde_json::from_value(body).unwrap();
    // Not ended: queued until the driver takes it, then starting and running.
    assert!(
        matches!(
            started.status,
            RunStatus::Queued | RunStatus::Starting | RunStatus::Running
        ),
        "{:?}",
        started.status
    );

    // A few events, then the connection drops; the rest after reconnecting with Last-Event-ID.
    let first = read_sse(&s, &started.run_id, None, 2).await;
    assert!(!first.is_empty());
    let last: u64 = first.last().unwrap().id.parse().unwrap();
    let rest = read_sse(&s, &started.run_id, Some(last), usize::MAX).await;
    let all: Vec<_> = first.iter().chain(rest.iter()).collect();
    let (end, events) = all.split_last().unwrap();
    assert_eq!(end.event, "end", "the stream ends with `event: end`");
    let end_data: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end_data["status"], "succeeded");
    let seqs: Vec<u64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every seq exactly once, in order");
    let sse_events: Vec<Event> = events
        .iter()
        .map(|e| {
            let ev: Event = serde_json::from_str(&e.data).unwrap();
            assert_eq!(ev.kind, e.event);
            ev
        })
        .collect();

    let (status, body) = s
        .json(s.a(Method::GET, &format!("/api/runs/{}", started.run_id)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let result: RunResult = serde_json::from_value(body).unwrap();
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.error);
    assert!(
        result.changed_files.iter().any(|f| f.path == "hello.txt"),
        "{:?}",
        result.changed_files
    );
    assert_eq!(result.event_count, sse_events.len() as u64);

    // JSON pages, two events at a time, agree with SSE.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let (status, body) = s
            .json(s.a(
                Method::GET,
                &format!("/api/runs/{}/events?after={after}&limit=2", started.run_id),
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: StreamSessionOutput = serde_json::from_value(body).unwrap();
        assert!(page.events.len() <= 2);
        after = page.next_cursor;
        paged.extend(page.events);
        if page.done {
            assert_eq!(page.status, RunStatus::Succeeded);
            break;
        }
    }
    assert_eq!(paged, sse_events);

    // Listed, newest first.
    let (status, body) = s.json(s.a(Method::GET, "/api/runs?limit=5")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["runs"][0]["run_id"], started.run_id.as_str());
    let (_, usage) = s.json(s.a(Method::GET, "/api/usage")).await;
    assert_eq!(usage["workspace"], s.workspace.slug.as_str());
    assert_eq!(usage["runs"], 1);
    assert!(
        usage["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
}

#[tokio::test]
async fn cancel_over_rest_ends_a_hanging_run() {
    let Some(h) = Harness::new(Script::Hang).await else {
        return;
    };
    let s = Api::start(&h).await;
    let (status, body) = s
        .json(
            s.a(Method::POST, "/api/runs")
                .json(&json!({ "task": "hang" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_string();
    let (status, body) = s
        .json(s.a(Method::POST, &format!("/api/runs/{run_id}/cancel")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out: CancelRunOutput = serde_json::from_value(body).unwrap();
    assert_eq!(out.status, RunStatus::Cancelled);
    let (_, body) = s
        .json(s.a(Method::GET, &format!("/api/runs/{run_id}")))
        .await;
    assert_eq!(body["status"], "cancelled");
    // The SSE stream of an ended run replays and ends at once.
    let events = read_sse(&s, &run_id, None, usize::MAX).await;
    let end = events.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(
        serde_json::from_str::<Value>(&end.data).unwrap()["status"],
        "cancelled"
    );
}

#[tokio::test]
async fn bad_input_gets_the_error_envelope_and_writes_nothing() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = Api::start(&h).await;
    let big = json!({ "task": "x".repeat(3 << 20) }).to_string();
    let sql = "' OR 1=1 --";
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            s.a(Method::POST, "/api/runs")
                .header("content-type", "application/json")
                .body("{\"task\": "),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "wrong content type",
            s.a(Method::POST, "/api/runs")
                .header("content-type", "text/plain")
                .body(r#"{"task": "x"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "unknown field",
            s.a(Method::POST, "/api/sandboxes")
                .json(&json!({ "name": "x", "bogus": 1 })),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "unknown field in a run",
            s.a(Method::POST, "/api/runs")
                .json(&json!({ "task": "x", "sandbox": "y" })),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "oversized body",
            s.a(Method::POST, "/api/runs")
                .header("content-type", "application/json")
                .body(big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "path traversal id",
            s.a(Method::GET, "/api/runs/..%2F..%2Fx"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "path traversal sandbox id",
            s.a(Method::DELETE, "/api/sandboxes/..%2F..%2Fx"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "SQL-looking run id",
            s.a(Method::GET, "/api/runs/'%20OR%201=1%20--"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "SQL-looking sandbox id",
            s.a(Method::POST, "/api/sandboxes/'%20OR%201=1%20--/pause"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "SQL-looking sandbox in a run",
            s.a(Method::POST, "/api/runs")
                .json(&json!({ "task": "x", "sandbox_id": sql })),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "SQL-looking workspace",
            s.a(Method::POST, "/api/sandboxes")
                .json(&json!({ "workspace": sql })),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "bad query value",
            s.a(Method::GET, "/api/runs?limit=lots"),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "unknown query parameter",
            s.a(Method::GET, "/api/sandboxes?bogus=1"),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "bad Last-Event-ID",
            s.a(Method::GET, "/api/runs/run_x/events")
                .header("accept", "text/event-stream")
                .header("last-event-id", "soon"),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "unknown route",
            s.a(Method::GET, "/api/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "bad token name",
            s.a(Method::POST, "/api/tokens")
                .json(&json!({ "name": "" })),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
    ];
    for (name, request, want_status, want_code) in cases {
        let (status, body) = s.json(request).await;
        assert_eq!(status, want_status, "{name}: {body}");
        assert_eq!(error_code(status, &body), want_code, "{name}: {body}");
    }
    let (_, runs) = s.json(s.a(Method::GET, "/api/runs")).await;
    assert_eq!(runs, json!({ "runs": [] }), "nothing was written");
    let (_, sandboxes) = s.json(s.a(Method::GET, "/api/sandboxes")).await;
    assert_eq!(sandboxes, json!({ "sandboxes": [] }), "nothing was written");
    let (_, tokens) = s.json(s.a(Method::GET, "/api/tokens")).await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn every_api_route_needs_a_token_and_ops_endpoints_answer() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = Api::start(&h).await;
    let routes = table();
    for route in routes.iter().filter(|r| r.access == Access::Token) {
        let path = route.path.replace("{id}", "run_x");
        for token in [None, Some("dlg_not-a-real-token"), Some("Basic abc")] {
            let mut r = s.req(route.method.clone(), &path, None);
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            let (status, body) = s.json(r.json(&json!({}))).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {path}: {body}",
                route.method
            );
            assert_eq!(error_code(status, &body), "unauthorized");
        }
    }

    let (status, doc) = s.json(s.req(Method::GET, "/api/openapi.json", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for route in &routes {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][route.path][&method];
        assert!(op.is_object(), "{method} {} missing", route.path);
        if route.access == Access::Token {
            assert_eq!(op["security"], json!([{ "bearer": [] }]));
        }
    }
    assert!(doc["components"]["schemas"]["RunResult"].is_object());
    assert!(doc["components"]["schemas"]["RunInSandboxInput"].is_object());
    assert_eq!(
        doc["paths"]["/api/runs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RunInSandboxInput"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let resp = s.req(Method::GET, "/healthz", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap().trim(), "ok");
    let resp = s.req(Method::GET, "/readyz", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The metrics say how a team works: a token, unless DELEGATE_METRICS_PUBLIC=true.
    let resp = s.req(Method::GET, "/metrics", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = s.a(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let metrics = resp.text().await.unwrap();
    for needle in [
        "# TYPE delegate_runs_total counter",
        "delegate_runs_total{status=\"succeeded\"} 0",
        "delegate_runs_active 0",
        "delegate_sandboxes{status=\"running\"}",
        "delegate_proxy_requests_total 0",
        "delegate_egress_connections_total{decision=\"denied\"} 0",
        "delegate_egress_bytes_total{direction=\"down\"} 0",
        "# TYPE delegate_pool_size gauge",
        "delegate_pool_size 0",
        "delegate_pool_misses_total{reason=\"empty\"} 0",
        "delegate_pool_refill_seconds_count 0",
        "delegate_http_requests_total{route=\"/api/openapi.json\",status=\"200\"} 1",
        "delegate_http_requests_total{route=\"/api/runs\",status=\"401\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

#[tokio::test]
async fn tokens_are_created_used_listed_and_revoked() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = Api::start(&h).await;
    let (status, created) = s
        .json(
            s.a(Method::POST, "/api/tokens")
                .json(&json!({ "name": "laptop", "expires_in_seconds": 3600 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("dlg_"));
    assert_eq!(created["name"], "laptop");
    assert!(created["expires_at"].as_i64().unwrap() > created["created_at"].as_i64().unwrap());

    // The new token works.
    let (status, _) = s
        .json(s.req(Method::GET, "/api/sandboxes", Some(&secret)))
        .await;
    assert_eq!(status, StatusCode::OK);

    let resp = s.a(Method::GET, "/api/tokens").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&secret), "a list never shows a secret");
    assert!(!text.contains(&delegate_server::ids::hash_secret(&secret)));
    assert!(!text.contains("hash"));
    let list: Value = serde_json::from_str(&text).unwrap();
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert_eq!(tokens[0]["revoked_at"], Value::Null);

    // Another user cannot revoke it.
    let other = s.account("mallory").await.token;
    let (status, body) = s
        .json(s.req(Method::DELETE, &format!("/api/tokens/{id}"), Some(&other)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let resp = s
        .a(Method::DELETE, &format!("/api/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, body) = s
        .json(s.req(Method::GET, "/api/sandboxes", Some(&secret)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, list) = s.json(s.a(Method::GET, "/api/tokens")).await;
    assert!(list["tokens"][0]["revoked_at"].as_i64().is_some());
}

#[tokio::test]
async fn other_users_see_nothing_and_guests_only_read() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = Api::start(&h).await;
    // A's sandbox and run, written straight to the store (no process needed to read them).
    let store = s.orch.store();
    let sandbox = delegate_server::store::Sandbox {
        name: "a's".into(),
        ..common::sandbox_row(&s.workspace.id, SandboxStatus::Paused)
    };
    store.insert_sandbox(&sandbox).await.unwrap();
    let run = common::run_row(&sandbox, RunStatus::Succeeded);
    store.insert_run(&run).await.unwrap();

    let b = s.account("bob").await.token;
    let b_req = |m: Method, p: &str| s.req(m, p, Some(&b));
    let run_path = format!("/api/runs/{}", run.id);
    let sbx_path = format!("/api/sandboxes/{}", sandbox.id);
    let ws = s.workspace.slug.clone();
    let outsider: Vec<(Method, String)> = vec![
        (Method::GET, run_path.clone()),
        (Method::GET, format!("{run_path}/events")),
        (Method::POST, format!("{run_path}/cancel")),
        (Method::GET, sbx_path.clone()),
        (Method::DELETE, sbx_path.clone()),
        (Method::POST, format!("{sbx_path}/resume")),
        (Method::GET, format!("/api/runs?workspace={ws}")),
        (Method::GET, format!("/api/sandboxes?workspace={ws}")),
        (Method::GET, format!("/api/usage?workspace={ws}")),
    ];
    for (m, p) in &outsider {
        let (status, body) = s.json(b_req(m.clone(), p)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{m} {p}: {body}");
        assert_eq!(error_code(status, &body), "not_found");
    }

    store
        .set_member(
            &s.workspace.id,
            &store
                .token_by_hash(&delegate_server::ids::hash_secret(&b))
                .await
                .unwrap()
                .user_id
                .unwrap(),
            Role::Guest,
        )
        .await
        .unwrap();
    let (status, body) = s
        .json(b_req(Method::POST, "/api/runs").json(&json!({ "task": "x", "workspace": ws })))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(status, &body), "forbidden");
    for (m, p) in [
        (Method::POST, format!("{run_path}/cancel")),
        (Method::DELETE, sbx_path.clone()),
        (Method::POST, format!("{sbx_path}/pause")),
        (Method::POST, format!("{sbx_path}/resume")),
    ] {
        let (status, body) = s.json(b_req(m.clone(), &p)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{m} {p}: {body}");
    }
    let (status, body) = s.json(b_req(Method::GET, &run_path)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "succeeded");
    let (status, body) = s
        .json(b_req(
            Method::GET,
            &format!("/api/sandboxes?workspace={ws}"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list: ListSandboxesOutput = serde_json::from_value(body).unwrap();
    assert_eq!(list.sandboxes.len(), 1);
    let (status, _) = s.json(b_req(Method::GET, &sbx_path)).await;
    assert_eq!(status, StatusCode::OK);
    // The owner may act on it: pausing a paused sandbox is a no-op, resuming a non-runnable one
    // would be a conflict, not an internal error.
    let (status, body) = s
        .json(s.a(Method::POST, &format!("{sbx_path}/pause")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "paused");
}

/// The store methods behind the API (token lists, workspace usage, ping, status counts) give the
/// same answers on SQLite and PostgreSQL.
#[tokio::test]
async fn api_store_methods_agree_on_both_databases() {
    async fn check(store: &dyn delegate_server::store::Store) -> Value {
        use delegate_mcp::types::Usage;
        use delegate_server::store::UsageRecord;
        store.ping().await.unwrap();
        let (user, ws) = delegate_server::auth::create_user(store, "u@example.com", None)
            .await
            .unwrap();
        delegate_server::auth::create_api_token(store, &user.id, Some("one".into()), None)
            .await
            .unwrap();
        let (_, second) =
            delegate_server::auth::create_api_token(store, &user.id, Some("two".into()), Some(1))
                .await
                .unwrap();
        store.revoke_token(&second.id, 5).await.unwrap();
        let mut tokens = store.tokens_of_user(&user.id).await.unwrap();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        let empty = store.workspace_usage(&ws.id).await.unwrap();
        let now = delegate_server::ids::now_ms();
        let sandbox = delegate_server::store::Sandbox {
            id: delegate_server::ids::new_id("sbx"),
            workspace_id: ws.id.clone(),
            name: "s".into(),
            kind: delegate_server::store::SandboxKind::Ephemeral,
            backend: "process".into(),
            status: SandboxStatus::Running,
            status_reason: None,
            idle_timeout_s: None,
            meta: json!({}),
            created_by: None,
            created_at: now,
            updated_at: now,
            base: None,
        };
        store.insert_sandbox(&sandbox).await.unwrap();
        for (i, status) in [
            RunStatus::Succeeded,
            RunStatus::Succeeded,
            RunStatus::Failed,
        ]
        .into_iter()
        .enumerate()
        {
            let run = delegate_server::store::Run {
                id: delegate_server::ids::new_id("run"),
                sandbox_id: sandbox.id.clone(),
                workspace_id: ws.id.clone(),
                task: "t".into(),
                model: None,
                agent: None,
                status,
                timeout_s: 60,
                created_by: None,
                created_at: now + i as i64,
                started_at: None,
                finished_at: None,
                parent_run_id: None,
                outcome: Default::default(),
            };
            store.insert_run(&run).await.unwrap();
            store
                .record_usage(&UsageRecord {
                    id: delegate_server::ids::new_id("use"),
                    sandbox_id: sandbox.id.clone(),
                    run_id: Some(run.id.clone()),
                    workspace_id: ws.id.clone(),
                    model: None,
                    usage: Usage {
                        input_tokens: 10,
                        output_tokens: 2,
                        cache_read_tokens: 1,
                        cache_write_tokens: 0,
                        cost_usd: 0.25,
                    },
                    status_code: 200,
                    ttft_ms: None,
                    duration_ms: 5,
                    created_at: now,
                })
                .await
                .unwrap();
        }
        let (usage, runs) = store.workspace_usage(&ws.id).await.unwrap();
        let counts = store.status_counts().await.unwrap();
        let count = |s: RunStatus| counts.runs.iter().find(|(r, _)| *r == s).map(|(_, n)| *n);
        json!({
            "tokens": tokens.iter().map(|t| json!([t.name, t.revoked_at, t.kind.as_str()])).collect::<Vec<_>>(),
            "empty": [empty.0.total_tokens(), empty.1],
            "usage": [usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cost_usd, runs],
            "runs": [count(RunStatus::Succeeded), count(RunStatus::Failed), count(RunStatus::Running)],
            "sandboxes": counts.sandboxes.iter().map(|(s, n)| json!([s.as_str(), n])).collect::<Vec<_>>(),
            "proxy": counts.proxy_requests,
        })
    }
    let sqlite = delegate_server::store::connect("sqlite::memory:")
        .await
        .unwrap();
    let on_sqlite = check(sqlite.as_ref()).await;
    assert_eq!(
        on_sqlite,
        json!({
            "tokens": [["one", null, "api"], ["two", 5, "api"]],
            "empty": [0, 0],
            "usage": [30, 6, 3, 0.75, 3],
            "runs": [2, 1, null],
            "sandboxes": [["running", 1]],
            "proxy": 3,
        })
    );
    let on_postgres = common::on_postgres(|store| async move { check(store.as_ref()).await }).await;
    if let Some(on_postgres) = on_postgres {
        assert_eq!(on_postgres, on_sqlite);
    }
}

//! Any replica, any sandbox: two real `delegate serve` processes on one PostgreSQL. On the docker
//! backend (one engine, one `DELEGATE_DOCKER_DIR`) a warm sandbox made through A is run in,
//! paused, resumed, run in again and deleted through B, which adopts it; on the process backend
//! (whose sandboxes are A's child processes) B refuses every operation with a 409 naming A, and
//! the sandbox stays as it is.

mod common;

use common::docker::DockerHarness;
use common::served::{Served, api_token};
use common::{Harness, error_code};
use delegate_mcp::types::{RunResult, RunStatus};
use delegate_testkit::anthropic::{Script, TOOL_RESULT_PLACEHOLDER};
use delegate_testkit::postgres::TestPostgres;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The REST API of the servers, with a bearer token.
struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        base: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, base: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, base, path, Some(body))
            .await
    }

    async fn delete(&self, base: &str, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, base, path, None).await
    }

    async fn status(&self, base: &str, sandbox_id: &str) -> String {
        let (_, v) = self
            .send(
                reqwest::Method::GET,
                base,
                &format!("/api/sandboxes/{sandbox_id}"),
                None,
            )
            .await;
        v["status"].as_str().unwrap_or_default().to_string()
    }

    /// Creates a warm sandbox through `base` and returns its id.
    async fn create_warm(&self, base: &str, body: Value, log: &dyn Fn() -> String) -> String {
        let (status, v) = self.post(base, "/api/sandboxes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}\n{}", log());
        v["sandbox_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {v}"))
            .to_string()
    }

    /// A run in `sandbox_id` through `base`, waited for.
    async fn run_in(&self, base: &str, sandbox_id: &str, task: &str) -> (StatusCode, Value) {
        self.post(
            base,
            "/api/runs",
            json!({ "task": task, "sandbox_id": sandbox_id, "wait": true, "timeout_seconds": 240 }),
        )
        .await
    }
}

async fn postgres() -> Option<TestPostgres> {
    tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_sandbox_made_through_one_server_is_run_paused_resumed_and_deleted_through_another()
 {
    let Some(pg) = postgres().await else {
        return;
    };
    let Some(d) = DockerHarness::new(Script::write_file(
        "from-a.txt",
        "written through A\n",
        "done on A",
    ))
    .await
    else {
        return;
    };
    let shared = d.h.dir.path().join("docker-shared");
    let shared = shared.display().to_string();
    let mut env: Vec<(&str, String)> = d.serve_env();
    env.push(("DATABASE_URL", pg.url.clone()));
    env.push(("DELEGATE_DOCKER_DIR", shared));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Served::start(&d.h, &env, "a").await;
    let b = Served::start(&d.h, &env, "b").await;
    let api = Api {
        http: reqwest::Client::new(),
        token: api_token(&d.h, &env, &d.h.dir.path().join("admin")).await,
    };
    let logs = || format!("--- A\n{}\n--- B\n{}", a.log(), b.log());

    // Made through A, and a task run in it through A.
    let id = api
        .create_warm(
            &a.base,
            json!({ "name": "shared", "files": { "seed.txt": "seeded\n" } }),
            &logs,
        )
        .await;
    let (status, body) = api.run_in(&a.base, &id, "write from-a.txt").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", logs());
    let first: RunResult = serde_json::from_value(body).unwrap();
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}\n{}", logs());
    assert!(
        first.changed_files.iter().any(|f| f.path == "from-a.txt"),
        "{first:?}"
    );

    // A run through A holds the sandbox for every server: B neither pauses it nor starts a
    // second run in it; B's cancel reaches A.
    d.h.fake.set_script(Script::Hang);
    let requests = d.h.fake.requests().len();
    let (status, body) = api
        .post(
            &a.base,
            "/api/runs",
            json!({ "task": "hang", "sandbox_id": id, "wait": false }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}\n{}", logs());
    let hanging = body["run_id"].as_str().unwrap().to_string();
    d.h.fake.wait_for_requests(requests + 1).await;
    let (status, body) = api
        .post(&b.base, &format!("/api/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}\n{}", logs());
    let (status, body) = api.run_in(&b.base, &id, "a second run").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}\n{}", logs());
    let (status, body) = api
        .post(&b.base, &format!("/api/runs/{hanging}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", logs());
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(api.status(&b.base, &id).await, "running");

    // Paused through B: the container stops, and both servers say so.
    let (status, body) = api
        .post(&b.base, &format!("/api/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", logs());
    assert_eq!(api.status(&a.base, &id).await, "paused");
    let running = d
        .docker
        .inspect_container(&format!("delegate-{id}"), None)
        .await
        .unwrap()
        .state
        .and_then(|s| s.running);
    assert_eq!(running, Some(false));

    // Resumed through B, and a task run in it through B: it sees A's file, and its own change
    // is collected.
    let (status, body) = api
        .post(&b.base, &format!("/api/sandboxes/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", logs());
    assert_eq!(api.status(&a.base, &id).await, "running");
    d.h.fake.set_script(Script::bash(
        "cat from-a.txt && echo through-b > from-b.txt",
        TOOL_RESULT_PLACEHOLDER,
    ));
    let (status, body) = api.run_in(&b.base, &id, "read it, write one").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", logs());
    let second: RunResult = serde_json::from_value(body).unwrap();
    assert_eq!(
        second.status,
        RunStatus::Succeeded,
        "{second:?}\n{}",
        logs()
    );
    assert!(
        second.final_message.contains("written through A"),
        "{second:?}"
    );
    assert!(
        second.changed_files.iter().any(|f| f.path == "from-b.txt"),
        "{second:?}"
    );

    // Deleted through B: the row says so on A as well, and the engine holds nothing of it.
    let (status, body) = api.delete(&b.base, &format!("/api/sandboxes/{id}")).await;
    assert!(status.is_success(), "{status} {body}\n{}", logs());
    assert_eq!(api.status(&a.base, &id).await, "deleted");
    assert_eq!(d.leftovers(&id).await, Vec::<String>::new());

    a.stop().await;
    b.stop().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_process_sandbox_is_refused_naming_its_holder_never_pretended() {
    let Some(pg) = postgres().await else {
        return;
    };
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let db = [("DATABASE_URL", pg.url.as_str())];
    let a = Served::start(&h, &db, "a").await;
    let b = Served::start(&h, &db, "b").await;
    let api = Api {
        http: reqwest::Client::new(),
        token: api_token(&h, &db, &h.dir.path().join("admin")).await,
    };
    let logs = || format!("--- A\n{}\n--- B\n{}", a.log(), b.log());
    let id = api
        .create_warm(&a.base, json!({ "name": "on-a" }), &logs)
        .await;
    let a_id = std::fs::read_to_string(a.data.join("instance-id")).unwrap();
    let a_id = a_id.trim();

    // Every operation through B is refused, naming A; nothing changes.
    let refused = |what: &str, (status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}\n{}", logs());
        assert_eq!(error_code(status, &body), "conflict", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(a_id), "{what}: {body}");
    };
    refused(
        "pause",
        api.post(&b.base, &format!("/api/sandboxes/{id}/pause"), json!({}))
            .await,
    );
    refused("run", api.run_in(&b.base, &id, "say hi").await);
    refused(
        "delete",
        api.delete(&b.base, &format!("/api/sandboxes/{id}")).await,
    );
    assert_eq!(api.status(&b.base, &id).await, "running");
    assert_eq!(h.fake.requests().len(), 0, "no run started anywhere");

    // Paused through A, a resume through B is refused too (B cannot start A's processes).
    let (status, body) = api
        .post(&a.base, &format!("/api/sandboxes/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", logs());
    refused(
        "resume",
        api.post(&b.base, &format!("/api/sandboxes/{id}/resume"), json!({}))
            .await,
    );
    assert_eq!(api.status(&b.base, &id).await, "paused");

    // Through A it goes.
    let (status, body) = api.delete(&a.base, &format!("/api/sandboxes/{id}")).await;
    assert!(status.is_success(), "{status} {body}\n{}", logs());
    assert_eq!(api.status(&b.base, &id).await, "deleted");

    a.stop().await;
    b.stop().await;
    drop(pg);
}

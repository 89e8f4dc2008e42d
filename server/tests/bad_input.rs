//! The bad-input corpus (`tests/corpus/`, written by its `generate.py`): REST bodies, ids, query
//! strings, headers and cookies; MCP tool arguments and JSON-RPC that is not; git bundles
//! uploaded as snapshots; tunnel frames; opencode event lines. (The tar archives are replayed by
//! the docker backend's own tests, where the unpacker lives.) Every input gets a clear error: no
//! panic, no 5xx, an error envelope or a JSON-RPC error with a message, and nothing the server
//! held before is lost or changed.

mod common;
#[path = "support/accounts.rs"]
mod support;

use std::path::{Path, PathBuf};

use base64::Engine;
use bytes::Bytes;
use common::Harness;
use delegate_mcp::types::{RunStatus, SandboxStatus};
use delegate_testkit::anthropic::Script;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Account, Server};

fn corpus(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a corpus line is JSON"))
        .collect()
}

fn bytes_of(entry: &Value, field: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(entry[field].as_str().expect("base64 field"))
        .expect("base64")
}

/// What the corpus's placeholders stand for.
struct Place {
    ws: String,
    sandbox: String,
    run: String,
    user: String,
    session: String,
}

impl Place {
    fn fill(&self, s: &str) -> String {
        s.replace("{ws}", &self.ws)
            .replace("{sandbox}", &self.sandbox)
            .replace("{run}", &self.run)
            .replace("{user}", &self.user)
            .replace("{session}", &self.session)
    }
}

/// Everything the owner can see, to compare before and after the corpus: nothing lost, nothing
/// made.
async fn state(s: &Server, owner: &Account, ws: &str) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        format!("/api/sandboxes?workspace={ws}"),
        format!("/api/runs?workspace={ws}"),
        "/api/tokens".to_string(),
        "/api/workspaces".to_string(),
        "/api/auth/sessions".to_string(),
        format!("/api/workspaces/{ws}/members"),
        format!("/api/workspaces/{ws}/secrets"),
        format!("/api/workspaces/{ws}/invites"),
        format!("/api/workspaces/{ws}/egress"),
    ] {
        let r = s.send(s.bearer(Method::GET, &path, &owner.token)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        out.insert(path, r.body);
    }
    Value::Object(out)
}

/// A clear refusal is a 4xx with delegate's error envelope (a code and a message); anything
/// else is recorded in `failures` (all are reported at the end, not only the first).
fn check_refused(failures: &mut Vec<String>, what: &str, r: &support::Reply) {
    let code = r.body["error"]["code"].as_str().unwrap_or_default();
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    if !r.status.is_client_error() || code.is_empty() || message.is_empty() {
        failures.push(format!(
            "{what}: {} {}",
            r.status,
            short(&r.body.to_string())
        ));
    }
}

fn assert_none(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} inputs were not refused cleanly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}

#[tokio::test]
async fn every_rest_mcp_and_bundle_input_gets_a_clear_error_and_changes_nothing() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().start().await;
    let owner = s.person("owner").await;
    let ws = owner.personal.clone();
    let login = s
        .send(s.req(Method::POST, "/api/auth/login").json(&json!({
            "email": owner.email, "password": owner.password()
        })))
        .await;
    let session = login.session_cookie().expect("a session");
    let sandbox = common::sandbox_row(&ws.id, SandboxStatus::Paused);
    s.store().insert_sandbox(&sandbox).await.unwrap();
    let run = common::run_row(&sandbox, RunStatus::Succeeded);
    s.store().insert_run(&run).await.unwrap();
    let place = Place {
        ws: ws.slug.clone(),
        sandbox: sandbox.id.clone(),
        run: run.id.clone(),
        user: owner.user.id.clone(),
        session,
    };
    let before = state(&s, &owner, &ws.slug).await;

    let mut failures = Vec::new();
    let rest = corpus("rest.jsonl");
    for entry in &rest {
        let method = Method::from_bytes(entry["method"].as_str().unwrap().as_bytes()).unwrap();
        let path = place.fill(entry["path"].as_str().unwrap());
        let mut req = s.req(method.clone(), &path);
        if entry["auth"] == "owner" {
            req = req.bearer_auth(&owner.token);
        }
        let mut typed = false;
        if let Some(headers) = entry["headers"].as_object() {
            for (k, v) in headers {
                typed |= k == "content-type";
                req = req.header(k, place.fill(v.as_str().unwrap()));
            }
        }
        let shown = short(&entry.to_string());
        let body: Option<Vec<u8>> = if let Some(b) = entry["body"].as_str() {
            Some(place.fill(b).into_bytes())
        } else if entry.get("body_b64").is_some() {
            Some(bytes_of(entry, "body_b64"))
        } else if let Some(r) = entry["body_repeat"].as_array() {
            let unit = r[0].as_str().unwrap();
            let n = r[1].as_u64().unwrap() as usize;
            Some(unit.repeat(n).into_bytes())
        } else {
            None
        };
        if let Some(body) = body {
            if !typed {
                req = req.header("content-type", "application/json");
            }
            req = req.body(body);
        }
        let r = s.send(req).await;
        check_refused(
            &mut failures,
            &format!("{method} {}: {shown}", short(&path)),
            &r,
        );
    }

    let mcp = McpSession::open(&s, &owner.token).await;
    let calls = corpus("mcp.jsonl");
    for (n, entry) in calls.iter().enumerate() {
        let body = match entry.get("raw") {
            Some(raw) => raw.as_str().unwrap().to_string(),
            None => {
                let args = place.fill(&entry["arguments"].to_string());
                json!({
                    "jsonrpc": "2.0", "id": n + 1, "method": "tools/call",
                    "params": {
                        "name": entry["tool"],
                        "arguments": serde_json::from_str::<Value>(&args).unwrap()
                    }
                })
                .to_string()
            }
        };
        if let Err(why) = mcp.refuses(&s, &body).await {
            failures.push(why);
        }
    }

    let bundles = corpus("bundles.jsonl");
    let snapshots = h.data_dir().join("snapshots");
    for (n, entry) in bundles.iter().enumerate() {
        let path = format!(
            "/api/snapshots?workspace={}&repo=corpus&commit={}&branch=main",
            ws.slug,
            "a".repeat(40)
        );
        let r = s
            .send(
                s.bearer(Method::POST, &path, &owner.token)
                    .header("content-type", "application/x-git-bundle")
                    .body(bytes_of(entry, "b64")),
            )
            .await;
        check_refused(&mut failures, &format!("bundle #{n}"), &r);
        let left = files_under(&snapshots);
        if !left.is_empty() {
            failures.push(format!("bundle #{n} left {left:?}"));
        }
    }

    assert_none(failures);
    // The server still answers, and holds exactly what it held.
    assert_eq!(state(&s, &owner, &ws.slug).await, before);
    let total = rest.len() + calls.len() + bundles.len();
    eprintln!(
        "bad input: {} REST, {} MCP, {} bundles refused cleanly",
        rest.len(),
        calls.len(),
        bundles.len()
    );
    assert!(total >= 400, "the corpus shrank to {total}");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.flatten().map(|e| e.path()).collect()
}

/// An initialized MCP session over streamable HTTP, spoken by hand so that any bytes can go in.
struct McpSession {
    token: String,
    id: String,
}

impl McpSession {
    async fn open(s: &Server, token: &str) -> McpSession {
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": { "name": "bad-input-corpus", "version": "1" }
            }
        });
        let resp = s
            .req(Method::POST, "/mcp")
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let session = McpSession {
            token: token.to_string(),
            id,
        };
        let done = session
            .post(
                s,
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
            )
            .await;
        assert!(done.status().is_success(), "{}", done.status());
        session
    }

    async fn post(&self, s: &Server, body: String) -> reqwest::Response {
        s.req(Method::POST, "/mcp")
            .bearer_auth(&self.token)
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-06-18")
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A 4xx, a JSON-RPC error that is not an internal one, or a tool error a model can read;
    /// else why not.
    async fn refuses(&self, s: &Server, body: &str) -> Result<(), String> {
        let what = short(body);
        let resp = self.post(s, body.to_string()).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        if status.is_client_error() {
            return Ok(());
        }
        if status != 200 {
            return Err(format!("{what}: {status} {}", short(&text)));
        }
        // One JSON reply, or its SSE framing when the server streamed it.
        let json = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .rfind(|d| !d.trim().is_empty())
            .unwrap_or(&text);
        let reply: Value = serde_json::from_str(json.trim())
            .map_err(|e| format!("{what}: not JSON ({e}): {}", short(&text)))?;
        if let Some(error) = reply.get("error") {
            let code = error["code"].as_i64().unwrap_or_default();
            let worded = error["message"].as_str().is_some_and(|m| !m.is_empty());
            if code == -32603 || !worded {
                return Err(format!("{what}: {error}"));
            }
            return Ok(());
        }
        let result = &reply["result"];
        let message = result["content"][0]["text"].as_str().unwrap_or_default();
        if result["isError"] != true || message.is_empty() {
            return Err(format!("{what}: accepted: {}", short(&reply.to_string())));
        }
        Ok(())
    }
}

#[test]
fn every_tunnel_frame_is_refused_with_a_reason() {
    let frames = corpus("frames.jsonl");
    for entry in &frames {
        let hex = entry["hex"].as_str().unwrap();
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        match delegate_agent::protocol::decode(Bytes::from(raw)) {
            Ok(frame) => panic!("{}: accepted as {frame:?}", short(hex)),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    assert!(frames.len() >= 40);
}

#[test]
fn every_opencode_line_parses_or_fails_with_a_reason_and_stays_bounded() {
    use delegate_server::opencode::events::{ServeTracker, parse_run_line};
    let lines = corpus("opencode.jsonl");
    for entry in &lines {
        let line = entry["line"].as_str().unwrap();
        match parse_run_line(line) {
            Err(e) => assert!(!e.to_string().is_empty()),
            // Unknown or partial events are kept (opencode adds types), but what a person or a
            // model reads of them stays short, whatever the line held.
            Ok(parsed) => {
                let summary = parsed.event.summary();
                assert!(
                    summary.chars().count() <= 200,
                    "{}: a summary of {} chars",
                    short(line),
                    summary.len()
                );
                let _ = parsed.to_event(1, 0);
            }
        }
        let mut tracker = ServeTracker::new("ses_corpus");
        if let Err(e) = tracker.push(line) {
            assert!(!e.to_string().is_empty());
        }
    }
    assert!(lines.len() >= 40);
}

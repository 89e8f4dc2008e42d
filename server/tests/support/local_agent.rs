//! Local agents in tests: a real `delegate agent connect` process in front of a real
//! `opencode serve` (its model calls going to the fake upstream), registered with a served router.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use delegate_mcp::types::SandboxStatus;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::Harness;
use crate::common::serve::{Account, Reply, Server};

/// A `delegate agent connect` process; its stderr is collected.
pub struct Agent {
    pub child: tokio::process::Child,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    pub fn spawn(config_home: &Path, args: &[&str]) -> Agent {
        Agent::spawn_with_path(
            config_home,
            args,
            &std::env::var("PATH").unwrap_or_default(),
        )
    }

    /// [`Agent::spawn`] with its own `PATH` (the programs of the agent's machine).
    pub fn spawn_with_path(config_home: &Path, args: &[&str], path: &str) -> Agent {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_delegate"))
            .env_clear()
            .env("PATH", path)
            .env("XDG_CONFIG_HOME", config_home)
            .env("HOME", config_home)
            .env("DELEGATE_LOG", "info")
            .arg("agent")
            .arg("connect")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn delegate agent connect");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Agent { child, stderr }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` (the agent says what it does).
    pub async fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.stderr();
            if s.contains(needle) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not say {needle:?} within {within:?}; stderr:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A real `opencode serve` in `dir`, its model calls going straight to the fake upstream (on a
/// developer's machine it would use the developer's own key).
pub async fn local_opencode(h: &Harness, dir: &Path) -> (tokio::process::Child, String) {
    let home = dir.join("home");
    let project = dir.join("project");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&project).unwrap();
    // A developer's project: a git repository with a first commit.
    for args in [
        &["init", "-q"][..],
        &[
            "-c",
            "user.name=dev",
            "-c",
            "user.email=dev@example.com",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "start",
        ][..],
    ] {
        let ok = tokio::process::Command::new("git")
            .args(args)
            .current_dir(&project)
            .status()
            .await
            .unwrap();
        assert!(ok.success());
    }
    let env = delegate_server::opencode::environment(
        &home.display().to_string(),
        &format!("{}/v1", h.fake.base_url()),
        "sk-ant-the-developers-own-key",
        "anthropic/claude-sonnet-4-5",
        "anthropic/claude-haiku-4-5",
    );
    let mut child = tokio::process::Command::new(&h.opencode)
        .args(["serve", "--hostname", "127.0.0.1", "--port", "0"])
        .env_clear()
        .envs(env)
        .current_dir(&project)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn opencode serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(url) = l.split("listening on ").nth(1) {
                return url.trim().to_string();
            }
        }
        panic!("opencode serve exited before listening");
    })
    .await
    .expect("opencode serve listens within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// A sandbox's status, polled until it is `want` (or the deadline passes).
pub async fn wait_status(s: &Server, id: &str, want: SandboxStatus, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = s.orch.store().sandbox(id).await.unwrap().status;
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "sandbox {id} is {status}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn create_code(s: &Server, who: &Account, body: Value) -> Reply {
    s.send(
        s.bearer(
            Method::POST,
            &format!("/api/workspaces/{}/agent-codes", who.personal.slug),
            &who.token,
        )
        .json(&body),
    )
    .await
}

/// A running local sandbox's endpoint on the server: its URL and a client that sends the
/// endpoint's Basic credentials (as delegate's own opencode clients do).
pub fn endpoint(s: &Server, id: &str) -> (String, reqwest::Client) {
    let ep = s
        .orch
        .local_endpoint(&id.parse().unwrap())
        .expect("a running local sandbox has an endpoint");
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("opencode:{}", ep.password.expose())
        )
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", auth.parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    (ep.url, client)
}

/// `tools/call` over streamable HTTP (stateless, JSON reply), as an MCP client sends it.
pub async fn mcp_call(s: &Server, token: &str, name: &str, args: Value) -> Value {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": name, "arguments": args, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": { "name": "tunnel-test", "version": "1" },
            "io.modelcontextprotocol/clientCapabilities": {},
        } },
    });
    let resp = s
        .http
        .post(format!("{}/mcp", s.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .json(&body)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap()
}

/// Registers a new agent for `opencode_url` with the server at `server` (the served router, or a
/// relay in front of it); returns it and its sandbox id.
pub async fn join(
    s: &Server,
    owner: &Account,
    server: &str,
    config: &Path,
    opencode_url: &str,
) -> (Agent, String) {
    let path = std::env::var("PATH").unwrap_or_default();
    join_with_path(s, owner, server, config, opencode_url, &path).await
}

/// [`join`] with the agent's own `PATH`.
pub async fn join_with_path(
    s: &Server,
    owner: &Account,
    server: &str,
    config: &Path,
    opencode_url: &str,
    path: &str,
) -> (Agent, String) {
    let created = create_code(s, owner, json!({})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let code = created.body["code"].as_str().unwrap().to_string();
    let agent = Agent::spawn_with_path(
        config,
        &[
            "--server",
            server,
            "--code",
            &code,
            "--name",
            "laptop",
            "--opencode-url",
            opencode_url,
        ],
        path,
    );
    let said = agent
        .wait_for("registered as sandbox ", Duration::from_secs(30))
        .await;
    let id = said
        .split("registered as sandbox ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    (agent, id)
}

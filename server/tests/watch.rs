//! The embedded mode's watch UI (`DELEGATE_WATCH`), end to end: the real `delegate mcp` (driven
//! over stdio as an MCP client does) and `delegate run`, real opencode under bubblewrap, the
//! scripted fake model paced so a run stays running, and real headless Chromium opening the
//! run's watch link.
//!
//! The link comes in the first progress notification; it opens the run page (live events, the
//! status turning `succeeded`, the outcome) once; the same link again, an API call without the
//! cookie, and a foreign `Host` are refused; the listener ends with the process; with
//! `DELEGATE_WATCH=off` there is no link.

mod common;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Harness;
use delegate_mcp::types::RunStatus;
use delegate_testkit::anthropic::Script;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use webdriver::{Browser, artifacts};

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(120);

/// A model slow enough to watch: every SSE event waits `ms`, the final text is ~40 events.
fn slow_script(ms: u64) -> Script {
    let final_text = format!(
        "Done. {}",
        "The file is written and the task is complete. ".repeat(8)
    );
    Script::slow(ms, Script::write_file("hello.txt", "hi\n", &final_text))
}

/// A client that follows no redirects, so a test sees the ticket's own answer.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `http://127.0.0.1:PORT` of a watch link.
fn origin_of(link: &str) -> String {
    let rest = link.strip_prefix("http://").expect("an http link");
    format!("http://{}", rest.split('/').next().unwrap())
}

/// A `delegate mcp` child spoken to over stdio: JSON-RPC lines in, every line out on a channel.
struct McpChild {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    out: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<String>>,
}

impl McpChild {
    fn start(h: &Harness, env: &[(&str, &str)]) -> McpChild {
        let mut cmd = h.delegate();
        cmd.arg("mcp")
            .stdin(Stdio::piped())
            .envs(env.iter().copied());
        let mut child = cmd.spawn().expect("start delegate mcp");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, out) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout is only MCP frames: {e}: {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        McpChild {
            child,
            stdin,
            out,
            stderr,
        }
    }

    async fn send(&mut self, message: Value) {
        let mut line = serde_json::to_vec(&message).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next line from the server.
    async fn next(&mut self) -> Value {
        match tokio::time::timeout(STEP, self.out.recv()).await {
            Ok(Some(v)) => v,
            Ok(None) => panic!("delegate mcp closed stdout; stderr:\n{}", self.log()),
            Err(_) => panic!(
                "nothing from delegate mcp in {STEP:?}; stderr:\n{}",
                self.log()
            ),
        }
    }

    /// The answer to request `id`, with the progress messages that came before it.
    async fn answer(&mut self, id: u64) -> (Value, Vec<String>) {
        let mut progress = Vec::new();
        loop {
            let v = self.next().await;
            if v["id"] == id {
                return (v, progress);
            }
            if v["method"] == "notifications/progress" {
                progress.push(v["params"]["message"].as_str().unwrap_or("").to_string());
            }
        }
    }

    async fn initialize(&mut self) {
        self.send(
            json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "watch-test", "version": "1" } } }),
        )
        .await;
        let (init, _) = self.answer(1).await;
        assert!(init["result"].is_object(), "{init}");
        self.send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .await;
    }

    /// Starts `run_in_sandbox` (request id 2) with a progress token.
    async fn call_run(&mut self, task: &str) {
        self.send(
            json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "run_in_sandbox",
            "arguments": { "task": task, "repo": "none" },
            "_meta": { "progressToken": "watch-1" } } }),
        )
        .await;
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Closes stdin (the client hangs up) and waits for the process to end.
    async fn close(mut self) {
        drop(self.stdin);
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("delegate mcp ended after stdin closed")
            .unwrap();
        assert!(
            status.success(),
            "{status}: {}",
            self.stderr.lock().unwrap()
        );
    }
}

/// What the page shows as the run's status.
const PAGE_STATUS: &str =
    "return document.querySelector('#run-status [data-status]')?.dataset.status || null";

#[tokio::test]
async fn an_embedded_run_is_watched_live_in_chromium_through_a_one_time_link() {
    let Some(h) = Harness::new(slow_script(300)).await else {
        return;
    };
    let Some(b) = Browser::start(1280, 900).await else {
        return;
    };
    let out = artifacts();
    let mut mcp = McpChild::start(&h, &[]);
    mcp.initialize().await;
    mcp.call_run("create hello.txt saying hi").await;

    // The first progress notification carries the link.
    let first = loop {
        let v = mcp.next().await;
        assert_ne!(v["id"], 2, "the run ended before any progress: {v}");
        if v["method"] == "notifications/progress" {
            break v["params"]["message"].as_str().unwrap().to_string();
        }
    };
    let link = first
        .strip_prefix("watch it live: ")
        .unwrap_or_else(|| panic!("the first progress names the watch link: {first}"))
        .to_string();
    let origin = origin_of(&link);
    assert!(
        origin.starts_with("http://127.0.0.1:")
            && link.starts_with(&format!("{origin}/watch/dwt_")),
        "{link}"
    );

    // Before the link is opened, the watch UI opens nothing: the API wants the cookie, the page
    // says to open a link, and a foreign Host is refused.
    let c = http();
    let r = c.get(format!("{origin}/api/auth/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "watch_link_required", "{body}");
    let port = origin.rsplit(':').next().unwrap();
    let r = c
        .get(format!("{origin}/watch/dwt_x"))
        .header("host", format!("rebound.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a foreign Host is refused");
    b.goto(&format!("{origin}/")).await;
    b.wait_for("#watch-link-required").await;
    assert!(b.find("#events").await.is_none());

    // The link: a cookie, then the run's page with its events arriving live.
    b.goto(&link).await;
    b.wait_for("#events > li").await;
    let url = b.url().await;
    let run_id = url
        .strip_prefix(&format!("{origin}/runs/"))
        .unwrap_or_else(|| panic!("redirected to the run's page: {url}"))
        .to_string();
    assert!(run_id.starts_with("run_"), "{run_id}");
    // The header offers nothing the watch UI does not serve.
    b.wait_for("#watch-note").await;
    assert!(b.find("#ws-select").await.is_none());
    assert!(b.find("#signout").await.is_none());
    b.wait_for("#events > li[data-type=tool]").await;
    let live = b.js(PAGE_STATUS, vec![]).await;
    assert_eq!(live, "running", "the tool call showed while the run ran");
    let before = b
        .js(
            "return document.querySelectorAll('#events > li').length",
            vec![],
        )
        .await
        .as_u64()
        .unwrap();
    b.screenshot(&out.join("watch-running.png")).await;
    b.wait_until(
        "the status turning succeeded",
        "return document.querySelector('#run-status [data-status]')?.dataset.status === 'succeeded'",
    )
    .await;
    // The outcome comes from the API with the cookie, after the run ended.
    b.wait_for("#outcome #changed-files").await;
    let shown = b
        .js(
            "return { after: document.querySelectorAll('#events > li').length, \
                      files: [...document.querySelectorAll('#changed-files [data-path]')].map(e => e.dataset.path) }",
            vec![],
        )
        .await;
    assert!(
        shown["after"].as_u64().unwrap() > before,
        "events arrived live: {before} then {shown}"
    );
    assert_eq!(shown["files"], json!(["hello.txt"]));
    b.screenshot(&out.join("watch-succeeded.png")).await;

    // The result carries a link of its own (the progress one is spent), on the same listener.
    let (answer, _) = mcp.answer(2).await;
    let result = &answer["result"]["structuredContent"];
    assert_eq!(result["status"], "succeeded", "{answer}");
    assert_eq!(result["run_id"], run_id.as_str());
    let result_link = result["watch_url"]
        .as_str()
        .expect("a watch_url")
        .to_string();
    assert!(result_link.starts_with(&format!("{origin}/watch/dwt_")));
    assert_ne!(result_link, link);

    // The same link a second time: a page that says so, not the run (though this browser holds
    // the cookie).
    b.goto(&link).await;
    b.wait_for("#watch-refused").await;
    assert!(b.url().await.contains("/watch/"), "{}", b.url().await);
    assert!(b.find("#events").await.is_none());
    assert!(b.body_text().await.contains("used already or has expired"));
    let again = c.get(&link).send().await.unwrap();
    assert_eq!(again.status(), 410);
    assert!(again.headers().get("set-cookie").is_none());

    // Without the cookie (or with a made-up one) the run's API refuses.
    for path in [
        format!("/api/runs/{run_id}/summary"),
        format!("/api/runs/{run_id}/events"),
        format!("/api/runs/{run_id}/patch"),
    ] {
        let r = c.get(format!("{origin}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = c
            .get(format!("{origin}{path}"))
            .header("cookie", format!("delegate_watch_{port}=dwc_made_up"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a made-up cookie");
    }

    // The result's link, redeemed outside the browser: a strict HttpOnly cookie that reads the
    // run and nothing beyond the run page's calls.
    let r = c.get(&result_link).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], format!("/runs/{run_id}").as_str());
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Domain"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| {
        c.get(format!("{origin}{path}"))
            .header("cookie", cookie.clone())
            .send()
    };
    let r = with_cookie(&format!("/api/runs/{run_id}/summary"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let summary: Value = r.json().await.unwrap();
    assert_eq!(summary["status"], "succeeded");
    let r = with_cookie("/api/tokens").await.unwrap();
    assert_eq!(r.status(), 404, "no more than the run page's calls");
    let r = with_cookie("/api/sandboxes").await.unwrap();
    assert_eq!(r.status(), 404);
    // A change with the cookie from another origin is refused (CSRF), and there is no CORS.
    let r = c
        .post(format!("{origin}/api/runs/{run_id}/cancel"))
        .header("cookie", cookie.clone())
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // No secret of the link or the cookie went to stderr or the database.
    let secret = cookie.split('=').nth(1).unwrap();
    let ticket = link.rsplit('/').next().unwrap();
    assert!(!mcp.log().contains(secret) && !mcp.log().contains(ticket));
    let db = h.database_bytes();
    assert!(!common::contains(&db, secret) && !common::contains(&db, ticket));

    // The client hangs up: the process ends, and its listener with it.
    mcp.close().await;
    let gone = c.get(format!("{origin}/")).send().await;
    assert!(gone.is_err(), "the listener outlived the process: {gone:?}");
}

#[tokio::test]
async fn delegate_run_prints_the_watch_link_at_the_start_and_off_means_none() {
    let Some(h) = Harness::new(slow_script(150)).await else {
        return;
    };
    let mut child = h
        .delegate()
        .args(["run", "--json", "create hello.txt saying hi"])
        .spawn()
        .expect("start delegate run");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let stdout = child.stdout.take().unwrap();
    let result = tokio::spawn(async move {
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut BufReader::new(stdout), &mut bytes)
            .await
            .unwrap();
        bytes
    });
    // The link is the first progress line, on stderr at the start.
    let mut seen = String::new();
    let link = tokio::time::timeout(STEP, async {
        while let Ok(Some(line)) = stderr.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if let Some((_, link)) = line.split_once("watch it live: ") {
                return link.trim().to_string();
            }
        }
        panic!("no watch link on stderr:\n{seen}");
    })
    .await
    .expect("the watch link within the step");
    let origin = origin_of(&link);
    // It opens the run while the run runs.
    let c = http();
    let r = c.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let run_page = r.headers()["location"].to_str().unwrap().to_string();
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let run_id = run_page.strip_prefix("/runs/").unwrap().to_string();
    let summary: Value = c
        .get(format!("{origin}/api/runs/{run_id}/summary"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["run_id"], run_id.as_str(), "{summary}");
    assert!(
        summary["status"] == "running" || summary["status"] == "queued",
        "opened while the run ran: {summary}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("delegate run ended")
        .unwrap();
    let stdout = result.await.unwrap();
    let r: delegate_mcp::types::RunResult = serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&stdout)));
    assert_eq!(r.status, RunStatus::Succeeded);
    assert!(status.success());
    assert_eq!(r.run_id, run_id);
    let result_link = r.watch_url.expect("the result's watch_url");
    assert!(result_link.starts_with(&format!("{origin}/watch/dwt_")));
    // The process ended; so did its listener.
    assert!(c.get(&result_link).send().await.is_err());

    // DELEGATE_WATCH=off: no listener, no link, no line.
    let out = tokio::time::timeout(
        STEP,
        h.delegate()
            .env("DELEGATE_WATCH", "off")
            .args(["run", "--json", "create hello.txt saying hi"])
            .output(),
    )
    .await
    .expect("delegate run ended")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: delegate_mcp::types::RunResult =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(r.status, RunStatus::Succeeded, "{stderr}");
    assert_eq!(r.watch_url, None);
    assert!(!stderr.contains("watch it live"), "{stderr}");
}

#[tokio::test]
async fn delegate_mcp_with_watch_off_gives_no_link() {
    let Some(h) = Harness::new(Script::write_file("hello.txt", "hi\n", "done")).await else {
        return;
    };
    let mut mcp = McpChild::start(&h, &[("DELEGATE_WATCH", "off")]);
    mcp.initialize().await;
    mcp.call_run("create hello.txt saying hi").await;
    let (answer, progress) = mcp.answer(2).await;
    let result = &answer["result"]["structuredContent"];
    assert_eq!(result["status"], "succeeded", "{answer}");
    assert!(
        result.get("watch_url").is_none_or(Value::is_null),
        "{result}"
    );
    assert!(!progress.is_empty());
    assert!(
        progress.iter().all(|p| !p.contains("watch it live")),
        "{progress:?}"
    );
    mcp.close().await;
}

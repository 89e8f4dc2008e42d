//! The web UI's server side without a browser (the embedded files, the page fallback, security
//! headers, run summaries that say who delegated), plus the sign-in page's single sign-on buttons
//! in real Chromium.

mod common;
#[path = "support/webdriver.rs"]
mod webdriver;

use common::Harness;
use delegate_mcp::types::RunStatus;
use delegate_server::ids::now_ms;
use delegate_server::settings::{GithubSettings, Secret};
use delegate_server::store::{Run, Sandbox, SandboxKind};
use delegate_testkit::anthropic::Script;
use serde_json::Value;
use webdriver::Browser;

#[tokio::test]
async fn pages_files_and_headers() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().localhost_domain().start().await;
    let http = reqwest::Client::new();
    // Every app path is the page; its scripts and styles come from /ui/ with a strict CSP.
    for path in [
        "/",
        "/signin",
        "/runs/run_x",
        "/w/team/usage",
        "/sandboxes/sbx_1",
    ] {
        let r = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("<script type=\"module\" src=\"/ui/app.js\">"),
            "{path}"
        );
    }
    for (path, ctype) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/views/run.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ctype, "{path}");
    }
    // No external fonts or CDNs: nothing the UI loads names another host.
    for path in delegate_server::web::paths() {
        let text = String::from_utf8_lossy(delegate_server::web::file(path).unwrap())
            // XML namespace names are identifiers, never fetched.
            .replace("http://www.w3.org/", "");
        for needle in ["https://", "http://", "//fonts.", "@import url"] {
            assert!(!text.contains(needle), "{path} refers to {needle}");
        }
    }
    // Not pages: a missing file, an unknown API path, a change to no route.
    let r = http.get(s.url("/ui/missing.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Files are looked up among the embedded names only: no path reaches the disk.
    assert!(delegate_server::web::file("../Cargo.toml").is_none());
    assert!(delegate_server::web::file("../server/build.rs").is_none());
    let r = http.get(s.url("/api/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 401, "unknown API paths stay JSON behind auth");
    let r = http.post(s.url("/elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test]
async fn run_summaries_say_who_delegated_each_run() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().localhost_domain().start().await;
    let alice = s.person("alice").await;
    let store = s.orch.store();
    let ws = &alice.personal;
    let now = now_ms();
    let sandbox = Sandbox {
        kind: SandboxKind::Ephemeral,
        ..common::sandbox_row(&ws.id, delegate_mcp::types::SandboxStatus::Deleted)
    };
    store.insert_sandbox(&sandbox).await.unwrap();
    let tokens = store.tokens_of_user(&alice.user.id).await.unwrap();
    let by = [
        (format!("user:{}", alice.user.id), alice.email.clone()),
        (
            format!("token:{}", tokens[0].id),
            "API token alice-cli".to_string(),
        ),
        (
            "mcp:claude-code".to_string(),
            "MCP client claude-code".to_string(),
        ),
        ("cli".to_string(), "CLI".to_string()),
        (
            "token:tok_someone_elses".to_string(),
            "API token".to_string(),
        ),
    ];
    for (i, (created_by, _)) in by.iter().enumerate() {
        store
            .insert_run(&Run {
                task: format!("task {i} <script>x</script>"),
                created_by: Some(created_by.clone()),
                created_at: now + i as i64,
                started_at: Some(now),
                finished_at: Some(now + 1000),
                ..common::run_row(&sandbox, RunStatus::Succeeded)
            })
            .await
            .unwrap();
    }
    let r = reqwest::Client::new()
        .get(s.url(&format!("/api/runs/summaries?workspace={}", ws.slug)))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), by.len());
    // Newest first.
    for (run, (created_by, words)) in runs.iter().zip(by.iter().rev()) {
        assert_eq!(run["created_by"], created_by.as_str());
        assert_eq!(run["delegated_by"], words.as_str(), "{run}");
        assert_eq!(run["duration_ms"], 1000);
    }
    let id = runs[0]["run_id"].as_str().unwrap();
    let r = reqwest::Client::new()
        .get(s.url(&format!("/api/runs/{id}/summary")))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["workspace"], ws.slug.as_str());
    assert_eq!(v["task"], "task 4 <script>x</script>");
    assert_eq!(v["status"], "succeeded");
    // Someone else's runs are not found.
    let bob = s.person("bob").await;
    let r = reqwest::Client::new()
        .get(s.url(&format!("/api/runs/{id}/summary")))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A workspace's list shows a parent of attempts once, counting and summing all its attempts
/// even when the page holds only some of them; one sandbox's list shows the attempt there.
#[tokio::test]
async fn a_parent_is_listed_once_with_every_attempt_even_past_the_page() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().localhost_domain().start().await;
    let alice = s.person("alice").await;
    let store = s.orch.store();
    let ws = &alice.personal;
    let now = now_ms();
    let parent = delegate_server::ids::new_id("run");
    // Three attempts (the oldest failed), then a single run, newest last.
    let mut sandboxes = Vec::new();
    for (i, (status, parent)) in [
        (RunStatus::Failed, Some(&parent)),
        (RunStatus::Succeeded, Some(&parent)),
        (RunStatus::Succeeded, Some(&parent)),
        (RunStatus::Succeeded, None),
    ]
    .into_iter()
    .enumerate()
    {
        let sandbox = Sandbox {
            kind: SandboxKind::Ephemeral,
            ..common::sandbox_row(&ws.id, delegate_mcp::types::SandboxStatus::Deleted)
        };
        store.insert_sandbox(&sandbox).await.unwrap();
        let mut run = Run {
            created_at: now + i as i64,
            started_at: Some(now),
            finished_at: Some(now + 1000 * (i as i64 + 1)),
            parent_run_id: parent.cloned(),
            ..common::run_row(&sandbox, status)
        };
        run.outcome.usage.cost_usd = 0.25;
        store.insert_run(&run).await.unwrap();
        sandboxes.push(sandbox.id);
    }
    let list = |query: String| {
        let (url, token) = (s.url(&format!("/api/runs/summaries?{query}")), &alice.token);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["runs"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    // Two rows of the list: the single run and the newest attempt; the parent row counts all 3.
    let runs = list(format!("workspace={}&limit=2", ws.slug)).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["run_id"], parent.as_str());
    assert_eq!(runs[1]["attempts"], 3, "{runs:?}");
    assert_eq!(runs[1]["status"], "succeeded");
    assert_eq!(runs[1]["sandbox_id"], "");
    assert_eq!(runs[1]["created_at"], now);
    assert_eq!(runs[1]["duration_ms"], 3000);
    assert!((runs[1]["usage"]["cost_usd"].as_f64().unwrap() - 0.75).abs() < 1e-9);
    assert!(runs[0].get("attempts").is_none(), "{runs:?}");
    // One sandbox's list: the attempt that ran there, as itself.
    let one = list(format!("sandbox_id={}", sandboxes[0])).await;
    assert_eq!(one.len(), 1);
    assert_ne!(one[0]["run_id"], parent.as_str());
    assert_eq!(one[0]["status"], "failed");
}

#[tokio::test]
async fn the_sign_in_page_offers_single_sign_on_when_configured() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let Some(b) = Browser::start(375, 800).await else {
        return;
    };
    let s = h
        .serve()
        .localhost_domain()
        .settings(|settings| {
            settings.sso.redirect_base_url = settings.public_url.clone();
            settings.sso.github = Some(GithubSettings {
                client_id: "Iv1.test".into(),
                client_secret: Secret::new("github-secret-never-shown"),
                api_url: "http://127.0.0.1:9".into(),
                oauth_url: "http://127.0.0.1:9".into(),
            });
        })
        .start()
        .await;
    b.goto(&s.url("/signin?next=/tokens")).await;
    let href = b
        .wait_until(
            "the GitHub button",
            "const a = [...document.querySelectorAll('a.button')].find(a => a.textContent === 'Sign in with GitHub'); \
             return a && a.getAttribute('href')",
        )
        .await;
    assert_eq!(href, "/api/auth/github/start?return_to=%2Ftokens");
    let oidc = b
        .js(
            "return [...document.querySelectorAll('a.button')].some(a => a.textContent.includes('single sign-on'))",
            vec![],
        )
        .await;
    assert_eq!(oidc, false, "no OIDC button without an OIDC provider");
    // A `next` that leaves the server, or loops back to sign-in, is not followed.
    for next in [
        "//evil.example/x",
        "/signin?next=/x",
        "https://evil.example/",
    ] {
        b.goto(&s.url(&format!("/signin?next={next}"))).await;
        let href = b
            .wait_until(
                "the GitHub button",
                "const a = document.querySelector('a.button'); return a && a.getAttribute('href')",
            )
            .await;
        assert_eq!(href, "/api/auth/github/start?return_to=%2F", "next={next}");
    }
}

/// A finished run's change on its page in Chromium: every changed file with its kind, line
/// counts or binary marker and its own part of the preview; a binary file named, not dumped; a
/// file the cut preview missed says so; the whole patch is a link. A hostile file name and
/// hostile content are text.
#[tokio::test]
async fn the_run_page_lists_changed_files_with_their_diffs_and_the_patch() {
    use delegate_mcp::types::{ChangeKind, ChangedFile};
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let Some(b) = Browser::start(1280, 900).await else {
        return;
    };
    let s = h.serve().localhost_domain().start().await;
    let alice = s.person("alice").await;
    let store = s.orch.store();
    let sandbox = Sandbox {
        kind: SandboxKind::Ephemeral,
        ..common::sandbox_row(
            &alice.personal.id,
            delegate_mcp::types::SandboxStatus::Deleted,
        )
    };
    store.insert_sandbox(&sandbox).await.unwrap();
    let evil = "<img src=x onerror=window.__pwned=3>.txt";
    let file = |path: &str, change, additions, deletions, binary| ChangedFile {
        path: path.into(),
        change,
        additions,
        deletions,
        binary,
    };
    let diff = format!(
        "diff --git a/{evil} b/{evil}\nnew file mode 100644\nindex 0000000..1111111\n--- /dev/null\n\
         +++ b/{evil}\n@@ -0,0 +1,2 @@\n+<script>window.__pwned=4</script>\n+second\n\
         diff --git a/logo.png b/logo.png\nindex 2222222..3333333 100644\n\
         Binary files a/logo.png and b/logo.png differ\n\
         diff --git a/src/main.rs b/src/main.rs\nindex 4444444..5555555 100644\n--- a/src/main.rs\n\
         +++ b/src/main.rs\n@@ -1,3 +1,3 @@\n fn main() {{\n-    old();\n+    new();"
    );
    let mut run = Run {
        finished_at: Some(now_ms()),
        ..common::run_row(&sandbox, RunStatus::Succeeded)
    };
    run.outcome.changed_files = vec![
        file(evil, ChangeKind::Added, 2, 0, false),
        file("logo.png", ChangeKind::Modified, 0, 0, true),
        file("src/main.rs", ChangeKind::Modified, 1, 1, false),
        file("late.txt", ChangeKind::Deleted, 0, 7, false),
    ];
    run.outcome.diff = diff;
    run.outcome.diff_truncated = true;
    store.insert_run(&run).await.unwrap();

    b.goto(&s.url(&format!("/signin?next=/runs/{}", run.id)))
        .await;
    b.wait_for("form input[type=email]").await;
    b.type_into("input[type=email]", &alice.email).await;
    b.type_into("input[type=password]", alice.password()).await;
    b.click("button[type=submit]").await;
    b.wait_for("#changed-files li.file").await;

    let shown = b
        .js(
            "const item = (p) => [...document.querySelectorAll('#changed-files li.file')] \
               .find(li => li.dataset.path === p); \
             const part = (p) => { const li = item(p); return li && { \
               summary: li.querySelector('summary').textContent, \
               diff: li.querySelector('pre.diff')?.textContent ?? null, \
               note: li.querySelector('p')?.textContent ?? null, \
               binary: li.dataset.binary }; }; \
             return { \
               paths: [...document.querySelectorAll('#changed-files li.file code.path')].map(c => c.textContent), \
               evil: part(arguments[0]), png: part('logo.png'), rs: part('src/main.rs'), late: part('late.txt'), \
               patch: document.getElementById('download-patch')?.getAttribute('href'), \
               truncated: document.querySelector('#diff-truncated a')?.getAttribute('href') }",
            vec![Value::from(evil)],
        )
        .await;
    let patch = format!("/api/runs/{}/patch", run.id);
    assert_eq!(
        shown["paths"],
        serde_json::json!([evil, "logo.png", "src/main.rs", "late.txt"]),
        "{shown}"
    );
    assert_eq!(shown["patch"], patch.as_str(), "{shown}");
    assert_eq!(shown["truncated"], patch.as_str(), "{shown}");
    let evil_part = &shown["evil"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    assert!(
        text(&evil_part["summary"]).contains("added") && text(&evil_part["summary"]).contains("+2"),
        "{shown}"
    );
    assert!(
        text(&evil_part["diff"]).contains("+<script>window.__pwned=4</script>"),
        "{shown}"
    );
    assert!(!text(&evil_part["diff"]).contains("logo.png"), "{shown}");
    assert_eq!(shown["png"]["binary"], "true", "{shown}");
    assert_eq!(
        shown["png"]["diff"],
        Value::Null,
        "a binary file is not dumped"
    );
    assert!(text(&shown["png"]["summary"]).contains("binary"), "{shown}");
    assert!(
        text(&shown["png"]["note"]).contains("Binary file"),
        "{shown}"
    );
    assert!(text(&shown["rs"]["summary"]).contains("+1"), "{shown}");
    assert!(text(&shown["rs"]["summary"]).contains("−1"), "{shown}");
    assert!(
        text(&shown["rs"]["diff"]).contains("-    old();"),
        "{shown}"
    );
    assert!(
        text(&shown["rs"]["diff"]).starts_with("diff --git a/src/main.rs"),
        "{shown}"
    );
    assert!(
        text(&shown["late"]["summary"]).contains("deleted"),
        "{shown}"
    );
    assert!(
        text(&shown["late"]["note"]).contains("cut short"),
        "{shown}"
    );
    let injected = b
        .js(
            "return { pwned: window.__pwned ?? null, \
             elements: document.querySelectorAll('#main img, #main script').length }",
            vec![],
        )
        .await;
    assert_eq!(
        injected,
        serde_json::json!({ "pwned": null, "elements": 0 })
    );
}

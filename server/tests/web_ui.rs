//! The web UI in real headless Chromium over WebDriver (Debian's chromedriver), against a real
//! `delegate serve` with real opencode under bubblewrap; only the model is the scripted fake,
//! paced so a run stays running long enough to watch, reload and cancel it.
//!
//! One browser walks the product: sign in, create a workspace and a sandbox, watch a run's events
//! arrive live, reload mid-run (history then live, no gap, no duplicate), see the changed files
//! with their diffs and the patch link, cancel a run from the page, open opencode through the
//! gateway, and as a guest see no controls that change anything (and the API refuses them
//! anyway). HTML in the task, a sandbox name, a file
//! name and the model's output is shown as text, never run. Screenshots land in
//! `target/artifacts/`.

mod common;
#[path = "support/webdriver.rs"]
mod webdriver;

use common::Harness;
use common::serve::Server;
use delegate_testkit::anthropic::Script;
use serde_json::{Value, json};
use webdriver::{Browser, artifacts};

/// Markup that would run if any view put data in as HTML.
const XSS: &str = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>";

fn api(s: &Server, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, s.url(path))
        .bearer_auth(token)
}

/// The seq numbers of the events on the page, in page order.
async fn page_seqs(b: &Browser) -> Vec<u64> {
    let v = b
        .js(
            "return [...document.querySelectorAll('#events > li')].map(li => Number(li.dataset.seq))",
            vec![],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

async fn run_status(s: &Server, id: &str, token: &str) -> Value {
    api(s, reqwest::Method::GET, &format!("/api/runs/{id}"), token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Asserts nothing injected ran and no injected element exists in the page.
async fn assert_not_injected(b: &Browser, where_: &str) {
    let v = b
        .js(
            "return { pwned: window.__pwned === undefined ? null : window.__pwned, \
             injected: document.querySelectorAll('#main img, #main script').length }",
            vec![],
        )
        .await;
    assert_eq!(v["pwned"], Value::Null, "{where_}: injected code ran");
    assert_eq!(v["injected"], 0, "{where_}: injected elements in the DOM");
}

/// Asserts every control on the page has an accessible name (a label, aria-label or text).
async fn assert_labelled(b: &Browser, where_: &str) {
    let unnamed = b
        .js(
            "return [...document.querySelectorAll('input, select, textarea, button')] \
               .filter(el => !((el.labels && el.labels.length) || el.getAttribute('aria-label') \
                               || el.textContent.trim())) \
               .map(el => el.outerHTML)",
            vec![],
        )
        .await;
    assert_eq!(unnamed, json!([]), "{where_}: controls without a name");
}

#[tokio::test]
async fn the_web_ui_end_to_end_in_chromium() {
    // Slow enough that the run is visibly running between its first events and its end: every
    // SSE event of the model's replies waits 300 ms (the final text alone is ~40 of them).
    let final_text = format!(
        "Done. {XSS} {}",
        "The file is written and the task is complete. ".repeat(8)
    );
    let evil_file = "evil<b>name</b>.txt";
    let script = Script::slow(
        300,
        Script::write_file(evil_file, &format!("{XSS}\n"), &final_text),
    );
    let Some(h) = Harness::new(script).await else {
        return;
    };
    let Some(b) = Browser::start(1280, 900).await else {
        return;
    };
    let s = h.serve().localhost_domain().start().await;
    let alice = s.person("alice").await;
    let out = artifacts();

    // Sign in: the app sends an anonymous visitor to the sign-in page and back.
    b.goto(&s.url("/tokens")).await;
    b.wait_for("form input[type=email]").await;
    assert!(
        b.url().await.contains("/signin?next=%2Ftokens"),
        "{}",
        b.url().await
    );
    // The keyboard starts on the email field; Tab goes on to the password.
    assert_labelled(&b, "sign-in").await;
    let focused = b.js("return document.activeElement.type", vec![]).await;
    assert_eq!(focused, "email");
    b.type_into("input[type=email]", &alice.email).await;
    b.type_into("input[type=password]", "wrong password!").await;
    b.click("button[type=submit]").await;
    b.wait_until(
        "the error for a wrong password",
        "return document.getElementById('signin-error').textContent",
    )
    .await;
    b.type_into("input[type=password]", alice.password()).await;
    b.click("button[type=submit]").await;
    b.wait_for("#create-token").await;
    assert!(b.url().await.ends_with("/tokens"));

    // A token with ready-to-paste snippets; the secret is in them and works.
    b.type_into("input[name=name]", "laptop").await;
    b.click("#create-token").await;
    let token = b
        .wait_until(
            "the new token",
            "return document.getElementById('new-token')?.textContent",
        )
        .await;
    let token = token.as_str().unwrap().to_string();
    assert!(token.starts_with("dlg_"));
    let claude = b
        .js(
            "return document.getElementById('snippet-claude').textContent",
            vec![],
        )
        .await;
    assert!(claude.as_str().unwrap().contains(&format!(
        "claude mcp add --transport http delegate {}/mcp",
        s.origin
    )));
    let codex = b
        .js(
            "return document.getElementById('snippet-codex').textContent",
            vec![],
        )
        .await;
    assert!(codex.as_str().unwrap().contains("[mcp_servers.delegate]"));
    assert_labelled(&b, "tokens").await;
    let me = api(&s, reqwest::Method::GET, "/api/auth/me", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "the token from the page works");

    // A workspace, then a sandbox in it, named with markup.
    b.click("a[href='/workspaces']").await;
    b.type_into("input[name=slug]", "team-web").await;
    b.type_into("input[name=name]", "Team <i>Web</i>").await;
    b.click("#create-workspace").await;
    b.wait_for("#create-sandbox").await;
    assert!(b.url().await.ends_with("/w/team-web"));
    b.type_into("input[name=name]", XSS).await;
    b.click("#create-sandbox").await;
    let sandbox_id = b
        .wait_until(
            "the new sandbox running in the live list",
            "const row = document.querySelector('#sandboxes tr[data-sandbox]'); \
             return row && row.querySelector('[data-status=running]') ? row.dataset.sandbox : null",
        )
        .await;
    let sandbox_id = sandbox_id.as_str().unwrap().to_string();

    // A code that connects a machine of one's own (a local agent), with the command to run.
    b.click("#create-agent-code").await;
    let command = b
        .wait_until(
            "the agent command",
            "const p = document.querySelector('#agent-command'); return p ? p.textContent : null",
        )
        .await;
    let command = command.as_str().unwrap();
    assert!(
        command.starts_with(&format!(
            "delegate agent connect --server {} --code dac_",
            s.url("")
        )) && command.contains("--opencode-url http://127.0.0.1:4096"),
        "{command}"
    );
    let name = b
        .js(
            "return document.querySelector('#sandboxes tr[data-sandbox] td a').textContent",
            vec![],
        )
        .await;
    assert_eq!(name, XSS, "the name is shown as text");
    assert_not_injected(&b, "sandbox list").await;
    assert_labelled(&b, "sandbox list").await;
    b.screenshot(&out.join("sandbox-list.png")).await;
    // Keyboard: the first Tab stop is the skip link, and it leads to the content.
    b.refresh().await;
    b.wait_for(&format!("tr[data-sandbox='{sandbox_id}']"))
        .await;
    b.keys("\u{E004}").await;
    let first = b
        .js("return document.activeElement.className", vec![])
        .await;
    assert_eq!(first, "skip", "the first Tab stop");

    // The list is live: a pause through the API shows up without a reload.
    let r = api(
        &s,
        reqwest::Method::POST,
        &format!("/api/sandboxes/{sandbox_id}/pause"),
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    b.wait_for(&format!(
        "tr[data-sandbox='{sandbox_id}'] [data-status=paused]"
    ))
    .await;
    b.click(&format!(
        "tr[data-sandbox='{sandbox_id}'] button[data-action=resume]"
    ))
    .await;
    b.wait_for(&format!(
        "tr[data-sandbox='{sandbox_id}'] [data-status=running]"
    ))
    .await;

    // A run through the API, watched live on its page.
    let task = format!("Write the file {evil_file}. {XSS}");
    let r = api(&s, reqwest::Method::POST, "/api/runs", &token)
        .json(&json!({ "task": task, "sandbox_id": sandbox_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let run: Value = r.json().await.unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    b.goto(&s.url(&format!("/runs/{run_id}"))).await;
    b.wait_for("#events > li").await;
    let task_shown = b
        .js("return document.getElementById('task').textContent", vec![])
        .await;
    assert_eq!(task_shown, task.as_str(), "the task is shown as text");
    // Events appear while the run runs: the tool call is on the page before the run ends.
    b.wait_for("#events > li[data-type=tool]").await;
    let live = run_status(&s, &run_id, &token).await;
    assert_eq!(live["status"], "running", "events appeared while running");
    let before = page_seqs(&b).await;
    assert!(!before.is_empty());

    // Reload mid-run: the history comes back, then the rest arrives live.
    b.refresh().await;
    b.wait_until(
        "the history after the reload",
        &format!(
            "return document.querySelectorAll('#events > li').length >= {}",
            before.len()
        ),
    )
    .await;
    let mid = run_status(&s, &run_id, &token).await;
    assert_eq!(mid["status"], "running", "the reload happened mid-run");
    b.wait_for("#outcome #changed-files").await;
    let seqs = page_seqs(&b).await;
    let end = run_status(&s, &run_id, &token).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let count = end["event_count"].as_u64().unwrap();
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(
        seqs.len() > before.len(),
        "events arrived live after the reload"
    );
    let status = b
        .js(
            "return document.querySelector('#run-status [data-status]').dataset.status",
            vec![],
        )
        .await;
    assert_eq!(status, "succeeded");
    // The model's text, the file name and the diff, all as text.
    let shown = b
        .js(
            "return { final: document.getElementById('final-message').textContent, \
             files: document.getElementById('changed-files').textContent, \
             diff: document.querySelector('#changed-files pre.diff').textContent, \
             patch: document.getElementById('download-patch').getAttribute('href'), \
             tool: document.querySelector('#events li[data-type=tool] details').textContent }",
            vec![],
        )
        .await;
    assert!(shown["final"].as_str().unwrap().contains(XSS), "{shown}");
    assert!(
        shown["files"].as_str().unwrap().contains(evil_file),
        "{shown}"
    );
    assert!(shown["diff"].as_str().unwrap().contains(XSS), "{shown}");
    assert_eq!(
        shown["patch"],
        format!("/api/runs/{run_id}/patch").as_str(),
        "{shown}"
    );
    assert!(
        shown["tool"].as_str().unwrap().contains(evil_file),
        "{shown}"
    );
    assert_not_injected(&b, "run page").await;
    assert_labelled(&b, "run page").await;
    let current = b
        .js("return document.getElementById('ws-select').value", vec![])
        .await;
    assert_eq!(
        current, "team-web",
        "the header follows the run's workspace"
    );
    b.screenshot(&out.join("run-page.png")).await;
    b.js(
        "document.getElementById('outcome').scrollIntoView()",
        vec![],
    )
    .await;
    b.screenshot(&out.join("run-result.png")).await;

    // At 375 px nothing scrolls sideways.
    b.set_window(375, 812).await;
    b.refresh().await;
    b.wait_for("#outcome #changed-files").await;
    let overflow = b
        .js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "horizontal overflow at 375 px: {overflow}"
    );
    b.screenshot(&out.join("run-page-375px.png")).await;
    b.goto(&s.url("/w/team-web")).await;
    b.wait_for(&format!(
        "tr[data-sandbox='{sandbox_id}'] [data-status=running]"
    ))
    .await;
    let overflow = b
        .js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "sandbox list overflows at 375 px: {overflow}"
    );
    b.screenshot(&out.join("sandbox-list-375px.png")).await;
    b.set_window(1280, 900).await;

    // Cancel from the page: a run whose model never finishes.
    h.fake.set_script(Script::Hang);
    let r = api(&s, reqwest::Method::POST, "/api/runs", &token)
        .json(&json!({ "task": "never ends", "sandbox_id": sandbox_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let hung: Value = r.json().await.unwrap();
    let hung_id = hung["run_id"].as_str().unwrap().to_string();
    b.goto(&s.url(&format!("/runs/{hung_id}"))).await;
    b.wait_for("#events > li").await;
    b.click("#cancel-run").await;
    b.wait_for("#run-status [data-status=cancelled]").await;
    let cancelled = run_status(&s, &hung_id, &token).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        b.find("#cancel-run").await.is_none(),
        "no Cancel on an ended run"
    );

    // The runs list says who delegated each run.
    b.goto(&s.url("/w/team-web/runs")).await;
    b.wait_for(&format!("tr[data-run='{run_id}']")).await;
    let by = b
        .js(
            &format!(
                "return document.querySelector(\"tr[data-run='{run_id}'] td[data-label='Delegated by']\").textContent"
            ),
            vec![],
        )
        .await;
    assert_eq!(by, "API token laptop");
    assert_not_injected(&b, "runs list").await;

    // Usage: a chart and the numbers, and today's spend against the daily budget.
    let r = api(
        &s,
        reqwest::Method::PUT,
        "/api/workspaces/team-web/limits",
        &token,
    )
    .json(&json!({ "daily_budget_usd": 250.0, "max_concurrent_runs": 3 }))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    b.click("nav a[href='/w/team-web/usage']").await;
    b.wait_for("#usage-chart rect.bar").await;
    let spent = b
        .js(
            "return document.getElementById('spent-today').textContent",
            vec![],
        )
        .await;
    let spent = spent.as_str().unwrap();
    assert!(
        spent.starts_with("$0.0") && spent.contains("of $250.0000") && spent.contains("UTC"),
        "{spent}"
    );
    assert!(
        !spent.starts_with("$0.0000"),
        "the runs above spent something today: {spent}"
    );

    // Open: through the gateway into opencode's own UI.
    b.goto(&s.url(&format!("/sandboxes/{sandbox_id}"))).await;
    b.click("button[data-action=open]").await;
    b.wait_until(
        "opencode's UI through the gateway",
        "return document.title === 'OpenCode' && location.host.startsWith('oc-')",
    )
    .await;
    assert_eq!(
        b.js("return location.host", vec![]).await,
        s.sandbox_host(&sandbox_id).as_str()
    );
    let cookies = b.js("return document.cookie", vec![]).await;
    assert!(
        !cookies.as_str().unwrap().contains("delegate_gateway"),
        "the gateway cookie is HttpOnly"
    );
    assert!(
        !b.url().await.contains("ticket="),
        "no ticket left in the URL"
    );

    // Members: alice (owner) adds a guest through the page.
    let guest = s.person("guest").await;
    b.goto(&s.url("/w/team-web/members")).await;
    b.type_into(
        "form[aria-label='Add a member'] input[type=email]",
        &guest.email,
    )
    .await;
    b.wait_for("form[aria-label='Add a member'] select option[value=guest]")
        .await;
    b.js(
        "const s = document.querySelector(\"form[aria-label='Add a member'] select\"); s.value = 'guest';",
        vec![],
    )
    .await;
    b.click("#add-member").await;
    b.wait_for(&format!("tr[data-member='{}'] select", guest.user.id))
        .await;
    let role = b
        .js(
            &format!(
                "return document.querySelector(\"tr[data-member='{}'] select\").value",
                guest.user.id
            ),
            vec![],
        )
        .await;
    assert_eq!(role, "guest");
    assert_labelled(&b, "members").await;

    // A guest: sees no controls that change things, and the API refuses them anyway.
    b.goto(&s.url("/w/team-web")).await;
    b.click("#signout").await;
    b.wait_for("input[type=email]").await;
    b.type_into("input[type=email]", &guest.email).await;
    b.type_into("input[type=password]", guest.password()).await;
    b.click("button[type=submit]").await;
    b.wait_for("#top #ws-select").await;
    b.goto(&s.url("/w/team-web")).await;
    b.wait_for(&format!("tr[data-sandbox='{sandbox_id}']"))
        .await;
    b.wait_for("#read-only-note").await;
    b.goto(&s.url("/w/team-web/members")).await;
    b.wait_for(&format!("tr[data-member='{}']", guest.user.id))
        .await;
    assert!(
        b.find("#add-member").await.is_none() && b.find("#members select").await.is_none(),
        "a guest manages no members"
    );
    b.goto(&s.url("/w/team-web")).await;
    b.wait_for(&format!("tr[data-sandbox='{sandbox_id}']"))
        .await;
    for control in [
        "#create-sandbox",
        "#create-agent-code",
        "button[data-action=delete]",
        "button[data-action=pause]",
        "button[data-action=open]",
    ] {
        assert!(b.find(control).await.is_none(), "a guest sees {control}");
    }
    b.goto(&s.url(&format!("/runs/{run_id}"))).await;
    b.wait_for("#events > li").await;
    b.goto(&s.url(&format!("/runs/{hung_id}"))).await;
    b.wait_for("#run-status [data-status]").await;
    assert!(b.find("#cancel-run").await.is_none());
    // The guest's own session cookie, from the page: the server refuses.
    let refused = b
        .js(
            "const del = new XMLHttpRequest(); del.open('DELETE', arguments[0], false); del.send(); \
             const make = new XMLHttpRequest(); make.open('POST', '/api/sandboxes', false); \
             make.setRequestHeader('Content-Type', 'application/json'); \
             make.send(JSON.stringify({ workspace: 'team-web' })); \
             return [del.status, make.status]",
            vec![json!(format!("/api/sandboxes/{sandbox_id}"))],
        )
        .await;
    assert_eq!(refused, json!([403, 403]));
    let r = api(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/sandboxes/{sandbox_id}"),
        &guest.token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);

    let r = api(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/sandboxes/{sandbox_id}"),
        &token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

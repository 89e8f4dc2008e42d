//! The warm pool (`DELEGATE_WARM_POOL`), with the real opencode against the scripted fake
//! Anthropic API, on the process AND docker backends: a pooled run leaves nothing for the next
//! (files in and out of the work dir, a secret-like value, a background process) and its token
//! dies with it; a claim takes the pooled sandbox and the metrics say so, while a run the pool
//! cannot serve (or an empty pool) falls back to a fresh sandbox; a repository and files seeded
//! into a pooled sandbox give the same change as a fresh sandbox; a server that ends leaves no
//! pooled sandbox behind, and one that crashed has its leftovers swept at the next start; a
//! seeded opencode config is followed (the pool's prebuilt opencode instance is rebuilt); the
//! pool's warm-up turn reaches no model and nothing of it shows in the run; best-of-N attempts
//! claim pooled sandboxes, the rest starting fresh; bad settings are refused at start.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backends::{Backend, Bed};
use common::{EnvList, processes_mentioning};
use delegate_mcp::types::{RepoBase, RunResult, RunStatus, SandboxStatus};
use delegate_server::ids::{RunId, hash_secret};
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxInputs, TreeCheck};
use delegate_server::settings::Settings;
use delegate_testkit::anthropic::{INPUT_TOKENS, OUTPUT_TOKENS, Script};
use delegate_testkit::repos::{git, write};
use futures::StreamExt;

/// How long a pool may take to fill (opencode serve starting in a sandbox, on a busy machine).
const FILL: Duration = Duration::from_secs(180);

async fn pooled_orchestrator(bed: &Bed, size: usize) -> Orchestrator {
    let mut settings = bed.settings();
    settings.warm_pool = size;
    let orch = delegate_server::app::embedded(settings)
        .await
        .expect("an orchestrator with a warm pool");
    fill(&orch, size).await;
    orch
}

async fn fill(orch: &Orchestrator, size: usize) {
    tokio::time::timeout(FILL, orch.pool_ready(size))
        .await
        .expect("the warm pool fills");
}

async fn run(orch: &Orchestrator, req: RunRequest) -> (RunId, String, RunResult) {
    let (run_id, sandbox_id) = orch.start_run(req).await.expect("the run starts");
    let result = orch.wait(&run_id).await.expect("the run ends");
    (run_id, sandbox_id.to_string(), result)
}

fn task(text: &str) -> RunRequest {
    RunRequest {
        task: text.into(),
        ..Default::default()
    }
}

fn metrics(orch: &Orchestrator) -> String {
    let mut out = String::new();
    orch.render_pool_metrics(&mut out);
    out
}

/// The one value of the metric line that starts with `name ` (labels included in `name`).
fn metric(orch: &Orchestrator, name: &str) -> u64 {
    let text = metrics(orch);
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .expect("a whole number")
}

/// A shell snippet printing how many processes run `sleep 1001`, without its own command line
/// (or the tool's shell's, which holds this text) matching.
const SLEEPERS: &str = "n=0; for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); \
    case \"$c\" in \"sleep 10\"\"01 \") n=$((n+1));; esac; done; echo \"sleepers=$n\"";

/// Prints the sandbox's proxy token (in opencode's config in its environment).
const TOKEN: &str =
    "echo \"token=$(printenv OPENCODE_CONFIG_CONTENT | grep -o 'dsb_[0-9a-f]*' | head -n 1)\"";

fn value_of<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
        .trim()
}

/// Run 1 in a pooled sandbox leaves files in $HOME, /tmp and the work dir, a secret-like value
/// in a file and a process in the background; run 2, from the pool too, sees none of it, has
/// another token, and run 1's token is refused by the proxy once run 1 ended.
async fn a_pooled_run_sees_nothing_of_the_previous_one(backend: Backend) {
    let leave = format!(
        "echo leaked > \"$HOME/marker-home\"; echo leaked > /tmp/marker-tmp; \
         echo leaked > marker-work; export SECRET_LIKE=sk-pool-secret-4711; \
         echo \"$SECRET_LIKE\" > \"$HOME/secret.txt\"; \
         nohup sh -c 'exec sleep \"$0\"' 1001 > /dev/null 2>&1 & \
         for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
           {SLEEPERS} > /tmp/count; grep -q 'sleepers=0' /tmp/count || break; sleep 0.1; done; \
         cat /tmp/count; {TOKEN}"
    );
    let Some(bed) = Bed::new(backend, Script::bash(&leave, "{tool_result}")).await else {
        return;
    };
    let orch = pooled_orchestrator(&bed, 1).await;
    let pooled = orch.pooled_sandbox_ids();
    let (_, first_sandbox, first) = run(&orch, task("leave traces")).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{:?}", first.error);
    assert_eq!(
        vec![first_sandbox.clone()],
        pooled,
        "run 1 took the pooled sandbox"
    );
    // The checks below can see what they look for: run 1 saw its own background process.
    assert_eq!(
        value_of(&first.final_message, "sleepers"),
        "1",
        "{}",
        first.final_message
    );
    let first_token = value_of(&first.final_message, "token").to_string();
    assert!(first_token.starts_with("dsb_"), "{}", first.final_message);

    fill(&orch, 1).await;
    let look = format!(
        "for f in \"$HOME/marker-home\" /tmp/marker-tmp marker-work \"$HOME/secret.txt\" /tmp/count; do \
           [ -e \"$f\" ] && echo \"found $f\"; done; \
         s=sk-pool-; s=\"${{s}}secret-4711\"; \
         grep -rlsF \"$s\" \"$HOME\" /tmp . && echo found-secret-in-a-file; \
         printenv SECRET_LIKE && echo found-secret-in-env; \
         {SLEEPERS}; {TOKEN}"
    );
    bed.fake().set_script(Script::bash(&look, "{tool_result}"));
    let (_, second_sandbox, second) = run(&orch, task("look for traces")).await;
    assert_eq!(second.status, RunStatus::Succeeded, "{:?}", second.error);
    assert_ne!(second_sandbox, first_sandbox);
    assert_eq!(
        orch.store().sandbox(&second_sandbox).await.unwrap().meta["pooled"],
        serde_json::json!(true),
        "run 2 came from the pool too"
    );
    let seen = &second.final_message;
    assert!(!seen.contains("found"), "run 2 saw run 1's traces: {seen}");
    assert_eq!(value_of(seen, "sleepers"), "0", "{seen}");
    let second_token = value_of(seen, "token");
    assert!(second_token.starts_with("dsb_"), "{seen}");
    assert_ne!(
        second_token, first_token,
        "every pooled run has its own token"
    );

    // Run 1's token was a real one (granted at claim), and is revoked now.
    let record = orch
        .store()
        .token_by_hash(&hash_secret(&first_token))
        .await
        .expect("run 1's token was recorded at claim");
    assert_eq!(record.sandbox_id.as_deref(), Some(first_sandbox.as_str()));
    assert!(record.revoked_at.is_some(), "run 1's token is revoked");
    let stop = tokio_util::sync::CancellationToken::new();
    let proxy = delegate_server::net::serve_loopback(orch.proxy().router(), stop.clone())
        .await
        .unwrap();
    let calls_before = bed.fake().requests().len();
    let refused = reqwest::Client::new()
        .post(format!("http://{proxy}/v1/messages"))
        .header("x-api-key", &first_token)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "run 1's token after run 1");
    assert_eq!(bed.fake().requests().len(), calls_before);
    stop.cancel();
    orch.shutdown().await;
    for id in [&first_sandbox, &second_sandbox] {
        assert_eq!(bed.leftovers(id).await, Vec::<String>::new());
        assert_eq!(processes_mentioning(id), Vec::<String>::new());
    }
}

/// The pool runs opencode's first turn while the sandbox waits (`ServeClient::warm_turn`), with
/// the token not yet valid: the proxy refuses it, so no model sees a request before the claim
/// (the pool fills only if the turn was refused), and the claiming run's changes, events and
/// usage are its own alone: no trace of the warm-up's session or refused call, and exactly its
/// model calls counted.
async fn the_warm_up_turn_reaches_no_model_and_leaves_the_run_its_own(backend: Backend) {
    let Some(bed) = Bed::new(backend, Script::write_file("hello.txt", "hi\n", "done")).await else {
        return;
    };
    let orch = pooled_orchestrator(&bed, 1).await;
    assert_eq!(
        bed.fake().requests().len(),
        0,
        "the warm-up turn reached the model"
    );
    let (run_id, _, result) = run(&orch, task("write hello")).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{:?}", result.error);
    assert_eq!(result.final_message, "done");
    let changed: Vec<&str> = result
        .changed_files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(changed, ["hello.txt"]);
    let calls = bed
        .fake()
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .count() as u64;
    assert!(calls >= 2, "the tool call and the answer: {calls}");
    assert_eq!(result.usage.input_tokens, calls * INPUT_TOKENS);
    assert_eq!(result.usage.output_tokens, calls * OUTPUT_TOKENS);
    let events: Vec<_> = orch
        .events(&run_id, 0)
        .map(|e| e.expect("an event"))
        .collect()
        .await;
    assert!(
        events.iter().all(|e| e.kind != "error"),
        "an error in the run: {events:?}"
    );
    let text = format!("{events:?}");
    for warm_up in ["pool warm-up", "sandbox token"] {
        assert!(
            !text.contains(warm_up),
            "the warm-up shows in the run: {text}"
        );
    }
    orch.shutdown().await;
}

/// A plain ephemeral run takes the pooled sandbox (a hit); one with env, or one while the pool
/// is empty, makes a fresh sandbox (a miss) and works as without a pool.
async fn a_claim_is_a_hit_and_what_the_pool_cannot_serve_falls_back(backend: Backend) {
    let Some(bed) = Bed::new(backend, Script::bash("echo \"v=$V\"", "{tool_result}")).await else {
        return;
    };
    let orch = pooled_orchestrator(&bed, 1).await;
    assert_eq!(metric(&orch, "delegate_pool_size"), 1);
    let pooled = orch.pooled_sandbox_ids();
    // Two at once: the first takes the pooled sandbox, the second finds the pool empty (a new
    // one takes seconds to start) and makes its own.
    let (hit_run, hit_sandbox) = orch.start_run(task("one")).await.unwrap();
    let (empty_run, empty_sandbox) = orch.start_run(task("two")).await.unwrap();
    assert_eq!(vec![hit_sandbox.to_string()], pooled);
    assert!(!pooled.contains(&empty_sandbox.to_string()));
    for id in [&hit_run, &empty_run] {
        let r = orch.wait(id).await.unwrap();
        assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
        assert!(r.final_message.contains("v="), "{}", r.final_message);
    }
    assert_eq!(metric(&orch, "delegate_pool_hits_total"), 1);
    assert_eq!(
        metric(&orch, "delegate_pool_misses_total{reason=\"empty\"}"),
        1
    );
    let fresh = orch.store().sandbox(empty_sandbox.as_str()).await.unwrap();
    assert!(fresh.meta.get("pooled").is_none(), "{}", fresh.meta);

    // env: a pooled sandbox's environment was fixed when it started.
    fill(&orch, 1).await;
    let waiting = orch.pooled_sandbox_ids();
    let (_, env_sandbox, with_env) = run(
        &orch,
        RunRequest {
            inputs: SandboxInputs {
                env: [("V".to_string(), "from-env".to_string())].into(),
                ..Default::default()
            },
            ..task("three")
        },
    )
    .await;
    assert_eq!(
        with_env.status,
        RunStatus::Succeeded,
        "{:?}",
        with_env.error
    );
    assert!(
        with_env.final_message.contains("v=from-env"),
        "{}",
        with_env.final_message
    );
    assert!(!waiting.contains(&env_sandbox));
    assert_eq!(
        orch.pooled_sandbox_ids(),
        waiting,
        "the pooled one still waits"
    );
    assert_eq!(
        metric(&orch, "delegate_pool_misses_total{reason=\"inputs\"}"),
        1
    );
    assert_eq!(metric(&orch, "delegate_pool_hits_total"), 1);
    assert!(metric(&orch, "delegate_pool_refill_seconds_count") >= 2);
    orch.shutdown().await;
    assert_eq!(orch.pool_size(), 0);
    for id in waiting {
        assert_eq!(bed.leftovers(&id).await, Vec::<String>::new());
        assert_eq!(processes_mentioning(&id), Vec::<String>::new());
    }
}

/// A repository snapshot and files seeded into a pooled sandbox: the agent sees both and its
/// change comes back exactly as from a fresh sandbox running the same task.
async fn a_pooled_run_with_a_repository_gives_the_fresh_runs_change(backend: Backend) {
    let agent = "cat README.md notes.txt; git log --format=%s | cat; \
                 printf 'changed\\n' >> README.md; printf 'new\\n' > added.txt";
    let Some(bed) = Bed::new(backend, Script::bash(agent, "{tool_result}")).await else {
        return;
    };
    let repo = bed.harness().dir.path().join("project");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write(&repo.join("README.md"), "# project\n");
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "the first commit",
        ],
    );
    let bundle = bed.harness().dir.path().join("project.bundle");
    git(
        &repo,
        &["bundle", "create", "-q", bundle.to_str().unwrap(), "--all"],
    );

    let mut changes = Vec::new();
    for size in [1, 0] {
        let mut settings = bed.settings();
        settings.warm_pool = size;
        let orch = delegate_server::app::embedded(settings).await.unwrap();
        fill(&orch, size).await;
        let owner = orch.local_user().id.clone();
        let ws = orch
            .store()
            .workspaces_of_user(&owner)
            .await
            .unwrap()
            .remove(0)
            .0;
        let copy = bed.harness().dir.path().join(format!("copy-{size}.bundle"));
        std::fs::copy(&bundle, &copy).unwrap();
        let base = RepoBase {
            repo: repo.display().to_string(),
            commit: None,
            branch: Some("main".into()),
            dirty: false,
        };
        let (id, _) = orch
            .snapshots()
            .register(
                &owner,
                &ws.id,
                base,
                &copy,
                Default::default(),
                TreeCheck::Count,
            )
            .await
            .unwrap();
        let snapshot = orch.snapshots().take(&id, &owner, &ws.id).unwrap();
        let pooled = orch.pooled_sandbox_ids();
        let (_, sandbox, r) = run(
            &orch,
            RunRequest {
                snapshot: Some(Arc::new(snapshot)),
                files: [("notes.txt".to_string(), "seeded note\n".to_string())].into(),
                ..task("change the project")
            },
        )
        .await;
        assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
        assert_eq!(pooled.contains(&sandbox), size == 1, "pool {size}");
        for seen in ["# project", "seeded note", "the first commit"] {
            assert!(r.final_message.contains(seen), "{}", r.final_message);
        }
        let files: Vec<(String, u64, u64)> = r
            .changed_files
            .iter()
            .map(|f| (f.path.clone(), f.additions, f.deletions))
            .collect();
        changes.push((files, r.diff.clone()));
        orch.shutdown().await;
    }
    assert_eq!(
        changes[0].0,
        vec![
            ("README.md".to_string(), 1, 0),
            ("added.txt".to_string(), 1, 0)
        ]
    );
    assert_eq!(
        changes[0], changes[1],
        "pooled and fresh runs changed alike"
    );
}

/// A server with a pool that ends leaves no pooled sandbox; one that crashed (dropped without
/// shutting down) leaves none either once the next start has swept: its processes ended with
/// it, its containers are removed.
async fn no_pooled_sandbox_outlives_its_server(backend: Backend) {
    let Some(bed) = Bed::new(backend, Script::text("done")).await else {
        return;
    };
    let orch = pooled_orchestrator(&bed, 1).await;
    let ended = orch.pooled_sandbox_ids();
    if backend == Backend::Process {
        assert!(!processes_mentioning(&ended[0]).is_empty());
    } else {
        assert!(!bed.leftovers(&ended[0]).await.is_empty());
    }
    orch.shutdown_server().await;
    assert_eq!(orch.pool_size(), 0);
    assert_eq!(processes_mentioning(&ended[0]), Vec::<String>::new());
    assert_eq!(bed.leftovers(&ended[0]).await, Vec::<String>::new());
    drop(orch);

    // A crash: the orchestrator goes without shutting down.
    let orch = pooled_orchestrator(&bed, 1).await;
    let crashed = orch.pooled_sandbox_ids();
    drop(orch);
    let mut settings = bed.settings();
    settings.warm_pool = 1;
    let next = delegate_server::app::embedded(settings).await.unwrap();
    next.reconcile().await.unwrap();
    fill(&next, 1).await;
    assert_eq!(processes_mentioning(&crashed[0]), Vec::<String>::new());
    assert_eq!(bed.leftovers(&crashed[0]).await, Vec::<String>::new());
    // The new server's own pooled sandbox survived the sweep.
    let own = next.pooled_sandbox_ids();
    assert_ne!(own, crashed);
    assert_eq!(own.len(), 1);
    if backend == Backend::Docker {
        assert!(!bed.leftovers(&own[0]).await.is_empty());
    }
    // Its row-less sandboxes never showed in a list.
    assert!(next.list_sandboxes(None).await.unwrap().is_empty());
    next.shutdown_server().await;
    assert_eq!(bed.leftovers(&own[0]).await, Vec::<String>::new());
    let _ = SandboxStatus::Deleted;
}

/// Best-of-N attempts claim pooled sandboxes like any run the pool can serve: with a pool of 2,
/// 3 attempts take both pooled sandboxes (2 hits) and the third, finding the pool empty (a new
/// one takes seconds), makes a fresh sandbox; all three make the same change.
async fn attempts_claim_pooled_sandboxes_and_the_rest_start_fresh(backend: Backend) {
    let Some(bed) = Bed::new(backend, Script::write_file("hello.txt", "hi\n", "written")).await
    else {
        return;
    };
    let orch = pooled_orchestrator(&bed, 2).await;
    let pooled = orch.pooled_sandbox_ids();
    let started = orch
        .start_attempts(task("create hello.txt"), 3)
        .await
        .expect("the attempts start");
    let sandboxes: Vec<String> = started
        .attempts
        .iter()
        .map(|(_, s)| s.to_string())
        .collect();
    for id in &pooled {
        assert!(sandboxes.contains(id), "{id} not claimed: {sandboxes:?}");
    }
    assert_eq!(metric(&orch, "delegate_pool_hits_total"), 2);
    assert_eq!(
        metric(&orch, "delegate_pool_misses_total{reason=\"empty\"}"),
        1
    );
    let fresh: Vec<&String> = sandboxes.iter().filter(|s| !pooled.contains(s)).collect();
    assert_eq!(fresh.len(), 1, "{sandboxes:?}");
    let row = orch.store().sandbox(fresh[0]).await.unwrap();
    assert!(row.meta.get("pooled").is_none(), "{}", row.meta);
    for (run_id, _) in &started.attempts {
        let r = orch.wait(run_id).await.unwrap();
        assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
        assert_eq!(r.changed_files.len(), 1, "{r:?}");
        assert_eq!(r.parent_run_id.as_deref(), Some(started.parent.as_str()));
    }
    orch.shutdown().await;
    for id in &sandboxes {
        assert_eq!(bed.leftovers(id).await, Vec::<String>::new());
        assert_eq!(processes_mentioning(id), Vec::<String>::new());
    }
}

#[test]
fn bad_pool_settings_are_refused_at_start_with_the_setting_named() {
    let load = |pairs: Vec<(&str, &str)>| Settings::load(None, &EnvList(pairs));
    for (value, says) in [
        ("abc", "DELEGATE_WARM_POOL"),
        ("-1", "DELEGATE_WARM_POOL"),
        ("33", "at most 32"),
        ("100000", "at most 32"),
    ] {
        let err = load(vec![("DELEGATE_WARM_POOL", value)])
            .err()
            .unwrap_or_else(|| panic!("DELEGATE_WARM_POOL={value} was accepted"))
            .to_string();
        assert!(
            err.contains("DELEGATE_WARM_POOL") && err.contains(says),
            "{value}: {err}"
        );
    }
    for value in ["0s", "soon"] {
        let err = load(vec![("DELEGATE_WARM_POOL_IDLE", value)])
            .err()
            .unwrap_or_else(|| panic!("DELEGATE_WARM_POOL_IDLE={value} was accepted"))
            .to_string();
        assert!(err.contains("DELEGATE_WARM_POOL_IDLE"), "{value}: {err}");
    }
    let ok = load(vec![
        ("DELEGATE_WARM_POOL", "32"),
        ("DELEGATE_WARM_POOL_IDLE", "2m"),
    ])
    .unwrap();
    assert_eq!(ok.warm_pool, 32);
    assert_eq!(ok.warm_pool_idle, Duration::from_secs(120));
    let off = load(vec![]).unwrap();
    assert_eq!(off.warm_pool, 0, "off unless asked for");
}

/// The pool builds opencode's instance on the empty work dir; a seed that brings its own opencode
/// config has it rebuilt, so the config counts: here `opencode.json` names an instructions file
/// whose text must reach the model. A pooled run without such a file keeps the prebuilt instance
/// and is a hit as well.
async fn a_pooled_run_follows_the_seeded_opencode_config(backend: Backend) {
    let Some(bed) = Bed::new(backend, Script::text("done")).await else {
        return;
    };
    let orch = pooled_orchestrator(&bed, 1).await;
    let marker = "pool-instructions-7f3a";
    let pooled = orch.pooled_sandbox_ids();
    let (_, sandbox, configured) = run(
        &orch,
        RunRequest {
            files: [
                (
                    "opencode.json".to_string(),
                    r#"{"instructions": ["NOTES.md"]}"#.to_string(),
                ),
                ("NOTES.md".to_string(), format!("Always say {marker}.\n")),
            ]
            .into(),
            ..task("hello")
        },
    )
    .await;
    assert_eq!(
        configured.status,
        RunStatus::Succeeded,
        "{:?}",
        configured.error
    );
    assert_eq!(vec![sandbox], pooled, "a pool hit");
    let requests = bed.fake().requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().any(|r| r.body.to_string().contains(marker)),
        "the seeded opencode.json's instructions reach the model"
    );

    fill(&orch, 1).await;
    let pooled = orch.pooled_sandbox_ids();
    let seen = requests.len();
    let (_, sandbox, plain) = run(&orch, task("hello")).await;
    assert_eq!(plain.status, RunStatus::Succeeded, "{:?}", plain.error);
    assert_eq!(vec![sandbox], pooled, "a pool hit");
    let requests = bed.fake().requests();
    assert!(requests.len() > seen);
    assert!(
        requests[seen..]
            .iter()
            .all(|r| !r.body.to_string().contains(marker)),
        "nothing of the previous run's config"
    );
    orch.shutdown().await;
}

#[tokio::test]
async fn a_pooled_run_follows_the_seeded_opencode_config_on_process() {
    a_pooled_run_follows_the_seeded_opencode_config(Backend::Process).await;
}

#[tokio::test]
async fn a_pooled_run_follows_the_seeded_opencode_config_on_docker() {
    a_pooled_run_follows_the_seeded_opencode_config(Backend::Docker).await;
}

#[tokio::test]
async fn a_pooled_run_sees_nothing_of_the_previous_one_on_process() {
    a_pooled_run_sees_nothing_of_the_previous_one(Backend::Process).await;
}

#[tokio::test]
async fn a_pooled_run_sees_nothing_of_the_previous_one_on_docker() {
    a_pooled_run_sees_nothing_of_the_previous_one(Backend::Docker).await;
}

#[tokio::test]
async fn a_claim_is_a_hit_and_what_the_pool_cannot_serve_falls_back_on_process() {
    a_claim_is_a_hit_and_what_the_pool_cannot_serve_falls_back(Backend::Process).await;
}

#[tokio::test]
async fn a_claim_is_a_hit_and_what_the_pool_cannot_serve_falls_back_on_docker() {
    a_claim_is_a_hit_and_what_the_pool_cannot_serve_falls_back(Backend::Docker).await;
}

#[tokio::test]
async fn a_pooled_run_with_a_repository_gives_the_fresh_runs_change_on_process() {
    a_pooled_run_with_a_repository_gives_the_fresh_runs_change(Backend::Process).await;
}

#[tokio::test]
async fn a_pooled_run_with_a_repository_gives_the_fresh_runs_change_on_docker() {
    a_pooled_run_with_a_repository_gives_the_fresh_runs_change(Backend::Docker).await;
}

#[tokio::test]
async fn no_pooled_sandbox_outlives_its_server_on_process() {
    no_pooled_sandbox_outlives_its_server(Backend::Process).await;
}

#[tokio::test]
async fn no_pooled_sandbox_outlives_its_server_on_docker() {
    no_pooled_sandbox_outlives_its_server(Backend::Docker).await;
}

#[tokio::test]
async fn attempts_claim_pooled_sandboxes_and_the_rest_start_fresh_on_process() {
    attempts_claim_pooled_sandboxes_and_the_rest_start_fresh(Backend::Process).await;
}

#[tokio::test]
async fn attempts_claim_pooled_sandboxes_and_the_rest_start_fresh_on_docker() {
    attempts_claim_pooled_sandboxes_and_the_rest_start_fresh(Backend::Docker).await;
}

#[tokio::test]
async fn the_warm_up_turn_reaches_no_model_and_leaves_the_run_its_own_on_process() {
    the_warm_up_turn_reaches_no_model_and_leaves_the_run_its_own(Backend::Process).await;
}

#[tokio::test]
async fn the_warm_up_turn_reaches_no_model_and_leaves_the_run_its_own_on_docker() {
    the_warm_up_turn_reaches_no_model_and_leaves_the_run_its_own(Backend::Docker).await;
}

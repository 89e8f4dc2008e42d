//! `env`, `setup`, `image` and `secrets` of a sandbox, through real opencode runs against the
//! scripted fake Anthropic API, each body on the process AND docker backends: the sandbox sees
//! its env and secrets, setup output becomes `setup` events and a failing setup ends the run
//! `setup_failed` with the output's tail, a secret's value appears nowhere delegate keeps or
//! shows (events, result, database, server log), a listed image is the one used, and bad input
//! is refused before any sandbox row is written.

mod common;

use common::backends::{Backend, Bed};
use delegate_mcp::types::{ErrorKind, RunStatus};
use delegate_server::ids::RunId;
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxInputs, SandboxRequest};
use delegate_server::settings::SecretKey;
use delegate_server::store::Workspace;
use delegate_testkit::anthropic::Script;
use futures::StreamExt;

async fn default_workspace(orch: &Orchestrator) -> Workspace {
    orch.store()
        .workspaces_of_user(&orch.local_user().id)
        .await
        .unwrap()
        .remove(0)
        .0
}

async fn events_of(orch: &Orchestrator, run_id: &RunId, kind: &str) -> Vec<serde_json::Value> {
    orch.events(run_id, 0)
        .filter_map(|e| async move { e.ok().filter(|e| e.kind == kind).map(|e| e.data) })
        .collect()
        .await
}

fn env(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The agent's shell sees `env`; setup ran first in the work dir with the same env, and each of
/// its lines is a `setup` event.
async fn env_reaches_the_agent_and_setup_runs_first_with_its_output_as_events(backend: Backend) {
    let command = "echo \"env=$GREETING\"; cat made-by-setup.txt";
    let Some(h) = Bed::new(backend, Script::bash(command, "{tool_result}")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let (run_id, _) = orch
        .start_run(RunRequest {
            task: "show the greeting".into(),
            inputs: SandboxInputs {
                env: env(&[("GREETING", "hello from env")]),
                setup: Some(
                    "echo \"setup sees $GREETING in $(pwd)\"; echo 'setup was here' > made-by-setup.txt; echo to-stderr >&2"
                        .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(
        r.final_message.contains("env=hello from env"),
        "{}",
        r.final_message
    );
    assert!(
        r.final_message.contains("setup was here"),
        "{}",
        r.final_message
    );
    let setup = events_of(&orch, &run_id, "setup").await;
    assert!(
        setup
            .iter()
            .any(|e| e["stream"] == "stdout"
                && e["line"] == "setup sees hello from env in /workspace"),
        "{setup:?}"
    );
    assert!(setup.iter().any(|e| e["line"] == "to-stderr"), "{setup:?}");
    assert_eq!(
        h.leftovers(&r.sandbox_id).await,
        Vec::<String>::new(),
        "{backend:?}"
    );
}

/// A setup script that outlives the run's timeout is killed: the run ends `timed_out`, the
/// agent never starts, and nothing of the sandbox is left (on docker: no setup container).
async fn a_setup_past_the_timeout_is_killed(backend: Backend) {
    let Some(h) = Bed::new(backend, Script::text("the agent must not run")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let started = std::time::Instant::now();
    let (run_id, _) = orch
        .start_run(RunRequest {
            task: "never reached".into(),
            timeout: Some(std::time::Duration::from_secs(10)),
            inputs: SandboxInputs {
                setup: Some("echo started; sleep 600".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::TimedOut, "{backend:?}: {:?}", r.error);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "{backend:?}: the setup was not killed at the timeout"
    );
    let setup = events_of(&orch, &run_id, "setup").await;
    assert!(setup.iter().any(|e| e["line"] == "started"), "{setup:?}");
    assert!(
        h.fake()
            .requests()
            .iter()
            .all(delegate_testkit::anthropic::RecordedRequest::is_title_request),
        "opencode never ran the task"
    );
    assert_eq!(
        h.leftovers(&r.sandbox_id).await,
        Vec::<String>::new(),
        "{backend:?}"
    );
}

#[tokio::test]
async fn a_setup_past_the_timeout_is_killed_on_process() {
    a_setup_past_the_timeout_is_killed(Backend::Process).await;
}

#[tokio::test]
async fn a_setup_past_the_timeout_is_killed_on_docker() {
    a_setup_past_the_timeout_is_killed(Backend::Docker).await;
}

/// A non-zero exit ends the run `failed` with `setup_failed` and the output's tail; the agent
/// never starts.
async fn a_failing_setup_fails_the_run_with_the_tail_of_its_output(backend: Backend) {
    let Some(h) = Bed::new(backend, Script::text("the agent must not run")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let (run_id, _) = orch
        .start_run(RunRequest {
            task: "never reached".into(),
            inputs: SandboxInputs {
                setup: Some(
                    "i=0; while [ $i -lt 400 ]; do echo \"noise line $i\"; i=$((i+1)); done; \
                     echo 'npm ERR! missing script: ci' >&2; exit 3"
                        .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Failed, "{backend:?}");
    let error = r.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::SetupFailed);
    assert!(
        error.message.contains("exited with status 3"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("npm ERR! missing script: ci"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("noise line 399"),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains("noise line 1\n"),
        "only the tail: {}",
        error.message
    );
    assert!(error.message.len() < 3 * 1024, "{}", error.message.len());
    assert_eq!(events_of(&orch, &run_id, "setup").await.len(), 401);
    assert!(
        h.fake()
            .requests()
            .iter()
            .all(delegate_testkit::anthropic::RecordedRequest::is_title_request),
        "opencode never ran the task"
    );
}

/// A warm sandbox gets its env and runs setup once at creation; a run in it may not bring env
/// of its own; a failing setup fails the creation with the tail.
async fn a_warm_sandbox_runs_setup_once_at_creation(backend: Backend) {
    let command = "echo \"env=$COLOUR\"; cat count.txt";
    let Some(h) = Bed::new(backend, Script::bash(command, "{tool_result}")).await else {
        return;
    };
    let orch = h.orchestrator().await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            inputs: SandboxInputs {
                env: env(&[("COLOUR", "teal")]),
                setup: Some("echo once >> count.txt".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let (run_id, _) = orch
        .start_run(RunRequest {
            task: "colour?".into(),
            sandbox_id: Some(sandbox.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(r.final_message.contains("env=teal"), "{}", r.final_message);
    assert_eq!(
        r.final_message.matches("once").count(),
        1,
        "{}",
        r.final_message
    );

    let err = orch
        .start_run(RunRequest {
            task: "again".into(),
            sandbox_id: Some(sandbox.id.clone()),
            inputs: SandboxInputs {
                env: env(&[("COLOUR", "red")]),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("only for a fresh sandbox"),
        "{err}"
    );

    let err = orch
        .create_sandbox(SandboxRequest {
            inputs: SandboxInputs {
                setup: Some("echo 'pip: no such package' ; exit 7".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap_err();
    let said = err.to_string();
    assert!(said.contains("exited with status 7"), "{said}");
    assert!(said.contains("pip: no such package"), "{said}");
    let failed: Vec<_> = orch
        .list_sandboxes(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.status == delegate_mcp::types::SandboxStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("pip: no such package")),
        "{:?}",
        failed[0].status_reason
    );
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .unwrap();
    // Nothing of either is left (on docker: the serve and setup containers, both volumes).
    for id in [&sandbox.id, &failed[0].id] {
        assert_eq!(
            h.leftovers(id).await,
            Vec::<String>::new(),
            "{backend:?} {id}"
        );
    }
}

/// Each kind of bad input is a clear error, and no sandbox row exists afterwards.
async fn bad_input_is_refused_before_any_sandbox_exists(backend: Backend) {
    let Some(h) = Bed::new(backend, Script::text("unused")).await else {
        return;
    };
    let mut settings = h.settings();
    settings.secret_key = Some(SecretKey([3; 32]));
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    let cases: Vec<(SandboxInputs, &str)> = vec![
        (
            SandboxInputs {
                env: env(&[("NOT-A-NAME", "x")]),
                ..Default::default()
            },
            "is not a variable name",
        ),
        (
            SandboxInputs {
                env: env(&[("HTTPS_PROXY", "http://evil")]),
                ..Default::default()
            },
            "set by delegate itself",
        ),
        (
            SandboxInputs {
                secrets: vec!["NO_SUCH_SECRET".into()],
                ..Default::default()
            },
            "has no secret `NO_SUCH_SECRET`",
        ),
        (
            SandboxInputs {
                setup: Some("x".repeat(64 * 1024 + 1)),
                ..Default::default()
            },
            "setup: 65537 bytes, at most 65536",
        ),
        match backend {
            Backend::Process => (
                SandboxInputs {
                    image: Some("delegate-sandbox:1.18.33".into()),
                    ..Default::default()
                },
                "runs no containers",
            ),
            Backend::Docker | Backend::Kube => (
                SandboxInputs {
                    image: Some("delegate-sandbox:not-on-the-list".into()),
                    ..Default::default()
                },
                "`delegate-sandbox:not-on-the-list` is not one of this server's sandbox images",
            ),
        },
    ];
    for (inputs, says) in cases {
        let err = orch
            .start_run(RunRequest {
                task: "t".into(),
                inputs: inputs.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{err} should say {says}");
        let err = orch
            .create_sandbox(SandboxRequest {
                inputs,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{err} should say {says}");
    }
    assert!(orch.list_sandboxes(None).await.unwrap().is_empty());
}

/// A secret reaches the sandbox's environment, and even when the agent prints it, its value is
/// in no event, not in the result and not in the database: `[secret NAME]` stands in for it.
/// At rest it is sealed: the database holds neither the value nor anything that opens without
/// the key.
async fn a_secret_reaches_the_sandbox_and_is_redacted_everywhere(backend: Backend) {
    const VALUE: &str = "s3cr3t-VALUE-4f9a2c7e";
    let command = "echo \"token=$API_TOKEN\"; echo \"$API_TOKEN\" > leaked.txt; cat leaked.txt";
    let Some(h) = Bed::new(backend, Script::bash(command, "{tool_result}")).await else {
        return;
    };
    let logs = common::serve::logs();
    let mut settings = h.settings();
    // Without a key, secrets cannot be stored.
    let orch = delegate_server::app::embedded(settings.clone())
        .await
        .unwrap();
    let ws = default_workspace(&orch).await;
    let err = orch
        .set_secret(&ws, "API_TOKEN", VALUE, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DELEGATE_SECRET_KEY"), "{err}");
    drop(orch);

    settings.secret_key = Some(SecretKey([9; 32]));
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    orch.set_secret(&ws, "API_TOKEN", VALUE, None)
        .await
        .unwrap();
    let names = orch.list_secrets(&ws).await.unwrap();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].name, "API_TOKEN");
    assert!(
        !common::contains(&h.harness().database_bytes(), VALUE),
        "sealed at rest"
    );

    let (run_id, _) = orch
        .start_run(RunRequest {
            task: "print the token".into(),
            inputs: SandboxInputs {
                secrets: vec!["API_TOKEN".into()],
                // Setup's output is redacted as the agent's is.
                setup: Some("echo \"setup-token=$API_TOKEN\"".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(
        r.final_message.contains("token=[secret API_TOKEN]"),
        "{}",
        r.final_message
    );
    assert!(!r.final_message.contains(VALUE));
    assert!(!r.diff.contains(VALUE), "{}", r.diff);
    assert!(r.diff.contains("[secret API_TOKEN]"), "{}", r.diff);
    let all: Vec<_> = orch
        .events(&run_id, 0)
        .filter_map(|e| async move { e.ok() })
        .collect()
        .await;
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        text.contains("[secret API_TOKEN]"),
        "the agent did print it"
    );
    assert!(
        text.contains("setup-token=[secret API_TOKEN]"),
        "{backend:?}: setup printed it"
    );
    assert!(!text.contains(VALUE), "no event holds the value");
    let result = serde_json::to_string(&orch.result(&run_id).await.unwrap()).unwrap();
    assert!(!result.contains(VALUE));
    drop(orch);
    assert!(
        !common::contains(&h.harness().database_bytes(), VALUE),
        "no database byte holds the value"
    );
    // The capture is the server's subscriber: a line planted through it must show up.
    tracing::info!("control line {run_id}");
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        log.contains(&format!("control line {run_id}")),
        "the log capture works"
    );
    assert!(!log.contains(VALUE), "the server log holds the value");
}

#[tokio::test]
async fn env_reaches_the_agent_and_setup_runs_first_with_its_output_as_events_on_process() {
    env_reaches_the_agent_and_setup_runs_first_with_its_output_as_events(Backend::Process).await;
}

#[tokio::test]
async fn env_reaches_the_agent_and_setup_runs_first_with_its_output_as_events_on_docker() {
    env_reaches_the_agent_and_setup_runs_first_with_its_output_as_events(Backend::Docker).await;
}

#[tokio::test]
async fn a_failing_setup_fails_the_run_with_the_tail_of_its_output_on_process() {
    a_failing_setup_fails_the_run_with_the_tail_of_its_output(Backend::Process).await;
}

#[tokio::test]
async fn a_failing_setup_fails_the_run_with_the_tail_of_its_output_on_docker() {
    a_failing_setup_fails_the_run_with_the_tail_of_its_output(Backend::Docker).await;
}

#[tokio::test]
async fn a_warm_sandbox_runs_setup_once_at_creation_on_process() {
    a_warm_sandbox_runs_setup_once_at_creation(Backend::Process).await;
}

#[tokio::test]
async fn a_warm_sandbox_runs_setup_once_at_creation_on_docker() {
    a_warm_sandbox_runs_setup_once_at_creation(Backend::Docker).await;
}

#[tokio::test]
async fn bad_input_is_refused_before_any_sandbox_exists_on_process() {
    bad_input_is_refused_before_any_sandbox_exists(Backend::Process).await;
}

#[tokio::test]
async fn bad_input_is_refused_before_any_sandbox_exists_on_docker() {
    bad_input_is_refused_before_any_sandbox_exists(Backend::Docker).await;
}

#[tokio::test]
async fn a_secret_reaches_the_sandbox_and_is_redacted_everywhere_on_process() {
    a_secret_reaches_the_sandbox_and_is_redacted_everywhere(Backend::Process).await;
}

#[tokio::test]
async fn a_secret_reaches_the_sandbox_and_is_redacted_everywhere_on_docker() {
    a_secret_reaches_the_sandbox_and_is_redacted_everywhere(Backend::Docker).await;
}

/// On docker, `image` picks one of the admin's list: a listed image that the engine has runs
/// the task; a listed one it lacks fails the run `image_missing` naming it, which shows the
/// choice is the image actually used.
#[tokio::test]
async fn a_listed_image_is_the_one_a_docker_run_uses() {
    use bollard::query_parameters::{RemoveImageOptionsBuilder, TagImageOptionsBuilder};
    let Some(h) = common::docker::DockerHarness::new(Script::bash(
        "echo ran-in-the-listed-image",
        "{tool_result}",
    ))
    .await
    else {
        return;
    };
    // A tag of our own for the shared image, removed again at the end.
    let tag = format!("listed-{}", std::process::id());
    let listed = format!("delegate-sandbox:{tag}");
    let absent = format!("delegate-sandbox:absent-{}", std::process::id());
    h.docker
        .tag_image(
            &delegate_testkit::real::sandbox_image(),
            Some(
                TagImageOptionsBuilder::new()
                    .repo("delegate-sandbox")
                    .tag(&tag)
                    .build(),
            ),
        )
        .await
        .unwrap();
    let mut settings = h.settings();
    settings.docker.images = vec![listed.clone(), absent.clone()];
    let orch = h.orchestrator(settings).await;
    let run = |image: &str| RunRequest {
        task: "where am I".into(),
        inputs: SandboxInputs {
            image: Some(image.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let (run_id, _) = orch.start_run(run(&listed)).await.unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    let (missing_id, _) = orch.start_run(run(&absent)).await.unwrap();
    let missing = orch.wait(&missing_id).await.unwrap();
    let _ = h
        .docker
        .remove_image(
            &listed,
            Some(RemoveImageOptionsBuilder::new().noprune(true).build()),
            None,
        )
        .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(
        r.final_message.contains("ran-in-the-listed-image"),
        "{}",
        r.final_message
    );
    assert_eq!(missing.status, RunStatus::Failed);
    let error = missing.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::ImageMissing, "{}", error.message);
    assert!(error.message.contains(&absent), "{}", error.message);
}

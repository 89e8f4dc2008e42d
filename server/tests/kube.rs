//! The kubernetes backend against the fake API server of `delegate_testkit::kube`, whose pods
//! are containers of delegate's real sandbox image on the test Docker Engine: a real opencode
//! run (the model is the scripted fake) goes through pods, claims and secrets made over the
//! Kubernetes wire format; the requests the backend sends are checked field by field; and every
//! manifest it makes is validated against Kubernetes 1.37's schema with `kubernetes-validate`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::kube::{KubeHarness, NAMESPACE};
use common::served::{Served, api_token};
use delegate_mcp::types::{ChangeKind, RunResult, RunStatus, SandboxStatus};
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxInputs, SandboxRequest};
use delegate_server::sandbox::kube::Manifests;
use delegate_server::sandbox::kube::manifest::{self, Job, PodRole};
use delegate_server::settings::Settings;
use delegate_testkit::anthropic::{Script, TOOL_RESULT_PLACEHOLDER};
use delegate_testkit::kube::{FakeCluster, Recorded};
use delegate_testkit::real;
use serde_json::Value;

/// The chart's sandbox NetworkPolicy (templates/networkpolicy.yaml as rendered for release
/// `delegate` in `NAMESPACE`), which a namespace per workspace gets a copy of.
fn chart_policy() -> Value {
    let server = serde_json::json!({
        "app.kubernetes.io/name": "delegate", "app.kubernetes.io/instance": "delegate",
        "app.kubernetes.io/component": "server",
    });
    let from_server = serde_json::json!([{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "podSelector": {"matchLabels": server},
    }]);
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "delegate-sandboxes", "labels": {"app.kubernetes.io/name": "delegate"}},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "delegate.sandbox", "operator": "Exists"}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": from_server, "ports": [{"protocol": "TCP", "port": 4096}]}],
            "egress": [
                {"to": from_server, "ports": [{"protocol": "TCP", "port": 8080}]},
                {"to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            ],
        },
    })
}

/// Puts the chart's sandbox NetworkPolicy into `NAMESPACE`, as `helm install` would.
async fn install_chart_policy(cluster: &FakeCluster) {
    let made = reqwest::Client::new()
        .post(format!(
            "{}/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies",
            cluster.url
        ))
        .json(&chart_policy())
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), reqwest::StatusCode::CREATED);
}

fn task(text: &str) -> RunRequest {
    RunRequest {
        task: text.into(),
        timeout: Some(Duration::from_secs(180)),
        created_by: Some("test".into()),
        ..Default::default()
    }
}

async fn run(orch: &Orchestrator, req: RunRequest) -> RunResult {
    let (run_id, _) = orch.start_run(req).await.expect("start the run");
    tokio::time::timeout(Duration::from_secs(240), orch.wait(&run_id))
        .await
        .expect("the run ends within 4 minutes")
        .expect("wait for the run")
}

/// The hardening every pod must have, checked on the body the backend sent.
fn assert_hardened(pod: &Value) {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
    assert_eq!(spec["enableServiceLinks"], false, "{name}");
    assert_eq!(spec["restartPolicy"], "Never", "{name}");
    assert_eq!(spec["hostNetwork"], false, "{name}");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(spec["securityContext"]["runAsUser"], 1000, "{name}");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{name}"
    );
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{name}");
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(sc["privileged"], false, "{name}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(sc["runAsNonRoot"], true, "{name}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{name}"
    );
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
    assert_eq!(c["resources"]["limits"]["memory"], "1024Mi", "{name}");
    assert_eq!(c["resources"]["requests"]["memory"], "1024Mi", "{name}");
    assert_eq!(c["resources"]["limits"]["cpu"], "2000m", "{name}");
    assert_eq!(c["resources"]["requests"]["cpu"], "250m", "{name}");
    let labels = &pod["metadata"]["labels"];
    assert!(
        labels["delegate.sandbox"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sbx_")
    );
    assert!(
        labels["delegate.owner"]
            .as_str()
            .unwrap_or_default()
            .starts_with("srv_")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_run_goes_through_hardened_pods_and_leaves_nothing_behind() {
    let Some(k) = KubeHarness::new(Script::write_file(
        "hello.txt",
        "hi from kubernetes\n",
        "Wrote it.",
    ))
    .await
    else {
        return;
    };
    let orch = k.orchestrator().await;
    let result = run(
        &orch,
        RunRequest {
            files: BTreeMap::from([("seed.md".to_string(), "# seeded\n".to_string())]),
            ..task("write hello.txt")
        },
    )
    .await;
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
    assert_eq!(result.final_message, "Wrote it.");
    assert_eq!(result.changed_files.len(), 1, "{:?}", result.changed_files);
    assert_eq!(result.changed_files[0].path, "hello.txt");
    assert_eq!(result.changed_files[0].change, ChangeKind::Added);
    assert!(
        result.diff.contains("+hi from kubernetes"),
        "{}",
        result.diff
    );
    for request in k.h.fake.requests() {
        assert_eq!(request.header("x-api-key"), Some(common::REAL_KEY));
    }
    let sandbox = orch.store().sandbox(&result.sandbox_id).await.unwrap();
    assert_eq!(sandbox.backend, "kubernetes");
    assert_eq!(sandbox.status, SandboxStatus::Deleted);
    assert_eq!(k.leftovers(), Vec::<String>::new());
    assert!(
        !k.h.data_dir()
            .join("kubernetes")
            .join(&result.sandbox_id)
            .exists()
    );

    // What the backend sent, field by field.
    let pods = k.created("pods");
    let roles: Vec<&str> = pods
        .iter()
        .map(|p| {
            p["metadata"]["labels"]["delegate.kind"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(roles, ["seed", "ephemeral", "commit"]);
    for pod in &pods {
        assert_hardened(pod);
    }
    let run_pod = &pods[1];
    let container = &run_pod["spec"]["containers"][0];
    assert_eq!(container["image"], real::sandbox_image().as_str());
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        format!("delegate-{}", result.sandbox_id.replace('_', "-"))
    );
    assert_eq!(
        container["env"],
        serde_json::json!([{"name": "TASK", "value": "-"}])
    );
    assert!(
        container["command"][2]
            .as_str()
            .unwrap_or_default()
            .ends_with("< /run/delegate-task/task"),
        "{container}"
    );
    // Credentials are in the Secret only: no pod body carries the proxy token or the config.
    let secrets = k.created("secrets");
    let env_secret = secrets
        .iter()
        .find(|s| {
            s["metadata"]["labels"]["delegate.kind"] == "ephemeral"
                && s["data"].get("OPENCODE_CONFIG_CONTENT").is_some()
        })
        .expect("the sandbox's env secret");
    assert_eq!(env_secret["immutable"], true);
    for pod in &pods {
        let text = pod.to_string();
        assert!(
            !text.contains("OPENCODE_CONFIG_CONTENT") && !text.contains("dsb_"),
            "{text}"
        );
    }
    // The work claim, then deleted with everything else by label.
    let claims = k.created("persistentvolumeclaims");
    assert_eq!(claims.len(), 1);
    assert_eq!(
        claims[0]["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
    assert_eq!(
        claims[0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    // Waiting is watching from a resourceVersion, and output is the followed log stream.
    let requests = k.cluster.requests();
    assert!(requests.iter().any(|r| {
        r.query.get("watch").is_some_and(|w| w == "true")
            && r.query.contains_key("resourceVersion")
            && r.query
                .get("fieldSelector")
                .is_some_and(|f| f.starts_with("metadata.name="))
    }));
    assert!(requests.iter().any(|r| r.path.ends_with("/log")
        && r.query.get("follow").is_some_and(|f| f == "true")
        && r.query.get("container").is_some_and(|c| c == "sandbox")));
    k.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_sandbox_keeps_its_files_across_pause_and_resume() {
    let Some(k) = KubeHarness::new(Script::write_file("first.txt", "from run one\n", "done")).await
    else {
        return;
    };
    let orch = k.orchestrator().await;
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            name: Some("warm".into()),
            files: BTreeMap::from([("seed.txt".to_string(), "seeded\n".to_string())]),
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("create a warm sandbox");
    assert_eq!(sandbox.status, SandboxStatus::Running);
    let pod_name = format!("delegate-{}", sandbox.id.replace('_', "-"));
    let serve_pod = k
        .cluster
        .object("pods", NAMESPACE, &pod_name)
        .expect("the serve pod");
    assert_eq!(serve_pod["status"]["phase"], "Running");
    assert_eq!(
        serve_pod["spec"]["containers"][0]["env"][1]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_hardened(&serve_pod);
    let in_sandbox = |text: &str| RunRequest {
        sandbox_id: Some(sandbox.id.clone()),
        ..task(text)
    };
    let first = run(&orch, in_sandbox("write first.txt")).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    assert_eq!(first.changed_files[0].path, "first.txt");

    // Pause deletes the pod and keeps the claims; resume makes the pod again on them.
    orch.pause_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("pause");
    assert!(k.cluster.object("pods", NAMESPACE, &pod_name).is_none());
    let mut claims = k.cluster.names("persistentvolumeclaims", NAMESPACE);
    claims.sort();
    assert_eq!(
        claims,
        [format!("{pod_name}-home"), format!("{pod_name}-work")]
    );
    orch.resume_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("resume");
    assert_eq!(
        k.cluster
            .object("pods", NAMESPACE, &pod_name)
            .expect("pod again")["status"]["phase"],
        "Running"
    );
    k.h.fake.set_script(Script::bash(
        "cat seed.txt first.txt && echo more >> first.txt",
        TOOL_RESULT_PLACEHOLDER,
    ));
    let after = run(&orch, in_sandbox("after resume")).await;
    assert_eq!(after.status, RunStatus::Succeeded, "{after:?}");
    assert!(
        after.final_message.contains("seeded") && after.final_message.contains("from run one"),
        "{}",
        after.final_message
    );
    assert_eq!(after.changed_files[0].path, "first.txt");
    assert_eq!(after.changed_files[0].change, ChangeKind::Modified);

    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("delete");
    assert_eq!(k.leftovers(), Vec::<String>::new());
    k.cluster.shutdown().await;
}

/// `kubernetes-validate` from `DELEGATE_KUBERNETES_VALIDATE`, or the test venv's.
fn kubernetes_validate() -> Option<PathBuf> {
    let path = std::env::var_os("DELEGATE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| real::repo_root().join(".tools/venv/bin/kubernetes-validate"));
    if path.exists() {
        Some(path)
    } else {
        real::unavailable(
            "kubernetes-validate",
            &format!(
                "{} is missing (scripts/setup --test installs it)",
                path.display()
            ),
        )
    }
}

#[tokio::test]
async fn every_manifest_the_backend_makes_is_valid_for_kubernetes_1_37() {
    let Some(validate) = kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::load(
        None,
        &[
            ("DELEGATE_DATA_DIR", dir.path().to_str().unwrap()),
            ("DELEGATE_K8S_RUNTIME_CLASS", "gvisor"),
            ("DELEGATE_K8S_STORAGE_CLASS", "standard"),
        ],
    )
    .expect("settings");
    settings.sandbox_memory_mb = 2048;
    let m = Manifests::new(&settings, "srv_0192f3aa0192f3aa0192f3aa0192f3aa".into());
    let id = "sbx_0192f3bb0192f3bb0192f3bb0192f3bb";
    let image = "delegate-sandbox:1.18.33";
    let args = vec![
        "--model=anthropic/claude".to_string(),
        "--title=t".to_string(),
    ];
    let env = BTreeMap::from([
        ("OPENCODE_CONFIG_CONTENT".to_string(), "{}".to_string()),
        ("OPENCODE_SERVER_PASSWORD".to_string(), "pw".to_string()),
    ]);
    let manifests: Vec<(&str, Value)> = vec![
        (
            "env-secret",
            serde_json::to_value(m.env_secret(id, "warm", image, &env)).unwrap(),
        ),
        (
            "task-secret",
            serde_json::to_value(m.task_secret(id, "do it")).unwrap(),
        ),
        (
            "seed-secret",
            serde_json::to_value(m.seed_secret(id, 0, b"tar")).unwrap(),
        ),
        (
            "work-claim",
            serde_json::to_value(m.claim(id, "work")).unwrap(),
        ),
        (
            "home-claim",
            serde_json::to_value(m.claim(id, "home")).unwrap(),
        ),
        (
            "headless-pod",
            serde_json::to_value(m.sandbox_pod(id, image, &PodRole::Headless(&args))).unwrap(),
        ),
        (
            "serve-pod",
            serde_json::to_value(m.sandbox_pod(id, image, &PodRole::Serve)).unwrap(),
        ),
        (
            "setup-pod",
            serde_json::to_value(m.sandbox_pod(id, image, &PodRole::Setup("echo hi"))).unwrap(),
        ),
        (
            "headless-pod-after-setup",
            serde_json::to_value({
                let mut pod = m.sandbox_pod(id, image, &PodRole::Headless(&args));
                m.keep_home(&mut pod, id);
                pod
            })
            .unwrap(),
        ),
        (
            "seed-pod",
            serde_json::to_value(m.job_pod(
                id,
                &Job {
                    what: "seed",
                    image,
                    script: "true",
                    env: &[],
                    seed_parts: 3,
                    node: None,
                },
            ))
            .unwrap(),
        ),
        (
            "commit-pod",
            serde_json::to_value(m.job_pod(
                id,
                &Job {
                    what: "commit",
                    image,
                    script: "true",
                    env: &[("DELEGATE_BASE", "abc".into())],
                    seed_parts: 0,
                    node: Some("node-1".into()),
                },
            ))
            .unwrap(),
        ),
    ];
    let ws = "wsp_0192f3ee0192f3ee0192f3ee0192f3ee";
    let template: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(chart_policy()).unwrap();
    let mut manifests = manifests;
    manifests.push((
        "workspace-namespace",
        serde_json::to_value(manifest::workspace_namespace(
            "delegate-wsp-0192f3ee0192f3ee0192f3ee0192f3ee",
            ws,
        ))
        .unwrap(),
    ));
    manifests.push((
        "workspace-policy",
        serde_json::to_value(manifest::workspace_policy(&template, ws)).unwrap(),
    ));
    let mut files = Vec::new();
    for (name, mut object) in manifests {
        // kube-rs sends apiVersion and kind with every object; so does the dump.
        let (kind, api) = match name {
            n if n.ends_with("secret") => ("Secret", "v1"),
            n if n.ends_with("claim") => ("PersistentVolumeClaim", "v1"),
            n if n.ends_with("namespace") => ("Namespace", "v1"),
            n if n.ends_with("policy") => ("NetworkPolicy", "networking.k8s.io/v1"),
            _ => ("Pod", "v1"),
        };
        object["apiVersion"] = api.into();
        object["kind"] = kind.into();
        let path = dir.path().join(format!("{name}.json"));
        tokio::fs::write(&path, object.to_string()).await.unwrap();
        files.push(path);
    }
    let out = tokio::process::Command::new(&validate)
        .args(["--kubernetes-version", "1.37.0", "--strict"])
        .args(&files)
        .output()
        .await
        .expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches(" passed for resource ").count(),
        files.len(),
        "{stdout}"
    );
    assert!(settings.kube.runtime_class.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_adopts_warm_sandboxes_and_sweeps_its_own_orphans_by_label() {
    let Some(k) = KubeHarness::new(Script::text("never asked")).await else {
        return;
    };
    let a = k.orchestrator().await;
    let warm = a
        .create_sandbox(SandboxRequest {
            name: Some("survivor".into()),
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("create a warm sandbox");
    drop(a);
    // Secrets of delegate's that no database row knows: one this server made (swept), one
    // another installation in the same namespace made (left alone).
    let me = tokio::fs::read_to_string(k.h.data_dir().join("instance-id"))
        .await
        .unwrap();
    let orphan = "sbx_0192f3cc0192f3cc0192f3cc0192f3cc";
    let foreign = "sbx_0192f3dd0192f3dd0192f3dd0192f3dd";
    let client = reqwest::Client::new();
    for (id, owner) in [(orphan, me.trim()), (foreign, "srv_someone_else")] {
        let made = client
            .post(format!(
                "{}/api/v1/namespaces/{NAMESPACE}/secrets",
                k.cluster.url
            ))
            .json(&serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {
                    "name": format!("delegate-{}", id.replace('_', "-")),
                    "labels": {"delegate.sandbox": id, "delegate.owner": owner},
                },
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), reqwest::StatusCode::CREATED);
    }

    let b = k.orchestrator().await;
    // What `delegate serve` does at start.
    b.reconcile().await.expect("reconcile");
    let adopted = b.store().sandbox(&warm.id).await.unwrap();
    assert_eq!(adopted.status, SandboxStatus::Running, "{adopted:?}");
    let names = k.cluster.names("secrets", NAMESPACE);
    assert!(!names.iter().any(|n| n.contains("0192f3cc")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("0192f3dd")), "{names:?}");
    // The adopted sandbox pauses, resumes and is deleted through the new server.
    let id = warm.id.parse().unwrap();
    b.pause_sandbox(&id).await.expect("pause");
    b.resume_sandbox(&id).await.expect("resume");
    b.delete_sandbox(&id).await.expect("delete");
    let left = k.leftovers();
    assert_eq!(left.len(), 1, "{left:?}");
    k.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_cluster_cannot_pull_fails_the_run_with_its_reason() {
    let Some(k) = KubeHarness::new(Script::text("never asked")).await else {
        return;
    };
    let mut settings = k.settings();
    settings.docker.image = "delegate-sandbox:no-such-tag".into();
    let orch = delegate_server::app::embedded(settings)
        .await
        .expect("an orchestrator");
    let result = run(&orch, task("anything")).await;
    assert_eq!(result.status, RunStatus::Failed, "{result:?}");
    let error = result.error.expect("an error");
    assert_eq!(
        error.kind,
        delegate_mcp::types::ErrorKind::ImageMissing,
        "{error:?}"
    );
    assert!(error.message.contains("no-such-tag"), "{}", error.message);
    assert_eq!(k.leftovers(), Vec::<String>::new());
    assert!(k.h.fake.requests().is_empty());
    k.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_over_the_memory_limit_ends_the_run_oom_from_the_container_status() {
    // `tail` keeps a whole line in memory, and /dev/zero has no newline.
    let Some(k) = KubeHarness::new(Script::bash(
        "head -c 3000m /dev/zero | tail > /dev/null; echo survived",
        "done",
    ))
    .await
    else {
        return;
    };
    let mut settings = k.settings();
    settings.sandbox_memory_mb = 600;
    let orch = delegate_server::app::embedded(settings)
        .await
        .expect("an orchestrator");
    let result = run(&orch, task("use too much memory")).await;
    assert_eq!(result.status, RunStatus::Failed, "{result:?}");
    let error = result.error.expect("an error");
    assert_eq!(error.kind, delegate_mcp::types::ErrorKind::Oom, "{error:?}");
    assert!(error.message.contains("600 MiB"), "{}", error.message);
    assert_eq!(k.leftovers(), Vec::<String>::new());
    k.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_deletes_its_pod_and_ends_cancelled() {
    let Some(k) = KubeHarness::new(Script::Hang).await else {
        return;
    };
    let orch = k.orchestrator().await;
    let (run_id, _) = orch.start_run(task("hang")).await.expect("start the run");
    // The model was asked: opencode runs in its pod.
    k.h.fake.wait_for_requests(1).await;
    orch.cancel_run(&run_id).await.expect("cancel");
    let result = tokio::time::timeout(Duration::from_secs(60), orch.wait(&run_id))
        .await
        .expect("the run ends within a minute of its cancel")
        .expect("wait for the run");
    assert_eq!(result.status, RunStatus::Cancelled, "{result:?}");
    assert_eq!(k.leftovers(), Vec::<String>::new());
    // The pod went with a delete without grace: its processes are gone, not asked to finish.
    let deletes: Vec<Recorded> = k
        .cluster
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "DELETE"
                && r.path.ends_with(&format!(
                    "/pods/delegate-{}",
                    result.sandbox_id.replace('_', "-")
                ))
        })
        .collect();
    assert!(!deletes.is_empty());
    assert!(
        deletes.iter().all(|r| r
            .body
            .as_ref()
            .is_some_and(|b| b["gracePeriodSeconds"] == 0)),
        "{deletes:?}"
    );
    k.cluster.shutdown().await;
}

/// The REST API of `delegate serve`, with a bearer token.
struct Rest {
    http: reqwest::Client,
    token: String,
}

impl Rest {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, base: &str, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
        self.send(reqwest::Method::POST, format!("{base}{path}"), Some(body))
            .await
    }

    async fn status(&self, base: &str, sandbox_id: &str) -> String {
        let url = format!("{base}/api/sandboxes/{sandbox_id}");
        let (_, v) = self.send(reqwest::Method::GET, url, None).await;
        v["status"].as_str().unwrap_or_default().to_string()
    }

    /// A run in `sandbox_id` through `base`, waited for; it must succeed.
    async fn run_in(&self, base: &str, sandbox_id: &str, task: &str, logs: &str) -> RunResult {
        let body = serde_json::json!({
            "task": task, "sandbox_id": sandbox_id, "wait": true, "timeout_seconds": 240,
        });
        let (status, body) = self.post(base, "/api/runs", body).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}\n{logs}");
        let result: RunResult = serde_json::from_value(body).unwrap();
        assert_eq!(result.status, RunStatus::Succeeded, "{result:?}\n{logs}");
        result
    }
}

fn paths(result: &RunResult) -> Vec<&str> {
    result
        .changed_files
        .iter()
        .map(|f| f.path.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_made_through_one_replica_is_run_paused_resumed_and_deleted_through_another() {
    two_replicas(false).await;
}

/// The same with a namespace per workspace: B finds the sandbox's namespace from its Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_in_a_workspace_namespace_is_served_by_either_replica() {
    two_replicas(true).await;
}

async fn two_replicas(per_workspace: bool) {
    let Some(pg) = tokio::task::spawn_blocking(delegate_testkit::postgres::TestPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL")
    else {
        return;
    };
    let Some(k) = KubeHarness::new(Script::write_file(
        "from-a.txt",
        "written through A\n",
        "done on A",
    ))
    .await
    else {
        return;
    };
    // Nothing shared but the database and the cluster: each replica has its own data dir.
    let env = [
        ("DATABASE_URL", pg.url.clone()),
        ("DELEGATE_BACKEND", "kubernetes".into()),
        ("DELEGATE_SANDBOX_IMAGE", real::sandbox_image()),
        ("DELEGATE_SANDBOX_MEMORY_MB", "1024".into()),
        (
            "DELEGATE_K8S_KUBECONFIG",
            k.kubeconfig.display().to_string(),
        ),
        ("DELEGATE_K8S_NAMESPACE", NAMESPACE.into()),
        ("DELEGATE_K8S_PROXY_URL", "loopback".into()),
        (
            "DELEGATE_K8S_NAMESPACE_PER_WORKSPACE",
            per_workspace.to_string(),
        ),
        ("DELEGATE_K8S_NETWORK_POLICY", "delegate-sandboxes".into()),
    ];
    install_chart_policy(&k.cluster).await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Served::start(&k.h, &env, "a").await;
    let b = Served::start(&k.h, &env, "b").await;
    let api = Rest {
        http: reqwest::Client::new(),
        token: api_token(&k.h, &env, &k.h.dir.path().join("admin")).await,
    };
    let logs = || format!("--- A\n{}\n--- B\n{}", a.log(), b.log());

    // Made through A, and a task run in it through A.
    let (status, made) = api
        .post(
            &a.base,
            "/api/sandboxes",
            serde_json::json!({ "name": "shared", "files": { "seed.txt": "seeded\n" } }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{made}\n{}", logs());
    let id = made["sandbox_id"].as_str().unwrap().to_string();
    let pod = format!("delegate-{}", id.replace('_', "-"));
    let namespaces = k.cluster.namespaces_of("secrets", &pod);
    assert_eq!(namespaces.len(), 1, "{namespaces:?}");
    let ns = namespaces[0].as_str();
    if per_workspace {
        assert!(ns.starts_with(&format!("{NAMESPACE}-wsp-")), "{ns}");
    } else {
        assert_eq!(ns, NAMESPACE);
    }
    let first = api.run_in(&a.base, &id, "write from-a.txt", &logs()).await;
    assert_eq!(paths(&first), ["from-a.txt"]);

    // Paused through B: the pod goes, the claims stay, both replicas say so.
    let (status, body) = api
        .post(
            &b.base,
            &format!("/api/sandboxes/{id}/pause"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}\n{}", logs());
    assert_eq!(api.status(&a.base, &id).await, "paused");
    assert!(k.cluster.object("pods", ns, &pod).is_none());

    // Resumed through B, which holds it from now on (its objects carry B's label), and run in
    // through B: it sees A's file, and its change is only its own, on A's change (B never had
    // the host repository A made at creation).
    let (status, body) = api
        .post(
            &b.base,
            &format!("/api/sandboxes/{id}/resume"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}\n{}", logs());
    assert_eq!(api.status(&a.base, &id).await, "running");
    let b_id = std::fs::read_to_string(b.data.join("instance-id")).unwrap();
    let secret = k.cluster.object("secrets", ns, &pod).unwrap();
    assert_eq!(secret["metadata"]["labels"]["delegate.owner"], b_id.trim());
    k.h.fake.set_script(Script::bash(
        "cat seed.txt from-a.txt && echo through-b > from-b.txt",
        TOOL_RESULT_PLACEHOLDER,
    ));
    let second = api
        .run_in(&b.base, &id, "read them, write one", &logs())
        .await;
    assert!(
        second.final_message.contains("seeded")
            && second.final_message.contains("written through A"),
        "{second:?}"
    );
    assert_eq!(paths(&second), ["from-b.txt"]);
    assert!(
        b.log().contains("rebuilding the change repository"),
        "{}",
        logs()
    );
    // The commit the next change must sit on moved with it, in the cluster.
    let tip = |secret: &Value| secret["metadata"]["annotations"]["delegate.tip"].clone();
    let moved = k.cluster.object("secrets", ns, &pod).unwrap();
    assert_ne!(tip(&moved), tip(&secret), "{moved}");
    assert_eq!(tip(&moved).as_str().map(str::len), Some(40), "{moved}");

    // Back through A, whose change repository stops at its own run: the change is the third
    // run's alone again.
    k.h.fake.set_script(Script::bash(
        "echo again > from-a2.txt",
        TOOL_RESULT_PLACEHOLDER,
    ));
    let third = api.run_in(&a.base, &id, "write another", &logs()).await;
    assert_eq!(paths(&third), ["from-a2.txt"]);

    // Deleted through B: the row says so on A too, and nothing of it is left in the cluster.
    let (status, body) = api
        .send(
            reqwest::Method::DELETE,
            format!("{}/api/sandboxes/{id}", b.base),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}\n{}", logs());
    assert_eq!(api.status(&a.base, &id).await, "deleted");
    assert_eq!(k.leftovers_in(ns), Vec::<String>::new());

    // A still has its copy of the change repository; restarted, it sees the sandbox is gone
    // from the cluster and removes it.
    let kept = a.data.join("kubernetes").join(&id);
    assert!(kept.join("changes.git").exists(), "{}", kept.display());
    a.stop().await;
    let a = Served::start(&k.h, &env, "a").await;
    assert!(!kept.exists(), "{}\n{}", kept.display(), a.log());

    a.stop().await;
    b.stop().await;
    k.cluster.shutdown().await;
    drop(pg);
}

/// The `data` of the run's events of `kind`.
async fn events_of(
    orch: &Orchestrator,
    run_id: &delegate_server::ids::RunId,
    kind: &str,
) -> Vec<Value> {
    use futures::StreamExt;
    orch.events(run_id, 0)
        .filter_map(|e| async move { e.ok().filter(|e| e.kind == kind).map(|e| e.data) })
        .collect()
        .await
}

/// Setup on kubernetes: a hardened pod of its own with the sandbox's env, on its claims. Its
/// lines are `setup` events; the run then sees what it wrote, in the work dir and in `$HOME`. A
/// warm sandbox runs it once at creation; a setup past the timeout is killed, its pod deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_runs_in_a_hardened_pod_with_the_sandboxes_env_and_claims() {
    let Some(k) = KubeHarness::new(Script::bash(
        "echo \"env=$GREETING\"; cat made-by-setup.txt ~/from-setup.txt",
        TOOL_RESULT_PLACEHOLDER,
    ))
    .await
    else {
        return;
    };
    let orch = k.orchestrator().await;
    let inputs = |setup: &str| SandboxInputs {
        env: BTreeMap::from([("GREETING".to_string(), "hello from env".to_string())]),
        setup: Some(setup.into()),
        ..Default::default()
    };
    let (run_id, _) = orch
        .start_run(RunRequest {
            inputs: inputs(
                "echo \"setup sees $GREETING in $(pwd)\"; echo 'setup was here' > made-by-setup.txt; \
                 echo 'home kept' > ~/from-setup.txt; echo to-stderr >&2",
            ),
            ..task("show the greeting")
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    for said in ["env=hello from env", "setup was here", "home kept"] {
        assert!(
            r.final_message.contains(said),
            "{said}: {}",
            r.final_message
        );
    }
    let setup = events_of(&orch, &run_id, "setup").await;
    let lines: Vec<&str> = setup.iter().filter_map(|e| e["line"].as_str()).collect();
    assert_eq!(
        lines,
        ["setup sees hello from env in /workspace", "to-stderr"],
        "{setup:?}"
    );
    let pods = k.created("pods");
    let setup_pod = pods
        .iter()
        .find(|p| p["metadata"]["labels"]["delegate.kind"] == "setup")
        .expect("a setup pod");
    assert_hardened(setup_pod);
    let spec = &setup_pod["spec"];
    assert_eq!(
        spec["containers"][0]["envFrom"][0]["secretRef"]["name"],
        format!("delegate-{}", r.sandbox_id.replace('_', "-"))
    );
    let claims: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .collect();
    assert_eq!(claims.len(), 2, "work and home: {spec}");
    assert_eq!(k.leftovers(), Vec::<String>::new());

    // A warm sandbox: once, at creation.
    k.h.fake
        .set_script(Script::bash("cat count.txt", TOOL_RESULT_PLACEHOLDER));
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            inputs: inputs("echo once >> count.txt"),
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("create a warm sandbox with setup");
    let r = run(
        &orch,
        RunRequest {
            sandbox_id: Some(sandbox.id.clone()),
            ..task("count")
        },
    )
    .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert_eq!(
        r.final_message.matches("once").count(),
        1,
        "{}",
        r.final_message
    );
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("delete");
    assert_eq!(k.leftovers(), Vec::<String>::new());

    // Past the timeout: killed, the agent never asked, nothing left.
    let asked = k.h.fake.requests().len();
    let started = std::time::Instant::now();
    let (run_id, _) = orch
        .start_run(RunRequest {
            inputs: inputs("echo started; sleep 600"),
            timeout: Some(Duration::from_secs(10)),
            ..task("never reached")
        })
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::TimedOut, "{:?}", r.error);
    assert!(started.elapsed() < Duration::from_secs(120));
    let setup = events_of(&orch, &run_id, "setup").await;
    assert!(setup.iter().any(|e| e["line"] == "started"), "{setup:?}");
    assert!(
        k.h.fake.requests()[asked..]
            .iter()
            .all(delegate_testkit::anthropic::RecordedRequest::is_title_request),
        "opencode never ran the task"
    );
    assert_eq!(k.leftovers(), Vec::<String>::new());
    k.cluster.shutdown().await;
}

/// With a namespace per workspace: two workspaces' sandboxes land in two namespaces, made
/// with the workspace label and the chart's NetworkPolicy; a run works there end to end; a
/// restarted server sweeps its orphans across namespaces and leaves the namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workspace_gets_its_own_namespace_and_the_sweep_reaches_across_them() {
    use delegate_server::ids::{new_id, now_ms};
    use delegate_server::store::{User, Workspace};
    let Some(k) = KubeHarness::new(Script::write_file(
        "ns.txt",
        "in my namespace\n",
        "Wrote it.",
    ))
    .await
    else {
        return;
    };
    install_chart_policy(&k.cluster).await;
    let mut settings = k.settings();
    settings.kube.namespace_per_workspace = true;
    settings.kube.network_policy = Some("delegate-sandboxes".into());
    let orch = delegate_server::app::embedded(settings.clone())
        .await
        .expect("an orchestrator");
    let user = User {
        id: new_id("usr"),
        email: "two@example.com".into(),
        name: "two".into(),
        created_at: now_ms(),
    };
    orch.store().create_user(&user).await.unwrap();
    let second = Workspace {
        id: new_id("wsp"),
        slug: "second".into(),
        name: "second".into(),
        created_at: now_ms(),
    };
    orch.store()
        .create_workspace(&second, &user.id)
        .await
        .unwrap();

    // A run in the default workspace, end to end, in its namespace.
    let result = run(&orch, task("write ns.txt")).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
    assert_eq!(paths(&result), ["ns.txt"]);
    // A warm sandbox in the second workspace.
    let warm = orch
        .create_sandbox(SandboxRequest {
            workspace: Some("second".into()),
            created_by: Some("test".into()),
            ..Default::default()
        })
        .await
        .expect("a warm sandbox in the second workspace");
    let first_ws = orch
        .store()
        .sandbox(&result.sandbox_id)
        .await
        .unwrap()
        .workspace_id;
    assert_ne!(first_ws, second.id);
    let ns_of = |ws: &str| format!("{NAMESPACE}-{}", ws.replace('_', "-"));
    let (ns1, ns2) = (ns_of(&first_ws), ns_of(&second.id));

    // The namespaces, field by field: one POST each, labelled with the workspace.
    let made = k.created_at("/api/v1/namespaces");
    assert_eq!(made.len(), 2, "{made:?}");
    for (body, (ns, ws)) in made.iter().zip([(&ns1, &first_ws), (&ns2, &second.id)]) {
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "Namespace");
        assert_eq!(body["metadata"]["name"], ns.as_str());
        assert_eq!(
            body["metadata"]["labels"],
            serde_json::json!({
                "delegate.workspace": ws, "pod-security.kubernetes.io/enforce": "restricted",
            })
        );
        // The chart's policy, copied before any sandbox object.
        let policies = k.created_at(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
        ));
        assert_eq!(policies.len(), 1, "{policies:?}");
        assert_eq!(policies[0]["metadata"]["name"], "delegate-sandboxes");
        assert_eq!(
            policies[0]["metadata"]["labels"]["delegate.workspace"],
            ws.as_str()
        );
        assert_eq!(
            policies[0]["metadata"]["labels"]["app.kubernetes.io/name"],
            "delegate"
        );
        assert_eq!(policies[0]["spec"], chart_policy()["spec"]);
        assert!(k.cluster.object("namespaces", "", ns).is_some());
    }
    let kinds = |ns: &str| -> Vec<String> {
        k.created_at(&format!("/api/v1/namespaces/{ns}/pods"))
            .iter()
            .map(|p| p["metadata"]["labels"]["delegate.kind"].to_string())
            .collect()
    };
    assert_eq!(kinds(&ns1), ["\"seed\"", "\"ephemeral\"", "\"commit\""]);
    assert_eq!(kinds(&ns2), ["\"seed\"", "\"warm\""]);
    for ns in [&ns1, &ns2] {
        for pod in k.created_at(&format!("/api/v1/namespaces/{ns}/pods")) {
            assert_hardened(&pod);
        }
    }
    // Nothing of a sandbox's in the installation's namespace but the chart's policy.
    assert!(k.created("pods").is_empty() && k.created("secrets").is_empty());
    assert_eq!(k.leftovers(), Vec::<String>::new());
    assert_eq!(k.leftovers_in(&ns1), Vec::<String>::new());

    // Restarted: an orphan of this server's in the second workspace's namespace is swept
    // (found by a list across namespaces), another server's is left, the warm one adopted.
    drop(orch);
    let me = tokio::fs::read_to_string(k.h.data_dir().join("instance-id"))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    for (id, owner) in [
        ("sbx_0192f3cc0192f3cc0192f3cc0192f3cc", me.trim()),
        ("sbx_0192f3dd0192f3dd0192f3dd0192f3dd", "srv_someone_else"),
    ] {
        let made = client
            .post(format!("{}/api/v1/namespaces/{ns2}/secrets", k.cluster.url))
            .json(&serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {
                    "name": format!("delegate-{}", id.replace('_', "-")),
                    "labels": {"delegate.sandbox": id, "delegate.owner": owner},
                },
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), reqwest::StatusCode::CREATED);
    }
    let b = delegate_server::app::embedded(settings)
        .await
        .expect("an orchestrator");
    b.reconcile().await.expect("reconcile");
    let names = k.cluster.names("secrets", &ns2);
    assert!(!names.iter().any(|n| n.contains("0192f3cc")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("0192f3dd")), "{names:?}");
    assert!(
        k.cluster.requests().iter().any(|r| r.method == "GET"
            && r.path == "/api/v1/secrets"
            && r.query.contains_key("labelSelector")),
        "no list across namespaces"
    );
    let adopted = b.store().sandbox(&warm.id).await.unwrap();
    assert_eq!(adopted.status, SandboxStatus::Running, "{adopted:?}");
    b.delete_sandbox(&warm.id.parse().unwrap())
        .await
        .expect("delete");
    assert_eq!(k.leftovers_in(&ns2).len(), 1, "{:?}", k.leftovers_in(&ns2));
    // Empty namespaces stay.
    assert!(k.cluster.object("namespaces", "", &ns1).is_some());
    k.cluster.shutdown().await;
}

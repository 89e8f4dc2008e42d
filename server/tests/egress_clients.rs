//! Real clients through delegate's egress proxy, each driven by the agent's `bash` tool in a real
//! opencode run (the scripted fake model issues the call), on the process, docker and kubernetes
//! (the fake cluster; pods reach the egress proxy's TCP listener with their token) backends
//! with one test body: `pip download` from a PEP 503 index over HTTPS, `git clone` over HTTP
//! from `git http-backend`, and `curl` over HTTPS, against loopback stand-ins
//! ([`delegate_testkit::registry`]) that an admin-listed exception allows; the test CA reaches
//! the sandbox through `files` and `env`, and a setup script reaches it the same way. Refused through the same run: a host outside the
//! policy, the metadata address and redirects to loopback (a name the policy does not list, and an
//! address it lists whose class no admin allowed); and in a second run a DNS name
//! (`localhost`) that resolves to a loopback address. Each is the 403 body and an `egress`
//! event, and the result's totals match the events. On kubernetes, the listener's own checks:
//! no token, a wrong one and a stopped sandbox's get 407 and are not relayed.

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::backends::{Backend, Bed};
use common::kube::NAMESPACE;
use delegate_mcp::types::RunStatus;
use delegate_server::ids::RunId;
use delegate_server::orchestrator::{Orchestrator, RunRequest, SandboxInputs, SandboxRequest};
use delegate_server::sandbox::kube::object_name;
use delegate_server::settings::EgressPolicySettings;
use delegate_testkit::anthropic::Script;
use delegate_testkit::registry::{self, Registry};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the test CA lands in the work dir (`/workspace` on both backends).
const CA_FILE: &str = "test-ca.pem";

async fn egress_events(orch: &Orchestrator, run_id: &RunId) -> Vec<serde_json::Value> {
    orch.events(run_id, 0)
        .filter_map(|e| async move { e.ok().filter(|e| e.kind == "egress").map(|e| e.data) })
        .collect()
        .await
}

/// The environment that makes every client trust the test CA.
fn ca_env() -> BTreeMap<String, String> {
    let path = format!("/workspace/{CA_FILE}");
    [
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "PIP_CERT",
        "GIT_SSL_CAINFO",
    ]
    .into_iter()
    .map(|name| (name.to_string(), path.clone()))
    .collect()
}

fn run_request(policy: &str, registry: &Registry, setup: Option<String>) -> RunRequest {
    RunRequest {
        task: "fetch the project's dependencies".into(),
        network: Some(policy.into()),
        files: BTreeMap::from([(CA_FILE.to_string(), registry.ca_pem.clone())]),
        inputs: SandboxInputs {
            env: ca_env(),
            setup,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn real_clients_through_the_egress_proxy(backend: Backend) {
    let Some(registry) = Registry::start().await else {
        return;
    };
    let (http, https) = (registry.http.port(), registry.https.port());
    // NO_PROXY keeps loopback direct inside the sandbox (the model proxy's relay lives there);
    // the stand-ins are on the host's loopback, so the clients are told to proxy it anyway.
    // Setup reaches the registry through the same relay, and leaves its fetch in $HOME.
    let setup = format!(
        "unset NO_PROXY no_proxy; curl -sS https://127.0.0.1:{https}/hello > \"$HOME/from-setup\""
    );
    let command = format!(
        "unset NO_PROXY no_proxy; \
         echo \"setup=$(cat \"$HOME/from-setup\")\"; \
         python3 -m pip download --disable-pip-version-check --no-cache-dir --quiet \
           --index-url https://127.0.0.1:{https}/simple/ --dest /tmp/wheels \
           {package}=={version} 2>&1 | tail -n 5; ls /tmp/wheels; \
         git clone -q http://127.0.0.1:{http}/git/project.git /tmp/clone 2>&1; \
         cat /tmp/clone/README; \
         echo \"https=$(curl -sS https://127.0.0.1:{https}/hello 2>&1)\"; \
         echo \"redirect=$(curl -sS -L http://127.0.0.1:{http}/redirect 2>&1)\"; \
         echo \"redirect_ip=$(curl -sS -L http://127.0.0.1:{http}/redirect-loopback 2>&1)\"; \
         echo \"outside=$(curl -sS http://registry.invalid/ 2>&1)\"; \
         echo \"metadata=$(curl -sS http://169.254.169.254/latest/meta-data/ 2>&1)\"",
        package = registry::PACKAGE,
        version = registry::VERSION,
    );
    let Some(bed) = Bed::new(backend, Script::bash(&command, "{tool_result}")).await else {
        return;
    };
    let mut settings = bed.settings();
    settings.egress.policies.insert(
        "registry".into(),
        EgressPolicySettings {
            hosts: vec![
                format!("127.0.0.1:{http}"),
                format!("127.0.0.1:{https}"),
                // Listed by host, refused by its address class: the exception is 127.0.0.1 only.
                format!("127.0.0.2:{http}"),
                "169.254.169.254".into(),
            ],
            allow_addresses: vec!["127.0.0.1".into()],
        },
    );
    settings.egress.policies.insert(
        "names".into(),
        EgressPolicySettings {
            hosts: vec![format!("localhost:{http}")],
            allow_addresses: Vec::new(),
        },
    );
    let orch = delegate_server::app::embedded(settings).await.unwrap();

    let (run_id, _) = orch
        .start_run(run_request("registry", &registry, Some(setup)))
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{backend:?}: {:?}", r.error);
    let seen = &r.final_message;
    assert!(
        seen.contains(&format!("setup={}", registry::GREETING)),
        "{backend:?} setup: {seen}"
    );
    assert!(seen.contains(registry::WHEEL), "{backend:?} pip: {seen}");
    assert!(
        seen.contains(registry::REPO_LINE),
        "{backend:?} git: {seen}"
    );
    assert!(
        seen.contains(&format!("https={}", registry::GREETING)),
        "{backend:?} curl over HTTPS: {seen}"
    );
    assert!(
        seen.contains(&format!(
            "redirect=delegate egress: policy `registry` does not allow localhost:{http}"
        )),
        "{backend:?} redirect: {seen}"
    );
    assert!(
        seen.contains(
            "redirect_ip=delegate egress: 127.0.0.2 is a loopback address; an admin can allow \
             it in the allow_addresses of policy `registry`"
        ),
        "{backend:?} redirect to a listed loopback host: {seen}"
    );
    assert!(
        seen.contains(
            "outside=delegate egress: policy `registry` does not allow registry.invalid:80"
        ),
        "{backend:?} outside: {seen}"
    );
    assert!(
        seen.contains("metadata=delegate egress: 169.254.169.254 is a cloud metadata address"),
        "{backend:?} metadata: {seen}"
    );

    let events = egress_events(&orch, &run_id).await;
    let egress = r.egress.expect("the result counts egress");
    let count = |decision: &str| events.iter().filter(|e| e["decision"] == decision).count() as u64;
    assert_eq!(
        (egress.allowed, egress.denied),
        (count("allowed"), count("denied")),
        "{backend:?}: {events:#?}"
    );
    let bytes: u64 = events
        .iter()
        .map(|e| e["bytes_up"].as_u64().unwrap_or(0) + e["bytes_down"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(egress.bytes, bytes, "{backend:?}: {events:#?}");
    let has = |decision: &str, host: &str, port: u16| {
        events
            .iter()
            .any(|e| e["decision"] == decision && e["host"] == host && e["port"] == u64::from(port))
    };
    // pip and curl tunnel to the HTTPS port; git and the redirect's first hop go to HTTP.
    assert!(
        has("allowed", "127.0.0.1", https),
        "{backend:?}: {events:#?}"
    );
    assert!(
        has("allowed", "127.0.0.1", http),
        "{backend:?}: {events:#?}"
    );
    assert!(has("denied", "localhost", http), "{backend:?}: {events:#?}");
    assert!(has("denied", "127.0.0.2", http), "{backend:?}: {events:#?}");
    assert!(
        has("denied", "registry.invalid", 80),
        "{backend:?}: {events:#?}"
    );
    assert!(
        has("denied", "169.254.169.254", 80),
        "{backend:?}: {events:#?}"
    );
    let wheel_bytes = registry::make_wheel().len() as u64;
    assert!(
        egress.bytes > wheel_bytes,
        "{backend:?}: {egress:?} carried less than the wheel"
    );

    // A name the policy lists, resolved by delegate to a loopback address no admin allowed.
    let command = format!(
        "unset NO_PROXY no_proxy; echo \"name=$(curl -sS http://localhost:{http}/hello 2>&1)\""
    );
    bed.fake()
        .set_script(Script::bash(&command, "{tool_result}"));
    let (run_id, _) = orch
        .start_run(run_request("names", &registry, None))
        .await
        .unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{backend:?}: {:?}", r.error);
    assert!(
        r.final_message
            .contains("name=delegate egress: localhost resolves to 127.0.0.1, a loopback address"),
        "{backend:?}: {}",
        r.final_message
    );
    assert!(!r.final_message.contains(registry::GREETING));
    let events = egress_events(&orch, &run_id).await;
    assert!(
        events.iter().any(|e| e["decision"] == "denied"
            && e["host"] == "localhost"
            && e["reason"]
                .as_str()
                .is_some_and(|why| why.contains("a loopback address"))),
        "{backend:?}: {events:#?}"
    );
    assert_eq!(r.egress.map(|e| e.allowed), Some(0));
}

#[tokio::test]
async fn real_clients_through_the_egress_proxy_on_the_process_backend() {
    real_clients_through_the_egress_proxy(Backend::Process).await;
}

#[tokio::test]
async fn real_clients_through_the_egress_proxy_on_the_docker_backend() {
    real_clients_through_the_egress_proxy(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_through_the_egress_proxy_on_the_kubernetes_backend() {
    real_clients_through_the_egress_proxy(Backend::Kube).await;
}

/// Sends `head` to the egress listener at `proxy` and reads the reply to its end.
async fn through(proxy: &str, head: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The egress listener on kubernetes, spoken to directly with the token a warm sandbox's pods
/// get (from its Secret, the only place it is): the policy applies to the token's sandbox, and
/// without a token, with a wrong one, or once the sandbox stopped, it is 407 and nothing is
/// relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_listener_serves_only_a_running_sandboxs_token_on_the_kubernetes_backend() {
    let Some(registry) = Registry::start().await else {
        return;
    };
    let Some(bed) = Bed::new(Backend::Kube, Script::text("unused")).await else {
        return;
    };
    let Bed::Kube(k) = &bed else { unreachable!() };
    let http = registry.http.port();
    let mut settings = bed.settings();
    settings.egress.policies.insert(
        "registry".into(),
        EgressPolicySettings {
            hosts: vec![format!("127.0.0.1:{http}")],
            allow_addresses: vec!["127.0.0.1".into()],
        },
    );
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    let sandbox = orch
        .create_sandbox(SandboxRequest {
            network: Some("registry".into()),
            ..Default::default()
        })
        .await
        .expect("a warm sandbox with a policy");
    let name = object_name(&sandbox.id, "");
    let secret = k
        .cluster
        .object("secrets", NAMESPACE, &name)
        .expect("the sandbox's secret");
    let env = |key: &str| {
        let value = secret["data"][key].as_str().unwrap_or_default();
        String::from_utf8(STANDARD.decode(value).unwrap()).unwrap()
    };
    let proxy_url = env("HTTPS_PROXY");
    for key in ["HTTP_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"] {
        assert_eq!(env(key), proxy_url, "{key}");
    }
    // The model proxy (on loopback here) stays direct.
    assert_eq!(env("NO_PROXY"), "127.0.0.1,localhost");
    let url = reqwest::Url::parse(&proxy_url).unwrap();
    assert_eq!(url.username(), "sandbox");
    let token = url
        .password()
        .expect("the token in the proxy URL")
        .to_string();
    assert!(token.starts_with("dsb_"), "{proxy_url}");
    let listener = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    // In the Secret only: the pod's spec does not carry it.
    let pod = k
        .cluster
        .object("pods", NAMESPACE, &name)
        .expect("the serve pod");
    assert!(!pod.to_string().contains(&token), "{pod}");

    let basic = |user_token: &str| {
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            STANDARD.encode(format!("sandbox:{user_token}"))
        )
    };
    let get = |auth: &str, target: &str| {
        format!("GET http://{target}/hello HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n")
    };
    let allowed = format!("127.0.0.1:{http}");
    let reply = through(&listener, &get(&basic(&token), &allowed)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with(registry::GREETING),
        "{reply}"
    );
    let reply = through(&listener, &get(&basic(&token), "registry.invalid")).await;
    assert!(
        reply.starts_with("HTTP/1.1 403")
            && reply.contains("policy `registry` does not allow registry.invalid:80"),
        "{reply}"
    );
    let connect = format!(
        "CONNECT {allowed} HTTP/1.1\r\nHost: {allowed}\r\n{}\r\n",
        basic(&token)
    );
    let reply = through(
        &listener,
        &format!("{connect}GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200 Connection established")
            && reply.ends_with(registry::GREETING),
        "{reply}"
    );

    let refused = |reply: &str, why: &str| {
        assert!(
            reply.starts_with("HTTP/1.1 407 Proxy Authentication Required")
                && reply.contains("Proxy-Authenticate: Basic realm=\"delegate egress\"")
                && reply.contains(why)
                && !reply.contains(registry::GREETING),
            "{reply}"
        );
    };
    refused(
        &through(&listener, &get("", &allowed)).await,
        "proxy authentication required",
    );
    let wrong = format!("dsb_{}", "0".repeat(64));
    refused(
        &through(&listener, &get(&basic(&wrong), &allowed)).await,
        "invalid or revoked sandbox token",
    );
    refused(
        &through(
            &listener,
            &get("Proxy-Authorization: Bearer x\r\n", &allowed),
        )
        .await,
        "proxy authentication required",
    );

    // Stopped: paused (its token kept for the resume), then deleted (revoked).
    orch.pause_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("pause");
    refused(
        &through(&listener, &get(&basic(&token), &allowed)).await,
        &format!("sandbox {} is paused, not running", sandbox.id),
    );
    orch.delete_sandbox(&sandbox.id.parse().unwrap())
        .await
        .expect("delete");
    refused(
        &through(&listener, &get(&basic(&token), &allowed)).await,
        "invalid or revoked sandbox token",
    );
    assert_eq!(bed.leftovers(&sandbox.id).await, Vec::<String>::new());
    k.cluster.shutdown().await;
}

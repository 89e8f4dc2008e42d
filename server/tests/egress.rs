//! The egress proxy on its own, over loopback only: a loopback HTTP server stands in for a
//! package registry, allowed by an admin-listed address; without that exception, by name, at
//! the metadata address, or after a redirect, the same requests are refused with a readable 403.
//! Byte and connection caps, and every connection's record.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use delegate_server::egress::{Decision, Egress, EgressMetrics, EgressRecord, Limits, Policy};
use delegate_server::settings::EgressPolicySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BIG: usize = 1 << 20;

/// The stand-in registry: `/hello`, `/headers` (what arrived), `/big` (1 MiB), `/redirect` (to
/// `localhost`, which the test policies do not list).
async fn registry(stop: CancellationToken) -> std::net::SocketAddr {
    let port_cell = Arc::new(std::sync::OnceLock::<u16>::new());
    let port = port_cell.clone();
    let router = Router::new()
        .route("/hello", get(|| async { "hello from the registry" }))
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let mut names: Vec<String> = headers.keys().map(ToString::to_string).collect();
                names.sort();
                format!(
                    "{}\nhost={}",
                    names.join(","),
                    headers
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                )
            }),
        )
        .route("/big", get(|| async { vec![b'x'; BIG] }))
        .route(
            "/redirect",
            get(move || async move {
                (
                    StatusCode::FOUND,
                    [(
                        "location",
                        format!(
                            "http://localhost:{}/hello",
                            port.get().copied().unwrap_or(0)
                        ),
                    )],
                )
            }),
        );
    let addr = delegate_server::net::serve_loopback(router, stop)
        .await
        .unwrap();
    port_cell.set(addr.port()).unwrap();
    addr
}

fn policy(name: &str, hosts: &[String], addresses: &[&str]) -> Arc<Policy> {
    Arc::new(
        Policy::parse(
            name,
            &EgressPolicySettings {
                hosts: hosts.to_vec(),
                allow_addresses: addresses.iter().map(ToString::to_string).collect(),
            },
        )
        .unwrap(),
    )
}

struct Running {
    egress: Arc<Egress>,
    proxy: std::net::SocketAddr,
    records: mpsc::Receiver<EgressRecord>,
}

async fn proxy(policy: Arc<Policy>, limits: Limits, stop: &CancellationToken) -> Running {
    metered_proxy(policy, limits, Arc::default(), stop).await
}

/// A proxy that also counts into `metrics`, as a server's sandboxes share one.
async fn metered_proxy(
    policy: Arc<Policy>,
    limits: Limits,
    metrics: Arc<EgressMetrics>,
    stop: &CancellationToken,
) -> Running {
    let egress = Egress::with_metrics(policy, limits, metrics);
    let (tx, records) = mpsc::channel(64);
    egress.begin(tx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(egress.clone().serve(listener, stop.clone()));
    Running {
        egress,
        proxy,
        records,
    }
}

fn limits() -> Limits {
    Limits::with_max_bytes(1 << 30)
}

/// Sends `request` to the proxy and reads the reply to its end (the proxy closes after one).
async fn send(proxy: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// CONNECT, then a plain request through the tunnel; the whole reply.
async fn tunnel(proxy: std::net::SocketAddr, target: &str, path: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut head = vec![0u8; established.len()];
    if s.read_exact(&mut head).await.is_err() || head != established {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        head.extend(rest);
        return String::from_utf8_lossy(&head).into_owned();
    }
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn finish(mut running: Running) -> (delegate_mcp::types::EgressSummary, Vec<EgressRecord>) {
    let summary = running.egress.end(Duration::from_secs(10)).await;
    let mut records = Vec::new();
    while let Ok(r) = running.records.try_recv() {
        records.push(r);
    }
    (summary, records)
}

#[tokio::test]
async fn an_admin_listed_loopback_registry_is_reachable_by_connect_and_plain_http() {
    let stop = CancellationToken::new();
    let server = registry(stop.clone()).await;
    let target = format!("127.0.0.1:{}", server.port());
    let running = proxy(
        policy("local", std::slice::from_ref(&target), &["127.0.0.1"]),
        limits(),
        &stop,
    )
    .await;

    let through_tunnel = tunnel(running.proxy, &target, "/hello").await;
    assert!(
        through_tunnel.starts_with("HTTP/1.1 200"),
        "{through_tunnel}"
    );
    assert!(through_tunnel.ends_with("hello from the registry"));

    let plain = send(
        running.proxy,
        &format!(
            "GET http://{target}/headers HTTP/1.1\r\nHost: {target}\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\
             X-Kept: yes\r\n\r\n"
        ),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    let body = plain.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.contains("x-kept"), "{body}");
    assert!(
        !body.contains("proxy-"),
        "proxy headers were forwarded: {body}"
    );
    assert!(body.ends_with(&format!("host={target}")), "{body}");

    let (summary, records) = finish(running).await;
    assert_eq!((summary.allowed, summary.denied), (2, 0));
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.decision, Decision::Allowed);
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", server.port()));
        assert!(r.bytes_up > 0 && r.bytes_down > 0, "{r:?}");
    }
    assert_eq!(
        summary.bytes,
        records
            .iter()
            .map(|r| r.bytes_up + r.bytes_down)
            .sum::<u64>()
    );
    stop.cancel();
}

#[tokio::test]
async fn the_process_metrics_count_every_sandboxs_connections_and_bytes_by_direction() {
    let stop = CancellationToken::new();
    let server = registry(stop.clone()).await;
    let target = format!("127.0.0.1:{}", server.port());
    let metrics = Arc::new(EgressMetrics::default());
    // Two sandboxes of one server: one allowed to reach the registry, one not.
    let allowed = metered_proxy(
        policy("local", std::slice::from_ref(&target), &["127.0.0.1"]),
        limits(),
        metrics.clone(),
        &stop,
    )
    .await;
    let denied = metered_proxy(Arc::new(Policy::open()), limits(), metrics.clone(), &stop).await;

    let big = tunnel(allowed.proxy, &target, "/big").await;
    assert!(
        big.starts_with("HTTP/1.1 200"),
        "{}",
        &big[..big.len().min(200)]
    );
    let refused = tunnel(denied.proxy, &target, "/big").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let (_, mut records) = finish(allowed).await;
    let (_, denied_records) = finish(denied).await;
    records.extend(denied_records);
    assert_eq!(records.len(), 2, "{records:?}");

    let up: u64 = records.iter().map(|r| r.bytes_up).sum();
    let down: u64 = records.iter().map(|r| r.bytes_down).sum();
    assert!(down > BIG as u64 && up > 0, "up {up}, down {down}");
    assert_eq!(
        (
            metrics.allowed(),
            metrics.denied(),
            metrics.bytes_up(),
            metrics.bytes_down()
        ),
        (1, 1, up, down)
    );
    let mut text = String::new();
    metrics.render(&mut text);
    for line in [
        "# TYPE delegate_egress_connections_total counter".to_string(),
        "delegate_egress_connections_total{decision=\"allowed\"} 1".to_string(),
        "delegate_egress_connections_total{decision=\"denied\"} 1".to_string(),
        "# TYPE delegate_egress_bytes_total counter".to_string(),
        format!("delegate_egress_bytes_total{{direction=\"up\"}} {up}"),
        format!("delegate_egress_bytes_total{{direction=\"down\"}} {down}"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    stop.cancel();
}

#[tokio::test]
async fn refusals_say_which_policy_refused_which_host_and_why() {
    let stop = CancellationToken::new();
    let server = registry(stop.clone()).await;
    let port = server.port();
    let target = format!("127.0.0.1:{port}");
    // Listed by host but not by address: loopback is refused.
    let running = proxy(
        policy(
            "registry",
            &[target.clone(), format!("localhost:{port}")],
            &[],
        ),
        limits(),
        &stop,
    )
    .await;
    let by_ip = tunnel(running.proxy, &target, "/hello").await;
    assert!(by_ip.starts_with("HTTP/1.1 403 Forbidden"), "{by_ip}");
    assert!(
        by_ip.contains(
            "delegate egress: 127.0.0.1 is a loopback address; an admin can allow it in the \
             allow_addresses of policy `registry`"
        ),
        "{by_ip}"
    );
    // A name that resolves to loopback (delegate resolves it, not the sandbox).
    let by_name = send(
        running.proxy,
        &format!("GET http://localhost:{port}/hello HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(by_name.starts_with("HTTP/1.1 403"), "{by_name}");
    assert!(by_name.contains("localhost resolves to"), "{by_name}");
    assert!(by_name.contains("a loopback address"), "{by_name}");
    // A host outside the policy is refused before any lookup.
    let outside = tunnel(running.proxy, "registry.invalid:443", "/").await;
    assert!(
        outside.contains("delegate egress: policy `registry` does not allow registry.invalid:443"),
        "{outside}"
    );
    let (summary, records) = finish(running).await;
    assert_eq!((summary.allowed, summary.denied, summary.bytes), (0, 3, 0));
    assert!(records.iter().all(|r| r.decision == Decision::Denied));
    assert!(
        records
            .iter()
            .any(|r| r.host == "registry.invalid" && r.port == 443)
    );

    // `open` allows any host, but only at public addresses: not the metadata service.
    let running = proxy(Arc::new(Policy::open()), limits(), &stop).await;
    for request in [
        "CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n".to_string(),
        "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n".to_string(),
        "CONNECT [fd00:ec2::254]:80 HTTP/1.1\r\n\r\n".to_string(),
    ] {
        let reply = send(running.proxy, &request).await;
        assert!(reply.starts_with("HTTP/1.1 403"), "{request}: {reply}");
        assert!(reply.contains("a cloud metadata address"), "{reply}");
    }
    let reply = tunnel(running.proxy, &target, "/hello").await;
    assert!(reply.contains("a loopback address"), "{reply}");
    stop.cancel();
}

#[tokio::test]
async fn a_redirect_goes_back_to_the_client_whose_next_request_is_checked_again() {
    let stop = CancellationToken::new();
    let server = registry(stop.clone()).await;
    let target = format!("127.0.0.1:{}", server.port());
    let running = proxy(
        policy("local", std::slice::from_ref(&target), &["127.0.0.1"]),
        limits(),
        &stop,
    )
    .await;
    let first = send(
        running.proxy,
        &format!("GET http://{target}/redirect HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 302"), "{first}");
    let location = first
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .to_string();
    assert!(location.starts_with("http://localhost:"), "{location}");
    let second = send(running.proxy, &format!("GET {location} HTTP/1.1\r\n\r\n")).await;
    assert!(second.starts_with("HTTP/1.1 403"), "{second}");
    assert!(second.contains("does not allow localhost:"), "{second}");
    stop.cancel();
}

#[tokio::test]
async fn the_byte_cap_cuts_the_run_and_refuses_further_connections() {
    let stop = CancellationToken::new();
    let server = registry(stop.clone()).await;
    let target = format!("127.0.0.1:{}", server.port());
    let cap = 64 * 1024;
    let running = proxy(
        policy("local", std::slice::from_ref(&target), &["127.0.0.1"]),
        Limits::with_max_bytes(cap),
        &stop,
    )
    .await;
    let big = tunnel(running.proxy, &target, "/big").await;
    assert!(
        big.starts_with("HTTP/1.1 200"),
        "{}",
        &big[..big.len().min(200)]
    );
    assert!(big.len() < BIG, "the whole 1 MiB came through a 64 KiB cap");
    let after = send(
        running.proxy,
        &format!("GET http://{target}/hello HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(after.starts_with("HTTP/1.1 403"), "{after}");
    assert!(
        after.contains("byte cap (65536 bytes) is used up"),
        "{after}"
    );
    let (summary, records) = finish(running).await;
    assert_eq!((summary.allowed, summary.denied), (1, 1));
    // At most one relay buffer (256 KiB) over the cap per direction.
    assert!(
        summary.bytes >= cap && summary.bytes <= cap + 2 * 256 * 1024,
        "{summary:?}"
    );
    let cut = records
        .iter()
        .find(|r| r.decision == Decision::Allowed)
        .unwrap();
    assert!(
        cut.reason.as_deref().unwrap_or("").contains("byte cap"),
        "{cut:?}"
    );
    stop.cancel();
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_proxy_recovers() {
    let stop = CancellationToken::new();
    let server = registry(stop.clone()).await;
    let target = format!("127.0.0.1:{}", server.port());
    let limits = Limits {
        max_connections: 2,
        ..limits()
    };
    let running = proxy(
        policy("local", std::slice::from_ref(&target), &["127.0.0.1"]),
        limits,
        &stop,
    )
    .await;
    // Two tunnels held open take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(running.proxy).await.unwrap();
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(s);
    }
    for _ in 0..20 {
        let reply = send(running.proxy, &format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(
            reply.contains("too many connections at once (at most 2)"),
            "{reply}"
        );
    }
    drop(held);
    // The window's end waits for the held tunnels to close; then a new one gets a slot.
    let egress = running.egress.clone();
    let (summary, _) = finish(running).await;
    assert_eq!((summary.allowed, summary.denied), (2, 20));
    let (tx, _rx) = mpsc::channel(4);
    egress.begin(tx);
    let again = tunnel(
        {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(egress.clone().serve(listener, stop.clone()));
            addr
        },
        &target,
        "/hello",
    )
    .await;
    assert!(again.ends_with("hello from the registry"), "{again}");
    stop.cancel();
}

#[tokio::test]
async fn bad_request_heads_get_clear_errors() {
    let stop = CancellationToken::new();
    let running = proxy(Arc::new(Policy::open()), limits(), &stop).await;
    let huge = format!(
        "GET http://a.example/ HTTP/1.1\r\nX: {}\r\n",
        "y".repeat(20_000)
    );
    let reply = send(running.proxy, &huge).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let reply = send(running.proxy, "GET /local HTTP/1.1\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("this is a proxy"), "{reply}");
    // A client that never finishes its head is cut off after the head timeout.
    let quick = proxy(
        Arc::new(Policy::open()),
        Limits {
            head_timeout: Duration::from_millis(200),
            ..limits()
        },
        &stop,
    )
    .await;
    let mut s = TcpStream::connect(quick.proxy).await.unwrap();
    s.write_all(b"CONNECT a.example:443 HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    stop.cancel();
}

/// A real opencode run on each backend: the agent's `bash` tool runs curl, which goes through
/// the sandbox's proxy variables and relay to the egress proxy. The registry's address is
/// allowed; the metadata address is listed by host but refused by its address class. Each
/// connection is an `egress` event and the result counts them. With `none` there is no proxy.
/// (`egress_clients.rs` drives pip, git and curl over HTTPS the same way.)
async fn a_run_reaches_an_allowed_registry_through_the_egress_proxy_and_is_refused_elsewhere(
    backend: common::backends::Backend,
) {
    use delegate_mcp::types::RunStatus;
    use delegate_server::orchestrator::RunRequest;
    use delegate_testkit::anthropic::Script;
    use futures::StreamExt;

    let stop = CancellationToken::new();
    let server = registry(stop.clone()).await;
    let port = server.port();
    // NO_PROXY keeps loopback direct inside the sandbox (the model proxy's relay lives there);
    // the stand-in registry is on the host's loopback, so curl is told to proxy it anyway.
    let command = format!(
        "echo \"proxy=$HTTP_PROXY\"; curl -sS --noproxy '' http://127.0.0.1:{port}/hello; echo; \
         curl -sS --noproxy '' http://169.254.169.254/latest/meta-data/; echo"
    );
    let Some(h) =
        common::backends::Bed::new(backend, Script::bash(&command, "{tool_result}")).await
    else {
        return;
    };
    let mut settings = h.settings();
    settings.egress.policies.insert(
        "registry".into(),
        EgressPolicySettings {
            hosts: vec![format!("127.0.0.1:{port}"), "169.254.169.254".into()],
            allow_addresses: vec!["127.0.0.1".into()],
        },
    );
    let orch = delegate_server::app::embedded(settings).await.unwrap();
    let task = |network: Option<&str>| RunRequest {
        task: "fetch the registry's greeting".into(),
        network: network.map(str::to_string),
        ..Default::default()
    };

    let (run_id, _) = orch.start_run(task(Some("registry"))).await.unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{backend:?}: {:?}", r.error);
    let seen = &r.final_message;
    assert!(seen.contains("proxy=http://127.0.0.1:4001"), "{seen}");
    assert!(seen.contains("hello from the registry"), "{seen}");
    assert!(
        seen.contains("delegate egress: 169.254.169.254 is a cloud metadata address"),
        "the 403 body reached the agent: {seen}"
    );
    let events: Vec<_> = orch
        .events(&run_id, 0)
        .filter_map(|e| async move { e.ok().filter(|e| e.kind == "egress") })
        .collect()
        .await;
    let egress = r.egress.expect("the result counts egress");
    // opencode itself may try its package registry (plugins); that is refused and shown too.
    let denied = events
        .iter()
        .filter(|e| e.data["decision"] == "denied")
        .count() as u64;
    assert_eq!(egress.allowed, 1, "{egress:?} {events:?}");
    assert!(denied >= 1);
    assert_eq!(egress.denied, denied, "{events:?}");
    assert!(egress.bytes > 0);
    assert_eq!(events.len() as u64, egress.allowed + egress.denied);
    assert!(events.iter().any(|e| e.data["decision"] == "allowed"
        && e.data["host"] == "127.0.0.1"
        && e.data["port"] == port));
    assert!(events.iter().any(|e| {
        e.data["decision"] == "denied"
            && e.data["host"] == "169.254.169.254"
            && e.data["reason"]
                .as_str()
                .is_some_and(|r| r.contains("a cloud metadata address"))
    }));

    // `none`: no proxy variables, no relay, no socket; curl has no network at all.
    h.fake().set_script(Script::bash(&command, "{tool_result}"));
    let (run_id, _) = orch.start_run(task(None)).await.unwrap();
    let r = orch.wait(&run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{backend:?}: {:?}", r.error);
    assert!(
        r.final_message.contains("proxy=\n") || r.final_message.contains("proxy=\r"),
        "{}",
        r.final_message
    );
    assert!(
        !r.final_message.contains("hello from the registry"),
        "{}",
        r.final_message
    );
    assert_eq!(r.egress, None);

    // Asking for a policy that does not exist fails before any sandbox is made.
    let err = orch.start_run(task(Some("nope"))).await.unwrap_err();
    assert!(err.to_string().contains("no egress policy `nope`"), "{err}");
    stop.cancel();
}

#[tokio::test]
async fn a_run_reaches_an_allowed_registry_through_the_egress_proxy_on_process() {
    a_run_reaches_an_allowed_registry_through_the_egress_proxy_and_is_refused_elsewhere(
        common::backends::Backend::Process,
    )
    .await;
}

#[tokio::test]
async fn a_run_reaches_an_allowed_registry_through_the_egress_proxy_on_docker() {
    a_run_reaches_an_allowed_registry_through_the_egress_proxy_and_is_refused_elsewhere(
        common::backends::Backend::Docker,
    )
    .await;
}

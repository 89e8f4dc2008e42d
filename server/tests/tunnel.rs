//! Local agents end to end: a real `opencode serve` (fake model upstream) behind a real
//! `delegate agent connect` process, joined to a served router through a TCP relay the tests can
//! cut. Runs are delegated through MCP; link drops, reconnection with backoff, replacement,
//! registration codes and tunnel-token scoping are checked against the running parts.

mod common;
#[path = "support/local_agent.rs"]
mod local_agent;
#[path = "support/accounts.rs"]
mod support;

use std::time::{Duration, Instant};

use common::Harness;
use delegate_mcp::types::SandboxStatus;
use delegate_server::settings::Registration;
use delegate_testkit::anthropic::Script;
use futures::StreamExt;
use local_agent::{Agent, create_code, endpoint, join, local_opencode, mcp_call, wait_status};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::Server;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A TCP relay between the agent and the server whose connections can be cut at will (the
/// agent's link dropping), or frozen (a peer that goes silent without closing).
struct Relay {
    addr: String,
    cut: watch::Sender<u64>,
    freeze: watch::Sender<u64>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut, _) = watch::channel(0u64);
        let (freeze, _) = watch::channel(0u64);
        let (cuts, freezes) = (cut.clone(), freeze.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let mut cut = cuts.subscribe();
                let mut freeze = freezes.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                        _ = freeze.changed() => {
                            // Both sockets stay open and nothing moves: a black hole.
                            let _ = cut.changed().await;
                        }
                    }
                });
            }
        });
        Relay { addr, cut, freeze }
    }

    /// Stops moving bytes on every current connection without closing it (a laptop lid shut).
    fn freeze(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }

    /// The URL the agent joins through.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection through the relay; new ones still pass.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
async fn a_local_opencode_takes_delegated_runs_and_comes_back_after_a_cut() {
    let Some(h) = Harness::new(Script::write_file("hello.txt", "hi from a laptop", "done")).await
    else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Invite)
        .start()
        .await;
    let owner = s.account("owner").await;
    let (_opencode, opencode_url) = local_opencode(&h, &h.dir.path().join("local")).await;
    let relay = Relay::start(s.host.clone()).await;
    let config = h.dir.path().join("config");
    let (agent, id) = join(&s, &owner, &relay.url(), &config, &opencode_url).await;

    // Registered, saved with mode 0600, connected: the sandbox is local and running.
    let creds_path = config.join("delegate").join("agent.json");
    let creds: Value = serde_json::from_slice(&std::fs::read(&creds_path).unwrap()).unwrap();
    let saved = &creds["servers"][format!("http://{}", relay.addr)];
    assert_eq!(saved["sandbox_id"], id.as_str(), "{creds}");
    let tunnel_token = saved["token"].as_str().unwrap().to_string();
    assert!(tunnel_token.starts_with("dlt_"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(30)).await;
    let info = s
        .send(s.bearer(Method::GET, &format!("/api/sandboxes/{id}"), &owner.token))
        .await;
    assert_eq!(info.body["backend"], "local", "{}", info.body);
    assert_eq!(info.body["kind"], "local", "{}", info.body);
    assert_eq!(info.body["status"], "running");

    // A run delegated through MCP drives the local opencode through the tunnel.
    let reply = mcp_call(
        &s,
        &owner.token,
        "run_in_sandbox",
        json!({ "task": "write hello.txt", "sandbox_id": id }),
    )
    .await;
    let result = &reply["result"]["structuredContent"];
    assert_eq!(result["status"], "succeeded", "{reply}");
    assert_eq!(result["sandbox_id"], id.as_str());
    assert_eq!(result["final_message"], "done", "{reply}");
    let changed = result["changed_files"].as_array().expect("changed_files");
    assert_eq!(changed.len(), 1, "{reply}");
    assert_eq!(changed[0]["path"], "hello.txt", "{reply}");
    assert_eq!(changed[0]["change"], "added", "{reply}");
    assert_eq!(changed[0]["binary"], false, "{reply}");
    assert!(changed[0]["additions"].is_u64(), "{reply}");
    assert!(
        result["diff"]
            .as_str()
            .unwrap()
            .contains("+hi from a laptop"),
        "{reply}"
    );
    let written = h.dir.path().join("local/project/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "hi from a laptop",
        "the file is on the developer's machine"
    );

    // A request in flight when the link drops fails cleanly instead of hanging.
    let (endpoint, http) = endpoint(&s, &id);
    // Without the endpoint's credentials nothing reaches the developer's machine.
    let anonymous = reqwest::get(format!("{endpoint}/path")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let mut events = http
        .get(format!("{endpoint}/event"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let first = events
        .next()
        .await
        .expect("opencode's first event")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("server.connected"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    relay.cut();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = events.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream through the cut link ended");

    // Offline at once (the socket closed), and a run into it is refused with a clear error.
    let took = wait_status(&s, &id, SandboxStatus::Offline, Duration::from_secs(30)).await;
    assert!(took < Duration::from_secs(30));
    assert!(s.orch.opencode_url(&id.parse().unwrap()).is_none());
    let refused = mcp_call(
        &s,
        &owner.token,
        "run_in_sandbox",
        json!({ "task": "anything", "sandbox_id": id }),
    )
    .await;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert!(refused.to_string().contains("offline"), "{refused}");

    // The agent reconnects by itself (first retry after 1 s) and the sandbox is running again.
    agent
        .wait_for("reconnecting in 1s", Duration::from_secs(10))
        .await;
    wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(15)).await;
    let (endpoint, http) = self::endpoint(&s, &id);
    let path: Value = http
        .get(format!("{endpoint}/path"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        path["directory"]
            .as_str()
            .unwrap()
            .ends_with("local/project"),
        "{path}"
    );

    // A second agent with the saved credentials (only --server) replaces the first, which stops.
    let mut first = agent;
    let second = Agent::spawn(&config, &["--server", &format!("http://{}", relay.addr)]);
    second
        .wait_for("connected to", Duration::from_secs(15))
        .await;
    let exit = tokio::time::timeout(Duration::from_secs(15), first.child.wait())
        .await
        .expect("the replaced agent exits")
        .unwrap();
    assert!(!exit.success());
    // Its last words may still be in the pipe when the exit is seen.
    first
        .wait_for("another agent took over", Duration::from_secs(5))
        .await;
    wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(5)).await;

    // Deleting the sandbox closes the link and the agent stops for good.
    let mut second = second;
    let deleted = s
        .send(s.bearer(
            Method::DELETE,
            &format!("/api/sandboxes/{id}"),
            &owner.token,
        ))
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let exit = tokio::time::timeout(Duration::from_secs(15), second.child.wait())
        .await
        .expect("the agent of a deleted sandbox exits")
        .unwrap();
    assert!(!exit.success(), "{}", second.stderr());

    // Secrets never reach a log.
    let logs = String::from_utf8_lossy(&support::logs().lock().unwrap()).into_owned();
    for text in [&logs, &first.stderr(), &second.stderr()] {
        assert!(!text.contains(&tunnel_token), "tunnel token in a log");
        assert!(!text.contains("dac_"), "registration code in a log");
    }
}

#[tokio::test]
async fn codes_work_once_and_expire_and_a_tunnel_token_opens_only_its_sandbox() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Invite)
        .start()
        .await;
    let owner = s.account("owner").await;
    let register = |code: &str| {
        s.req(Method::POST, "/api/agents/register")
            .json(&json!({ "code": code, "name": "laptop" }))
    };

    let code = create_code(&s, &owner, json!({})).await;
    assert_eq!(code.status, 201, "{}", code.body);
    let expires = code.body["expires_at"].as_i64().unwrap() - delegate_server::ids::now_ms();
    assert!(
        (590_000..=600_000).contains(&expires),
        "10 minutes by default: {expires}"
    );
    let code = code.body["code"].as_str().unwrap().to_string();
    let first = s.send(register(&code)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let a_id = first.body["sandbox_id"].as_str().unwrap().to_string();
    let a_token = first.body["token"].as_str().unwrap().to_string();
    let again = s.send(register(&code)).await;
    assert_eq!(again.status, 401, "a code works once: {}", again.body);
    assert_eq!(again.error_code(), "unauthorized");

    // An expired code is refused (written with an expiry in the past, as time would leave it).
    let expired = "dac_expired_code_for_the_test";
    s.orch
        .store()
        .insert_token(&delegate_server::store::TokenRecord {
            id: delegate_server::ids::new_id("tok"),
            kind: delegate_server::store::TokenKind::AgentCode,
            hash: delegate_server::ids::hash_secret(expired),
            name: None,
            user_id: Some(owner.user.id.clone()),
            sandbox_id: None,
            workspace_id: Some(owner.personal.id.clone()),
            created_at: delegate_server::ids::now_ms() - 700_000,
            expires_at: Some(delegate_server::ids::now_ms() - 100_000),
            revoked_at: None,
        })
        .await
        .unwrap();
    assert_eq!(s.send(register(expired)).await.status, 401);
    for bad in [
        json!({ "expires_in_seconds": 0 }),
        json!({ "expires_in_seconds": 86_401 }),
    ] {
        assert_eq!(create_code(&s, &owner, bad).await.status, 400);
    }

    // Another sandbox and its token.
    let code_b = create_code(&s, &owner, json!({ "expires_in_seconds": 60 })).await;
    let b = s
        .send(register(code_b.body["code"].as_str().unwrap()))
        .await;
    let b_id = b.body["sandbox_id"].as_str().unwrap().to_string();
    assert_eq!(
        s.orch.store().sandbox(&b_id).await.unwrap().status,
        SandboxStatus::Offline,
        "offline until its agent connects"
    );

    let tunnel = |id: &str, token: Option<&str>| {
        let mut r = s
            .req(Method::GET, &format!("/api/tunnel/{id}"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    };
    // Its own sandbox: the upgrade is accepted.
    let ok = tunnel(&a_id, Some(&a_token)).send().await.unwrap();
    assert_eq!(ok.status(), 101);
    drop(ok);
    for (id, token, want) in [
        (b_id.as_str(), Some(a_token.as_str()), 403),
        (a_id.as_str(), None, 401),
        (a_id.as_str(), Some(owner.token.as_str()), 401),
        (a_id.as_str(), Some("dlt_0000"), 401),
    ] {
        let reply = s.send(tunnel(id, token)).await;
        assert_eq!(reply.status, want, "{id} with {token:?}: {}", reply.body);
        reply.error_code();
    }
    // A deleted sandbox's token opens nothing.
    let del = s
        .send(s.bearer(
            Method::DELETE,
            &format!("/api/sandboxes/{a_id}"),
            &owner.token,
        ))
        .await;
    assert_eq!(del.status, 200, "{}", del.body);
    assert_eq!(s.send(tunnel(&a_id, Some(&a_token))).await.status, 401);
}

/// An HTTP server standing in for the agent's local service in the byte-exactness test: it
/// answers the SHA-256 of what it receives and sends generated bodies of any size.
async fn checksum_server() -> String {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/sha256",
            post(|body: axum::body::Bytes| async move { hex::encode(Sha256::digest(&body)) }),
        )
        .route(
            "/blob/{size}",
            get(
                |axum::extract::Path(size): axum::extract::Path<usize>| async move {
                    let stream = futures::stream::iter((0..size).step_by(65536).map(move |off| {
                        let n = 65536.min(size - off);
                        Ok::<_, std::io::Error>(bytes::Bytes::from(pattern(off, n)))
                    }));
                    axum::body::Body::from_stream(stream)
                },
            ),
        )
        .route(
            "/ws",
            get(|ws: axum::extract::ws::WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(m)) = socket.recv().await {
                        if matches!(m, axum::extract::ws::Message::Close(_))
                            || socket.send(m).await.is_err()
                        {
                            return;
                        }
                    }
                })
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn pattern(offset: usize, n: usize) -> Vec<u8> {
    (offset..offset + n)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect()
}

/// A server, and a running agent whose machine serves the checksum server, joined through a
/// relay the test controls.
async fn checksum_agent(h: &Harness) -> (Server, Relay, Agent, String) {
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Invite)
        .start()
        .await;
    let owner = s.account("owner").await;
    let local = checksum_server().await;
    let relay = Relay::start(s.host.clone()).await;
    let (agent, id) = join(
        &s,
        &owner,
        &relay.url(),
        &h.dir.path().join("config"),
        &local,
    )
    .await;
    wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(30)).await;
    (s, relay, agent, id)
}

#[tokio::test]
async fn large_bodies_a_stalled_reader_and_websocket_upgrades_cross_the_tunnel() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let (s, _relay, _agent, id) = checksum_agent(&h).await;
    let (endpoint, http) = endpoint(&s, &id);

    // A 50 MiB download whose reader stops after the first chunk (a slow browser)...
    let size = 50 << 20;
    let mut body = http
        .get(format!("{endpoint}/blob/{size}"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut hasher = Sha256::new();
    let first = body.next().await.unwrap().unwrap();
    let mut received = first.len();
    hasher.update(&first);

    // ...stalls only itself: meanwhile a 5 MiB upload and small requests on other streams go
    // through at once.
    let others = async {
        let upload = pattern(7, 5 << 20);
        let want = hex::encode(Sha256::digest(&upload));
        let got = http
            .post(format!("{endpoint}/sha256"))
            .body(upload)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(got, want, "the 5 MiB request body arrived intact");
        for n in 1..=20 {
            let small = http
                .get(format!("{endpoint}/blob/{}", n * 100))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(small, pattern(0, n * 100));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), others)
        .await
        .expect("other streams are not held up by the stalled one");

    // Then the slow reader resumes and gets every byte, in order: nothing was dropped.
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(received, size);
    assert_eq!(
        hex::encode(hasher.finalize()),
        hex::encode(Sha256::digest(pattern(0, size))),
        "the 50 MiB response body arrived intact"
    );

    // A WebSocket upgrade passes through unchanged (opencode's UI needs them).
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ep = s.orch.local_endpoint(&id.parse().unwrap()).unwrap();
    let mut request = format!("{}/ws", ep.url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("opencode:{}", ep.password.expose()),
    );
    request
        .headers_mut()
        .insert("authorization", format!("Basic {auth}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for text in ["hello through the tunnel", &"x".repeat(100_000)] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
}

#[tokio::test]
async fn an_sse_stream_through_the_tunnel_outlives_three_minutes() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Invite)
        .start()
        .await;
    let owner = s.account("owner").await;
    let (_opencode, opencode_url) = local_opencode(&h, &h.dir.path().join("local")).await;
    let relay = Relay::start(s.host.clone()).await;
    let (_agent, id) = join(
        &s,
        &owner,
        &relay.url(),
        &h.dir.path().join("config"),
        &opencode_url,
    )
    .await;
    wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(30)).await;
    let (endpoint, http) = endpoint(&s, &id);
    let opened = Instant::now();
    let mut events = http
        .get(format!("{endpoint}/event"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    // Read everything opencode says for 3 minutes: the stream must stay open all along.
    let held = tokio::time::timeout(Duration::from_secs(185), async {
        while let Some(chunk) = events.next().await {
            chunk.expect("no error on the stream");
        }
        panic!("the stream ended after {:?}", opened.elapsed());
    })
    .await;
    assert!(held.is_err(), "still open after 185 s");
    // And it still carries new events: a session created now shows up on it.
    let created: Value = http
        .post(format!("{endpoint}/session"))
        .json(&json!({ "title": "after three minutes" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = created["id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(chunk)) = events.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(&session) {
                return;
            }
        }
    })
    .await
    .expect("the new session's event arrived on the 3-minute-old stream");
    assert!(opened.elapsed() > Duration::from_secs(180));
}

#[tokio::test]
async fn a_silent_link_is_noticed_by_its_pings_and_replaced() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let (s, relay, agent, id) = checksum_agent(&h).await;
    // In flight when the link goes silent: a download that never finishes.
    let (endpoint, http) = endpoint(&s, &id);
    let mut body = http
        .get(format!("{endpoint}/blob/{}", 200 << 20))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    body.next().await.unwrap().unwrap();
    relay.freeze();
    // Nothing closes: only the missing pongs tell, within 30 s (20 s ping + 5 s slack).
    let took = wait_status(&s, &id, SandboxStatus::Offline, Duration::from_secs(30)).await;
    assert!(
        took >= Duration::from_secs(15),
        "noticed by the pings: {took:?}"
    );
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(
        failed.is_ok(),
        "the in-flight download ended instead of hanging"
    );
    // The agent noticed too, reconnected through a fresh connection, and is back.
    agent
        .wait_for("reconnecting in", Duration::from_secs(15))
        .await;
    wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(15)).await;
    // A server shutting down leaves local sandboxes offline, never deletes them.
    s.orch.shutdown().await;
    let after = s.orch.store().sandbox(&id).await.unwrap();
    assert_eq!(after.status, SandboxStatus::Offline, "{after:?}");
}

/// An agent from before protocol version 2 says version 1 in its hello and takes no WebSocket
/// message bigger than version 1's frames (16 KiB of payload): the server still welcomes it,
/// cuts what it sends to that size, and carries a download and an upload intact.
#[tokio::test]
async fn an_agent_speaking_version_1_still_joins_and_carries_streams() {
    use bytes::Bytes;
    use delegate_agent::mux::{Mux, Role, recv_frame, send_frame};
    use delegate_agent::protocol::{Frame, Header, Limits, MAX_HEADER, VERSIONS_HEADER};
    use futures::{SinkExt, future};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().registration(Registration::Invite).start().await;
    let owner = s.account("owner").await;
    let local = checksum_server().await;
    let code = create_code(&s, &owner, json!({})).await;
    assert_eq!(code.status, 201, "{}", code.body);
    let registered = s
        .send(
            s.req(Method::POST, "/api/agents/register")
                .json(&json!({ "code": code.body["code"], "name": "old laptop" })),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let id = registered.body["sandbox_id"].as_str().unwrap().to_string();
    let token = registered.body["token"].as_str().unwrap().to_string();

    let url = format!("{}/api/tunnel/{id}", s.base.replacen("http", "ws", 1));
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let v1_message = 4 + MAX_HEADER + Limits::V1.chunk;
    let config = WebSocketConfig::default()
        .max_message_size(Some(v1_message))
        .max_frame_size(Some(v1_message));
    let (ws, response) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .unwrap();
    assert_eq!(
        response.headers()[VERSIONS_HEADER],
        "1,2",
        "the server lists what it speaks"
    );
    // The old agent reads nothing of that header: hello says 1.
    let mut link = ws
        .sink_map_err(std::io::Error::other)
        .with(|b: Bytes| future::ready(Ok::<_, std::io::Error>(Message::Binary(b))))
        .filter_map(|m| {
            future::ready(match m {
                Ok(Message::Binary(b)) => Some(Ok(b)),
                Ok(_) => None,
                Err(e) => Some(Err(std::io::Error::other(e))),
            })
        });
    let hello = Frame::new(Header::Hello {
        version: 1,
        agent: "0.0.9".into(),
        directory: None,
        password: None,
    });
    send_frame(&mut link, hello).await.unwrap();
    let welcome = recv_frame(&mut link, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(welcome.header, Header::Welcome { .. }),
        "{:?}",
        welcome.header
    );
    let (mux, incoming) = Mux::start(link, Role::Acceptor, Limits::V1);
    let mut incoming = incoming.unwrap();
    let target = local.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Some(stream) = incoming.next().await {
            tokio::spawn(delegate_agent::repos::route(stream, target.clone(), None));
        }
    });
    wait_status(&s, &id, SandboxStatus::Running, Duration::from_secs(30)).await;
    let (endpoint, http) = endpoint(&s, &id);

    let size = 3 << 20;
    let got = http
        .get(format!("{endpoint}/blob/{size}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == pattern(0, size), "the download arrived intact");
    let upload = pattern(3, 2 << 20);
    let sum = http
        .post(format!("{endpoint}/sha256"))
        .body(upload.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sum, hex::encode(Sha256::digest(&upload)), "the upload too");
    assert!(
        !mux.is_closed(),
        "no message over version 1's size reached the old agent"
    );
}

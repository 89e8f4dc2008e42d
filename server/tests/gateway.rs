//! The opencode gateway on `oc-{id}.{BASE_DOMAIN}` against real sandboxes (real opencode serve
//! under bubblewrap): no cookie -> sign-in; a ticket works once and only on its own host; the
//! cookie is host-only and HttpOnly; a cookie for one sandbox does not open another; a removed
//! member (or one demoted to guest) is out on the next request; SSE streams through unbuffered;
//! the browser's delegate cookies and credentials never reach opencode.

mod common;

use std::time::Duration;

use common::Harness;
use common::serve::Server;
use delegate_server::store::Role;
use delegate_testkit::anthropic::Script;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    server_addr: String,
}

impl Client {
    fn new(s: &Server) -> Client {
        Client {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            server_addr: format!("http://127.0.0.1:{}", s.port),
        }
    }

    /// A request to `path` on `host` (the Host header a browser would send).
    fn on(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.server_addr))
            .header("host", host)
    }

    /// The gateway's answer to a browser with `cookie` asking for `host`'s front page.
    async fn front_page(&self, host: &str, cookie: &str) -> reqwest::Response {
        self.on(host, "/")
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
    }

    fn post_on(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.server_addr))
            .header("host", host)
    }
}

/// Opens a WebSocket to `path` on `host` through the server at `port` by hand (RFC 6455): returns
/// the status line and, on 101, the socket.
async fn websocket(
    port: u16,
    host: &str,
    path: &str,
    cookie: &str,
    origin: &str,
) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {origin}\r\nCookie: {cookie}\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        sock.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (status, sock)
}

/// A masked client text frame (RFC 6455 5.2), payload under 126 bytes.
fn text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

impl Client {}

async fn create_sandbox(s: &Server, token: &str, ws: &str) -> String {
    let r = reqwest::Client::new()
        .post(s.url("/api/sandboxes"))
        .bearer_auth(token)
        .json(&json!({ "workspace": ws, "name": "gw" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let id = v["sandbox_id"].as_str().unwrap().to_string();
    // Browsers are pointed at the gateway, never at the server's loopback URL of opencode.
    assert_eq!(
        v["opencode_url"].as_str(),
        Some(format!("http://{}", s.sandbox_host(&id)).as_str()),
        "{v}"
    );
    id
}

/// Signs in with a password and asks for a ticket with the session cookie (as the UI does).
async fn ticket(s: &Server, email: &str, password: &str, sandbox: &str) -> (StatusCode, Value) {
    let (status, body, _) = ticket_and_session(s, email, password, sandbox).await;
    (status, body)
}

/// [`ticket`], also returning the session cookie (`name=value`).
async fn ticket_and_session(
    s: &Server,
    email: &str,
    password: &str,
    sandbox: &str,
) -> (StatusCode, Value, String) {
    let http = reqwest::Client::new();
    let login = http
        .post(s.url("/api/auth/login"))
        .header("origin", &s.origin)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (status, body) = open_with(s, &cookie, sandbox).await;
    (status, body, cookie)
}

/// Asks for a ticket into `sandbox` with a session cookie already signed in.
async fn open_with(s: &Server, session: &str, sandbox: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(s.url(&format!("/api/sandboxes/{sandbox}/open")))
        .header("cookie", session)
        .header("origin", &s.origin)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// Redeems a ticket URL; returns the gateway cookie (`name=value`) and the raw Set-Cookie.
async fn redeem(c: &Client, s: &Server, sandbox: &str, url: &str) -> (String, String) {
    let path = url
        .split_once(s.sandbox_host(sandbox).as_str())
        .map(|(_, p)| p.to_string())
        .unwrap_or_else(|| panic!("ticket URL on the sandbox host: {url}"));
    let r = c.on(&s.sandbox_host(sandbox), &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

#[tokio::test]
async fn the_gateway_admits_only_current_members_of_the_sandbox_it_was_opened_for() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().localhost_domain().start().await;
    let c = Client::new(&s);
    let owner = s.person("owner").await;
    let dev = s.person("dev").await;
    let ws = owner.personal.clone();
    s.add_member(&ws, &dev, Role::Developer).await;
    let a = create_sandbox(&s, &owner.token, &ws.slug).await;
    let b = create_sandbox(&s, &owner.token, &ws.slug).await;

    // No cookie: to the sign-in page on the main host, coming back to the sandbox.
    let r = c.on(&s.sandbox_host(&a), "/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"],
        s.url(&format!("/signin?next=/sandboxes/{a}")).as_str()
    );
    // A made-up cookie is no cookie.
    let r = c
        .on(&s.sandbox_host(&a), "/")
        .header("cookie", "delegate_gateway=dgc_forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // A ticket, redeemed once, gives a host-only HttpOnly cookie.
    let (status, t) = ticket(&s, &dev.email, dev.password(), &a).await;
    assert_eq!(status, 200, "{t}");
    let url = t["url"].as_str().unwrap();
    assert!(url.starts_with(&format!(
        "http://{}/_delegate/auth?ticket=dgt_",
        s.sandbox_host(&a)
    )));
    let (cookie, set_cookie) = redeem(&c, &s, &a, url).await;
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    assert!(
        !set_cookie.to_ascii_lowercase().contains("domain"),
        "host-only: {set_cookie}"
    );
    let path = url.split_once("/_delegate").unwrap().1;
    let again = c
        .on(&s.sandbox_host(&a), &format!("/_delegate{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN, "a ticket works once");
    // A ticket for A does not redeem on B's host either.
    let (_, t2) = ticket(&s, &dev.email, dev.password(), &a).await;
    let path2 = t2["url"]
        .as_str()
        .unwrap()
        .split_once("/_delegate")
        .unwrap()
        .1
        .to_string();
    let r = c
        .on(&s.sandbox_host(&b), &format!("/_delegate{path2}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // With the cookie: opencode's own web UI, through the gateway.
    let r = c
        .on(&s.sandbox_host(&a), "/")
        .header(
            "cookie",
            format!("{cookie}; delegate_session=dss_must_not_leak"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>OpenCode</title>"), "{html:.300}");

    // SSE streams through without buffering: opencode's first event arrives while the stream
    // stays open.
    let r = c
        .on(&s.sandbox_host(&a), "/event")
        .header("cookie", &cookie)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = r.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(20), body.next())
        .await
        .expect("an SSE event before the stream ends")
        .expect("a chunk")
        .expect("bytes");
    assert!(
        String::from_utf8_lossy(&first).contains("data:"),
        "{first:?}"
    );
    drop(body);

    // Changes and WebSockets only from the sandbox's own page: a sibling host is refused.
    let own = format!("http://{}", s.sandbox_host(&a));
    let r = c
        .post_on(&s.sandbox_host(&a), "/pty")
        .header("cookie", &cookie)
        .header("origin", format!("http://{}", s.sandbox_host(&b)))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a sibling host's POST");
    let r = c
        .post_on(&s.sandbox_host(&a), "/pty")
        .header("cookie", &cookie)
        .header("origin", &own)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pty: Value = r.json().await.unwrap();
    let pty = pty["id"].as_str().unwrap().to_string();
    let path = format!("/pty/{pty}/connect");
    let (status, _) = websocket(
        s.port,
        &s.sandbox_host(&a),
        &path,
        &cookie,
        "http://evil.example",
    )
    .await;
    assert!(status.contains(" 403 "), "a foreign WebSocket: {status}");
    // A real WebSocket into the sandbox's terminal, through the gateway.
    let (status, mut socket) = websocket(s.port, &s.sandbox_host(&a), &path, &cookie, &own).await;
    assert!(status.contains(" 101 "), "{status}");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        socket
            .write_all(&text_frame("echo $((6*7))XYZ\r"))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return false;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(5).any(|w| w == b"42XYZ") {
                    return true;
                }
            }
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "the command's output came back over the WebSocket: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    drop(socket);

    // The cookie for A does not open B.
    let r = c.front_page(&s.sandbox_host(&b), &cookie).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "A's cookie on B");

    // Demoted to guest: refused on the next request; removed: sent to sign in.
    s.add_member(&ws, &dev, Role::Guest).await;
    let r = c.front_page(&s.sandbox_host(&a), &cookie).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    s.add_member(&ws, &dev, Role::Developer).await;
    let r = c.front_page(&s.sandbox_host(&a), &cookie).await;
    assert_eq!(r.status(), 200, "a developer again");
    let removed = reqwest::Client::new()
        .delete(s.url(&format!(
            "/api/workspaces/{}/members/{}",
            ws.slug, dev.user.id
        )))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let r = c.front_page(&s.sandbox_host(&a), &cookie).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "a removed member is out");

    // Signing out of delegate closes the gateway opened with that session.
    let (status, t, session) = ticket_and_session(&s, &owner.email, owner.password(), &a).await;
    assert_eq!(status, 200);
    let (owner_cookie, _) = redeem(&c, &s, &a, t["url"].as_str().unwrap()).await;
    let r = c.front_page(&s.sandbox_host(&a), &owner_cookie).await;
    assert_eq!(r.status(), 200);
    let out = reqwest::Client::new()
        .post(s.url("/api/auth/logout"))
        .header("cookie", &session)
        .header("origin", &s.origin)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let r = c.front_page(&s.sandbox_host(&a), &owner_cookie).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "signed out, so out");

    // Guests get no ticket; an unknown or foreign sandbox is not found.
    let guest = s.person("guest").await;
    s.add_member(&ws, &guest, Role::Guest).await;
    let (status, body) = ticket(&s, &guest.email, guest.password(), &a).await;
    assert_eq!(status, 403, "{body}");
    let outsider = s.person("outsider").await;
    let (status, _) = ticket(&s, &outsider.email, outsider.password(), &a).await;
    assert_eq!(status, 404);

    // A paused sandbox opens no gateway; a host that is no sandbox id is delegate's own UI.
    let r = reqwest::Client::new()
        .post(s.url(&format!("/api/sandboxes/{b}/pause")))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = ticket(&s, &owner.email, owner.password(), &b).await;
    assert_eq!(status, 409, "{body}");
    let r = c
        .on(&format!("oc-nonsense.localhost:{}", s.port), "/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("/ui/app.js"));

    // A viewer keeps a sandbox awake: with a 3 s idle timeout, an open stream through the
    // gateway holds it running for four times that; once the viewer leaves, it pauses. Signed in
    // first, so that nothing slow (a password hash on a loaded machine) stands between the
    // sandbox starting and its viewer arriving.
    let (_, _, session) = ticket_and_session(&s, &owner.email, owner.password(), &a).await;
    let r = reqwest::Client::new()
        .post(s.url("/api/sandboxes"))
        .bearer_auth(&owner.token)
        .json(&json!({ "workspace": ws.slug, "idle_timeout_seconds": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let watched = r.json::<Value>().await.unwrap()["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, t) = open_with(&s, &session, &watched).await;
    assert_eq!(status, 200, "{t}");
    let (cookie, _) = redeem(&c, &s, &watched, t["url"].as_str().unwrap()).await;
    let stream = c
        .on(&s.sandbox_host(&watched), "/event")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let status = |id: String| {
        let url = s.url(&format!("/api/sandboxes/{id}"));
        let token = owner.token.clone();
        async move {
            let v: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["status"].as_str().unwrap_or("").to_string()
        }
    };
    let window = tokio::time::Instant::now() + Duration::from_secs(12);
    while tokio::time::Instant::now() < window {
        assert_eq!(
            status(watched.clone()).await,
            "running",
            "paused under its viewer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status(watched.clone()).await != "paused" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not paused after the viewer left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for id in [&a, &b, &watched] {
        let r = reqwest::Client::new()
            .delete(s.url(&format!("/api/sandboxes/{id}")))
            .bearer_auth(&owner.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

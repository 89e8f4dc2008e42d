//! Single sign-on end to end. OIDC: a full authorization code + PKCE login against the real
//! `oidc-provider-mock` (PyPI, installed by `scripts/setup --test` under `.tools/venv`), started
//! here on a free loopback port with `--require-nonce true`; the browser is reqwest with redirects
//! followed by hand and the provider's login form submitted like a person would. GitHub cannot
//! run here, so its flow runs against a small fake speaking GitHub's wire format (OAuth authorize
//! and access_token, `/user`, `/user/emails`), which checks the client secret and PKCE like GitHub.
//!
//! Every secret seen on the way (client secrets, codes, access tokens, session cookies) is grepped
//! for in the server's log and in every JSON body it returned.

mod common;

use common::error_code;
use common::serve::{Serve, Server, logs};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use delegate_server::settings::Registration;
use delegate_server::store::Store;
use delegate_testkit::real;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

const OIDC_CLIENT_SECRET: &str = "oidc-client-secret-must-never-leak-4c1d";
const GITHUB_CLIENT_SECRET: &str = "github-client-secret-must-never-leak-9e2b";

// ---- delegate serve, in process ---------------------------------------------------------------

/// A served `delegate serve` router (with its log captured), the "browser" that talks to it, and
/// what it answered.
struct Delegate {
    server: Server,
    /// The browser's `delegate_sso` cookie (binds sign-ins in progress to this browser).
    sso_cookie: Mutex<Option<String>>,
}

impl std::ops::Deref for Delegate {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Delegate {
    async fn start(sso_env: &[(&str, String)], registration: Registration) -> Delegate {
        Delegate {
            server: Serve::standalone()
                .capture_logs()
                .sso(sso_env)
                .registration(registration)
                .start()
                .await,
            sso_cookie: Mutex::new(None),
        }
    }

    /// GET a URL of delegate (absolute, or a path), optionally with a session cookie.
    /// Like the browser: sends and keeps delegate's `delegate_sso` cookie.
    async fn get(&self, url: &str, cookie: Option<&str>) -> reqwest::Response {
        self.get_from(url, cookie, true).await
    }

    /// From another browser: without this browser's `delegate_sso` cookie.
    async fn get_from(
        &self,
        url: &str,
        session: Option<&str>,
        this_browser: bool,
    ) -> reqwest::Response {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_string()
        };
        assert!(url.starts_with(&self.base), "{url} is not delegate's");
        let mut cookies = Vec::new();
        if let Some(c) = session {
            cookies.push(format!("delegate_session={c}"));
        }
        if this_browser && let Some(c) = self.sso_cookie.lock().unwrap().as_ref() {
            cookies.push(format!("delegate_sso={c}"));
        }
        let mut r = self.http.get(url);
        if !cookies.is_empty() {
            r = r.header("cookie", cookies.join("; "));
        }
        let resp = r.send().await.expect("request to delegate");
        if this_browser
            && let Some(set) = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.starts_with("delegate_sso="))
        {
            let value = set["delegate_sso=".len()..].split(';').next().unwrap();
            *self.sso_cookie.lock().unwrap() = Some(value.to_string());
        }
        resp
    }

    /// GET and parse the JSON body (kept for the secret grep).
    async fn json(&self, url: &str, cookie: Option<&str>) -> (StatusCode, Value) {
        let resp = self.get(url, cookie).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn users_with_email(&self, email: &str) -> Option<String> {
        self.store().user_by_email(email).await.ok().map(|u| u.id)
    }
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in a {} answer", resp.status()))
        .to_str()
        .unwrap()
        .to_string()
}

/// The session secret of a `Set-Cookie: delegate_session=...`.
fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("delegate_session="))
        .expect("a session cookie")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    set["delegate_session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// Asserts that no secret occurs in the server log or any body delegate returned.
fn assert_no_leaks(d: &Delegate, secrets: &[String]) {
    let log = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        log.contains("signed in with single sign-on"),
        "the log capture did not catch the server's log"
    );
    let bodies = d.bodies.lock().unwrap().join("\n");
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !log.contains(secret.as_str()),
            "a secret is in the log: {secret}"
        );
        assert!(
            !bodies.contains(secret.as_str()),
            "a secret is in a JSON body: {secret}"
        );
    }
}

// ---- The real OIDC provider -------------------------------------------------------------------

/// `oidc-provider-mock` on a free loopback port; killed on drop.
struct Provider {
    issuer: String,
    _child: tokio::process::Child,
}

impl Provider {
    async fn start(users: &[Value]) -> Option<Provider> {
        delegate_server::net::install_crypto();
        let bin = real::repo_root().join(".tools/venv/bin/oidc-provider-mock");
        if !bin.is_file() {
            return real::unavailable(
                "oidc-provider-mock",
                &format!("{} is missing (run scripts/setup --test)", bin.display()),
            );
        }
        // The mock takes a port number, not a socket: find a free one, then let it bind.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path: PathBuf = std::env::temp_dir().join(format!("oidc-mock-{port}.log"));
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--require-nonce",
            "true",
        ]);
        for u in users {
            cmd.args(["--user-claims", &u.to_string()]);
        }
        cmd.env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log_path).unwrap())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("start oidc-provider-mock");
        let issuer = format!("http://127.0.0.1:{port}");
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&discovery).await
                && r.status().is_success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!(
                    "oidc-provider-mock did not answer within 30 s: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(Provider {
            issuer,
            _child: child,
        })
    }
}

/// What one pass through the provider produced.
struct Authorized {
    /// delegate's callback URL with `code` and `state`, as the provider redirected to it.
    callback: String,
}

/// Starts a sign-in at delegate and signs in at the provider as `sub` (submitting its login
/// form), returning the redirect back to delegate without following it.
async fn authorize_at_provider(d: &Delegate, sub: &str, return_to: &str) -> Authorized {
    let start = d
        .get(&format!("/api/auth/oidc/start?return_to={return_to}"), None)
        .await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let authorize = location(&start);
    for (param, want) in [
        ("response_type", Some("code")),
        ("code_challenge_method", Some("S256")),
        ("client_id", Some("delegate-test")),
    ] {
        assert_eq!(
            query_param(&authorize, param).as_deref(),
            want,
            "{authorize}"
        );
    }
    for param in ["state", "nonce", "code_challenge", "redirect_uri"] {
        assert!(
            query_param(&authorize, param).is_some(),
            "{param} missing: {authorize}"
        );
    }
    let scope = query_param(&authorize, "scope").unwrap();
    assert!(scope.split(' ').any(|s| s == "openid"), "{scope}");

    // The provider's page: a form that posts `sub` back to the same URL.
    let page = d.http.get(&authorize).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("name=\"sub\""),
        "unexpected login page: {html}"
    );
    let submitted = d
        .http
        .post(&authorize)
        .form(&[("sub", sub)])
        .send()
        .await
        .unwrap();
    assert!(
        submitted.status().is_redirection(),
        "{}",
        submitted.status()
    );
    let callback = location(&submitted);
    assert!(
        callback.starts_with(&format!("{}/api/auth/oidc/callback?", d.base)),
        "{callback}"
    );
    Authorized { callback }
}

/// Follows the provider's redirect into delegate: the sign-in's outcome.
async fn finish(d: &Delegate, callback: &str) -> reqwest::Response {
    d.get(callback, None).await
}

/// Signs in as the user of a session cookie and returns `/api/auth/me`'s user id, checking the
/// session row too.
async fn whoami(d: &Delegate, cookie: &str) -> String {
    let caller = delegate_server::auth::sessions::caller_from_session(d.store(), cookie)
        .await
        .expect("the cookie is a live session");
    let (status, me) = d.json("/api/auth/me", Some(cookie)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the session cookie is accepted: {me}"
    );
    let id = me["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no user id in /api/auth/me: {me}"))
        .to_string();
    assert_eq!(id, caller.user_id);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_against_a_real_provider() {
    let users = [
        json!({"sub": "alice-1", "email": "alice@example.com", "email_verified": true, "name": "Alice"}),
        // A second subject with the same verified email (another account at the provider).
        json!({"sub": "alice-2", "email": "Alice@Example.com", "email_verified": true}),
        // Claims bob's address without the provider having verified it.
        json!({"sub": "mallory", "email": "bob@example.com", "email_verified": false}),
        json!({"sub": "newbie", "email": "newbie@example.com", "email_verified": false}),
        json!({"sub": "carol", "email": "carol@example.com", "email_verified": true}),
    ];
    let Some(provider) = Provider::start(&users).await else {
        return;
    };
    let d = Delegate::start(
        &[
            ("OIDC_ISSUER_URL", provider.issuer.clone()),
            ("OIDC_CLIENT_ID", "delegate-test".into()),
            ("OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET.into()),
        ],
        Registration::Open,
    )
    .await;
    let mut secrets = vec![OIDC_CLIENT_SECRET.to_string()];

    let (status, providers) = d.json("/api/auth/providers", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(providers, json!({"oidc": true, "github": false}));
    let (_, doc) = d.json("/api/openapi.json", None).await;
    for path in [
        "/api/auth/providers",
        "/api/auth/oidc/start",
        "/api/auth/oidc/callback",
        "/api/auth/github/start",
        "/api/auth/github/callback",
    ] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} is not in the OpenAPI document"
        );
    }
    // Starting sets the cookie that binds the sign-in to this browser.
    let start = d.get("/api/auth/oidc/start", None).await;
    let bind = start.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        bind.starts_with("delegate_sso=dsso_")
            && bind.contains("HttpOnly")
            && bind.contains("SameSite=Lax")
            && bind.contains("Path=/api/auth"),
        "{bind}"
    );
    // An unconfigured provider is a 404 in the envelope.
    let (status, body) = d.json("/api/auth/github/start", None).await;
    assert_eq!(
        (status, error_code(status, &body).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // return_to must stay on this server.
    let (status, body) = d
        .json("/api/auth/oidc/start?return_to=https://evil.example/", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = d
        .json("/api/auth/oidc/start?return_to=//evil.example/", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // 1. First login: a new account (with a personal workspace) and its identity.
    assert!(d.users_with_email("alice@example.com").await.is_none());
    let a = authorize_at_provider(&d, "alice-1", "/sandboxes").await;
    secrets.push(query_param(&a.callback, "code").unwrap());
    let done = finish(&d, &a.callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/sandboxes");
    let cookie = session_cookie(&done);
    secrets.push(cookie.clone());
    let alice = whoami(&d, &cookie).await;
    assert_eq!(
        d.users_with_email("alice@example.com").await.as_deref(),
        Some(alice.as_str())
    );
    let user = d.store().user_by_id(&alice).await.unwrap();
    assert_eq!(user.name, "Alice");
    assert_eq!(d.store().workspaces_of_user(&alice).await.unwrap().len(), 1);
    let ids = d.store().identities_of_user(&alice).await.unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        (ids[0].provider.as_str(), ids[0].subject.as_str()),
        ("oidc", "alice-1")
    );
    assert!(ids[0].email_verified);

    // The same subject again: the same account, no new identity.
    let again = authorize_at_provider(&d, "alice-1", "/").await;
    secrets.push(query_param(&again.callback, "code").unwrap());
    let done = finish(&d, &again.callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/");
    let cookie2 = session_cookie(&done);
    secrets.push(cookie2.clone());
    assert_eq!(whoami(&d, &cookie2).await, alice);
    assert_eq!(d.store().identities_of_user(&alice).await.unwrap().len(), 1);

    // 2. Another subject with the same verified email links to the same account.
    let b = authorize_at_provider(&d, "alice-2", "/").await;
    secrets.push(query_param(&b.callback, "code").unwrap());
    let done = finish(&d, &b.callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let cookie3 = session_cookie(&done);
    secrets.push(cookie3.clone());
    assert_eq!(whoami(&d, &cookie3).await, alice);
    let ids = d.store().identities_of_user(&alice).await.unwrap();
    let subjects: Vec<&str> = ids.iter().map(|i| i.subject.as_str()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.contains(&"alice-1") && subjects.contains(&"alice-2"));
    assert_eq!(
        d.store().workspaces_of_user(&alice).await.unwrap().len(),
        1,
        "no second account"
    );

    // 3. An unverified email is not linked to the existing account with that email, and no
    //    duplicate account is made.
    let (bob, _) = delegate_server::auth::create_user(d.store(), "bob@example.com", Some("Bob"))
        .await
        .unwrap();
    let m = authorize_at_provider(&d, "mallory", "/").await;
    secrets.push(query_param(&m.callback, "code").unwrap());
    let (status, body) = d.json(&m.callback, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(status, &body), "not_linked");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not verified"),
        "{body}"
    );
    assert!(
        d.store()
            .identities_of_user(&bob.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(d.store().identity("oidc", "mallory").await.is_err());
    assert_eq!(
        d.users_with_email("bob@example.com").await,
        Some(bob.id.clone())
    );
    // Nor does an unverified email get an account of its own (it could squat an address).
    let n = authorize_at_provider(&d, "newbie", "/").await;
    secrets.push(query_param(&n.callback, "code").unwrap());
    let (status, body) = d.json(&n.callback, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(d.users_with_email("newbie@example.com").await.is_none());

    // 4. A tampered state is refused (400 in the envelope) ...
    let c = authorize_at_provider(&d, "carol", "/").await;
    secrets.push(query_param(&c.callback, "code").unwrap());
    let state = query_param(&c.callback, "state").unwrap();
    let tampered = with_query_param(&c.callback, "state", &format!("{state}x"));
    let (status, body) = d.json(&tampered, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(status, &body), "invalid_input");
    let (status, _) = d
        .json(&with_query_param(&c.callback, "state", ""), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(d.users_with_email("carol@example.com").await.is_none());
    // ... so is the genuine callback opened in another browser (a link handed to a victim must
    // not sign them in as someone else), and that uses the state up ...
    let stranger = d.get_from(&c.callback, None, false).await;
    assert_eq!(stranger.status(), StatusCode::BAD_REQUEST);
    let body: Value = stranger.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another browser"),
        "{body}"
    );
    assert!(d.users_with_email("carol@example.com").await.is_none());
    let (status, _) = d.json(&c.callback, None).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "used up by the other browser's attempt"
    );
    // ... while a fresh sign-in in this browser works ...
    let c = authorize_at_provider(&d, "carol", "/").await;
    secrets.push(query_param(&c.callback, "code").unwrap());
    let done = finish(&d, &c.callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let carol_cookie = session_cookie(&done);
    secrets.push(carol_cookie.clone());
    let carol = whoami(&d, &carol_cookie).await;
    // ... and replaying it (same code and state) is refused: a state works once.
    let (status, body) = d.json(&c.callback, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(status, &body), "invalid_input");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("state"),
        "{body}"
    );

    // 5. A wrong nonce is refused. Provoked for real with two sign-ins in flight (an injected
    //    code): sign-in X's code, whose ID token carries X's nonce, is delivered with sign-in Y's
    //    state, so delegate redeems it for Y and must find Y's nonce missing from the ID token.
    //    (The mock does not enforce PKCE, so the nonce is what stops this here.)
    let x = authorize_at_provider(&d, "carol", "/").await;
    let y = authorize_at_provider(&d, "carol", "/").await;
    secrets.push(query_param(&x.callback, "code").unwrap());
    secrets.push(query_param(&y.callback, "code").unwrap());
    let y_state = query_param(&y.callback, "state").unwrap();
    let injected = with_query_param(&x.callback, "state", &y_state);
    let sessions_before = d.store().sessions_of_user(&carol).await.unwrap().len();
    let (status, body) = d.json(&injected, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(status, &body), "invalid_input");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nonce"),
        "{body}"
    );
    assert_eq!(
        d.store().sessions_of_user(&carol).await.unwrap().len(),
        sessions_before,
        "no session for a refused sign-in"
    );

    // The provider saying no comes back as a clear refusal, and uses up the state.
    let start = d.get("/api/auth/oidc/start", None).await;
    let state = query_param(&location(&start), "state").unwrap();
    let denied = format!(
        "{}/api/auth/oidc/callback?error=access_denied&state={state}",
        d.base
    );
    let (status, body) = d.json(&denied, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("access_denied")
    );
    let (status, _) = d.json(&denied, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_no_leaks(&d, &secrets);
}

// ---- GitHub, faked on its wire format ---------------------------------------------------------

/// A GitHub account the fake signs in as.
#[derive(Clone)]
struct GithubAccount {
    id: i64,
    login: &'static str,
    email: &'static str,
    verified: bool,
    /// The organizations `/user/orgs` lists.
    orgs: &'static [&'static str],
}

#[derive(Default)]
struct FakeGithubState {
    /// The account the next authorization signs in as.
    current: Option<GithubAccount>,
    /// code -> (PKCE challenge, redirect_uri, account)
    codes: HashMap<String, (String, String, GithubAccount)>,
    /// access token -> account
    tokens: HashMap<String, GithubAccount>,
    /// Every code and token handed out, for the secret grep.
    issued: Vec<String>,
    /// The `scope` of the last authorization.
    scope: Option<String>,
}

type Fake = Arc<Mutex<FakeGithubState>>;

async fn gh_authorize(State(s): State<Fake>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q.get("client_id").map(String::as_str), Some("gh-client"));
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    let mut s = s.lock().unwrap();
    s.scope = q.get("scope").cloned();
    let account = s.current.clone().expect("a current GitHub account");
    let code = format!("ghcode{}", delegate_server::ids::new_id("c"));
    let redirect = q["redirect_uri"].clone();
    s.codes.insert(
        code.clone(),
        (q["code_challenge"].clone(), redirect.clone(), account),
    );
    s.issued.push(code.clone());
    let mut url = reqwest::Url::parse(&redirect).unwrap();
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"]);
    Redirect::to(url.as_str()).into_response()
}

async fn gh_access_token(State(s): State<Fake>, headers: HeaderMap, body: String) -> Response {
    // application/x-www-form-urlencoded, as GitHub takes it.
    let f: HashMap<String, String> = reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(headers["accept"], "application/json");
    let mut s = s.lock().unwrap();
    let ok_client = f.get("client_id").map(String::as_str) == Some("gh-client")
        && f.get("client_secret").map(String::as_str) == Some(GITHUB_CLIENT_SECRET);
    let Some((challenge, redirect, account)) = f.get("code").and_then(|c| s.codes.remove(c)) else {
        return axum::Json(json!({"error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired."}))
        .into_response();
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    if !ok_client || computed != challenge || f.get("redirect_uri") != Some(&redirect) {
        return axum::Json(json!({"error": "incorrect_client_credentials"})).into_response();
    }
    let token = format!("gho_{}", delegate_server::ids::new_id("t"));
    s.tokens.insert(token.clone(), account);
    s.issued.push(token.clone());
    axum::Json(
        json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}),
    )
    .into_response()
}

fn gh_account(s: &Fake, headers: &HeaderMap) -> Option<GithubAccount> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    s.lock().unwrap().tokens.get(token).cloned()
}

async fn gh_user(State(s): State<Fake>, headers: HeaderMap) -> Response {
    match gh_account(&s, &headers) {
        Some(a) => axum::Json(json!({"id": a.id, "login": a.login, "name": null, "type": "User"}))
            .into_response(),
        None => (
            AxumStatus::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response(),
    }
}

async fn gh_emails(State(s): State<Fake>, headers: HeaderMap) -> Response {
    match gh_account(&s, &headers) {
        Some(a) => axum::Json(json!([
            {"email": format!("{}@users.noreply.github.com", a.login), "primary": false, "verified": true, "visibility": null},
            {"email": a.email, "primary": true, "verified": a.verified, "visibility": "private"},
        ]))
        .into_response(),
        None => (AxumStatus::UNAUTHORIZED, axum::Json(json!({"message": "Bad credentials"})))
            .into_response(),
    }
}

async fn gh_orgs(State(s): State<Fake>, headers: HeaderMap) -> Response {
    match gh_account(&s, &headers) {
        Some(a) => axum::Json(
            a.orgs
                .iter()
                .map(|o| json!({"login": o, "id": 1}))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        None => (
            AxumStatus::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response(),
    }
}

async fn fake_github() -> (String, Fake) {
    let state: Fake = Arc::default();
    let app = axum::Router::new()
        .route("/login/oauth/authorize", axum::routing::get(gh_authorize))
        .route(
            "/login/oauth/access_token",
            axum::routing::post(gh_access_token),
        )
        .route("/user", axum::routing::get(gh_user))
        .route("/user/emails", axum::routing::get(gh_emails))
        .route("/user/orgs", axum::routing::get(gh_orgs))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, state)
}

/// One GitHub sign-in as `account`; the final answer of delegate's callback.
async fn github_login(d: &Delegate, fake: &Fake, account: GithubAccount) -> reqwest::Response {
    fake.lock().unwrap().current = Some(account);
    let start = d.get("/api/auth/github/start?return_to=/w", None).await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let authorize = location(&start);
    assert!(
        query_param(&authorize, "state").is_some()
            && query_param(&authorize, "code_challenge").is_some()
    );
    let at_github = d.http.get(&authorize).send().await.unwrap();
    assert!(at_github.status().is_redirection());
    d.get(&location(&at_github), None).await
}

/// With registration `invite` (the default) or `disabled`, single sign-on signs people into
/// accounts that exist and makes none: anyone with an account at the provider would otherwise get
/// the operator's model key and a sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_follows_the_registration_policy() {
    let users = [
        json!({"sub": "known", "email": "known@example.com", "email_verified": true}),
        json!({"sub": "stranger", "email": "stranger@example.com", "email_verified": true}),
    ];
    let Some(provider) = Provider::start(&users).await else {
        return;
    };
    let sso = [
        ("OIDC_ISSUER_URL", provider.issuer.clone()),
        ("OIDC_CLIENT_ID", "delegate-test".to_string()),
        ("OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET.to_string()),
    ];
    for (registration, says) in [
        (Registration::Invite, "invite only"),
        (Registration::Disabled, "does not create accounts"),
    ] {
        let d = Delegate::start(&sso, registration).await;
        let (known, _) =
            delegate_server::auth::create_user(d.store(), "known@example.com", Some("Known"))
                .await
                .unwrap();
        // A stranger is refused, and nothing is made for them.
        let s = authorize_at_provider(&d, "stranger", "/").await;
        let (status, body) = d.json(&s.callback, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(error_code(status, &body), "not_linked");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{registration:?}: {body}"
        );
        assert!(d.users_with_email("stranger@example.com").await.is_none());
        assert!(d.store().identity("oidc", "stranger").await.is_err());
        // Someone with an account signs in, and the identity is linked to it.
        let k = authorize_at_provider(&d, "known", "/").await;
        let signed_in = finish(&d, &k.callback).await;
        assert_eq!(
            signed_in.status(),
            StatusCode::SEE_OTHER,
            "{registration:?}"
        );
        assert_eq!(
            d.store().identity("oidc", "known").await.unwrap().user_id,
            known.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_login_links_only_verified_primary_emails() {
    let (gh_base, fake) = fake_github().await;
    let d = Delegate::start(
        &[
            ("GITHUB_CLIENT_ID", "gh-client".into()),
            ("GITHUB_CLIENT_SECRET", GITHUB_CLIENT_SECRET.into()),
            ("GITHUB_API_URL", gh_base.clone()),
            ("GITHUB_OAUTH_URL", gh_base.clone()),
        ],
        Registration::Open,
    )
    .await;
    let mut secrets = vec![GITHUB_CLIENT_SECRET.to_string()];
    let (status, providers) = d.json("/api/auth/providers", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(providers, json!({"oidc": false, "github": true}));
    let (status, body) = d.json("/api/auth/oidc/start", None).await;
    assert_eq!(
        (status, error_code(status, &body).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // A verified primary email: a new account.
    let octo = GithubAccount {
        id: 1001,
        login: "octocat",
        email: "octo@example.com",
        verified: true,
        orgs: &[],
    };
    let done = github_login(&d, &fake, octo.clone()).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/w");
    let cookie = session_cookie(&done);
    secrets.push(cookie.clone());
    let octo_id = whoami(&d, &cookie).await;
    assert_eq!(
        d.users_with_email("octo@example.com").await.as_deref(),
        Some(octo_id.as_str())
    );
    let ids = d.store().identities_of_user(&octo_id).await.unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        (ids[0].provider.as_str(), ids[0].subject.as_str()),
        ("github", "1001")
    );
    assert_eq!(
        d.store().user_by_id(&octo_id).await.unwrap().name,
        "octocat"
    );

    // A verified primary email of an existing account: linked to it.
    let (dana, _) = delegate_server::auth::create_user(d.store(), "dana@example.com", None)
        .await
        .unwrap();
    let done = github_login(
        &d,
        &fake,
        GithubAccount {
            id: 1002,
            login: "dana",
            email: "dana@example.com",
            verified: true,
            orgs: &[],
        },
    )
    .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let cookie = session_cookie(&done);
    secrets.push(cookie.clone());
    assert_eq!(whoami(&d, &cookie).await, dana.id);
    assert_eq!(
        d.store().identity("github", "1002").await.unwrap().user_id,
        dana.id
    );

    // An unverified primary email of an existing account: not linked, no duplicate.
    let (erin, _) = delegate_server::auth::create_user(d.store(), "erin@example.com", None)
        .await
        .unwrap();
    let resp = github_login(
        &d,
        &fake,
        GithubAccount {
            id: 1003,
            login: "not-erin",
            email: "erin@example.com",
            verified: false,
            orgs: &[],
        },
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    d.bodies.lock().unwrap().push(body.to_string());
    assert_eq!(body["error"]["code"], "not_linked", "{body}");
    assert!(d.store().identity("github", "1003").await.is_err());
    assert!(
        d.store()
            .identities_of_user(&erin.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(d.users_with_email("erin@example.com").await, Some(erin.id));

    // A replayed GitHub callback is refused too.
    fake.lock().unwrap().current = Some(octo);
    let start = d.get("/api/auth/github/start", None).await;
    let at_github = d.http.get(location(&start)).send().await.unwrap();
    let callback = location(&at_github);
    assert_eq!(d.get(&callback, None).await.status(), StatusCode::SEE_OTHER);
    let (status, body) = d.json(&callback, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    secrets.extend(fake.lock().unwrap().issued.iter().cloned());
    assert!(secrets.len() > 6);
    assert_no_leaks(&d, &secrets);
}

/// M5: a password sign-up never proved its email, so a provider's verified identity with that
/// address is not linked to it (nor the account handed to whoever controls the identity); an
/// account single sign-on creates is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_never_links_to_an_account_whose_email_is_unverified() {
    let users = [
        json!({"sub": "victim-sso", "email": "victim@example.com", "email_verified": true}),
        json!({"sub": "fresh", "email": "fresh@example.com", "email_verified": true}),
    ];
    let Some(provider) = Provider::start(&users).await else {
        return;
    };
    let d = Delegate::start(
        &[
            ("OIDC_ISSUER_URL", provider.issuer.clone()),
            ("OIDC_CLIENT_ID", "delegate-test".into()),
            ("OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET.into()),
        ],
        Registration::Open,
    )
    .await;
    // What a password sign-up makes (tests/hardening.rs checks the sign-up route does this).
    let (squatter, _) = delegate_server::auth::create_user_with(
        d.store(),
        "victim@example.com",
        Some("Squatter"),
        false,
    )
    .await
    .unwrap();
    let a = authorize_at_provider(&d, "victim-sso", "/").await;
    let (status, body) = d.json(&a.callback, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(status, &body), "not_linked");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never verified"),
        "{body}"
    );
    assert!(d.store().identity("oidc", "victim-sso").await.is_err());
    assert!(
        d.store()
            .identities_of_user(&squatter.id)
            .await
            .unwrap()
            .is_empty()
    );
    // Once an administrator vouches for the address, the identity links.
    d.store()
        .set_email_verified(&squatter.id, true)
        .await
        .unwrap();
    let a = authorize_at_provider(&d, "victim-sso", "/").await;
    let done = finish(&d, &a.callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(whoami(&d, &session_cookie(&done)).await, squatter.id);

    // A new account from a verified identity is verified.
    let f = authorize_at_provider(&d, "fresh", "/").await;
    let done = finish(&d, &f.callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let fresh = whoami(&d, &session_cookie(&done)).await;
    assert!(d.store().email_verified(&fresh).await.unwrap());
}

/// `GITHUB_ALLOWED_ORGS`: GitHub sign-in needs membership of a listed organization (asked of
/// GitHub with the user's token and `read:org`); others get no account and no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_sign_in_needs_an_allowed_org() {
    let (gh_base, fake) = fake_github().await;
    let d = Delegate::start(
        &[
            ("GITHUB_CLIENT_ID", "gh-client".into()),
            ("GITHUB_CLIENT_SECRET", GITHUB_CLIENT_SECRET.into()),
            ("GITHUB_API_URL", gh_base.clone()),
            ("GITHUB_OAUTH_URL", gh_base.clone()),
            ("GITHUB_ALLOWED_ORGS", "Acme, friends".into()),
        ],
        Registration::Open,
    )
    .await;
    let outsider = GithubAccount {
        id: 2001,
        login: "outsider",
        email: "outsider@example.com",
        verified: true,
        orgs: &["other", "acme-fans"],
    };
    let resp = github_login(&d, &fake, outsider).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("organization"),
        "{body}"
    );
    assert_eq!(
        fake.lock().unwrap().scope.as_deref(),
        Some("read:user user:email read:org")
    );
    assert!(d.users_with_email("outsider@example.com").await.is_none());
    assert!(d.store().identity("github", "2001").await.is_err());

    // A member (the org's name in another case) signs in.
    let member = GithubAccount {
        id: 2002,
        login: "member",
        email: "member@example.com",
        verified: true,
        orgs: &["other", "acme"],
    };
    let resp = github_login(&d, &fake, member).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = session_cookie(&resp);
    let id = whoami(&d, &cookie).await;
    assert_eq!(
        d.users_with_email("member@example.com").await.as_deref(),
        Some(id.as_str())
    );
    // A linked identity that leaves the org is refused on its next sign-in.
    let left = GithubAccount {
        id: 2002,
        login: "member",
        email: "member@example.com",
        verified: true,
        orgs: &[],
    };
    let resp = github_login(&d, &fake, left).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// `OIDC_ALLOWED_EMAIL_DOMAINS`: OIDC sign-in needs a verified email in a listed domain, against
/// the real provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_needs_an_allowed_email_domain() {
    let users = [
        json!({"sub": "insider", "email": "insider@Corp.Example", "email_verified": true}),
        json!({"sub": "outsider", "email": "outsider@elsewhere.example", "email_verified": true}),
        json!({"sub": "claimer", "email": "claimer@corp.example", "email_verified": false}),
        // A domain that only ends like the allowed one.
        json!({"sub": "lookalike", "email": "x@evilcorp.example", "email_verified": true}),
    ];
    let Some(provider) = Provider::start(&users).await else {
        return;
    };
    let d = Delegate::start(
        &[
            ("OIDC_ISSUER_URL", provider.issuer.clone()),
            ("OIDC_CLIENT_ID", "delegate-test".into()),
            ("OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET.into()),
            ("OIDC_ALLOWED_EMAIL_DOMAINS", "corp.example".into()),
        ],
        Registration::Open,
    )
    .await;
    for (sub, email) in [
        ("outsider", "outsider@elsewhere.example"),
        ("claimer", "claimer@corp.example"),
        ("lookalike", "x@evilcorp.example"),
    ] {
        let a = authorize_at_provider(&d, sub, "/").await;
        let (status, body) = d.json(&a.callback, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{sub}: {body}");
        assert_eq!(error_code(status, &body), "forbidden", "{sub}: {body}");
        assert!(d.users_with_email(email).await.is_none(), "{sub}");
        assert!(d.store().identity("oidc", sub).await.is_err(), "{sub}");
    }
    let a = authorize_at_provider(&d, "insider", "/").await;
    let done = finish(&d, &a.callback).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let id = whoami(&d, &session_cookie(&done)).await;
    assert_eq!(
        d.users_with_email("insider@corp.example").await.as_deref(),
        Some(id.as_str())
    );
}

// ---- The identities table, on both databases --------------------------------------------------

async fn identities_round_trip(store: &dyn Store) {
    use delegate_server::store::{Identity, StoreError};
    let (user, _) = delegate_server::auth::create_user(store, "ivy@example.com", None)
        .await
        .unwrap();
    let first = Identity {
        provider: "oidc".into(),
        subject: "ivy-1".into(),
        user_id: user.id.clone(),
        email: Some("ivy@example.com".into()),
        email_verified: true,
        created_at: 10,
    };
    store.insert_identity(&first).await.unwrap();
    assert_eq!(store.identity("oidc", "ivy-1").await.unwrap(), first);
    // The same subject at another provider is another identity.
    let second = Identity {
        provider: "github".into(),
        subject: "ivy-1".into(),
        email: None,
        email_verified: false,
        created_at: 20,
        ..first.clone()
    };
    store.insert_identity(&second).await.unwrap();
    assert!(matches!(
        store.insert_identity(&first).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.identity("oidc", "nobody").await,
        Err(StoreError::NotFound("identity"))
    ));
    let dangling = Identity {
        subject: "x".into(),
        user_id: "usr_missing".into(),
        ..first.clone()
    };
    assert!(store.insert_identity(&dangling).await.is_err());
    assert_eq!(
        store.identities_of_user(&user.id).await.unwrap(),
        vec![first, second]
    );

    // Sign-ins in progress: taken once; expired ones pruned; bounded.
    use delegate_server::store::SsoLogin;
    let login = |n: u32, created_at: i64| SsoLogin {
        state_hash: format!("h{n}"),
        provider: "oidc".into(),
        browser_hash: "b".into(),
        return_to: "/x".into(),
        created_at,
        client_hash: format!("client{}", n % 2),
    };
    assert!(
        store
            .insert_sso_login(&login(1, 1_000), 0, 10, 10)
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_sso_login(&login(2, 2_000), 0, 10, 10)
            .await
            .unwrap()
    );
    assert_eq!(store.take_sso_login("h1").await.unwrap(), login(1, 1_000));
    assert!(matches!(
        store.take_sso_login("h1").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        !store
            .insert_sso_login(&login(3, 3_000), 0, 1, 10)
            .await
            .unwrap(),
        "full"
    );
    // One client is capped on its own too: h4 is client0's, like h2, which is still pending.
    assert!(
        !store
            .insert_sso_login(&login(4, 3_000), 0, 10, 1)
            .await
            .unwrap(),
        "client0 holds one already"
    );
    // Inserting at 3_000 with everything before 2_500 expired drops h2 first.
    assert!(
        store
            .insert_sso_login(&login(3, 3_000), 2_500, 1, 10)
            .await
            .unwrap()
    );
    assert!(store.take_sso_login("h2").await.is_err());
    assert_eq!(store.take_sso_login("h3").await.unwrap(), login(3, 3_000));
}

#[tokio::test]
async fn identities_on_sqlite_and_postgres() {
    let sqlite = delegate_server::store::connect("sqlite::memory:")
        .await
        .unwrap();
    identities_round_trip(sqlite.as_ref()).await;
    common::on_postgres(|store| async move { identities_round_trip(store.as_ref()).await }).await;
}

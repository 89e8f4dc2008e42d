//! What the accounts and authorization tests share: a served router with its log captured, a
//! recorder of every response body, and users with roles in one workspace.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use delegate_server::orchestrator::Orchestrator;
use delegate_server::settings::Registration;
use delegate_server::store::{Role, User, Workspace};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::common::Harness;

/// Everything the server process logged (every test of the binary), for secret scans.
pub fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "trace,hyper=info,hyper_util=info,h2=info,reqwest=info,rustls=info",
            ))
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A served router on 127.0.0.1:0; every response body it sent is kept in `bodies`.
pub struct Server {
    pub base: String,
    pub host: String,
    pub orch: Orchestrator,
    pub http: reqwest::Client,
    pub bodies: Mutex<Vec<String>>,
    _stop: oneshot::Sender<()>,
}

/// A response as the tests look at it.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `delegate_session` value a `Set-Cookie` carries, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("delegate_session="))
            .map(|c| c.split(';').next().unwrap_or("").to_string())
            .filter(|c| !c.is_empty())
    }

    /// The error envelope's code (asserting the envelope's shape).
    pub fn error_code(&self) -> String {
        let code = self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error envelope ({}): {}", self.status, self.body));
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        code.to_string()
    }
}

impl Server {
    pub async fn start(
        h: &Harness,
        registration: Registration,
        public_url: Option<&str>,
    ) -> Server {
        logs();
        let mut settings = h.settings();
        settings.registration = registration;
        settings.public_url = public_url.map(str::to_string);
        let orch = delegate_server::app::embedded(settings)
            .await
            .expect("embedded orchestrator");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(delegate_server::serve::serve(
            orch.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            base: format!("http://{host}"),
            host,
            orch,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            bodies: Mutex::new(Vec::new()),
            _stop: stop,
        }
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// With a bearer token.
    pub fn bearer(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.req(method, path).bearer_auth(token)
    }

    /// With a session cookie and this server's own Origin.
    pub fn cookie(&self, method: Method, path: &str, session: &str) -> reqwest::RequestBuilder {
        self.req(method, path)
            .header("cookie", format!("delegate_session={session}"))
            .header("origin", self.base.clone())
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Every response body so far, joined.
    pub fn all_bodies(&self) -> String {
        self.bodies.lock().unwrap().join("\n")
    }
}

/// A user with an API token, and their personal workspace.
#[derive(Clone)]
pub struct Account {
    pub user: User,
    pub token: String,
    pub token_id: String,
    pub personal: Workspace,
}

pub async fn account(orch: &Orchestrator, name: &str) -> Account {
    let store = orch.store().as_ref();
    let email = format!("{name}-{}@example.com", delegate_server::ids::new_id("u"));
    let (user, personal) = delegate_server::auth::create_user(store, &email, Some(name))
        .await
        .unwrap();
    let (token, record) = delegate_server::auth::create_api_token(store, &user.id, None, None)
        .await
        .unwrap();
    Account {
        user,
        token,
        token_id: record.id,
        personal,
    }
}

/// A new account that is also `role` in `ws`.
pub async fn member(orch: &Orchestrator, ws: &Workspace, name: &str, role: Role) -> Account {
    let a = account(orch, name).await;
    orch.store()
        .set_member(&ws.id, &a.user.id, role)
        .await
        .unwrap();
    a
}

/// Asserts that none of `hidden` occurs in any response body or in the log, and that each of
/// `shown_once` (a token or invite code, returned at its creation) occurs in exactly one body and
/// never in the log.
pub fn assert_never_shown(server: &Server, hidden: &[String], shown_once: &[String]) {
    let bodies = server.bodies.lock().unwrap().clone();
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(!logs.is_empty(), "the log capture works");
    for s in hidden.iter().chain(shown_once) {
        assert!(s.len() >= 16, "a real secret: {s:?}");
        assert!(!logs.contains(s.as_str()), "the log carried {s:?}");
    }
    for s in hidden {
        assert!(
            !bodies.iter().any(|b| b.contains(s.as_str())),
            "a response body carried {s:?}"
        );
    }
    for s in shown_once {
        let n = bodies.iter().filter(|b| b.contains(s.as_str())).count();
        assert_eq!(n, 1, "{s:?} shown in {n} bodies, not once");
    }
}

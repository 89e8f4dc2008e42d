//! `delegate serve` in this process: the real router on a loopback port, for every test (and the
//! tunnel benchmark) that talks to it over HTTP. [`Harness::serve`] or [`Serve::standalone`],
//! adjusted builder-style, then [`Serve::start`]; the server stops when the [`Server`] is dropped.
//! (Tests that run `delegate serve` as a child process use [`super::served`] instead.)

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use delegate_server::orchestrator::Orchestrator;
use delegate_server::settings::{Registration, Settings};
use delegate_server::store::{Role, Store, User, Workspace};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{EnvList, Harness};

type Tweak = Box<dyn FnOnce(&mut Settings) + Send>;

/// How to serve: an environment for `Settings::load`, then adjustments to the loaded settings.
#[must_use = "nothing is served until .start()"]
pub struct Serve {
    env: Vec<(String, String)>,
    /// SSO variables; set, they come with `OIDC_REDIRECT_BASE_URL` pointing at this server.
    sso: Vec<(String, String)>,
    registration: Option<Registration>,
    public_url: Option<String>,
    localhost_domain: bool,
    capture_logs: bool,
    tweaks: Vec<Tweak>,
    dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// The harness's settings (fake upstream, real opencode and bubblewrap), served in-process.
    pub fn serve(&self) -> Serve {
        Serve::from_env(self.env()).settings(|s| {
            s.relay_bin = Some(env!("CARGO_BIN_EXE_delegate").into());
        })
    }
}

impl Serve {
    fn from_env(env: Vec<(String, String)>) -> Serve {
        Serve {
            env,
            sso: Vec::new(),
            registration: None,
            public_url: None,
            localhost_domain: false,
            capture_logs: false,
            tweaks: Vec::new(),
            dir: None,
        }
    }

    /// Without a [`Harness`]: a temp data dir, the process backend, and no upstream; nothing here
    /// starts opencode (it only has to be an executable), so neither it nor bubblewrap is needed.
    pub fn standalone() -> Serve {
        let dir = tempfile::Builder::new()
            .prefix("dlg-srv")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data").display().to_string();
        let mut serve = Serve::from_env(Vec::new())
            .env("DELEGATE_DATA_DIR", data)
            .env("DELEGATE_BACKEND", "process")
            .env("DELEGATE_OPENCODE_BIN", "/bin/true")
            .env("DELEGATE_ISOLATION", "none");
        serve.dir = Some(dir);
        serve
    }

    /// Sets (or replaces) one variable of the environment the settings are loaded from.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Serve {
        let value = value.into();
        match self.env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.env.push((name.to_string(), value)),
        }
        self
    }

    /// Single sign-on variables (`OIDC_*`, `GITHUB_*`); sign-ins come back to this server.
    pub fn sso(mut self, vars: &[(&str, String)]) -> Serve {
        self.sso
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    pub fn registration(mut self, registration: Registration) -> Serve {
        self.registration = Some(registration);
        self
    }

    pub fn public_url(mut self, url: &str) -> Serve {
        self.public_url = Some(url.to_string());
        self
    }

    /// `DELEGATE_PUBLIC_URL` `http://localhost:{port}` and `BASE_DOMAIN` `localhost:{port}`:
    /// browsers resolve `*.localhost` to loopback, so sandbox gateway hosts work.
    pub fn localhost_domain(mut self) -> Serve {
        self.localhost_domain = true;
        self
    }

    /// Installs the log capture (see [`logs`]) before the server logs anything.
    pub fn capture_logs(mut self) -> Serve {
        self.capture_logs = true;
        self
    }

    /// Adjusts the loaded settings, after everything above.
    pub fn settings(mut self, tweak: impl FnOnce(&mut Settings) + Send + 'static) -> Serve {
        self.tweaks.push(Box::new(tweak));
        self
    }

    pub async fn start(self) -> Server {
        delegate_server::net::install_crypto();
        if self.capture_logs {
            logs();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let host = addr.to_string();
        let base = format!("http://{host}");
        let mut env = self.env;
        if !self.sso.is_empty() {
            env.push(("OIDC_REDIRECT_BASE_URL".into(), base.clone()));
            env.extend(self.sso);
        }
        let pairs = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut settings = Settings::load(None, &EnvList(pairs)).expect("settings");
        let mut origin = base.clone();
        if self.localhost_domain {
            origin = format!("http://localhost:{}", addr.port());
            settings.public_url = Some(origin.clone());
            settings.base_domain = Some(format!("localhost:{}", addr.port()));
        }
        if let Some(registration) = self.registration {
            settings.registration = registration;
        }
        if let Some(url) = self.public_url {
            settings.public_url = Some(url);
        }
        for tweak in self.tweaks {
            tweak(&mut settings);
        }
        let orch = delegate_server::app::embedded(settings)
            .await
            .expect("embedded orchestrator");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(delegate_server::serve::serve(
            orch.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            base,
            host,
            port: addr.port(),
            origin,
            orch,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            bodies: Mutex::new(Vec::new()),
            _stop: stop,
            _dir: self.dir,
        }
    }
}

/// A served router; stops (gracefully) when dropped.
pub struct Server {
    /// `http://127.0.0.1:{port}`: where it listens.
    pub base: String,
    /// `127.0.0.1:{port}`.
    pub host: String,
    pub port: u16,
    /// How browsers address it: its public URL with [`Serve::localhost_domain`], else `base`.
    pub origin: String,
    pub orch: Orchestrator,
    /// Follows no redirects, so tests see them.
    pub http: reqwest::Client,
    /// Every response body [`Server::send`] got, for secret scans.
    pub bodies: Mutex<Vec<String>>,
    _stop: oneshot::Sender<()>,
    _dir: Option<tempfile::TempDir>,
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
        super::error_code(self.status, &self.body)
    }
}

impl Server {
    pub fn store(&self) -> &dyn Store {
        self.orch.store().as_ref()
    }

    /// A URL on the main host, as a browser writes it.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// The gateway host of a sandbox (with [`Serve::localhost_domain`]).
    pub fn sandbox_host(&self, sandbox_id: &str) -> String {
        format!("oc-{sandbox_id}.localhost:{}", self.port)
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

    /// Sends, keeping the body in `bodies`; JSON parsed, anything else as a string.
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

    /// A new user with a personal workspace and an API token.
    pub async fn account(&self, name: &str) -> Account {
        let email = format!("{name}-{}@example.com", delegate_server::ids::new_id("u"));
        self.new_account(name, email, None).await
    }

    /// A new account that is also `role` in `ws`.
    pub async fn member(&self, ws: &Workspace, name: &str, role: Role) -> Account {
        let a = self.account(name).await;
        self.add_member(ws, &a, role).await;
        a
    }

    /// A user who can sign in with a password (a short email, to type into forms), with an API
    /// token named `{name}-cli`.
    pub async fn person(&self, name: &str) -> Account {
        let email = format!(
            "{name}-{}@example.com",
            &delegate_server::ids::new_id("u")[2..14]
        );
        let password = format!("{name} correct horse battery");
        let hash = delegate_server::auth::passwords::hash(&password)
            .await
            .unwrap();
        let token_name = Some(format!("{name}-cli"));
        let mut a = self.new_account(name, email, token_name).await;
        self.store()
            .set_password_hash(&a.user.id, &hash)
            .await
            .unwrap();
        a.password = Some(password);
        a
    }

    pub async fn add_member(&self, ws: &Workspace, who: &Account, role: Role) {
        self.store()
            .set_member(&ws.id, &who.user.id, role)
            .await
            .unwrap();
    }

    async fn new_account(&self, name: &str, email: String, token_name: Option<String>) -> Account {
        let store = self.store();
        let (user, personal) = delegate_server::auth::create_user(store, &email, Some(name))
            .await
            .unwrap();
        let (token, record) =
            delegate_server::auth::create_api_token(store, &user.id, token_name, None)
                .await
                .unwrap();
        Account {
            user,
            personal,
            email,
            token,
            token_id: record.id,
            password: None,
        }
    }
}

/// A user with an API token, and their personal workspace.
#[derive(Clone)]
pub struct Account {
    pub user: User,
    pub personal: Workspace,
    /// As created (the stored one is lowercased).
    pub email: String,
    pub token: String,
    pub token_id: String,
    /// Set by [`Server::person`].
    pub password: Option<String>,
}

impl Account {
    pub fn password(&self) -> &str {
        self.password
            .as_deref()
            .expect("an account made with Server::person")
    }
}

/// Everything the server logged in this test binary (one subscriber per process), for secret
/// scans: every level of delegate's own targets, info and up of the HTTP and TLS stacks.
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

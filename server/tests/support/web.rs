//! A served `delegate serve` router for the browser and gateway tests, with `BASE_DOMAIN` set to
//! `localhost:{port}` (browsers resolve `*.localhost` to loopback), and accounts with passwords.

#![allow(dead_code)] // each test binary uses a different part

use delegate_server::orchestrator::Orchestrator;
use delegate_server::store::{Role, User, Workspace};
use tokio::sync::oneshot;

use crate::common::Harness;

pub struct WebServer {
    pub port: u16,
    /// `http://localhost:{port}`: the origin the browser uses.
    pub origin: String,
    pub orch: Orchestrator,
    _stop: oneshot::Sender<()>,
}

impl WebServer {
    pub async fn start(h: &Harness) -> WebServer {
        Self::start_with(h, |_| {}).await
    }

    /// [`Self::start`], with the settings adjusted by `tweak` first.
    pub async fn start_with(
        h: &Harness,
        tweak: impl FnOnce(&mut delegate_server::settings::Settings),
    ) -> WebServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let origin = format!("http://localhost:{port}");
        let mut settings = h.settings();
        settings.public_url = Some(origin.clone());
        settings.base_domain = Some(format!("localhost:{port}"));
        tweak(&mut settings);
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
        WebServer {
            port,
            origin,
            orch,
            _stop: stop,
        }
    }

    /// A URL on the main host.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// The gateway host of a sandbox.
    pub fn sandbox_host(&self, sandbox_id: &str) -> String {
        format!("oc-{sandbox_id}.localhost:{}", self.port)
    }
}

/// A user who can sign in with a password, with an API token.
pub struct Person {
    pub user: User,
    pub personal: Workspace,
    pub email: String,
    pub password: String,
    pub token: String,
}

pub async fn person(orch: &Orchestrator, name: &str) -> Person {
    let store = orch.store().as_ref();
    let email = format!(
        "{name}-{}@example.com",
        &delegate_server::ids::new_id("u")[2..14]
    );
    let (user, personal) = delegate_server::auth::create_user(store, &email, Some(name))
        .await
        .unwrap();
    let password = format!("{name} correct horse battery");
    let hash = delegate_server::auth::passwords::hash(&password)
        .await
        .unwrap();
    store.set_password_hash(&user.id, &hash).await.unwrap();
    let (token, _) =
        delegate_server::auth::create_api_token(store, &user.id, Some(format!("{name}-cli")), None)
            .await
            .unwrap();
    Person {
        user,
        personal,
        email,
        password,
        token,
    }
}

pub async fn add_member(orch: &Orchestrator, ws: &Workspace, who: &Person, role: Role) {
    orch.store()
        .set_member(&ws.id, &who.user.id, role)
        .await
        .unwrap();
}

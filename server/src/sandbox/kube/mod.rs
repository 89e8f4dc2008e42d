//! The kubernetes backend: sandboxes as Pods of delegate's sandbox image in one namespace
//! (`DELEGATE_K8S_NAMESPACE`), or one per workspace (`DELEGATE_K8S_NAMESPACE_PER_WORKSPACE`),
//! made through the API server with kube-rs.
//!
//! - A namespace per workspace (`NAMESPACE-<workspace id>`, `namespaces.rs`) is made on first
//!   use, labelled `delegate.workspace`, with a copy of the sandbox NetworkPolicy; a sandbox's
//!   handles on its namespace are kept with it ([`Place`]), and a server that never held it
//!   finds its namespace from its Secret, listed across namespaces by label.
//!
//! - Every pod is hardened the same way (`manifest.rs`): non-root, read-only root filesystem,
//!   all capabilities dropped, no privilege escalation, `seccompProfile: RuntimeDefault`, no
//!   service-account token, `runtimeClassName` from `DELEGATE_K8S_RUNTIME_CLASS`, requests and
//!   limits from the settings, and the docker backend's labels.
//! - A sandbox's credentials (its proxy token inside opencode's config, the serve password, the
//!   caller's env and secrets) live in a Secret the pods read with `envFrom`, never in a pod
//!   spec; after a restart the Secret is what the sandbox is rebuilt from.
//! - The work dir is a PersistentVolumeClaim (`DELEGATE_K8S_STORAGE_CLASS`), seeded once by a
//!   short-lived pod from Secrets holding the seed archive in chunks. opencode's home is a
//!   second claim for a warm sandbox, an `emptyDir` for an ephemeral run.
//! - Ephemeral: one Pod per run in the image's headless mode, the task read from a Secret
//!   mounted as a file; opencode's events come from the log stream (`follow=true`), the exit
//!   code and `OOMKilled` from the container status.
//! - Warm: a Pod running `opencode serve` on its pod IP; pause deletes the Pod and keeps the
//!   claims, resume makes it again.
//! - Setup: a Pod of its own with the sandbox's image, env and claims (and a home claim for an
//!   ephemeral sandbox, which its run then mounts), streamed like a run.
//! - Any server sharing the database and the cluster serves any sandbox: the commit its next
//!   change must sit on is on its Secret (`change.rs`), and the server that takes it over
//!   relabels its objects as its own.
//! - Changes: a short-lived pod of the same image on the work claim runs delegate_repo's commit
//!   script and prints the bundle in base64 between markers; the log stream brings it back,
//!   read as hostile input (`change.rs`).
//! - State is in the cluster (names and labels): a restarted server adopts warm sandboxes and
//!   sweeps the rest by label ([`held`](super::SandboxBackend::held)).
//!
//! Files: this one holds the backend's state and the client; `manifest.rs` the objects it
//! makes, `pods.rs` making, watching and reading pods, `change.rs` seeding and committing,
//! `backend.rs` the [`SandboxBackend`](super::SandboxBackend) impl.

mod backend;
mod change;
pub mod manifest;
mod namespaces;
mod pods;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret as KubeSecret};
use kube::Api;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::SandboxError;
use super::workdir::SandboxDirs;
use crate::settings::{KubeSettings, Secret, Settings};
use crate::store::SandboxKind;

pub use manifest::Manifests;

/// `DELEGATE_K8S_PROXY_URL`'s value that serves the proxy on a loopback port of this host (and
/// `DELEGATE_K8S_EGRESS_URL`'s that sends pods to the egress listener's own address).
pub const LOOPBACK_PROXY: &str = "loopback";

/// Sandboxes as Kubernetes pods: see the module docs.
pub struct KubeBackend {
    client: kube::Client,
    /// `DELEGATE_K8S_NAMESPACE`: every sandbox's, or the prefix of the workspace namespaces.
    home: Place,
    /// Workspace namespaces this process made or saw made: not asked for again.
    namespaces_made: Mutex<std::collections::HashSet<String>>,
    manifests: Manifests,
    settings: KubeSettings,
    default_image: String,
    model: String,
    small_model: String,
    root: PathBuf,
    proxy: Router,
    listen_port: u16,
    loopback_proxy: OnceCell<SocketAddr>,
    /// The server's egress listener (`DELEGATE_EGRESS_LISTEN`), once bound; without it, egress
    /// policies are refused.
    egress_listener: Option<SocketAddr>,
    sandboxes: Mutex<HashMap<String, Arc<Live>>>,
    shutdown: CancellationToken,
}

/// A namespace and the backend's handles on it.
#[derive(Clone)]
struct Place {
    namespace: String,
    ops: pods::PodOps,
    claims: Api<PersistentVolumeClaim>,
    secrets: Api<KubeSecret>,
}

impl Place {
    fn new(client: &kube::Client, namespace: &str) -> Place {
        Place {
            namespace: namespace.to_string(),
            ops: pods::PodOps {
                pods: Api::namespaced(client.clone(), namespace),
            },
            claims: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
        }
    }
}

/// What this process keeps for a sandbox: the rest is in the cluster and the data dir.
struct Live {
    /// Its namespace.
    at: Place,
    dirs: SandboxDirs,
    kind: SandboxKind,
    password: Option<Secret>,
    /// The image its pods are made from.
    image: String,
    /// Whether it has a home claim (a warm sandbox always; an ephemeral one once its setup
    /// ran, so the run sees what setup wrote to `$HOME`).
    home_kept: std::sync::atomic::AtomicBool,
}

/// The Kubernetes name of a sandbox's object: `delegate-sbx-...` plus `what` (names may not
/// hold `_`).
pub fn object_name(id: &str, what: &str) -> String {
    let base = format!("delegate-{}", id.replace('_', "-").to_ascii_lowercase());
    if what.is_empty() {
        base
    } else {
        format!("{base}-{what}")
    }
}

/// The API server's own message, without kube's wrapping.
fn api_error(e: kube::Error) -> SandboxError {
    match e {
        kube::Error::Api(status) => SandboxError::Io(format!(
            "kubernetes: {} ({})",
            status.message, status.reason
        )),
        other => SandboxError::Io(format!("kubernetes: {other}")),
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// A client from `DELEGATE_K8S_KUBECONFIG`, else the usual places (`KUBECONFIG`,
/// `~/.kube/config`, in-cluster), and the namespace to use.
pub async fn connect(settings: &KubeSettings) -> Result<(kube::Client, String), SandboxError> {
    let unusable = |why: String| {
        SandboxError::Missing(format!(
            "no Kubernetes API server to use ({why}): run the server in a cluster, or set \
             KUBECONFIG or DELEGATE_K8S_KUBECONFIG"
        ))
    };
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| unusable(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| unusable(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| unusable(e.to_string()))?,
    };
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| unusable(e.to_string()))?;
    Ok((client, namespace))
}

impl KubeBackend {
    /// Connects to the API server; `owner` labels this server's objects so orphan sweeps leave
    /// other servers' alone.
    pub async fn new(
        settings: &Settings,
        proxy: Router,
        owner: String,
    ) -> Result<Self, SandboxError> {
        let (client, namespace) = connect(&settings.kube).await?;
        // Fail at start, not at the first sandbox, when the namespace cannot be used.
        let (pods, whose): (Api<Pod>, String) = if settings.kube.namespace_per_workspace {
            namespaces::check_prefix(&namespace)?;
            if settings.kube.network_policy.is_none() {
                tracing::warn!(
                    "DELEGATE_K8S_NAMESPACE_PER_WORKSPACE without DELEGATE_K8S_NETWORK_POLICY: \
                     workspace namespaces get no NetworkPolicy"
                );
            }
            (Api::all(client.clone()), "across namespaces".into())
        } else {
            (
                Api::namespaced(client.clone(), &namespace),
                format!("in namespace {namespace}"),
            )
        };
        pods.list(&kube::api::ListParams::default().limit(1))
            .await
            .map_err(|e| {
                SandboxError::Missing(format!(
                    "the Kubernetes API server refuses to list pods {whose}: {}",
                    api_error(e)
                ))
            })?;
        Ok(KubeBackend {
            home: Place::new(&client, &namespace),
            client,
            namespaces_made: Mutex::new(Default::default()),
            manifests: Manifests::new(settings, owner),
            settings: settings.kube.clone(),
            default_image: settings.docker.image.clone(),
            model: settings.model.clone(),
            small_model: settings.small_model.clone(),
            root: settings.data_dir.join("kubernetes"),
            proxy,
            listen_port: settings.listen.port(),
            loopback_proxy: OnceCell::new(),
            egress_listener: None,
            sandboxes: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    /// Whether pods reach the proxy at `/v1` on the server's listener (through its Service),
    /// rather than on a loopback port of the backend's own.
    pub fn serves_proxy_on_listener(settings: &KubeSettings) -> bool {
        settings.proxy_url.as_deref() != Some(LOOPBACK_PROXY)
    }

    /// Sends the pods of egress-allowed sandboxes to the server's egress listener at `addr`.
    pub fn set_egress_listener(&mut self, addr: SocketAddr) {
        self.egress_listener = Some(addr);
    }

    /// The egress listener as pods see it (`http://HOST:PORT`), for a sandbox with a policy.
    fn egress_url(&self) -> Result<String, SandboxError> {
        let addr = self.egress_listener.ok_or_else(|| {
            SandboxError::BadInput(
                "network: egress policies on the kubernetes backend need the egress proxy's TCP \
                 listener (DELEGATE_EGRESS_LISTEN)"
                    .into(),
            )
        })?;
        Ok(match self.settings.egress_url.as_deref() {
            Some(LOOPBACK_PROXY) => format!("http://{addr}"),
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "http://{}.{}.svc:{}",
                self.settings.service,
                self.home.namespace,
                addr.port()
            ),
        })
    }

    fn live(&self, id: &str) -> Result<Arc<Live>, SandboxError> {
        self.sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::Unknown(id.to_string()))
    }

    fn remember(&self, id: &str, live: Arc<Live>) -> Result<(), SandboxError> {
        self.sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .insert(id.to_string(), live);
        Ok(())
    }

    /// The proxy's base URL as opencode in a pod sees it.
    async fn proxy_url(&self) -> Result<String, SandboxError> {
        match self.settings.proxy_url.as_deref() {
            Some(LOOPBACK_PROXY) => {
                let addr = self
                    .loopback_proxy
                    .get_or_try_init(|| {
                        crate::net::serve_loopback(self.proxy.clone(), self.shutdown.clone())
                    })
                    .await
                    .map_err(|e| SandboxError::Io(format!("bind proxy: {e}")))?;
                Ok(format!("http://{addr}/v1"))
            }
            Some(url) => Ok(url.to_string()),
            None => Ok(format!(
                "http://{}.{}.svc:{}/v1",
                self.settings.service, self.home.namespace, self.listen_port
            )),
        }
    }
}

impl Drop for KubeBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

//! The docker backend: one container per sandbox from delegate's sandbox image (`sandbox-image/`),
//! labelled, non-root, no capabilities, `no-new-privileges`, a read-only root with tmpfs for
//! /tmp, a volume for the work dir, and memory, CPU and pids limits.
//!
//! - Ephemeral: the container is made for its one run in the image's headless mode (`TASK=-`,
//!   the task on stdin); its stdout and stderr come back apart over an attach opened before start.
//! - Setup: a container of its own (`delegate-ID-setup`) on the sandbox's volumes, with its
//!   env, secrets and egress relay, runs the script under `sh -c` and is removed when it ends;
//!   for a warm sandbox beside its running serve container, for an ephemeral one before its run.
//! - Warm: the container runs `opencode serve` with a per-sandbox password and a second volume
//!   for `$HOME` (opencode's sessions). Pause stops it, resume starts it; files are kept.
//! - Changes: the host keeps a mirror of the work dir tracked by delegate's own git dir. The
//!   seed goes in through Docker's archive API and, after each run, `/workspace` comes back the
//!   same way (see `archive.rs`), so nothing runs git on the sandbox's side and the engine need
//!   not share a filesystem with the server for the work dir.
//! - State lives in Docker (names and labels) and the data dir, not in this process: after a
//!   restart warm containers are adopted and the rest swept
//!   ([`held`](super::SandboxBackend::held)).
//!
//! How containers reach the proxy is [`DockerNetwork`]: no network at all (a unix socket bound
//! in and relayed inside), the host's network, or a named network.
//!
//! Files: this one holds the backend's state and the engine connection; `spec.rs` the hardened
//! container body and volumes, `container.rs` driving containers (make, attach, stop, remove),
//! `serve.rs` the warm `opencode serve`, `backend.rs` the
//! [`SandboxBackend`](super::SandboxBackend) impl and picking sandboxes up after a restart,
//! `archive.rs` moving the work dir in and out.

pub mod archive;
mod backend;
mod change;
mod container;
mod serve;
mod spec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::SandboxError;
use super::workdir::SandboxDirs;
use crate::settings::{DockerNetwork, DockerSettings, Secret, Settings};
use crate::store::SandboxKind;

/// Labels every container and volume of delegate carries.
const LABEL_SANDBOX: &str = "delegate.sandbox";
const LABEL_KIND: &str = "delegate.kind";
/// The server instance that made it (see `bootstrap::instance_id`): a server sweeps only its
/// own, so installations (or servers of one installation) sharing an engine leave each other be.
const LABEL_OWNER: &str = "delegate.owner";
/// The sandbox user of the image.
const SANDBOX_UID: u64 = 1000;
const IN_HOME: &str = "/home/sandbox";
const IN_WORKSPACE: &str = "/workspace";
const IN_RUN: &str = "/run/delegate";
/// `opencode serve`'s port inside a container with a network namespace of its own.
const SERVE_PORT: u16 = 4096;
/// How long `opencode serve` may take to say it listens.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the engine may take to answer at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sandboxes as Docker containers: one labelled container and work volume per sandbox, hardened
/// (non-root, no capabilities, read-only root), reaching the proxy as the network settings say.
pub struct DockerBackend {
    docker: Docker,
    owner: String,
    settings: DockerSettings,
    root: PathBuf,
    /// `root` is shared with the other servers (`DELEGATE_DOCKER_DIR`): any of them may pick up
    /// a sandbox another holds.
    shared_dir: bool,
    proxy: Router,
    /// The proxy on loopback, for containers on the host's network.
    loopback_proxy: OnceCell<SocketAddr>,
    model: String,
    small_model: String,
    memory_bytes: i64,
    pids_max: i64,
    sandboxes: Mutex<HashMap<String, Arc<Live>>>,
    shutdown: CancellationToken,
}

/// What this process keeps for a sandbox: the rest is in Docker and the data dir.
struct Live {
    dirs: SandboxDirs,
    kind: SandboxKind,
    token: Secret,
    password: Option<Secret>,
    /// Ends the sandbox's proxy socket and serve relay.
    stop: CancellationToken,
    /// Whether the sandbox has an `egress.sock` (its policy allows something). Not known after
    /// a restart: an adopted sandbox's proxy variables then lead nowhere, which denies.
    egress: bool,
    /// The caller's env and secrets (empty after a restart: the container keeps its own).
    env: Vec<(String, Secret)>,
    /// The image its containers are made from.
    image: String,
    /// The switch of the current serve relay (none while paused).
    serve_relay: Mutex<Option<CancellationToken>>,
    /// The work volume holds the seed: later containers must not overwrite what earlier ones
    /// (setup) changed there.
    seeded: AtomicBool,
    /// `$HOME` is the home volume rather than a tmpfs: always for a warm sandbox, and for an
    /// ephemeral one once setup ran, so its run finds what setup put there.
    home_kept: AtomicBool,
    /// Made by this process rather than recovered from its container: what it never made (a
    /// setup container, a home volume) is known, so destroying it skips those engine calls.
    made_here: bool,
}

impl Live {
    fn stop_serve_relay(&self) {
        if let Some(relay) = self.serve_relay.lock().ok().and_then(|mut r| r.take()) {
            relay.cancel();
        }
    }
}

fn container_name(id: &str) -> String {
    format!("delegate-{id}")
}

fn volume_name(id: &str, what: &str) -> String {
    format!("delegate-{id}-{what}")
}

fn not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Docker's own message, without bollard's wrapping.
fn engine_error(e: DockerError) -> SandboxError {
    match e {
        DockerError::DockerResponseServerError { message, .. } => {
            SandboxError::Io(format!("docker: {message}"))
        }
        other => SandboxError::Io(format!("docker: {other}")),
    }
}

/// Connects to the engine named by `DOCKER_HOST` (or the default socket), negotiating the API
/// version down to what it speaks.
pub async fn connect(settings: &DockerSettings) -> Result<Docker, SandboxError> {
    let where_ = settings
        .host
        .clone()
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let unreachable = |why: String| {
        SandboxError::Missing(format!(
            "no Docker Engine answers at {where_} ({why}). Start Docker, or set DOCKER_HOST, or \
             use DELEGATE_BACKEND=process"
        ))
    };
    let docker = match &settings.host {
        Some(host) => Docker::connect_with_host(host),
        None => Docker::connect_with_local_defaults(),
    }
    .map_err(|e| unreachable(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer in {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Why the sandbox image is unusable, if it is: how `auto` decides and what `image_missing`
/// says.
pub async fn check_image(docker: &Docker, image: &str) -> Result<(), SandboxError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Err(SandboxError::ImageMissing(format!(
            "the sandbox image {image} is not in the Docker Engine: build it with \
             sandbox-image/build (or --offline without a registry), or set \
             DELEGATE_SANDBOX_IMAGE to one that is"
        ))),
        Err(e) => Err(engine_error(e)),
    }
}

impl DockerBackend {
    /// Connects to the engine and checks it; `owner` labels this server's containers so orphan
    /// sweeps leave other servers' alone.
    pub async fn new(
        settings: &Settings,
        proxy: Router,
        owner: String,
    ) -> Result<Self, SandboxError> {
        let docker = connect(&settings.docker).await?;
        let memory_bytes = settings.sandbox_memory_mb.saturating_mul(1 << 20);
        Ok(DockerBackend {
            docker,
            owner,
            settings: settings.docker.clone(),
            shared_dir: settings.docker.dir.is_some(),
            root: settings
                .docker
                .dir
                .clone()
                .unwrap_or_else(|| settings.data_dir.join("docker")),
            proxy,
            loopback_proxy: OnceCell::new(),
            model: settings.model.clone(),
            small_model: settings.small_model.clone(),
            memory_bytes: i64::try_from(memory_bytes).unwrap_or(i64::MAX),
            pids_max: i64::try_from(settings.sandbox_pids_max).unwrap_or(i64::MAX),
            sandboxes: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
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
        let replaced = self
            .sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .insert(id.to_string(), live);
        // Picked up again (another server held it meanwhile): the old listeners and relay go.
        if let Some(old) = replaced {
            old.stop.cancel();
        }
        Ok(())
    }

    /// The proxy's base URL as opencode in the container sees it.
    async fn proxy_url(&self) -> Result<String, SandboxError> {
        match &self.settings.network {
            DockerNetwork::None => Ok("http://127.0.0.1:4000/v1".into()),
            DockerNetwork::Host => {
                let addr = self
                    .loopback_proxy
                    .get_or_try_init(|| {
                        crate::net::serve_loopback(self.proxy.clone(), self.shutdown.clone())
                    })
                    .await
                    .map_err(|e| SandboxError::Io(format!("bind proxy: {e}")))?;
                Ok(format!("http://{addr}/v1"))
            }
            DockerNetwork::Named(_) => Ok(self.settings.proxy_url.clone().unwrap_or_default()),
        }
    }

    /// With no network, the proxy is a unix socket in the sandbox's run dir (bound in).
    fn serve_proxy_socket(&self, live: &Live) -> Result<(), SandboxError> {
        if self.settings.network != DockerNetwork::None {
            return Ok(());
        }
        let socket = live.dirs.run.join("proxy.sock");
        crate::net::serve_unix(self.proxy.clone(), &socket, 0o666, live.stop.clone())
            .map_err(|e| SandboxError::Io(format!("bind {}: {e}", socket.display())))
    }
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

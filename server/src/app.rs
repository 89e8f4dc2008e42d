//! Wiring: settings in, a working orchestrator out (store, proxy, backend). `delegate run`,
//! `delegate mcp` and the tests all start here.

use std::sync::Arc;

use crate::orchestrator::{Error, Orchestrator};
use crate::proxy::{ActiveRuns, Proxy};
use crate::sandbox::SandboxBackend;
use crate::sandbox::docker::DockerBackend;
use crate::sandbox::kube::KubeBackend;
use crate::sandbox::process::ProcessBackend;
use crate::settings::{BackendChoice, Settings};
use crate::store::{self, Store, StoreError};

/// Why the server could not be wired up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be created.
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        /// The directory from the settings.
        path: std::path::PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The sandbox backend could not be set up (no engine, missing image or program).
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The egress proxy's TCP listener could not be bound.
    #[error("cannot listen for egress on {addr} (DELEGATE_EGRESS_LISTEN): {source}")]
    EgressListen {
        /// The address from the settings.
        addr: std::net::SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The orchestrator failed to start (e.g. reconciling what it found in the store).
    #[error(transparent)]
    Orchestrator(#[from] Error),
}

/// Opens the store named by the settings, creating the data dir first (mode 0700: it holds the
/// database, sandboxes' files and their secrets).
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StartError> {
    let mut dir = tokio::fs::DirBuilder::new();
    dir.recursive(true).mode(0o700);
    dir.create(&settings.data_dir)
        .await
        .map_err(|source| StartError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
    Ok(store::connect(settings.database_url.expose()).await?)
}

/// Whether `auto` picks docker: an engine answers and has the sandbox image (with no image, a
/// machine that merely has Docker installed still gets working runs from the process backend).
async fn docker_usable(settings: &Settings) -> Result<(), crate::sandbox::SandboxError> {
    let docker = crate::sandbox::docker::connect(&settings.docker).await?;
    crate::sandbox::docker::check_image(&docker, &settings.docker.image).await
}

async fn docker_backend(settings: &Settings, proxy: &Proxy) -> Result<DockerBackend, StartError> {
    let owner = crate::bootstrap::instance_id(&settings.data_dir)
        .await
        .map_err(|e| crate::sandbox::SandboxError::Io(e.to_string()))?;
    Ok(DockerBackend::new(settings, proxy.router(), owner).await?)
}

async fn kube_backend(
    settings: &Settings,
    proxy: &Proxy,
    egress: Option<std::net::SocketAddr>,
) -> Result<KubeBackend, StartError> {
    let owner = crate::bootstrap::instance_id(&settings.data_dir)
        .await
        .map_err(|e| crate::sandbox::SandboxError::Io(e.to_string()))?;
    let mut backend = KubeBackend::new(settings, proxy.router(), owner).await?;
    if let Some(addr) = egress {
        backend.set_egress_listener(addr);
    }
    Ok(backend)
}

/// An orchestrator embedded in this process: its own store, proxy and backend.
pub async fn embedded(settings: Settings) -> Result<Orchestrator, StartError> {
    crate::net::install_crypto();
    let store = open_store(&settings).await?;
    let active_runs = ActiveRuns::default();
    let proxy = Proxy::new(
        store.clone(),
        settings.upstream.clone(),
        active_runs.clone(),
    );
    // Bound first: pods are told its address (port 0 picks one).
    let egress_listener = match settings.egress.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::EgressListen { addr, source })?,
        ),
        None => None,
    };
    let egress_addr = egress_listener.as_ref().and_then(|l| l.local_addr().ok());
    let backend: Arc<dyn SandboxBackend> = match settings.backend {
        BackendChoice::Process => Arc::new(ProcessBackend::new(&settings, proxy.router())?),
        BackendChoice::Docker => Arc::new(docker_backend(&settings, &proxy).await?),
        BackendChoice::Auto => match docker_usable(&settings).await {
            Ok(()) => Arc::new(docker_backend(&settings, &proxy).await?),
            Err(why) => {
                tracing::info!("using the process backend: {why}");
                Arc::new(ProcessBackend::new(&settings, proxy.router())?)
            }
        },
        BackendChoice::Kubernetes => Arc::new(kube_backend(&settings, &proxy, egress_addr).await?),
    };
    let orch = Orchestrator::new(Arc::new(settings), store, backend, proxy, active_runs).await?;
    if let Some(listener) = egress_listener {
        tracing::info!(addr = ?egress_addr, "the egress proxy listens");
        orch.serve_egress(listener);
    }
    Ok(orch)
}

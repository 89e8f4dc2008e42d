//! [`SandboxBackend`] for docker, and picking sandboxes up again after a restart (their
//! containers and volumes carry labels; the rest is rebuilt from the container).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sandbox::Changes;
use async_trait::async_trait;
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptions,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::container::exit_info;
use super::spec::{Role, setup_container_name};
use super::{
    DockerBackend, LABEL_KIND, LABEL_OWNER, LABEL_SANDBOX, Live, check_image, container_name,
    engine_error, not_found, volume_name,
};
use crate::sandbox::workdir::SandboxDirs;
use crate::sandbox::{
    AgentOutput, ExitInfo, RunSpec, SandboxBackend, SandboxError, SandboxSpec, ServeEndpoint,
};
use crate::settings::{DockerNetwork, Secret};
use crate::store::SandboxKind;

impl DockerBackend {
    /// Rebuilds what this process keeps for a sandbox from its container (after a restart).
    async fn recover(&self, id: &str) -> Result<Arc<Live>, SandboxError> {
        let info = match self
            .docker
            .inspect_container(&container_name(id), None)
            .await
        {
            Ok(info) => info,
            Err(e) if not_found(&e) => {
                return Err(SandboxError::Unknown(format!(
                    "{id} (its container is gone)"
                )));
            }
            Err(e) => return Err(engine_error(e)),
        };
        let config = info.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        if labels.get(LABEL_SANDBOX).map(String::as_str) != Some(id) {
            return Err(SandboxError::Unknown(format!(
                "{id} (container not labelled)"
            )));
        }
        let env: HashMap<String, String> = config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let token = env
            .get("OPENCODE_CONFIG_CONTENT")
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|c| {
                c.pointer("/provider/anthropic/options/apiKey")
                    .and_then(|v| v.as_str())
                    .map(Secret::new)
            })
            .ok_or_else(|| {
                SandboxError::Io(format!("{id}: the container holds no sandbox token"))
            })?;
        let kind = match labels.get(LABEL_KIND).map(String::as_str) {
            Some("warm") => SandboxKind::Warm,
            _ => SandboxKind::Ephemeral,
        };
        let live = Arc::new(Live {
            dirs: SandboxDirs::new(self.root.join(id)),
            kind,
            token,
            password: env
                .get("OPENCODE_SERVER_PASSWORD")
                .cloned()
                .map(Secret::new),
            stop: self.shutdown.child_token(),
            egress: false,
            env: Vec::new(),
            image: config
                .image
                .clone()
                .unwrap_or_else(|| self.settings.image.clone()),
            serve_relay: Mutex::new(None),
            seeded: AtomicBool::new(true),
            home_kept: AtomicBool::new(kind == SandboxKind::Warm),
            made_here: false,
        });
        self.serve_proxy_socket(&live)?;
        self.remember(id, live.clone())?;
        Ok(live)
    }

    /// Attaches to the made container `name`, starts it with `stdin` and streams its output
    /// lines, ending with `Exited`; cancelling `stop` kills it. `remove` removes it once it
    /// ended (a setup container; a run's stays until the next is made or the sandbox goes).
    async fn start_streaming(
        &self,
        name: String,
        stdin: Option<String>,
        stop: CancellationToken,
        remove: bool,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let (mut out, mut err) = self.attach(&name, stdin).await?;
        if let Err(e) = self.docker.start_container(&name, None).await {
            if remove {
                let _ = self.remove_container(&name).await;
            }
            return Err(SandboxError::Start(engine_error(e).to_string()));
        }
        let (tx, rx) = mpsc::channel(256);
        let out_tx = tx.clone();
        let reader = tokio::spawn(async move {
            while let Some(line) = out.recv().await {
                if out_tx.send(AgentOutput::Stdout(line)).await.is_err() {
                    break;
                }
            }
        });
        let err_tx = tx.clone();
        let err_reader = tokio::spawn(async move {
            while let Some(line) = err.recv().await {
                if err_tx.send(AgentOutput::Stderr(line)).await.is_err() {
                    break;
                }
            }
        });
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let mut killed = false;
            let exit = tokio::select! {
                info = exit_info(&docker, &name) => info,
                _ = stop.cancelled() => {
                    killed = true;
                    let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
                    if let Err(e) = docker.kill_container(&name, Some(options)).await {
                        tracing::debug!(container = %name, error = %e, "kill");
                    }
                    exit_info(&docker, &name).await
                }
            };
            // Output already written is still delivered, but must not keep the run alive.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = reader.await;
                let _ = err_reader.await;
            })
            .await;
            if remove {
                let options = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                if let Err(e) = docker.remove_container(&name, Some(options)).await {
                    tracing::debug!(container = %name, error = %e, "remove");
                }
            }
            let _ = tx
                .send(AgentOutput::Exited(ExitInfo { killed, ..exit }))
                .await;
        });
        Ok(rx)
    }

    /// Makes a sandbox: its host mirror (seeded when `seeded`, else left empty for the pool),
    /// sockets and volumes and, for a warm one, its serve container with `opencode serve` up.
    async fn make(
        &self,
        spec: &SandboxSpec,
        seeded: bool,
    ) -> Result<Option<ServeEndpoint>, SandboxError> {
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.settings.image.clone());
        check_image(&self.docker, &image).await?;
        let dirs = SandboxDirs::make_for(&self.root, spec, seeded).await?;
        {
            // The container's user (not ours) makes opencode's socket here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dirs.run, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| SandboxError::Io(format!("run dir: {e}")))?;
        }
        let live = Arc::new(Live {
            dirs,
            kind: spec.kind,
            token: spec.proxy_token.clone(),
            password: spec.serve_password.clone(),
            stop: self.shutdown.child_token(),
            egress: spec.egress.is_some(),
            env: spec.env.clone(),
            image,
            serve_relay: Mutex::new(None),
            seeded: AtomicBool::new(false),
            home_kept: AtomicBool::new(spec.kind == SandboxKind::Warm),
            made_here: true,
        });
        if spec.egress.is_some() && self.settings.network != DockerNetwork::None {
            return Err(SandboxError::BadInput(
                "network: egress policies need DELEGATE_DOCKER_NETWORK=none (containers on a \
                 network of their own would bypass the egress proxy)"
                    .into(),
            ));
        }
        self.remember(&spec.id, live.clone())?;
        let made = async {
            self.serve_proxy_socket(&live)?;
            if let Some(egress) = &spec.egress {
                let socket = live.dirs.run.join("egress.sock");
                crate::sandbox::serve_egress(egress, &socket, 0o666, live.stop.clone())?;
            }
            self.create_volume(&spec.id, "work").await?;
            if spec.kind != SandboxKind::Warm {
                // The container is made per run, with the run's arguments.
                return Ok(None);
            }
            self.create_volume(&spec.id, "home").await?;
            self.make_container(&spec.id, &live, Role::Serve).await?;
            self.start_serve(&spec.id, &live).await.map(Some)
        }
        .await;
        if made.is_err() {
            let _ = self.destroy(&spec.id).await;
        }
        made
    }

    /// Ids of the sandboxes this server has containers or volumes of.
    async fn labelled(&self) -> Result<Vec<String>, SandboxError> {
        let mine = format!("{LABEL_OWNER}={}", self.owner);
        let filters = HashMap::from([("label", vec![LABEL_SANDBOX, mine.as_str()])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(engine_error)?;
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(engine_error)?;
        let mut ids: Vec<String> = containers
            .into_iter()
            .filter_map(|c| c.labels.and_then(|mut l| l.remove(LABEL_SANDBOX)))
            .chain(
                volumes
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|mut v| v.labels.remove(LABEL_SANDBOX)),
            )
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn outlives_process(&self) -> bool {
        true
    }

    /// Containers live in the engine every server shares; their host side (the work dir mirror
    /// and the sockets bound in) in `DELEGATE_DOCKER_DIR`, which servers serving one another's
    /// sandboxes share too.
    fn release(&self, sandbox_id: &str) {
        if let Some(live) = self
            .sandboxes
            .lock()
            .ok()
            .and_then(|mut s| s.remove(sandbox_id))
        {
            // Its sockets' paths are the adopter's now (bound over these): only the listeners go.
            live.stop.cancel();
        }
    }

    fn takes_images(&self) -> bool {
        true
    }

    fn proxy_on_listener(&self) -> bool {
        matches!(self.settings.network, DockerNetwork::Named(_))
    }

    fn any_replica(&self) -> bool {
        self.shared_dir
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Option<ServeEndpoint>, SandboxError> {
        self.make(spec, true).await
    }

    fn pools(&self) -> bool {
        true
    }

    async fn create_pooled(&self, spec: &SandboxSpec) -> Result<ServeEndpoint, SandboxError> {
        crate::sandbox::make_pooled(spec, || self.make(spec, false)).await
    }

    /// The host mirror is seeded as for a fresh sandbox, then copied into the running serve
    /// container's work volume through the engine's archive API, owned by the sandbox user.
    async fn seed(
        &self,
        sandbox_id: &str,
        files: &BTreeMap<String, String>,
        repo: Option<&Path>,
    ) -> Result<bool, SandboxError> {
        let live = self.live(sandbox_id)?;
        live.dirs.seed_empty(files, repo).await?;
        self.upload_workspace(&container_name(sandbox_id), &live)
            .await?;
        Ok(crate::sandbox::carries_opencode_config(&live.dirs.workspace).await)
    }

    async fn run_headless(
        &self,
        sandbox_id: &str,
        run: &RunSpec,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let live = self.live(sandbox_id)?;
        let args = run.opencode_options();
        let name = self
            .make_container(sandbox_id, &live, Role::Headless(&args))
            .await?;
        self.start_streaming(name, Some(run.task.clone()), stop, false)
            .await
    }

    fn runs_setup(&self) -> bool {
        true
    }

    async fn run_setup(
        &self,
        sandbox_id: &str,
        script: &str,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let live = self.live(sandbox_id)?;
        // $HOME outlives the setup container: a warm sandbox's home volume exists already, an
        // ephemeral one gets one now and its run mounts it too.
        self.create_volume(sandbox_id, "home").await?;
        live.home_kept.store(true, Ordering::Release);
        let name = self
            .make_container(sandbox_id, &live, Role::Setup(script))
            .await?;
        self.start_streaming(name, None, stop, true).await
    }

    async fn collect_changes(
        &self,
        sandbox_id: &str,
        max_diff: usize,
        label: &str,
    ) -> Result<Changes, SandboxError> {
        let live = self.live(sandbox_id)?;
        let base = live.dirs.tip().await?;
        self.export_change(sandbox_id, &live, &base, label).await?;
        live.dirs.import_changes(max_diff).await
    }

    /// Any server may pause any sandbox: the container is the engine's, so one this process
    /// never held is stopped all the same.
    async fn pause(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        if let Ok(live) = self.live(sandbox_id) {
            live.stop_serve_relay();
        }
        self.stop_container(&container_name(sandbox_id)).await
    }

    async fn resume(&self, sandbox_id: &str) -> Result<ServeEndpoint, SandboxError> {
        let live = match self.live(sandbox_id) {
            Ok(live) => live,
            // Paused before this process started: its container knows the rest.
            Err(SandboxError::Unknown(_)) => self.recover(sandbox_id).await?,
            Err(e) => return Err(e),
        };
        self.start_serve(sandbox_id, &live).await
    }

    async fn destroy(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let live = self
            .sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .remove(sandbox_id);
        if let Some(live) = &live {
            live.stop.cancel();
        }
        // A sandbox this process made and never gave a home volume (no setup, not warm) has no
        // setup container or home volume to ask the engine for; any other is swept whole.
        let home = live
            .as_ref()
            .is_none_or(|l| !l.made_here || l.home_kept.load(Ordering::Acquire));
        if home {
            self.remove_container(&setup_container_name(sandbox_id))
                .await?;
        }
        self.remove_container(&container_name(sandbox_id)).await?;
        for what in ["work", "home"].into_iter().take(if home { 2 } else { 1 }) {
            match self
                .docker
                .remove_volume(&volume_name(sandbox_id, what), None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(engine_error(e)),
            }
        }
        let root = self.root.join(sandbox_id);
        match tokio::fs::remove_dir_all(&root).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SandboxError::Io(format!("remove {}: {e}", root.display()))),
        }
    }

    async fn adopt(&self, sandbox_id: &str) -> Result<ServeEndpoint, SandboxError> {
        let live = self.recover(sandbox_id).await?;
        if live.kind != SandboxKind::Warm {
            return Err(SandboxError::Unknown(format!(
                "{sandbox_id} (an ephemeral sandbox's run ended with the old server)"
            )));
        }
        let running = self
            .docker
            .inspect_container(&container_name(sandbox_id), None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !running {
            return Err(SandboxError::Start(
                "its container is no longer running".into(),
            ));
        }
        let announced = match self.settings.network {
            DockerNetwork::Host => self.announced_url(sandbox_id).await,
            _ => None,
        };
        self.serve_endpoint(sandbox_id, &live, announced.as_deref())
            .await
    }

    async fn held(&self) -> Result<Vec<String>, SandboxError> {
        self.labelled().await
    }
}

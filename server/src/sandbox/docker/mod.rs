//! The docker backend: one container per sandbox from delegate's sandbox image (`sandbox-image/`),
//! labelled, non-root, no capabilities, `no-new-privileges`, a read-only root with tmpfs for
//! /tmp, a volume for the work dir, and memory, CPU and pids limits.
//!
//! - Ephemeral: the container is made for its one run in the image's headless mode (`TASK=-`,
//!   the task on stdin); its stdout and stderr come back apart over an attach opened before start.
//! - Warm: the container runs `opencode serve` with a per-sandbox password and a second volume
//!   for `$HOME` (opencode's sessions). Pause stops it, resume starts it; files are kept.
//! - Changes: the host keeps a mirror of the work dir tracked by delegate's own git dir. The
//!   seed goes in through Docker's archive API and, after each run, `/workspace` comes back the
//!   same way (see `archive.rs`), so nothing runs git on the sandbox's side and the engine need
//!   not share a filesystem with the server for the work dir.
//! - State lives in Docker (names and labels) and the data dir, not in this process: after a
//!   restart warm containers are adopted and the rest swept ([`SandboxBackend::held`]).
//!
//! How containers reach the proxy is [`DockerNetwork`]: no network at all (a unix socket bound
//! in and relayed inside), the host's network, or a named network.

mod archive;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder,
    DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use delegate_mcp::types::ChangedFile;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

use super::lines::read_lines;
use super::workdir::SandboxDirs;
use super::{
    AgentOutput, ExitInfo, RunSpec, SandboxBackend, SandboxError, SandboxSpec, ServeEndpoint,
};
use crate::settings::{DockerNetwork, DockerSettings, Secret, Settings};
use crate::store::SandboxKind;

/// Labels every container and volume of delegate carries.
const LABEL_SANDBOX: &str = "delegate.sandbox";
const LABEL_KIND: &str = "delegate.kind";
/// The server instance that made it (see `orchestrator::instance_id`): a server sweeps only its
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

pub struct DockerBackend {
    docker: Docker,
    owner: String,
    settings: DockerSettings,
    root: PathBuf,
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
    /// The switch of the current serve relay (none while paused).
    serve_relay: Mutex<Option<CancellationToken>>,
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
            root: settings.data_dir.join("docker"),
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
        self.sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .insert(id.to_string(), live);
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

    /// The container of a sandbox: headless (`args` for `opencode run`) or serve (`None`).
    async fn container_body(
        &self,
        id: &str,
        live: &Live,
        headless: Option<&[String]>,
    ) -> Result<ContainerCreateBody, SandboxError> {
        let mut env: Vec<String> = crate::opencode::environment(
            IN_HOME,
            &self.proxy_url().await?,
            live.token.expose(),
            &self.model,
            &self.small_model,
        )
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
        let network = &self.settings.network;
        if *network == DockerNetwork::None {
            env.push(format!("DELEGATE_PROXY_SOCKET={IN_RUN}/proxy.sock"));
        }
        let mut binds = vec![format!("{}:{IN_WORKSPACE}", volume_name(id, "work"))];
        let mut tmpfs = HashMap::from([(
            "/tmp".to_string(),
            "rw,nosuid,nodev,size=1g,mode=1777".to_string(),
        )]);
        match headless {
            Some(_) => {
                env.push("TASK=-".into());
                tmpfs.insert(
                    IN_HOME.into(),
                    format!(
                        "rw,nosuid,nodev,size=1g,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700"
                    ),
                );
            }
            None => {
                binds.push(format!("{}:{IN_HOME}", volume_name(id, "home")));
                if let Some(pw) = &live.password {
                    env.push(format!("OPENCODE_SERVER_PASSWORD={}", pw.expose()));
                }
                match network {
                    DockerNetwork::None => {
                        env.push(format!("DELEGATE_SERVE_SOCKET={IN_RUN}/opencode.sock"))
                    }
                    // Any free port of the host; opencode says which.
                    DockerNetwork::Host => env.push("OPENCODE_PORT=0".into()),
                    DockerNetwork::Named(_) => env.push("OPENCODE_HOSTNAME=0.0.0.0".into()),
                }
            }
        }
        if *network == DockerNetwork::None {
            binds.push(format!("{}:{IN_RUN}", live.dirs.run.display()));
        }
        let network_mode = match network {
            DockerNetwork::None => "none".to_string(),
            DockerNetwork::Host => "host".to_string(),
            DockerNetwork::Named(name) => name.clone(),
        };
        let kind = if headless.is_some() {
            "ephemeral"
        } else {
            "warm"
        };
        Ok(ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            user: Some(format!("{SANDBOX_UID}:{SANDBOX_UID}")),
            hostname: (*network != DockerNetwork::Host).then(|| "sandbox".to_string()),
            working_dir: Some(IN_WORKSPACE.into()),
            env: Some(env),
            cmd: headless.map(<[String]>::to_vec),
            labels: Some(HashMap::from([
                (LABEL_SANDBOX.to_string(), id.to_string()),
                (LABEL_KIND.to_string(), kind.to_string()),
                (LABEL_OWNER.to_string(), self.owner.clone()),
            ])),
            attach_stdin: Some(headless.is_some()),
            open_stdin: Some(headless.is_some()),
            stdin_once: Some(headless.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(HostConfig {
                binds: Some(binds),
                tmpfs: Some(tmpfs),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                memory: Some(self.memory_bytes),
                memory_swap: Some(self.memory_bytes),
                nano_cpus: Some((self.settings.cpus * 1e9) as i64),
                pids_limit: Some(self.pids_max),
                network_mode: Some(network_mode),
                // An init reaps what the agent leaves behind and lets `docker stop` end opencode
                // at once instead of after a 10 s grace.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn create_volume(&self, id: &str, what: &str) -> Result<(), SandboxError> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume_name(id, what)),
                labels: Some(HashMap::from([
                    (LABEL_SANDBOX.to_string(), id.to_string()),
                    (LABEL_OWNER.to_string(), self.owner.clone()),
                ])),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(engine_error)
    }

    /// Makes the sandbox's container (replacing a leftover of the same name) and seeds its work
    /// volume from the host mirror.
    async fn make_container(
        &self,
        id: &str,
        live: &Live,
        headless: Option<&[String]>,
    ) -> Result<(), SandboxError> {
        let name = container_name(id);
        self.remove_container(&name).await?;
        let body = self.container_body(id, live, headless).await?;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        if let Err(e) = self.docker.create_container(Some(options), body).await {
            return Err(match e {
                ref err if not_found(err) => check_image(&self.docker, &self.settings.image)
                    .await
                    .err()
                    .unwrap_or_else(|| engine_error(e)),
                other => engine_error(other),
            });
        }
        let seed = archive::pack(live.dirs.workspace.clone(), SANDBOX_UID, SANDBOX_UID).await?;
        self.docker
            .upload_to_container(
                &name,
                Some(
                    UploadToContainerOptionsBuilder::new()
                        .path(IN_WORKSPACE)
                        .build(),
                ),
                bollard::body_full(seed.into()),
            )
            .await
            .map_err(engine_error)
    }

    async fn remove_container(&self, name: &str) -> Result<(), SandboxError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            // Already being removed (a concurrent destroy).
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(engine_error(e)),
        }
    }

    /// Attaches to the container's output (before it starts, so nothing is missed) and splits
    /// it into stdout and stderr lines; optionally feeds `stdin` first.
    async fn attach(
        &self,
        name: &str,
        stdin: Option<String>,
    ) -> Result<(mpsc::Receiver<String>, mpsc::Receiver<String>), SandboxError> {
        let options = AttachContainerOptionsBuilder::new()
            .stdin(stdin.is_some())
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = self
            .docker
            .attach_container(name, Some(options))
            .await
            .map_err(engine_error)?;
        if let Some(text) = stdin {
            let mut input = attached.input;
            tokio::spawn(async move {
                // opencode reads the prompt to EOF; closing our side closes its stdin
                // (StdinOnce). A failed write means it already exited.
                let _ = input.write_all(text.as_bytes()).await;
                let _ = input.shutdown().await;
            });
        }
        Ok(split_output(attached.output))
    }

    /// Starts the (created or stopped) serve container and waits until opencode listens.
    async fn start_serve(&self, id: &str, live: &Arc<Live>) -> Result<ServeEndpoint, SandboxError> {
        let name = container_name(id);
        let (mut out, mut err) = self.attach(&name, None).await?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| SandboxError::Start(engine_error(e).to_string()))?;
        let stderr_tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let tail = stderr_tail.clone();
        let log_id = id.to_string();
        tokio::spawn(async move {
            while let Some(line) = err.recv().await {
                tracing::debug!(sandbox = %log_id, "opencode serve: {line}");
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line);
                    if t.len() > 5 {
                        t.pop_front();
                    }
                }
            }
        });
        let listening = tokio::time::timeout(SERVE_START_TIMEOUT, async {
            while let Some(line) = out.recv().await {
                tracing::debug!(sandbox = %id, "opencode serve: {line}");
                if let Some(url) = line.split("listening on ").nth(1) {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await;
        let url = match listening {
            Ok(Some(url)) => url,
            outcome => {
                let why = match outcome {
                    Err(_) => format!("did not listen within {}s", SERVE_START_TIMEOUT.as_secs()),
                    _ => {
                        let code = exit_info(&self.docker, &name).await.code;
                        format!("exited before listening (exit code {code:?})")
                    }
                };
                let tail: Vec<String> = stderr_tail
                    .lock()
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                let _ = self.stop_container(&name).await;
                return Err(SandboxError::Start(format!(
                    "opencode serve {why}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tail.join(" | "))
                    }
                )));
            }
        };
        let log_id = id.to_string();
        tokio::spawn(async move {
            while let Some(line) = out.recv().await {
                tracing::debug!(sandbox = %log_id, "opencode serve: {line}");
            }
        });
        self.serve_endpoint(id, live, Some(&url)).await
    }

    /// Where the server reaches a running serve container. `announced` is the URL opencode
    /// printed (which carries the port on the host's network).
    async fn serve_endpoint(
        &self,
        id: &str,
        live: &Arc<Live>,
        announced: Option<&str>,
    ) -> Result<ServeEndpoint, SandboxError> {
        let url = match &self.settings.network {
            DockerNetwork::None => {
                live.stop_serve_relay();
                let relay = live.stop.child_token();
                let addr = crate::net::relay_loopback_to_unix(
                    live.dirs.run.join("opencode.sock"),
                    relay.clone(),
                )
                .await
                .map_err(|e| SandboxError::Io(format!("bind serve relay: {e}")))?;
                if let Ok(mut r) = live.serve_relay.lock() {
                    *r = Some(relay);
                }
                format!("http://{addr}")
            }
            DockerNetwork::Host => announced
                .map(str::to_string)
                .ok_or_else(|| SandboxError::Start("opencode serve announced no URL".into()))?,
            DockerNetwork::Named(_) => format!("http://{}:{SERVE_PORT}", container_name(id)),
        };
        let password = live
            .password
            .clone()
            .ok_or_else(|| SandboxError::Start("a warm sandbox without a serve password".into()))?;
        Ok(ServeEndpoint {
            url,
            password,
            directory: IN_WORKSPACE.into(),
        })
    }

    async fn stop_container(&self, name: &str) -> Result<(), SandboxError> {
        let options = StopContainerOptionsBuilder::new().t(10).build();
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(engine_error(e)),
        }
    }

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
            serve_relay: Mutex::new(None),
        });
        self.serve_proxy_socket(&live)?;
        self.remember(id, live.clone())?;
        Ok(live)
    }

    /// The URL opencode serve last announced in the container's log (host network).
    async fn announced_url(&self, id: &str) -> Option<String> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(false)
            .tail("200")
            .build();
        let mut logs = self.docker.logs(&container_name(id), Some(options));
        let mut last = None;
        while let Some(Ok(chunk)) = logs.next().await {
            for line in chunk.to_string().lines() {
                if let Some(url) = line.split("listening on ").nth(1) {
                    last = Some(url.trim().to_string());
                }
            }
        }
        last
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

/// Splits Docker's multiplexed output into stdout and stderr lines. Each side is bounded, so a
/// slow consumer slows the container's output instead of piling it up here.
fn split_output(
    output: impl Stream<Item = Result<LogOutput, DockerError>> + Send + Unpin + 'static,
) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let (out_bytes, out_rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
    let (err_bytes, err_rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
    tokio::spawn(async move {
        let mut output = output;
        while let Some(item) = output.next().await {
            let sent = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    out_bytes.send(Ok(message)).await
                }
                Ok(LogOutput::StdErr { message }) => err_bytes.send(Ok(message)).await,
                Ok(LogOutput::StdIn { .. }) => Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "container output ended with an error");
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    (lines_of(out_rx), lines_of(err_rx))
}

fn lines_of(bytes: mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    let reader = StreamReader::new(tokio_stream::wrappers::ReceiverStream::new(bytes));
    tokio::spawn(read_lines(reader, move |line| {
        let tx = tx.clone();
        async move { tx.send(line).await.is_ok() }
    }));
    rx
}

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn outlives_process(&self) -> bool {
        true
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Option<ServeEndpoint>, SandboxError> {
        check_image(&self.docker, &self.settings.image).await?;
        let dirs = SandboxDirs::new(self.root.join(&spec.id));
        if let Err(e) = dirs.create(&spec.files).await {
            let _ = tokio::fs::remove_dir_all(&dirs.root).await;
            return Err(e);
        }
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
            serve_relay: Mutex::new(None),
        });
        self.remember(&spec.id, live.clone())?;
        let made = async {
            self.serve_proxy_socket(&live)?;
            self.create_volume(&spec.id, "work").await?;
            if spec.kind != SandboxKind::Warm {
                // The container is made per run, with the run's arguments.
                return Ok(None);
            }
            self.create_volume(&spec.id, "home").await?;
            self.make_container(&spec.id, &live, None).await?;
            self.start_serve(&spec.id, &live).await.map(Some)
        }
        .await;
        if made.is_err() {
            let _ = self.destroy(&spec.id).await;
        }
        made
    }

    async fn run_headless(
        &self,
        sandbox_id: &str,
        run: &RunSpec,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let live = self.live(sandbox_id)?;
        let mut args: Vec<String> = vec!["--model".into(), run.model.clone()];
        args.extend(["--title".into(), run.title.clone()]);
        if let Some(agent) = &run.agent {
            args.extend(["--agent".into(), agent.clone()]);
        }
        if run.continue_session {
            args.push("--continue".into());
        }
        self.make_container(sandbox_id, &live, Some(&args)).await?;
        let name = container_name(sandbox_id);
        let (mut out, mut err) = self.attach(&name, Some(run.task.clone())).await?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| SandboxError::Start(engine_error(e).to_string()))?;

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
            let _ = tx
                .send(AgentOutput::Exited(ExitInfo { killed, ..exit }))
                .await;
        });
        Ok(rx)
    }

    async fn collect_changes(
        &self,
        sandbox_id: &str,
        max_diff: usize,
        label: &str,
    ) -> Result<(Vec<ChangedFile>, String, bool), SandboxError> {
        let live = self.live(sandbox_id)?;
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(IN_WORKSPACE)
            .build();
        let archive = self
            .docker
            .download_from_container(&container_name(sandbox_id), Some(options));
        archive::unpack_workspace(Box::pin(archive), live.dirs.workspace.clone()).await?;
        live.dirs.collect_changes(max_diff, label).await
    }

    async fn pause(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let live = self.live(sandbox_id)?;
        live.stop_serve_relay();
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
        self.remove_container(&container_name(sandbox_id)).await?;
        for what in ["work", "home"] {
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

/// Waits for the container to stop, then reads how it ended.
async fn exit_info(docker: &Docker, name: &str) -> ExitInfo {
    let options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut waiting = docker.wait_container(name, Some(options));
    // A non-zero exit arrives as an error from bollard; inspect says what happened either way.
    let _ = waiting.next().await;
    match docker.inspect_container(name, None).await {
        Ok(info) => {
            let state = info.state.unwrap_or_default();
            ExitInfo {
                code: state.exit_code.map(|c| c as i32),
                killed: false,
                oom: state.oom_killed.unwrap_or(false),
            }
        }
        Err(e) => {
            tracing::warn!(container = name, error = %e, "cannot inspect a finished container");
            ExitInfo::default()
        }
    }
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

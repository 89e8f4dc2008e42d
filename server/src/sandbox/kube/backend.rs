//! [`SandboxBackend`] for kubernetes, and picking sandboxes up again after a restart (their
//! objects carry labels; the sandbox's Secret holds what the pods need).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret as KubeSecret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ObjectList, PartialObjectMeta};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::manifest::{
    ANNOTATION_IMAGE, ANNOTATION_ORIGIN, ANNOTATION_TIP, LABEL_KIND, LABEL_OWNER, LABEL_SANDBOX,
    PodRole, SERVE_PORT,
};
use super::pods::PodState;
use super::{KubeBackend, Live, Place, api_error, not_found, object_name};
use crate::sandbox::workdir::SandboxDirs;
use crate::sandbox::{
    AgentOutput, Changes, ExitInfo, RunSpec, SandboxBackend, SandboxError, SandboxSpec,
    ServeEndpoint,
};
use crate::settings::Secret;
use crate::store::SandboxKind;

/// Home of the sandbox user in the image.
const IN_HOME: &str = "/home/sandbox";
/// How long `opencode serve` may take to say it listens once its pod runs.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a run's pod may take to be read to its end after its log stream closed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

impl KubeBackend {
    /// Rebuilds what this process keeps for a sandbox from its Secret (after a restart).
    async fn recover(&self, id: &str) -> Result<Arc<Live>, SandboxError> {
        let Some((at, secret)) = self.find_secret(id).await? else {
            return Err(SandboxError::Unknown(format!("{id} (its secret is gone)")));
        };
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        if labels.get(LABEL_SANDBOX).map(String::as_str) != Some(id) {
            return Err(SandboxError::Unknown(format!("{id} (secret not labelled)")));
        }
        let kind = match labels.get(LABEL_KIND).map(String::as_str) {
            Some("warm") => SandboxKind::Warm,
            _ => SandboxKind::Ephemeral,
        };
        let password = secret
            .data
            .as_ref()
            .and_then(|d| d.get("OPENCODE_SERVER_PASSWORD"))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(Secret::new);
        let image = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_IMAGE))
            .cloned()
            .ok_or_else(|| SandboxError::Io(format!("{id}: its secret names no image")))?;
        let live = Arc::new(Live {
            at,
            dirs: SandboxDirs::new(self.root.join(id)),
            kind,
            password,
            image,
            home_kept: AtomicBool::new(kind == SandboxKind::Warm),
        });
        self.remember(id, live.clone())?;
        Ok(live)
    }

    /// What this process keeps for a sandbox, rebuilt from its Secret when it has nothing
    /// (made by another server, or before this one started).
    async fn live_or_recover(&self, id: &str) -> Result<Arc<Live>, SandboxError> {
        match self.live(id) {
            Err(SandboxError::Unknown(_)) => self.recover(id).await,
            other => other,
        }
    }

    /// Labels the sandbox's lasting objects as this server's, which now holds it (a resume or
    /// an adoption through it): its sweep and restart see them as the database does.
    async fn take_over(&self, id: &str, at: &Place) -> Result<(), SandboxError> {
        let patch = serde_json::json!({
            "metadata": { "labels": { LABEL_OWNER: self.manifests.owner() } }
        });
        let patch = Patch::Merge(&patch);
        let params = PatchParams::default();
        fn missing_ok<T>(r: Result<T, kube::Error>) -> Result<(), SandboxError> {
            match r {
                Ok(_) => Ok(()),
                Err(e) if not_found(&e) => Ok(()),
                Err(e) => Err(api_error(e)),
            }
        }
        missing_ok(
            at.secrets
                .patch(&object_name(id, ""), &params, &patch)
                .await,
        )?;
        for what in ["work", "home"] {
            missing_ok(
                at.claims
                    .patch(&object_name(id, what), &params, &patch)
                    .await,
            )?;
        }
        missing_ok(
            at.ops
                .pods
                .patch(&object_name(id, ""), &params, &patch)
                .await,
        )
    }

    /// The sandbox's environment, as its Secret holds it.
    async fn environment(
        &self,
        spec: &SandboxSpec,
    ) -> Result<BTreeMap<String, String>, SandboxError> {
        let proxy_url = self.proxy_url().await?;
        let mut env: BTreeMap<String, String> = crate::opencode::environment(
            IN_HOME,
            &proxy_url,
            spec.proxy_token.expose(),
            &self.model,
            &self.small_model,
        )
        .into_iter()
        .collect();
        if spec.egress.is_some() {
            // No relay in the pod: clients send the token from the URL as Proxy-Authorization.
            // The model proxy's host stays direct.
            let (scheme, rest) = self.egress_url()?.split_once("://").map_or_else(
                || ("http".to_string(), String::new()),
                |(s, r)| (s.to_string(), r.to_string()),
            );
            let url = format!("{scheme}://sandbox:{}@{rest}", spec.proxy_token.expose());
            let mut no_proxy = crate::sandbox::NO_PROXY.to_string();
            if let Some(host) = reqwest::Url::parse(&proxy_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                && !no_proxy.split(',').any(|h| h == host)
            {
                no_proxy = format!("{no_proxy},{host}");
            }
            for (name, value) in crate::sandbox::proxy_environment(&url, &no_proxy) {
                env.insert(name.into(), value);
            }
        }
        if let Some(pw) = &spec.serve_password {
            env.insert("OPENCODE_SERVER_PASSWORD".into(), pw.expose().to_string());
        }
        for (k, v) in &spec.env {
            env.insert(k.clone(), v.expose().to_string());
        }
        Ok(env)
    }

    /// Starts the serve pod and waits until opencode listens on its pod IP.
    async fn start_serve(&self, id: &str, live: &Live) -> Result<ServeEndpoint, SandboxError> {
        let pod = self.manifests.sandbox_pod(id, &live.image, &PodRole::Serve);
        let name = object_name(id, "");
        let ops = &live.at.ops;
        ops.make_pod(&pod).await?;
        let started = async {
            let ip = match ops.wait_started(&name).await? {
                PodState::Running(Some(ip)) => ip,
                PodState::Running(None) => {
                    // An IP comes with or soon after running.
                    let ip = ops
                        .watch_pod(&name, SERVE_START_TIMEOUT, |state| match state {
                            PodState::Running(Some(ip)) => Some(Ok(ip.clone())),
                            PodState::Running(None) | PodState::Pending => None,
                            _ => Some(Err(())),
                        })
                        .await?;
                    ip.map_err(|()| SandboxError::Start("opencode serve ended".into()))?
                }
                other => {
                    return Err(SandboxError::Start(format!(
                        "opencode serve did not run ({other:?})"
                    )));
                }
            };
            let mut lines = ops.follow_log(&name).await?;
            let mut tail = Vec::new();
            let listening = tokio::time::timeout(SERVE_START_TIMEOUT, async {
                while let Some(line) = lines.recv().await {
                    tracing::debug!(sandbox = %id, "opencode serve: {line}");
                    if line.contains("listening on ") {
                        return true;
                    }
                    if tail.len() < 5 {
                        tail.push(line);
                    }
                }
                false
            })
            .await;
            if listening != Ok(true) {
                let why = match listening {
                    Err(_) => format!("did not listen within {}s", SERVE_START_TIMEOUT.as_secs()),
                    _ => "exited before listening".to_string(),
                };
                return Err(SandboxError::Start(format!(
                    "opencode serve {why}: {}",
                    tail.join(" | ")
                )));
            }
            let log_id = id.to_string();
            tokio::spawn(async move {
                while let Some(line) = lines.recv().await {
                    tracing::debug!(sandbox = %log_id, "opencode serve: {line}");
                }
            });
            self.endpoint(live, &ip)
        }
        .await;
        if started.is_err() {
            let _ = ops.delete_pod(&name).await;
        }
        started
    }

    fn endpoint(&self, live: &Live, ip: &str) -> Result<ServeEndpoint, SandboxError> {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        Ok(ServeEndpoint {
            url: format!("http://{host}:{SERVE_PORT}"),
            password: live.password.clone().ok_or_else(|| {
                SandboxError::Start("a warm sandbox without a serve password".into())
            })?,
            directory: "/workspace".into(),
        })
    }

    /// Streams a started pod's log lines, ending with `Exited` (its exit code and `OOMKilled`
    /// from the container status); cancelling `stop` deletes it (and waits until it is gone).
    /// The pod, and the Secret `then_delete` names, are deleted once it ended. `split`: the
    /// log merges stdout and stderr, so opencode's JSON lines are told from diagnostics by
    /// their first byte; without it every line is output (a setup script's).
    async fn stream_pod(
        &self,
        at: &Place,
        name: String,
        mut lines: mpsc::Receiver<String>,
        stop: CancellationToken,
        then_delete: Option<String>,
        split: bool,
    ) -> mpsc::Receiver<AgentOutput> {
        let (tx, rx) = mpsc::channel(256);
        let pods = at.ops.pods.clone();
        let secrets = at.secrets.clone();
        let backend = at.ops.clone();
        tokio::spawn(async move {
            let mut killed = false;
            let read = async {
                while let Some(line) = lines.recv().await {
                    let item = if !split || line.starts_with('{') {
                        AgentOutput::Stdout(line)
                    } else {
                        AgentOutput::Stderr(line)
                    };
                    if tx.send(item).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                () = read => {}
                () = stop.cancelled() => {
                    killed = true;
                }
            }
            let exit = if killed {
                ExitInfo::default()
            } else {
                backend.wait_ended(&name, EXIT_TIMEOUT).await
            };
            if killed {
                // Gone means its processes are gone too: wait for that.
                if let Err(e) = backend.delete_pod(&name).await {
                    tracing::warn!(pod = %name, error = %e, "cannot delete a cancelled pod");
                }
            } else if let Err(e) = pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
                && !not_found(&e)
            {
                tracing::warn!(pod = %name, error = %e, "cannot delete a finished pod");
            }
            if let Some(secret) = then_delete
                && let Err(e) = secrets.delete(&secret, &DeleteParams::default()).await
                && !not_found(&e)
            {
                tracing::warn!(secret = %secret, error = %e, "cannot delete a run's task");
            }
            let _ = tx
                .send(AgentOutput::Exited(ExitInfo { killed, ..exit }))
                .await;
        });
        rx
    }

    /// Removes this server's host side (a change repository, a run dir) of sandboxes the
    /// cluster no longer has: deleted through another server while this one held a copy. Best
    /// effort, at start (the only caller is the restart's reconcile, before any sandbox is made
    /// here, so no half-made sandbox's dir is taken for one that is gone).
    async fn forget_gone(&self) {
        let params = ListParams::default().labels(LABEL_SANDBOX);
        let known: std::collections::HashSet<String> =
            match self.across::<KubeSecret>().list_metadata(&params).await {
                Ok(list) => list
                    .items
                    .into_iter()
                    .filter_map(|o| o.metadata.labels.and_then(|mut l| l.remove(LABEL_SANDBOX)))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list sandboxes to clean up their host side");
                    return;
                }
            };
        let Ok(mut dir) = tokio::fs::read_dir(&self.root).await else {
            return;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !id.starts_with("sbx_") || known.contains(&id) || self.live(&id).is_ok() {
                continue;
            }
            match tokio::fs::remove_dir_all(entry.path()).await {
                Ok(()) => {
                    tracing::info!(sandbox = %id, "removed the host side of a sandbox that is gone");
                }
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "cannot remove a gone sandbox's host side");
                }
            }
        }
    }

    /// Ids of the sandboxes this server has pods, claims or secrets of.
    async fn labelled(&self) -> Result<Vec<String>, SandboxError> {
        let params = ListParams::default().labels(&self.manifests.owned_selector());
        fn ids<K: Clone>(list: ObjectList<PartialObjectMeta<K>>) -> impl Iterator<Item = String> {
            list.items
                .into_iter()
                .filter_map(|o| o.metadata.labels.and_then(|mut l| l.remove(LABEL_SANDBOX)))
        }
        let pods = self
            .across::<Pod>()
            .list_metadata(&params)
            .await
            .map_err(api_error)?;
        let claims = self
            .across::<PersistentVolumeClaim>()
            .list_metadata(&params)
            .await
            .map_err(api_error)?;
        let secrets = self
            .across::<KubeSecret>()
            .list_metadata(&params)
            .await
            .map_err(api_error)?;
        let mut all: Vec<String> = ids(pods).chain(ids(claims)).chain(ids(secrets)).collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
}

#[async_trait]
impl SandboxBackend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn outlives_process(&self) -> bool {
        true
    }

    fn takes_images(&self) -> bool {
        true
    }

    /// Everything a sandbox is lives in the cluster (its pods, claims and Secret, which records
    /// the commit its next change sits on): any server reaches it, and rebuilds the host side
    /// it lacks (`change.rs`).
    fn any_replica(&self) -> bool {
        true
    }

    /// Another server holds it now: what this one kept (its image, password, an old change
    /// repository) is read again from the cluster if it is ever back.
    fn release(&self, sandbox_id: &str) {
        if let Ok(mut sandboxes) = self.sandboxes.lock() {
            sandboxes.remove(sandbox_id);
        }
    }

    fn proxy_on_listener(&self) -> bool {
        KubeBackend::serves_proxy_on_listener(&self.settings)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Option<ServeEndpoint>, SandboxError> {
        if spec.egress.is_some() {
            // Checked before anything is made.
            self.egress_url()?;
        }
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.default_image.clone());
        let at = self.place_for(spec).await?;
        let dirs = SandboxDirs::make_for(&self.root, spec, true).await?;
        let live = Arc::new(Live {
            at,
            dirs,
            kind: spec.kind,
            password: spec.serve_password.clone(),
            image,
            home_kept: AtomicBool::new(spec.kind == SandboxKind::Warm),
        });
        self.remember(&spec.id, live.clone())?;
        let kind = if spec.kind == SandboxKind::Warm {
            "warm"
        } else {
            "ephemeral"
        };
        let made = async {
            let env = self.environment(spec).await?;
            let mut secret = self.manifests.env_secret(&spec.id, kind, &live.image, &env);
            // Where its first change must sit, for whichever server collects it.
            let repo = delegate_repo::ChangeRepo::open(&live.dirs.changes);
            let notes = secret.metadata.annotations.get_or_insert_default();
            notes.insert(ANNOTATION_TIP.into(), live.dirs.tip().await?);
            if let Ok(origin) = repo.resolve("refs/delegate/origin").await {
                notes.insert(ANNOTATION_ORIGIN.into(), origin);
            }
            live.at
                .secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(api_error)?;
            let mut claims = vec!["work"];
            if spec.kind == SandboxKind::Warm {
                claims.push("home");
            }
            for what in claims {
                live.at
                    .claims
                    .create(
                        &PostParams::default(),
                        &self.manifests.claim(&spec.id, what),
                    )
                    .await
                    .map_err(api_error)?;
            }
            self.seed(&spec.id, &live).await?;
            if spec.kind != SandboxKind::Warm {
                // The pod is made per run, with the run's arguments.
                return Ok(None);
            }
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
        let args = run.opencode_options();
        let task_name = object_name(sandbox_id, "task");
        let at = &live.at;
        match at
            .secrets
            .delete(&task_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(api_error(e)),
        }
        at.secrets
            .create(
                &PostParams::default(),
                &self.manifests.task_secret(sandbox_id, &run.task),
            )
            .await
            .map_err(api_error)?;
        let mut pod =
            self.manifests
                .sandbox_pod(sandbox_id, &live.image, &PodRole::Headless(&args));
        if live.home_kept.load(Ordering::Acquire) {
            self.manifests.keep_home(&mut pod, sandbox_id);
        }
        let name = object_name(sandbox_id, "");
        at.ops.make_pod(&pod).await?;
        if let Err(e) = at.ops.wait_started(&name).await {
            let _ = at.ops.delete_pod(&name).await;
            return Err(e);
        }
        let lines = at.ops.follow_log(&name).await?;
        Ok(self
            .stream_pod(at, name, lines, stop, Some(task_name), true)
            .await)
    }

    fn runs_setup(&self) -> bool {
        true
    }

    /// A pod of its own (`PodRole::Setup`): the sandbox's image, claims, env and secrets, with
    /// the same hardening; beside a running serve pod, on its node.
    async fn run_setup(
        &self,
        sandbox_id: &str,
        script: &str,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let live = self.live_or_recover(sandbox_id).await?;
        if !live.home_kept.load(Ordering::Acquire) {
            // An ephemeral sandbox's $HOME outlives its setup pod for the run that follows.
            match live
                .at
                .claims
                .create(
                    &PostParams::default(),
                    &self.manifests.claim(sandbox_id, "home"),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if super::conflict(&e) => {}
                Err(e) => return Err(api_error(e)),
            }
            live.home_kept.store(true, Ordering::Release);
        }
        let mut pod = self
            .manifests
            .sandbox_pod(sandbox_id, &live.image, &PodRole::Setup(script));
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = self.claims_node(sandbox_id, &live.at).await?;
        }
        let name = object_name(sandbox_id, "setup");
        let ops = &live.at.ops;
        ops.make_pod(&pod).await?;
        let lines = async {
            ops.wait_started(&name).await?;
            ops.follow_log(&name).await
        }
        .await;
        match lines {
            Ok(lines) => Ok(self
                .stream_pod(&live.at, name, lines, stop, None, false)
                .await),
            Err(e) => {
                let _ = ops.delete_pod(&name).await;
                Err(e)
            }
        }
    }

    async fn collect_changes(
        &self,
        sandbox_id: &str,
        max_diff: usize,
        label: &str,
    ) -> Result<Changes, SandboxError> {
        let live = self.live_or_recover(sandbox_id).await?;
        self.collect(sandbox_id, &live, max_diff, label).await
    }

    async fn pause(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let live = self.live_or_recover(sandbox_id).await?;
        live.at.ops.delete_pod(&object_name(sandbox_id, "")).await
    }

    async fn resume(&self, sandbox_id: &str) -> Result<ServeEndpoint, SandboxError> {
        // Paused before this process started, or through another server: its Secret knows
        // the rest.
        let live = self.live_or_recover(sandbox_id).await?;
        self.take_over(sandbox_id, &live.at).await?;
        self.start_serve(sandbox_id, &live).await
    }

    async fn destroy(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let held = self
            .sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .remove(sandbox_id);
        let places = match held {
            Some(live) => vec![live.at.clone()],
            None => self.places_of(sandbox_id).await?,
        };
        // Whichever server made them or holds them now: ids are unique across installations.
        // The Secret goes last: until it does, a retry finds the sandbox's namespace by it.
        let mine = ListParams::default().labels(&format!("{LABEL_SANDBOX}={sandbox_id}"));
        let now = DeleteParams::default().grace_period(0);
        for at in places {
            at.ops
                .pods
                .delete_collection(&now, &mine)
                .await
                .map_err(api_error)?;
            at.claims
                .delete_collection(&DeleteParams::default(), &mine)
                .await
                .map_err(api_error)?;
            at.secrets
                .delete_collection(&DeleteParams::default(), &mine)
                .await
                .map_err(api_error)?;
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
        let pod = live
            .at
            .ops
            .pods
            .get_opt(&object_name(sandbox_id, ""))
            .await
            .map_err(api_error)?;
        match pod.as_ref().map(super::pods::pod_state) {
            Some(PodState::Running(Some(ip))) => {
                self.take_over(sandbox_id, &live.at).await?;
                self.endpoint(&live, &ip)
            }
            _ => Err(SandboxError::Start("its pod is no longer running".into())),
        }
    }

    async fn held(&self) -> Result<Vec<String>, SandboxError> {
        let mine = self.labelled().await?;
        self.forget_gone().await;
        Ok(mine)
    }
}

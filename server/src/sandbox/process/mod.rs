//! The process backend: the real opencode binary in a per-sandbox work dir, isolated with
//! bubblewrap (every namespace unshared, uid 1000, no capabilities, read-only system binds, a
//! private /proc, /dev and /tmp, cgroup memory, pids and CPU limits). The sandbox has no network at all:
//! its only way out is the proxy's unix socket, bound in and relayed to 127.0.0.1:4000 inside by
//! delegate's own binary. `--isolation none` runs opencode unconfined, only when asked for.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sandbox::Changes;
use async_trait::async_trait;
use axum::Router;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use super::cgroup::{Cgroup, Limits};
use super::lines::{drain, read_lines};
use super::workdir::SandboxDirs;
use super::{
    AgentOutput, ExitInfo, RunSpec, SandboxBackend, SandboxError, SandboxSpec, ServeEndpoint,
};
use crate::settings::{Isolation, SandboxLimits, Secret, Settings};
use crate::store::SandboxKind;

mod bwrap;
mod serve;

use serve::live_password;

/// Where things appear inside a bubblewrap sandbox.
const IN_WORKSPACE: &str = "/workspace";
const IN_HOME: &str = "/home/sandbox";
const IN_RUN: &str = "/run/delegate";
const IN_OPENCODE: &str = "/opt/opencode/opencode";
const IN_DELEGATE: &str = "/opt/delegate/delegate";
/// The proxy as opencode inside a bubblewrap sandbox sees it.
const IN_PROXY: &str = "127.0.0.1:4000";
/// `opencode serve`'s port inside a bubblewrap sandbox.
const IN_SERVE_PORT: u16 = 4096;
/// How long `opencode serve` may take to say it listens.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long committing a run's change inside the sandbox may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The parts of /etc a sandbox needs; the rest (shadow, ssh keys, ...) stays out, because the
/// sandbox's uid maps to the host user that owns them.
const ETC_BINDS: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/gitconfig",
    "/etc/mime.types",
];

/// Sandboxes as local processes: opencode in a per-sandbox work dir under bubblewrap (or, when
/// explicitly asked for, without isolation), limited by cgroups where the host allows.
pub struct ProcessBackend {
    root: PathBuf,
    opencode: PathBuf,
    isolation: Isolation,
    bwrap: Option<PathBuf>,
    relay_bin: PathBuf,
    proxy: Router,
    tcp_proxy: OnceCell<SocketAddr>,
    model: String,
    small_model: String,
    limits: Limits,
    /// Whether a sandbox that cannot be limited refuses to start.
    limits_required: bool,
    sandboxes: Mutex<HashMap<String, Arc<Live>>>,
    shutdown: CancellationToken,
}

/// A sandbox this backend made and has not destroyed yet.
struct Live {
    dirs: SandboxDirs,
    token: Secret,
    stop: CancellationToken,
    cgroup: Option<Cgroup>,
    /// Whether the sandbox has an `egress.sock` (its policy allows something).
    egress: bool,
    /// The caller's env and secrets, for every process of the sandbox.
    env: Vec<(String, Secret)>,
    /// The running `opencode serve` and the switch of its host-side relay.
    serve: Mutex<Option<(Child, CancellationToken)>>,
}

impl Live {
    /// Stops `opencode serve` (and everything else of the sandbox), keeping its files.
    async fn stop_serve(&self) {
        let serve = self.serve.lock().ok().and_then(|mut s| s.take());
        if let Some((mut child, relay)) = serve {
            relay.cancel();
            let _ = kill_sandbox(&mut child, self.cgroup.as_ref()).await;
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }
}

/// Kills a sandbox's processes and reaps its first one. Everything but that first process goes
/// first: bubblewrap's outer process then sees its child die and exits by itself, reaping it, so
/// no orphaned zombie is left for PID 1. Without cgroups (or if that stalls), SIGKILL to the first
/// process is enough: bubblewrap's pid namespace takes the rest down with it.
async fn kill_sandbox(
    child: &mut Child,
    cgroup: Option<&Cgroup>,
) -> std::io::Result<std::process::ExitStatus> {
    if let (Some(cg), Some(first)) = (cgroup, child.id()) {
        cg.kill_all_except(first as i32);
        if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            return status;
        }
    }
    let _ = child.start_kill();
    child.wait().await
}

/// What a sandbox command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Program {
    /// opencode (`run` or `serve`).
    Opencode,
    /// `/bin/sh`, for the caller's setup script.
    Shell,
}

/// Feeds `stdin` (closed at once when `None`), sends the child's output lines on the returned
/// channel and ends it with `Exited`; cancelling `stop` kills the sandbox's processes.
fn stream_output(
    mut child: Child,
    live: Arc<Live>,
    stdin: Option<String>,
    stop: CancellationToken,
) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
    let (tx, rx) = mpsc::channel(256);
    let mut input = child
        .stdin
        .take()
        .ok_or_else(|| SandboxError::Start("no stdin".into()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| SandboxError::Start("no stdout".into()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| SandboxError::Start("no stderr".into()))?;
    tokio::spawn(async move {
        // opencode reads the prompt to EOF; a failed write means it already exited.
        if let Some(text) = stdin {
            let _ = input.write_all(text.as_bytes()).await;
        }
        let _ = input.shutdown().await;
    });
    let out_tx = tx.clone();
    let reader = tokio::spawn(read_lines(stdout, move |l| {
        let tx = out_tx.clone();
        async move { tx.send(AgentOutput::Stdout(l)).await.is_ok() }
    }));
    let err_tx = tx.clone();
    let err_reader = tokio::spawn(read_lines(stderr, move |l| {
        let tx = err_tx.clone();
        async move { tx.send(AgentOutput::Stderr(l)).await.is_ok() }
    }));
    tokio::spawn(async move {
        let mut killed = false;
        let status = tokio::select! {
            s = child.wait() => s,
            _ = stop.cancelled() => {
                killed = true;
                kill_sandbox(&mut child, live.cgroup.as_ref()).await
            }
        };
        if let Some(cg) = &live.cgroup {
            // Nothing of the run may outlive it (a backgrounded shell, say). A warm sandbox's
            // serve is spared: only its setup ran here, and serve is in another process tree.
            if live.serve.lock().map(|s| s.is_none()).unwrap_or(true) {
                cg.kill_all();
            }
        }
        // Output already written is still delivered, but a pipe held open by a stray process
        // must not keep the run alive.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = reader.await;
            let _ = err_reader.await;
        })
        .await;
        let code = status.ok().and_then(|s| s.code());
        let oom = live.cgroup.as_ref().is_some_and(Cgroup::oom_killed);
        let _ = tx
            .send(AgentOutput::Exited(ExitInfo { code, killed, oom }))
            .await;
    });
    Ok(rx)
}

impl ProcessBackend {
    /// Checks that opencode (and bubblewrap, unless isolation is off) are there.
    pub fn new(settings: &Settings, proxy: Router) -> Result<Self, SandboxError> {
        let opencode = resolve_opencode(settings.opencode_bin.as_deref())?;
        let bwrap = match settings.isolation {
            Isolation::Bwrap => Some(find_on_path("bwrap").ok_or_else(|| {
                SandboxError::Missing(
                    "bubblewrap (bwrap) is not installed, so the process backend cannot isolate \
                     opencode. Install it (apt-get install bubblewrap), or pass --isolation none \
                     (DELEGATE_ISOLATION=none) to run opencode unconfined on this machine."
                        .into(),
                )
            })?),
            Isolation::None => {
                tracing::warn!(
                    "ISOLATION IS OFF: opencode runs as you, with your files and network. \
                     Use --isolation none only for code and tasks you trust."
                );
                None
            }
        };
        let relay_bin = match &settings.relay_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| {
                SandboxError::Missing(format!("cannot find delegate's own binary: {e}"))
            })?,
        };
        Ok(ProcessBackend {
            root: settings.data_dir.join("sandboxes"),
            opencode,
            isolation: settings.isolation,
            bwrap,
            relay_bin,
            proxy,
            tcp_proxy: OnceCell::new(),
            model: settings.model.clone(),
            small_model: settings.small_model.clone(),
            limits: Limits {
                memory_bytes: settings.sandbox_memory_mb.saturating_mul(1 << 20),
                pids_max: settings.sandbox_pids_max,
                cpus: settings.docker.cpus,
            },
            // Unconfined (`--isolation none`) has nothing to insist on.
            limits_required: settings.sandbox_limits == SandboxLimits::Required
                && settings.isolation == Isolation::Bwrap,
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

    /// The cgroup(s) limiting sandbox `id`; `None` (with a warning) when the host cannot limit it
    /// and limits are optional, else an error saying why and how to allow it.
    async fn limit(&self, id: &str) -> Result<Option<Cgroup>, SandboxError> {
        let name = format!("delegate-{id}");
        let limits = self.limits;
        // The cgroup file system: quick writes, but blocking calls all the same.
        let made = tokio::task::spawn_blocking(move || Cgroup::create(&name, &limits))
            .await
            .map_err(|e| SandboxError::Io(format!("cgroup setup: {e}")))?;
        match made {
            Ok(cg) => Ok(Some(cg)),
            Err(why) if self.limits_required => Err(SandboxError::Start(format!(
                "the sandbox cannot be limited (memory, pids and CPU through cgroups): {why}. \
                 Run delegate as root or in a cgroup it may manage (a systemd unit with \
                 Delegate=yes), or set DELEGATE_SANDBOX_LIMITS=optional (--sandbox-limits \
                 optional) to run sandboxes without limits"
            ))),
            Err(why) => {
                tracing::warn!(
                    "memory, pids and CPU limits are not enforced for sandbox {id}: {why}"
                );
                Ok(None)
            }
        }
    }

    /// Makes a sandbox: its dirs (the work dir seeded when `seeded`, else left empty for the
    /// pool), limits, sockets and, for a warm one, `opencode serve`.
    async fn make(
        &self,
        spec: &SandboxSpec,
        seeded: bool,
    ) -> Result<Option<ServeEndpoint>, SandboxError> {
        let dirs = SandboxDirs::make_for(&self.root, spec, seeded).await?;
        // Readable by delegate alone: the password file is a secret, the rest nobody else's business.
        let write = |name: &str, text: String| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dirs.root.join(name))
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| SandboxError::Io(format!("{name}: {e}")))
        };
        write(
            "passwd",
            format!(
                "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:{IN_HOME}:/bin/sh\n"
            ),
        )?;
        write("group", "root:x:0:\nsandbox:x:1000:\n".to_string())?;
        if let Some(pw) = &spec.serve_password {
            // Outside the work dir and home: the sandbox gets it only as an env var of serve.
            write("serve.password", pw.expose().to_string())?;
        }
        let cgroup = match self.limit(&spec.id).await {
            Ok(cg) => cg,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dirs.root).await;
                return Err(e);
            }
        };
        let live = Arc::new(Live {
            dirs,
            token: spec.proxy_token.clone(),
            stop: self.shutdown.child_token(),
            cgroup,
            egress: spec.egress.is_some() && self.bwrap.is_some(),
            env: spec.env.clone(),
            serve: Mutex::new(None),
        });
        if self.bwrap.is_some() {
            let socket = live.dirs.run.join("proxy.sock");
            crate::net::serve_unix(self.proxy.clone(), &socket, 0o600, live.stop.clone())
                .map_err(|e| SandboxError::Io(format!("bind {}: {e}", socket.display())))?;
            if let Some(egress) = &spec.egress {
                let socket = live.dirs.run.join("egress.sock");
                super::serve_egress(egress, &socket, 0o600, live.stop.clone())?;
            }
        } else if spec.egress.is_some() {
            tracing::warn!(
                "sandbox {}: isolation is off, so it has the host's network and its egress \
                 policy is not enforced",
                spec.id
            );
        }
        self.sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .insert(spec.id.clone(), live.clone());
        if spec.kind == SandboxKind::Warm {
            match self.start_serve(&spec.id, &live).await {
                Ok(endpoint) => return Ok(Some(endpoint)),
                Err(e) => {
                    let _ = self.destroy(&spec.id).await;
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// The loopback TCP proxy used when isolation is off (no socket to bind in).
    async fn tcp_proxy(&self) -> Result<SocketAddr, SandboxError> {
        self.tcp_proxy
            .get_or_try_init(|| {
                crate::net::serve_loopback(self.proxy.clone(), self.shutdown.clone())
            })
            .await
            .copied()
            .map_err(|e| SandboxError::Io(format!("bind proxy: {e}")))
    }
}

#[async_trait]
impl SandboxBackend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Option<ServeEndpoint>, SandboxError> {
        self.make(spec, true).await
    }

    fn pools(&self) -> bool {
        true
    }

    async fn create_pooled(&self, spec: &SandboxSpec) -> Result<ServeEndpoint, SandboxError> {
        super::make_pooled(spec, || self.make(spec, false)).await
    }

    async fn seed(
        &self,
        sandbox_id: &str,
        files: &BTreeMap<String, String>,
        repo: Option<&Path>,
    ) -> Result<bool, SandboxError> {
        // The work dir is bound into the sandbox as a directory: it is filled in place (the
        // bind would keep a replaced directory's old inode).
        let live = self.live(sandbox_id)?;
        live.dirs.seed_empty(files, repo).await?;
        Ok(crate::sandbox::carries_opencode_config(&live.dirs.workspace).await)
    }

    async fn run_headless(
        &self,
        sandbox_id: &str,
        run: &RunSpec,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let live = self.live(sandbox_id)?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--format".into(),
            "json".into(),
            "--auto".into(),
        ];
        args.extend(run.opencode_options());
        let child = self
            .command(&live, Program::Opencode, &args, false)
            .await?
            .spawn()
            .map_err(|e| SandboxError::Start(format!("cannot start the sandbox: {e}")))?;
        stream_output(child, live, Some(run.task.clone()), stop)
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
        let args = ["-c".to_string(), script.to_string()];
        let child = self
            .command(&live, Program::Shell, &args, false)
            .await?
            .spawn()
            .map_err(|e| SandboxError::Start(format!("cannot start the setup script: {e}")))?;
        stream_output(child, live, None, stop)
    }

    async fn collect_changes(
        &self,
        sandbox_id: &str,
        max_diff: usize,
        label: &str,
    ) -> Result<Changes, SandboxError> {
        let live = self.live(sandbox_id)?;
        let base = live.dirs.tip().await?;
        self.export_change(&live, &base, label).await?;
        live.dirs.import_changes(max_diff).await
    }

    async fn pause(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        self.live(sandbox_id)?.stop_serve().await;
        Ok(())
    }

    async fn resume(&self, sandbox_id: &str) -> Result<ServeEndpoint, SandboxError> {
        let live = self.live(sandbox_id)?;
        self.start_serve(sandbox_id, &live).await
    }

    async fn destroy(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let live = self
            .sandboxes
            .lock()
            .map_err(|_| SandboxError::Io("sandbox table poisoned".into()))?
            .remove(sandbox_id);
        let root = match live {
            Some(live) => {
                live.stop.cancel();
                live.stop_serve().await;
                if let Some(cg) = &live.cgroup {
                    // Now, not when the last reference goes: nothing of a deleted sandbox may
                    // linger.
                    cg.remove().await;
                }
                live.dirs.root.clone()
            }
            // Never came up: a run cancelled while its sandbox was being made drops `create`
            // part-way, and what it wrote by then is still on disk.
            None if crate::ids::SandboxId::parse(sandbox_id).is_some() => {
                self.root.join(sandbox_id)
            }
            None => return Ok(()),
        };
        tokio::fs::remove_dir_all(&root)
            .await
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| SandboxError::Io(format!("remove {}: {e}", root.display())))
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn resolve_opencode(configured: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let missing = |what: String| {
        SandboxError::Missing(format!(
            "{what}. Set DELEGATE_OPENCODE_BIN to the opencode binary (npm install opencode-ai@1.18.33 \
             puts it at node_modules/opencode-linux-x64/bin/opencode) or put `opencode` on PATH."
        ))
    };
    let path = match configured {
        Some(p) => p.to_path_buf(),
        None => find_on_path("opencode")
            .ok_or_else(|| missing("opencode was not found on PATH".into()))?,
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        missing(format!(
            "opencode binary {} is not usable ({e})",
            path.display()
        ))
    })?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(missing(format!(
            "{} is not an executable file",
            path.display()
        )));
    }
    // Resolve symlinks: bubblewrap binds the real file.
    std::fs::canonicalize(&path).map_err(|e| missing(format!("{}: {e}", path.display())))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

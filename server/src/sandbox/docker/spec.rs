//! The container spec: the hardened create body of a sandbox's container (labels, mounts,
//! tmpfs, limits, environment, network) and its labelled volumes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};

use super::{
    DockerBackend, IN_HOME, IN_RUN, IN_WORKSPACE, LABEL_KIND, LABEL_OWNER, LABEL_SANDBOX, Live,
    SANDBOX_UID, container_name, engine_error, volume_name,
};
use crate::sandbox::SandboxError;
use crate::settings::DockerNetwork;

/// What a sandbox's container runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Role<'a> {
    /// `opencode serve`: a warm sandbox's long-lived container.
    Serve,
    /// `opencode run` with these options, the task on stdin: an ephemeral sandbox's run.
    Headless(&'a [String]),
    /// The caller's setup script under `sh -c`, once the egress relay listens.
    Setup(&'a str),
}

impl Role<'_> {
    /// The container's name: setup has one of its own, so it can run beside a warm sandbox's
    /// serve container.
    pub(super) fn container_name(self, id: &str) -> String {
        match self {
            Role::Setup(_) => setup_container_name(id),
            Role::Serve | Role::Headless(_) => container_name(id),
        }
    }
}

pub(super) fn setup_container_name(id: &str) -> String {
    format!("delegate-{id}-setup")
}

/// The setup container's entrypoint (`$1` is the script). The image's entrypoint only knows
/// opencode's two modes, so this starts the egress relay the same way and waits until it
/// listens (0FA1 is port 4001, 0A is LISTEN): the script's first request must not race it.
const SETUP_ENTRYPOINT: &str = r#"
if [ -n "${DELEGATE_EGRESS_SOCKET:-}" ]; then
    socat TCP-LISTEN:4001,bind=127.0.0.1,reuseaddr,fork "UNIX-CONNECT:$DELEGATE_EGRESS_SOCKET" &
    tries=0
    until grep -q ':0FA1 00000000:0000 0A' /proc/net/tcp; do
        tries=$((tries + 1))
        if [ "$tries" -gt 500 ]; then
            echo "delegate: the egress relay did not start" >&2
            exit 70
        fi
        sleep 0.01
    done
fi
mkdir -p "$XDG_DATA_HOME" "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME" "$XDG_STATE_HOME" 2>/dev/null || true
cd /workspace
exec /bin/sh -c "$1"
"#;

impl DockerBackend {
    /// The container of a sandbox in its `role`.
    pub(super) async fn container_body(
        &self,
        id: &str,
        live: &Live,
        role: Role<'_>,
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
            if live.egress {
                // The entrypoint relays 127.0.0.1:4001 to it, where the proxy variables point.
                env.push(format!("DELEGATE_EGRESS_SOCKET={IN_RUN}/egress.sock"));
                env.extend(
                    crate::sandbox::egress_environment()
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}")),
                );
            }
        }
        // The caller's env and secrets; a secret's value is visible to whoever may inspect
        // the engine's containers, as any container environment is.
        env.extend(live.env.iter().map(|(k, v)| format!("{k}={}", v.expose())));
        let mut binds = vec![format!("{}:{IN_WORKSPACE}", volume_name(id, "work"))];
        // `exec`: Docker mounts a tmpfs noexec unless told, which breaks venvs, `pip install
        // --user` scripts and `go test` (its binaries go to /tmp); /workspace is exec anyway.
        let mut tmpfs = HashMap::from([(
            "/tmp".to_string(),
            "rw,nosuid,nodev,exec,size=1g,mode=1777".to_string(),
        )]);
        let home_volume = format!("{}:{IN_HOME}", volume_name(id, "home"));
        match role {
            Role::Headless(_) => {
                env.push("TASK=-".into());
                if live.home_kept.load(Ordering::Acquire) {
                    // What setup left in $HOME (pip --user, caches) is the run's too.
                    binds.push(home_volume);
                } else {
                    tmpfs.insert(
                        IN_HOME.into(),
                        format!(
                            "rw,nosuid,nodev,exec,size=1g,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700"
                        ),
                    );
                }
            }
            Role::Setup(_) => binds.push(home_volume),
            Role::Serve => {
                binds.push(home_volume);
                if let Some(pw) = &live.password {
                    env.push(format!("OPENCODE_SERVER_PASSWORD={}", pw.expose()));
                }
                match network {
                    DockerNetwork::None => {
                        env.push(format!("DELEGATE_SERVE_SOCKET={IN_RUN}/opencode.sock"));
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
        let (kind, entrypoint, cmd) = match role {
            Role::Headless(args) => ("ephemeral", None, Some(args.to_vec())),
            Role::Serve => ("warm", None, None),
            Role::Setup(script) => (
                "setup",
                Some(vec![
                    "/bin/sh".to_string(),
                    "-c".into(),
                    SETUP_ENTRYPOINT.into(),
                    "delegate-setup".into(),
                ]),
                Some(vec![script.to_string()]),
            ),
        };
        let stdin = matches!(role, Role::Headless(_));
        Ok(ContainerCreateBody {
            image: Some(live.image.clone()),
            user: Some(format!("{SANDBOX_UID}:{SANDBOX_UID}")),
            hostname: (*network != DockerNetwork::Host).then(|| "sandbox".to_string()),
            working_dir: Some(IN_WORKSPACE.into()),
            env: Some(env),
            entrypoint,
            cmd,
            labels: Some(HashMap::from([
                (LABEL_SANDBOX.to_string(), id.to_string()),
                (LABEL_KIND.to_string(), kind.to_string()),
                (LABEL_OWNER.to_string(), self.owner.clone()),
            ])),
            attach_stdin: Some(stdin),
            open_stdin: Some(stdin),
            stdin_once: Some(stdin),
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

    pub(super) async fn create_volume(&self, id: &str, what: &str) -> Result<(), SandboxError> {
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
}

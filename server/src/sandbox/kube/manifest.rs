//! The objects the kubernetes backend makes, as plain values: built here and nowhere else, so a
//! test can dump every one of them and validate it against the pinned Kubernetes version's
//! schema (`kubernetes-validate`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecretProjection,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::object_name;
use crate::settings::Settings;

/// Labels every object of delegate's carries (the docker backend's).
pub const LABEL_SANDBOX: &str = "delegate.sandbox";
/// `ephemeral`, `warm`, `setup`, `seed` or `commit`.
pub const LABEL_KIND: &str = "delegate.kind";
/// The server instance that holds it (the one that made it, or took it over since): a server
/// sweeps only its own.
pub const LABEL_OWNER: &str = "delegate.owner";
/// On a workspace namespace (and its NetworkPolicy): the workspace's id.
pub const LABEL_WORKSPACE: &str = "delegate.workspace";
/// On the sandbox's Secret: the image its pods run.
pub const ANNOTATION_IMAGE: &str = "delegate.image";
/// On the sandbox's Secret: the commit its next change must sit on (the seed, then each run's
/// change), so any server can check a change without the host repository that made it.
pub const ANNOTATION_TIP: &str = "delegate.tip";
/// On the sandbox's Secret: the snapshot it was cloned from, when it was.
pub const ANNOTATION_ORIGIN: &str = "delegate.origin";
/// The sandbox user of the image.
pub const SANDBOX_UID: i64 = 1000;
/// The one container of every pod.
pub const CONTAINER: &str = "sandbox";
/// `opencode serve`'s port on the pod's IP.
pub const SERVE_PORT: u16 = 4096;
/// The image's entrypoint (`sandbox-image/entrypoint.sh`).
const ENTRYPOINT: &str = "/usr/local/bin/delegate-sandbox";
const IN_HOME: &str = "/home/sandbox";
const IN_WORKSPACE: &str = "/workspace";
const IN_TASK: &str = "/run/delegate-task";
const IN_SEED: &str = "/run/delegate-seed";
/// Bytes of seed archive per Secret (a Secret holds at most 1 MiB).
pub const SEED_CHUNK: usize = 768 << 10;

/// What a sandbox pod runs.
#[derive(Debug, Clone)]
pub enum PodRole<'a> {
    /// One headless run: `opencode run` with these options, the task from the task Secret.
    Headless(&'a [String]),
    /// A warm sandbox's `opencode serve`.
    Serve,
    /// The sandbox's setup script (`sh -c`), with its env and secrets, on its work and home
    /// claims (what it writes to `$HOME` stays for the runs).
    Setup(&'a str),
}

/// A short-lived pod's work (see [`Manifests::job_pod`]).
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// `seed` or `commit`: its name's suffix and its kind label.
    pub what: &'a str,
    /// The sandbox's image.
    pub image: &'a str,
    /// The script `sh -c` runs.
    pub script: &'a str,
    /// Its environment (no secrets: it has no `envFrom`).
    pub env: &'a [(&'a str, String)],
    /// How many seed Secrets to mount at `/run/delegate-seed`.
    pub seed_parts: usize,
    /// The node to run on (where a ReadWriteOnce claim in use is).
    pub node: Option<String>,
}

/// Builds the backend's objects from the settings (see the module docs).
#[derive(Debug, Clone)]
pub struct Manifests {
    owner: String,
    memory: String,
    cpus: String,
    cpu_request: String,
    runtime_class: Option<String>,
    storage_class: Option<String>,
    volume_size: String,
    home_size: String,
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn claim_volume(name: &str, claim: String) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim,
            read_only: None,
        }),
        ..Default::default()
    }
}

fn empty_dir(name: &str, size: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(quantity(size)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `10Gi` -> a tenth of it (at least `1Gi`) for opencode's home; other forms -> `1Gi`.
fn home_size(volume: &str) -> String {
    let gib = volume
        .strip_suffix("Gi")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(10);
    format!("{}Gi", (gib / 10).max(1))
}

impl Manifests {
    /// The manifests of a server with `settings`, labelled with `owner`.
    pub fn new(settings: &Settings, owner: String) -> Self {
        let kube = &settings.kube;
        Manifests {
            owner,
            memory: format!("{}Mi", settings.sandbox_memory_mb),
            cpus: format!("{}m", (settings.docker.cpus * 1000.0).round() as u64),
            cpu_request: kube.cpu_request.clone(),
            runtime_class: kube.runtime_class.clone(),
            storage_class: kube.storage_class.clone(),
            volume_size: kube.volume_size.clone(),
            home_size: home_size(&kube.volume_size),
        }
    }

    /// The labels of a sandbox's objects of `kind`.
    pub fn labels(&self, id: &str, kind: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_SANDBOX.to_string(), id.to_string()),
            (LABEL_KIND.to_string(), kind.to_string()),
            (LABEL_OWNER.to_string(), self.owner.clone()),
        ])
    }

    /// The server instance whose objects these are.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The selector of every object of this server's.
    pub fn owned_selector(&self) -> String {
        format!("{LABEL_SANDBOX},{LABEL_OWNER}={}", self.owner)
    }

    fn meta(&self, name: String, id: &str, kind: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            labels: Some(self.labels(id, kind)),
            ..Default::default()
        }
    }

    /// The sandbox's environment Secret (`envFrom` of its pods): opencode's config with the
    /// proxy token, the serve password, the caller's env and secrets.
    pub fn env_secret(
        &self,
        id: &str,
        kind: &str,
        image: &str,
        env: &BTreeMap<String, String>,
    ) -> Secret {
        let mut meta = self.meta(object_name(id, ""), id, kind);
        meta.annotations = Some(BTreeMap::from([(
            ANNOTATION_IMAGE.to_string(),
            image.to_string(),
        )]));
        Secret {
            metadata: meta,
            type_: Some("Opaque".into()),
            immutable: Some(true),
            data: Some(
                env.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// One run's task, mounted as a file (a task may be past the kernel's limit for one
    /// environment variable).
    pub fn task_secret(&self, id: &str, task: &str) -> Secret {
        Secret {
            metadata: self.meta(object_name(id, "task"), id, "ephemeral"),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                "task".to_string(),
                ByteString(task.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    /// Part `n` of the seed archive.
    pub fn seed_secret(&self, id: &str, n: usize, chunk: &[u8]) -> Secret {
        Secret {
            metadata: self.meta(object_name(id, &format!("seed-{n}")), id, "seed"),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                format!("part-{n:04}"),
                ByteString(chunk.to_vec()),
            )])),
            ..Default::default()
        }
    }

    /// The work (`what` = `work`) or home claim of a sandbox.
    pub fn claim(&self, id: &str, what: &str) -> PersistentVolumeClaim {
        let size = if what == "home" {
            &self.home_size
        } else {
            &self.volume_size
        };
        PersistentVolumeClaim {
            metadata: self.meta(object_name(id, what), id, "volume"),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: self.storage_class.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), quantity(size))])),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn resources(&self) -> ResourceRequirements {
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&self.cpu_request)),
                // Memory asked for is memory held: no eviction for using what the limit allows.
                ("memory".to_string(), quantity(&self.memory)),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&self.cpus)),
                ("memory".to_string(), quantity(&self.memory)),
            ])),
            ..Default::default()
        }
    }

    /// The hardened pod around `container`: non-root, no token, RuntimeDefault seccomp, never
    /// restarted (a finished run stays finished; a lost serve pod is resumed by the server).
    fn pod(
        &self,
        name: String,
        id: &str,
        kind: &str,
        mut container: Container,
        volumes: Vec<Volume>,
        node: Option<String>,
    ) -> Pod {
        container.name = CONTAINER.into();
        container.image_pull_policy = Some("IfNotPresent".into());
        container.working_dir = Some(IN_WORKSPACE.into());
        container.resources = Some(self.resources());
        container.security_context = Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(SANDBOX_UID),
            run_as_group: Some(SANDBOX_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        });
        Pod {
            metadata: self.meta(name, id, kind),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                host_network: Some(false),
                host_pid: Some(false),
                host_ipc: Some(false),
                runtime_class_name: self.runtime_class.clone(),
                node_name: node,
                termination_grace_period_seconds: Some(5),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(SANDBOX_UID),
                    run_as_group: Some(SANDBOX_UID),
                    // Claims are made writable by the sandbox's group.
                    fs_group: Some(SANDBOX_UID),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                }),
                containers: vec![container],
                volumes: Some(volumes),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// A sandbox's own pod: a headless run, a warm sandbox's `opencode serve`, or its setup
    /// (named `...-setup`: it may run beside the serve pod).
    pub fn sandbox_pod(&self, id: &str, image: &str, role: &PodRole<'_>) -> Pod {
        let mut volumes = vec![
            claim_volume("work", object_name(id, "work")),
            empty_dir("tmp", "1Gi"),
        ];
        let mut mounts = vec![
            mount("work", IN_WORKSPACE, false),
            mount("home", IN_HOME, false),
            mount("tmp", "/tmp", false),
        ];
        let mut container = Container {
            image: Some(image.into()),
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: object_name(id, ""),
                    optional: Some(false),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let kind = match role {
            PodRole::Headless(args) => {
                volumes.push(empty_dir("home", "1Gi"));
                volumes.push(Volume {
                    name: "task".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(object_name(id, "task")),
                        default_mode: Some(0o440),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                mounts.push(mount("task", IN_TASK, true));
                // The entrypoint reads the task on stdin with TASK=-.
                let mut command = vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    format!("exec {ENTRYPOINT} \"$@\" < {IN_TASK}/task"),
                    ENTRYPOINT.to_string(),
                ];
                command.extend(args.iter().cloned());
                container.command = Some(command);
                container.env = Some(vec![env("TASK", "-")]);
                "ephemeral"
            }
            PodRole::Serve => {
                volumes.push(claim_volume("home", object_name(id, "home")));
                container.env = Some(vec![
                    env("OPENCODE_PORT", &SERVE_PORT.to_string()),
                    EnvVar {
                        name: "OPENCODE_HOSTNAME".into(),
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "status.podIP".into(),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]);
                "warm"
            }
            PodRole::Setup(script) => {
                volumes.push(claim_volume("home", object_name(id, "home")));
                container.command = Some(vec!["/bin/sh".into(), "-c".into(), script.to_string()]);
                "setup"
            }
        };
        container.volume_mounts = Some(mounts);
        let name = match role {
            PodRole::Setup(_) => object_name(id, "setup"),
            _ => object_name(id, ""),
        };
        self.pod(name, id, kind, container, volumes, None)
    }

    /// Gives a headless run's pod the sandbox's home claim instead of an empty dir: an
    /// ephemeral sandbox whose setup ran keeps what setup wrote to `$HOME`.
    pub fn keep_home(&self, pod: &mut Pod, id: &str) {
        let volumes = pod.spec.as_mut().and_then(|s| s.volumes.as_mut());
        for volume in volumes.into_iter().flatten() {
            if volume.name == "home" {
                *volume = claim_volume("home", object_name(id, "home"));
            }
        }
    }

    /// A short-lived pod on the work claim running `job.script` with `sh -c` (seed or commit).
    pub fn job_pod(&self, id: &str, job: &Job<'_>) -> Pod {
        let Job {
            what,
            image,
            script,
            env: env_vars,
            seed_parts,
            node,
        } = job;
        let seed_parts = *seed_parts;
        let mut volumes = vec![
            claim_volume("work", object_name(id, "work")),
            empty_dir("tmp", "256Mi"),
        ];
        let mut mounts = vec![
            mount("work", IN_WORKSPACE, false),
            mount("tmp", "/tmp", false),
        ];
        if seed_parts > 0 {
            volumes.push(Volume {
                name: "seed".into(),
                projected: Some(ProjectedVolumeSource {
                    default_mode: Some(0o440),
                    sources: Some(
                        (0..seed_parts)
                            .map(|n| VolumeProjection {
                                secret: Some(SecretProjection {
                                    name: object_name(id, &format!("seed-{n}")),
                                    optional: Some(false),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(mount("seed", IN_SEED, true));
        }
        let mut all_env = vec![env("HOME", "/tmp")];
        all_env.extend(env_vars.iter().map(|(k, v)| env(k, v)));
        let container = Container {
            image: Some(image.to_string()),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script.to_string()]),
            env: Some(all_env),
            volume_mounts: Some(mounts),
            ..Default::default()
        };
        self.pod(
            object_name(id, what),
            id,
            what,
            container,
            volumes,
            node.clone(),
        )
    }
}

/// The seed pod's script: the seed Secrets' parts, in order, are one tar archive.
pub fn seed_script() -> String {
    format!("set -eu\ncat {IN_SEED}/part-* | tar -x -f - -C {IN_WORKSPACE}\n")
}

/// A workspace's namespace `name`, labelled with its id. Pod Security Admission enforces the
/// `restricted` standard there, which every pod of the backend meets: a pod made there by
/// anything else is held to it too.
pub fn workspace_namespace(name: &str, workspace: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_WORKSPACE.to_string(), workspace.to_string()),
                (
                    "pod-security.kubernetes.io/enforce".to_string(),
                    "restricted".to_string(),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The copy of `template` (the chart's sandbox NetworkPolicy) for a workspace's namespace: its
/// name, labels and spec, plus the workspace label; nothing the API server wrote.
pub fn workspace_policy(template: &NetworkPolicy, workspace: &str) -> NetworkPolicy {
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_WORKSPACE.to_string(), workspace.to_string());
    NetworkPolicy {
        metadata: ObjectMeta {
            name: template.metadata.name.clone(),
            labels: Some(labels),
            ..Default::default()
        },
        spec: template.spec.clone(),
    }
}

//! Loading the settings: defaults, then the optional TOML file, then the environment (env wins),
//! each value checked and named after its variable when it is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    BackendChoice, DEFAULT_SANDBOX_IMAGE, DEFAULT_WARM_POOL, DEFAULT_WARM_POOL_IDLE, DockerNetwork,
    DockerSettings, EgressSettings, GitHost, GithubSettings, IpRange, Isolation, KubeSettings,
    LimitSettings, MAX_WARM_POOL, OidcSettings, Registration, SandboxLimits, Secret, SecretKey,
    Settings, SsoSettings, Upstream, UpstreamCredential,
};

/// The optional settings file; every field optional, same names as the env vars in lower case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<Secret>,
    backend: Option<BackendChoice>,
    public_url: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    idle_timeout: Option<String>,
    anthropic_base_url: Option<String>,
    anthropic_api_key: Option<Secret>,
    anthropic_auth_token: Option<Secret>,
    model: Option<String>,
    small_model: Option<String>,
    opencode_bin: Option<PathBuf>,
    isolation: Option<Isolation>,
    sandbox_memory_mb: Option<u64>,
    sandbox_pids_max: Option<u64>,
    sandbox_limits: Option<SandboxLimits>,
    sandbox_image: Option<String>,
    sandbox_images: Option<Vec<String>>,
    sandbox_cpus: Option<f64>,
    docker_network: Option<String>,
    docker_proxy_url: Option<String>,
    docker_dir: Option<PathBuf>,
    k8s_namespace: Option<String>,
    k8s_kubeconfig: Option<PathBuf>,
    k8s_runtime_class: Option<String>,
    k8s_storage_class: Option<String>,
    k8s_volume_size: Option<String>,
    k8s_cpu_request: Option<String>,
    k8s_service: Option<String>,
    k8s_proxy_url: Option<String>,
    k8s_namespace_per_workspace: Option<bool>,
    k8s_network_policy: Option<String>,
    k8s_egress_url: Option<String>,
    max_concurrent_runs: Option<usize>,
    max_queued_runs: Option<usize>,
    warm_pool: Option<u64>,
    warm_pool_idle: Option<String>,
    max_run_cost_usd: Option<f64>,
    workspace_daily_budget_usd: Option<f64>,
    workspace_max_concurrent_runs: Option<u64>,
    workspace_max_warm_sandboxes: Option<u64>,
    default_timeout: Option<String>,
    diff_max_bytes: Option<usize>,
    heartbeat_secs: Option<u64>,
    max_repo_bytes: Option<u64>,
    max_repo_files: Option<u64>,
    retain_runs_days: Option<u64>,
    local_keep_bytes: Option<u64>,
    registration: Option<Registration>,
    oidc_redirect_base_url: Option<String>,
    oidc_issuer_url: Option<String>,
    oidc_client_id: Option<String>,
    oidc_client_secret: Option<Secret>,
    github_client_id: Option<String>,
    github_client_secret: Option<Secret>,
    github_api_url: Option<String>,
    github_oauth_url: Option<String>,
    github_allowed_orgs: Option<String>,
    oidc_allowed_email_domains: Option<String>,
    base_domain: Option<String>,
    base_scheme: Option<String>,
    trusted_proxies: Option<String>,
    metrics_public: Option<bool>,
    proxy_public: Option<bool>,
    git_allowed_hosts: Option<Vec<String>>,
    egress: Option<EgressSettings>,
    secret_key: Option<Secret>,
    watch: Option<Switch>,
    watch_addr: Option<SocketAddr>,
}

/// Why the settings could not be loaded; the message names the file or variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file could not be read.
    #[error("cannot read settings file {path}: {source}")]
    Read {
        /// The file's path.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The settings file is not valid TOML for the settings.
    #[error("settings file {path}: {message}")]
    Parse {
        /// The file's path.
        path: PathBuf,
        /// The TOML parser's reason, with the position.
        message: String,
    },
    /// A value (from the file or the environment) is out of range or malformed.
    #[error("{name}: {message}")]
    Invalid {
        /// The environment variable the value is named after (also when it came from the file).
        name: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// Looks up one environment variable; injected so tests need not touch the process environment.
pub trait EnvSource {
    /// The value of `name`, or `None` when unset.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

impl Settings {
    /// Defaults, then `file` (or `DELEGATE_CONFIG`) if given, then the environment.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> Result<Settings, SettingsError> {
        let file_path = file
            .map(Path::to_path_buf)
            .or_else(|| env.var("DELEGATE_CONFIG").map(PathBuf::from));
        let mut f = match &file_path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileSettings>(&text).map_err(|e| SettingsError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => FileSettings::default(),
        };

        let sso = sso_settings(env, &mut f)?;
        let listen = match env.var("DELEGATE_LISTEN") {
            Some(v) => parse_value("DELEGATE_LISTEN", &v)?,
            None => f.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
        };
        let data_dir = env
            .var("DELEGATE_DATA_DIR")
            .map(PathBuf::from)
            .or(f.data_dir)
            .unwrap_or_else(default_data_dir);
        let database_url = env
            .var("DATABASE_URL")
            .map(Secret::new)
            .or(f.database_url)
            .unwrap_or_else(|| {
                Secret::new(format!(
                    "sqlite://{}",
                    data_dir.join("delegate.db").display()
                ))
            });
        let backend = match env.var("DELEGATE_BACKEND") {
            Some(v) => parse_enum("DELEGATE_BACKEND", &v)?,
            None => f.backend.unwrap_or(BackendChoice::Auto),
        };
        let idle_timeout = match env.var("IDLE_TIMEOUT").or(f.idle_timeout) {
            Some(v) => parse_duration("IDLE_TIMEOUT", &v)?,
            None => Duration::from_secs(30 * 60),
        };
        let warm_pool_idle = match env.var("DELEGATE_WARM_POOL_IDLE").or(f.warm_pool_idle) {
            Some(v) => parse_duration("DELEGATE_WARM_POOL_IDLE", &v)?,
            None => DEFAULT_WARM_POOL_IDLE,
        };
        if warm_pool_idle.is_zero() {
            return Err(SettingsError::Invalid {
                name: "DELEGATE_WARM_POOL_IDLE",
                message: "must be at least 1s".into(),
            });
        }
        let warm_pool = match env.var("DELEGATE_WARM_POOL") {
            Some(v) => parse_value::<u64>("DELEGATE_WARM_POOL", &v)?,
            None => f.warm_pool.unwrap_or(DEFAULT_WARM_POOL as u64),
        };
        if warm_pool > MAX_WARM_POOL as u64 {
            return Err(SettingsError::Invalid {
                name: "DELEGATE_WARM_POOL",
                message: format!(
                    "{warm_pool}: at most {MAX_WARM_POOL} sandboxes (each idle one holds an \
                     opencode serve, about 0.4 to 0.6 GB; see BENCHMARKS.md, \"Warm pool\")"
                ),
            });
        }
        let default_timeout = match env.var("DELEGATE_DEFAULT_TIMEOUT").or(f.default_timeout) {
            Some(v) => parse_duration("DELEGATE_DEFAULT_TIMEOUT", &v)?,
            None => Duration::from_secs(900),
        };
        let base_url = env
            .var("ANTHROPIC_BASE_URL")
            .or(f.anthropic_base_url)
            .unwrap_or_else(|| "https://api.anthropic.com".into());
        let base_url = base_url.trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(SettingsError::Invalid {
                name: "ANTHROPIC_BASE_URL",
                message: "must start with http:// or https://".into(),
            });
        }
        let credential = if let Some(key) = env.var("ANTHROPIC_API_KEY").map(Secret::new) {
            Some(UpstreamCredential::ApiKey(key))
        } else if let Some(token) = env.var("ANTHROPIC_AUTH_TOKEN").map(Secret::new) {
            Some(UpstreamCredential::AuthToken(token))
        } else if let Some(key) = f.anthropic_api_key {
            Some(UpstreamCredential::ApiKey(key))
        } else {
            f.anthropic_auth_token.map(UpstreamCredential::AuthToken)
        };
        let isolation = match env.var("DELEGATE_ISOLATION") {
            Some(v) => parse_enum("DELEGATE_ISOLATION", &v)?,
            None => f.isolation.unwrap_or(Isolation::Bwrap),
        };
        let number = |name: &'static str, file: Option<u64>, default: u64| match env.var(name) {
            Some(v) => parse_value::<u64>(name, &v),
            None => Ok(file.unwrap_or(default)),
        };

        let docker_network = env
            .var("DELEGATE_DOCKER_NETWORK")
            .or(f.docker_network)
            .unwrap_or_else(|| "none".into());
        let docker = DockerSettings {
            host: env.var("DOCKER_HOST").filter(|h| !h.is_empty()),
            image: env
                .var("DELEGATE_SANDBOX_IMAGE")
                .or(f.sandbox_image)
                .unwrap_or_else(|| DEFAULT_SANDBOX_IMAGE.into()),
            images: match env.var("DELEGATE_SANDBOX_IMAGES") {
                Some(v) => v.split(',').map(str::to_string).collect(),
                None => f.sandbox_images.take().unwrap_or_default(),
            }
            .into_iter()
            .map(|i| i.trim().to_string())
            .filter(|i| !i.is_empty())
            .collect(),
            network: docker_network
                .parse()
                .map_err(|message| SettingsError::Invalid {
                    name: "DELEGATE_DOCKER_NETWORK",
                    message,
                })?,
            proxy_url: env.var("DELEGATE_DOCKER_PROXY_URL").or(f.docker_proxy_url),
            dir: env
                .var("DELEGATE_DOCKER_DIR")
                .map(PathBuf::from)
                .or(f.docker_dir),
            cpus: match env.var("DELEGATE_SANDBOX_CPUS") {
                Some(v) => parse_value("DELEGATE_SANDBOX_CPUS", &v)?,
                None => f.sandbox_cpus.unwrap_or(2.0),
            },
        };
        if !(docker.cpus > 0.0 && docker.cpus <= 1024.0) {
            return Err(SettingsError::Invalid {
                name: "DELEGATE_SANDBOX_CPUS",
                message: "must be more than 0 and at most 1024".into(),
            });
        }
        if matches!(docker.network, DockerNetwork::Named(_)) && docker.proxy_url.is_none() {
            return Err(SettingsError::Invalid {
                name: "DELEGATE_DOCKER_PROXY_URL",
                message: "a named DELEGATE_DOCKER_NETWORK needs the proxy's URL as containers \
                          see it, e.g. http://delegate:8080/v1"
                    .into(),
            });
        }

        let non_empty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let kube = KubeSettings {
            namespace: non_empty(env.var("DELEGATE_K8S_NAMESPACE").or(f.k8s_namespace)),
            kubeconfig: env
                .var("DELEGATE_K8S_KUBECONFIG")
                .map(PathBuf::from)
                .or(f.k8s_kubeconfig),
            runtime_class: non_empty(
                env.var("DELEGATE_K8S_RUNTIME_CLASS")
                    .or(f.k8s_runtime_class),
            ),
            storage_class: non_empty(
                env.var("DELEGATE_K8S_STORAGE_CLASS")
                    .or(f.k8s_storage_class),
            ),
            volume_size: non_empty(env.var("DELEGATE_K8S_VOLUME_SIZE").or(f.k8s_volume_size))
                .unwrap_or_else(|| "10Gi".into()),
            cpu_request: non_empty(env.var("DELEGATE_K8S_CPU_REQUEST").or(f.k8s_cpu_request))
                .unwrap_or_else(|| "250m".into()),
            service: non_empty(env.var("DELEGATE_K8S_SERVICE").or(f.k8s_service))
                .unwrap_or_else(|| "delegate".into()),
            proxy_url: non_empty(env.var("DELEGATE_K8S_PROXY_URL").or(f.k8s_proxy_url)),
            namespace_per_workspace: match env.var("DELEGATE_K8S_NAMESPACE_PER_WORKSPACE") {
                Some(v) => parse_value("DELEGATE_K8S_NAMESPACE_PER_WORKSPACE", &v)?,
                None => f.k8s_namespace_per_workspace.unwrap_or(false),
            },
            network_policy: non_empty(
                env.var("DELEGATE_K8S_NETWORK_POLICY")
                    .or(f.k8s_network_policy),
            ),
            egress_url: non_empty(env.var("DELEGATE_K8S_EGRESS_URL").or(f.k8s_egress_url)),
        };
        for (name, quantity) in [
            ("DELEGATE_K8S_VOLUME_SIZE", &kube.volume_size),
            ("DELEGATE_K8S_CPU_REQUEST", &kube.cpu_request),
        ] {
            if !quantity
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.')
            {
                return Err(SettingsError::Invalid {
                    name,
                    message: "must be a Kubernetes quantity, e.g. 10Gi or 250m".into(),
                });
            }
        }

        let registration = match env.var("DELEGATE_REGISTRATION") {
            Some(v) => parse_enum("DELEGATE_REGISTRATION", &v)?,
            None => f.registration.unwrap_or(Registration::Invite),
        };

        let base_domain = match env.var("BASE_DOMAIN").or(f.base_domain) {
            Some(d) => Some(parse_base_domain(&d)?),
            None => None,
        };
        let base_scheme = env
            .var("BASE_SCHEME")
            .or(f.base_scheme)
            .unwrap_or_else(|| "http".into())
            .to_ascii_lowercase();
        if base_scheme != "http" && base_scheme != "https" {
            return Err(SettingsError::Invalid {
                name: "BASE_SCHEME",
                message: format!("{base_scheme:?} is not http or https"),
            });
        }

        let trusted_proxies = env
            .var("DELEGATE_TRUSTED_PROXIES")
            .or(f.trusted_proxies)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse().map_err(|message| SettingsError::Invalid {
                    name: "DELEGATE_TRUSTED_PROXIES",
                    message,
                })
            })
            .collect::<Result<Vec<IpRange>, _>>()?;
        let metrics_public = match env.var("DELEGATE_METRICS_PUBLIC") {
            Some(v) => parse_value("DELEGATE_METRICS_PUBLIC", &v)?,
            None => f.metrics_public.unwrap_or(false),
        };
        let proxy_public = match env.var("DELEGATE_PROXY_PUBLIC") {
            Some(v) => parse_value("DELEGATE_PROXY_PUBLIC", &v)?,
            None => f.proxy_public.unwrap_or(false),
        };
        let git_allowed_hosts = match env.var("DELEGATE_GIT_ALLOWED_HOSTS") {
            Some(v) => v.split(',').map(str::to_string).collect(),
            None => f.git_allowed_hosts.unwrap_or_default(),
        }
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| parse_git_host(h))
        .collect::<Result<Vec<_>, _>>()?;

        let allowed_hosts = match env.var("DELEGATE_ALLOWED_HOSTS") {
            Some(v) => v.split(',').map(str::to_string).collect(),
            None => f.allowed_hosts.take().unwrap_or_default(),
        }
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| parse_allowed_host(h))
        .collect::<Result<Vec<_>, _>>()?;

        let mut egress = f.egress.take().unwrap_or_default();
        if let Some(json) = env.var("DELEGATE_EGRESS_POLICIES") {
            egress.policies = serde_json::from_str(&json).map_err(|e| SettingsError::Invalid {
                name: "DELEGATE_EGRESS_POLICIES",
                message: format!(
                    "expected JSON like {{\"npm\": {{\"hosts\": [\"npm.internal.example\"]}}}}: {e}"
                ),
            })?;
        }
        if let Some(name) = env.var("DELEGATE_EGRESS_DEFAULT") {
            egress.default = Some(name);
        }
        if let Some(v) = env.var("DELEGATE_EGRESS_MAX_BYTES") {
            egress.max_bytes = Some(parse_value("DELEGATE_EGRESS_MAX_BYTES", &v)?);
        }
        if let Some(v) = non_empty(env.var("DELEGATE_EGRESS_LISTEN")) {
            egress.listen = Some(parse_value("DELEGATE_EGRESS_LISTEN", &v)?);
        }
        if egress.max_bytes == Some(0) {
            return Err(SettingsError::Invalid {
                name: "DELEGATE_EGRESS_MAX_BYTES",
                message: "must be more than 0".into(),
            });
        }

        let secret_key = match env
            .var("DELEGATE_SECRET_KEY")
            .map(Secret::new)
            .or(f.secret_key.take())
            .filter(|k| !k.expose().trim().is_empty())
        {
            Some(key) => Some(key.expose().parse::<SecretKey>().map_err(|message| {
                SettingsError::Invalid {
                    name: "DELEGATE_SECRET_KEY",
                    message,
                }
            })?),
            None => None,
        };

        let watch = match env.var("DELEGATE_WATCH") {
            Some(v) => parse_switch("DELEGATE_WATCH", &v)?,
            None => f.watch.map(|s| s.0).unwrap_or(true),
        };
        let watch_addr = match env.var("DELEGATE_WATCH_ADDR") {
            Some(v) => parse_value("DELEGATE_WATCH_ADDR", &v)?,
            None => f
                .watch_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        };
        // The watch UI authenticates with a cookie on plain http: anything but loopback would
        // hand it to the network.
        if !watch_addr.ip().is_loopback() {
            return Err(SettingsError::Invalid {
                name: "DELEGATE_WATCH_ADDR",
                message: format!(
                    "{watch_addr} is not a loopback address; the watch UI listens on loopback \
                     only (127.0.0.1:PORT or [::1]:PORT)"
                ),
            });
        }

        Ok(Settings {
            watch: watch.then_some(watch_addr),
            secret_key,
            trusted_proxies,
            metrics_public,
            proxy_public,
            egress,
            base_domain,
            base_scheme,
            git_allowed_hosts,
            listen,
            database_url,
            backend,
            allowed_hosts,
            public_url: env.var("DELEGATE_PUBLIC_URL").or(f.public_url),
            idle_timeout,
            upstream: Upstream {
                base_url,
                credential,
            },
            model: env
                .var("DELEGATE_MODEL")
                .or(f.model)
                .unwrap_or_else(|| "anthropic/claude-sonnet-4-5".into()),
            small_model: env
                .var("DELEGATE_SMALL_MODEL")
                .or(f.small_model)
                .unwrap_or_else(|| "anthropic/claude-haiku-4-5".into()),
            opencode_bin: env
                .var("DELEGATE_OPENCODE_BIN")
                .map(PathBuf::from)
                .or(f.opencode_bin),
            isolation,
            relay_bin: None,
            sandbox_memory_mb: number("DELEGATE_SANDBOX_MEMORY_MB", f.sandbox_memory_mb, 4096)?,
            sandbox_pids_max: number("DELEGATE_SANDBOX_PIDS_MAX", f.sandbox_pids_max, 1024)?,
            sandbox_limits: match env.var("DELEGATE_SANDBOX_LIMITS") {
                Some(v) => parse_enum("DELEGATE_SANDBOX_LIMITS", &v)?,
                None => f.sandbox_limits.unwrap_or(SandboxLimits::Required),
            },
            docker,
            kube,
            max_concurrent_runs: number(
                "DELEGATE_MAX_CONCURRENT_RUNS",
                f.max_concurrent_runs.map(|n| n as u64),
                16,
            )? as usize,
            max_queued_runs: number(
                "DELEGATE_MAX_QUEUED_RUNS",
                f.max_queued_runs.map(|n| n as u64),
                256,
            )? as usize,
            warm_pool: warm_pool as usize,
            warm_pool_idle,
            limits: LimitSettings {
                max_run_cost_usd: dollars(
                    "DELEGATE_MAX_RUN_COST_USD",
                    env.var("DELEGATE_MAX_RUN_COST_USD"),
                    f.max_run_cost_usd,
                )?,
                workspace_daily_budget_usd: dollars(
                    "DELEGATE_WORKSPACE_DAILY_BUDGET_USD",
                    env.var("DELEGATE_WORKSPACE_DAILY_BUDGET_USD"),
                    f.workspace_daily_budget_usd,
                )?,
                workspace_max_concurrent_runs: count(
                    "DELEGATE_WORKSPACE_MAX_CONCURRENT_RUNS",
                    env.var("DELEGATE_WORKSPACE_MAX_CONCURRENT_RUNS"),
                    f.workspace_max_concurrent_runs,
                )?,
                workspace_max_warm_sandboxes: count(
                    "DELEGATE_WORKSPACE_MAX_WARM_SANDBOXES",
                    env.var("DELEGATE_WORKSPACE_MAX_WARM_SANDBOXES"),
                    f.workspace_max_warm_sandboxes,
                )?,
            },
            default_timeout,
            diff_max_bytes: number(
                "DELEGATE_DIFF_MAX_BYTES",
                f.diff_max_bytes.map(|n| n as u64),
                256 * 1024,
            )? as usize,
            heartbeat: Duration::from_secs(positive(
                "DELEGATE_HEARTBEAT_SECS",
                number("DELEGATE_HEARTBEAT_SECS", f.heartbeat_secs, 15)?,
            )?),
            max_repo_bytes: positive(
                "DELEGATE_MAX_REPO_BYTES",
                number("DELEGATE_MAX_REPO_BYTES", f.max_repo_bytes, 1 << 30)?,
            )?,
            max_repo_files: positive(
                "DELEGATE_MAX_REPO_FILES",
                number("DELEGATE_MAX_REPO_FILES", f.max_repo_files, 200_000)?,
            )?,
            retain_runs_days: number("DELEGATE_RETAIN_RUNS_DAYS", f.retain_runs_days, 30)?,
            local_keep_bytes: positive(
                "DELEGATE_LOCAL_KEEP_BYTES",
                number("DELEGATE_LOCAL_KEEP_BYTES", f.local_keep_bytes, 5 << 30)?,
            )?,
            sso,
            registration,
            data_dir,
        })
    }
}

/// The SSO block of the settings; takes its fields out of `f`.
fn sso_settings(env: &dyn EnvSource, f: &mut FileSettings) -> Result<SsoSettings, SettingsError> {
    let url = |name: &'static str, v: Option<String>| -> Result<Option<String>, SettingsError> {
        match v {
            Some(v) if !(v.starts_with("http://") || v.starts_with("https://")) => {
                Err(SettingsError::Invalid {
                    name,
                    message: "must start with http:// or https://".into(),
                })
            }
            v => Ok(v.map(|v| v.trim_end_matches('/').to_string())),
        }
    };
    let redirect_base_url = url(
        "OIDC_REDIRECT_BASE_URL",
        env.var("OIDC_REDIRECT_BASE_URL")
            .or(f.oidc_redirect_base_url.take())
            .or_else(|| env.var("DELEGATE_PUBLIC_URL"))
            .or(f.public_url.clone()),
    )?;
    let issuer = url(
        "OIDC_ISSUER_URL",
        env.var("OIDC_ISSUER_URL").or(f.oidc_issuer_url.take()),
    )?;
    let oidc_client = env.var("OIDC_CLIENT_ID").or(f.oidc_client_id.take());
    let oidc_secret = env
        .var("OIDC_CLIENT_SECRET")
        .map(Secret::new)
        .or(f.oidc_client_secret.take());
    let oidc = match (issuer, oidc_client) {
        (Some(issuer_url), Some(client_id)) => Some(OidcSettings {
            issuer_url,
            client_id,
            client_secret: oidc_secret,
        }),
        (None, None) => None,
        _ => {
            return Err(SettingsError::Invalid {
                name: "OIDC_ISSUER_URL",
                message: "OIDC needs both OIDC_ISSUER_URL and OIDC_CLIENT_ID".into(),
            });
        }
    };
    let github_client = env.var("GITHUB_CLIENT_ID").or(f.github_client_id.take());
    let github_secret = env
        .var("GITHUB_CLIENT_SECRET")
        .map(Secret::new)
        .or(f.github_client_secret.take());
    let github = match (github_client, github_secret) {
        (Some(client_id), Some(client_secret)) => Some(GithubSettings {
            client_id,
            client_secret,
            api_url: url(
                "GITHUB_API_URL",
                env.var("GITHUB_API_URL").or(f.github_api_url.take()),
            )?
            .unwrap_or_else(|| "https://api.github.com".into()),
            oauth_url: url(
                "GITHUB_OAUTH_URL",
                env.var("GITHUB_OAUTH_URL").or(f.github_oauth_url.take()),
            )?
            .unwrap_or_else(|| "https://github.com".into()),
        }),
        (None, None) => None,
        _ => {
            return Err(SettingsError::Invalid {
                name: "GITHUB_CLIENT_ID",
                message: "GitHub sign-in needs both GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET"
                    .into(),
            });
        }
    };
    let github_allowed_orgs = name_list(
        "GITHUB_ALLOWED_ORGS",
        env.var("GITHUB_ALLOWED_ORGS")
            .or(f.github_allowed_orgs.take()),
    )?;
    let oidc_allowed_email_domains = name_list(
        "OIDC_ALLOWED_EMAIL_DOMAINS",
        env.var("OIDC_ALLOWED_EMAIL_DOMAINS")
            .or(f.oidc_allowed_email_domains.take()),
    )?;
    if (oidc.is_some() || github.is_some()) && redirect_base_url.is_none() {
        return Err(SettingsError::Invalid {
            name: "OIDC_REDIRECT_BASE_URL",
            message: "single sign-on needs OIDC_REDIRECT_BASE_URL or DELEGATE_PUBLIC_URL (how browsers reach this server)".into(),
        });
    }
    Ok(SsoSettings {
        redirect_base_url,
        oidc,
        github,
        github_allowed_orgs,
        oidc_allowed_email_domains,
    })
}

/// A comma list of organization or domain names, lower case, empty entries dropped; `@` in front
/// of a domain is tolerated. Anything but letters, digits, `-`, `_` and `.` is refused, so a typo
/// can not silently allow nobody (or everybody).
fn name_list(name: &'static str, v: Option<String>) -> Result<Vec<String>, SettingsError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in v.split(',') {
        let entry = entry.trim().trim_start_matches('@').to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if !entry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(SettingsError::Invalid {
                name,
                message: format!("{entry:?} is not a name (comma-separated list expected)"),
            });
        }
        names.push(entry);
    }
    Ok(names)
}

/// A host name with an optional port, lower case (`delegate.example.com`, `localhost:8080`).
fn parse_base_domain(v: &str) -> Result<String, SettingsError> {
    let d = v.trim().trim_end_matches('.').to_ascii_lowercase();
    let (host, port) = d.rsplit_once(':').unwrap_or((&d, ""));
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok = port.is_empty() || port.parse::<u16>().is_ok();
    if host_ok && port_ok {
        Ok(d)
    } else {
        Err(SettingsError::Invalid {
            name: "BASE_DOMAIN",
            message: format!(
                "{v:?} is not a host name with an optional port (e.g. delegate.example.com)"
            ),
        })
    }
}

/// A limit of 0 would refuse everything; say so instead.
/// An optional dollar amount: more than 0 and finite; empty in the environment means unset.
fn dollars(
    name: &'static str,
    env: Option<String>,
    file: Option<f64>,
) -> Result<Option<f64>, SettingsError> {
    let value = match env.as_deref().map(str::trim) {
        Some("") => None,
        Some(v) => Some(parse_value::<f64>(name, v)?),
        None => file,
    };
    match value {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(SettingsError::Invalid {
            name,
            message: "must be a dollar amount above 0, e.g. 2.50".into(),
        }),
        v => Ok(v),
    }
}

/// An optional count of at least 1; empty in the environment means unset.
fn count(
    name: &'static str,
    env: Option<String>,
    file: Option<u64>,
) -> Result<Option<u64>, SettingsError> {
    let value = match env.as_deref().map(str::trim) {
        Some("") => None,
        Some(v) => Some(parse_value::<u64>(name, v)?),
        None => file,
    };
    value.map(|n| positive(name, n)).transpose()
}

fn positive(name: &'static str, n: u64) -> Result<u64, SettingsError> {
    if n == 0 {
        return Err(SettingsError::Invalid {
            name,
            message: "must be at least 1".into(),
        });
    }
    Ok(n)
}

/// One `DELEGATE_GIT_ALLOWED_HOSTS` entry: `host`, `host:port`, `[v6]` or `[v6]:port`, the host
/// normalized the way a parsed URL spells it, so that the two compare equal.
pub fn parse_git_host(v: &str) -> Result<GitHost, SettingsError> {
    let invalid = || SettingsError::Invalid {
        name: "DELEGATE_GIT_ALLOWED_HOSTS",
        message: format!("{v:?} is not host[:port] (e.g. git.example.internal:8080)"),
    };
    let v = v.trim();
    let (host, port) = match v.rsplit_once(':') {
        // A colon inside brackets belongs to an IPv6 address, not to a port.
        Some((h, p)) if !p.contains(']') && (!h.contains(':') || h.ends_with(']')) => {
            (h, Some(p.parse::<u16>().map_err(|_| invalid())?))
        }
        _ => (v, None),
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return Err(invalid());
    }
    let url = reqwest::Url::parse(&format!("https://{host}/")).map_err(|_| invalid())?;
    let host = url.host_str().ok_or_else(invalid)?.to_string();
    Ok(GitHost { host, port })
}

/// One `DELEGATE_ALLOWED_HOSTS` entry: `host` (any port) or `host:port`, lower case, as a `Host`
/// header spells it. A URL or user info is refused rather than silently never matching.
pub fn parse_allowed_host(v: &str) -> Result<String, SettingsError> {
    let v = v.trim().to_ascii_lowercase();
    let invalid = || SettingsError::Invalid {
        name: "DELEGATE_ALLOWED_HOSTS",
        message: format!("{v:?} is not host[:port] (e.g. delegate:8080)"),
    };
    if v.contains(['/', '@', '?', '#']) {
        return Err(invalid());
    }
    let authority = http::uri::Authority::try_from(v.as_str()).map_err(|_| invalid())?;
    // `Authority` takes any text after the colon as a port: one that is no number would
    // otherwise be dropped, allowing every port.
    let bad_port = authority.port_u16().is_none() && authority.host() != v;
    if authority.host().is_empty() || bad_port {
        return Err(invalid());
    }
    Ok(v)
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from(".local/share"))
        .join("delegate")
}

fn parse_value<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, SettingsError>
where
    T::Err: std::fmt::Display,
{
    v.trim()
        .parse()
        .map_err(|e: T::Err| SettingsError::Invalid {
            name,
            message: format!("{v:?}: {e}"),
        })
}

/// An on/off setting: `on`, `true`, `yes`, `1` or `off`, `false`, `no`, `0`.
fn parse_switch(name: &'static str, v: &str) -> Result<bool, SettingsError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(SettingsError::Invalid {
            name,
            message: format!("{v:?} is not on or off (true, false)"),
        }),
    }
}

/// An on/off value in the settings file: a TOML boolean or the same words as the environment.
#[derive(Debug, Clone, Copy)]
struct Switch(bool);

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(b) => Ok(Switch(b)),
            Raw::Word(w) => parse_switch("watch", &w)
                .map(Switch)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_enum<T: clap::ValueEnum>(name: &'static str, v: &str) -> Result<T, SettingsError> {
    T::from_str(v.trim(), true).map_err(|_| SettingsError::Invalid {
        name,
        message: format!(
            "{v:?} is not one of {}",
            T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// `90`, `90s`, `15m`, `2h` (a bare number is seconds).
pub fn parse_duration(name: &'static str, v: &str) -> Result<Duration, SettingsError> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num.parse().map_err(|_| SettingsError::Invalid {
        name,
        message: format!("{v:?} is not a duration like 90s, 15m or 2h"),
    })?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    };
    secs.map(Duration::from_secs)
        .ok_or_else(|| SettingsError::Invalid {
            name,
            message: format!("{v:?} is not a duration like 90s, 15m or 2h"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DEFAULT_CONFIG;

    #[test]
    fn env_wins_over_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("delegate-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("delegate.toml");
        std::fs::write(
            &file,
            "model = \"anthropic/from-file\"\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        let env = [
            ("DELEGATE_MODEL", "anthropic/from-env"),
            ("ANTHROPIC_API_KEY", "sk-secret"),
            ("DELEGATE_DATA_DIR", "/tmp/x"),
        ];
        let s = Settings::load(Some(&file), &env).unwrap();
        assert_eq!(s.model, "anthropic/from-env");
        assert_eq!(s.idle_timeout, Duration::from_secs(300));
        assert_eq!(s.database_url.expose(), "sqlite:///tmp/x/delegate.db");
        assert!(!format!("{s:?}").contains("sk-secret"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn base_domain_and_scheme() {
        let s = Settings::load(None, &[("BASE_DOMAIN", "Delegate.Example.com.")]).unwrap();
        assert_eq!(s.base_domain.as_deref(), Some("delegate.example.com"));
        assert_eq!(s.base_scheme, "http");
        let s = Settings::load(
            None,
            &[("BASE_DOMAIN", "localhost:8080"), ("BASE_SCHEME", "HTTPS")],
        )
        .unwrap();
        assert_eq!(s.base_domain.as_deref(), Some("localhost:8080"));
        assert_eq!(s.base_scheme, "https");
        for bad in ["http://x.com", "a..b", "x.com:99999", "x/y", "a b"] {
            let e = Settings::load(None, &[("BASE_DOMAIN", bad)]);
            assert!(e.is_err(), "{bad:?} accepted as BASE_DOMAIN");
        }
        assert!(Settings::load(None, &[("BASE_SCHEME", "ftp")]).is_err());
        let unset = Settings::load(None, &[("DELEGATE_MODEL", "anthropic/x")]).unwrap();
        assert!(unset.base_domain.is_none());
    }

    #[test]
    fn repository_limits_default_and_come_from_env_or_file() {
        let s = Settings::load(None, &[("DELEGATE_DATA_DIR", "/tmp/x")]).unwrap();
        assert_eq!(s.repo_limits().max_bytes, 1 << 30);
        assert_eq!(s.repo_limits().max_files, 200_000);
        let s = Settings::load(
            None,
            &[
                ("DELEGATE_MAX_REPO_BYTES", "1048576"),
                ("DELEGATE_MAX_REPO_FILES", "10"),
            ],
        )
        .unwrap();
        assert_eq!(s.max_repo_bytes, 1 << 20);
        assert_eq!(s.max_repo_files, 10);
        let err = Settings::load(None, &[("DELEGATE_MAX_REPO_BYTES", "0")]).unwrap_err();
        assert!(err.to_string().contains("DELEGATE_MAX_REPO_BYTES"), "{err}");
        let err = Settings::load(None, &[("DELEGATE_MAX_REPO_FILES", "many")]).unwrap_err();
        assert!(err.to_string().contains("DELEGATE_MAX_REPO_FILES"), "{err}");
        let f: FileSettings = toml::from_str("max_repo_bytes = 5\nmax_repo_files = 7\n").unwrap();
        assert_eq!((f.max_repo_bytes, f.max_repo_files), (Some(5), Some(7)));
        assert_eq!(s.local_keep_bytes, 5 << 30);
        let s = Settings::load(None, &[("DELEGATE_LOCAL_KEEP_BYTES", "1048576")]).unwrap();
        assert_eq!(s.keep_policy().max_bytes, 1 << 20);
        let err = Settings::load(None, &[("DELEGATE_LOCAL_KEEP_BYTES", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("DELEGATE_LOCAL_KEEP_BYTES"),
            "{err}"
        );
    }

    #[test]
    fn limits_are_off_by_default_and_checked_when_set() {
        let s = Settings::load(None, &[]).unwrap();
        assert_eq!(s.limits, LimitSettings::default());
        assert_eq!(s.max_queued_runs, 256);
        let s = Settings::load(
            None,
            &[
                ("DELEGATE_MAX_RUN_COST_USD", "0.5"),
                ("DELEGATE_WORKSPACE_DAILY_BUDGET_USD", "20"),
                ("DELEGATE_WORKSPACE_MAX_CONCURRENT_RUNS", "2"),
                ("DELEGATE_WORKSPACE_MAX_WARM_SANDBOXES", ""),
            ],
        )
        .unwrap();
        assert_eq!(s.limits.max_run_cost_usd, Some(0.5));
        assert_eq!(s.limits.workspace_daily_budget_usd, Some(20.0));
        assert_eq!(s.limits.workspace_max_concurrent_runs, Some(2));
        assert_eq!(s.limits.workspace_max_warm_sandboxes, None);
        for (name, bad) in [
            ("DELEGATE_MAX_RUN_COST_USD", "-1"),
            ("DELEGATE_MAX_RUN_COST_USD", "NaN"),
            ("DELEGATE_WORKSPACE_DAILY_BUDGET_USD", "0"),
            ("DELEGATE_WORKSPACE_MAX_CONCURRENT_RUNS", "0"),
            ("DELEGATE_WORKSPACE_MAX_WARM_SANDBOXES", "lots"),
        ] {
            let err = Settings::load(None, &[(name, bad)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={bad}: {err}");
        }
    }

    #[test]
    fn the_default_config_parses() {
        toml::from_str::<FileSettings>(DEFAULT_CONFIG).unwrap();
    }

    #[test]
    fn allowed_hosts_are_host_or_host_and_port_in_lower_case() {
        let s = Settings::load(
            None,
            &[("DELEGATE_ALLOWED_HOSTS", " Delegate:8080, ,mcp.internal")],
        )
        .unwrap();
        assert_eq!(s.allowed_hosts, ["delegate:8080", "mcp.internal"]);
        let s =
            Settings::load(None, &[("DELEGATE_ALLOWED_HOSTS", "[::1]:8080,[fd00::2]")]).unwrap();
        assert_eq!(s.allowed_hosts, ["[::1]:8080", "[fd00::2]"]);
        for bad in [
            "http://delegate:8080",
            "delegate:port",
            "delegate:",
            "delegate:99999",
            "user@delegate",
            "delegate/mcp",
        ] {
            let err = Settings::load(None, &[("DELEGATE_ALLOWED_HOSTS", bad)]).unwrap_err();
            assert!(
                err.to_string().contains("DELEGATE_ALLOWED_HOSTS"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Settings::load(None, &[("DELEGATE_BACKEND", "podman")]).unwrap_err();
        assert!(err.to_string().contains("DELEGATE_BACKEND"), "{err}");
        let err = Settings::load(None, &[("IDLE_TIMEOUT", "soon")]).unwrap_err();
        assert!(err.to_string().contains("IDLE_TIMEOUT"), "{err}");
    }

    #[test]
    fn kubernetes_settings_have_defaults_and_refuse_what_is_no_quantity() {
        let s = Settings::load(None, &[("DELEGATE_BACKEND", "kubernetes")]).unwrap();
        assert_eq!(s.backend, BackendChoice::Kubernetes);
        assert_eq!(s.kube.namespace, None);
        assert_eq!(s.kube.volume_size, "10Gi");
        assert_eq!(s.kube.cpu_request, "250m");
        assert_eq!(s.kube.service, "delegate");
        assert_eq!(s.kube.proxy_url, None);
        assert!(!s.kube.namespace_per_workspace);
        assert_eq!(s.kube.network_policy, None);
        let s = Settings::load(
            None,
            &[
                ("DELEGATE_K8S_NAMESPACE", "sandboxes"),
                ("DELEGATE_K8S_RUNTIME_CLASS", "gvisor"),
                ("DELEGATE_K8S_STORAGE_CLASS", ""),
                ("DELEGATE_K8S_VOLUME_SIZE", "20Gi"),
                (
                    "DELEGATE_K8S_PROXY_URL",
                    "http://delegate.sandboxes.svc:8080/v1",
                ),
                ("DELEGATE_K8S_NAMESPACE_PER_WORKSPACE", "true"),
                ("DELEGATE_K8S_NETWORK_POLICY", "delegate-sandboxes"),
            ],
        )
        .unwrap();
        assert_eq!(s.kube.namespace.as_deref(), Some("sandboxes"));
        assert!(s.kube.namespace_per_workspace);
        assert_eq!(s.kube.network_policy.as_deref(), Some("delegate-sandboxes"));
        assert_eq!(s.kube.runtime_class.as_deref(), Some("gvisor"));
        // Empty is unset: the cluster's default storage class.
        assert_eq!(s.kube.storage_class, None);
        assert_eq!(s.kube.volume_size, "20Gi");
        for (name, bad) in [
            ("DELEGATE_K8S_VOLUME_SIZE", "10 Gi"),
            ("DELEGATE_K8S_CPU_REQUEST", "1/2"),
        ] {
            let err = Settings::load(None, &[(name, bad)]).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn docker_networks_are_none_host_or_a_named_one_with_the_proxy_url() {
        let s = Settings::load(None, &[("DELEGATE_DATA_DIR", "/tmp/x")]).unwrap();
        assert_eq!(s.docker.network, DockerNetwork::None);
        assert_eq!(s.docker.image, DEFAULT_SANDBOX_IMAGE);
        let s = Settings::load(None, &[("DELEGATE_DOCKER_NETWORK", "host")]).unwrap();
        assert_eq!(s.docker.network, DockerNetwork::Host);
        // The default bridge would let sandboxes reach anything.
        for bad in ["bridge", "", "no such/net"] {
            let err = Settings::load(None, &[("DELEGATE_DOCKER_NETWORK", bad)]).unwrap_err();
            assert!(err.to_string().contains("DELEGATE_DOCKER_NETWORK"), "{err}");
        }
        let err = Settings::load(None, &[("DELEGATE_DOCKER_NETWORK", "delegate")]).unwrap_err();
        assert!(
            err.to_string().contains("DELEGATE_DOCKER_PROXY_URL"),
            "{err}"
        );
        let s = Settings::load(
            None,
            &[
                ("DELEGATE_DOCKER_NETWORK", "delegate"),
                ("DELEGATE_DOCKER_PROXY_URL", "http://delegate:8080/v1"),
            ],
        )
        .unwrap();
        assert_eq!(s.docker.network, DockerNetwork::Named("delegate".into()));
        let err = Settings::load(None, &[("DELEGATE_SANDBOX_CPUS", "0")]).unwrap_err();
        assert!(err.to_string().contains("DELEGATE_SANDBOX_CPUS"), "{err}");
    }

    #[test]
    fn sso_settings_default_to_the_public_url_and_hide_secrets() {
        let env = [
            ("DELEGATE_PUBLIC_URL", "https://d.example.com/"),
            ("OIDC_ISSUER_URL", "https://idp.example.com"),
            ("OIDC_CLIENT_ID", "delegate"),
            ("OIDC_CLIENT_SECRET", "oidc-very-secret"),
            ("GITHUB_CLIENT_ID", "gh-id"),
            ("GITHUB_CLIENT_SECRET", "gh-very-secret"),
        ];
        let s = Settings::load(None, &env).unwrap();
        assert_eq!(
            s.sso.redirect_base_url.as_deref(),
            Some("https://d.example.com")
        );
        let gh = s.sso.github.as_ref().unwrap();
        assert_eq!(gh.api_url, "https://api.github.com");
        assert_eq!(gh.oauth_url, "https://github.com");
        let debug = format!("{s:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        let err = Settings::load(None, &[("OIDC_CLIENT_ID", "x")]).unwrap_err();
        assert!(err.to_string().contains("OIDC_ISSUER_URL"), "{err}");
        let err = Settings::load(
            None,
            &[("GITHUB_CLIENT_ID", "x"), ("GITHUB_CLIENT_SECRET", "y")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("OIDC_REDIRECT_BASE_URL"), "{err}");
    }

    #[test]
    fn sso_allow_lists_are_lower_case_comma_lists() {
        let s = Settings::load(
            None,
            &[
                ("GITHUB_ALLOWED_ORGS", " My-Org, ,other_org "),
                (
                    "OIDC_ALLOWED_EMAIL_DOMAINS",
                    "@Example.com,corp.example.org",
                ),
            ],
        )
        .unwrap();
        assert_eq!(s.sso.github_allowed_orgs, ["my-org", "other_org"]);
        assert_eq!(
            s.sso.oidc_allowed_email_domains,
            ["example.com", "corp.example.org"]
        );
        let s = Settings::load(None, &[]).unwrap();
        assert!(s.sso.github_allowed_orgs.is_empty());
        let err =
            Settings::load(None, &[("OIDC_ALLOWED_EMAIL_DOMAINS", "a.com; b.com")]).unwrap_err();
        assert!(
            err.to_string().contains("OIDC_ALLOWED_EMAIL_DOMAINS"),
            "{err}"
        );
    }

    #[test]
    fn the_watch_ui_is_on_by_default_on_loopback_only() {
        let s = Settings::load(None, &[]).unwrap();
        assert_eq!(s.watch, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        for off in ["off", "false", "OFF", "0"] {
            let s = Settings::load(None, &[("DELEGATE_WATCH", off)]).unwrap();
            assert_eq!(s.watch, None, "{off}");
        }
        let s = Settings::load(
            None,
            &[
                ("DELEGATE_WATCH", "on"),
                ("DELEGATE_WATCH_ADDR", "[::1]:7001"),
            ],
        )
        .unwrap();
        assert_eq!(s.watch, Some("[::1]:7001".parse().unwrap()));
        let err = Settings::load(None, &[("DELEGATE_WATCH_ADDR", "0.0.0.0:7001")]).unwrap_err();
        assert!(
            err.to_string().contains("DELEGATE_WATCH_ADDR") && err.to_string().contains("loopback"),
            "{err}"
        );
        let err = Settings::load(None, &[("DELEGATE_WATCH", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("DELEGATE_WATCH"), "{err}");
        let file: FileSettings = toml::from_str("watch = \"off\"").unwrap();
        assert!(matches!(file.watch, Some(Switch(false))));
        let file: FileSettings = toml::from_str("watch = true").unwrap();
        assert!(matches!(file.watch, Some(Switch(true))));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let s = Settings::load(
            None,
            &[
                ("DELEGATE_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,::1"),
                ("DELEGATE_METRICS_PUBLIC", "true"),
            ],
        )
        .unwrap();
        assert!(s.metrics_public);
        let trusted = |ip: &str| {
            s.trusted_proxies
                .iter()
                .any(|r| r.contains(ip.parse().unwrap()))
        };
        assert!(trusted("10.1.2.3"));
        assert!(trusted("::ffff:10.9.9.9"));
        assert!(trusted("192.168.1.7"));
        assert!(!trusted("192.168.1.8"));
        assert!(trusted("::1"));
        assert!(!trusted("11.0.0.1"));
        assert!(!trusted("127.0.0.1"));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.1/x"] {
            let err = Settings::load(None, &[("DELEGATE_TRUSTED_PROXIES", bad)]).unwrap_err();
            assert!(
                err.to_string().contains("DELEGATE_TRUSTED_PROXIES"),
                "{bad}: {err}"
            );
        }
        assert!(!Settings::load(None, &[]).unwrap().metrics_public);
    }
}

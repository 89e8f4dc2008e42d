//! Typed settings: built-in defaults, then an optional TOML file, then environment variables (env
//! wins). Names follow `DESIGN.md` ("Configuration"); `delegate default-config` prints a commented
//! example of the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Docker if a Docker socket answers, else process.
    Auto,
    Process,
    Docker,
    Kubernetes,
}

/// How the process backend isolates opencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// bubblewrap: every namespace unshared, uid 1000, no capabilities, no network but the proxy.
    Bwrap,
    /// No isolation at all: opencode runs as you, on your files. Only when asked for explicitly.
    None,
}

/// How containers of the docker backend reach delegate's proxy (and the server their opencode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerNetwork {
    /// No network at all: the proxy is a unix socket bound into the container and relayed to
    /// 127.0.0.1:4000 inside; opencode serve is reached the same way. Needs the server and the
    /// Docker Engine on one machine (bind mounts of the data dir).
    None,
    /// The host's network: the proxy on a loopback port. One box only; the sandbox can reach
    /// everything the host's loopback offers.
    Host,
    /// A named Docker network the server is also on; sandboxes reach the proxy at
    /// `DELEGATE_DOCKER_PROXY_URL` and the server reaches opencode at `delegate-{id}:4096`.
    Named(String),
}

impl std::str::FromStr for DockerNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(DockerNetwork::None),
            "host" => Ok(DockerNetwork::Host),
            "" | "bridge" | "default" => Err(format!(
                "{s:?}: use none, host, or the name of a network the server is on                  (the default bridge would let sandboxes reach anything)"
            )),
            name if name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
            {
                Ok(DockerNetwork::Named(name.to_string()))
            }
            other => Err(format!("{other:?} is not a Docker network name")),
        }
    }
}

/// The docker backend's settings.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// `DOCKER_HOST` (unix:///path or tcp://host:port); the default socket when unset.
    pub host: Option<String>,
    /// `DELEGATE_SANDBOX_IMAGE`: built by `sandbox-image/build`.
    pub image: String,
    /// `DELEGATE_DOCKER_NETWORK` [none].
    pub network: DockerNetwork,
    /// `DELEGATE_DOCKER_PROXY_URL`: the proxy as containers on a named network see it
    /// (e.g. `http://delegate:8080/v1`); required with a named network.
    pub proxy_url: Option<String>,
    /// `DELEGATE_SANDBOX_CPUS` [2]: CPUs per sandbox.
    pub cpus: f64,
}

/// The sandbox image `sandbox-image/build` makes (opencode's version is the tag).
pub const DEFAULT_SANDBOX_IMAGE: &str = "delegate-sandbox:1.18.33";

/// Who may create an account with a password (`POST /api/auth/signup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone who reaches the server.
    Open,
    /// Only with an invite code from a workspace maintainer or owner.
    Invite,
    /// Nobody; accounts come from `delegate user create` (or single sign-on).
    Disabled,
}

/// How delegate reaches the real Anthropic API. Only the server process ever holds this.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `ANTHROPIC_BASE_URL`, without `/v1`.
    pub base_url: String,
    pub credential: Option<UpstreamCredential>,
}

#[derive(Debug, Clone)]
pub enum UpstreamCredential {
    /// `ANTHROPIC_API_KEY`, sent as `x-api-key`.
    ApiKey(Secret),
    /// `ANTHROPIC_AUTH_TOKEN`, sent as `Authorization: Bearer`.
    AuthToken(Secret),
}

/// The first label of a sandbox's own host: `oc-{id}.BASE_DOMAIN` is the opencode gateway.
pub const SANDBOX_HOST_PREFIX: &str = "oc-";

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; secret because it may carry a password.
    pub database_url: Secret,
    pub backend: BackendChoice,
    pub public_url: Option<String>,
    pub idle_timeout: Duration,
    pub upstream: Upstream,
    /// `provider/model` handed to opencode.
    pub model: String,
    /// The small model opencode uses for titles.
    pub small_model: String,
    /// The opencode binary (process backend); `opencode` on PATH when unset.
    pub opencode_bin: Option<PathBuf>,
    pub isolation: Isolation,
    /// The delegate binary bound into bubblewrap sandboxes to relay the proxy socket; this
    /// executable when unset.
    pub relay_bin: Option<PathBuf>,
    pub sandbox_memory_mb: u64,
    pub sandbox_pids_max: u64,
    pub docker: DockerSettings,
    pub max_concurrent_runs: usize,
    pub default_timeout: Duration,
    /// The largest diff a result carries; longer ones are cut and flagged `diff_truncated`.
    pub diff_max_bytes: usize,
    /// Who may sign up with a password (`DELEGATE_REGISTRATION`).
    pub registration: Registration,
    /// Single sign-on (generic OIDC, GitHub); each provider is on when its client id is set.
    pub sso: SsoSettings,
    /// `BASE_DOMAIN`: sandboxes' opencode opens at `oc-{id}.{base_domain}` through the gateway
    /// (`localhost:8080` works locally: browsers resolve `*.localhost` to loopback). Unset: no
    /// gateway.
    pub base_domain: Option<String>,
    /// `BASE_SCHEME` [http]: the scheme of the gateway's URLs (`https` behind TLS).
    pub base_scheme: String,
}

/// Single sign-on settings. Callbacks are `{redirect_base_url}/api/auth/oidc/callback` and
/// `{redirect_base_url}/api/auth/github/callback`.
#[derive(Debug, Clone, Default)]
pub struct SsoSettings {
    /// `OIDC_REDIRECT_BASE_URL` [DELEGATE_PUBLIC_URL], without a trailing slash.
    pub redirect_base_url: Option<String>,
    /// `OIDC_ISSUER_URL` + `OIDC_CLIENT_ID` + `OIDC_CLIENT_SECRET`.
    pub oidc: Option<OidcSettings>,
    /// `GITHUB_CLIENT_ID` + `GITHUB_CLIENT_SECRET` (+ `GITHUB_API_URL`, `GITHUB_OAUTH_URL`).
    pub github: Option<GithubSettings>,
}

/// A generic OpenID Connect provider, found by discovery from its issuer.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer_url: String,
    pub client_id: String,
    /// `None` for a public client (PKCE only).
    pub client_secret: Option<Secret>,
}

/// GitHub OAuth (or GitHub Enterprise, or a local stand-in speaking GitHub's wire format).
#[derive(Debug, Clone)]
pub struct GithubSettings {
    pub client_id: String,
    pub client_secret: Secret,
    /// `GITHUB_API_URL` [https://api.github.com].
    pub api_url: String,
    /// `GITHUB_OAUTH_URL` [https://github.com]: `/login/oauth/authorize` and `/login/oauth/access_token`.
    pub oauth_url: String,
}

/// The optional settings file; every field optional, same names as the env vars in lower case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<Secret>,
    backend: Option<BackendChoice>,
    public_url: Option<String>,
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
    sandbox_image: Option<String>,
    sandbox_cpus: Option<f64>,
    docker_network: Option<String>,
    docker_proxy_url: Option<String>,
    max_concurrent_runs: Option<usize>,
    default_timeout: Option<String>,
    diff_max_bytes: Option<usize>,
    registration: Option<Registration>,
    oidc_redirect_base_url: Option<String>,
    oidc_issuer_url: Option<String>,
    oidc_client_id: Option<String>,
    oidc_client_secret: Option<Secret>,
    github_client_id: Option<String>,
    github_client_secret: Option<Secret>,
    github_api_url: Option<String>,
    github_oauth_url: Option<String>,
    base_domain: Option<String>,
    base_scheme: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("settings file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Looks up one environment variable; injected so tests need not touch the process environment.
pub trait EnvSource {
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
    /// `{scheme}://oc-{id}.{base_domain}`, where a browser finds a sandbox's opencode; `None`
    /// without `BASE_DOMAIN`.
    pub fn sandbox_origin(&self, sandbox_id: &str) -> Option<String> {
        let domain = self.base_domain.as_deref()?;
        Some(format!(
            "{}://{SANDBOX_HOST_PREFIX}{sandbox_id}.{domain}",
            self.base_scheme
        ))
    }

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
            network: docker_network
                .parse()
                .map_err(|message| SettingsError::Invalid {
                    name: "DELEGATE_DOCKER_NETWORK",
                    message,
                })?,
            proxy_url: env.var("DELEGATE_DOCKER_PROXY_URL").or(f.docker_proxy_url),
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

        Ok(Settings {
            base_domain,
            base_scheme,
            listen,
            database_url,
            backend,
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
            docker,
            max_concurrent_runs: number(
                "DELEGATE_MAX_CONCURRENT_RUNS",
                f.max_concurrent_runs.map(|n| n as u64),
                16,
            )? as usize,
            default_timeout,
            diff_max_bytes: number(
                "DELEGATE_DIFF_MAX_BYTES",
                f.diff_max_bytes.map(|n| n as u64),
                256 * 1024,
            )? as usize,
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
    })
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

/// The commented example printed by `delegate default-config`.
pub const DEFAULT_CONFIG: &str = r#"# delegate settings. Every key is optional; environment variables of the same name in upper
# case (shown after each key) win over this file. Pass the file with --config or DELEGATE_CONFIG.

# Where `delegate serve` listens.                                   DELEGATE_LISTEN
listen = "127.0.0.1:8080"
# Where the SQLite database, sandboxes and logs live.                DELEGATE_DATA_DIR
# data_dir = "~/.local/share/delegate"
# sqlite://PATH (default: delegate.db in data_dir) or postgres://.   DATABASE_URL
# database_url = "postgres://delegate@127.0.0.1/delegate"
# auto (docker if a Docker socket answers, else process) | process | docker | kubernetes.
backend = "auto"                                                   # DELEGATE_BACKEND
# How browsers and sandboxes reach this server.                     DELEGATE_PUBLIC_URL
# public_url = "https://delegate.example.com"
# A warm sandbox with no runs and no viewers is paused after this.  IDLE_TIMEOUT
idle_timeout = "30m"

# The real model API. Only this process holds the key; sandboxes get a per-sandbox token for
# delegate's proxy instead.
anthropic_base_url = "https://api.anthropic.com"                   # ANTHROPIC_BASE_URL (no /v1)
# anthropic_api_key = "sk-ant-..."                                 # ANTHROPIC_API_KEY
# anthropic_auth_token = "..."                                     # ANTHROPIC_AUTH_TOKEN
model = "anthropic/claude-sonnet-4-5"                              # DELEGATE_MODEL
small_model = "anthropic/claude-haiku-4-5"                         # DELEGATE_SMALL_MODEL

# Process backend: the opencode binary (default: opencode on PATH).  DELEGATE_OPENCODE_BIN
# opencode_bin = "/usr/local/bin/opencode"
# bwrap (bubblewrap) or none (no isolation at all; only if you mean it).  DELEGATE_ISOLATION
isolation = "bwrap"
sandbox_memory_mb = 4096                                           # DELEGATE_SANDBOX_MEMORY_MB
sandbox_pids_max = 1024                                            # DELEGATE_SANDBOX_PIDS_MAX

# Docker backend (DOCKER_HOST picks the engine). The image comes from sandbox-image/build.
sandbox_image = "delegate-sandbox:1.18.33"                         # DELEGATE_SANDBOX_IMAGE
sandbox_cpus = 2.0                                                 # DELEGATE_SANDBOX_CPUS
# none: no network, the proxy through a unix socket (server and engine on one machine) |
# host: the host's network, proxy on loopback (one box) | NAME: a network the server is on too.
docker_network = "none"                                            # DELEGATE_DOCKER_NETWORK
# With a named network: the proxy as containers see it.            DELEGATE_DOCKER_PROXY_URL
# docker_proxy_url = "http://delegate:8080/v1"
max_concurrent_runs = 16                                           # DELEGATE_MAX_CONCURRENT_RUNS
default_timeout = "900s"                                           # DELEGATE_DEFAULT_TIMEOUT
diff_max_bytes = 262144                                            # DELEGATE_DIFF_MAX_BYTES

# Password sign-up: open | invite (needs a code from a workspace maintainer) | disabled.
registration = "invite"                                            # DELEGATE_REGISTRATION

# Single sign-on. Callbacks: {base}/api/auth/oidc/callback and {base}/api/auth/github/callback.
# An account is linked by email only when the provider says the email is verified.
# oidc_redirect_base_url = "https://delegate.example.com"          # OIDC_REDIRECT_BASE_URL (default: public_url)
# oidc_issuer_url = "https://accounts.example.com"                 # OIDC_ISSUER_URL
# oidc_client_id = "delegate"                                      # OIDC_CLIENT_ID
# oidc_client_secret = "..."                                       # OIDC_CLIENT_SECRET
# github_client_id = "Iv1...."                                     # GITHUB_CLIENT_ID
# github_client_secret = "..."                                     # GITHUB_CLIENT_SECRET
# github_api_url = "https://api.github.com"                        # GITHUB_API_URL
# github_oauth_url = "https://github.com"                          # GITHUB_OAUTH_URL
"#;

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_default_config_parses() {
        toml::from_str::<FileSettings>(DEFAULT_CONFIG).unwrap();
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Settings::load(None, &[("DELEGATE_BACKEND", "podman")]).unwrap_err();
        assert!(err.to_string().contains("DELEGATE_BACKEND"), "{err}");
        let err = Settings::load(None, &[("IDLE_TIMEOUT", "soon")]).unwrap_err();
        assert!(err.to_string().contains("IDLE_TIMEOUT"), "{err}");
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
}

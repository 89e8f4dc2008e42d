//! Typed settings: built-in defaults, then an optional TOML file, then environment variables (env
//! wins). Their names are a contract (the README's settings table); `delegate default-config`
//! prints a commented example of the file.
//!
//! This module holds the types; [`load`](Settings::load) (env and file parsing) is in `load.rs`,
//! the commented example in `default_config.rs`.

mod default_config;
mod load;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use default_config::DEFAULT_CONFIG;
pub use load::{EnvSource, ProcessEnv, SettingsError, parse_duration, parse_git_host};

/// The 32-byte key that seals workspace secrets; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl std::str::FromStr for SecretKey {
    type Err = String;

    /// 32 bytes as 64 hex digits or as base64 (standard or URL-safe, padded or not).
    fn from_str(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ]
            .iter()
            .find_map(|e| e.decode(text).ok())
        };
        match bytes.map(<[u8; 32]>::try_from) {
            Some(Ok(key)) => Ok(SecretKey(key)),
            Some(Err(v)) => Err(format!(
                "must be 32 bytes, this is {} (make one with `openssl rand -base64 32`)",
                v.len()
            )),
            None => Err(
                "must be 32 bytes as 64 hex digits or base64 (make one with `openssl rand \
                 -base64 32`)"
                    .into(),
            ),
        }
    }
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value so that `Debug` never shows it.
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

/// Which sandbox backend runs sandboxes (`DELEGATE_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Docker if a Docker socket answers, else process.
    Auto,
    /// Local processes under bubblewrap.
    Process,
    /// Docker containers, one per sandbox.
    Docker,
    /// Kubernetes pods, one per sandbox run or warm sandbox (see [`KubeSettings`]).
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

/// Whether a process sandbox whose memory, pids and CPU limits cannot be applied (no usable
/// cgroups on this host, or no permission) may start anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SandboxLimits {
    /// The sandbox refuses to start, saying why.
    Required,
    /// The sandbox starts without limits, with a warning in the log. `--isolation none` implies
    /// this: an unconfined sandbox has no limits to insist on.
    Optional,
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

/// Budgets and quotas: each is off when unset. A workspace's maintainers can set their own
/// (`PUT /api/workspaces/{ws}/limits`), which replace these defaults for that workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitSettings {
    /// `DELEGATE_MAX_RUN_COST_USD`: a run's `max_cost_usd` when the caller gives none.
    pub max_run_cost_usd: Option<f64>,
    /// `DELEGATE_WORKSPACE_DAILY_BUDGET_USD`: what a workspace's runs may spend per UTC day.
    pub workspace_daily_budget_usd: Option<f64>,
    /// `DELEGATE_WORKSPACE_MAX_CONCURRENT_RUNS`: a workspace's runs at once; more wait in
    /// `queued`.
    pub workspace_max_concurrent_runs: Option<u64>,
    /// `DELEGATE_WORKSPACE_MAX_WARM_SANDBOXES`: a workspace's warm sandboxes (paused ones
    /// count); one more is refused with a `limit` error.
    pub workspace_max_warm_sandboxes: Option<u64>,
}

/// The docker backend's settings.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// `DOCKER_HOST` (unix:///path or tcp://host:port); the default socket when unset.
    pub host: Option<String>,
    /// `DELEGATE_SANDBOX_IMAGE`: built by `sandbox-image/build`.
    pub image: String,
    /// `DELEGATE_SANDBOX_IMAGES` (comma list): further images a run or sandbox may ask for
    /// with `image`; the default image is always allowed.
    pub images: Vec<String>,
    /// `DELEGATE_DOCKER_NETWORK` (default `none`).
    pub network: DockerNetwork,
    /// `DELEGATE_DOCKER_PROXY_URL`: the proxy as containers on a named network see it
    /// (e.g. `http://delegate:8080/v1`); required with a named network.
    pub proxy_url: Option<String>,
    /// `DELEGATE_DOCKER_DIR`: the host side of docker sandboxes (work dir mirrors, sockets
    /// bound into containers); `DATA_DIR/docker` when unset. Servers that share it (and the
    /// engine) serve one another's sandboxes; otherwise a sandbox is reached through the server
    /// that holds it.
    pub dir: Option<PathBuf>,
    /// `DELEGATE_SANDBOX_CPUS` (default `2`): CPUs per sandbox (containers, and process
    /// sandboxes through their cgroup).
    pub cpus: f64,
}

/// The kubernetes backend's settings (`DELEGATE_K8S_*`). The image, memory, pids and CPU limits
/// are the docker backend's (`DELEGATE_SANDBOX_*`).
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// `DELEGATE_K8S_NAMESPACE`: where sandboxes live (one per installation); the client
    /// config's namespace when unset (in a cluster: the server's own).
    pub namespace: Option<String>,
    /// `DELEGATE_K8S_KUBECONFIG`: the kubeconfig file to use; unset: `KUBECONFIG`, then
    /// `~/.kube/config`, then the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// `DELEGATE_K8S_RUNTIME_CLASS`: the sandbox pods' `runtimeClassName` (e.g. `gvisor`).
    pub runtime_class: Option<String>,
    /// `DELEGATE_K8S_STORAGE_CLASS`: the storage class of sandboxes' volume claims; the
    /// cluster's default when unset.
    pub storage_class: Option<String>,
    /// `DELEGATE_K8S_VOLUME_SIZE` (default `10Gi`): the size of a sandbox's work volume claim
    /// (its home claim is a tenth of it, at least 1Gi).
    pub volume_size: String,
    /// `DELEGATE_K8S_CPU_REQUEST` (default `250m`): the CPU a sandbox pod requests; its limit is
    /// `DELEGATE_SANDBOX_CPUS` and its memory request equals its limit.
    pub cpu_request: String,
    /// `DELEGATE_K8S_SERVICE` (default `delegate`): the server's Service, through which pods
    /// reach the model proxy.
    pub service: String,
    /// `DELEGATE_K8S_PROXY_URL`: the proxy as pods see it; unset:
    /// `http://SERVICE.NAMESPACE.svc:PORT/v1` with the listen port. `loopback` serves the proxy
    /// on a loopback port of this host instead, for pods on the host's network (a one-node test
    /// cluster).
    pub proxy_url: Option<String>,
    /// `DELEGATE_K8S_NAMESPACE_PER_WORKSPACE` (default `false`): a sandbox's objects go to
    /// `NAMESPACE-<workspace id>` (made on first use) rather than to `NAMESPACE` itself.
    pub namespace_per_workspace: bool,
    /// `DELEGATE_K8S_NETWORK_POLICY`: with a namespace per workspace, the NetworkPolicy in
    /// `NAMESPACE` (the chart's sandbox policy) copied into each workspace namespace as it is
    /// made; unset: none is copied.
    pub network_policy: Option<String>,
    /// `DELEGATE_K8S_EGRESS_URL`: the egress listener (`DELEGATE_EGRESS_LISTEN`) as pods see
    /// it, `http://HOST:PORT`; unset: `http://SERVICE.NAMESPACE.svc:PORT` with the listener's
    /// port. `loopback`: the listener's own address, for pods on the host's network. Without
    /// the listener, egress policies are refused on this backend.
    pub egress_url: Option<String>,
}

/// The sandbox image `sandbox-image/build` makes (opencode's version is the tag).
pub const DEFAULT_SANDBOX_IMAGE: &str = "delegate-sandbox:1.18.33";

/// `DELEGATE_WARM_POOL`'s default: off (see BENCHMARKS.md, "Warm pool", for what an idle pooled
/// sandbox holds).
pub const DEFAULT_WARM_POOL: usize = 0;
/// The largest `DELEGATE_WARM_POOL`: each idle entry holds an `opencode serve`.
pub const MAX_WARM_POOL: usize = 32;
/// `DELEGATE_WARM_POOL_IDLE`'s default.
pub const DEFAULT_WARM_POOL_IDLE: Duration = Duration::from_secs(600);

/// Who may create an account with a password (`POST /api/auth/signup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone who reaches the server.
    Open,
    /// Only with an invite code from a workspace maintainer or owner.
    Invite,
    /// Nobody; accounts come from `delegate user create` (single sign-on signs in existing ones only).
    Disabled,
}

/// How delegate reaches the real Anthropic API. Only the server process ever holds this.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `ANTHROPIC_BASE_URL`, without `/v1`.
    pub base_url: String,
    /// The key or token to send upstream; `None` sends none (for an upstream that needs none).
    pub credential: Option<UpstreamCredential>,
}

/// The credential the proxy adds to upstream requests in place of the sandbox's token.
#[derive(Debug, Clone)]
pub enum UpstreamCredential {
    /// `ANTHROPIC_API_KEY`, sent as `x-api-key`.
    ApiKey(Secret),
    /// `ANTHROPIC_AUTH_TOKEN`, sent as `Authorization: Bearer`.
    AuthToken(Secret),
}

/// The first label of a sandbox's own host: `oc-{id}.BASE_DOMAIN` is the opencode gateway.
pub const SANDBOX_HOST_PREFIX: &str = "oc-";

/// Everything the server is configured with; see [`Settings::load`] for the sources.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DELEGATE_LISTEN` (default `127.0.0.1:8080`): where the server listens (`main` binds it).
    pub listen: SocketAddr,
    /// `DELEGATE_DATA_DIR` (default: `delegate` in the XDG data dir): the database, sandboxes'
    /// files, the instance id.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; secret because it may carry a password.
    pub database_url: Secret,
    /// `DELEGATE_BACKEND` (default `auto`).
    pub backend: BackendChoice,
    /// `DELEGATE_PUBLIC_URL`: how browsers and sandboxes reach the server (links, `watch_url`).
    pub public_url: Option<String>,
    /// `DELEGATE_ALLOWED_HOSTS` (comma-separated `host[:port]`; default none): further `Host`
    /// names `/mcp` answers to besides loopback and the public URL's host, e.g. the service name a
    /// client beside the server in a compose network uses. Everything else is refused (DNS
    /// rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// `IDLE_TIMEOUT` (default `30m`): a warm sandbox without activity this long is paused.
    pub idle_timeout: Duration,
    /// `ANTHROPIC_*`: where the proxy forwards model calls.
    pub upstream: Upstream,
    /// `provider/model` handed to opencode.
    pub model: String,
    /// The small model opencode uses for titles.
    pub small_model: String,
    /// The opencode binary (process backend); `opencode` on PATH when unset.
    pub opencode_bin: Option<PathBuf>,
    /// `DELEGATE_ISOLATION` (default `bwrap`): the process backend's isolation.
    pub isolation: Isolation,
    /// The delegate binary bound into bubblewrap sandboxes to relay the proxy socket; this
    /// executable when unset.
    pub relay_bin: Option<PathBuf>,
    /// `DELEGATE_SANDBOX_MEMORY_MB` (default `4096`): memory limit per sandbox.
    pub sandbox_memory_mb: u64,
    /// `DELEGATE_SANDBOX_PIDS_MAX` (default `1024`): process limit per sandbox.
    pub sandbox_pids_max: u64,
    /// `DELEGATE_SANDBOX_LIMITS` (default `required`): whether a process sandbox that cannot be
    /// limited (memory, pids, CPU through cgroups) refuses to start.
    pub sandbox_limits: SandboxLimits,
    /// The docker backend's settings.
    pub docker: DockerSettings,
    /// The kubernetes backend's settings.
    pub kube: KubeSettings,
    /// `DELEGATE_MAX_CONCURRENT_RUNS` (default `16`): more runs at once wait in `queued`.
    pub max_concurrent_runs: usize,
    /// `DELEGATE_MAX_QUEUED_RUNS` (default `256`): the most runs waiting for a slot on this
    /// server; past it a run is refused with a `limit` error.
    pub max_queued_runs: usize,
    /// `DELEGATE_WARM_POOL` (default [`DEFAULT_WARM_POOL`], at most [`MAX_WARM_POOL`]): how many
    /// idle sandboxes of the server's backend and default image are kept with `opencode serve`
    /// up, for ephemeral runs to claim instead of starting a fresh one. `0` turns the pool off.
    pub warm_pool: usize,
    /// `DELEGATE_WARM_POOL_IDLE` (default `10m`): with no run claiming a pooled sandbox this
    /// long, the pool is emptied; the next run that could have used it fills it again.
    pub warm_pool_idle: Duration,
    /// Spending and capacity limits: the server-wide defaults of every workspace's limits.
    pub limits: LimitSettings,
    /// `DELEGATE_DEFAULT_TIMEOUT` (default `15m`): a run's time limit when the caller gives none.
    pub default_timeout: Duration,
    /// The largest diff a result carries; longer ones are cut and flagged `diff_truncated`.
    pub diff_max_bytes: usize,
    /// `DELEGATE_HEARTBEAT_SECS` (default `15`): while a run is active, an MCP client that sent
    /// a progress token gets a progress notification at least this often, even when the agent
    /// is silent.
    pub heartbeat: Duration,
    /// `DELEGATE_MAX_REPO_BYTES` (default 1 GiB): the largest repository snapshot a sandbox may
    /// start from (an upload, or a tree's file content).
    pub max_repo_bytes: u64,
    /// `DELEGATE_MAX_REPO_FILES` (default 200000): the most files a repository snapshot may hold.
    pub max_repo_files: u64,
    /// `DELEGATE_RETAIN_RUNS_DAYS` (default 30): runs that ended longer ago than this are pruned
    /// in the background with their events, usage rows and files; 0 keeps them forever. On the
    /// caller's machine, the snapshots runs started from go after as many days unused.
    pub retain_runs_days: u64,
    /// `DELEGATE_LOCAL_KEEP_BYTES` (default 5 GiB): the most the snapshots kept on the caller's
    /// machine (the data dir's `local/`, for applying a run's change later) may take; over it
    /// the least recently used go first.
    pub local_keep_bytes: u64,
    /// Who may sign up with a password (`DELEGATE_REGISTRATION`).
    pub registration: Registration,
    /// Single sign-on (generic OIDC, GitHub); each provider is on when its client id is set.
    pub sso: SsoSettings,
    /// `BASE_DOMAIN`: sandboxes' opencode opens at `oc-{id}.{base_domain}` through the gateway
    /// (`localhost:8080` works locally: browsers resolve `*.localhost` to loopback). Unset: no
    /// gateway.
    pub base_domain: Option<String>,
    /// `BASE_SCHEME` (default `http`): the scheme of the gateway's URLs (`https` behind TLS).
    pub base_scheme: String,
    /// `DELEGATE_TRUSTED_PROXIES` (comma list of addresses or CIDR ranges, default none): reverse
    /// proxies whose `X-Forwarded-For` names the client (per-client limits); from anyone else the
    /// header is ignored.
    pub trusted_proxies: Vec<IpRange>,
    /// `DELEGATE_METRICS_PUBLIC` (default `false`): serve `/metrics` without a token.
    pub metrics_public: bool,
    /// `DELEGATE_PROXY_PUBLIC` (default `false`): serve the model proxy at `/v1` on the listener,
    /// for sandboxes run outside delegate (`delegate token proxy`). The docker backend on a named
    /// network serves it there regardless; every other backend reaches it on its own socket.
    pub proxy_public: bool,
    /// `DELEGATE_GIT_ALLOWED_HOSTS` (comma-separated `host[:port]`; default none): on-prem git
    /// servers that `repo` URLs may reach although they resolve to private addresses, over
    /// `http://` too.
    pub git_allowed_hosts: Vec<GitHost>,
    /// Egress policies and limits (`[egress]`, `DELEGATE_EGRESS_*`).
    pub egress: EgressSettings,
    /// `DELEGATE_SECRET_KEY` (32 bytes, base64 or hex): encrypts workspace secrets at rest.
    /// Without it secrets cannot be stored or used.
    pub secret_key: Option<SecretKey>,
    /// `DELEGATE_WATCH` (default on; `off`/`false` disables) and `DELEGATE_WATCH_ADDR` (default
    /// `127.0.0.1:0`, loopback only): where `delegate mcp` and `delegate run` (embedded) serve
    /// the web UI's run page, so each run's `watch_url` can be opened; `None` when off.
    pub watch: Option<SocketAddr>,
}

/// An address or a network in CIDR form (`10.0.0.5`, `10.1.0.0/16`, `fd00::/8`), as an admin
/// writes it (trusted proxies, egress `allow_addresses`); a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `ADDR` or `ADDR/PREFIX`; the address must be the network's first (no host bits).
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or a CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let net = IpRange { addr, prefix };
        if bits(addr) & !mask(max, prefix) != 0 {
            return Err(format!(
                "{text:?}: host bits are set after the /{prefix}; write the network's first address"
            ));
        }
        Ok(net)
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address matches IPv4 networks.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let max = match (self.addr, ip) {
            (std::net::IpAddr::V4(_), std::net::IpAddr::V4(_)) => 32,
            (std::net::IpAddr::V6(_), std::net::IpAddr::V6(_)) => 128,
            _ => return false,
        };
        let m = mask(max, self.prefix);
        bits(ip) & m == bits(self.addr) & m
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn bits(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(max: u8, prefix: u8) -> u128 {
    let all: u128 = if max == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    if prefix == 0 {
        0
    } else {
        all & (all << (max - prefix))
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IpRange::parse(s.trim())
    }
}

/// A git server an admin trusts (one entry of `DELEGATE_GIT_ALLOWED_HOSTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHost {
    /// The host as a URL spells it after normalization: lower case, IPv6 in brackets.
    pub host: String,
    /// Only this port; any port when `None`.
    pub port: Option<u16>,
}

/// The egress proxy's settings. The policies are checked (patterns, addresses, names) when the
/// orchestrator starts, by `egress::Policies`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSettings {
    /// `DELEGATE_EGRESS_POLICIES` (JSON, replaces the file's) or `[egress.policies.NAME]`:
    /// the named policies besides the built-in `none` and `open`.
    #[serde(default)]
    pub policies: std::collections::BTreeMap<String, EgressPolicySettings>,
    /// `DELEGATE_EGRESS_DEFAULT` (default `none`): the policy of a sandbox when neither the
    /// request nor its workspace picks one.
    #[serde(default)]
    pub default: Option<String>,
    /// `DELEGATE_EGRESS_MAX_BYTES` (default 1 GiB): bytes through the egress proxy per run.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// `DELEGATE_EGRESS_LISTEN` (off by default): the egress proxy also listens on this TCP
    /// address, for sandboxes that cannot reach a socket of the server (kubernetes pods); each
    /// connection names its sandbox with `Proxy-Authorization` (its proxy token).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl EgressSettings {
    /// The default policy's name.
    pub fn default_policy(&self) -> &str {
        self.default.as_deref().unwrap_or("none")
    }

    /// The byte cap per run.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(1 << 30)
    }
}

/// One named egress policy as written in the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicySettings {
    /// Host patterns: `example.com`, `*.example.org` (subdomains), `example.com:8443`,
    /// `example.com:*`; without a port, 80 and 443.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Addresses or CIDR networks allowed although private, loopback or otherwise not public.
    #[serde(default)]
    pub allow_addresses: Vec<String>,
}

/// Single sign-on settings. Callbacks are `{redirect_base_url}/api/auth/oidc/callback` and
/// `{redirect_base_url}/api/auth/github/callback`.
#[derive(Debug, Clone, Default)]
pub struct SsoSettings {
    /// `OIDC_REDIRECT_BASE_URL` (default `DELEGATE_PUBLIC_URL`), without a trailing slash.
    pub redirect_base_url: Option<String>,
    /// `OIDC_ISSUER_URL` + `OIDC_CLIENT_ID` + `OIDC_CLIENT_SECRET`.
    pub oidc: Option<OidcSettings>,
    /// `GITHUB_CLIENT_ID` + `GITHUB_CLIENT_SECRET` (+ `GITHUB_API_URL`, `GITHUB_OAUTH_URL`).
    pub github: Option<GithubSettings>,
    /// `GITHUB_ALLOWED_ORGS` (comma list, lower case): when set, GitHub sign-in needs membership
    /// of one of these organizations (asked of GitHub with the user's token, scope `read:org`).
    pub github_allowed_orgs: Vec<String>,
    /// `OIDC_ALLOWED_EMAIL_DOMAINS` (comma list, lower case): when set, OIDC sign-in needs a
    /// verified email in one of these domains.
    pub oidc_allowed_email_domains: Vec<String>,
}

/// A generic OpenID Connect provider, found by discovery from its issuer.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// `OIDC_ISSUER_URL`: the provider's issuer, where discovery starts.
    pub issuer_url: String,
    /// `OIDC_CLIENT_ID`.
    pub client_id: String,
    /// `None` for a public client (PKCE only).
    pub client_secret: Option<Secret>,
}

/// GitHub OAuth (or GitHub Enterprise, or a local stand-in speaking GitHub's wire format).
#[derive(Debug, Clone)]
pub struct GithubSettings {
    /// `GITHUB_CLIENT_ID`.
    pub client_id: String,
    /// `GITHUB_CLIENT_SECRET`.
    pub client_secret: Secret,
    /// `GITHUB_API_URL` (default `https://api.github.com`).
    pub api_url: String,
    /// `GITHUB_OAUTH_URL` (default `https://github.com`): where `/login/oauth/authorize` and
    /// `/login/oauth/access_token` are.
    pub oauth_url: String,
}

impl Settings {
    /// The images a sandbox may ask for: the default first, then `DELEGATE_SANDBOX_IMAGES`.
    pub fn sandbox_images(&self) -> Vec<String> {
        let mut images = vec![self.docker.image.clone()];
        for image in &self.docker.images {
            if !images.contains(image) {
                images.push(image.clone());
            }
        }
        images
    }

    /// The caps on a repository snapshot (`DELEGATE_MAX_REPO_BYTES`, `DELEGATE_MAX_REPO_FILES`).
    pub fn repo_limits(&self) -> delegate_repo::Limits {
        delegate_repo::Limits {
            max_bytes: self.max_repo_bytes,
            max_files: self.max_repo_files,
        }
    }

    /// How long and how much of the snapshots runs started from stay on the caller's machine
    /// (`DELEGATE_RETAIN_RUNS_DAYS`, `DELEGATE_LOCAL_KEEP_BYTES`).
    pub fn keep_policy(&self) -> delegate_mcp::KeepPolicy {
        delegate_mcp::KeepPolicy {
            retain_days: self.retain_runs_days,
            max_bytes: self.local_keep_bytes,
        }
    }

    /// `{scheme}://oc-{id}.{base_domain}`, where a browser finds a sandbox's opencode; `None`
    /// without `BASE_DOMAIN`.
    pub fn sandbox_origin(&self, sandbox_id: &str) -> Option<String> {
        let domain = self.base_domain.as_deref()?;
        Some(format!(
            "{}://{SANDBOX_HOST_PREFIX}{sandbox_id}.{domain}",
            self.base_scheme
        ))
    }
}

#[cfg(test)]
mod ip_range_tests {
    use super::IpRange;
    use rstest::rstest;

    #[rstest]
    #[case("127.0.0.1", "127.0.0.1", true)]
    #[case("127.0.0.1", "127.0.0.2", false)]
    #[case("10.1.0.0/16", "10.1.200.3", true)]
    #[case("10.1.0.0/16", "10.2.0.1", false)]
    #[case("0.0.0.0/0", "8.8.8.8", true)]
    #[case("0.0.0.0/0", "::1", false)]
    #[case("127.0.0.1", "::ffff:127.0.0.1", true)]
    #[case("fd00::/8", "fd12::1", true)]
    #[case("fd00::/8", "fe80::1", false)]
    #[case("[::1]", "::1", true)]
    fn networks_contain(#[case] net: &str, #[case] ip: &str, #[case] inside: bool) {
        let net = IpRange::parse(net).unwrap();
        assert_eq!(net.contains(ip.parse().unwrap()), inside, "{net} {ip}");
    }

    #[rstest]
    #[case("localhost", "not an IP address")]
    #[case("10.0.0.0/33", "prefix length must be 0 to 32")]
    #[case("10.0.0.1/8", "host bits")]
    #[case("::1/129", "0 to 128")]
    #[case("10.0.0.0/x", "prefix length")]
    fn bad_networks_say_why(#[case] text: &str, #[case] why: &str) {
        let err = IpRange::parse(text).unwrap_err();
        assert!(err.contains(why), "{text}: {err}");
    }
}

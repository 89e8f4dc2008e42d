//! The commented example settings file `delegate default-config` prints; a test in `load.rs`
//! checks that it parses.

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
# More Host names /mcp answers to, e.g. a compose service name.     DELEGATE_ALLOWED_HOSTS
# allowed_hosts = ["delegate:8080"]                                # host (any port) or host:port
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
# required: a process sandbox that cannot get its memory, pids and CPU limits (cgroup v2 or v1)
# refuses to start; optional: it starts unlimited, with a warning.  DELEGATE_SANDBOX_LIMITS
sandbox_limits = "required"

# Docker backend (DOCKER_HOST picks the engine). The image comes from sandbox-image/build.
sandbox_image = "delegate-sandbox:1.18.33"                         # DELEGATE_SANDBOX_IMAGE
# Further images a run or sandbox may pick with `image` (comma list).  DELEGATE_SANDBOX_IMAGES
# sandbox_images = ["delegate-sandbox:rust"]
sandbox_cpus = 2.0                                                 # DELEGATE_SANDBOX_CPUS
# none: no network, the proxy through a unix socket (server and engine on one machine) |
# host: the host's network, proxy on loopback (one box) | NAME: a network the server is on too.
docker_network = "none"                                            # DELEGATE_DOCKER_NETWORK
# With a named network: the proxy as containers see it.            DELEGATE_DOCKER_PROXY_URL
# docker_proxy_url = "http://delegate:8080/v1"
# The host side of docker sandboxes; servers sharing it (and the engine) serve one another's
# sandboxes. Default: DATA_DIR/docker.                              DELEGATE_DOCKER_DIR
# docker_dir = "/srv/delegate/docker"
# Kubernetes backend (DELEGATE_BACKEND=kubernetes); image and limits as for docker above.
# k8s_namespace = "delegate"          # default: the client config's   DELEGATE_K8S_NAMESPACE
# k8s_kubeconfig = "/etc/delegate/kubeconfig"  # default: KUBECONFIG or in-cluster  DELEGATE_K8S_KUBECONFIG
# k8s_runtime_class = "gvisor"                                     # DELEGATE_K8S_RUNTIME_CLASS
# k8s_storage_class = "standard"      # default: the cluster's     DELEGATE_K8S_STORAGE_CLASS
k8s_volume_size = "10Gi"                                           # DELEGATE_K8S_VOLUME_SIZE
k8s_cpu_request = "250m"                                           # DELEGATE_K8S_CPU_REQUEST
k8s_service = "delegate"              # the server's Service       DELEGATE_K8S_SERVICE
# The proxy as pods see it (default http://SERVICE.NAMESPACE.svc:PORT/v1). DELEGATE_K8S_PROXY_URL
# k8s_proxy_url = "http://delegate.delegate.svc:8080/v1"
# A namespace per workspace, NAMESPACE-<workspace id>, made on first use.  DELEGATE_K8S_NAMESPACE_PER_WORKSPACE
k8s_namespace_per_workspace = false
# The NetworkPolicy in NAMESPACE copied into each workspace namespace.  DELEGATE_K8S_NETWORK_POLICY
# k8s_network_policy = "delegate-sandboxes"
# The egress listener as pods see it (default http://SERVICE.NAMESPACE.svc:PORT with egress's
# listen port). Egress policies on kubernetes need [egress] listen.  DELEGATE_K8S_EGRESS_URL
# k8s_egress_url = "http://delegate.delegate.svc:8081"
# The model proxy at /v1 on the listener too, for sandboxes run outside delegate (`delegate token
# proxy`, compose.headless.yml). Off: only a named docker network and kubernetes serve it there.
proxy_public = false                                               # DELEGATE_PROXY_PUBLIC
max_concurrent_runs = 16                                           # DELEGATE_MAX_CONCURRENT_RUNS
# More runs wait in `queued` (FIFO per workspace), up to this many; then they are refused.
max_queued_runs = 256                                              # DELEGATE_MAX_QUEUED_RUNS
# Idle sandboxes kept started (opencode serve up, empty work dir) for ephemeral runs with no env,
# secrets, setup, image or egress: they skip starting a sandbox. 0 = off; at most 32.
warm_pool = 0                                                      # DELEGATE_WARM_POOL
# With no run taking one this long, the pool empties; the next run fills it again.
warm_pool_idle = "10m"                                             # DELEGATE_WARM_POOL_IDLE
# Budgets and quotas, all off unless set; a workspace's maintainers may set their own.
# max_run_cost_usd = 2.0                   # a run's max_cost_usd default  DELEGATE_MAX_RUN_COST_USD
# workspace_daily_budget_usd = 50.0        # per UTC day   DELEGATE_WORKSPACE_DAILY_BUDGET_USD
# workspace_max_concurrent_runs = 4        # more queue    DELEGATE_WORKSPACE_MAX_CONCURRENT_RUNS
# workspace_max_warm_sandboxes = 10        # paused count  DELEGATE_WORKSPACE_MAX_WARM_SANDBOXES
default_timeout = "900s"                                           # DELEGATE_DEFAULT_TIMEOUT
diff_max_bytes = 262144                                            # DELEGATE_DIFF_MAX_BYTES
# MCP progress at least this often (seconds) during a run, even when the agent is silent.
heartbeat_secs = 15                                                # DELEGATE_HEARTBEAT_SECS
# `delegate mcp` and `delegate run` (embedded) serve the web UI's run page on loopback, so a
# run's watch_url opens it live (a one-time link); off: no listener, no watch_url.
watch = true                                                       # DELEGATE_WATCH
watch_addr = "127.0.0.1:0"                # loopback only; port 0 picks one  DELEGATE_WATCH_ADDR
# Repositories a sandbox starts from: the largest snapshot, and the most files in it.
max_repo_bytes = 1073741824                                        # DELEGATE_MAX_REPO_BYTES
max_repo_files = 200000                                            # DELEGATE_MAX_REPO_FILES
# Runs that ended more than this many days ago are pruned with their events, usage and files
# (0 keeps everything); on the caller's machine, so are the snapshots runs started from.
retain_runs_days = 30                                              # DELEGATE_RETAIN_RUNS_DAYS
# The snapshots kept on the caller's machine (data dir's local/, for `delegate apply` later) take
# at most this much; over it the least recently used go first.
local_keep_bytes = 5368709120                                      # DELEGATE_LOCAL_KEEP_BYTES
# `repo` URLs are cloned over https from public addresses only; these on-prem git servers
# (host[:port]) may also be private, and plain http.          DELEGATE_GIT_ALLOWED_HOSTS
# git_allowed_hosts = ["git.example.internal", "10.0.0.5:8080"]

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
# Only members of these GitHub organizations may sign in with GitHub (comma list).
# github_allowed_orgs = "my-org,other-org"                         # GITHUB_ALLOWED_ORGS
# Only verified emails in these domains may sign in with OIDC (comma list).
# oidc_allowed_email_domains = "example.com"                       # OIDC_ALLOWED_EMAIL_DOMAINS

# Egress: sandboxes have no network; HTTP_PROXY/HTTPS_PROXY inside point at delegate's egress
# proxy, which lets a connection through only when the sandbox's policy names the host, and
# only to public addresses unless allow_addresses lists the address. Built in: none (nothing;
# the default) and open (any host at a public address). List your team's real registries;
# the hosts below are placeholders. DELEGATE_EGRESS_POLICIES takes the same as JSON:
# {"packages": {"hosts": ["npm.internal.example", "*.pypi.internal.example"]}}
[egress]
default = "none"                                                   # DELEGATE_EGRESS_DEFAULT
max_bytes = 1073741824                                             # DELEGATE_EGRESS_MAX_BYTES (per run)
# The proxy on a TCP port too (off by default), for sandboxes on other machines (kubernetes pods);
# a connection names its sandbox by its proxy token in Proxy-Authorization.
# listen = "0.0.0.0:8081"                                          # DELEGATE_EGRESS_LISTEN
# [egress.policies.packages]                                       # DELEGATE_EGRESS_POLICIES
# hosts = ["npm.internal.example", "*.pypi.internal.example", "git.internal.example:443"]
# allow_addresses = ["10.20.0.0/16"]                               # private, yet allowed
"#;

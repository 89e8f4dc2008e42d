//! A `repo` given as a URL (over plain HTTP MCP there are no local files to snapshot): the server
//! clones it outside any sandbox and snapshots the clone, so the sandbox is seeded exactly as
//! from a caller's work tree.
//!
//! The URL is hostile input that makes the server open a connection, so before git runs:
//! only `https://` (and `http://` for hosts an admin lists in `DELEGATE_GIT_ALLOWED_HOSTS`), no
//! credentials in the URL, and the host resolved here and refused when any of its addresses is
//! not public (loopback, private, link-local, CGNAT, ULA, metadata, ...) unless the admin listed
//! it. git is then pinned to the address checked (`http.curloptResolve`), so DNS cannot answer
//! differently between the check and the connection, and it follows no redirects (a redirect
//! could point anywhere), speaks no other protocol, asks for no password and uses no proxy.
//!
//! A workspace may keep a git credential for the URL's host (`ClonePolicy::credential`): it
//! reaches git only as an `Authorization` header in git's environment (`GIT_CONFIG_COUNT`), never
//! in argv, the URL, the clone's `.git/config`, a message or the snapshot the sandbox gets.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use delegate_repo::git::Git;
use delegate_repo::{Base, Limits, RepoError, Snapshot};
use reqwest::Url;
use tokio::time::Instant;

use crate::egress::address::classify;
use crate::orchestrator::{GitCredential, host_key};
use crate::settings::{GitHost, Settings};

/// How long a clone may take, DNS to checkout, before it is stopped.
pub const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

/// git gives up on a connection that moves fewer than this many bytes a second...
const LOW_SPEED_BYTES: u32 = 1000;
/// ...for this many seconds.
const LOW_SPEED_SECS: u32 = 60;

/// What a URL clone may reach and for how long.
#[derive(Debug, Clone)]
pub struct ClonePolicy {
    /// Hosts that may resolve to non-public addresses and may be reached over `http://`.
    pub allowed_hosts: Vec<GitHost>,
    /// The whole clone's time limit; git is killed past it.
    pub timeout: Duration,
    /// The workspace's credential for the URL's host ([`credential_host`]), when it has one.
    pub credential: Option<GitCredential>,
}

impl Default for ClonePolicy {
    fn default() -> Self {
        ClonePolicy {
            allowed_hosts: Vec::new(),
            timeout: CLONE_TIMEOUT,
            credential: None,
        }
    }
}

impl ClonePolicy {
    /// The policy the settings give (`DELEGATE_GIT_ALLOWED_HOSTS`), with [`CLONE_TIMEOUT`].
    pub fn from_settings(settings: &Settings) -> Self {
        ClonePolicy {
            allowed_hosts: settings.git_allowed_hosts.clone(),
            timeout: CLONE_TIMEOUT,
            credential: None,
        }
    }

    /// This policy with `credential` sent to the URL's host.
    pub fn with_credential(mut self, credential: Option<GitCredential>) -> Self {
        self.credential = credential;
        self
    }

    /// Whether the admin listed `host` (as a URL spells it) on `port`.
    fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed_hosts
            .iter()
            .any(|h| h.host == host && h.port.is_none_or(|p| p == port))
    }
}

/// Why a URL could not be cloned. [`CloneError::kind`] is the error code a result or the REST
/// envelope names; no message ever carries credentials (URLs with them are refused unread).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloneError {
    /// The URL or ref is malformed or not allowed; nothing was fetched (`invalid_input`).
    #[error("{0}")]
    Invalid(String),
    /// DNS, connection, TLS, HTTP status, authentication, a missing ref or the time limit
    /// (`repo_unreachable`).
    #[error("{0}")]
    Unreachable(String),
    /// The clone or its snapshot failed: `not_a_repo`, `repo_too_large` or `repo_failed`.
    #[error(transparent)]
    Repo(RepoError),
}

impl CloneError {
    /// The error code: `invalid_input`, `repo_unreachable`, or the [`RepoError::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            CloneError::Invalid(_) => "invalid_input",
            CloneError::Unreachable(_) => "repo_unreachable",
            CloneError::Repo(e) => e.kind(),
        }
    }
}

impl From<CloneError> for crate::error::Error {
    fn from(e: CloneError) -> Self {
        match e {
            CloneError::Invalid(m) => crate::error::Error::Invalid(m),
            other => crate::error::Error::Repo {
                kind: other.kind(),
                message: other.to_string(),
            },
        }
    }
}

/// The key a workspace git credential for `url`'s host is stored under (`host`, or
/// `host:port` when the port is not 443); `None` when `url` is no `http(s)://` URL with a host.
pub fn credential_host(url: &str) -> Option<String> {
    let url = Url::parse(url.trim()).ok()?;
    if !matches!(url.scheme(), "https" | "http") {
        return None;
    }
    Some(host_key(url.host_str()?, url.port_or_known_default()?))
}

/// Clones `url` at `git_ref` (a branch, a tag or a full commit id; the remote's default branch
/// when `None`) under `scratch` and snapshots it within `limits`. The snapshot owns everything
/// it needs (the clone is gone when this returns); its base is the URL, the ref and the commit
/// cloned.
pub async fn clone_url(
    url: &str,
    git_ref: Option<&str>,
    limits: Limits,
    scratch: &Path,
    policy: &ClonePolicy,
) -> Result<Snapshot, CloneError> {
    let target = Target::parse(url, policy)?;
    let want = git_ref.map(Want::parse).transpose()?;
    let deadline = Instant::now() + policy.timeout;
    let pin = target.resolve(policy, deadline).await?;

    tokio::fs::create_dir_all(scratch)
        .await
        .map_err(|e| io_error(scratch, e))?;
    let dir = tempfile::Builder::new()
        .prefix("clone-")
        .tempdir_in(scratch)
        .map_err(|e| io_error(scratch, e))?;
    // Sent only to the host it was stored for (redirects are never followed).
    let credential = policy
        .credential
        .as_ref()
        .filter(|c| c.host == host_key(&target.host, target.port));
    let fetch = Fetch {
        target: &target,
        pin,
        deadline,
        timeout: policy.timeout,
        credential,
    };
    let taken = snapshot_clone(
        &fetch,
        want.as_ref(),
        &dir.path().join("repo"),
        limits,
        scratch,
    )
    .await;
    // A checkout can be a gigabyte of files: removing it is blocking work, done off the runtime
    // (and awaited, so that nothing is left behind once this returns).
    let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
    let mut snapshot = taken?;
    snapshot.base = Base {
        repo: target.url.to_string(),
        commit: snapshot.base.commit.take(),
        branch: git_ref.map(str::to_string),
        dirty: snapshot.base.dirty,
    };
    Ok(snapshot)
}

/// Clones into `work` and snapshots it; the snapshot takes the clone's objects along.
async fn snapshot_clone(
    fetch: &Fetch<'_>,
    want: Option<&Want>,
    work: &Path,
    limits: Limits,
    scratch: &Path,
) -> Result<Snapshot, CloneError> {
    fetch.clone_into(want, work).await?;
    let snapshot = Snapshot::take(work, limits, scratch)
        .await
        .map_err(|e| CloneError::Repo(name_the_url(e, work, &fetch.target.url)))?;
    adopt_objects(&work.join(".git/objects"), &snapshot.scratch()).await?;
    Ok(snapshot)
}

/// A checked URL: where git may go.
#[derive(Debug)]
struct Target {
    url: Url,
    /// As the URL spells it (lower case, IPv6 in brackets).
    host: String,
    port: u16,
    /// The host is an address already: nothing to resolve or pin.
    literal: Option<IpAddr>,
    /// An admin listed the host: private addresses and `http://` are fine.
    allowed: bool,
}

impl Target {
    fn parse(raw: &str, policy: &ClonePolicy) -> Result<Target, CloneError> {
        // The raw text may hold credentials: no message repeats it.
        let url = Url::parse(raw.trim()).map_err(|e| {
            CloneError::Invalid(format!(
                "repo is neither a local path nor a valid URL ({e}); give an https:// git URL"
            ))
        })?;
        let scheme = url.scheme();
        if scheme != "https" && scheme != "http" {
            return Err(CloneError::Invalid(format!(
                "repo URLs must be https:// (not {scheme}:); ssh, git and file URLs are not \
                 supported"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CloneError::Invalid(
                "the repo URL carries credentials (user:password@); delegate never takes them \
                 in URLs: give the URL without them (public repositories only)"
                    .into(),
            ));
        }
        if url.fragment().is_some() {
            return Err(CloneError::Invalid(format!(
                "{}: a repo URL has no #fragment; give the ref in `ref`",
                without_fragment(&url)
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| CloneError::Invalid(format!("{url}: the URL names no host")))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| CloneError::Invalid(format!("{url}: the URL names no port")))?;
        let allowed = policy.allows(&host, port);
        if scheme == "http" && !allowed {
            return Err(CloneError::Invalid(format!(
                "{url}: plain http:// is allowed only for git servers an admin lists in \
                 DELEGATE_GIT_ALLOWED_HOSTS; use https://"
            )));
        }
        // The URL parser has already normalized the host (`0x7f.1` is `127.0.0.1`).
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok();
        Ok(Target {
            url,
            host,
            port,
            literal,
            allowed,
        })
    }

    /// The address git is pinned to: every address of the host must be public unless the admin
    /// listed it. `None` when the URL holds an address (nothing for DNS to change).
    async fn resolve(
        &self,
        policy: &ClonePolicy,
        deadline: Instant,
    ) -> Result<Option<IpAddr>, CloneError> {
        let addrs: Vec<IpAddr> = match self.literal {
            Some(ip) => vec![ip],
            None => {
                let name = self.host.clone();
                let lookup = tokio::net::lookup_host((name, self.port));
                let found = tokio::time::timeout_at(deadline, lookup)
                    .await
                    .map_err(|_| {
                        CloneError::Unreachable(format!(
                            "resolving {} took longer than {}s",
                            self.host,
                            policy.timeout.as_secs()
                        ))
                    })?
                    .map_err(|e| {
                        CloneError::Unreachable(format!("cannot resolve {}: {e}", self.host))
                    })?;
                found.map(|a: SocketAddr| a.ip()).collect()
            }
        };
        let Some(first) = addrs.first().copied() else {
            return Err(CloneError::Unreachable(format!(
                "cannot resolve {}: no addresses",
                self.host
            )));
        };
        if !self.allowed
            && let Some((ip, class)) = addrs
                .iter()
                .map(|ip| (ip, classify(*ip)))
                .find(|(_, class)| !class.is_public())
        {
            return Err(CloneError::Invalid(format!(
                "{}: {} is {ip}, {class}; delegate clones only from public addresses \
                 (an admin can allow an on-prem git server with DELEGATE_GIT_ALLOWED_HOSTS)",
                self.url, self.host
            )));
        }
        Ok(self.literal.is_none().then_some(first))
    }
}

fn without_fragment(url: &Url) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    u.to_string()
}

/// What to check out.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    /// A branch or tag name, short (`main`, `v1.2`).
    Name(String),
    /// A full commit id.
    Commit(String),
}

impl Want {
    fn parse(git_ref: &str) -> Result<Want, CloneError> {
        let r = git_ref.trim();
        let is_hex = r.bytes().all(|b| b.is_ascii_hexdigit());
        if (r.len() == 40 || r.len() == 64) && is_hex {
            return Ok(Want::Commit(r.to_ascii_lowercase()));
        }
        let name = r
            .strip_prefix("refs/heads/")
            .or_else(|| r.strip_prefix("refs/tags/"))
            .unwrap_or(r);
        // git's own ref-name rules, plus no leading `-` (an option to git).
        let bad = name.is_empty()
            || name.len() > 255
            || name.starts_with(['-', '/', '.'])
            || name.ends_with(['/', '.'])
            || name.ends_with(".lock")
            || name.contains("..")
            || name.contains("@{")
            || name.contains("//")
            || name
                .chars()
                .any(|c| c.is_control() || " ~^:?*[\\".contains(c));
        if bad {
            return Err(CloneError::Invalid(format!(
                "ref {git_ref:?} is not a branch, tag or full commit id"
            )));
        }
        Ok(Want::Name(name.to_string()))
    }

    fn as_str(&self) -> &str {
        match self {
            Want::Name(s) | Want::Commit(s) => s,
        }
    }
}

/// One clone's git calls, all with the same transport rules and deadline.
struct Fetch<'a> {
    target: &'a Target,
    pin: Option<IpAddr>,
    deadline: Instant,
    timeout: Duration,
    credential: Option<&'a GitCredential>,
}

impl Fetch<'_> {
    /// git with only https (http for an allowed host), no redirects, no proxy, no credential
    /// helper, and the host pinned to the address checked.
    fn git(&self, cwd: &Path) -> Git {
        let mut git = Git::new(cwd)
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .args([
                "-c",
                "protocol.allow=never",
                "-c",
                "protocol.https.allow=always",
            ]);
        if self.target.url.scheme() == "http" {
            git = git.args(["-c", "protocol.http.allow=always"]);
        }
        git = git.args([
            "-c".to_string(),
            "http.followRedirects=false".to_string(),
            "-c".to_string(),
            "credential.helper=".to_string(),
            "-c".to_string(),
            format!("http.lowSpeedLimit={LOW_SPEED_BYTES}"),
            "-c".to_string(),
            format!("http.lowSpeedTime={LOW_SPEED_SECS}"),
        ]);
        if let Some(c) = self.credential {
            // Config from the environment: not on argv (readable in /proc), and never written
            // to the clone's .git/config.
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                c.username,
                c.token.expose()
            ));
            git = git
                .env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
        }
        if let Some(ip) = self.pin {
            let addr = match ip {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            git = git.arg("-c").arg(format!(
                "http.curloptResolve={}:{}:{addr}",
                self.target.host, self.target.port
            ));
        }
        git
    }

    /// Runs one git call against the deadline (git is killed when it passes); its stderr when
    /// it failed.
    async fn run(&self, git: Git) -> Result<Result<(), String>, CloneError> {
        let out = tokio::time::timeout_at(self.deadline, git.output())
            .await
            .map_err(|_| {
                CloneError::Unreachable(format!(
                    "cloning {} took longer than {}s and was stopped",
                    self.target.url,
                    self.timeout.as_secs()
                ))
            })?
            .map_err(CloneError::Repo)?;
        Ok(if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        })
    }

    /// A shallow clone of the ref into `work`; a full one from servers that only speak git's
    /// dumb HTTP protocol (no shallow fetches there).
    async fn clone_into(&self, want: Option<&Want>, work: &Path) -> Result<(), CloneError> {
        let parent = work.parent().unwrap_or(work);
        let url = self.target.url.as_str();
        let failed = match want {
            Some(Want::Commit(sha)) => {
                let init = Git::new(parent).args(["init", "-q"]).arg(work);
                init.run().await.map_err(CloneError::Repo)?;
                let fetched = self
                    .run(
                        self.git(work)
                            .args(["fetch", "-q", "--depth", "1", "--", url, sha]),
                    )
                    .await?;
                match fetched {
                    Ok(()) => None,
                    Err(e) if is_dumb(&e) => {
                        // The dumb protocol fetches whole branches: take them all, then the
                        // commit among them.
                        let all = self
                            .git(work)
                            .args([
                                "fetch",
                                "-q",
                                "--",
                                url,
                                "+refs/heads/*:refs/remotes/origin/*",
                            ])
                            .args(["+refs/tags/*:refs/tags/*"]);
                        self.run(all).await?.err()
                    }
                    Err(e) => Some(e),
                }
            }
            _ => {
                let shallow = self.clone_args(want, true, url, work);
                match self.run(shallow).await? {
                    Ok(()) => None,
                    Err(e) if is_dumb(&e) => {
                        let _ = tokio::fs::remove_dir_all(work).await;
                        self.run(self.clone_args(want, false, url, work))
                            .await?
                            .err()
                    }
                    Err(e) => Some(e),
                }
            }
        };
        if let Some(stderr) = failed {
            return Err(self.explain(&stderr, want));
        }
        if let Some(Want::Commit(sha)) = want {
            let checkout = Git::new(work).args(["checkout", "-q", "--detach", sha.as_str()]);
            if !checkout.ok().await.map_err(CloneError::Repo)? {
                return Err(CloneError::Unreachable(format!(
                    "commit {sha} is not in {}",
                    self.target.url
                )));
            }
        }
        Ok(())
    }

    fn clone_args(&self, want: Option<&Want>, shallow: bool, url: &str, work: &Path) -> Git {
        let parent = work.parent().unwrap_or(work);
        let mut git = self
            .git(parent)
            .args(["clone", "-q", "--single-branch", "--no-tags"]);
        if shallow {
            git = git.args(["--depth", "1"]);
        }
        if let Some(w) = want {
            git = git.args(["--branch", w.as_str()]);
        }
        git.args(["--", url]).arg(work)
    }

    /// git's failure in words a caller can act on.
    fn explain(&self, stderr: &str, want: Option<&Want>) -> CloneError {
        let url = &self.target.url;
        let said = last_line(stderr);
        let has = |needle: &str| stderr.contains(needle);
        let unreachable = |what: String| CloneError::Unreachable(format!("{what} ({said})"));
        if has("Remote branch")
            || has("couldn't find remote ref")
            || has("not our ref")
            || has("unadvertised object")
        {
            let name = want.map(Want::as_str).unwrap_or("HEAD");
            return unreachable(format!("ref {name} not found in {url}"));
        }
        if has("could not read Username")
            || has("could not read Password")
            || has("Authentication failed")
            || has("returned error: 401")
            || has("returned error: 403")
        {
            let host = host_key(&self.target.host, self.target.port);
            return unreachable(match self.credential {
                Some(c) => format!(
                    "{url} refused the workspace's git credential for {host} (user {}); a \
                     maintainer can replace it with PUT /api/workspaces/{{ws}}/git-credentials/{host}",
                    c.username
                ),
                None => format!(
                    "{url} needs authentication, and the workspace has no git credential for \
                     {host}; a maintainer can store one with PUT \
                     /api/workspaces/{{ws}}/git-credentials/{host}"
                ),
            });
        }
        if has("returned error: 404") || (has("repository '") && has("not found")) {
            return unreachable(format!("no git repository at {url} (HTTP 404)"));
        }
        if has("returned error: 30") || has("redirect") {
            return unreachable(format!(
                "{url} redirects elsewhere; redirects are not followed: give the final URL"
            ));
        }
        if has("SSL") || has("TLS") || has("certificate") || has("gnutls") {
            return unreachable(format!("TLS with {} failed", self.target.host));
        }
        if has("Failed to connect")
            || has("Couldn't connect")
            || has("Connection refused")
            || has("timed out")
            || has("Could not resolve")
        {
            return unreachable(format!(
                "cannot connect to {}:{}",
                self.target.host, self.target.port
            ));
        }
        if has("returned error: 5") {
            return unreachable(format!("{url}: the git server failed"));
        }
        if has("is this a git repository") || has("not a git repository") {
            return CloneError::Repo(RepoError::NotARepo(format!(
                "{url} does not serve a git repository ({said})"
            )));
        }
        CloneError::Repo(RepoError::Git(format!(
            "cloning {url} failed: {}",
            stderr.trim().chars().take(1000).collect::<String>()
        )))
    }
}

/// git's complaint when a server speaks only the dumb HTTP protocol.
fn is_dumb(stderr: &str) -> bool {
    stderr.contains("dumb http transport does not support shallow")
}

/// The last non-empty line git wrote, cut short.
fn last_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("git said nothing");
    line.chars().take(300).collect()
}

/// Moves the clone's object store into the snapshot's scratch repository, which borrowed it
/// (alternates) while the snapshot was taken: afterwards the clone can go. Same file system,
/// so this renames files rather than copying them.
async fn adopt_objects(from: &Path, scratch: &Path) -> Result<(), CloneError> {
    let into = scratch.join("objects");
    let mut dirs = tokio::fs::read_dir(from)
        .await
        .map_err(|e| io_error(from, e))?;
    while let Some(entry) = dirs.next_entry().await.map_err(|e| io_error(from, e))? {
        let name = entry.file_name();
        let is_dir = entry
            .file_type()
            .await
            .map_err(|e| io_error(&entry.path(), e))?
            .is_dir();
        if name == "info" || !is_dir {
            continue;
        }
        let target = into.join(&name);
        tokio::fs::create_dir_all(&target)
            .await
            .map_err(|e| io_error(&target, e))?;
        let mut files = tokio::fs::read_dir(entry.path())
            .await
            .map_err(|e| io_error(&entry.path(), e))?;
        while let Some(file) = files
            .next_entry()
            .await
            .map_err(|e| io_error(&entry.path(), e))?
        {
            let dest = target.join(file.file_name());
            // An object already there is the same object (same name, same content).
            if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
                continue;
            }
            tokio::fs::rename(file.path(), &dest)
                .await
                .map_err(|e| io_error(&dest, e))?;
        }
    }
    let alternates = into.join("info/alternates");
    tokio::fs::remove_file(&alternates)
        .await
        .map_err(|e| io_error(&alternates, e))
}

/// A snapshot's message names the clone's temporary path; the caller knows the URL.
fn name_the_url(e: RepoError, work: &Path, url: &Url) -> RepoError {
    let told = |m: String| m.replace(&work.display().to_string(), url.as_str());
    match e {
        RepoError::NotARepo(m) => RepoError::NotARepo(told(m)),
        RepoError::Busy(m) => RepoError::Busy(told(m)),
        RepoError::TooLarge(m) => RepoError::TooLarge(told(m)),
        RepoError::BadBundle(m) => RepoError::BadBundle(told(m)),
        RepoError::Git(m) => RepoError::Git(told(m)),
        RepoError::Io(m) => RepoError::Io(told(m)),
    }
}

fn io_error(path: &Path, e: std::io::Error) -> CloneError {
    CloneError::Repo(RepoError::Io(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn policy(hosts: &[&str]) -> ClonePolicy {
        ClonePolicy {
            allowed_hosts: hosts
                .iter()
                .map(|h| crate::settings::parse_git_host(h).unwrap())
                .collect(),
            timeout: CLONE_TIMEOUT,
            credential: None,
        }
    }

    #[rstest]
    #[case("https://github.com/o/r.git", &[], "github.com", 443, false)]
    #[case("https://GitHub.com:8443/o/r", &[], "github.com", 8443, false)]
    #[case("http://git.corp:8080/r.git", &["git.corp:8080"], "git.corp", 8080, true)]
    #[case("http://git.corp/r.git", &["git.corp"], "git.corp", 80, true)]
    #[case("https://[::1]:9/r", &["[::1]:9"], "[::1]", 9, true)]
    fn good_urls_parse(
        #[case] url: &str,
        #[case] hosts: &[&str],
        #[case] host: &str,
        #[case] port: u16,
        #[case] allowed: bool,
    ) {
        let t = Target::parse(url, &policy(hosts)).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.allowed), (host, port, allowed));
    }

    #[rstest]
    #[case("https://user:hunter2@github.com/o/r", &[], "credentials")]
    #[case("https://token@github.com/o/r", &[], "credentials")]
    #[case("http://github.com/o/r", &[], "http://")]
    #[case("http://git.corp:8081/r", &["git.corp:8080"], "http://")]
    #[case("ssh://git@github.com/o/r", &[], "ssh")]
    #[case("file:///etc", &[], "file")]
    #[case("git@github.com:o/r.git", &[], "valid URL")]
    #[case("https://github.com/o/r#main", &[], "fragment")]
    fn bad_urls_are_refused(#[case] url: &str, #[case] hosts: &[&str], #[case] says: &str) {
        let e = Target::parse(url, &policy(hosts)).unwrap_err();
        assert_eq!(e.kind(), "invalid_input");
        let msg = e.to_string();
        assert!(msg.contains(says), "{msg}");
        assert!(!msg.contains("hunter2") && !msg.contains("token@"), "{msg}");
    }

    #[rstest]
    #[case("main", Want::Name("main".into()))]
    #[case("refs/heads/feature/x", Want::Name("feature/x".into()))]
    #[case("refs/tags/v1.2", Want::Name("v1.2".into()))]
    #[case(
        "0123456789ABCDEF0123456789abcdef01234567",
        Want::Commit("0123456789abcdef0123456789abcdef01234567".into())
    )]
    #[case("abc1234", Want::Name("abc1234".into()))]
    fn refs_parse(#[case] r: &str, #[case] want: Want) {
        assert_eq!(Want::parse(r).unwrap(), want);
    }

    #[rstest]
    #[case("")]
    #[case("--upload-pack=touch /tmp/x")]
    #[case("a..b")]
    #[case("a b")]
    #[case("x:y")]
    #[case("HEAD@{1}")]
    #[case("x.lock")]
    fn bad_refs_are_refused(#[case] r: &str) {
        assert_eq!(Want::parse(r).unwrap_err().kind(), "invalid_input");
    }

    #[rstest]
    #[case("Git.Corp:8080", Some(("git.corp", Some(8080))))]
    #[case("10.0.0.5", Some(("10.0.0.5", None)))]
    #[case("[::1]:9", Some(("[::1]", Some(9))))]
    #[case("[fd00::1]", Some(("[fd00::1]", None)))]
    #[case("::1", None)]
    #[case("host:port", None)]
    #[case("user@host", None)]
    #[case("host/path", None)]
    #[case("", None)]
    fn allowed_hosts_parse(#[case] entry: &str, #[case] expect: Option<(&str, Option<u16>)>) {
        let got = crate::settings::parse_git_host(entry).ok();
        assert_eq!(
            got.as_ref().map(|h| (h.host.as_str(), h.port)),
            expect,
            "{entry}"
        );
    }

    #[tokio::test]
    async fn a_listed_host_may_be_private_and_others_not() {
        let listed = Target::parse("http://127.0.0.1:9/r", &policy(&["127.0.0.1:9"])).unwrap();
        let p = policy(&["127.0.0.1:9"]);
        let far = Instant::now() + CLONE_TIMEOUT;
        // An address in the URL: nothing to pin.
        assert_eq!(listed.resolve(&p, far).await.unwrap(), None);
        let other = Target::parse("https://127.0.0.1:10/r", &p).unwrap();
        let e = other.resolve(&p, far).await.unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let named = Target::parse("https://localhost:10/r", &p).unwrap();
        let e = named.resolve(&p, far).await.unwrap_err();
        assert_eq!(e.kind(), "invalid_input", "{e}");
    }

    #[test]
    fn git_failures_are_told_apart() {
        let t = Target::parse("https://example.com/r.git", &policy(&[])).unwrap();
        let f = Fetch {
            target: &t,
            pin: None,
            deadline: Instant::now(),
            timeout: CLONE_TIMEOUT,
            credential: None,
        };
        let want = Want::Name("nope".into());
        let cases = [
            (
                "warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope not found in upstream origin",
                "ref nope not found",
            ),
            (
                "fatal: could not read Username for 'https://example.com': terminal prompts disabled",
                "needs authentication",
            ),
            (
                "fatal: repository 'https://example.com/r.git/' not found",
                "HTTP 404",
            ),
            (
                "fatal: unable to access 'https://example.com/r.git/': The requested URL returned error: 301",
                "redirects",
            ),
            (
                "fatal: unable to access 'https://example.com/r.git/': SSL certificate problem: self-signed certificate",
                "TLS",
            ),
            (
                "fatal: unable to access 'https://example.com/r.git/': Failed to connect to example.com port 443 after 0 ms: Couldn't connect to server",
                "cannot connect",
            ),
        ];
        for (stderr, says) in cases {
            let e = f.explain(stderr, Some(&want));
            assert_eq!(e.kind(), "repo_unreachable", "{stderr}");
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = f.explain(
            "fatal: https://example.com/r.git/info/refs not valid: is this a git repository?",
            None,
        );
        assert_eq!(e.kind(), "not_a_repo");
    }
}

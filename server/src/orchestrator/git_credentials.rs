//! Workspace git credentials: a username and token per git host, set by a workspace's
//! maintainers, sealed at rest like workspace secrets (the workspace, host and username as
//! associated data), and opened only for the server's own clone of an `https://` repo on that
//! host. A token is never listed, logged, put in a URL or argv, or handed to a sandbox.

use reqwest::Url;

use super::secrets::{open_bound, seal_bound};
use super::{Error, Orchestrator, Result};
use crate::ids::now_ms;
use crate::settings::Secret;
use crate::store::{GitCredentialInfo, Workspace};

/// The longest token.
pub const MAX_GIT_TOKEN_BYTES: usize = 4 << 10;
/// The longest username.
pub const MAX_GIT_USERNAME_BYTES: usize = 256;
/// At most this many git credentials per workspace.
pub const MAX_WORKSPACE_GIT_CREDENTIALS: usize = 50;

/// A username and token for one git host, opened for one clone. `Debug` shows no token.
#[derive(Clone)]
pub struct GitCredential {
    /// The host key it belongs to (see [`git_host_key`]).
    pub host: String,
    /// Sent as the basic-auth user name.
    pub username: String,
    /// Sent as the basic-auth password.
    pub token: Secret,
}

impl std::fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredential")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// The key a credential is stored under for `host` (as a URL spells it: lower case, IPv6 in
/// brackets) and `port`: `host`, or `host:port` when the port is not 443.
pub fn host_key(host: &str, port: u16) -> String {
    if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// The host key of what an admin typed: `github.com`, `git.corp:8443`, `https://github.com`
/// or `http://git.corp:8080/` (a scheme only picks the default port).
pub fn git_host_key(input: &str) -> Result<String> {
    let input = input.trim();
    let bad = || {
        Error::Invalid(format!(
            "host {input:?}: give a git host as host[:port] or https://host[:port], with no path, \
             user or query"
        ))
    };
    let url = if input.contains("://") {
        Url::parse(input)
    } else {
        Url::parse(&format!("https://{input}"))
    }
    .map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "https" | "http")
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.path() == "/";
    let host = url.host_str().filter(|h| !h.is_empty());
    match (plain, host, url.port_or_known_default()) {
        (true, Some(host), Some(port)) => Ok(host_key(host, port)),
        _ => Err(bad()),
    }
}

/// What a sealed token is bound to: its workspace, host and username.
fn associated(workspace_id: &str, host: &str, username: &str) -> Vec<u8> {
    format!("delegate git credential v1\0{workspace_id}\0{host}\0{username}").into_bytes()
}

impl Orchestrator {
    /// Sets the workspace's credential for `host` (the caller is authorized already).
    pub async fn set_git_credential(
        &self,
        ws: &Workspace,
        host: &str,
        username: &str,
        token: &str,
        by: Option<&str>,
    ) -> Result<GitCredentialInfo> {
        let host = git_host_key(host)?;
        let control = |s: &str| s.chars().any(char::is_control);
        if username.is_empty()
            || username.len() > MAX_GIT_USERNAME_BYTES
            || username.contains(':')
            || control(username)
        {
            return Err(Error::Invalid(format!(
                "username: 1 to {MAX_GIT_USERNAME_BYTES} bytes, no `:` or control characters"
            )));
        }
        // A control character could end the Authorization header and start another.
        if token.is_empty() || token.len() > MAX_GIT_TOKEN_BYTES || control(token) {
            return Err(Error::Invalid(format!(
                "token: 1 to {MAX_GIT_TOKEN_BYTES} bytes, no control characters"
            )));
        }
        let key = self.secret_key()?;
        let store = &self.inner.store;
        let existing = store.git_credentials(&ws.id).await?;
        if existing.len() >= MAX_WORKSPACE_GIT_CREDENTIALS
            && !existing.iter().any(|c| c.host == host)
        {
            return Err(Error::Limit(format!(
                "git credentials: a workspace has at most {MAX_WORKSPACE_GIT_CREDENTIALS}"
            )));
        }
        let sealed = seal_bound(key, &associated(&ws.id, &host, username), token)?;
        store
            .put_git_credential(&ws.id, &host, username, &sealed, by, now_ms())
            .await?;
        store
            .git_credentials(&ws.id)
            .await?
            .into_iter()
            .find(|c| c.host == host)
            .ok_or_else(|| Error::NotFound(format!("git credential for {host}")))
    }

    /// The workspace's git credentials, without their tokens.
    pub async fn list_git_credentials(&self, ws: &Workspace) -> Result<Vec<GitCredentialInfo>> {
        Ok(self.inner.store.git_credentials(&ws.id).await?)
    }

    /// Removes the workspace's credential for `host`; an unknown one is not found.
    pub async fn delete_git_credential(&self, ws: &Workspace, host: &str) -> Result<()> {
        let host = git_host_key(host)?;
        if self
            .inner
            .store
            .delete_git_credential(&ws.id, &host)
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound(format!("git credential for {host}")))
        }
    }

    /// The workspace's credential for the host key `host`, opened for a clone; `None` when it
    /// has none (or this server has no DELEGATE_SECRET_KEY to open it with).
    pub async fn git_credential(
        &self,
        ws: &Workspace,
        host: &str,
    ) -> Result<Option<GitCredential>> {
        let Some((username, sealed)) = self.inner.store.git_credential(&ws.id, host).await? else {
            return Ok(None);
        };
        let key = self.secret_key()?;
        let token =
            open_bound(key, &associated(&ws.id, host, &username), &sealed).ok_or_else(|| {
                crate::error::internal(format!(
                    "the git credential for {host} of workspace {} does not open with \
                     DELEGATE_SECRET_KEY (was the key changed?)",
                    ws.id
                ))
            })?;
        Ok(Some(GitCredential {
            host: host.to_string(),
            username,
            token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("github.com", "github.com")]
    #[case("GitHub.com:443", "github.com")]
    #[case("https://github.com/", "github.com")]
    #[case("https://git.corp:8443", "git.corp:8443")]
    #[case("http://git.corp", "git.corp:80")]
    #[case("http://127.0.0.1:9000", "127.0.0.1:9000")]
    #[case("[::1]:9", "[::1]:9")]
    fn hosts_are_keyed_alike(#[case] input: &str, #[case] key: &str) {
        assert_eq!(git_host_key(input).unwrap(), key);
    }

    #[rstest]
    #[case("")]
    #[case("https://github.com/o/r")]
    #[case("https://user@github.com")]
    #[case("ssh://github.com")]
    #[case("github.com?x=1")]
    fn odd_hosts_are_refused(#[case] input: &str) {
        assert!(matches!(git_host_key(input), Err(Error::Invalid(_))));
    }

    #[test]
    fn debug_shows_no_token() {
        let c = GitCredential {
            host: "h".into(),
            username: "u".into(),
            token: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

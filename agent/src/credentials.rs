//! The agent's saved credentials: `$XDG_CONFIG_HOME/delegate/agent.json` (or `~/.config/...`),
//! mode 0600, one entry per server URL, so `delegate agent connect --server URL` reconnects with
//! nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What one server gave this agent at registration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCredentials {
    /// The local sandbox the server created for this agent.
    pub sandbox_id: String,
    /// The tunnel token (`dlt_...`); the server keeps only its hash.
    pub token: String,
    /// The sandbox's name, as given at registration.
    pub name: String,
    /// The local `opencode serve` to reconnect to.
    pub opencode_url: String,
}

impl std::fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("sandbox_id", &self.sandbox_id)
            .field("token", &"[redacted]")
            .field("name", &self.name)
            .field("opencode_url", &self.opencode_url)
            .finish()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    servers: BTreeMap<String, ServerCredentials>,
}

/// Why the credentials file could not be found, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` says where the file belongs.
    #[error("no config directory (set XDG_CONFIG_HOME or HOME)")]
    NoConfigDir,
    /// Reading, writing or locking down the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file (or its directory).
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file's contents do not parse as saved credentials.
    #[error("{path} is not a valid credentials file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What did not parse.
        message: String,
    },
}

/// The default file: `<config dir>/delegate/agent.json`.
pub fn default_path() -> Result<PathBuf, CredentialsError> {
    dirs::config_dir()
        .map(|d| d.join("delegate").join("agent.json"))
        .ok_or(CredentialsError::NoConfigDir)
}

/// `$XDG_DATA_HOME/delegate/agent` (or the platform's data dir): where the work dirs of runs
/// delegated with a repository go, under `runs/`. `None` when the platform has no data dir.
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("delegate").join("agent"))
}

/// The key a server URL is stored under (no trailing slash).
pub fn server_key(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// The credentials saved for `server`, if any.
pub fn load(path: &Path, server: &str) -> Result<Option<ServerCredentials>, CredentialsError> {
    Ok(read(path)?.servers.remove(&server_key(server)))
}

/// Saves credentials for `server`, keeping other servers' entries. The file is written whole to a
/// temporary file with mode 0600 and renamed over the old one.
pub fn save(path: &Path, server: &str, creds: &ServerCredentials) -> Result<(), CredentialsError> {
    let io = |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = read(path)?;
    file.servers.insert(server_key(server), creds.clone());
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let tmp = path.with_extension("json.tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    // An older file may have been created with wider permissions.
    out.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let body = serde_json::to_vec_pretty(&file).map_err(|e| CredentialsError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    out.write_all(&body).map_err(io)?;
    out.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<File, CredentialsError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CredentialsError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(source) => Err(CredentialsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_per_server_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delegate").join("agent.json");
        assert_eq!(load(&path, "http://a").unwrap(), None);
        let a = ServerCredentials {
            sandbox_id: "sbx_a".into(),
            token: "dlt_secret".into(),
            name: "laptop".into(),
            opencode_url: "http://127.0.0.1:4096".into(),
        };
        save(&path, "http://a/", &a).unwrap();
        let b = ServerCredentials {
            sandbox_id: "sbx_b".into(),
            ..a.clone()
        };
        save(&path, "http://b", &b).unwrap();
        assert_eq!(load(&path, "http://a").unwrap(), Some(a.clone()));
        assert_eq!(load(&path, "http://b/").unwrap(), Some(b));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{a:?}").contains("dlt_secret"));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            load(&path, "http://a"),
            Err(CredentialsError::Corrupt { .. })
        ));
    }
}

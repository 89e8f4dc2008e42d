//! Shared harness for the end-to-end tests: a fake Anthropic upstream, a temp data dir, settings
//! pointing the real opencode and bubblewrap at them, and checks for leftover processes.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod backends;
pub mod docker;
pub mod kube;
pub mod secret_scan;
pub mod serve;
pub mod served;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use delegate_mcp::types::RunResult;
use delegate_server::orchestrator::Orchestrator;
use delegate_server::settings::Settings;
use delegate_testkit::anthropic::{FakeAnthropic, Script};
use delegate_testkit::real;

/// The "real" upstream key: it must reach the fake upstream and nothing else.
pub const REAL_KEY: &str = "sk-ant-api03-REAL-KEY-must-never-leak-7f3a9c";

pub struct Harness {
    pub fake: FakeAnthropic,
    pub dir: tempfile::TempDir,
    pub opencode: PathBuf,
}

impl Harness {
    /// `None` (after printing why) when opencode or bubblewrap is missing and skipping is allowed.
    pub async fn new(script: Script) -> Option<Harness> {
        delegate_server::net::install_crypto();
        let opencode = real::opencode()?;
        real::bwrap()?;
        let fake = FakeAnthropic::start(script)
            .await
            .expect("start the fake upstream");
        let dir = tempfile::Builder::new()
            .prefix("dlg")
            .tempdir()
            .expect("temp dir");
        Some(Harness {
            fake,
            dir,
            opencode,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The environment `delegate` gets in these tests.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("DELEGATE_DATA_DIR", self.data_dir().display().to_string()),
            ("ANTHROPIC_API_KEY", REAL_KEY.to_string()),
            ("ANTHROPIC_BASE_URL", self.fake.base_url()),
            ("DELEGATE_OPENCODE_BIN", self.opencode.display().to_string()),
            ("DELEGATE_BACKEND", "process".to_string()),
            // Limits are applied wherever this host allows; tests about something else must not
            // fail on a host without usable cgroups (tests/cgroups.rs requires them).
            ("DELEGATE_SANDBOX_LIMITS", "optional".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn settings(&self) -> Settings {
        let env = self.env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut s = Settings::load(None, &EnvList(pairs)).expect("settings");
        s.relay_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_delegate")));
        s
    }

    pub async fn orchestrator(&self) -> Orchestrator {
        delegate_server::app::embedded(self.settings())
            .await
            .expect("embedded orchestrator")
    }

    /// `delegate` with only this harness's environment (plus PATH).
    pub fn delegate(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_delegate"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `delegate run --json ARGS`, returning the parsed result (if any), stderr and exit code.
    pub async fn run_cli(&self, args: &[&str]) -> CliRun {
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            self.delegate().arg("run").arg("--json").args(args).output(),
        )
        .await
        .expect("delegate run finished within 5 minutes")
        .expect("delegate ran");
        CliRun {
            result: serde_json::from_slice(&out.stdout).ok(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code(),
        }
    }

    /// Every byte of the SQLite database files.
    pub fn database_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let p = self.data_dir().join(format!("delegate.db{suffix}"));
            if let Ok(bytes) = std::fs::read(p) {
                all.extend(bytes);
            }
        }
        all
    }
}

pub struct CliRun {
    pub result: Option<RunResult>,
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

impl CliRun {
    pub fn result(&self) -> &RunResult {
        self.result.as_ref().unwrap_or_else(|| {
            panic!(
                "no result on stdout (exit {:?})\nstdout: {}\nstderr: {}",
                self.code, self.stdout, self.stderr
            )
        })
    }
}

/// Settings' environment from explicit pairs, so a test never reads the real one.
pub struct EnvList<'a>(pub Vec<(&'a str, &'a str)>);

impl delegate_server::settings::EnvSource for EnvList<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// A store with one user, workspace, running warm sandbox, queued run, and the sandbox's proxy
/// token (returned in clear): what the proxy needs to let a call through.
pub struct Seeded {
    pub store: std::sync::Arc<dyn delegate_server::store::Store>,
    pub sandbox_id: String,
    pub run_id: String,
    pub token: String,
}

pub async fn seed_sandbox(db: &Path) -> Seeded {
    use delegate_server::ids::{hash_secret, new_id, new_secret, now_ms};
    use delegate_server::store::*;
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
        SqliteStore::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("store"),
    );
    let now = now_ms();
    let user = User {
        id: new_id("usr"),
        email: format!("{}@example.com", new_id("u")),
        name: "a".into(),
        created_at: now,
    };
    store.create_user(&user).await.unwrap();
    let ws = Workspace {
        id: new_id("wsp"),
        slug: new_id("w"),
        name: "w".into(),
        created_at: now,
    };
    store.create_workspace(&ws, &user.id).await.unwrap();
    let sandbox = sandbox_row(&ws.id, delegate_mcp::types::SandboxStatus::Running);
    store.insert_sandbox(&sandbox).await.unwrap();
    let run = run_row(&sandbox, delegate_mcp::types::RunStatus::Queued);
    store.insert_run(&run).await.unwrap();
    let token = new_secret("dsb_");
    store
        .insert_token(&TokenRecord {
            id: new_id("tok"),
            kind: TokenKind::Sandbox,
            hash: hash_secret(&token),
            name: None,
            user_id: None,
            sandbox_id: Some(sandbox.id.clone()),
            workspace_id: Some(ws.id.clone()),
            created_at: now,
            expires_at: None,
            revoked_at: None,
        })
        .await
        .unwrap();
    Seeded {
        store,
        sandbox_id: sandbox.id,
        run_id: run.id,
        token,
    }
}

/// Processes whose command line or cgroup mentions `marker` (a data dir or sandbox id).
pub fn processes_mentioning(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let read =
            |f: &str| std::fs::read(Path::new("/proc").join(pid).join(f)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let cgroup = String::from_utf8_lossy(&read("cgroup")).into_owned();
        if cmdline.contains(marker) || cgroup.contains(marker) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Asserts the error envelope and returns its code.
pub fn error_code(status: reqwest::StatusCode, body: &serde_json::Value) -> String {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error envelope ({status}): {body}"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    code.to_string()
}

/// Runs `check` against a store in a fresh PostgreSQL (testkit's, stopped afterwards); `None`
/// when there is none here (skipped: `TestPostgres` said why on stderr).
pub async fn on_postgres<T, F, Fut>(check: F) -> Option<T>
where
    F: FnOnce(std::sync::Arc<dyn delegate_server::store::Store>) -> Fut,
    Fut: Future<Output = T>,
{
    let pg = tokio::task::spawn_blocking(delegate_testkit::postgres::TestPostgres::start)
        .await
        .unwrap()
        .unwrap()?;
    let store = delegate_server::store::connect(&pg.url).await.unwrap();
    assert_eq!(store.kind(), "postgres");
    // The store (moved into `check`) is closed before the database stops.
    let out = check(store).await;
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    Some(out)
}

/// A sandbox row in `workspace_id` (nothing runs behind it): warm, process backend, named "s".
/// Tests change what they need with `Sandbox { .., ..sandbox_row(..) }`.
pub fn sandbox_row(
    workspace_id: &str,
    status: delegate_mcp::types::SandboxStatus,
) -> delegate_server::store::Sandbox {
    let now = delegate_server::ids::now_ms();
    delegate_server::store::Sandbox {
        id: delegate_server::ids::new_id("sbx"),
        workspace_id: workspace_id.to_string(),
        name: "s".into(),
        kind: delegate_server::store::SandboxKind::Warm,
        backend: "process".into(),
        status,
        status_reason: None,
        idle_timeout_s: None,
        meta: serde_json::json!({}),
        created_by: None,
        created_at: now,
        updated_at: now,
        base: None,
    }
}

/// A run row in `sandbox` with task "t", started and finished now as far as `status` says.
pub fn run_row(
    sandbox: &delegate_server::store::Sandbox,
    status: delegate_mcp::types::RunStatus,
) -> delegate_server::store::Run {
    use delegate_mcp::types::RunStatus;
    let now = delegate_server::ids::now_ms();
    let started = !matches!(status, RunStatus::Queued | RunStatus::Starting);
    let finished = started && status != RunStatus::Running;
    delegate_server::store::Run {
        id: delegate_server::ids::new_id("run"),
        sandbox_id: sandbox.id.clone(),
        workspace_id: sandbox.workspace_id.clone(),
        task: "t".into(),
        model: None,
        agent: None,
        status,
        timeout_s: 60,
        created_by: None,
        created_at: now,
        started_at: started.then_some(now),
        finished_at: finished.then_some(now),
        parent_run_id: None,
        outcome: Default::default(),
    }
}

//! Shared harness for the end-to-end tests: a fake Anthropic upstream, a temp data dir, settings
//! pointing the real opencode and bubblewrap at them, and checks for leftover processes.

#![allow(dead_code)] // each test binary uses a different part of the harness

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
        delegate_server::app::install_crypto();
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

struct EnvList<'a>(Vec<(&'a str, &'a str)>);

impl delegate_server::settings::EnvSource for EnvList<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
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

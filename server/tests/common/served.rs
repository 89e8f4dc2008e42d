//! `delegate serve` as a child process of a test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::Harness;

/// One `delegate serve` child process.
pub struct Served {
    pub child: tokio::process::Child,
    pub base: String,
    pub data: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `delegate serve` with the harness's environment plus `env`, its data dir
    /// `{harness dir}/{name}`, on a free port; returns once it listens.
    pub async fn start(h: &Harness, env: &[(&str, &str)], name: &str) -> Served {
        let data = h.dir.path().join(name);
        let mut child = serve_command(h, env, &data)
            .arg("serve")
            .spawn()
            .expect("spawn delegate serve");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening on ").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!(
                "delegate serve {name} exited before listening:\n{}",
                log.lock().unwrap().join("\n")
            );
        })
        .await
        .expect("delegate serve listens within 60 s");
        // Keep draining stderr (a full pipe would stall the server), and keep it for failures.
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Served {
            child,
            base,
            data,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM (a graceful shutdown), then the exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => assert!(status.unwrap().success(), "{}", self.log()),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!("delegate serve did not stop within 30 s:\n{}", self.log());
            }
        }
    }

    /// SIGKILL: the server dies mid-whatever, as in a crash.
    pub async fn crash(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `delegate` with the harness's environment plus `env` and its own data dir.
pub fn serve_command(h: &Harness, env: &[(&str, &str)], data: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_delegate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(h.env())
        .env("DELEGATE_DATA_DIR", data)
        .env("DELEGATE_LISTEN", "127.0.0.1:0")
        .env("DELEGATE_LOG", "info")
        .envs(env.iter().copied())
        .current_dir(h.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// An API token from `delegate token create` against the database `env` and `data` name.
pub async fn api_token(h: &Harness, env: &[(&str, &str)], data: &Path) -> String {
    let out = serve_command(h, env, data)
        .args(["token", "create", "--name", "test"])
        .output()
        .await
        .expect("run delegate token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

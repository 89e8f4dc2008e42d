//! A warm process sandbox's `opencode serve`: started inside the sandbox with a per-sandbox
//! password, reached from the host through a unix socket relayed to a loopback port.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;

impl ProcessBackend {
    pub(super) async fn start_serve(
        &self,
        id: &str,
        live: &Arc<Live>,
    ) -> Result<ServeEndpoint, SandboxError> {
        let password = live_password(live)?;
        let port = match self.isolation {
            Isolation::Bwrap => IN_SERVE_PORT.to_string(),
            Isolation::None => "0".to_string(),
        };
        let args: Vec<String> = ["serve", "--hostname", "127.0.0.1", "--port", &port]
            .into_iter()
            .map(String::from)
            .collect();
        let mut child = self
            .command(live, Program::Opencode, &args, true)
            .await?
            .spawn()
            .map_err(|e| SandboxError::Start(format!("cannot start opencode serve: {e}")))?;
        drop(child.stdin.take());
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SandboxError::Start("no stdout".into()))?;
        if let Some(stderr) = child.stderr.take() {
            let id = id.to_string();
            tokio::spawn(drain(
                stderr,
                move |l| tracing::debug!(sandbox = %id, "opencode serve: {l}"),
            ));
        }
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(SERVE_START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.split("listening on ").nth(1) {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await;
        let url = match listening {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = child.wait().await.ok();
                return Err(SandboxError::Start(format!(
                    "opencode serve exited before listening ({status:?})"
                )));
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(SandboxError::Start(format!(
                    "opencode serve did not listen within {}s",
                    SERVE_START_TIMEOUT.as_secs()
                )));
            }
        };
        let id_owned = id.to_string();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(sandbox = %id_owned, "opencode serve: {l}");
            }
        });
        let relay_stop = live.stop.child_token();
        *live
            .serve
            .lock()
            .map_err(|_| SandboxError::Io("poisoned".into()))? = Some((child, relay_stop.clone()));
        let url = match self.isolation {
            Isolation::None => url,
            Isolation::Bwrap => {
                // Give the sandbox's serve socket a loopback address on the host.
                let addr = crate::net::relay_loopback_to_unix(
                    live.dirs.run.join("opencode.sock"),
                    relay_stop,
                )
                .await
                .map_err(|e| SandboxError::Io(format!("bind serve relay: {e}")))?;
                format!("http://{addr}")
            }
        };
        let directory = match self.isolation {
            Isolation::Bwrap => IN_WORKSPACE.to_string(),
            Isolation::None => live.dirs.workspace.to_string_lossy().into_owned(),
        };
        Ok(ServeEndpoint {
            url,
            password: Secret::new(password),
            directory,
        })
    }
}

pub(super) fn live_password(live: &Live) -> Result<String, SandboxError> {
    std::fs::read_to_string(live.dirs.root.join("serve.password"))
        .map_err(|e| SandboxError::Io(format!("serve password: {e}")))
}

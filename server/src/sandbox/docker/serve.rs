//! The warm part: start a sandbox's `opencode serve` container, wait until it listens, and
//! say where the server reaches it (a relay to its unix socket, the host port it announced, or
//! its name on a named network).

use std::sync::{Arc, Mutex};

use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;

use super::container::exit_info;
use super::{
    DockerBackend, IN_WORKSPACE, Live, SERVE_PORT, SERVE_START_TIMEOUT, container_name,
    engine_error,
};
use crate::sandbox::{SandboxError, ServeEndpoint};
use crate::settings::DockerNetwork;

impl DockerBackend {
    /// Starts the (created or stopped) serve container and waits until opencode listens.
    pub(super) async fn start_serve(
        &self,
        id: &str,
        live: &Arc<Live>,
    ) -> Result<ServeEndpoint, SandboxError> {
        let name = container_name(id);
        let (mut out, mut err) = self.attach(&name, None).await?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| SandboxError::Start(engine_error(e).to_string()))?;
        let stderr_tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let tail = stderr_tail.clone();
        let log_id = id.to_string();
        tokio::spawn(async move {
            while let Some(line) = err.recv().await {
                tracing::debug!(sandbox = %log_id, "opencode serve: {line}");
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line);
                    if t.len() > 5 {
                        t.pop_front();
                    }
                }
            }
        });
        let listening = tokio::time::timeout(SERVE_START_TIMEOUT, async {
            while let Some(line) = out.recv().await {
                tracing::debug!(sandbox = %id, "opencode serve: {line}");
                if let Some(url) = line.split("listening on ").nth(1) {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await;
        let url = match listening {
            Ok(Some(url)) => url,
            outcome => {
                let why = match outcome {
                    Err(_) => format!("did not listen within {}s", SERVE_START_TIMEOUT.as_secs()),
                    _ => {
                        let code = exit_info(&self.docker, &name).await.code;
                        format!("exited before listening (exit code {code:?})")
                    }
                };
                let tail: Vec<String> = stderr_tail
                    .lock()
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                let _ = self.stop_container(&name).await;
                return Err(SandboxError::Start(format!(
                    "opencode serve {why}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tail.join(" | "))
                    }
                )));
            }
        };
        let log_id = id.to_string();
        tokio::spawn(async move {
            while let Some(line) = out.recv().await {
                tracing::debug!(sandbox = %log_id, "opencode serve: {line}");
            }
        });
        self.serve_endpoint(id, live, Some(&url)).await
    }

    /// Where the server reaches a running serve container. `announced` is the URL opencode
    /// printed (which carries the port on the host's network).
    pub(super) async fn serve_endpoint(
        &self,
        id: &str,
        live: &Arc<Live>,
        announced: Option<&str>,
    ) -> Result<ServeEndpoint, SandboxError> {
        let url = match &self.settings.network {
            DockerNetwork::None => {
                live.stop_serve_relay();
                let relay = live.stop.child_token();
                let addr = crate::net::relay_loopback_to_unix(
                    live.dirs.run.join("opencode.sock"),
                    relay.clone(),
                )
                .await
                .map_err(|e| SandboxError::Io(format!("bind serve relay: {e}")))?;
                if let Ok(mut r) = live.serve_relay.lock() {
                    *r = Some(relay);
                }
                format!("http://{addr}")
            }
            DockerNetwork::Host => announced
                .map(str::to_string)
                .ok_or_else(|| SandboxError::Start("opencode serve announced no URL".into()))?,
            DockerNetwork::Named(_) => format!("http://{}:{SERVE_PORT}", container_name(id)),
        };
        let password = live
            .password
            .clone()
            .ok_or_else(|| SandboxError::Start("a warm sandbox without a serve password".into()))?;
        Ok(ServeEndpoint {
            url,
            password,
            directory: IN_WORKSPACE.into(),
        })
    }

    /// The URL opencode serve last announced in the container's log (host network).
    pub(super) async fn announced_url(&self, id: &str) -> Option<String> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(false)
            .tail("200")
            .build();
        let mut logs = self.docker.logs(&container_name(id), Some(options));
        let mut last = None;
        while let Some(Ok(chunk)) = logs.next().await {
            for line in chunk.to_string().lines() {
                if let Some(url) = line.split("listening on ").nth(1) {
                    last = Some(url.trim().to_string());
                }
            }
        }
        last
    }
}

//! Repositories on local agents: a run delegated to a local sandbox with a snapshot gets a fresh
//! work dir on the agent's machine, and its change comes back the way a process or docker
//! sandbox's does.
//!
//! Over the link's loopback endpoint (the same one opencode is reached through), the orchestrator
//! sends the agent's reserved requests (`delegate_agent::protocol::RESERVED_PREFIX`): `seed` with
//! the snapshot bundle (the agent clones it into `<agent data>/runs/<run id>`, and opencode works
//! in that directory for this run), `export` at the end (the agent commits on top of the snapshot
//! and answers a bundle), and a final removal. What the agent sends back is as hostile as a
//! sandbox's change: it is size-capped and imported into delegate's own change repository for the
//! run (`<data_dir>/local-runs/<run id>/changes.git`, seeded from the snapshot) with every object
//! checked and its parent required to be the snapshot; only then is it kept as the run's patch
//! and bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use delegate_agent::protocol::RESERVED_PREFIX;
use delegate_repo::{ChangeRepo, RepoError};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Error, Orchestrator, Result, SnapshotFile, Warm};
use crate::sandbox::Changes;
use crate::sandbox::workdir::MAX_CHANGE_BYTES;
use crate::sandbox::{SandboxError, ServeEndpoint};

/// How long the agent has to commit and start sending the change.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the agent has to remove a run's work dir.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A run's repository on a local agent's machine, once seeded.
#[derive(Debug, Clone)]
pub(super) struct LocalRepo {
    /// The run's work dir on the agent's machine: opencode's directory for this run.
    directory: String,
    /// The snapshot's tip; the agent's change must sit on it.
    base: String,
}

impl LocalRepo {
    /// The warm sandbox's endpoint, addressing the run's work dir instead of the agent's project.
    pub(super) fn endpoint_of(&self, mut warm: Warm) -> Warm {
        warm.endpoint.directory = self.directory.clone();
        warm
    }
}

/// delegate's scratch dir of a local run (its change repository).
fn scratch_dir(data_dir: &Path, run_id: &str) -> PathBuf {
    data_dir.join("local-runs").join(run_id)
}

fn agent_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Sandbox(SandboxError::Start(format!("the local agent {what}: {e}")))
}

/// A client for the agent's reserved requests: each on a connection of its own (the agent looks
/// only at a connection's first request), never pooled.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

fn request(
    http: &reqwest::Client,
    endpoint: &ServeEndpoint,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    http.request(
        method,
        format!(
            "{}{RESERVED_PREFIX}{path}",
            endpoint.url.trim_end_matches('/')
        ),
    )
    .basic_auth("opencode", Some(endpoint.password.expose()))
    .header(reqwest::header::CONNECTION, "close")
}

/// The agent's `{"error": ...}`, or the status when it said nothing usable.
async fn refusal(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let said: String = body["error"]
        .as_str()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    if said.is_empty() {
        format!("answered {status}")
    } else {
        format!("answered {status}: {said}")
    }
}

impl Orchestrator {
    /// The endpoint of `sandbox_id`'s agent, which must be connected for a repository to move.
    fn connected_agent(&self, sandbox_id: &str) -> Result<ServeEndpoint> {
        self.local_endpoint_of(sandbox_id)
            .ok_or_else(|| agent_error("is not connected", "its link dropped"))
    }

    /// Sends `snapshot` to the agent of `sandbox_id`, which clones it into a fresh work dir for
    /// `run_id`, and starts delegate's change repository for the run from the same bundle.
    pub(super) async fn local_seed(
        &self,
        sandbox_id: &str,
        run_id: &str,
        snapshot: &SnapshotFile,
    ) -> Result<LocalRepo> {
        let endpoint = self.connected_agent(sandbox_id)?;
        let scratch = scratch_dir(&self.inner.settings.data_dir, run_id);
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(|e| Error::Internal(format!("{}: {e}", scratch.display())))?;
        let changes = ChangeRepo::create(&scratch.join("changes.git"), &snapshot.path).await?;
        let base = changes.resolve("refs/delegate/snapshot").await?;

        let file = tokio::fs::File::open(&snapshot.path)
            .await
            .map_err(|e| Error::Internal(format!("{}: {e}", snapshot.path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| Error::Internal(format!("{}: {e}", snapshot.path.display())))?
            .len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let resp = request(
            &http(),
            &endpoint,
            reqwest::Method::PUT,
            &format!("runs/{run_id}/seed"),
        )
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/x-git-bundle")
        .body(body)
        .send()
        .await
        .map_err(|e| agent_error("did not take the repository", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(agent_error(
                "did not take the repository",
                refusal(resp).await,
            ));
        }
        let seeded: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| agent_error("answered the seed unreadably", e.without_url()))?;
        let directory = seeded["directory"]
            .as_str()
            .filter(|d| d.starts_with('/') && d.len() <= 4096 && !d.chars().any(char::is_control))
            .ok_or_else(|| agent_error("named no usable work dir", &seeded["directory"]))?;
        // The agent's clone must be the snapshot: the change will be checked against it.
        if seeded["head"].as_str() != Some(base.as_str()) {
            return Err(agent_error(
                "cloned something else than the snapshot",
                format!("HEAD {} instead of {base}", seeded["head"]),
            ));
        }
        Ok(LocalRepo {
            directory: directory.to_string(),
            base,
        })
    }

    /// Asks the agent to commit the run's work dir on top of the snapshot and reads the bundle
    /// it sends back as hostile input: at most [`MAX_CHANGE_BYTES`], every object checked, its
    /// commit's only parent the snapshot. A change that fails those checks is `bad_change`.
    pub(super) async fn local_export(
        &self,
        sandbox_id: &str,
        run_id: &str,
        repo: &LocalRepo,
    ) -> Result<Changes> {
        let endpoint = self.connected_agent(sandbox_id)?;
        let scratch = scratch_dir(&self.inner.settings.data_dir, run_id);
        let resp = tokio::time::timeout(
            EXPORT_TIMEOUT,
            request(
                &http(),
                &endpoint,
                reqwest::Method::POST,
                &format!("runs/{run_id}/export?base={}", repo.base),
            )
            .send(),
        )
        .await
        .map_err(|_| agent_error("did not export the change", "no answer within 5 minutes"))?
        .map_err(|e| agent_error("did not export the change", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(agent_error(
                "did not export the change",
                refusal(resp).await,
            ));
        }
        let too_large = || {
            RepoError::TooLarge(format!(
                "the local agent's change is over {} bytes",
                MAX_CHANGE_BYTES
            ))
        };
        if resp.content_length().is_some_and(|n| n > MAX_CHANGE_BYTES) {
            return Err(bad_change(too_large()));
        }
        let incoming = scratch.join("from-agent.bundle");
        let received = receive(resp, &incoming, MAX_CHANGE_BYTES).await;
        let changes = ChangeRepo::open(scratch.join("changes.git"));
        let imported = match received {
            Ok(()) => {
                changes
                    .import(&incoming, &repo.base, MAX_CHANGE_BYTES, &scratch)
                    .await
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&incoming).await;
        let commit = imported.map_err(bad_change)?;
        Ok(Changes::describe(
            &changes,
            repo.base.clone(),
            commit,
            self.inner.settings.diff_max_bytes,
            Some(repo.base.clone()),
        )
        .await?)
    }

    /// The run is over: the agent removes its work dir and opencode forgets the directory (best
    /// effort: an agent that is gone keeps it until it is asked again), and delegate's scratch
    /// dir for the run goes.
    pub(super) async fn local_forget_run(
        &self,
        sandbox_id: &str,
        run_id: &str,
        seeded: Option<&LocalRepo>,
    ) {
        if let Some(endpoint) = self.local_endpoint_of(sandbox_id) {
            let http = http();
            if let Some(repo) = seeded {
                let dispose = http
                    .post(format!(
                        "{}/instance/dispose",
                        endpoint.url.trim_end_matches('/')
                    ))
                    .basic_auth("opencode", Some(endpoint.password.expose()))
                    .header("x-opencode-directory", &repo.directory)
                    .timeout(CLEANUP_TIMEOUT)
                    .send()
                    .await;
                if let Err(e) = dispose {
                    tracing::debug!(run = run_id, error = %e.without_url(), "opencode did not dispose of the run's directory");
                }
            }
            let removed = request(
                &http,
                &endpoint,
                reqwest::Method::DELETE,
                &format!("runs/{run_id}"),
            )
            .timeout(CLEANUP_TIMEOUT)
            .send()
            .await;
            match removed {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(
                        run = run_id,
                        "the local agent did not remove the run's work dir: {}",
                        refusal(r).await
                    );
                }
                Err(e) => {
                    tracing::warn!(run = run_id, error = %e.without_url(), "the local agent did not remove the run's work dir");
                }
            }
        }
        let scratch = scratch_dir(&self.inner.settings.data_dir, run_id);
        if let Err(e) = tokio::fs::remove_dir_all(&scratch).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(run = run_id, error = %e, "could not remove a local run's scratch dir");
        }
    }
}

/// A change that is not a well-formed commit on top of the snapshot, or too large to take.
fn bad_change(e: RepoError) -> Error {
    match e {
        RepoError::BadBundle(message) | RepoError::TooLarge(message) => Error::Repo {
            kind: "bad_change",
            message,
        },
        other => other.into(),
    }
}

/// Streams the agent's answer to `to`, refusing more than `max` bytes whatever its headers said.
async fn receive(resp: reqwest::Response, to: &Path, max: u64) -> Result<(), RepoError> {
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| RepoError::Io(format!("{}: {e}", to.display())))?;
    let mut body = resp.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            RepoError::BadBundle(format!(
                "the local agent's change broke off: {}",
                e.without_url()
            ))
        })?;
        total += chunk.len() as u64;
        if total > max {
            return Err(RepoError::TooLarge(format!(
                "the local agent's change is over {max} bytes"
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| RepoError::Io(format!("{}: {e}", to.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| RepoError::Io(format!("{}: {e}", to.display())))?;
    Ok(())
}

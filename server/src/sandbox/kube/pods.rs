//! Driving pods: make one (replacing a leftover), wait until it runs or ends (a watch from the
//! object's resourceVersion, not polling), read its log stream line by line, and delete it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, LogParams, PostParams, WatchEvent, WatchParams};
use tokio::sync::mpsc;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::manifest::CONTAINER;
use super::{api_error, conflict, not_found};
use crate::sandbox::lines::read_lines;
use crate::sandbox::{ExitInfo, SandboxError};

/// How long a pod may take to leave `Pending` (scheduling, volume attach, image pull).
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a deleted pod may take to be gone.
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);
/// Waiting reasons that mean the image cannot be had.
const IMAGE_REASONS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// Where a pod is, as far as the backend cares.
#[derive(Debug, Clone)]
pub(super) enum PodState {
    /// Not yet running.
    Pending,
    /// It cannot start: the message says why (`image` when the image cannot be had).
    Failed { why: String, image: bool },
    /// Its container runs; the pod IP once it has one.
    Running(Option<String>),
    /// Its container ended.
    Ended(ExitInfo),
    /// The pod is gone.
    Gone,
}

/// Reads a pod's state from its status.
pub(super) fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Pending;
    };
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.name == CONTAINER));
    if let Some(state) = container.and_then(|c| c.state.as_ref()) {
        if let Some(done) = &state.terminated {
            return PodState::Ended(ExitInfo {
                code: Some(done.exit_code),
                killed: false,
                oom: done.reason.as_deref() == Some("OOMKilled"),
            });
        }
        if state.running.is_some() {
            return PodState::Running(status.pod_ip.clone());
        }
        if let Some(waiting) = &state.waiting {
            let reason = waiting.reason.clone().unwrap_or_default();
            let image = IMAGE_REASONS.contains(&reason.as_str());
            if image || reason == "CreateContainerConfigError" || reason == "CreateContainerError" {
                return PodState::Failed {
                    why: format!("{reason}: {}", waiting.message.clone().unwrap_or_default()),
                    image,
                };
            }
        }
    }
    match status.phase.as_deref() {
        Some("Failed") => PodState::Failed {
            why: status
                .message
                .clone()
                .unwrap_or_else(|| "the pod failed".into()),
            image: false,
        },
        _ => PodState::Pending,
    }
}

/// The pod operations of the backend, cheap to clone into a run's task.
#[derive(Clone)]
pub(super) struct PodOps {
    /// The namespace's pods.
    pub(super) pods: kube::Api<Pod>,
}

impl PodOps {
    /// Makes `pod`, first deleting a leftover of the same name.
    pub(super) async fn make_pod(&self, pod: &Pod) -> Result<Pod, SandboxError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.delete_pod(&name).await?;
        match self.pods.create(&PostParams::default(), pod).await {
            Ok(made) => Ok(made),
            Err(e) if conflict(&e) => Err(SandboxError::Start(format!(
                "pod {name} still exists after being deleted"
            ))),
            Err(e) => Err(api_error(e)),
        }
    }

    /// Deletes a pod at once (no grace) and waits until it is gone; a missing pod is fine.
    pub(super) async fn delete_pod(&self, name: &str) -> Result<(), SandboxError> {
        let params = DeleteParams::default().grace_period(0);
        match self.pods.delete(name, &params).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(api_error(e)),
        }
        let gone = self
            .watch_pod(name, DELETE_TIMEOUT, |state| {
                matches!(state, PodState::Gone).then_some(())
            })
            .await;
        match gone {
            Ok(()) => Ok(()),
            Err(e) => Err(SandboxError::Io(format!("deleting pod {name}: {e}"))),
        }
    }

    /// Watches pod `name` until `until` says done, from its current state on; gives up after
    /// `within`.
    pub(super) async fn watch_pod<T>(
        &self,
        name: &str,
        within: Duration,
        mut until: impl FnMut(&PodState) -> Option<T>,
    ) -> Result<T, SandboxError> {
        let watching = async {
            loop {
                let (state, version) = match self.pods.get_opt(name).await.map_err(api_error)? {
                    Some(pod) => (
                        pod_state(&pod),
                        pod.metadata.resource_version.clone().unwrap_or_default(),
                    ),
                    None => (PodState::Gone, String::new()),
                };
                if let Some(done) = until(&state) {
                    return Ok(done);
                }
                if matches!(state, PodState::Gone) {
                    return Err(SandboxError::Start(format!("pod {name} is gone")));
                }
                let params = WatchParams::default()
                    .fields(&format!("metadata.name={name}"))
                    .timeout(290);
                let mut events = self
                    .pods
                    .watch(&params, &version)
                    .await
                    .map_err(api_error)?
                    .boxed();
                while let Some(event) = events.try_next().await.map_err(api_error)? {
                    let state = match event {
                        WatchEvent::Added(pod) | WatchEvent::Modified(pod) => pod_state(&pod),
                        WatchEvent::Deleted(_) => PodState::Gone,
                        WatchEvent::Bookmark(_) => continue,
                        // An expired version: start again from a fresh read.
                        WatchEvent::Error(_) => break,
                    };
                    if let Some(done) = until(&state) {
                        return Ok(done);
                    }
                    if matches!(state, PodState::Gone) {
                        return Err(SandboxError::Start(format!("pod {name} is gone")));
                    }
                }
                // The watch ended (its timeout, or the server closed it): read and watch again.
            }
        };
        tokio::time::timeout(within, watching).await.map_err(|_| {
            SandboxError::Start(format!(
                "pod {name}: nothing happened within {}s",
                within.as_secs()
            ))
        })?
    }

    /// Waits until pod `name` runs (its IP, if it has one yet) or has already ended.
    pub(super) async fn wait_started(&self, name: &str) -> Result<PodState, SandboxError> {
        let state = self
            .watch_pod(name, START_TIMEOUT, |state| match state {
                PodState::Pending => None,
                other => Some(other.clone()),
            })
            .await?;
        match state {
            PodState::Failed { why, image: true } => Err(SandboxError::ImageMissing(format!(
                "the sandbox image cannot be pulled ({why}): push it where the cluster pulls \
                 from, or set DELEGATE_SANDBOX_IMAGE to one that is"
            ))),
            PodState::Failed { why, .. } => Err(SandboxError::Start(why)),
            other => Ok(other),
        }
    }

    /// Waits until pod `name`'s container has ended and says how; a pod that is gone (deleted)
    /// ended without a code.
    pub(super) async fn wait_ended(&self, name: &str, within: Duration) -> ExitInfo {
        let ended = self
            .watch_pod(name, within, |state| match state {
                PodState::Ended(exit) => Some(exit.clone()),
                PodState::Failed { .. } | PodState::Gone => Some(ExitInfo::default()),
                _ => None,
            })
            .await;
        ended.unwrap_or_else(|e| {
            tracing::warn!(pod = name, error = %e, "cannot read how a pod ended");
            ExitInfo::default()
        })
    }

    /// The pod's output (stdout and stderr as one stream, as the log API gives it) line by
    /// line, following it until the container ends. Bounded: a slow reader slows the stream.
    pub(super) async fn follow_log(
        &self,
        name: &str,
    ) -> Result<mpsc::Receiver<String>, SandboxError> {
        let params = LogParams {
            container: Some(CONTAINER.into()),
            follow: true,
            ..Default::default()
        };
        let stream = self
            .pods
            .log_stream(name, &params)
            .await
            .map_err(api_error)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(read_lines(Box::pin(stream.compat()), move |line| {
            let tx = tx.clone();
            async move { tx.send(line).await.is_ok() }
        }));
        Ok(rx)
    }
}

//! Driving containers: make one (seeding its work volume), attach to its output, stop it,
//! remove it, and read how it ended.

use std::sync::atomic::Ordering;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use super::spec::Role;
use super::{
    DockerBackend, IN_WORKSPACE, Live, SANDBOX_UID, archive, check_image, engine_error, not_found,
};
use crate::sandbox::lines::read_lines;
use crate::sandbox::{ExitInfo, SandboxError};

impl DockerBackend {
    /// Makes the sandbox's container for `role` (replacing a leftover of the same name) and,
    /// the first time, seeds its work volume from the host mirror; later containers find the
    /// volume as the previous one left it (an ephemeral run sees what its setup changed).
    /// Returns the container's name.
    pub(super) async fn make_container(
        &self,
        id: &str,
        live: &Live,
        role: Role<'_>,
    ) -> Result<String, SandboxError> {
        let name = role.container_name(id);
        self.remove_container(&name).await?;
        let body = self.container_body(id, live, role).await?;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        if let Err(e) = self.docker.create_container(Some(options), body).await {
            return Err(match e {
                ref err if not_found(err) => check_image(&self.docker, &live.image)
                    .await
                    .err()
                    .unwrap_or_else(|| engine_error(e)),
                other => engine_error(other),
            });
        }
        if live.seeded.load(Ordering::Acquire) {
            return Ok(name);
        }
        self.upload_workspace(&name, live).await?;
        live.seeded.store(true, Ordering::Release);
        Ok(name)
    }

    /// Copies the host mirror of the work dir into container `name`'s work volume (made or
    /// running), owned by the sandbox user.
    pub(super) async fn upload_workspace(
        &self,
        name: &str,
        live: &Live,
    ) -> Result<(), SandboxError> {
        let seed = archive::pack(live.dirs.workspace.clone(), SANDBOX_UID, SANDBOX_UID).await?;
        self.docker
            .upload_to_container(
                name,
                Some(
                    UploadToContainerOptionsBuilder::new()
                        .path(IN_WORKSPACE)
                        .build(),
                ),
                bollard::body_full(seed.into()),
            )
            .await
            .map_err(engine_error)
    }

    pub(super) async fn remove_container(&self, name: &str) -> Result<(), SandboxError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            // Already being removed (a concurrent destroy).
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(engine_error(e)),
        }
    }

    /// Attaches to the container's output (before it starts, so nothing is missed) and splits
    /// it into stdout and stderr lines; optionally feeds `stdin` first.
    pub(super) async fn attach(
        &self,
        name: &str,
        stdin: Option<String>,
    ) -> Result<(mpsc::Receiver<String>, mpsc::Receiver<String>), SandboxError> {
        let options = AttachContainerOptionsBuilder::new()
            .stdin(stdin.is_some())
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = self
            .docker
            .attach_container(name, Some(options))
            .await
            .map_err(engine_error)?;
        if let Some(text) = stdin {
            let mut input = attached.input;
            tokio::spawn(async move {
                // opencode reads the prompt to EOF; closing our side closes its stdin
                // (StdinOnce). A failed write means it already exited.
                let _ = input.write_all(text.as_bytes()).await;
                let _ = input.shutdown().await;
            });
        }
        Ok(split_output(attached.output))
    }

    pub(super) async fn stop_container(&self, name: &str) -> Result<(), SandboxError> {
        let options = StopContainerOptionsBuilder::new().t(10).build();
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(engine_error(e)),
        }
    }
}

/// Splits Docker's multiplexed output into stdout and stderr lines. Each side is bounded, so a
/// slow consumer slows the container's output instead of piling it up here.
pub(super) fn split_output(
    output: impl Stream<Item = Result<LogOutput, DockerError>> + Send + Unpin + 'static,
) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let (out_bytes, out_rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
    let (err_bytes, err_rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
    tokio::spawn(async move {
        let mut output = output;
        while let Some(item) = output.next().await {
            let sent = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    out_bytes.send(Ok(message)).await
                }
                Ok(LogOutput::StdErr { message }) => err_bytes.send(Ok(message)).await,
                Ok(LogOutput::StdIn { .. }) => Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "container output ended with an error");
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    (lines_of(out_rx), lines_of(err_rx))
}

pub(super) fn lines_of(
    bytes: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    let reader = StreamReader::new(tokio_stream::wrappers::ReceiverStream::new(bytes));
    tokio::spawn(read_lines(reader, move |line| {
        let tx = tx.clone();
        async move { tx.send(line).await.is_ok() }
    }));
    rx
}

/// Waits for the container to stop, then reads how it ended.
pub(super) async fn exit_info(docker: &Docker, name: &str) -> ExitInfo {
    let options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut waiting = docker.wait_container(name, Some(options));
    // A non-zero exit arrives as an error from bollard; inspect says what happened either way.
    let _ = waiting.next().await;
    match docker.inspect_container(name, None).await {
        Ok(info) => {
            let state = info.state.unwrap_or_default();
            ExitInfo {
                code: state.exit_code.map(|c| c as i32),
                killed: false,
                oom: state.oom_killed.unwrap_or(false),
            }
        }
        Err(e) => {
            tracing::warn!(container = name, error = %e, "cannot inspect a finished container");
            ExitInfo::default()
        }
    }
}

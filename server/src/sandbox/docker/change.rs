//! A run's change, committed inside the sandbox: a short-lived container of the same image, with
//! the same hardening and the sandbox's work volume, runs delegate_repo's commit script as the
//! sandbox's user with no network, and leaves the change as a bundle inside the volume's `.git`.
//! The bundle comes out through Docker's archive API and is unpacked as hostile input (one plain
//! file, size-capped) into the sandbox's run dir, where the host's import reads it. Works the
//! same whether the sandbox's own container is running (warm) or has exited (ephemeral).

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
};

use super::archive;
use super::container::exit_info;
use super::{
    DockerBackend, IN_WORKSPACE, LABEL_KIND, LABEL_OWNER, LABEL_SANDBOX, Live, SANDBOX_UID,
    engine_error, volume_name,
};
use crate::sandbox::SandboxError;
use crate::sandbox::workdir::MAX_CHANGE_BYTES;

/// Where the commit container leaves the bundle: inside `.git`, so it is never part of a change.
const IN_BUNDLE: &str = "/workspace/.git/delegate-change.bundle";

impl DockerBackend {
    /// Commits the work volume's state on top of `base` inside a container, and puts the bundle
    /// into the sandbox's run dir on the host for [`crate::sandbox::workdir::SandboxDirs::import_changes`].
    pub(super) async fn export_change(
        &self,
        id: &str,
        live: &Live,
        base: &str,
        label: &str,
    ) -> Result<(), SandboxError> {
        let name = format!("delegate-commit-{id}");
        self.remove_container(&name).await?;
        let body = ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            user: Some(format!("{SANDBOX_UID}:{SANDBOX_UID}")),
            working_dir: Some(IN_WORKSPACE.into()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![delegate_repo::COMMIT_SCRIPT.into()]),
            env: Some(vec![
                "HOME=/tmp".into(),
                format!("DELEGATE_BASE={base}"),
                format!("DELEGATE_OUT={IN_BUNDLE}"),
                format!("DELEGATE_MESSAGE={label}"),
            ]),
            labels: Some(HashMap::from([
                (LABEL_SANDBOX.to_string(), id.to_string()),
                (LABEL_KIND.to_string(), "commit".to_string()),
                (LABEL_OWNER.to_string(), self.owner.clone()),
            ])),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:{IN_WORKSPACE}", volume_name(id, "work"))]),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "rw,nosuid,nodev,size=256m,mode=1777".to_string(),
                )])),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                memory: Some(self.memory_bytes),
                memory_swap: Some(self.memory_bytes),
                pids_limit: Some(self.pids_max),
                network_mode: Some("none".into()),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(engine_error)?;
        let outcome = self.commit_in(&name, live).await;
        let _ = self.remove_container(&name).await;
        outcome
    }

    async fn commit_in(&self, name: &str, live: &Live) -> Result<(), SandboxError> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(engine_error)?;
        let exit = exit_info(&self.docker, name).await;
        if exit.code != Some(0) {
            return Err(SandboxError::Io(format!(
                "committing the change inside the sandbox failed (exit {:?}{})",
                exit.code,
                if exit.oom { ", out of memory" } else { "" }
            )));
        }
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(IN_BUNDLE)
            .build();
        let stream = self.docker.download_from_container(name, Some(options));
        archive::unpack_file(
            Box::pin(stream),
            "delegate-change.bundle",
            live.dirs.run.join("changes.bundle"),
            MAX_CHANGE_BYTES,
        )
        .await
    }
}

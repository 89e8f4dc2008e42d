//! A real Docker Engine (`scripts/dockerd`) with delegate's real sandbox image, for the tests that
//! run the docker backend: its settings, and what it leaves behind.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
use delegate_server::orchestrator::Orchestrator;
use delegate_server::settings::{BackendChoice, DockerNetwork, Settings};
use delegate_testkit::anthropic::Script;
use delegate_testkit::real;

use super::Harness;

pub struct DockerHarness {
    pub h: Harness,
    pub host: String,
    pub docker: Docker,
}

impl DockerHarness {
    pub async fn new(script: Script) -> Option<DockerHarness> {
        let h = Harness::new(script).await?;
        let host = real::docker_host()?;
        let docker = Docker::connect_with_host(&host)
            .unwrap()
            .negotiate_version()
            .await
            .expect("negotiate the API version");
        let image = real::sandbox_image();
        if docker.inspect_image(&image).await.is_err() {
            return real::unavailable(
                "the sandbox image",
                &format!("{image} is not built (sandbox-image/build --offline --lean)"),
            );
        }
        Some(DockerHarness { h, host, docker })
    }

    pub fn settings(&self) -> Settings {
        let mut s = self.h.settings();
        s.backend = BackendChoice::Docker;
        s.docker.host = Some(self.host.clone());
        s.docker.image = real::sandbox_image();
        s.docker.network = DockerNetwork::None;
        s.sandbox_memory_mb = 1024;
        s.sandbox_pids_max = 512;
        s
    }

    pub async fn orchestrator(&self, settings: Settings) -> Orchestrator {
        delegate_server::app::embedded(settings)
            .await
            .expect("an orchestrator with the docker backend")
    }

    /// The env that makes `delegate serve` use this engine and image.
    pub fn serve_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DELEGATE_BACKEND", "docker".into()),
            ("DOCKER_HOST", self.host.clone()),
            ("DELEGATE_SANDBOX_IMAGE", real::sandbox_image()),
            ("DELEGATE_SANDBOX_MEMORY_MB", "1024".into()),
        ]
    }

    /// Names of containers and volumes that still carry `sandbox_id`'s label.
    pub async fn leftovers(&self, sandbox_id: &str) -> Vec<String> {
        let label = format!("delegate.sandbox={sandbox_id}");
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap();
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .unwrap();
        containers
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .chain(
                volumes
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.name),
            )
            .collect()
    }

    pub async fn container_running(&self, sandbox_id: &str) -> bool {
        self.docker
            .inspect_container(&format!("delegate-{sandbox_id}"), None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }
}

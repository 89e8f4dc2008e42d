//! One test body on several sandbox backends: [`Bed`] is the process backend's [`Harness`], the
//! docker backend's [`DockerHarness`] or the kubernetes backend's [`KubeHarness`] (on the fake
//! cluster), behind the same calls.

#![allow(dead_code)] // each test binary uses a different part

use delegate_server::orchestrator::Orchestrator;
use delegate_server::settings::Settings;
use delegate_testkit::anthropic::{FakeAnthropic, Script};

use super::Harness;
use super::docker::DockerHarness;
use super::kube::KubeHarness;

/// Which backend a test body runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Process,
    Docker,
    Kube,
}

/// A test bed on one backend: the fake upstream, settings, and the real components it needs.
pub enum Bed {
    Process(Harness),
    Docker(DockerHarness),
    Kube(Box<KubeHarness>),
}

impl Bed {
    /// `None` (after saying why) when a real component of `backend` is missing and skipping is
    /// allowed.
    pub async fn new(backend: Backend, script: Script) -> Option<Bed> {
        match backend {
            Backend::Process => Harness::new(script).await.map(Bed::Process),
            Backend::Docker => DockerHarness::new(script).await.map(Bed::Docker),
            Backend::Kube => KubeHarness::new(script)
                .await
                .map(|k| Bed::Kube(Box::new(k))),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Bed::Process(_) => Backend::Process,
            Bed::Docker(_) => Backend::Docker,
            Bed::Kube(_) => Backend::Kube,
        }
    }

    pub fn harness(&self) -> &Harness {
        match self {
            Bed::Process(h) => h,
            Bed::Docker(d) => &d.h,
            Bed::Kube(k) => &k.h,
        }
    }

    pub fn fake(&self) -> &FakeAnthropic {
        &self.harness().fake
    }

    pub fn settings(&self) -> Settings {
        match self {
            Bed::Process(h) => h.settings(),
            Bed::Docker(d) => d.settings(),
            Bed::Kube(k) => k.settings(),
        }
    }

    pub async fn orchestrator(&self) -> Orchestrator {
        delegate_server::app::embedded(self.settings())
            .await
            .expect("an embedded orchestrator")
    }

    /// Names of containers and volumes (pods, claims, secrets) left for `sandbox_id` (always
    /// none on the process backend, whose sandboxes are directories and processes).
    pub async fn leftovers(&self, sandbox_id: &str) -> Vec<String> {
        match self {
            Bed::Process(_) => Vec::new(),
            Bed::Docker(d) => d.leftovers(sandbox_id).await,
            Bed::Kube(k) => {
                let name = delegate_server::sandbox::kube::object_name(sandbox_id, "");
                k.leftovers()
                    .into_iter()
                    .filter(|n| n.contains(&name))
                    .collect()
            }
        }
    }
}

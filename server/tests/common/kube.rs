//! The fake Kubernetes API server of `delegate_testkit::kube` (its pods are containers of the
//! real sandbox image on the test Docker Engine, on the host's network) and the settings of a
//! server that uses it.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;

use delegate_server::orchestrator::Orchestrator;
use delegate_server::settings::{BackendChoice, Settings};
use delegate_testkit::anthropic::Script;
use delegate_testkit::kube::{FakeCluster, Recorded};
use delegate_testkit::real;
use serde_json::Value;

use super::Harness;

pub const NAMESPACE: &str = "delegate-test";

pub struct KubeHarness {
    pub h: Harness,
    pub cluster: FakeCluster,
    pub kubeconfig: PathBuf,
}

impl KubeHarness {
    pub async fn new(script: Script) -> Option<KubeHarness> {
        let h = Harness::new(script).await?;
        let host = real::docker_host()?;
        let docker = bollard::Docker::connect_with_host(&host)
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
        let cluster = FakeCluster::start(&host)
            .await
            .expect("start the fake API server");
        let kubeconfig = cluster
            .kubeconfig(h.dir.path(), NAMESPACE)
            .expect("write a kubeconfig");
        Some(KubeHarness {
            h,
            cluster,
            kubeconfig,
        })
    }

    pub fn settings(&self) -> Settings {
        let mut s = self.h.settings();
        s.backend = BackendChoice::Kubernetes;
        s.docker.image = real::sandbox_image();
        s.kube.kubeconfig = Some(self.kubeconfig.clone());
        s.kube.namespace = Some(NAMESPACE.into());
        // The fake's pods share the host's network: the proxy on loopback stands in for the
        // server's Service.
        s.kube.proxy_url = Some("loopback".into());
        // And its egress listener on loopback is what pods of a sandbox with a policy reach.
        s.egress.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        s.kube.egress_url = Some("loopback".into());
        s.sandbox_memory_mb = 1024;
        s
    }

    pub async fn orchestrator(&self) -> Orchestrator {
        delegate_server::app::embedded(self.settings())
            .await
            .expect("an orchestrator with the kubernetes backend")
    }

    /// Names of every pod, secret and claim left in the namespace.
    pub fn leftovers(&self) -> Vec<String> {
        self.leftovers_in(NAMESPACE)
    }

    /// Names of every pod, secret and claim left in `namespace`.
    pub fn leftovers_in(&self, namespace: &str) -> Vec<String> {
        ["pods", "secrets", "persistentvolumeclaims"]
            .into_iter()
            .flat_map(|r| {
                self.cluster
                    .names(r, namespace)
                    .into_iter()
                    .map(move |n| format!("{r}/{n}"))
            })
            .collect()
    }

    /// The bodies of the objects of `resource` the backend created, in order.
    pub fn created(&self, resource: &str) -> Vec<Value> {
        self.created_at(&format!("/api/v1/namespaces/{NAMESPACE}/{resource}"))
    }

    /// The bodies the backend POSTed to `path`, in order.
    pub fn created_at(&self, path: &str) -> Vec<Value> {
        self.cluster
            .requests()
            .into_iter()
            .filter(|r: &Recorded| r.method == "POST" && r.path == path)
            .filter_map(|r| r.body)
            .collect()
    }
}

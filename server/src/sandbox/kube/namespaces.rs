//! A namespace per workspace (`DELEGATE_K8S_NAMESPACE_PER_WORKSPACE`): where a sandbox's objects
//! go, making a workspace's namespace on first use, and finding the namespace of a sandbox
//! this process does not hold. With the option off every sandbox is in `DELEGATE_K8S_NAMESPACE`.
//!
//! - `PREFIX-<workspace id>` (`_` as `-`), with the label `delegate.workspace=<id>` and a copy
//!   of the sandbox NetworkPolicy (`DELEGATE_K8S_NETWORK_POLICY` in `PREFIX`, as the chart
//!   renders it), both made before the workspace's first sandbox object. A 409 on either means
//!   another replica made it first. Empty namespaces stay: cheap, and deleting one races a
//!   create.
//! - A namespace name is a DNS-1123 label of at most 63 characters: a prefix too long for a
//!   workspace id refuses to start, naming the longest that fits.
//! - A sandbox's namespace is read from its Secret, listed across namespaces by
//!   `delegate.sandbox=<id>`; sweeps list pods, claims and Secrets across namespaces too.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret as KubeSecret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{ListParams, PostParams};

use super::manifest::{LABEL_SANDBOX, workspace_namespace, workspace_policy};
use super::{KubeBackend, Place, api_error, conflict, object_name};
use crate::sandbox::{SandboxError, SandboxSpec};

/// The longest name Kubernetes takes for a namespace (a DNS-1123 label).
const MAX_NAMESPACE: usize = 63;

/// The namespace of `workspace`'s sandboxes under `prefix`, if it is a valid name.
pub(super) fn namespace_for(prefix: &str, workspace: &str) -> Result<String, SandboxError> {
    let name = format!(
        "{prefix}-{}",
        workspace.replace('_', "-").to_ascii_lowercase()
    );
    let label = name.len() <= MAX_NAMESPACE
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if label {
        Ok(name)
    } else {
        Err(SandboxError::BadInput(format!(
            "workspace {workspace}: namespace {name:?} is not a DNS-1123 label (lower-case \
             letters, digits and '-', at most {MAX_NAMESPACE} characters)"
        )))
    }
}

/// Refuses a `DELEGATE_K8S_NAMESPACE` that leaves no room for a workspace id.
pub(super) fn check_prefix(prefix: &str) -> Result<(), SandboxError> {
    let sample = crate::ids::new_id("wsp");
    namespace_for(prefix, &sample).map(|_| ()).map_err(|_| {
        SandboxError::Missing(format!(
            "DELEGATE_K8S_NAMESPACE_PER_WORKSPACE: namespace {prefix:?} cannot prefix a \
             workspace's namespace (PREFIX-{}): a DNS-1123 label of at most {MAX_NAMESPACE} \
             characters, so a prefix of at most {} lower-case letters, digits and '-'",
            sample.replace('_', "-"),
            MAX_NAMESPACE - 1 - sample.len()
        ))
    })
}

impl KubeBackend {
    /// Lists `K` where this server's sandboxes may be: across namespaces with a namespace per
    /// workspace, else in its one namespace.
    pub(super) fn across<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        if self.settings.namespace_per_workspace {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.home.namespace)
        }
    }

    /// Where a new sandbox's objects go; its workspace's namespace is made first if need be.
    pub(super) async fn place_for(&self, spec: &SandboxSpec) -> Result<Place, SandboxError> {
        if !self.settings.namespace_per_workspace {
            return Ok(self.home.clone());
        }
        let workspace = spec.workspace.as_deref().ok_or_else(|| {
            SandboxError::BadInput(format!(
                "sandbox {}: no workspace to name its namespace after",
                spec.id
            ))
        })?;
        let name = namespace_for(&self.home.namespace, workspace)?;
        self.make_namespace(&name, workspace).await?;
        Ok(Place::new(&self.client, &name))
    }

    /// Makes workspace namespace `name` and its NetworkPolicy, unless this process saw them
    /// made; another replica's having made either is fine.
    async fn make_namespace(&self, name: &str, workspace: &str) -> Result<(), SandboxError> {
        let seen = |made: &std::sync::Mutex<std::collections::HashSet<String>>| {
            made.lock().map(|m| m.contains(name)).unwrap_or(false)
        };
        if seen(&self.namespaces_made) {
            return Ok(());
        }
        let post = PostParams::default();
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces
            .create(&post, &workspace_namespace(name, workspace))
            .await
        {
            Ok(_) => tracing::info!(namespace = name, workspace, "made a workspace namespace"),
            Err(e) if conflict(&e) => {}
            Err(e) => return Err(api_error(e)),
        }
        if let Some(policy) = &self.settings.network_policy {
            let template = Api::<NetworkPolicy>::namespaced(
                self.client.clone(),
                &self.home.namespace,
            )
            .get_opt(policy)
            .await
            .map_err(api_error)?
            .ok_or_else(|| {
                SandboxError::Missing(format!(
                    "DELEGATE_K8S_NETWORK_POLICY: no NetworkPolicy {policy} in namespace {} \
                         to copy into workspace namespace {name}",
                    self.home.namespace
                ))
            })?;
            let policies: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), name);
            match policies
                .create(&post, &workspace_policy(&template, workspace))
                .await
            {
                Ok(_) => {}
                Err(e) if conflict(&e) => {}
                Err(e) => return Err(api_error(e)),
            }
        }
        if let Ok(mut made) = self.namespaces_made.lock() {
            made.insert(name.to_string());
        }
        Ok(())
    }

    /// The sandbox's Secret and the namespace it is in; `None` when it is gone.
    pub(super) async fn find_secret(
        &self,
        id: &str,
    ) -> Result<Option<(Place, KubeSecret)>, SandboxError> {
        let name = object_name(id, "");
        if !self.settings.namespace_per_workspace {
            let found = self.home.secrets.get_opt(&name).await.map_err(api_error)?;
            return Ok(found.map(|s| (self.home.clone(), s)));
        }
        let params = ListParams::default()
            .labels(&format!("{LABEL_SANDBOX}={id}"))
            .fields(&format!("metadata.name={name}"));
        let found = Api::<KubeSecret>::all(self.client.clone())
            .list(&params)
            .await
            .map_err(api_error)?
            .items
            .into_iter()
            .next();
        Ok(found.and_then(|secret| {
            let namespace = secret.metadata.namespace.clone()?;
            Some((Place::new(&self.client, &namespace), secret))
        }))
    }

    /// Every namespace holding a pod, claim or Secret of the sandbox (for deleting it when
    /// this process does not hold it, its Secret possibly gone already).
    pub(super) async fn places_of(&self, id: &str) -> Result<Vec<Place>, SandboxError> {
        if !self.settings.namespace_per_workspace {
            return Ok(vec![self.home.clone()]);
        }
        let params = ListParams::default().labels(&format!("{LABEL_SANDBOX}={id}"));
        let mut namespaces = BTreeSet::new();
        namespaces.extend(self.namespaces_holding::<Pod>(&params).await?);
        namespaces.extend(
            self.namespaces_holding::<PersistentVolumeClaim>(&params)
                .await?,
        );
        namespaces.extend(self.namespaces_holding::<KubeSecret>(&params).await?);
        Ok(namespaces
            .into_iter()
            .map(|ns| Place::new(&self.client, &ns))
            .collect())
    }

    /// The namespaces of the `K` objects `params` selects, across namespaces.
    async fn namespaces_holding<K>(&self, params: &ListParams) -> Result<Vec<String>, SandboxError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(self
            .across::<K>()
            .list_metadata(params)
            .await
            .map_err(api_error)?
            .items
            .into_iter()
            .filter_map(|o| o.metadata.namespace)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_namespace_is_a_dns_label_or_refused_with_the_limit() {
        let ws = "wsp_0192f3aa0192f3aa0192f3aa0192f3aa";
        assert_eq!(
            namespace_for("delegate", ws).unwrap(),
            "delegate-wsp-0192f3aa0192f3aa0192f3aa0192f3aa"
        );
        // 63 characters exactly fit; one more does not.
        let fits = "d".repeat(63 - 1 - ws.len());
        assert_eq!(namespace_for(&fits, ws).unwrap().len(), 63);
        let err = namespace_for(&format!("{fits}x"), ws).unwrap_err();
        assert!(err.to_string().contains("at most 63"), "{err}");
        assert!(namespace_for("Delegate", ws).is_err());
        assert!(namespace_for("delegate", "wsp_a.b").is_err());
        assert!(check_prefix(&fits).is_ok());
        let err = check_prefix(&format!("{fits}x")).unwrap_err().to_string();
        assert!(err.contains("at most 26"), "{err}");
    }
}

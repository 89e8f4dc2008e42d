//! [`EmbeddedDelegator`]: the MCP tools' [`Delegator`] over the [`Service`] of an orchestrator
//! in this process (`delegate mcp`, `/mcp` of `delegate serve`).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use delegate_mcp::delegator::{Caller, DelegateError, Delegator, Progress};
use delegate_mcp::tools::{
    CancelRunInput, CancelRunOutput, CreateSandboxInput, DeleteSandboxInput, DeleteSandboxOutput,
    ListSandboxesInput, ListSandboxesOutput, RunInSandboxInput, SandboxInfo, StreamSessionInput,
    StreamSessionOutput,
};
use delegate_mcp::types::{RepoBase, RunResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Error, Service};
use crate::orchestrator::Orchestrator;

/// The MCP tools' [`Delegator`] for an orchestrator in this process.
pub struct EmbeddedDelegator {
    service: Service,
}

impl EmbeddedDelegator {
    /// The MCP tools over `orch`, with the same role checks as the REST API.
    pub fn new(orch: Orchestrator) -> Self {
        EmbeddedDelegator {
            service: Service::new(orch),
        }
    }

    /// Runs started here get their `watch_url` and a first progress line naming it from `watch`
    /// (the embedded mode's loopback UI).
    pub fn with_watch(self, watch: std::sync::Arc<dyn super::WatchLinks>) -> Self {
        EmbeddedDelegator {
            service: self.service.with_watch(watch),
        }
    }
}

#[async_trait]
impl Delegator for EmbeddedDelegator {
    async fn run_in_sandbox(
        &self,
        caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError> {
        Ok(self
            .service
            .run_in_sandbox(caller, input, progress, cancel)
            .await?)
    }

    async fn create_sandbox(
        &self,
        caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError> {
        Ok(self.service.create_sandbox(caller, input).await?)
    }

    async fn stream_session(
        &self,
        caller: &Caller,
        input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError> {
        Ok(self
            .service
            .stream_session(
                caller,
                input,
                Duration::from_secs(delegate_mcp::tools::DEFAULT_WAIT_SECONDS),
                None,
            )
            .await?)
    }

    async fn list_sandboxes(
        &self,
        caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError> {
        Ok(self.service.list_sandboxes(caller, input).await?)
    }

    async fn delete_sandbox(
        &self,
        caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError> {
        // The wire's text is parsed once, here: a malformed id is not found.
        let id = input.sandbox_id.parse().map_err(Error::from)?;
        Ok(self.service.delete_sandbox(caller, &id).await?)
    }

    async fn cancel_run(
        &self,
        caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError> {
        let id = input.run_id.parse().map_err(Error::from)?;
        Ok(self.service.cancel_run(caller, &id).await?)
    }

    async fn upload_snapshot(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        base: &RepoBase,
        bundle: &Path,
    ) -> Result<String, DelegateError> {
        Ok(self
            .service
            .snapshot_from_file(caller, workspace, base.clone(), bundle)
            .await?)
    }

    async fn download_change(
        &self,
        caller: &Caller,
        run_id: &str,
        out: &Path,
    ) -> Result<String, DelegateError> {
        let id = run_id.parse().map_err(Error::from)?;
        let change = self.service.run_bundle(caller, &id).await?;
        tokio::fs::copy(&change.path, out)
            .await
            .map_err(|e| DelegateError::Internal(format!("{}: {e}", out.display())))?;
        Ok(change.commit)
    }

    async fn read_patch(
        &self,
        caller: &Caller,
        run_id: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, DelegateError> {
        let id = run_id.parse().map_err(Error::from)?;
        let change = self.service.run_patch(caller, &id).await?;
        if change.bytes > max_bytes {
            let url = self
                .service
                .orchestrator()
                .settings()
                .public_url
                .as_deref()
                .map(|u| format!(" from {}/api/runs/{run_id}/patch", u.trim_end_matches('/')))
                .unwrap_or_default();
            return Err(DelegateError::Limit(format!(
                "the patch of run {run_id} is {} bytes, over the {max_bytes} asked for; download \
                 it{url} instead, or apply it with apply_changes",
                change.bytes
            )));
        }
        let bytes = tokio::fs::read(&change.path)
            .await
            .map_err(|e| DelegateError::Internal(crate::error::logged(e)))?;
        Ok(bytes)
    }
}

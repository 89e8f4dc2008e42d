//! Warm sandboxes on behalf of a caller: create, list, read, delete, pause, resume.

use std::time::Duration;

use delegate_mcp::delegator::Caller;
use delegate_mcp::tools::{
    CreateSandboxInput, DeleteSandboxOutput, ListSandboxesInput, ListSandboxesOutput, SandboxInfo,
};
use delegate_mcp::types::SandboxStatus;

use super::{Action, Error, RepoInput, Result, Service, internal};
use crate::ids::{Origin, SandboxId};
use crate::orchestrator::SandboxRequest;

impl Service {
    /// Creates a warm sandbox in a workspace the caller may write to.
    pub async fn create_sandbox(
        &self,
        caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo> {
        let ws = self
            .authorize(caller, input.workspace.as_deref(), Action::Write)
            .await?;
        let snapshot = self
            .starting_point(
                caller,
                &ws,
                None,
                RepoInput {
                    repo: input.repo.as_deref(),
                    git_ref: input.git_ref.as_deref(),
                    snapshot: input.snapshot.as_deref(),
                },
            )
            .await?;
        let sandbox = self
            .orch
            .create_sandbox(SandboxRequest {
                workspace: Some(ws.id),
                name: input.name,
                files: input.files.unwrap_or_default(),
                idle_timeout: input.idle_timeout_seconds.map(Duration::from_secs),
                snapshot,
                created_by: Some(Origin::User(caller.user_id.clone())),
                network: input.network,
                inputs: crate::orchestrator::SandboxInputs {
                    env: input.env.unwrap_or_default(),
                    secrets: input.secrets.unwrap_or_default(),
                    setup: input.setup,
                    image: input.image,
                },
            })
            .await?;
        Ok(self.info(&sandbox))
    }

    /// The sandboxes of a workspace the caller may read, newest first.
    pub async fn list_sandboxes(
        &self,
        caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput> {
        let ws = self
            .authorize(caller, input.workspace.as_deref(), Action::Read)
            .await?;
        let sandboxes = self.orch.list_sandboxes(Some(&ws.id)).await?;
        Ok(ListSandboxesOutput {
            sandboxes: sandboxes.iter().map(|s| self.info(s)).collect(),
        })
    }

    /// One sandbox the caller may read; others' look unknown.
    pub async fn get_sandbox(&self, caller: &Caller, id: &SandboxId) -> Result<SandboxInfo> {
        let sandbox = self.sandbox(caller, id, Action::Read).await?;
        Ok(self.info(&sandbox))
    }

    /// Deletes a sandbox with its files (writers only); a run in it is cancelled first.
    pub async fn delete_sandbox(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> Result<DeleteSandboxOutput> {
        self.sandbox(caller, id, Action::Write).await?;
        self.orch.delete_sandbox(id).await?;
        let sandbox = self
            .orch
            .store()
            .sandbox(id.as_str())
            .await
            .map_err(internal)?;
        Ok(DeleteSandboxOutput {
            sandbox_id: sandbox.id,
            status: sandbox.status,
        })
    }

    /// Pauses a warm sandbox (files kept); refused while a run is in it.
    pub async fn pause_sandbox(&self, caller: &Caller, id: &SandboxId) -> Result<SandboxInfo> {
        let sandbox = self.sandbox(caller, id, Action::Write).await?;
        match sandbox.status {
            SandboxStatus::Paused => return Ok(self.info(&sandbox)),
            SandboxStatus::Running => {}
            status => {
                return Err(Error::Conflict(format!(
                    "sandbox {} is {status}, not running",
                    sandbox.id
                )));
            }
        }
        self.orch.pause_sandbox(id).await?;
        self.fresh_info(id).await
    }

    /// Starts a paused sandbox again.
    pub async fn resume_sandbox(&self, caller: &Caller, id: &SandboxId) -> Result<SandboxInfo> {
        self.sandbox(caller, id, Action::Write).await?;
        self.orch.resume_sandbox(id).await?;
        self.fresh_info(id).await
    }

    async fn fresh_info(&self, id: &SandboxId) -> Result<SandboxInfo> {
        let sandbox = self
            .orch
            .store()
            .sandbox(id.as_str())
            .await
            .map_err(internal)?;
        Ok(self.info(&sandbox))
    }
}

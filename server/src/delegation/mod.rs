//! The service layer both the MCP tools and the REST API call: resolves the caller's workspace,
//! checks the caller's role there (one place, [`Service::authorize`]), and maps orchestrator
//! results and errors to the wire types of `delegate_mcp`. [`EmbeddedDelegator`] is the MCP
//! tools' [`Delegator`](delegate_mcp::delegator::Delegator) over it; `crate::api` is the REST surface over it.
//!
//! This file holds the service, its authorization and lookups; `runs.rs` the run operations,
//! `sandboxes.rs` the warm-sandbox operations, `repos.rs` repositories in (snapshots) and changes
//! out (patches, bundles), `embedded.rs` the MCP tools' delegator.

pub mod clone;
mod embedded;
mod repos;
mod runs;
mod sandboxes;

pub use embedded::EmbeddedDelegator;
pub use repos::{RepoInput, RunChange};
pub use runs::{MAX_EVENTS_PER_POLL, MAX_WAIT, is_parent};

use delegate_mcp::delegator::Caller;
use delegate_mcp::tools::SandboxInfo;

use crate::ids::{RunId, SandboxId};
use crate::orchestrator::Orchestrator;
use crate::store::{Role, Run, Sandbox, StoreError, Workspace};

// One error for the service and the orchestrator; each surface maps it once.
pub use crate::error::{Error, Result, internal};

pub use crate::roles::Action;

/// The operations of delegate on behalf of a [`Caller`]; cheap to clone.
#[derive(Clone)]
pub struct Service {
    orch: Orchestrator,
    watch: Option<std::sync::Arc<dyn WatchLinks>>,
}

/// Makes the links a person opens to watch a run live, where the runs' `watch_url` can not come
/// from `DELEGATE_PUBLIC_URL`: the embedded mode's loopback UI (`crate::watch`).
pub trait WatchLinks: Send + Sync {
    /// A fresh link to watch `run_id`, or `None` when none can be made.
    fn link(&self, run_id: &str) -> Option<String>;
}

impl Service {
    /// The service over one orchestrator.
    pub fn new(orch: Orchestrator) -> Self {
        Service { orch, watch: None }
    }

    /// The service whose runs get their `watch_url` (and a first progress line naming it) from
    /// `watch`.
    pub fn with_watch(mut self, watch: std::sync::Arc<dyn WatchLinks>) -> Self {
        self.watch = Some(watch);
        self
    }

    /// A link to watch `run_id` live, when this service makes them.
    fn watch_link(&self, run_id: &str) -> Option<String> {
        self.watch.as_ref().and_then(|w| w.link(run_id))
    }

    /// The orchestrator underneath, for callers that need more than the service's checked calls.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    /// The workspace a call acts in, if the caller may do `action` there. Guests only read.
    pub async fn authorize(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        action: Action,
    ) -> Result<Workspace> {
        self.authorize_role(caller, workspace, action)
            .await
            .map(|(ws, _)| ws)
    }

    /// [`Self::authorize`], also returning the caller's role there.
    pub async fn authorize_role(
        &self,
        caller: &Caller,
        workspace: Option<&str>,
        action: Action,
    ) -> Result<(Workspace, Role)> {
        let store = self.orch.store();
        let memberships = store
            .workspaces_of_user(&caller.user_id)
            .await
            .map_err(internal)?;
        // A workspace-scoped token sees only its workspace: every other one looks unknown.
        let mut memberships = memberships
            .into_iter()
            .filter(|(ws, _)| caller.workspace_id.as_ref().is_none_or(|id| *id == ws.id));
        let found = match workspace {
            None => memberships.next(),
            Some(w) => memberships.find(|(ws, _)| ws.slug == w || ws.id == w),
        };
        // Not a member and no such workspace look the same: no probing for names.
        let (ws, role) = found.ok_or_else(|| {
            Error::NotFound(match workspace {
                Some(w) => format!("workspace {w:?}"),
                None => "no workspace for this user".into(),
            })
        })?;
        if !crate::roles::allows(role, action) {
            return Err(Error::Forbidden(format!(
                "your role in workspace {} is {}: not allowed to do this",
                ws.slug,
                role.as_str()
            )));
        }
        Ok((ws, role))
    }

    /// A sandbox the caller may act on.
    pub async fn sandbox(
        &self,
        caller: &Caller,
        id: &SandboxId,
        action: Action,
    ) -> Result<Sandbox> {
        self.sandbox_in_workspace(caller, id, action)
            .await
            .map(|(sandbox, _)| sandbox)
    }

    /// [`Self::sandbox`] with its workspace, read and authorized once.
    async fn sandbox_in_workspace(
        &self,
        caller: &Caller,
        id: &SandboxId,
        action: Action,
    ) -> Result<(Sandbox, Workspace)> {
        let not_found = || Error::NotFound(format!("sandbox {:?}", id.as_str()));
        let sandbox = match self.orch.store().sandbox(id.as_str()).await {
            Ok(s) => s,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(internal(e)),
        };
        match self
            .authorize(caller, Some(&sandbox.workspace_id), action)
            .await
        {
            Ok(ws) => Ok((sandbox, ws)),
            Err(Error::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    /// A run the caller may act on, or a parent of attempts (a row standing for it, see
    /// [`crate::orchestrator::parent_row`]).
    pub async fn run(&self, caller: &Caller, id: &RunId, action: Action) -> Result<Run> {
        let not_found = || Error::NotFound(format!("run {:?}", id.as_str()));
        let run = match self.run_or_parent(id).await {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        match self
            .authorize(caller, Some(&run.workspace_id), action)
            .await
        {
            Ok(_) => Ok(run),
            Err(Error::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    /// A sandbox as the wire types report it.
    pub fn info(&self, s: &Sandbox) -> SandboxInfo {
        let public = self.orch.settings().public_url.as_deref();
        SandboxInfo {
            sandbox_id: s.id.clone(),
            name: s.name.clone(),
            status: s.status,
            backend: s.backend.clone(),
            kind: s.kind.as_str().to_string(),
            status_reason: s.status_reason.clone(),
            watch_url: public.map(|u| format!("{}/sandboxes/{}", u.trim_end_matches('/'), s.id)),
            // Browsers go through the gateway when there is one (the loopback URL is the server's).
            // A row's id is always well formed.
            opencode_url: SandboxId::parse(&s.id)
                .and_then(|id| self.orch.opencode_url(&id))
                .map(|local| self.orch.settings().sandbox_origin(&s.id).unwrap_or(local)),
            base: s.base.clone(),
            created_at: s.created_at,
        }
    }
}

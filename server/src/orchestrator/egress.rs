//! Egress in the orchestrator: which policy a new sandbox gets (the request's `network`, checked
//! against the server's policies and the workspace's choice, before any sandbox exists), the
//! sandbox's egress proxy, and a run's window on it: each connection becomes an `egress` event in
//! the run's log and the totals land in the result.

use std::sync::Arc;
use std::time::Duration;

use delegate_mcp::types::EgressSummary;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::log::RunLog;
use super::{Error, Orchestrator, Result, lock};
use crate::egress::policy::{NONE, check_name};
use crate::egress::{Egress, EgressRecord, Limits, Policies, Policy, Refused};
use crate::ids::now_ms;
use crate::proxy::TokenRefused;
use crate::store::Workspace;

/// How long the end of a run waits for the sandbox's egress connections to close.
const SETTLE: Duration = Duration::from_secs(2);
/// Egress records waiting to become events; past it records are dropped (totals still count).
const EVENT_BACKLOG: usize = 256;

/// A workspace's egress choice: the policies its members may pick (`none` always), and the one
/// a sandbox gets when the request names none. Unset, every policy of the server is allowed and
/// the default is the server's (`DELEGATE_EGRESS_DEFAULT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceEgress {
    /// Policy names members may use.
    pub allowed: Vec<String>,
    /// The policy of a sandbox whose request names none; one of `allowed`.
    pub default: String,
}

/// A run's open window on its sandbox's egress proxy.
pub(super) struct EgressWindow {
    egress: Arc<Egress>,
    events: JoinHandle<()>,
}

/// The server's policies from the settings; a bad policy stops the server at start with the
/// policy and the entry named.
pub(super) fn policies(settings: &crate::settings::Settings) -> Result<Policies> {
    Policies::new(&settings.egress.policies, settings.egress.default_policy())
        .map_err(Error::Invalid)
}

impl Orchestrator {
    /// The egress policies this server knows.
    pub fn egress_policies(&self) -> &Policies {
        &self.inner.policies
    }

    /// The workspace's egress choice in effect (its admins' or the server's defaults).
    pub async fn workspace_egress(&self, ws: &Workspace) -> Result<WorkspaceEgress> {
        let policies = &self.inner.policies;
        let stored = self.inner.store.workspace_egress(&ws.id).await?;
        let chosen = stored.and_then(|v| serde_json::from_value::<WorkspaceEgress>(v).ok());
        Ok(match chosen {
            None => WorkspaceEgress {
                allowed: policies.names().map(str::to_string).collect(),
                default: policies.default_name().to_string(),
            },
            Some(mut c) => {
                // A policy removed from the settings since is simply gone.
                c.allowed.retain(|n| policies.get(n).is_some());
                if !c.allowed.iter().any(|n| n == NONE) {
                    c.allowed.insert(0, NONE.into());
                }
                if policies.get(&c.default).is_none() {
                    c.default = NONE.into();
                }
                c
            }
        })
    }

    /// Sets the workspace's egress choice (`None` goes back to the server's defaults). Every name
    /// must be a policy of this server and the default one of the allowed.
    pub async fn set_workspace_egress(
        &self,
        ws: &Workspace,
        choice: Option<WorkspaceEgress>,
    ) -> Result<WorkspaceEgress> {
        if let Some(c) = &choice {
            for name in c.allowed.iter().chain(std::iter::once(&c.default)) {
                check_name(name).map_err(Error::Invalid)?;
                if self.inner.policies.get(name).is_none() {
                    return Err(Error::Invalid(format!(
                        "egress policy `{name}` is not configured on this server (known: {})",
                        self.policy_names()
                    )));
                }
            }
            if c.default != NONE && !c.allowed.contains(&c.default) {
                return Err(Error::Invalid(format!(
                    "default: `{}` must be one of allowed",
                    c.default
                )));
            }
        }
        let value = choice.map(|c| serde_json::json!(c));
        self.inner
            .store
            .set_workspace_egress(&ws.id, value.as_ref())
            .await?;
        self.workspace_egress(ws).await
    }

    fn policy_names(&self) -> String {
        self.inner.policies.names().collect::<Vec<_>>().join(", ")
    }

    /// The policy a new sandbox in `ws` gets: `requested`, or the workspace's default. An
    /// unknown policy, or one the workspace does not allow, is a clear error.
    pub(super) async fn choose_policy(
        &self,
        ws: &Workspace,
        requested: Option<&str>,
    ) -> Result<Arc<Policy>> {
        let choice = self.workspace_egress(ws).await?;
        let name = requested.unwrap_or(&choice.default);
        let Some(policy) = self.inner.policies.get(name) else {
            return Err(Error::Invalid(format!(
                "network: there is no egress policy `{name}` (this server has: {})",
                self.policy_names()
            )));
        };
        if name != NONE && !choice.allowed.iter().any(|a| a == name) {
            return Err(Error::Invalid(format!(
                "network: workspace `{}` does not allow egress policy `{name}` (allowed: {}); \
                 a workspace admin can change that",
                ws.slug,
                choice.allowed.join(", ")
            )));
        }
        Ok(policy)
    }

    /// Every egress proxy's counters since this process started (`/metrics`).
    pub fn egress_metrics(&self) -> &crate::egress::EgressMetrics {
        &self.inner.egress_metrics
    }

    /// The egress proxy of a sandbox under `policy` (the one it has when two tasks race to make
    /// it); `None` when it allows nothing.
    pub(super) fn egress_for(&self, sandbox_id: &str, policy: Arc<Policy>) -> Option<Arc<Egress>> {
        if policy.denies_all() {
            return None;
        }
        let egress = Egress::with_metrics(
            policy,
            Limits::with_max_bytes(self.inner.settings.egress.max_bytes()),
            self.inner.egress_metrics.clone(),
        );
        let mut table = lock(&self.inner.egress);
        Some(
            table
                .entry(sandbox_id.to_string())
                .or_insert(egress)
                .clone(),
        )
    }

    /// Forgets a sandbox's egress proxy (its socket ends with the sandbox, its connections
    /// through the TCP listener here).
    pub(super) fn drop_egress(&self, sandbox_id: &str) {
        if let Some(egress) = lock(&self.inner.egress).remove(sandbox_id) {
            egress.close();
        }
    }

    /// Serves the egress proxy on `listener` (`DELEGATE_EGRESS_LISTEN`) for as long as the
    /// orchestrator lives: each connection names its sandbox by its proxy token.
    pub fn serve_egress(&self, listener: tokio::net::TcpListener) {
        let weak = Arc::downgrade(&self.inner);
        let find = move |token: String| {
            let weak = weak.clone();
            async move {
                let inner = weak.upgrade().ok_or(Refused::Unavailable)?;
                Orchestrator { inner }.egress_for_token(&token).await
            }
        };
        let stop = self.inner.shutdown.clone();
        tokio::spawn(crate::egress::serve_tcp(listener, find, stop));
    }

    /// The egress proxy of the running sandbox `token` belongs to. A sandbox made by another
    /// server (any replica reaches a kubernetes sandbox) gets one here under the policy it was
    /// made with.
    async fn egress_for_token(&self, token: &str) -> std::result::Result<Arc<Egress>, Refused> {
        let grant = self
            .inner
            .proxy
            .check_token(token)
            .await
            .map_err(|refused| match refused {
                TokenRefused::Invalid => {
                    Refused::Unauthorized("invalid or revoked sandbox token".into())
                }
                TokenRefused::NotRunning(why) => Refused::Unauthorized(why),
                TokenRefused::Unavailable => Refused::Unavailable,
            })?;
        let id = &grant.sandbox_id;
        if let Some(egress) = lock(&self.inner.egress).get(id) {
            return Ok(egress.clone());
        }
        let sandbox = self.inner.store.sandbox(id).await.map_err(|e| {
            tracing::warn!(sandbox = %id, error = %e, "egress: cannot read the sandbox");
            Refused::Unavailable
        })?;
        let name = sandbox.meta["network"].as_str().unwrap_or(NONE);
        let policy = self.inner.policies.get(name).ok_or_else(|| {
            Refused::Forbidden(format!(
                "sandbox {id}'s egress policy `{name}` is no longer configured"
            ))
        })?;
        self.egress_for(id, policy).ok_or_else(|| {
            Refused::Forbidden(format!(
                "sandbox {id}'s egress policy `{name}` allows nothing"
            ))
        })
    }

    /// Opens the run's window on its sandbox's egress proxy, if it has one: connections become
    /// `egress` events in `log`.
    pub(super) fn begin_egress(&self, sandbox_id: &str, log: &RunLog) -> Option<EgressWindow> {
        let egress = lock(&self.inner.egress).get(sandbox_id).cloned()?;
        let (tx, mut rx) = mpsc::channel::<EgressRecord>(EVENT_BACKLOG);
        egress.begin(tx);
        let writer = log.writer();
        let events = tokio::spawn(async move {
            while let Some(record) = rx.recv().await {
                let data = serde_json::to_value(&record).unwrap_or_default();
                if let Err(e) = writer.append(now_ms(), "egress", data).await {
                    tracing::warn!(error = %e, "could not record an egress event");
                }
            }
        });
        Some(EgressWindow { egress, events })
    }

    /// Closes the window once the sandbox's connections are done (or [`SETTLE`] passed) and
    /// its events are written; returns the run's totals.
    pub(super) async fn end_egress(&self, window: Option<EgressWindow>) -> Option<EgressSummary> {
        let EgressWindow { egress, mut events } = window?;
        let summary = egress.end(SETTLE).await;
        // The channel closes when the last connection of the window is done; one still open
        // after the settle time does not hold up the run.
        if tokio::time::timeout(SETTLE, &mut events).await.is_err() {
            events.abort();
        }
        Some(summary)
    }
}

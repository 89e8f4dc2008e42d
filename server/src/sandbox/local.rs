//! Local sandboxes as a backend: a developer's machine joined through the tunnel. The tunnel
//! endpoint brings a link up (an HTTP endpoint that reaches the agent's `opencode serve`) and
//! takes it down; the orchestrator records the status. Here is what the machine can do for the
//! orchestrator: warm runs (opencode's HTTP API, as on every backend), what a session changed (as
//! opencode reports it: the files are not the server's), and a delete that only closes the link.
//! It cannot be made, paused or run headlessly: those are refused with the reason.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use delegate_mcp::types::{ChangeKind, ChangedFile};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    AgentOutput, Changes, ReportedChanges, RunChanges, RunSpec, SandboxBackend, SandboxError,
    SandboxSpec, ServeEndpoint,
};
use crate::opencode::serve::ServeClient;

/// The `backend` of local sandboxes.
pub const LOCAL_BACKEND: &str = "local";

/// The link currently serving a local sandbox in this process.
pub struct LocalLink {
    /// Tells this link from the agent's later ones.
    pub generation: u64,
    /// Its agent takes runs with a repository (said so when it connected).
    pub takes_repos: bool,
    /// Its `opencode serve`, through the tunnel.
    pub endpoint: ServeEndpoint,
    /// Cancelled when the sandbox is deleted: the tunnel then closes the link.
    pub revoked: CancellationToken,
}

/// The local sandboxes whose agent is connected to this process.
#[derive(Default)]
pub struct LocalBackend {
    links: Mutex<HashMap<String, LocalLink>>,
}

impl LocalBackend {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalLink>> {
        // A panic while holding the map leaves it consistent (single inserts/removes).
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `link` now serves `sandbox_id` (a newer link of the same agent replaces the old).
    pub fn link_up(&self, sandbox_id: &str, link: LocalLink) {
        self.links().insert(sandbox_id.to_string(), link);
    }

    /// Forgets the link of `generation`; false when a newer one holds the sandbox.
    pub fn link_down(&self, sandbox_id: &str, generation: u64) -> bool {
        let mut links = self.links();
        if links
            .get(sandbox_id)
            .is_none_or(|l| l.generation != generation)
        {
            return false;
        }
        links.remove(sandbox_id);
        true
    }

    /// Every link of this process, with its generation.
    pub fn linked(&self) -> Vec<(String, u64)> {
        self.links()
            .iter()
            .map(|(id, l)| (id.clone(), l.generation))
            .collect()
    }

    /// Whether `sandbox_id`'s agent is connected to this process.
    pub fn is_linked(&self, sandbox_id: &str) -> bool {
        self.links().contains_key(sandbox_id)
    }

    fn endpoint(&self, sandbox_id: &str) -> Option<ServeEndpoint> {
        self.links().get(sandbox_id).map(|l| l.endpoint.clone())
    }

    fn refuse(what: &str) -> SandboxError {
        SandboxError::BadInput(format!(
            "a local sandbox runs on its owner's machine and cannot {what}"
        ))
    }
}

#[async_trait]
impl SandboxBackend for LocalBackend {
    fn name(&self) -> &'static str {
        LOCAL_BACKEND
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Option<ServeEndpoint>, SandboxError> {
        let _ = spec;
        Err(Self::refuse(
            "be created here: its agent registers it (`delegate agent connect`)",
        ))
    }

    async fn run_headless(
        &self,
        sandbox_id: &str,
        run: &RunSpec,
        stop: CancellationToken,
    ) -> Result<mpsc::Receiver<AgentOutput>, SandboxError> {
        let _ = (sandbox_id, run, stop);
        Err(Self::refuse("take a headless run (it takes warm runs)"))
    }

    async fn collect_changes(
        &self,
        sandbox_id: &str,
        max_diff: usize,
        label: &str,
    ) -> Result<Changes, SandboxError> {
        let _ = (sandbox_id, max_diff, label);
        Err(Self::refuse(
            "commit its files for the server (its opencode reports a session's changes)",
        ))
    }

    /// opencode's own account of the session first; when it has none (no snapshots), the
    /// repository's uncommitted changes.
    async fn run_changes(
        &self,
        sandbox_id: &str,
        session: Option<&str>,
        max_diff: usize,
        label: &str,
    ) -> Result<RunChanges, SandboxError> {
        let _ = label;
        let Some(session) = session else {
            return Ok(RunChanges::Reported(ReportedChanges::default()));
        };
        let endpoint = self
            .endpoint(sandbox_id)
            .ok_or_else(|| SandboxError::Unknown(format!("{sandbox_id} (its agent left)")))?;
        let client = ServeClient::new(
            &endpoint.url,
            endpoint.password.clone(),
            &endpoint.directory,
        );
        let asked = |e: crate::opencode::serve::ServeError| {
            SandboxError::Io(format!("could not ask a local opencode what changed: {e}"))
        };
        let files = match client.session_diff(session).await.map_err(asked)? {
            v if v.as_array().is_some_and(|a| !a.is_empty()) => v,
            _ => client.vcs_diff().await.map_err(asked)?,
        };
        let mut changed = Vec::new();
        let mut preview = delegate_repo::PreviewCut::new(max_diff);
        for f in files.as_array().into_iter().flatten() {
            let Some(path) = f.get("file").and_then(|v| v.as_str()) else {
                continue;
            };
            let change = match f.get("status").and_then(|v| v.as_str()) {
                Some("added") => ChangeKind::Added,
                Some("deleted") => ChangeKind::Deleted,
                _ => ChangeKind::Modified,
            };
            let count = |k: &str| f.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            changed.push(ChangedFile {
                additions: count("additions"),
                deletions: count("deletions"),
                ..ChangedFile::new(path, change)
            });
            let mut patch = f
                .get("patch")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            if !patch.is_empty() && !patch.ends_with('\n') {
                patch.push('\n');
            }
            let size = patch.len();
            preview.add(path.to_string(), patch.into_bytes(), size);
        }
        let (diff, diff_truncated) = preview.finish();
        Ok(RunChanges::Reported(ReportedChanges {
            files: changed,
            diff,
            diff_truncated,
        }))
    }

    async fn pause(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        let _ = sandbox_id;
        Err(Self::refuse("be paused"))
    }

    async fn resume(&self, sandbox_id: &str) -> Result<ServeEndpoint, SandboxError> {
        self.endpoint(sandbox_id)
            .ok_or_else(|| SandboxError::Start("its agent is not connected".into()))
    }

    /// Its files are the developer's: only the link goes.
    async fn destroy(&self, sandbox_id: &str) -> Result<(), SandboxError> {
        if let Some(link) = self.links().remove(sandbox_id) {
            link.revoked.cancel();
        }
        Ok(())
    }

    fn pauses(&self) -> bool {
        false
    }

    fn reconnects(&self) -> bool {
        true
    }

    fn takes_repo_per_run(&self, sandbox_id: &str) -> Option<bool> {
        Some(self.links().get(sandbox_id).is_some_and(|l| l.takes_repos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    fn link(generation: u64, takes_repos: bool) -> (LocalLink, CancellationToken) {
        let revoked = CancellationToken::new();
        let link = LocalLink {
            generation,
            takes_repos,
            endpoint: ServeEndpoint {
                url: "http://127.0.0.1:9".into(),
                password: Secret::new("pw"),
                directory: "/work".into(),
            },
            revoked: revoked.clone(),
        };
        (link, revoked)
    }

    #[tokio::test]
    async fn a_newer_link_survives_the_older_ones_departure_and_a_delete_revokes_it() {
        let local = LocalBackend::default();
        let (first, _) = link(1, false);
        local.link_up("sbx_a", first);
        assert_eq!(local.takes_repo_per_run("sbx_a"), Some(false));
        let (second, revoked) = link(2, true);
        local.link_up("sbx_a", second);
        assert!(!local.link_down("sbx_a", 1), "the old link's departure");
        assert!(local.is_linked("sbx_a"));
        assert_eq!(local.takes_repo_per_run("sbx_a"), Some(true));
        assert_eq!(local.linked(), vec![("sbx_a".to_string(), 2)]);

        local.destroy("sbx_a").await.unwrap();
        assert!(revoked.is_cancelled());
        assert!(!local.is_linked("sbx_a"));
        // Gone already: not an error.
        local.destroy("sbx_a").await.unwrap();
    }

    #[tokio::test]
    async fn what_a_machine_cannot_do_is_refused_with_the_reason() {
        let local = LocalBackend::default();
        assert!(!local.pauses());
        assert!(local.reconnects());
        assert!(!local.any_replica());
        let err = local.pause("sbx_a").await.unwrap_err();
        assert!(err.to_string().contains("cannot be paused"), "{err}");
        let err = local.collect_changes("sbx_a", 100, "x").await.unwrap_err();
        assert!(matches!(err, SandboxError::BadInput(_)), "{err}");
        // No session (no warm run happened): nothing changed.
        match local.run_changes("sbx_a", None, 100, "x").await.unwrap() {
            RunChanges::Reported(r) => assert!(r.files.is_empty() && r.diff.is_empty()),
            RunChanges::Committed(_) => panic!("a local sandbox commits nothing here"),
        }
        // A session but no link: a clear error, not an empty change.
        let err = local
            .run_changes("sbx_a", Some("ses_1"), 100, "x")
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::Unknown(_)), "{err}");
    }
}

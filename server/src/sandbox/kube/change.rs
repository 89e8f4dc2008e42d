//! The work claim's way in and out. In: the host mirror as a tar archive, in Secrets of at most
//! [`SEED_CHUNK`] bytes each, unpacked by a short-lived seed pod. Out: a short-lived commit pod
//! on the claim runs delegate_repo's commit script as the sandbox's user and prints the bundle
//! in base64 between two marker lines; the log stream brings it back, read as hostile input
//! (only the marked block, only base64, at most the size announced and [`MAX_CHANGE_BYTES`]),
//! into the sandbox's run dir where the host's import reads it.
//!
//! Any server can collect a change: the commit it must sit on is recorded on the sandbox's
//! Secret ([`ANNOTATION_TIP`]), not only in the host repository of the server that made the
//! sandbox. A server whose own change repository lacks that commit (it never held the sandbox,
//! or another server ran in it since) asks the commit pod for a bundle of the whole history, or
//! of what came after the newest commit it has, and imports it into a repository it makes: the
//! same hostile-input import, which still insists the change sits exactly on the recorded tip.

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use tokio::io::AsyncWriteExt;

use delegate_repo::ChangeRepo;
use kube::api::{Patch, PatchParams};

use super::manifest::{
    ANNOTATION_ORIGIN, ANNOTATION_TIP, Job as JobSpec, LABEL_SANDBOX, SANDBOX_UID, SEED_CHUNK,
    seed_script,
};
use super::pods::START_TIMEOUT;
use super::{KubeBackend, Live, Place, api_error, object_name};
use crate::sandbox::docker::archive;
use crate::sandbox::workdir::MAX_CHANGE_BYTES;
use crate::sandbox::{Changes, SandboxError};

fn repo_err(e: delegate_repo::RepoError) -> SandboxError {
    SandboxError::Io(format!("the sandbox's change repository: {e}"))
}

/// Where the commit pod leaves the bundle: inside `.git`, so it is never part of a change.
const IN_BUNDLE: &str = "/workspace/.git/delegate-change.bundle";
/// The marker line before the bundle, followed by its size in bytes.
const BEGIN: &str = "DELEGATE-BUNDLE-BEGIN ";
/// The marker line after it.
const END: &str = "DELEGATE-BUNDLE-END";

/// The commit script, then (when the host lacks the base) the bundle again from
/// `$DELEGATE_SINCE` (a commit the host has; empty or unknown here: the whole history), then
/// the bundle printed between the markers.
fn commit_script() -> String {
    format!(
        "{}if [ \"${{DELEGATE_SINCE-}}\" != \"$DELEGATE_BASE\" ]; then\n\
         git cat-file -e \"${{DELEGATE_SINCE-}}^{{commit}}\" 2>/dev/null || DELEGATE_SINCE=\n\
         git -c pack.window=2 bundle create -q \"$DELEGATE_OUT\" {} ${{DELEGATE_SINCE:+\"^$DELEGATE_SINCE\"}}\n\
         fi\n\
         size=$(wc -c < \"$DELEGATE_OUT\")\necho \"{BEGIN}$size\"\nbase64 -w 76 \"$DELEGATE_OUT\"\n\
         echo {END}\nrm -f \"$DELEGATE_OUT\"\n",
        delegate_repo::COMMIT_SCRIPT,
        delegate_repo::RESULT_REF,
    )
}

impl KubeBackend {
    /// Starts a short-lived pod and follows its log; [`end_job`](Self::end_job) then says
    /// how it went and removes it.
    async fn start_job(&self, at: &Place, pod: &Pod) -> Result<Job, SandboxError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ops = &at.ops;
        ops.make_pod(pod).await?;
        let lines = async {
            ops.wait_started(&name).await?;
            ops.follow_log(&name).await
        }
        .await;
        match lines {
            Ok(lines) => Ok(Job {
                ops: ops.clone(),
                name,
                lines,
                tail: Vec::new(),
            }),
            Err(e) => {
                let _ = ops.delete_pod(&name).await;
                Err(e)
            }
        }
    }

    /// Waits for the job's pod to end (after its log was read or given up on), deletes it, and
    /// fails unless it exited 0 and `read` (the outcome of reading its log) is fine.
    async fn end_job(
        &self,
        mut job: Job,
        what: &str,
        read: Result<(), SandboxError>,
    ) -> Result<(), SandboxError> {
        // Drain what is left, so the pod is not held up writing.
        while let Some(line) = job.lines.recv().await {
            job.remember(line);
        }
        let exit = job.ops.wait_ended(&job.name, START_TIMEOUT).await;
        if let Err(e) = job.ops.delete_pod(&job.name).await {
            tracing::warn!(pod = %job.name, error = %e, "cannot delete a finished pod");
        }
        read?;
        if exit.code != Some(0) {
            return Err(SandboxError::Io(format!(
                "{what} inside the sandbox failed (exit {:?}{}){}",
                exit.code,
                if exit.oom { ", out of memory" } else { "" },
                if job.tail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", job.tail.join(" | "))
                }
            )));
        }
        Ok(())
    }

    /// Puts the host mirror of the work dir onto the sandbox's work claim.
    pub(super) async fn seed(&self, id: &str, live: &Live) -> Result<(), SandboxError> {
        let archive = archive::pack(
            live.dirs.workspace.clone(),
            SANDBOX_UID as u64,
            SANDBOX_UID as u64,
        )
        .await?;
        let chunks: Vec<&[u8]> = archive.chunks(SEED_CHUNK).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let secret = self.manifests.seed_secret(id, n, chunk);
            live.at
                .secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(api_error)?;
        }
        let script = seed_script();
        let pod = self.manifests.job_pod(
            id,
            &JobSpec {
                what: "seed",
                image: &live.image,
                script: &script,
                env: &[],
                seed_parts: chunks.len(),
                node: None,
            },
        );
        let outcome = match self.start_job(&live.at, &pod).await {
            Ok(job) => self.end_job(job, "seeding the work dir", Ok(())).await,
            Err(e) => Err(e),
        };
        let seeds = ListParams::default().labels(&format!(
            "{LABEL_SANDBOX}={id},{}=seed",
            super::manifest::LABEL_KIND
        ));
        if let Err(e) = live
            .at
            .secrets
            .delete_collection(&DeleteParams::default(), &seeds)
            .await
        {
            tracing::warn!(sandbox = %id, error = %e, "cannot delete the seed secrets");
        }
        outcome
    }

    /// The commit the sandbox's next change must sit on, and the snapshot it was cloned from,
    /// as recorded on its Secret (only servers write there: its pods hold no token).
    async fn recorded(
        &self,
        id: &str,
        at: &Place,
    ) -> Result<(String, Option<String>), SandboxError> {
        let secret = at
            .secrets
            .get_opt(&object_name(id, ""))
            .await
            .map_err(api_error)?
            .ok_or_else(|| SandboxError::Unknown(format!("{id} (its secret is gone)")))?;
        let mut notes = secret.metadata.annotations.unwrap_or_default();
        let commit = |c: Option<String>| {
            c.filter(|c| c.len() >= 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let tip = commit(notes.remove(ANNOTATION_TIP))
            .ok_or_else(|| SandboxError::Io(format!("{id}: its secret records no tip commit")))?;
        Ok((tip, commit(notes.remove(ANNOTATION_ORIGIN))))
    }

    /// Records `tip` as the commit the sandbox's next change must sit on.
    async fn record_tip(&self, id: &str, at: &Place, tip: &str) -> Result<(), SandboxError> {
        let patch = serde_json::json!({ "metadata": { "annotations": { ANNOTATION_TIP: tip } } });
        at.secrets
            .patch(
                &object_name(id, ""),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(api_error)?;
        Ok(())
    }

    /// What changed since the recorded tip: committed in a pod, imported into this server's
    /// change repository of the sandbox (made here when this server has none), and recorded as
    /// the new tip.
    pub(super) async fn collect(
        &self,
        id: &str,
        live: &Live,
        max_diff: usize,
        label: &str,
    ) -> Result<Changes, SandboxError> {
        let (base, origin) = self.recorded(id, &live.at).await?;
        let dirs = &live.dirs;
        let repo = ChangeRepo::open(&dirs.changes);
        let held = tokio::fs::try_exists(dirs.changes.join("HEAD"))
            .await
            .unwrap_or(false);
        let since = if held {
            match repo.resolve(&base).await {
                Ok(_) => Some(base.clone()),
                // Another server ran in it since: what came after this one's newest is enough.
                Err(_) => repo.resolve("refs/delegate/tip").await.ok(),
            }
        } else {
            for dir in [&dirs.root, &dirs.run] {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| SandboxError::Io(format!("{}: {e}", dir.display())))?;
            }
            let _ = tokio::fs::remove_dir_all(&dirs.changes).await;
            delegate_repo::git::Git::new(&dirs.root)
                .args(["init", "-q", "--bare"])
                .arg(&dirs.changes)
                .run()
                .await
                .map_err(repo_err)?;
            tracing::info!(sandbox = %id, "rebuilding the change repository of a sandbox another server made");
            None
        };
        self.export_change(id, live, &base, since.as_deref().unwrap_or(""), label)
            .await?;
        let bundle = dirs.run.join("changes.bundle");
        let imported = repo
            .import(&bundle, &base, MAX_CHANGE_BYTES, &dirs.root)
            .await;
        let _ = tokio::fs::remove_file(&bundle).await;
        let commit = imported.map_err(repo_err)?;
        if let Some(origin) = &origin
            && repo.resolve("refs/delegate/origin").await.is_err()
        {
            // An ancestor of the tip, so a whole history holds it.
            repo.set_ref("origin", origin).await.map_err(repo_err)?;
        }
        let changes = Changes::describe(&repo, base, commit, max_diff, origin)
            .await
            .map_err(repo_err)?;
        self.record_tip(id, &live.at, &changes.commit).await?;
        repo.set_ref("tip", &changes.commit)
            .await
            .map_err(repo_err)?;
        Ok(changes)
    }

    /// The node of the sandbox's serve pod, when it runs: a ReadWriteOnce claim in use is
    /// reachable only there.
    pub(super) async fn claims_node(
        &self,
        id: &str,
        at: &Place,
    ) -> Result<Option<String>, SandboxError> {
        Ok(at
            .ops
            .pods
            .get_opt(&object_name(id, ""))
            .await
            .map_err(api_error)?
            .and_then(|p| p.spec)
            .and_then(|s| s.node_name))
    }

    /// Commits the work claim's state on top of `base` in a pod, and puts the bundle (of what
    /// came after `since`, a commit this server has; the whole history when empty) into the
    /// sandbox's run dir.
    async fn export_change(
        &self,
        id: &str,
        live: &Live,
        base: &str,
        since: &str,
        label: &str,
    ) -> Result<(), SandboxError> {
        let node = self.claims_node(id, &live.at).await?;
        let script = commit_script();
        let env = [
            ("DELEGATE_BASE", base.to_string()),
            ("DELEGATE_SINCE", since.to_string()),
            ("DELEGATE_OUT", IN_BUNDLE.to_string()),
            ("DELEGATE_MESSAGE", label.to_string()),
        ];
        let pod = self.manifests.job_pod(
            id,
            &JobSpec {
                what: "commit",
                image: &live.image,
                script: &script,
                env: &env,
                seed_parts: 0,
                node,
            },
        );
        let path = live.dirs.run.join("changes.bundle");
        let io = |e: std::io::Error| SandboxError::Io(format!("{}: {e}", path.display()));
        let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
        let mut bundle = BundleReader::default();
        let mut job = self.start_job(&live.at, &pod).await?;
        let read = async {
            while let Some(line) = job.lines.recv().await {
                if !line.starts_with(BEGIN) && bundle.announced.is_none() {
                    job.remember(line.clone());
                }
                if let Some(bytes) = bundle.line(&line)? {
                    file.write_all(&bytes).await.map_err(io)?;
                }
            }
            bundle.finish()?;
            file.flush().await.map_err(io)
        }
        .await;
        self.end_job(job, "committing the change", read).await
    }
}

/// A short-lived pod being run: its name, its log, the first lines it printed.
struct Job {
    ops: super::pods::PodOps,
    name: String,
    lines: tokio::sync::mpsc::Receiver<String>,
    tail: Vec<String>,
}

impl Job {
    /// Keeps a few of the pod's diagnostics for an error message.
    fn remember(&mut self, line: String) {
        if self.tail.len() < 5 && !line.is_empty() {
            self.tail.push(line);
        }
    }
}

/// The bundle out of the commit pod's log, checked as it arrives.
#[derive(Debug, Default)]
pub struct BundleReader {
    /// The size announced by the begin marker, once seen.
    announced: Option<u64>,
    received: u64,
    ended: bool,
}

impl BundleReader {
    /// Takes one log line: lines before the begin marker are diagnostics, lines between the
    /// markers must be base64 and may not add up to more than was announced. Returns the
    /// bundle's bytes the line carries.
    pub fn line(&mut self, line: &str) -> Result<Option<Vec<u8>>, SandboxError> {
        let bad = |why: &str| SandboxError::Io(format!("the sandbox's change bundle {why}"));
        if self.ended {
            return Ok(None);
        }
        let Some(announced) = self.announced else {
            if let Some(size) = line.strip_prefix(BEGIN) {
                let size: u64 = size.trim().parse().map_err(|_| bad("has no size"))?;
                if size > MAX_CHANGE_BYTES {
                    return Err(bad(&format!("is over {MAX_CHANGE_BYTES} bytes")));
                }
                self.announced = Some(size);
            }
            return Ok(None);
        };
        if line == END {
            self.ended = true;
            return Ok(None);
        }
        let chunk = base64::engine::general_purpose::STANDARD
            .decode(line.trim_end())
            .map_err(|_| bad("is not base64"))?;
        self.received += chunk.len() as u64;
        if self.received > announced {
            return Err(bad("is longer than announced"));
        }
        Ok(Some(chunk))
    }

    /// Whether the bundle arrived whole.
    pub fn finish(&self) -> Result<(), SandboxError> {
        match self.announced {
            Some(size) if self.ended && self.received == size => Ok(()),
            Some(_) => Err(SandboxError::Io(
                "the sandbox's change bundle arrived cut short".into(),
            )),
            None => Err(SandboxError::Io(
                "the commit pod printed no change bundle".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_between_markers_is_read_and_anything_else_refused() {
        let mut r = BundleReader::default();
        let mut got = Vec::new();
        for line in [
            "warning: noise",
            "DELEGATE-BUNDLE-BEGIN 5",
            "aGVsbG8=",
            END,
            "late",
        ] {
            got.extend(r.line(line).unwrap().unwrap_or_default());
        }
        assert_eq!(got, b"hello");
        r.finish().unwrap();

        let mut r = BundleReader::default();
        r.line("DELEGATE-BUNDLE-BEGIN 2").unwrap();
        assert!(r.line("aGVsbG8=").is_err(), "longer than announced");

        let mut r = BundleReader::default();
        r.line("DELEGATE-BUNDLE-BEGIN 5").unwrap();
        assert!(r.line("not base64!").is_err());

        let mut r = BundleReader::default();
        r.line("DELEGATE-BUNDLE-BEGIN 5").unwrap();
        r.line("aGVs").unwrap();
        assert!(r.finish().is_err(), "no end marker");

        assert!(BundleReader::default().finish().is_err());
        let mut r = BundleReader::default();
        assert!(r.line(&format!("{BEGIN}{}", MAX_CHANGE_BYTES + 1)).is_err());
    }
}

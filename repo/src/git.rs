//! Running git where some of what it reads is not ours: a caller's work tree, or a repository a
//! sandbox wrote. Every call runs without system or global config, hooks, fsmonitor, credential
//! prompts or external diff and merge drivers, and never asks the terminal for anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::RepoError;

/// One git invocation, built up and then run.
pub struct Git {
    cwd: PathBuf,
    envs: Vec<(&'static str, OsString)>,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
}

/// Config every call gets, after the environment cut off the system and global files.
const SAFE_CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.quotepath=false",
    "core.symlinks=true",
    "safe.directory=*",
    "user.name=delegate",
    "user.email=delegate@localhost",
    "commit.gpgsign=false",
    "tag.gpgsign=false",
    "transfer.fsckObjects=true",
    "fetch.fsckObjects=true",
    "gc.auto=0",
    "maintenance.auto=false",
    "advice.detachedHead=false",
    "init.defaultBranch=main",
];

impl Git {
    /// git in `cwd`.
    pub fn new(cwd: impl Into<PathBuf>) -> Git {
        Git {
            cwd: cwd.into(),
            envs: Vec::new(),
            args: Vec::new(),
            stdin: None,
        }
    }

    /// An environment variable of git's (`GIT_DIR`, `GIT_INDEX_FILE`, ...).
    pub fn env(mut self, name: &'static str, value: impl Into<OsString>) -> Git {
        self.envs.push((name, value.into()));
        self
    }

    /// The repository (`GIT_DIR`) and its work tree.
    pub fn dirs(self, git_dir: &Path, work_tree: Option<&Path>) -> Git {
        let git = self.env("GIT_DIR", git_dir);
        match work_tree {
            Some(w) => git.env("GIT_WORK_TREE", w),
            None => git,
        }
    }

    /// Appends one argument to the git command line.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Git {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments to the git command line, in order.
    pub fn args<I, S>(mut self, args: I) -> Git
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Bytes to write to git's stdin (a patch, a commit message); without it git reads nothing.
    pub fn stdin(mut self, bytes: Vec<u8>) -> Git {
        self.stdin = Some(bytes);
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.cwd)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env_remove("GIT_EXTERNAL_DIFF")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_OBJECT_DIRECTORY")
            .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
            .env_remove("GIT_COMMON_DIR")
            .env("LC_ALL", "C")
            .kill_on_drop(true);
        for c in SAFE_CONFIG {
            cmd.arg("-c").arg(c);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.args(&self.args);
        cmd
    }

    /// Runs it; its stdout on success, else an error with git's own words.
    pub async fn run(self) -> Result<Vec<u8>, RepoError> {
        let out = self.output().await?;
        if !out.status.success() {
            return Err(self.failed(&out.stderr));
        }
        Ok(out.stdout)
    }

    /// Runs it and trims its stdout to one line of text.
    pub async fn line(self) -> Result<String, RepoError> {
        let out = self.run().await?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// Whether it exited 0; other failures to run are errors.
    pub async fn ok(self) -> Result<bool, RepoError> {
        Ok(self.output().await?.status.success())
    }

    /// Runs it whatever its exit code.
    pub async fn output(&self) -> Result<std::process::Output, RepoError> {
        let mut cmd = self.command();
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| RepoError::Git(format!("cannot run git (is it installed?): {e}")))?;
        if let (Some(bytes), Some(mut stdin)) = (self.stdin.as_ref(), child.stdin.take()) {
            // Written while git reads; a git that exits early closes the pipe, which is fine.
            let _ = stdin.write_all(bytes).await;
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| RepoError::Git(format!("git: {e}")))
    }

    /// Runs it with its stdout piped straight into `into`'s stdin (an OS pipe: nothing passes
    /// through this process, so memory stays flat however much flows); `into`'s stdout on
    /// success. When either fails, the error names the first that did: a producer that dies
    /// leaves the consumer with cut input, and its own words say why.
    pub async fn pipe(self, into: Git) -> Result<Vec<u8>, RepoError> {
        let spawn_failed =
            |e: std::io::Error| RepoError::Git(format!("cannot run git (is it installed?): {e}"));
        let mut producer = self.command();
        producer
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut producing = producer.spawn().map_err(spawn_failed)?;
        let stdout: Stdio = producing
            .stdout
            .take()
            .expect("piped")
            .try_into()
            .map_err(|e| RepoError::Git(format!("git pipe: {e}")))?;
        let mut consumer = into.command();
        consumer
            .stdin(stdout)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let consuming = consumer.spawn().map_err(spawn_failed)?;
        if let (Some(bytes), Some(mut stdin)) = (self.stdin.as_ref(), producing.stdin.take()) {
            // Written while git reads; dropped (closed) at the end of this block.
            let _ = stdin.write_all(bytes).await;
        }
        let (produced, consumed) =
            tokio::join!(producing.wait_with_output(), consuming.wait_with_output());
        let produced = produced.map_err(|e| RepoError::Git(format!("git: {e}")))?;
        let consumed = consumed.map_err(|e| RepoError::Git(format!("git: {e}")))?;
        if !produced.status.success() {
            return Err(self.failed(&produced.stderr));
        }
        if !consumed.status.success() {
            return Err(into.failed(&consumed.stderr));
        }
        Ok(consumed.stdout)
    }

    /// Streams its stdout into `out`, failing (and removing `out`) past `max_bytes`: memory stays
    /// flat however large the output.
    pub async fn to_file(self, out: &Path, max_bytes: u64) -> Result<u64, RepoError> {
        use tokio::io::AsyncReadExt;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| RepoError::Git(format!("cannot run git (is it installed?): {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let mut file = tokio::fs::File::create(out)
            .await
            .map_err(|e| RepoError::Io(format!("{}: {e}", out.display())))?;
        let mut capped = stdout.take(max_bytes + 1);
        let written = tokio::io::copy(&mut capped, &mut file)
            .await
            .map_err(|e| RepoError::Io(format!("{}: {e}", out.display())))?;
        if written > max_bytes {
            let _ = child.kill().await;
            let _ = tokio::fs::remove_file(out).await;
            return Err(RepoError::TooLarge(format!(
                "the patch is over {}",
                crate::snapshot::human(max_bytes)
            )));
        }
        let done = child
            .wait_with_output()
            .await
            .map_err(|e| RepoError::Git(format!("git: {e}")))?;
        if !done.status.success() {
            let _ = tokio::fs::remove_file(out).await;
            return Err(self.failed(&done.stderr));
        }
        Ok(written)
    }

    /// The first `max_bytes` of its stdout as text (cut on a character boundary), and whether
    /// there was more; git is stopped once that much has been read.
    pub async fn head(self, max_bytes: usize) -> Result<(String, bool), RepoError> {
        use tokio::io::AsyncReadExt;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| RepoError::Git(format!("cannot run git (is it installed?): {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let mut buf = Vec::new();
        stdout
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| RepoError::Io(format!("git output: {e}")))?;
        let truncated = buf.len() > max_bytes;
        if truncated {
            let _ = child.kill().await;
            buf.truncate(max_bytes);
        } else {
            let status = child
                .wait()
                .await
                .map_err(|e| RepoError::Git(format!("git: {e}")))?;
            if !status.success() {
                return Err(self.failed(b""));
            }
        }
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        if truncated {
            // A cut multi-byte character became U+FFFD at the end; drop it.
            while text.ends_with('\u{FFFD}') {
                text.pop();
            }
        }
        Ok((text, truncated))
    }

    /// Hands each `sep`-terminated record of its stdout to `each` as it arrives, so memory holds
    /// one record (at most `max_record` bytes) however long the output; `each` returning `false`
    /// stops git. Returns whether the output was read to its end.
    pub async fn records(
        self,
        sep: u8,
        max_record: usize,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<bool, RepoError> {
        let mut too_long = false;
        let read = self
            .pieces(sep, max_record + 1, |piece, ends| {
                if !ends {
                    too_long = true;
                    return false;
                }
                each(piece.strip_suffix(&[sep]).unwrap_or(piece))
            })
            .await?;
        if too_long {
            return Err(RepoError::Git(format!(
                "git printed a record longer than {max_record} bytes"
            )));
        }
        Ok(read)
    }

    /// Hands its stdout to `each` in pieces of at most `max_piece` bytes, each ending at the
    /// next `sep` (kept in the piece) when one comes that soon, with whether the piece ends a
    /// record (at `sep` or at the end of the output). Memory holds one piece however long the
    /// output or a record; `each` returning `false` stops git. Returns whether the output was
    /// read to its end.
    pub async fn pieces(
        self,
        sep: u8,
        max_piece: usize,
        mut each: impl FnMut(&[u8], bool) -> bool,
    ) -> Result<bool, RepoError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| RepoError::Git(format!("cannot run git (is it installed?): {e}")))?;
        let mut stderr = child.stderr.take().expect("piped");
        // Drained beside stdout so git never blocks on a full pipe; the start is kept.
        let said = tokio::spawn(async move {
            let (mut kept, mut chunk) = (Vec::new(), [0u8; 4096]);
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                if kept.len() < 8192 {
                    kept.extend_from_slice(&chunk[..n]);
                }
            }
            kept
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut piece = Vec::new();
        loop {
            piece.clear();
            (&mut stdout)
                .take(max_piece.max(1) as u64)
                .read_until(sep, &mut piece)
                .await
                .map_err(|e| RepoError::Io(format!("git output: {e}")))?;
            if piece.is_empty() {
                break;
            }
            // Short of the limit without `sep`: the output ended there.
            let ends = piece.last() == Some(&sep) || piece.len() < max_piece.max(1);
            if !each(&piece, ends) {
                let _ = child.kill().await;
                return Ok(false);
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| RepoError::Git(format!("git: {e}")))?;
        let said = said.await.unwrap_or_default();
        if !status.success() {
            return Err(self.failed(&said));
        }
        Ok(true)
    }

    fn failed(&self, stderr: &[u8]) -> RepoError {
        let what = self
            .args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let said = String::from_utf8_lossy(stderr);
        let said: String = said.trim().chars().take(2000).collect();
        RepoError::Git(format!("git {what} failed: {said}"))
    }
}

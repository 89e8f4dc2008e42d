//! Repositories on the agent's machine: a run delegated here with a repository gets a fresh work
//! dir, `<agent data>/runs/<run_id>`, cloned from the bundle the server sends; at the end the agent
//! commits the work dir on top of that snapshot (no hooks, no global or system config) and hands
//! the commit back as a bundle, which the server reads as hostile input.
//!
//! The server asks over the tunnel's ordinary streams, as HTTP requests under
//! [`RESERVED_PREFIX`] that the agent answers itself (see there for the three requests). Every
//! other stream is forwarded to opencode unchanged, its first request head included. A reserved
//! request never reaches opencode, not even on an agent that has no runs directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use delegate_repo::git::Git;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mux::{MuxStream, pump};
use crate::protocol::{MAX_SEED_BYTES, RESERVED_PREFIX};

/// The longest first request head read before deciding where a stream goes.
const MAX_HEAD: usize = 16 * 1024;
/// How long the server has to close its side once the answer is sent.
const LINGER: Duration = Duration::from_secs(30);

/// Where this agent keeps the work dirs of the runs it was given repositories for.
#[derive(Debug, Clone)]
pub struct RunDirs {
    root: PathBuf,
}

/// The first request of a stream, as far as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    content_length: Option<u64>,
    chunked: bool,
}

/// An answer to a reserved request.
enum Reply {
    Json(u16, serde_json::Value),
    /// A file sent as the body, removed afterwards.
    File(PathBuf),
}

fn refuse(status: u16, message: impl Into<String>) -> Reply {
    Reply::Json(status, json!({ "error": message.into() }))
}

impl RunDirs {
    /// Runs under `<data_dir>/runs`; a relative `data_dir` is taken from the current directory,
    /// so the directories handed to opencode are absolute.
    pub fn new(data_dir: &Path) -> std::io::Result<RunDirs> {
        Ok(RunDirs {
            root: std::path::absolute(data_dir)?.join("runs"),
        })
    }

    /// The directory holding every run's work dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The work dir of `run_id`, which must be a plain id (letters, digits, `_`, `-`): anything
    /// else could name a path outside the runs directory.
    fn dir(&self, run_id: &str) -> Result<PathBuf, Reply> {
        let plain = !run_id.is_empty()
            && run_id.len() <= 100
            && run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !plain {
            return Err(refuse(
                400,
                format!(
                    "run id {run_id:?}: not a plain id; refusing a path outside the runs directory"
                ),
            ));
        }
        Ok(self.root.join(run_id))
    }

    async fn handle(&self, head: &Head, stream: &MuxStream, body: BytesMut) -> Reply {
        let rest = &head.target[RESERVED_PREFIX.len()..];
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parts = path.split('/');
        let (Some("runs"), Some(run_id), action, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return refuse(404, format!("no such agent request: {}", head.target));
        };
        let dir = match self.dir(run_id) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let result = match (head.method.as_str(), action) {
            ("PUT", Some("seed")) => self.seed(&dir, head, stream, body).await,
            ("POST", Some("export")) => self.export(&dir, run_id, query).await,
            ("DELETE", None) => self.remove(&dir).await,
            _ => Err(refuse(
                405,
                format!("{} {} is not an agent request", head.method, head.target),
            )),
        };
        result.unwrap_or_else(|r| r)
    }

    /// Clones the request's bundle into a fresh work dir for the run.
    async fn seed(
        &self,
        dir: &Path,
        head: &Head,
        stream: &MuxStream,
        mut body: BytesMut,
    ) -> Result<Reply, Reply> {
        if head.chunked {
            return Err(refuse(411, "send the bundle with a Content-Length"));
        }
        let Some(len) = head.content_length else {
            return Err(refuse(411, "send the bundle with a Content-Length"));
        };
        if len > MAX_SEED_BYTES {
            return Err(refuse(
                413,
                format!("the repository is {len} bytes; this agent takes at most {MAX_SEED_BYTES}"),
            ));
        }
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| refuse(500, format!("{}: {e}", self.root.display())))?;
        match tokio::fs::symlink_metadata(dir).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => return Err(refuse(409, format!("{} exists already", dir.display()))),
        }
        let bundle = with_suffix(dir, ".seed.bundle");
        let received = receive(stream, &mut body, len, &bundle).await;
        let cloned = match received {
            Ok(()) => clone(&self.root, &bundle, dir).await,
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&bundle).await;
        match cloned {
            Ok(head) => Ok(Reply::Json(
                200,
                json!({ "directory": dir.display().to_string(), "head": head }),
            )),
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(dir).await;
                Err(e)
            }
        }
    }

    /// Commits the work dir on top of `base` and answers the commit as a bundle.
    async fn export(&self, dir: &Path, run_id: &str, query: &str) -> Result<Reply, Reply> {
        let base = query
            .split('&')
            .find_map(|p| p.strip_prefix("base="))
            .filter(|b| {
                (b.len() == 40 || b.len() == 64) && b.bytes().all(|c| c.is_ascii_hexdigit())
            })
            .ok_or_else(|| refuse(400, "export needs ?base=<commit id>"))?;
        is_work_dir(dir).await?;
        let out = with_suffix(dir, ".export.bundle");
        let _ = tokio::fs::remove_file(&out).await;
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(delegate_repo::COMMIT_SCRIPT)
            .current_dir(dir)
            // Nothing of this machine's git setup, and none of the work dir's hooks or watchers,
            // takes part: the work dir was the agent's to write.
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", "3")
            .env("GIT_CONFIG_KEY_0", "core.hooksPath")
            .env("GIT_CONFIG_VALUE_0", "/dev/null")
            .env("GIT_CONFIG_KEY_1", "core.fsmonitor")
            .env("GIT_CONFIG_VALUE_1", "false")
            .env("GIT_CONFIG_KEY_2", "commit.gpgsign")
            .env("GIT_CONFIG_VALUE_2", "false")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env("DELEGATE_BASE", base)
            .env("DELEGATE_OUT", &out)
            .env("DELEGATE_MESSAGE", format!("delegate: run {run_id}"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| refuse(500, format!("cannot run sh: {e}")))?;
        if !output.status.success() {
            let _ = tokio::fs::remove_file(&out).await;
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(refuse(
                500,
                format!("committing the run's change failed: {}", tail.trim()),
            ));
        }
        Ok(Reply::File(out))
    }

    /// Removes a run's work dir (and anything left of its bundles).
    async fn remove(&self, dir: &Path) -> Result<Reply, Reply> {
        for leftover in [".seed.bundle", ".export.bundle"] {
            let _ = tokio::fs::remove_file(with_suffix(dir, leftover)).await;
        }
        match tokio::fs::symlink_metadata(dir).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(meta) if meta.is_dir() => {
                tokio::fs::remove_dir_all(dir)
                    .await
                    .map_err(|e| refuse(500, format!("{}: {e}", dir.display())))?;
            }
            // A link or a file where a work dir should be: removing it is enough, never follow it.
            Ok(_) => {
                tokio::fs::remove_file(dir)
                    .await
                    .map_err(|e| refuse(500, format!("{}: {e}", dir.display())))?;
            }
            Err(e) => return Err(refuse(500, format!("{}: {e}", dir.display()))),
        }
        Ok(Reply::Json(200, json!({})))
    }
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A run's work dir must be a real directory (not a link to somewhere else).
async fn is_work_dir(dir: &Path) -> Result<(), Reply> {
    match tokio::fs::symlink_metadata(dir).await {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(refuse(409, format!("{} is not a directory", dir.display()))),
        Err(_) => Err(refuse(404, format!("no work dir {}", dir.display()))),
    }
}

/// Writes the request body (`len` bytes: what was read with the head, then the stream) to `to`.
async fn receive(
    stream: &MuxStream,
    first: &mut BytesMut,
    len: u64,
    to: &Path,
) -> Result<(), Reply> {
    let io = |e: std::io::Error| refuse(500, format!("{}: {e}", to.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .await
        .map_err(io)?;
    let mut left = len;
    let mut chunk = first.split().freeze();
    loop {
        let take = chunk.len().min(left as usize);
        file.write_all(&chunk[..take]).await.map_err(io)?;
        left -= take as u64;
        if left == 0 {
            break;
        }
        chunk = match stream.recv().await {
            Ok(Some(b)) => {
                let _ = stream.consumed(b.len()).await;
                b
            }
            Ok(None) => {
                return Err(refuse(400, format!("the bundle ended {left} bytes short")));
            }
            Err(e) => return Err(refuse(400, format!("receiving the bundle: {e}"))),
        };
    }
    file.flush().await.map_err(io)?;
    Ok(())
}

/// Clones `bundle` into `dir` (no hooks, no global config, every object checked); returns HEAD.
async fn clone(root: &Path, bundle: &Path, dir: &Path) -> Result<String, Reply> {
    let bad =
        |e: delegate_repo::RepoError| refuse(422, format!("cannot clone the repository: {e}"));
    Git::new(root)
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(bundle)
        .arg(dir)
        .run()
        .await
        .map_err(bad)?;
    Git::new(dir)
        .args(["remote", "remove", "origin"])
        .run()
        .await
        .map_err(bad)?;
    Git::new(dir)
        .args(["rev-parse", "--verify", "-q", "HEAD^{commit}"])
        .line()
        .await
        .map_err(bad)
}

/// Reads the stream's first request head; returns every byte read so far and the head, when the
/// bytes start with a complete one.
async fn read_head(stream: &MuxStream) -> Result<(BytesMut, Option<(usize, Head)>), String> {
    let mut buf = BytesMut::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((buf.clone(), parse_head(&buf[..end]).map(|h| (end + 4, h))));
        }
        if buf.len() >= MAX_HEAD {
            return Ok((buf, None));
        }
        match stream.recv().await {
            Ok(Some(b)) => {
                stream.consumed(b.len()).await.map_err(|e| e.to_string())?;
                buf.extend_from_slice(&b);
            }
            Ok(None) => return Ok((buf, None)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (method, target) = (request.next()?.to_string(), request.next()?.to_string());
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Some(Head {
        method,
        target,
        content_length,
        chunked,
    })
}

/// Serves one stream the server opened: a reserved request is answered here (by `runs`, or
/// refused when this agent keeps none); anything else goes to opencode at `target`, unchanged.
pub async fn route(stream: MuxStream, target: String, runs: Option<RunDirs>) {
    let (mut buf, head) = match read_head(&stream).await {
        Ok(read) => read,
        Err(e) => {
            stream.reset(&e);
            return;
        }
    };
    if let Some((len, head)) = head.filter(|(_, h)| h.target.starts_with(RESERVED_PREFIX)) {
        let body = buf.split_off(len);
        let reply = match &runs {
            Some(runs) => runs.handle(&head, &stream, body).await,
            None => refuse(
                404,
                "this agent does not take repositories (it was started without a data dir)",
            ),
        };
        answer(&stream, reply).await;
        return;
    }
    match tokio::net::TcpStream::connect(&target).await {
        Ok(mut tcp) => {
            let _ = tcp.set_nodelay(true);
            if let Err(e) = tcp.write_all(&buf).await {
                stream.reset(&format!("writing to opencode at {target}: {e}"));
                return;
            }
            pump(stream, tcp).await;
        }
        Err(e) => {
            let reason = format!("cannot reach opencode at {target}: {e}");
            tracing::warn!("{reason} (is `opencode serve` running?)");
            stream.reset(&reason);
        }
    }
}

/// Sends `reply` as an HTTP response, ends this side, and waits (a while) for the server to end
/// its own, so nothing sent is cut off by a reset.
async fn answer(stream: &MuxStream, reply: Reply) {
    let sent = match reply {
        Reply::Json(status, body) => {
            let body = body.to_string();
            let head = response_head(status, "application/json", body.len() as u64);
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(body.as_bytes());
            stream
                .send(Bytes::from(bytes))
                .await
                .map_err(|e| e.to_string())
        }
        Reply::File(path) => {
            let sent = send_file(stream, &path).await;
            let _ = tokio::fs::remove_file(&path).await;
            sent
        }
    };
    if let Err(e) = sent {
        stream.reset(&e);
        return;
    }
    if stream.finish().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(Some(b)) = stream.recv().await {
            let _ = stream.consumed(b.len()).await;
        }
    })
    .await;
}

async fn send_file(stream: &MuxStream, path: &Path) -> Result<(), String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let head = response_head(200, "application/octet-stream", len);
    stream
        .send(Bytes::from(head.into_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    // Read in pieces of the largest chunk; `send` cuts them to the link's own.
    let piece = crate::protocol::MAX_PAYLOAD;
    let mut buf = BytesMut::with_capacity(piece);
    loop {
        buf.reserve(piece);
        let n = file
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        stream
            .send(buf.split().freeze())
            .await
            .map_err(|e| e.to_string())?;
    }
}

fn response_head(status: u16, content_type: &str, len: u64) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        _ => "Internal Server Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len}\r\n\
         connection: close\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_for_routing_only() {
        let h = parse_head(
            b"PUT /.delegate/runs/run_1/seed HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n",
        )
        .unwrap();
        assert_eq!(h.method, "PUT");
        assert_eq!(h.target, "/.delegate/runs/run_1/seed");
        assert_eq!(h.content_length, Some(12));
        assert!(!h.chunked);
        let h = parse_head(b"POST /x HTTP/1.1\r\ntransfer-encoding: Chunked").unwrap();
        assert!(h.chunked && h.content_length.is_none());
        assert!(parse_head(b"\xff\xfe").is_none());
    }

    #[test]
    fn only_plain_run_ids_name_a_work_dir() {
        let runs = RunDirs::new(Path::new("/data")).unwrap();
        assert_eq!(
            runs.dir("run_01-ab").ok(),
            Some(PathBuf::from("/data/runs/run_01-ab"))
        );
        for bad in [
            "",
            "..",
            "a/b",
            "../../etc",
            ".",
            "a b",
            "é",
            &"x".repeat(101),
        ] {
            assert!(runs.dir(bad).is_err(), "{bad:?} accepted");
        }
    }
}

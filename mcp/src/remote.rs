//! A [`Delegator`] that forwards every tool call to a running `delegate serve` over its REST API
//! (`/api/...`, bearer token): `delegate mcp --server URL --token T` and `delegate run --server ...`.
//!
//! A waiting `run_in_sandbox` starts the run with `wait: false`, follows its SSE event stream
//! (reconnecting with `Last-Event-ID` when the stream drops), forwards one [`Progress`] per
//! meaningful event, and fetches the final result when the server sends `event: end`. The token
//! never appears in an error, a log line or a `Debug` dump.
//!
//! Repositories travel as files, streamed both ways and never held in memory: a snapshot bundle
//! goes up (`POST /api/snapshots`), a run's change comes down as a bundle
//! (`GET /api/runs/{id}/bundle`, capped at [`MAX_CHANGE_BYTES`]) or a patch
//! (`GET /api/runs/{id}/patch`, capped by the caller).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode, Url, header};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::delegator::{Caller, DelegateError, Delegator, Progress};
use crate::rest::{ErrorEnvelope, RunList, SnapshotUploaded};
use crate::tools::{
    CancelRunInput, CancelRunOutput, CreateSandboxInput, DEFAULT_WAIT_SECONDS, DeleteSandboxInput,
    DeleteSandboxOutput, ListSandboxesInput, ListSandboxesOutput, MAX_WAIT_SECONDS,
    RunInSandboxInput, SandboxInfo, StreamSessionInput, StreamSessionOutput,
};
use crate::types::{Event, RepoBase, RunResult};

/// Connecting to the server (TCP + TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An ordinary request: get, list, create a sandbox (which may seed files), delete.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// `POST .../cancel` returns once the run has ended (processes gone, sandbox cleaned).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(180);
/// Slack on top of a long poll's `wait_seconds`.
const LONG_POLL_SLACK: Duration = Duration::from_secs(30);
/// An SSE stream that delivers nothing (not even a keep-alive comment) this long is dead.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Consecutive failed attempts to (re)connect to a run's event stream before giving up.
const MAX_STREAM_RETRIES: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After `event: end`, how long to wait for the run's row to show its terminal status.
const FINAL_RESULT_GRACE: Duration = Duration::from_secs(10);
/// Uploading a snapshot bundle (up to `DELEGATE_MAX_REPO_BYTES`, 1 GiB by default) as a whole.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// A download (change bundle, patch) that delivers nothing this long is dead.
const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest change bundle taken from a server.
pub const MAX_CHANGE_BYTES: u64 = 1 << 30;
/// The header carrying the run's commit on `GET /api/runs/{id}/bundle`.
const COMMIT_HEADER: &str = "x-delegate-commit";

/// A remote delegate server, spoken to over its REST API.
#[derive(Clone)]
pub struct RemoteDelegator {
    /// `scheme://host[:port]`, without a trailing slash.
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for RemoteDelegator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDelegator")
            .field("base", &self.base.as_str())
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// How one attempt at following the event stream ended.
enum StreamEnd {
    /// `event: end`: every event was delivered and the run is over.
    Ended,
    /// The caller cancelled; the run was cancelled on the server and has ended.
    Cancelled,
    /// The stream broke (transport error, idle, closed without `end`); reconnect.
    Dropped(String),
}

impl RemoteDelegator {
    /// A client for the server at `server` (`http://host:port` or `https://host`), authenticating
    /// with the API token `token` (`dlg_...`). Nothing is sent until the first call.
    pub fn new(server: &str, token: &str) -> Result<Self, DelegateError> {
        let base = parse_base(server)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(DelegateError::Invalid(
                "the API token is empty: pass --token (or DELEGATE_TOKEN) with a token from \
                 `delegate token create`"
                    .into(),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DelegateError::Invalid(
                "the API token contains spaces or non-ASCII characters; copy it again from \
                 `delegate token create`"
                    .into(),
            ));
        }
        // reqwest's rustls needs a process-wide crypto provider; without one it panics. Installing
        // is idempotent (a second install is refused, harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("delegate-remote/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DelegateError::Internal(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            base,
            token: token.to_string(),
            http,
        })
    }

    /// The server's base URL, as given (normalized).
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `base` + the path segments (each percent-encoded) + the query pairs.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "application/json")
    }

    fn unreachable(&self, e: &reqwest::Error) -> DelegateError {
        DelegateError::Unavailable(format!(
            "cannot reach delegate server at {}: {}",
            self.server(),
            error_chain(e)
        ))
    }

    /// Sends a request with a JSON body (or none) and decodes a JSON reply, mapping the error
    /// envelope and transport failures to [`DelegateError`].
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, DelegateError> {
        let mut req = self.request(method, url).timeout(timeout);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(map_error_response(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            DelegateError::Internal(format!(
                "the delegate server at {} sent a reply this client does not understand \
                 (HTTP {status}): {e}",
                self.server()
            ))
        })
    }

    async fn get_run(&self, run_id: &str) -> Result<RunResult, DelegateError> {
        let url = self.url(&["api", "runs", run_id], &[]);
        let result = self
            .call::<(), _>(Method::GET, url, None, REQUEST_TIMEOUT)
            .await?;
        Ok(self.with_patch_url(result))
    }

    /// Fills `patch_url` when the run (or an attempt) has a change and the server did not say
    /// where its patch is.
    fn with_patch_url(&self, mut result: RunResult) -> RunResult {
        if result.commit.is_some() && result.patch_url.is_none() {
            let url = self.url(&["api", "runs", &result.run_id, "patch"], &[]);
            result.patch_url = Some(url.to_string());
        }
        // A parent's attempts, each the same way.
        for attempt in &mut result.attempts {
            if attempt.commit.is_some() && attempt.patch_url.is_none() {
                let url = self.url(&["api", "runs", &attempt.run_id, "patch"], &[]);
                attempt.patch_url = Some(url.to_string());
            }
        }
        result
    }

    /// Starts a download and checks its status; the body is for the caller to stream.
    async fn download(
        &self,
        segments: &[&str],
        accept: &'static str,
    ) -> Result<reqwest::Response, DelegateError> {
        let url = self.url(segments, &[]);
        let resp = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.http
                .get(url)
                .bearer_auth(&self.token)
                .header(header::ACCEPT, accept)
                .send(),
        )
        .await
        .map_err(|_| {
            DelegateError::Unavailable(format!("{} did not answer in time", self.server()))
        })?
        .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(map_error_response(status, &bytes));
        }
        Ok(resp)
    }

    async fn post_cancel(&self, run_id: &str) -> Result<CancelRunOutput, DelegateError> {
        let url = self.url(&["api", "runs", run_id, "cancel"], &[]);
        self.call::<(), _>(Method::POST, url, None, CANCEL_TIMEOUT)
            .await
    }

    /// The run's result once it is terminal: the `end` event is sent when the run ended, but allow
    /// a moment for the result row to catch up.
    async fn final_result(&self, run_id: &str) -> Result<RunResult, DelegateError> {
        let deadline = tokio::time::Instant::now() + FINAL_RESULT_GRACE;
        loop {
            let result = self.get_run(run_id).await?;
            if result.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(result);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Follows the run's event stream from after `*last_seq` until `end`, a cancel, or a drop.
    /// Errors are answers from the server that retrying will not change (404, 401, ...).
    async fn follow_once(
        &self,
        run_id: &str,
        last_seq: &mut u64,
        progress: &mpsc::Sender<Progress>,
        cancel: &CancellationToken,
    ) -> Result<StreamEnd, DelegateError> {
        let url = self.url(&["api", "runs", run_id, "events"], &[]);
        let mut req = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "text/event-stream");
        if *last_seq > 0 {
            req = req.header("Last-Event-ID", last_seq.to_string());
        }
        let resp = tokio::select! {
            r = tokio::time::timeout(REQUEST_TIMEOUT, req.send()) => match r {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => return Ok(StreamEnd::Dropped(error_chain(&e))),
                Err(_) => return Ok(StreamEnd::Dropped("timed out connecting".into())),
            },
            () = cancel.cancelled() => return self.cancel_now(run_id).await,
        };
        let status = resp.status();
        if !status.is_success() {
            let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if status.is_server_error() {
                return Ok(StreamEnd::Dropped(format!("HTTP {status}")));
            }
            return Err(map_error_response(status, &bytes));
        }
        let mut events =
            Box::pin(idle_timeout(resp.bytes_stream(), STREAM_IDLE_TIMEOUT).eventsource());
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = cancel.cancelled() => return self.cancel_now(run_id).await,
            };
            let sse = match next {
                None => {
                    return Ok(StreamEnd::Dropped(
                        "the stream closed before its end".into(),
                    ));
                }
                Some(Err(e)) => return Ok(StreamEnd::Dropped(e.to_string())),
                Some(Ok(sse)) => sse,
            };
            if sse.event == "end" {
                if let Ok(crate::rest::StreamEnd { status }) = serde_json::from_str(&sse.data) {
                    tracing::debug!(run = run_id, %status, "run's event stream ended");
                }
                return Ok(StreamEnd::Ended);
            }
            let event: Event = match serde_json::from_str(&sse.data) {
                Ok(event) => event,
                Err(e) => {
                    tracing::debug!(run = run_id, error = %e, "unreadable event on the stream; skipped");
                    continue;
                }
            };
            // After a reconnect the server resumes after Last-Event-ID; never repeat an event.
            if event.seq <= *last_seq {
                continue;
            }
            *last_seq = event.seq;
            if event.is_progress() {
                // Progress is best effort: a slow client must not stall the stream.
                let _ = progress.try_send(Progress {
                    seq: event.seq,
                    message: event.describe(),
                });
            }
        }
    }

    async fn cancel_now(&self, run_id: &str) -> Result<StreamEnd, DelegateError> {
        self.post_cancel(run_id).await?;
        Ok(StreamEnd::Cancelled)
    }
}

#[async_trait]
impl Delegator for RemoteDelegator {
    async fn run_in_sandbox(
        &self,
        _caller: &Caller,
        input: RunInSandboxInput,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunResult, DelegateError> {
        let wait = input.wait != Some(false);
        let body = RunInSandboxInput {
            wait: Some(false),
            ..input
        };
        let started: RunResult = self
            .call(
                Method::POST,
                self.url(&["api", "runs"], &[]),
                Some(&body),
                REQUEST_TIMEOUT,
            )
            .await?;
        if !wait || started.status.is_terminal() {
            return Ok(self.with_patch_url(started));
        }
        let run_id = started.run_id;
        let mut last_seq = 0u64;
        let mut failures = 0u32;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let seen = last_seq;
            match self
                .follow_once(&run_id, &mut last_seq, &progress, &cancel)
                .await?
            {
                StreamEnd::Ended | StreamEnd::Cancelled => break,
                StreamEnd::Dropped(why) => {
                    if last_seq > seen {
                        // It made progress: the connection was fine for a while.
                        failures = 0;
                        backoff = FIRST_BACKOFF;
                    }
                    failures += 1;
                    tracing::debug!(run = %run_id, failures, why, "event stream dropped; reconnecting");
                    if failures > MAX_STREAM_RETRIES {
                        // Maybe the run ended while the stream was down.
                        if let Ok(result) = self.get_run(&run_id).await
                            && result.status.is_terminal()
                        {
                            return Ok(result);
                        }
                        return Err(DelegateError::Unavailable(format!(
                            "lost the event stream of run {run_id} at {} ({why}); the run may \
                             still be going: follow it with stream_session",
                            self.server()
                        )));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = cancel.cancelled() => {
                            self.post_cancel(&run_id).await?;
                            break;
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.final_result(&run_id).await
    }

    async fn create_sandbox(
        &self,
        _caller: &Caller,
        input: CreateSandboxInput,
    ) -> Result<SandboxInfo, DelegateError> {
        let url = self.url(&["api", "sandboxes"], &[]);
        self.call(Method::POST, url, Some(&input), REQUEST_TIMEOUT)
            .await
    }

    async fn stream_session(
        &self,
        _caller: &Caller,
        input: StreamSessionInput,
    ) -> Result<StreamSessionOutput, DelegateError> {
        let run_id = match (input.run_id, input.sandbox_id) {
            (Some(_), Some(_)) => {
                return Err(DelegateError::Invalid(
                    "give run_id or sandbox_id, not both".into(),
                ));
            }
            (Some(run_id), None) => run_id,
            (None, Some(sandbox_id)) => {
                let url = self.url(
                    &["api", "runs"],
                    &[("sandbox_id", sandbox_id.clone()), ("limit", "1".into())],
                );
                let list: RunList = self
                    .call::<(), _>(Method::GET, url, None, REQUEST_TIMEOUT)
                    .await?;
                match list.runs.into_iter().next() {
                    Some(run) => run.run_id,
                    None => {
                        return Err(DelegateError::NotFound(format!(
                            "sandbox {sandbox_id} has no runs yet"
                        )));
                    }
                }
            }
            (None, None) => return Err(DelegateError::Invalid("give run_id or sandbox_id".into())),
        };
        let wait_seconds = input
            .wait_seconds
            .unwrap_or(DEFAULT_WAIT_SECONDS)
            .min(MAX_WAIT_SECONDS);
        let url = self.url(
            &["api", "runs", &run_id, "events"],
            &[
                ("after", input.after.unwrap_or(0).to_string()),
                ("wait_seconds", wait_seconds.to_string()),
            ],
        );
        let timeout = Duration::from_secs(wait_seconds) + LONG_POLL_SLACK;
        self.call::<(), _>(Method::GET, url, None, timeout).await
    }

    async fn list_sandboxes(
        &self,
        _caller: &Caller,
        input: ListSandboxesInput,
    ) -> Result<ListSandboxesOutput, DelegateError> {
        let query: Vec<(&str, String)> = input
            .workspace
            .map(|w| ("workspace", w))
            .into_iter()
            .collect();
        let url = self.url(&["api", "sandboxes"], &query);
        self.call::<(), _>(Method::GET, url, None, REQUEST_TIMEOUT)
            .await
    }

    async fn delete_sandbox(
        &self,
        _caller: &Caller,
        input: DeleteSandboxInput,
    ) -> Result<DeleteSandboxOutput, DelegateError> {
        let url = self.url(&["api", "sandboxes", &input.sandbox_id], &[]);
        // Deleting cancels a run in it first, which may take as long as a cancel.
        self.call::<(), _>(Method::DELETE, url, None, CANCEL_TIMEOUT)
            .await
    }

    async fn cancel_run(
        &self,
        _caller: &Caller,
        input: CancelRunInput,
    ) -> Result<CancelRunOutput, DelegateError> {
        self.post_cancel(&input.run_id).await
    }

    async fn upload_snapshot(
        &self,
        _caller: &Caller,
        workspace: Option<&str>,
        base: &RepoBase,
        bundle: &Path,
    ) -> Result<String, DelegateError> {
        let file = tokio::fs::File::open(bundle)
            .await
            .map_err(|e| DelegateError::Internal(format!("{}: {e}", bundle.display())))?;
        let bytes = file
            .metadata()
            .await
            .map_err(|e| DelegateError::Internal(format!("{}: {e}", bundle.display())))?
            .len();
        let mut query: Vec<(&str, String)> = Vec::new();
        query.extend(workspace.map(|w| ("workspace", w.to_string())));
        query.push(("repo", base.repo.clone()));
        query.extend(base.commit.clone().map(|c| ("commit", c)));
        query.extend(base.branch.clone().map(|b| ("branch", b)));
        query.push(("dirty", base.dirty.to_string()));
        let url = self.url(&["api", "snapshots"], &query);
        // Streamed from the file: a 1 GiB repository never sits in memory.
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let resp = self
            .request(Method::POST, url)
            .timeout(UPLOAD_TIMEOUT)
            .header(header::CONTENT_TYPE, "application/x-git-bundle")
            .header(header::CONTENT_LENGTH, bytes)
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let reply = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(map_error_response(status, &reply));
        }
        let uploaded: SnapshotUploaded = serde_json::from_slice(&reply).map_err(|e| {
            DelegateError::Internal(format!(
                "the delegate server at {} answered the snapshot upload with something this \
                 client does not understand: {e}",
                self.server()
            ))
        })?;
        tracing::debug!(snapshot = %uploaded.snapshot_id, bytes = uploaded.bytes, "snapshot uploaded");
        Ok(uploaded.snapshot_id)
    }

    async fn download_change(
        &self,
        _caller: &Caller,
        run_id: &str,
        out: &Path,
    ) -> Result<String, DelegateError> {
        let resp = self
            .download(
                &["api", "runs", run_id, "bundle"],
                "application/x-git-bundle",
            )
            .await?;
        let commit = resp
            .headers()
            .get(COMMIT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|c| matches!(c.len(), 40 | 64) && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
            .ok_or_else(|| DelegateError::Repo {
                kind: "bad_change".into(),
                message: format!(
                    "the server sent run {run_id}'s change without its commit ({COMMIT_HEADER})"
                ),
            })?;
        let mut file = tokio::fs::File::create(out)
            .await
            .map_err(|e| DelegateError::Internal(format!("{}: {e}", out.display())))?;
        let written = stream_capped(resp, &mut file, MAX_CHANGE_BYTES).await;
        let failed = |e: DelegateError| async {
            let _ = tokio::fs::remove_file(out).await;
            Err(e)
        };
        match written {
            Ok(Some(_)) => {}
            Ok(None) => {
                return failed(DelegateError::Repo {
                    kind: "repo_too_large".into(),
                    message: format!(
                        "run {run_id}'s change is over {}",
                        delegate_repo::snapshot::human(MAX_CHANGE_BYTES)
                    ),
                })
                .await;
            }
            Err(e) => return failed(self.download_failed(run_id, e)).await,
        }
        if let Err(e) = tokio::io::AsyncWriteExt::flush(&mut file).await {
            return failed(DelegateError::Internal(format!("{}: {e}", out.display()))).await;
        }
        Ok(commit)
    }

    async fn read_patch(
        &self,
        _caller: &Caller,
        run_id: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, DelegateError> {
        let resp = self
            .download(&["api", "runs", run_id, "patch"], "text/x-diff")
            .await?;
        let mut patch = Vec::new();
        match stream_capped(resp, &mut patch, max_bytes).await {
            Ok(Some(_)) => Ok(patch),
            Ok(None) => Err(DelegateError::Limit(format!(
                "the patch of run {run_id} is over {}",
                delegate_repo::snapshot::human(max_bytes)
            ))),
            Err(e) => Err(self.download_failed(run_id, e)),
        }
    }
}

impl RemoteDelegator {
    fn download_failed(&self, run_id: &str, error: StreamError) -> DelegateError {
        DelegateError::Unavailable(format!(
            "downloading run {run_id}'s change from {} failed: {error}",
            self.server()
        ))
    }
}

/// Copies a response body into `out` chunk by chunk; `Ok(None)` as soon as it passes `max`
/// bytes (the rest is not read), else the bytes written.
async fn stream_capped<W>(
    resp: reqwest::Response,
    out: &mut W,
    max: u64,
) -> Result<Option<u64>, StreamError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if resp.content_length().is_some_and(|len| len > max) {
        return Ok(None);
    }
    let mut body = Box::pin(idle_timeout(resp.bytes_stream(), DOWNLOAD_IDLE_TIMEOUT));
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        written += chunk.len() as u64;
        if written > max {
            return Ok(None);
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| StreamError::Http(format!("writing it: {e}")))?;
    }
    Ok(Some(written))
}

/// Checks and normalizes `--server`: an http(s) URL of the server root.
fn parse_base(server: &str) -> Result<Url, DelegateError> {
    let bad = |why: &str| {
        DelegateError::Invalid(format!(
            "--server {server:?} {why}; give the server's base URL, e.g. https://delegate.example.com \
             or http://127.0.0.1:8080"
        ))
    };
    let url = Url::parse(server.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not contain credentials (pass the token with --token)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    let path = url.path().trim_end_matches('/');
    if path == "/mcp" || path.starts_with("/api") {
        return Err(bad("points at an endpoint, not the server root"));
    }
    if !path.is_empty() {
        return Err(bad("must not have a path"));
    }
    let mut base = url;
    base.set_path("/");
    Ok(base)
}

/// A non-2xx reply to a [`DelegateError`]: by the envelope's code, else by the HTTP status.
fn map_error_response(status: StatusCode, body: &[u8]) -> DelegateError {
    let (code, message) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) => (env.error.code, env.error.message),
        Err(_) => {
            let code = match status {
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_input",
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::CONFLICT => "conflict",
                StatusCode::TOO_MANY_REQUESTS => "limit",
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                _ => "internal",
            };
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(300).collect();
            let message = if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            };
            (code.to_string(), message)
        }
    };
    match code.as_str() {
        "not_a_repo" | "repo_busy" | "repo_too_large" | "repo_unreachable" | "bad_change"
        | "repo_failed" => DelegateError::Repo {
            kind: code.clone(),
            message,
        },
        "invalid_input" => DelegateError::Invalid(message),
        "payload_too_large" => DelegateError::Invalid(format!("too large: {message}")),
        "unauthorized" => DelegateError::Invalid(format!(
            "the server refused the token: {message} (check --token / DELEGATE_TOKEN; \
             tokens come from `delegate token create`)"
        )),
        "forbidden" => DelegateError::Invalid(format!("not allowed: {message}")),
        "not_found" => DelegateError::NotFound(message),
        "conflict" => DelegateError::Unavailable(message),
        "limit" => DelegateError::Limit(message),
        "budget_exceeded" => DelegateError::BudgetExceeded(message),
        _ => DelegateError::Internal(format!("the delegate server failed: {message}")),
    }
}

/// A reqwest error with its causes ("error sending request: connection refused"). Request URLs
/// never carry the token, so this is safe to show.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why the byte stream of an SSE response ended in error.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{0}")]
    Http(String),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
}

/// The response body, failing when nothing (not even a keep-alive) arrives for `idle`.
fn idle_timeout<S>(
    stream: S,
    idle: Duration,
) -> impl Stream<Item = Result<bytes::Bytes, StreamError>>
where
    S: Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + Unpin,
{
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(StreamError::Http(error_chain(&e))), None)),
            Ok(None) => None,
            Err(_) => Some((Err(StreamError::Idle(idle)), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "https://delegate.example.com",
        ] {
            let base = parse_base(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(base.path(), "/");
        }
        for bad in [
            "127.0.0.1:8080",
            "ftp://x",
            "http://",
            "http://u:p@host",
            "http://host/mcp",
            "http://host/api/runs",
            "http://host/x",
            "http://host?x=1",
            "http://host#f",
            "not a url",
        ] {
            assert!(
                matches!(parse_base(bad), Err(DelegateError::Invalid(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn urls_encode_segments() {
        let d = RemoteDelegator::new("http://h:1", "dlg_x").unwrap();
        let url = d.url(&["api", "runs", "../x y"], &[("a", "b&c".into())]);
        assert_eq!(url.as_str(), "http://h:1/api/runs/..%2Fx%20y?a=b%26c");
        assert!(!format!("{d:?}").contains("dlg_x"));
    }
}

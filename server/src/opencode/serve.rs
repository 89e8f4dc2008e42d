//! A client for `opencode serve`'s HTTP API, used for runs in warm sandboxes: open the `/event`
//! stream first, create (or reuse) a session, post the prompt asynchronously, then follow the
//! session's events until it goes idle. Every call has a timeout except the event stream, which
//! lives as long as the run.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::settings::Secret;

/// Why a call to `opencode serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request did not complete (connect, timeout, broken body); the message names the call.
    #[error("opencode serve: {0}")]
    Http(String),
    /// opencode answered with a non-success status.
    #[error("opencode serve answered {status} to {what}: {body}")]
    Status {
        /// Which call (`health`, `create session`, ...).
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the response body, at most 300 characters.
        body: String,
    },
    /// The pool's warm-up turn did not end as it must: refused by the proxy (401), the pooled
    /// token having no record before its claim.
    #[error("opencode serve: the pool's warm-up turn {0}")]
    WarmUp(String),
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one warm sandbox's `opencode serve`; cheap to clone.
#[derive(Clone)]
pub struct ServeClient {
    base: String,
    password: Secret,
    directory: String,
    http: reqwest::Client,
}

impl ServeClient {
    /// A client for the server at `base`, authenticating with `password` and working in `directory`
    /// (the work dir as opencode sees it).
    pub fn new(base: &str, password: Secret, directory: &str) -> Self {
        ServeClient {
            base: base.trim_end_matches('/').to_string(),
            password,
            directory: directory.to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .build()
                .expect("a reqwest client with static options builds"),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .basic_auth("opencode", Some(self.password.expose()))
            .header("x-opencode-directory", &self.directory)
    }

    async fn call(
        &self,
        what: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, ServeError> {
        let resp = req
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| ServeError::Http(format!("{what}: {e}")))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| ServeError::Http(format!("{what}: {e}")))?;
        if !status.is_success() {
            let body: String = body.chars().take(300).collect();
            return Err(ServeError::Status {
                what,
                status: status.as_u16(),
                body,
            });
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Succeeds when the server answers `GET /global/health` with a success status.
    pub async fn health(&self) -> Result<(), ServeError> {
        self.call(
            "health",
            self.request(reqwest::Method::GET, "/global/health"),
        )
        .await
        .map(|_| ())
    }

    /// Makes opencode build its per-directory instance for the work dir now (config, agents,
    /// providers and models, the tool registry), so a later run does not wait for it. Asked of
    /// a pooled sandbox while its work dir is still empty.
    pub async fn warm_instance(&self, model: &str) -> Result<(), ServeError> {
        let (provider, model) = super::split_model(model);
        self.call("config", self.request(reqwest::Method::GET, "/config"))
            .await?;
        self.call("agents", self.request(reqwest::Method::GET, "/agent"))
            .await?;
        self.call("providers", self.request(reqwest::Method::GET, "/provider"))
            .await?;
        self.call(
            "tools",
            self.request(reqwest::Method::GET, "/experimental/tool")
                .query(&[("provider", provider), ("model", model)]),
        )
        .await
        .map(|_| ())
    }

    /// Runs one turn in the work dir and deletes its session, so a run's first prompt does not
    /// pay for opencode booting the work dir's per-turn services (file watcher, project copy,
    /// location services; about 2 s, per directory, before the model call). Asked of a pooled
    /// sandbox while its work dir is empty and its token has no record: the proxy refuses the
    /// model call, so the turn reaches no model and leaves no data. It fails unless the turn
    /// ended on that 401: a pooled token that works before its claim is caught here.
    pub async fn warm_turn(&self, model: &str) -> Result<(), ServeError> {
        let (provider, model) = super::split_model(model);
        // A session with a title: opencode asks no model for one.
        let session = self.create_session("delegate pool warm-up").await?;
        let reply = self
            .call(
                "warm-up turn",
                self.request(
                    reqwest::Method::POST,
                    &format!("/session/{session}/message"),
                )
                .json(&json!({
                    "parts": [{ "type": "text", "text": "." }],
                    "model": { "providerID": provider, "modelID": model },
                })),
            )
            .await;
        let deleted = self
            .call(
                "delete the warm-up session",
                self.request(reqwest::Method::DELETE, &format!("/session/{session}")),
            )
            .await;
        let status = reply?
            .pointer("/info/error/data/statusCode")
            .and_then(Value::as_u64);
        deleted?;
        match status {
            Some(401) => Ok(()),
            Some(other) => Err(ServeError::WarmUp(format!(
                "got {other} from the proxy, not 401"
            ))),
            None => Err(ServeError::WarmUp(
                "reached a model: the unclaimed token was not refused".into(),
            )),
        }
    }

    /// Drops the work dir's instance: the next request builds it again from what the work dir
    /// holds now (its own config and instructions).
    pub async fn dispose_instance(&self) -> Result<(), ServeError> {
        self.call(
            "dispose instance",
            self.request(reqwest::Method::POST, "/instance/dispose"),
        )
        .await
        .map(|_| ())
    }

    /// Creates a session and returns its id.
    pub async fn create_session(&self, title: &str) -> Result<String, ServeError> {
        let v = self
            .call(
                "create session",
                self.request(reqwest::Method::POST, "/session")
                    .json(&json!({ "title": title })),
            )
            .await?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ServeError::Http("create session: no id in the reply".into()))
    }

    /// Starts a turn and returns at once; the turn's progress arrives on [`Self::events`].
    pub async fn prompt_async(
        &self,
        session: &str,
        text: &str,
        model: &str,
        agent: Option<&str>,
    ) -> Result<(), ServeError> {
        let (provider, model) = super::split_model(model);
        let mut body = json!({
            "parts": [{ "type": "text", "text": text }],
            "model": { "providerID": provider, "modelID": model },
        });
        if let Some(agent) = agent {
            body["agent"] = json!(agent);
        }
        self.call(
            "prompt",
            self.request(
                reqwest::Method::POST,
                &format!("/session/{session}/prompt_async"),
            )
            .json(&body),
        )
        .await
        .map(|_| ())
    }

    /// Stops the session's current turn.
    pub async fn abort(&self, session: &str) -> Result<(), ServeError> {
        self.call(
            "abort",
            self.request(reqwest::Method::POST, &format!("/session/{session}/abort")),
        )
        .await
        .map(|_| ())
    }

    /// What a session changed in the work dir: opencode's `SnapshotFileDiff`s (`file`, `status`,
    /// `patch`).
    pub async fn session_diff(&self, session: &str) -> Result<Value, ServeError> {
        self.call(
            "session diff",
            self.request(reqwest::Method::GET, &format!("/session/{session}/diff")),
        )
        .await
    }

    /// The work dir's uncommitted changes against git's HEAD (`VcsFileDiff`s, same fields).
    pub async fn vcs_diff(&self) -> Result<Value, ServeError> {
        self.call(
            "vcs diff",
            self.request(reqwest::Method::GET, "/vcs/diff?mode=git"),
        )
        .await
    }

    /// The server's event stream: the `data` of each SSE event, in order.
    pub async fn events(
        &self,
    ) -> Result<impl Stream<Item = Result<String, ServeError>> + Send + use<>, ServeError> {
        let resp = self
            .request(reqwest::Method::GET, "/event")
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| ServeError::Http(format!("event stream: {e}")))?;
        if !resp.status().is_success() {
            return Err(ServeError::Status {
                what: "event stream",
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(resp.bytes_stream().eventsource().map(|item| {
            item.map(|e| e.data)
                .map_err(|e| ServeError::Http(format!("event stream: {e}")))
        }))
    }
}

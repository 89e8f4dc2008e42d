//! `delegate agent connect`: register once with a code, then keep a tunnel to the server for as long
//! as the process runs, reconnecting with backoff (1 s doubling to 60 s, back to 1 s after a link
//! that held for a minute). Each stream the server opens is connected to the local
//! `opencode serve`, except the server's repository requests ([`crate::repos`]), which the agent
//! answers itself when it has a data dir (and says so in [`CAPABILITIES_HEADER`]).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt, future};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::mux::{Closed, Mux, Role, Transport, recv_frame, send_frame};
use crate::protocol::{
    CAP_REPOS, CAPABILITIES_HEADER, Frame, Header, Limits, MAX_FRAME, VERSIONS_HEADER,
    shared_version,
};
use crate::repos::RunDirs;
use crate::wire::{RegisterInput, Registered};

/// Backoff before the first retry.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A link that held this long counts as stable: the next retry starts from [`BACKOFF_START`].
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long the server has to answer the hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the agent stopped or could not register.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag or saved value is unusable (a bad URL, a token that is not a header value); fix the
    /// command line.
    #[error("{0}")]
    BadInput(String),
    /// The server did not answer as expected (network, TLS, handshake); [`run`] retries it.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server refused for good (bad code, revoked token, deleted sandbox): retrying will
    /// not help.
    #[error("the server refused: {0}")]
    Refused(String),
    /// Another agent connected with these credentials and took over.
    #[error("another agent took over this sandbox: {0}")]
    Replaced(String),
}

/// Where and how this agent connects.
#[derive(Clone)]
pub struct AgentConfig {
    /// The server's base URL (`https://delegate.example.com`).
    pub server: String,
    /// The local sandbox this agent serves, from registration.
    pub sandbox_id: String,
    /// The tunnel token (`dlt_...`) from registration; redacted in `Debug`.
    pub token: String,
    /// The local `opencode serve` (`http://127.0.0.1:4096`).
    pub opencode_url: String,
    /// The local opencode's password, if it has one.
    pub opencode_password: Option<String>,
    /// Where runs delegated with a repository get their work dirs (`<data_dir>/runs/<run_id>`);
    /// `None`: this agent takes no repositories.
    pub data_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("sandbox_id", &self.sandbox_id)
            .field("opencode_url", &self.opencode_url)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Registers this machine with a one-time code; the token in the answer is shown only once.
pub async fn register(server: &str, code: &str, name: &str) -> Result<Registered, AgentError> {
    let url = format!("{}/api/agents/register", server.trim_end_matches('/'));
    let resp = http()
        .post(&url)
        .json(&RegisterInput {
            code: code.trim().to_string(),
            name: name.to_string(),
        })
        .send()
        .await
        .map_err(|e| AgentError::Unreachable(e.without_url().to_string()))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string();
        return Err(AgentError::Refused(format!("{status}: {message}")));
    }
    serde_json::from_value(body)
        .map_err(|e| AgentError::Unreachable(format!("unexpected registration reply: {e}")))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// The exponential backoff between connection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt, after a link that lasted `up` (zero: never connected).
    pub fn after(&mut self, up: Duration) -> Duration {
        if up >= STABLE_AFTER {
            self.next = BACKOFF_START;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

/// What happened to one connection, for the caller's log.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// The server accepted the link; streams may come.
    Connected,
    /// The link failed or ended; the next attempt follows after `retry_in`.
    Disconnected {
        /// What ended it, for people.
        reason: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
}

/// Keeps the tunnel up until `stop` is cancelled or the server refuses for good.
pub async fn run(
    config: AgentConfig,
    stop: CancellationToken,
    mut on_event: impl FnMut(LinkEvent) + Send,
) -> Result<(), AgentError> {
    validate_opencode_url(&config.opencode_url)?;
    let mut backoff = Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            r = connect_once(&config, &mut on_event) => r,
            _ = stop.cancelled() => return Ok(()),
        };
        let reason = match outcome {
            Ok(closed) if closed.code == "replaced" => {
                return Err(AgentError::Replaced(closed.reason));
            }
            Ok(closed) if closed.code == "revoked" => {
                return Err(AgentError::Refused(closed.reason));
            }
            Ok(closed) => closed.reason,
            Err(e @ AgentError::Refused(_)) => return Err(e),
            Err(e) => e.to_string(),
        };
        let retry_in = backoff.after(started.elapsed());
        on_event(LinkEvent::Disconnected { reason, retry_in });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

fn validate_opencode_url(url: &str) -> Result<(String, u16), AgentError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| AgentError::BadInput(format!("--opencode-url {url:?}: {e}")))?;
    if parsed.scheme() != "http" {
        return Err(AgentError::BadInput(format!(
            "--opencode-url {url:?}: only http:// (opencode serve on this machine)"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| AgentError::BadInput(format!("--opencode-url {url:?}: no host")))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// The tunnel URL for a server base URL: `http` -> `ws`, `https` -> `wss`.
pub fn tunnel_url(server: &str, sandbox_id: &str) -> Result<String, AgentError> {
    let base = server.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        return Err(AgentError::BadInput(format!(
            "--server {server:?}: expected http:// or https://"
        )));
    };
    Ok(format!("{rest}/api/tunnel/{sandbox_id}"))
}

/// One connection: handshake, then serve streams until the link closes.
async fn connect_once(
    config: &AgentConfig,
    on_event: &mut (impl FnMut(LinkEvent) + Send),
) -> Result<Closed, AgentError> {
    let (host, port) = validate_opencode_url(&config.opencode_url)?;
    let url = tunnel_url(&config.server, &config.sandbox_id)?;
    let mut request = url
        .into_client_request()
        .map_err(|e| AgentError::BadInput(format!("--server: {e}")))?;
    let auth = format!("Bearer {}", config.token)
        .parse()
        .map_err(|_| AgentError::BadInput("the saved token is not a valid header".into()))?;
    request.headers_mut().insert("authorization", auth);
    let runs = match &config.data_dir {
        Some(dir) => Some(
            RunDirs::new(dir)
                .map_err(|e| AgentError::BadInput(format!("--data-dir {}: {e}", dir.display())))?,
        ),
        None => None,
    };
    if runs.is_some() {
        request.headers_mut().insert(
            CAPABILITIES_HEADER,
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(CAP_REPOS),
        );
    }
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, response) =
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp)
                    if matches!(resp.status().as_u16(), 401 | 403 | 404) =>
                {
                    let body: String = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).chars().take(300).collect())
                        .unwrap_or_default();
                    AgentError::Refused(format!("{}: {body}", resp.status()))
                }
                other => AgentError::Unreachable(other.to_string()),
            })?;
    // The newest version the server lists; 1 for a server from before the list.
    let version = shared_version(
        response
            .headers()
            .get(VERSIONS_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    let limits = Limits::of(version)
        .ok_or_else(|| AgentError::Unreachable(format!("no limits for version {version}")))?;
    let mut link = adapt(ws);
    let directory = opencode_directory(config).await;
    send_frame(
        &mut link,
        Frame::new(Header::Hello {
            version,
            agent: env!("CARGO_PKG_VERSION").into(),
            directory,
            password: config.opencode_password.clone(),
        }),
    )
    .await
    .map_err(|e| AgentError::Unreachable(e.to_string()))?;
    let welcome = recv_frame(&mut link, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| AgentError::Unreachable(format!("handshake: {e}")))?;
    match welcome.header {
        Header::Welcome { .. } => {}
        Header::Goodbye { code, reason } if code == "protocol" || code == "revoked" => {
            return Err(AgentError::Refused(reason));
        }
        Header::Goodbye { reason, .. } => return Err(AgentError::Unreachable(reason)),
        other => {
            return Err(AgentError::Unreachable(format!(
                "handshake: expected welcome, got {other:?}"
            )));
        }
    }
    let (mux, incoming) = Mux::start(link, Role::Acceptor, limits);
    let Some(mut incoming) = incoming else {
        return Err(AgentError::Unreachable("no incoming streams".into()));
    };
    on_event(LinkEvent::Connected);
    let target = format!("{host}:{port}");
    while let Some(stream) = incoming.next().await {
        tokio::spawn(crate::repos::route(stream, target.clone(), runs.clone()));
    }
    Ok(mux.closed().await)
}

/// The local opencode's working directory (`GET /path`), so the server addresses the same
/// project; `None` when it does not say.
async fn opencode_directory(config: &AgentConfig) -> Option<String> {
    let url = format!("{}/path", config.opencode_url.trim_end_matches('/'));
    let mut req = http().get(url).timeout(Duration::from_secs(5));
    if let Some(p) = &config.opencode_password {
        req = req.basic_auth("opencode", Some(p));
    }
    let v: serde_json::Value = req.send().await.ok()?.json().await.ok()?;
    v.get("directory")
        .and_then(|d| d.as_str())
        .map(str::to_string)
}

/// A tungstenite WebSocket as a [`Transport`]: binary messages are frames; text is refused;
/// pings, pongs and close are the library's business.
fn adapt<S>(ws: S) -> impl Transport
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Send
        + Unpin
        + 'static,
{
    ws.sink_map_err(io::Error::other)
        .with(|b: Bytes| future::ready(Ok::<_, io::Error>(Message::Binary(b))))
        .filter_map(|m| {
            future::ready(match m {
                Ok(Message::Binary(b)) => Some(Ok(b)),
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a text message on the tunnel",
                ))),
                Ok(_) => None,
                Err(e) => Some(Err(io::Error::other(e))),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_and_resets_after_a_stable_link() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.after(Duration::ZERO).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // A link that held for 59 s does not reset it; one that held a minute does.
        assert_eq!(b.after(Duration::from_secs(59)).as_secs(), 60);
        assert_eq!(b.after(STABLE_AFTER).as_secs(), 1);
        assert_eq!(b.after(Duration::ZERO).as_secs(), 2);
    }

    #[test]
    fn urls() {
        assert_eq!(
            tunnel_url("https://d.example.com/", "sbx_1").unwrap(),
            "wss://d.example.com/api/tunnel/sbx_1"
        );
        assert_eq!(
            tunnel_url("http://127.0.0.1:8080", "sbx_1").unwrap(),
            "ws://127.0.0.1:8080/api/tunnel/sbx_1"
        );
        assert!(tunnel_url("ftp://x", "s").is_err());
        assert_eq!(
            validate_opencode_url("http://127.0.0.1:4096").unwrap(),
            ("127.0.0.1".to_string(), 4096)
        );
        assert!(validate_opencode_url("https://127.0.0.1:4096").is_err());
        assert!(validate_opencode_url("nonsense").is_err());
    }

    /// A stand-in server that speaks only `version` 1 (a server from before version 2: no
    /// versions header, a WebSocket that takes no message bigger than version 1's) or, with
    /// `offer`, lists the versions this crate speaks. Runs the handshake for one agent, opens a
    /// stream to the agent's local service, and returns the version the agent said and the
    /// reply it carried.
    async fn serve_one_agent(offer: bool) -> (u32, Vec<u8>) {
        use crate::protocol::{MAX_HEADER, versions_offered};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

        let _ = rustls::crypto::ring::default_provider().install_default();
        // The agent's local service: 1 MiB for any request, then close.
        let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service_url = format!("http://{}", service.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = service.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 241) as u8).collect();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(reply.as_bytes()).await;
                    let _ = tcp.write_all(&body).await;
                });
            }
        });
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = AgentConfig {
            server: format!("http://{}", server.local_addr().unwrap()),
            sandbox_id: "sbx_old".into(),
            token: "dlt_test".into(),
            opencode_url: service_url,
            opencode_password: None,
            data_dir: None,
        };
        let stop = CancellationToken::new();
        let agent = tokio::spawn(run(config, stop.clone(), |_| {}));

        let (tcp, _) = server.accept().await.unwrap();
        let (limits, max) = if offer {
            (Limits::V2, MAX_FRAME)
        } else {
            (Limits::V1, 4 + MAX_HEADER + Limits::V1.chunk)
        };
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        #[allow(clippy::result_large_err)] // tungstenite's callback type
        let add_versions = move |_: &Request, mut response: Response| {
            if offer {
                response
                    .headers_mut()
                    .insert(VERSIONS_HEADER, versions_offered().parse().unwrap());
            }
            Ok(response)
        };
        let ws =
            tokio_tungstenite::accept_hdr_async_with_config(tcp, add_versions, Some(ws_config))
                .await
                .unwrap();
        let mut link = adapt(ws);
        let hello = recv_frame(&mut link, Duration::from_secs(10))
            .await
            .unwrap();
        let Header::Hello { version, .. } = hello.header else {
            panic!("expected hello, got {:?}", hello.header);
        };
        if Limits::of(version) != Some(limits) {
            // What a server from before version 2 answered.
            let bye = Frame::new(Header::Goodbye {
                code: "protocol".into(),
                reason: format!("protocol version {version} is not supported"),
            });
            let _ = send_frame(&mut link, bye).await;
            stop.cancel();
            return (version, Vec::new());
        }
        let welcome = Frame::new(Header::Welcome {
            sandbox_id: "sbx_old".into(),
        });
        send_frame(&mut link, welcome).await.unwrap();
        let (mux, _) = Mux::start(link, Role::Opener, limits);
        let stream = mux.open().await.unwrap();
        stream
            .send(Bytes::from_static(b"GET /blob HTTP/1.1\r\nhost: x\r\n\r\n"))
            .await
            .unwrap();
        let mut reply = Vec::new();
        while let Some(b) = stream.recv().await.unwrap() {
            reply.extend_from_slice(&b);
            stream.consumed(b.len()).await.unwrap();
        }
        assert!(!mux.is_closed(), "every frame was within the link's limits");
        stop.cancel();
        agent.await.unwrap().unwrap();
        (version, reply)
    }

    #[tokio::test]
    async fn this_agent_joins_servers_from_before_and_after_version_2() {
        for (offer, want) in [(false, 1), (true, 2)] {
            let (version, reply) = serve_one_agent(offer).await;
            assert_eq!(
                version, want,
                "the version said to a server that offers: {offer}"
            );
            let body_at = reply
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a whole reply")
                + 4;
            assert!(reply.starts_with(b"HTTP/1.1 200 OK"));
            let body = &reply[body_at..];
            assert_eq!(body.len(), 1 << 20, "offer: {offer}");
            assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 241) as u8));
        }
    }
}

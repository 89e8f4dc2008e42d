//! delegate's egress proxy: the only way a sandbox reaches anything but the model. A sandbox has
//! no network of its own; `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` inside it point at a relay that
//! carries each connection to this proxy over the sandbox's `egress.sock`. Here every connection
//! is checked against the sandbox's [`Policy`], its host name is resolved by delegate (never by
//! the sandbox), addresses that are not public are refused unless an admin listed them, and the
//! bytes are counted against the run's cap.
//!
//! One [`Egress`] serves one sandbox. The orchestrator opens a window per run
//! ([`Egress::begin`]): each connection is reported on the window's channel as an
//! [`EgressRecord`] (which becomes an `egress` run event) and summed into its totals, which
//! [`Egress::end`] returns for the run's result once the sandbox's connections have closed.
//!
//! Sandboxes that cannot reach a socket of the server (kubernetes pods) use the same proxies
//! through one TCP listener for all (`listener.rs`), naming their sandbox by its proxy token.
//!
//! Files: `policy.rs` (patterns, named policies), `address.rs` (address classes, CIDR
//! networks), `proxy.rs` (one connection: CONNECT and plain-HTTP forwarding, refusals, metering),
//! `listener.rs` (the TCP listener and its `Proxy-Authorization` check).

pub mod address;
mod listener;
pub mod policy;
mod proxy;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use delegate_mcp::types::EgressSummary;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use listener::{Refused, serve_tcp};
pub use policy::{Policies, Policy};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-sandbox limits of the egress proxy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; more are refused with 503 until one closes.
    pub max_connections: usize,
    /// Bytes (both directions) per run window; past it connections are cut.
    pub max_bytes: u64,
    /// How long a client may take to send its request head.
    pub head_timeout: Duration,
    /// How long connecting to the destination may take.
    pub connect_timeout: Duration,
}

impl Limits {
    /// The defaults with `max_bytes` from the settings.
    pub fn with_max_bytes(max_bytes: u64) -> Limits {
        Limits {
            max_connections: 64,
            max_bytes,
            head_timeout: HEAD_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether a connection was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Connected to the destination.
    Allowed,
    /// Refused (policy, address, limit, bad request); the client got an error reply.
    Denied,
}

/// One connection through the proxy, as the run's `egress` event shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EgressRecord {
    /// The host the sandbox asked for (empty when the request could not be read).
    pub host: String,
    /// The port it asked for.
    pub port: u16,
    /// Allowed or denied.
    pub decision: Decision,
    /// Why it was denied, or why an allowed connection was cut (the byte cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes from the sandbox to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
    /// From accepting the connection to closing it.
    pub duration_ms: u64,
}

/// Egress counters of one server process, over all its sandboxes, for `/metrics`:
/// connections by decision and bytes by direction (counted as they flow, so a long download
/// shows while it runs).
#[derive(Debug, Default)]
pub struct EgressMetrics {
    allowed: AtomicU64,
    denied: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl EgressMetrics {
    /// Connections let through so far.
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Connections refused so far.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Bytes from sandboxes to destinations so far.
    pub fn bytes_up(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed)
    }

    /// Bytes from destinations to sandboxes so far.
    pub fn bytes_down(&self) -> u64 {
        self.bytes_down.load(Ordering::Relaxed)
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        // `write!` to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP delegate_egress_connections_total Connections through the egress proxy since this process started, by decision."
        );
        let _ = writeln!(out, "# TYPE delegate_egress_connections_total counter");
        for (decision, n) in [("allowed", self.allowed()), ("denied", self.denied())] {
            let _ = writeln!(
                out,
                "delegate_egress_connections_total{{decision=\"{decision}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP delegate_egress_bytes_total Bytes through the egress proxy since this process started, up (sandbox to destination) and down."
        );
        let _ = writeln!(out, "# TYPE delegate_egress_bytes_total counter");
        for (direction, n) in [("up", self.bytes_up()), ("down", self.bytes_down())] {
            let _ = writeln!(
                out,
                "delegate_egress_bytes_total{{direction=\"{direction}\"}} {n}"
            );
        }
    }
}

/// A run window's counters, shared by its connections.
#[derive(Debug, Default)]
struct Totals {
    allowed: AtomicU64,
    denied: AtomicU64,
    bytes: AtomicU64,
}

/// The run window connections are attributed to.
#[derive(Clone)]
struct Window {
    totals: Arc<Totals>,
    sink: Option<mpsc::Sender<EgressRecord>>,
}

/// One sandbox's egress proxy.
pub struct Egress {
    policy: Arc<Policy>,
    limits: Limits,
    metrics: Arc<EgressMetrics>,
    connections: Arc<Semaphore>,
    window: Mutex<Window>,
    /// Connections being served; [`Egress::end`] waits for zero.
    open: watch::Sender<usize>,
    /// Cancelled when the sandbox ends: ends what it has open through the TCP listener (its
    /// socket's connections end with the socket's own stop).
    closed: CancellationToken,
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy.name)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// A proxy for one sandbox under `policy`, with counters of its own.
    pub fn new(policy: Arc<Policy>, limits: Limits) -> Arc<Egress> {
        Egress::with_metrics(policy, limits, Arc::default())
    }

    /// A proxy for one sandbox under `policy` that also counts into the process's `metrics`.
    pub fn with_metrics(
        policy: Arc<Policy>,
        limits: Limits,
        metrics: Arc<EgressMetrics>,
    ) -> Arc<Egress> {
        Arc::new(Egress {
            policy,
            metrics,
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            window: Mutex::new(Window {
                totals: Arc::default(),
                sink: None,
            }),
            open: watch::Sender::new(0),
            closed: CancellationToken::new(),
        })
    }

    /// Ends the connections the sandbox has open through the TCP listener (it is gone).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The sandbox's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Starts a run's window: from now on connections are reported on `sink` (a full channel
    /// drops the record, never blocks the proxy) and counted towards a fresh byte cap.
    pub fn begin(&self, sink: mpsc::Sender<EgressRecord>) {
        *lock(&self.window) = Window {
            totals: Arc::default(),
            sink: Some(sink),
        };
    }

    /// Ends the run's window: waits up to `settle` for the sandbox's open connections to close
    /// (their bytes belong to the run), then returns the window's totals.
    pub async fn end(&self, settle: Duration) -> EgressSummary {
        let mut open = self.open.subscribe();
        let _ = tokio::time::timeout(settle, open.wait_for(|n| *n == 0)).await;
        let window = std::mem::replace(
            &mut *lock(&self.window),
            Window {
                totals: Arc::default(),
                sink: None,
            },
        );
        EgressSummary {
            allowed: window.totals.allowed.load(Ordering::Relaxed),
            denied: window.totals.denied.load(Ordering::Relaxed),
            bytes: window.totals.bytes.load(Ordering::Relaxed),
        }
    }

    fn current(&self) -> Window {
        lock(&self.window).clone()
    }

    /// Accepts connections until `stop`, each served as [`Egress::dispatch`] says.
    pub async fn serve<L: Accept>(self: Arc<Self>, listener: L, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                s = listener.accept_one() => match s {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "egress: accept failed");
                        continue;
                    }
                },
            };
            self.dispatch(stream, None, &stop).await;
        }
    }

    /// Serves a connection from the TCP listener whose head was read and whose token named
    /// this sandbox, as one from its socket; it ends when the sandbox does ([`Egress::close`]).
    async fn serve_claimed<S>(self: Arc<Self>, stream: S, head: Vec<u8>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let stop = self.closed.clone();
        self.dispatch(stream, Some(head), &stop).await;
    }

    /// Serves one connection on its own task while a connection slot is free; when none is,
    /// it gets a 503 right away, so a flood costs the server one short write per attempt and
    /// nothing piles up.
    async fn dispatch<S>(
        self: &Arc<Self>,
        stream: S,
        head: Option<Vec<u8>>,
        stop: &CancellationToken,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let window = self.current();
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let egress = self.clone();
                let stop = stop.clone();
                self.open.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = proxy::serve_connection(&egress, &window, stream, head) => {}
                    }
                    drop(permit);
                    egress.open.send_modify(|n| *n -= 1);
                });
            }
            Err(_) => {
                let reason = format!(
                    "too many connections at once (at most {})",
                    self.limits.max_connections
                );
                proxy::refuse_busy(stream, &reason).await;
                report(
                    &self.metrics,
                    &window,
                    EgressRecord {
                        host: String::new(),
                        port: 0,
                        decision: Decision::Denied,
                        reason: Some(reason),
                        bytes_up: 0,
                        bytes_down: 0,
                        duration_ms: 0,
                    },
                );
            }
        }
    }
}

/// Counts a finished connection into its window and the process's metrics, and hands it to the
/// window's sink.
fn report(metrics: &EgressMetrics, window: &Window, record: EgressRecord) {
    let t = &window.totals;
    match record.decision {
        Decision::Allowed => {
            t.allowed.fetch_add(1, Ordering::Relaxed);
            metrics.allowed.fetch_add(1, Ordering::Relaxed);
        }
        Decision::Denied => {
            t.denied.fetch_add(1, Ordering::Relaxed);
            metrics.denied.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(sink) = &window.sink
        && sink.try_send(record).is_err()
    {
        tracing::debug!("egress: event channel full or closed; record dropped");
    }
}

/// A listener the proxy can accept client streams from (the sandbox's unix socket; loopback TCP
/// in tests and benches).
pub trait Accept: Send + 'static {
    /// The accepted stream.
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        let (s, _) = self.accept().await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

impl crate::sandbox::EgressService for Egress {
    fn serve_unix(self: Arc<Self>, listener: UnixListener, stop: CancellationToken) {
        tokio::spawn(self.serve(listener, stop));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only plain assignments happen under these locks.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

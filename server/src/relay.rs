//! Byte relays between TCP and unix sockets.
//!
//! A bubblewrap sandbox has no network. Inside it, `delegate sandbox-relay` listens on
//! 127.0.0.1:4000 and relays each connection to the proxy's unix socket bound in from the host; for
//! a warm sandbox it also exposes opencode serve's TCP port as a unix socket the host can reach. The
//! host side uses the same loop to give that socket a loopback TCP address.

use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// One end of a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp:HOST:PORT`.
    Tcp(String),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            Ok(Endpoint::Tcp(addr.to_string()))
        } else if let Some(path) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else {
            Err(format!("{s:?}: expected tcp:HOST:PORT or unix:PATH"))
        }
    }
}

/// `LISTEN=TARGET`, e.g. `tcp:127.0.0.1:4000=unix:/run/delegate/proxy.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Where connections are accepted.
    pub listen: Endpoint,
    /// Where each is relayed to.
    pub target: Endpoint,
}

impl FromStr for Forward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (listen, target) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected LISTEN=TARGET"))?;
        Ok(Forward {
            listen: listen.parse()?,
            target: target.parse()?,
        })
    }
}

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

async fn connect(target: &Endpoint) -> std::io::Result<Box<dyn Duplex>> {
    Ok(match target {
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            // Small request/response turns must not wait for Nagle.
            s.set_nodelay(true)?;
            Box::new(s)
        }
        Endpoint::Unix(path) => Box::new(UnixStream::connect(path).await?),
    })
}

/// A bound listening end.
pub enum Listener {
    /// A bound TCP listener.
    Tcp(TcpListener),
    /// A bound unix socket.
    Unix(UnixListener),
}

impl Listener {
    /// Binds `endpoint`; a stale unix socket file left by an earlier run is removed first.
    pub async fn bind(endpoint: &Endpoint) -> std::io::Result<Listener> {
        Ok(match endpoint {
            Endpoint::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).await?),
            Endpoint::Unix(path) => {
                let _ = std::fs::remove_file(path);
                Listener::Unix(UnixListener::bind(path)?)
            }
        })
    }

    async fn accept(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Listener::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}

/// Accepts connections until `stop`, relaying each to `target` in both directions.
pub async fn serve(listener: Listener, target: Endpoint, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let mut inbound = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "relay: accept failed");
                continue;
            }
        };
        let target = target.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut outbound = match connect(&target).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, ?target, "relay: connect failed");
                    return;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

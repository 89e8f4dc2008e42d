//! Serving HTTP on sockets the caller bound (libraries never bind ports themselves).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Installs the process-wide TLS provider (ring); harmless when called twice.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How long a client has to send a whole request head, counted from when the connection is ready
/// for one: this also closes a keep-alive connection that sits idle between requests this long.
/// Slow-header clients (slowloris) cannot hold connections open. A body or an upgraded stream
/// (SSE, WebSocket) is not limited: those are legitimately quiet for long stretches.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, with TCP_NODELAY on every connection
/// (without it the last small write of a streamed reply waits for a delayed ACK, ~40 ms), the
/// peer's address as `ConnectInfo` (per-client limits), [`HEADER_READ_TIMEOUT`], and upgrades
/// (WebSockets). After `shutdown`, no new connections are taken and open ones finish their
/// requests; the future ends when the last one has closed.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let connections = tokio_util::task::TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let tower = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            hyper::service::Service::call(&tower, req)
        });
        let mut stop_rx = stop_rx.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stop_rx.changed() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Every connection finishes its request in flight and closes.
    let _ = stop_tx.send(());
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves `router` on a fresh loopback port until `stop`; returns the address.
pub async fn serve_loopback(
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_tcp(listener, router, stop.cancelled_owned()));
    Ok(addr)
}

/// Serves `router` on a unix socket at `path` (replacing a stale one) until `stop`. `mode` opens
/// it to a sandbox whose uid differs from ours: connecting needs write permission on the socket.
///
/// The socket is bound inside a fresh directory only we can enter, given `mode` there, and then
/// renamed into place: it is never reachable at `path` with the default (umask) permissions,
/// not even between bind and chmod. (A process-wide umask would race with every other thread.)
pub fn serve_unix(
    router: Router,
    path: &std::path::Path,
    mode: u32,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path.parent().unwrap_or(std::path::Path::new("."));
    let staging = parent.join(format!(".sock-{}", &crate::ids::new_secret("")[..12]));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join("s");
    let bound = (|| {
        let listener = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        // rename(2) replaces a stale socket at `path` atomically.
        std::fs::rename(&staged, path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    let listener = bound?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(())
}

/// Gives a unix socket (a sandbox's `opencode serve`) a loopback address, relaying each
/// connection until `stop`.
pub async fn relay_loopback_to_unix(
    socket: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    use crate::relay::{Endpoint, Listener};
    let listener = Listener::bind(&Endpoint::Tcp("127.0.0.1:0".into())).await?;
    let addr = match &listener {
        Listener::Tcp(tcp) => tcp.local_addr()?,
        Listener::Unix(_) => unreachable!("bound a TCP endpoint"),
    };
    tokio::spawn(crate::relay::serve(listener, Endpoint::Unix(socket), stop));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_unix_socket_appears_only_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        // A stale socket file from an earlier process is replaced.
        std::fs::write(&path, b"stale").unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        super::serve_unix(router, &path, 0o600, stop.clone()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_socket());
        // Nothing is left behind next to it, and it answers.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["proxy.sock"]);
        tokio::net::UnixStream::connect(&path).await.unwrap();
        stop.cancel();
    }
}

//! Serving HTTP on sockets the caller bound (libraries never bind ports themselves).

use std::future::Future;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

/// Installs the process-wide TLS provider (ring); harmless when called twice.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serves `router` on `listener` until `shutdown` resolves, with TCP_NODELAY on every connection:
/// without it the last small write of a streamed reply waits for a delayed ACK (~40 ms).
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // The peer address feeds per-client limits (failed sign-ins).
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `router` on a fresh loopback port until `stop`; returns the address.
pub async fn serve_loopback(
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_tcp(listener, router, stop.cancelled_owned()));
    Ok(addr)
}

/// Serves `router` on a unix socket at `path` (replacing a stale one) until `stop`. `mode` opens
/// it to a sandbox whose uid differs from ours: connecting needs write permission on the socket.
pub fn serve_unix(
    router: Router,
    path: &std::path::Path,
    mode: u32,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
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
) -> std::io::Result<std::net::SocketAddr> {
    use crate::relay::{Endpoint, Listener};
    let listener = Listener::bind(&Endpoint::Tcp("127.0.0.1:0".into())).await?;
    let addr = match &listener {
        Listener::Tcp(tcp) => tcp.local_addr()?,
        Listener::Unix(_) => unreachable!("bound a TCP endpoint"),
    };
    tokio::spawn(crate::relay::serve(listener, Endpoint::Unix(socket), stop));
    Ok(addr)
}

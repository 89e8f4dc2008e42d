//! Serving HTTP on sockets the caller bound (libraries never bind ports themselves).

use std::future::Future;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

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

//! The egress proxy on a TCP port (`DELEGATE_EGRESS_LISTEN`), for sandboxes that reach the
//! server only over the network (kubernetes pods, maybe on other nodes). One listener serves
//! every sandbox, so each request or `CONNECT` names its sandbox: `Proxy-Authorization: Basic`
//! with the sandbox's proxy token as the password (clients send it from
//! `http://sandbox:TOKEN@HOST:PORT` in `HTTP(S)_PROXY`). The token is checked as the model proxy
//! checks `x-api-key`; without a valid token of a running sandbox the client gets 407 and
//! nothing is relayed. With one, the connection is that sandbox's: its policy, its limits, its
//! run's window, as on its socket. The token is never logged and never forwarded (`proxy.rs`
//! drops `Proxy-*` headers).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::proxy::{proxy_password, read_head_within, reply};
use super::{Accept, Egress, HEAD_TIMEOUT};

/// Connections the listener holds before they are a sandbox's (their head being read, their
/// token checked), over all sandboxes; more get 503 at once. A claimed connection counts
/// against its sandbox's own limit instead.
const MAX_UNCLAIMED: usize = 256;

/// What a 407 asks the client for.
const CHALLENGE: &str = "Proxy-Authenticate: Basic realm=\"delegate egress\"\r\n";

/// Why a token does not get a sandbox's proxy.
#[derive(Debug)]
pub enum Refused {
    /// 407: unknown or revoked, or its sandbox is not running; the text says which.
    Unauthorized(String),
    /// 403: the sandbox's policy allows no egress.
    Forbidden(String),
    /// 503: the token could not be checked now.
    Unavailable,
}

/// Accepts connections on `listener` until `stop`; `find` gives the egress proxy of the sandbox
/// a token belongs to.
pub async fn serve_tcp<F, Fut>(listener: TcpListener, find: F, stop: CancellationToken)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<Egress>, Refused>> + Send + 'static,
{
    let find = Arc::new(find);
    let unclaimed = Arc::new(Semaphore::new(MAX_UNCLAIMED));
    loop {
        let mut stream = tokio::select! {
            _ = stop.cancelled() => return,
            s = listener.accept_one() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "egress listener: accept failed");
                    continue;
                }
            },
        };
        let Ok(permit) = unclaimed.clone().try_acquire_owned() else {
            super::proxy::refuse_busy(stream, "too many connections waiting to be checked").await;
            continue;
        };
        let find = find.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let claim = async {
                let head = match read_head_within(&mut stream, HEAD_TIMEOUT).await {
                    Ok(head) => head,
                    Err(r) => {
                        let text = format!("delegate egress: {}\n", r.message);
                        return reply(&mut stream, r.status, "", &text).await;
                    }
                };
                let Some(token) = proxy_password(&head) else {
                    let text = "delegate egress: proxy authentication required: send the \
                                sandbox's proxy token as the password of Proxy-Authorization: \
                                Basic\n";
                    return reply(
                        &mut stream,
                        "407 Proxy Authentication Required",
                        CHALLENGE,
                        text,
                    )
                    .await;
                };
                match find(token).await {
                    Ok(egress) => {
                        drop(permit);
                        egress.serve_claimed(stream, head).await;
                    }
                    Err(refused) => {
                        let (status, extra, why) = match refused {
                            Refused::Unauthorized(why) => {
                                ("407 Proxy Authentication Required", CHALLENGE, why)
                            }
                            Refused::Forbidden(why) => ("403 Forbidden", "", why),
                            Refused::Unavailable => (
                                "503 Service Unavailable",
                                "",
                                "delegate could not check the token; retry".to_string(),
                            ),
                        };
                        tracing::debug!(status, "egress listener: refused a connection: {why}");
                        let text = format!("delegate egress: {why}\n");
                        reply(&mut stream, status, extra, &text).await;
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                () = claim => {}
            }
        });
    }
}
